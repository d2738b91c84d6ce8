"""One running copy of an app per data folder: a second launch hands its deep link and
arguments to the first (which brings its window forward) and exits.

The first copy listens on a Unix socket named after the app's data folder, in the user's
runtime dir (``$XDG_RUNTIME_DIR/shoal``, else a private folder in the temp dir). The
first copy also holds a lock beside the socket for as long as it runs; a launch that
cannot take the lock sends one JSON line ``{"url", "argv"}`` to the socket and waits for
``ok``. A socket left by a copy that died has no lock holder, and is replaced.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shoal.errors import ShoalError

if TYPE_CHECKING:
    import asyncio

MAX_LINE = 64 * 1024
RESERVED_SCHEMES = {"http", "https", "file", "ftp", "data", "javascript", "mailto", "ws",
                    "wss", "about", "blob", "shoal", "chrome", "view-source"}


def socket_path(data_dir: Path) -> Path:
    """Where the copy of the app using ``data_dir`` listens."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    base = Path(runtime) / "shoal" if runtime else Path(tempfile.gettempdir()) / (
        f"shoal-{os.getuid()}" if hasattr(os, "getuid") else "shoal")
    name = hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:24]
    return base / f"{name}.sock"


def check_url(url: str, scheme: str | None) -> None:
    """A deep link must use the app's own scheme."""
    if scheme is None:
        raise ShoalError("this app declares no deep-link scheme ([app] scheme in shoal.toml)",
                         code="EINVAL")
    if not url.lower().startswith(f"{scheme}:") or len(url) > 8192 or any(
            ord(ch) < 0x20 for ch in url):
        raise ShoalError(f"not a {scheme}: link: {url[:80]!r}", code="EINVAL")


def claim(path: Path) -> int | None:
    """Take the lock of the app copy that listens at ``path``: its file descriptor (keep
    it open while the app runs), or None when another copy holds it."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    folder = path.parent.lstat()
    if not stat.S_ISDIR(folder.st_mode) or folder.st_uid != os.getuid() \
            or folder.st_mode & 0o077:
        raise ShoalError(f"{path.parent}: not a private folder of this user; the app will "
                         "not listen for its next launch there", code="EPERM")
    fd = os.open(path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def hand_over(path: Path, url: str | None, argv: tuple[str, ...]) -> bool:
    """Give ``url`` and ``argv`` to the copy listening at ``path``; False if none is."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.settimeout(5)
            client.connect(str(path))
            client.sendall(json.dumps({"url": url, "argv": list(argv)}).encode() + b"\n")
            return client.recv(16).startswith(b"ok")
    except OSError:  # none listening, refused, timed out
        return False


class Instance:
    """The listening side: the first copy of the app."""

    def __init__(self, path: Path, on_open: Callable[[dict[str, Any]], None]) -> None:
        self.path = path
        self.on_open = on_open
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        import asyncio  # here: a launch that only claims or hands over does without it

        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # left by a copy that died (a live one answered hand_over)
        self._server = await asyncio.start_unix_server(self._serve, path=str(self.path),
                                                       limit=MAX_LINE)
        os.chmod(self.path, 0o600)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        import asyncio

        try:
            line = await asyncio.wait_for(reader.readline(), 5)
            body = json.loads(line)
            url, argv = body.get("url"), body.get("argv", [])
            if (url is None or isinstance(url, str)) and isinstance(argv, list) \
                    and all(isinstance(a, str) for a in argv):
                self.on_open({"url": url, "argv": argv})
                writer.write(b"ok\n")
                await writer.drain()
        except (ValueError, AttributeError, TimeoutError, asyncio.LimitOverrunError,
                ConnectionError):
            pass
        finally:
            writer.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
