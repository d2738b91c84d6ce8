"""The native window: pywebview showing the app server's URL (``shoal[gui]``).

pywebview's own JS bridge is never used (it needs ``'unsafe-eval'`` and answers any page
the window shows); the page talks to Python over the app server's bridge only. The GUI
loop owns the main thread, so the app host runs on an asyncio loop in a second thread.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shoal.runtime.fsapi import BridgeError


def bind_listener(port: int = 0) -> socket.socket:
    """A TCP socket listening on 127.0.0.1 for the app server, bound ahead of time."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(128)
    return listener


def gui_unavailable() -> str | None:
    """Why no native window can open here, or None when one can."""
    try:
        import webview  # noqa: F401
    except ImportError:
        return "the GUI extra is not installed (pip install 'shoal[gui]')"
    if sys.platform.startswith("linux"):
        offscreen = os.environ.get("QT_QPA_PLATFORM") == "offscreen"
        if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY") or offscreen):
            return "there is no display (DISPLAY or WAYLAND_DISPLAY is not set)"
        try:
            from PySide6 import QtWebEngineWidgets  # noqa: F401
        except ImportError:
            try:
                import gi  # noqa: F401
            except ImportError:
                return "neither QtWebEngine (PySide6) nor WebKitGTK (PyGObject) is installed"
    return None


class PywebviewBackend:
    """Window calls from the page, carried out on the pywebview window."""

    def __init__(self) -> None:
        self.window: Any = None

    def set_title(self, title: str) -> None:
        self.window.set_title(title)

    def set_size(self, width: int, height: int) -> None:
        self.window.resize(width, height)

    def close(self) -> None:
        self.window.destroy()

    def open_dialog(self, kind: str, options: dict[str, Any]) -> list[str] | None:
        import webview

        if kind == "save":
            dialog = webview.FileDialog.SAVE
            chosen = self.window.create_file_dialog(
                dialog, save_filename=str(options.get("filename", "")))
        else:
            dialog = webview.FileDialog.FOLDER if options.get("directory") else (
                webview.FileDialog.OPEN)
            chosen = self.window.create_file_dialog(
                dialog, allow_multiple=bool(options.get("multiple")))
        if chosen is None:
            return None
        return [chosen] if isinstance(chosen, str) else list(chosen)

    def read_clipboard(self) -> str:
        raise BridgeError("clipboard access is not available in this window", code="ENOTSUP")

    def write_clipboard(self, text: str) -> None:
        raise BridgeError("clipboard access is not available in this window", code="ENOTSUP")


def keep_on_app(window: Any, origin: str) -> None:
    """If the window navigated away from the app (a script changed ``location``, say),
    open that address in the system browser and bring the window back to the app."""
    current = window.get_current_url() or ""
    if current == origin or current.startswith(origin + "/"):
        return
    if current.startswith(("http://", "https://")):
        import webbrowser

        webbrowser.open(current)
    window.load_url(origin + "/")


def run_in_window(folder: Path, *, dev: bool, data_dir: Path | None,
                  on_ready: Callable[[str], None], port: int = 0, gui: str | None = None) -> None:
    """Open the app in a native window; returns when the window is closed.

    The server's socket and secret exist before the window, so the window can start
    loading the URL while the host starts on its own thread; the browser's first
    request waits in the listen queue until the server answers.
    """
    from shoal.runtime.config import load_config

    # Imported here, not on the host's thread: imports racing Qt's start-up for the GIL
    # delay the first paint more than importing first does.
    from shoal.runtime.host import AppHost

    if hasattr(os, "geteuid") and os.geteuid() == 0:
        # Chromium's sandbox refuses to run as root; QtWebEngine must be told.
        os.environ.setdefault("QTWEBENGINE_DISABLE_SANDBOX", "1")
    config = load_config(folder)
    listener = bind_listener(port)
    secret = secrets.token_urlsafe(32)
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/#shoal={secret}"
    backend = PywebviewBackend()
    try:
        import uvloop

        loop = uvloop.new_event_loop()
    except ImportError:
        loop = asyncio.new_event_loop()
    failure: list[BaseException] = []

    def serve() -> None:
        asyncio.set_event_loop(loop)
        host = AppHost(folder, data_dir=data_dir, window=backend, dev=dev, listener=listener,
                       secret=secret)
        try:
            loop.run_until_complete(host.start())
        except BaseException as exc:  # re-raised on the main thread once the window is gone
            failure.append(exc)
            if backend.window is not None:
                backend.window.destroy()
            return
        loop.run_forever()
        loop.run_until_complete(host.close())

    thread = threading.Thread(target=serve, name="shoal-app", daemon=True)
    thread.start()
    import webview

    window_config = config.window
    backend.window = webview.create_window(
        window_config.title, url, width=window_config.width, height=window_config.height,
        resizable=window_config.resizable,
        min_size=(window_config.min_width, window_config.min_height),
    )
    origin = url.split("/#", 1)[0]
    announced: list[bool] = []

    def loaded() -> None:
        if not announced:
            announced.append(True)
            on_ready(url)
        keep_on_app(backend.window, origin)

    backend.window.events.loaded += loaded
    try:
        if not failure:
            webview.start(gui=gui, private_mode=True)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
    if failure:
        raise failure[0]
