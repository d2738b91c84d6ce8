"""``os``, ``window``, ``dialog``, ``notification``, ``clipboard`` and ``shell`` calls.

Window, dialog and clipboard calls go to a ``WindowBackend``: the native window when the
app runs in one, or a browser backend that answers ``ENOTSUP`` for what a browser tab
cannot do.
"""

from __future__ import annotations

import asyncio
import os
import platform
import shutil
import socket
import sys
import time
import webbrowser
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from shoal.runtime.fsapi import BridgeError

if TYPE_CHECKING:
    from shoal.runtime.config import MenuItem

EXTERNAL_BURST = 3
EXTERNAL_INTERVAL = 2.0
"""Links opened in the system browser: ``EXTERNAL_BURST`` at once, then one per
``EXTERNAL_INTERVAL`` seconds; past that they are refused (``EAGAIN``)."""

_PLATFORMS = {"linux": "linux", "darwin": "darwin", "win32": "win32"}
_ARCHES = {"x86_64": "x64", "amd64": "x64", "aarch64": "arm64", "arm64": "arm64",
           "i386": "ia32", "i686": "ia32", "armv7l": "arm"}


class ExternalOpener:
    """Opens web addresses in the system browser, no faster than a token bucket allows."""

    def __init__(self, burst: int = EXTERNAL_BURST, interval: float = EXTERNAL_INTERVAL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.burst = burst
        self.interval = interval
        self._clock = clock
        self._tokens = float(burst)
        self._at = clock()
        self.opened = 0
        self.refused = 0

    def take(self) -> bool:
        """Whether one more address may open now (and count it if so)."""
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) / self.interval)
        self._at = now
        if self._tokens < 1:
            self.refused += 1
            return False
        self._tokens -= 1
        self.opened += 1
        return True


EXTERNAL = ExternalOpener()
"""The process's one opener: ``shell.openExternal`` and the window's navigations away
from the app share its budget."""


def platform_and_arch() -> dict[str, str]:
    """This machine's OS and CPU, spelled as Node.js spells them (``linux``, ``x64``)."""
    machine = platform.machine().lower()
    return {"platform": _PLATFORMS.get(sys.platform, sys.platform),
            "arch": _ARCHES.get(machine, machine)}


class WindowBackend(Protocol):
    """What the hosting window can do for the page."""

    def set_title(self, title: str, window: int = 0) -> None: ...
    def set_size(self, width: int, height: int, window: int = 0) -> None: ...
    def close(self, window: int = 0) -> None: ...
    def focus(self) -> None: ...
    def open_window(self, path: str) -> None: ...
    def context_menu(self, items: tuple[MenuItem, ...]) -> str | None: ...
    def open_dialog(self, kind: str, options: dict[str, Any]) -> list[str] | None: ...
    def read_clipboard(self) -> str: ...
    def write_clipboard(self, text: str) -> None: ...


class BrowserBackend:
    """The app is open in a browser tab: the page manages title itself; the rest is not
    available from a tab."""

    def set_title(self, title: str, window: int = 0) -> None:
        return None

    def set_size(self, width: int, height: int, window: int = 0) -> None:
        raise BridgeError("a browser tab cannot be resized by the app", code="ENOTSUP")

    def close(self, window: int = 0) -> None:
        raise BridgeError("a browser tab is closed by the user", code="ENOTSUP")

    def focus(self) -> None:
        return None  # a tab is brought forward by the user

    def open_window(self, path: str) -> None:
        raise BridgeError("a browser tab opens other tabs itself", code="ENOTSUP")

    def context_menu(self, items: tuple[MenuItem, ...]) -> str | None:
        raise BridgeError("native context menus need the app window", code="ENOTSUP")

    def open_dialog(self, kind: str, options: dict[str, Any]) -> list[str] | None:
        raise BridgeError("native dialogs need the app window (shoal run without --browser)",
                          code="ENOTSUP")

    def read_clipboard(self) -> str:
        return _clipboard_command(read=True)

    def write_clipboard(self, text: str) -> None:
        _clipboard_command(read=False, text=text)


def _window_number(window: object) -> int:
    """Which of the app's windows a call is for (0: the first)."""
    if isinstance(window, bool) or not isinstance(window, int) or not 0 <= window < 1 << 20:
        raise BridgeError("window must be a window's number", code="EINVAL")
    return window


def _clipboard_command(*, read: bool, text: str = "") -> str:
    """The system clipboard through wl-clipboard or xclip, where one is installed."""
    if os.environ.get("WAYLAND_DISPLAY") and shutil.which("wl-paste"):
        argv = ["wl-paste", "--no-newline"] if read else ["wl-copy"]
    elif os.environ.get("DISPLAY") and shutil.which("xclip"):
        argv = ["xclip", "-selection", "clipboard", *(["-o"] if read else [])]
    else:
        raise BridgeError("no clipboard is reachable here", code="ENOTSUP")
    import subprocess

    result = subprocess.run(argv, input=None if read else text, capture_output=True, text=True,
                            timeout=5, check=False)
    if result.returncode != 0:
        raise BridgeError(f"clipboard tool failed: {result.stderr.strip()}", code="EIO")
    return result.stdout if read else ""


class System:
    """The calls of this module, checked against the app's permissions."""

    def __init__(self, permissions: Any, data_dir: str, window: WindowBackend,
                 app_origin: str) -> None:
        self.permissions = permissions
        self.data_dir = data_dir
        self.window = window
        self.app_origin = app_origin

    def calls(self) -> dict[str, Callable[..., Any]]:
        return {
            "os.info": self.os_info,
            "os.dirs": self.os_dirs,
            "window.setTitle": self.set_title,
            "window.setSize": self.set_size,
            "window.close": self.close,
            "window.open": self.open_window,
            "window.contextMenu": self.context_menu,
            "dialog.open": self.dialog_open,
            "dialog.save": self.dialog_save,
            "notification.show": self.notify,
            "clipboard.readText": self.clipboard_read,
            "clipboard.writeText": self.clipboard_write,
            "shell.openExternal": self.open_external,
        }

    def _require(self, capability: str) -> None:
        if not self.permissions.allows(capability):
            raise BridgeError(f"this app did not declare the {capability!r} permission",
                              code="EPERM")

    async def os_info(self) -> dict[str, Any]:
        self._require("os")
        import psutil  # only for apps that ask

        memory = psutil.virtual_memory()
        frequency = psutil.cpu_freq()
        return {
            **platform_and_arch(),
            "hostname": socket.gethostname(),
            "release": platform.release(),
            "totalmem": memory.total,
            "freemem": memory.available,
            "cpus": psutil.cpu_count() or 1,
            "cpuSpeedMHz": round(frequency.current) if frequency else None,
            "uptime": round(time.time() - psutil.boot_time()),
        }

    async def os_dirs(self) -> dict[str, str]:
        self._require("os")
        import platformdirs

        return {
            "home": os.path.expanduser("~"),
            "data": self.data_dir,
            "cache": platformdirs.user_cache_dir("shoal"),
            "temp": _tempdir(),
            "documents": platformdirs.user_documents_dir(),
            "downloads": platformdirs.user_downloads_dir(),
            "desktop": platformdirs.user_desktop_dir(),
            "pictures": platformdirs.user_pictures_dir(),
            "music": platformdirs.user_music_dir(),
            "videos": platformdirs.user_videos_dir(),
        }

    async def set_title(self, title: str, window: int = 0) -> None:
        self._require("window")
        if not isinstance(title, str):
            raise BridgeError("title must be a string", code="EINVAL")
        self.window.set_title(title[:256], _window_number(window))

    async def set_size(self, width: int, height: int, window: int = 0) -> None:
        self._require("window")
        if not all(isinstance(v, int) and 100 <= v <= 16384 for v in (width, height)):
            raise BridgeError("width and height must be integers from 100 to 16384",
                              code="EINVAL")
        self.window.set_size(width, height, _window_number(window))

    async def close(self, window: int = 0) -> None:
        self._require("window")
        self.window.close(_window_number(window))

    async def open_window(self, url: str) -> None:
        """Another window on a page of the app (same origin, same bridge rules)."""
        self._require("window")
        from urllib.parse import urlsplit

        parts = urlsplit(url) if isinstance(url, str) else None
        if parts is None or f"{parts.scheme}://{parts.netloc}" != self.app_origin:
            raise BridgeError("only the app's own pages open in a window of their own",
                              code="EPERM")
        path = parts.path or "/"
        self.window.open_window(path + (f"?{parts.query}" if parts.query else ""))

    async def context_menu(self, items: list[Any]) -> str | None:
        """A native menu of ``items`` at the pointer: the id chosen, or None."""
        self._require("window")
        from shoal.runtime.config import MenuError, menu_items

        try:
            entries = menu_items(items)
        except MenuError as exc:
            raise BridgeError(f"items{exc}" if exc.place else f"items {exc}",
                              code="EINVAL") from None
        return await asyncio.to_thread(self.window.context_menu, entries)

    async def dialog_open(self, options: dict[str, Any] | None = None) -> list[str] | None:
        self._require("dialog")
        # The dialog waits for the user: off the loop, so other calls go on meanwhile.
        return await asyncio.to_thread(self.window.open_dialog, "open", options or {})

    async def dialog_save(self, options: dict[str, Any] | None = None) -> str | None:
        self._require("dialog")
        chosen = await asyncio.to_thread(self.window.open_dialog, "save", options or {})
        return chosen[0] if chosen else None

    async def notify(self, title: str, body: str = "") -> None:
        self._require("notification")
        if not isinstance(title, str) or not isinstance(body, str):
            raise BridgeError("title and body must be strings", code="EINVAL")
        tool = shutil.which("notify-send")
        if tool is None or not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
                                or os.environ.get("DBUS_SESSION_BUS_ADDRESS")):
            raise BridgeError("no desktop notification service here", code="ENOTSUP")
        process = await asyncio.create_subprocess_exec(tool, "--", title[:200], body[:2000])
        await process.wait()

    async def clipboard_read(self) -> str:
        self._require("clipboard")
        return await asyncio.to_thread(self.window.read_clipboard)

    async def clipboard_write(self, text: str) -> None:
        self._require("clipboard")
        if not isinstance(text, str):
            raise BridgeError("text must be a string", code="EINVAL")
        await asyncio.to_thread(self.window.write_clipboard, text)

    async def open_external(self, url: str) -> None:
        """Open a link that leaves the app in the system browser (http and https only;
        needs the ``shell`` permission, and a few per second at most)."""
        self._require("shell")
        if not isinstance(url, str) or not url.startswith(("https://", "http://")):
            raise BridgeError("only http and https links open outside the app", code="EINVAL")
        if len(url) > 8192:
            raise BridgeError("a link may be 8192 characters at most", code="EINVAL")
        if url.startswith(self.app_origin + "/") or url == self.app_origin:
            raise BridgeError("that link is inside the app", code="EINVAL")
        if not EXTERNAL.take():
            raise BridgeError("links are opening too fast; try again shortly", code="EAGAIN")
        await asyncio.to_thread(webbrowser.open, url)


def _tempdir() -> str:
    import tempfile

    return tempfile.gettempdir()
