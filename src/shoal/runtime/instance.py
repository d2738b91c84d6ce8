"""One running copy of an app per data folder: a second launch hands its deep link and
arguments to the first (which brings its window forward) and exits.

The first copy listens on a Unix socket named after the app's data folder, in the user's
runtime dir (``$XDG_RUNTIME_DIR/shoal``, else ``run`` in the user's cache dir: never a
name in the shared temp dir, which another local user could take first). The
first copy also holds a lock beside the socket for as long as it runs; a launch that
cannot take the lock sends one JSON line ``{"url", "argv"}`` to the socket and waits for
``ok`` (followed by the app's link when it runs in a browser tab, to print again). A
socket left by a copy that died has no lock holder, and is replaced.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import stat
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shoal.errors import ShoalError

if TYPE_CHECKING:
    import asyncio

MAX_LINE = 64 * 1024
RESERVED_SCHEMES = frozenset({
    # the web's and Shoal's own
    "http", "https", "file", "ftp", "ftps", "data", "javascript", "ws", "wss", "about",
    "blob", "shoal", "chrome", "chrome-extension", "view-source", "resource", "moz-extension",
    # the system's, and those of programs found on most desktops
    "mailto", "tel", "sms", "mms", "callto", "sip", "sips", "facetime", "geo", "maps",
    "webcal", "ssh", "sftp", "scp", "telnet", "rlogin", "vnc", "rdp", "spice", "smb", "nfs",
    "afp", "dav", "davs", "git", "svn", "hg", "magnet", "ed2k", "irc", "ircs", "xmpp",
    "matrix", "news", "nntp", "snews", "feed", "apt", "appstream", "snap", "flatpak",
    "steam", "zoommtg", "msteams", "slack", "discord", "tg", "spotify", "vscode",
    "x-github-client", "trash", "recent", "computer", "network", "admin", "burn", "mtp",
    "gphoto2", "obex", "bluetooth", "help", "ghelp", "info", "man", "settings",
    "ms-settings", "x-scheme-handler", "urn", "tag", "cid", "mid", "ldap", "ldaps",
    "openpgp4fpr", "bitcoin", "ethereum", "otpauth", "ipfs", "ipns", "web+ap"})
"""Schemes no app may take: the web's, Shoal's, and those the system or widespread
programs answer (a login callback or a link meant for them would reach the app)."""


MAX_SOCKET_PATH = 107
"""Bytes of a Unix socket's path (``sun_path`` holds 108 with its NUL)."""


def socket_path(data_dir: Path) -> Path:
    """Where the copy of the app using ``data_dir`` listens."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        base = Path(runtime) / "shoal"
    else:
        import platformdirs

        base = Path(platformdirs.user_cache_dir("shoal")) / "run"
    name = hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:24]
    path = base / f"{name}.sock"
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        raise ShoalError(f"{base}: too long a path for the app's socket; set "
                         "XDG_RUNTIME_DIR to a private folder with a shorter path",
                         code="ENAMETOOLONG")
    return path


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
                         "not listen for its next launch there (set XDG_RUNTIME_DIR to a "
                         "folder only you can enter)", code="EPERM")
    fd = os.open(path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def hand_over(path: Path, url: str | None, argv: tuple[str, ...]) -> str | None:
    """Give ``url`` and ``argv`` to the copy listening at ``path``: None if none took
    them, else the link of the copy's browser tab ("" for a window)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.settimeout(5)
            client.connect(str(path))
            client.sendall(json.dumps({"url": url, "argv": list(argv)}).encode() + b"\n")
            answer = b""
            while not answer.endswith(b"\n") and len(answer) < MAX_LINE:
                chunk = client.recv(4096)
                if not chunk:
                    break
                answer += chunk
    except OSError:  # none listening, refused, timed out
        return None
    if answer.rstrip(b"\n") != b"ok" and not answer.startswith(b"ok "):
        return None
    return answer[3:].decode("utf-8", "replace").strip()


class Instance:
    """The listening side: the first copy of the app."""

    def __init__(self, path: Path, on_open: Callable[[dict[str, Any]], str | None]) -> None:
        """``on_open`` hears each later launch; it returns the link to give that launch
        (the browser tab's), if any."""
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
                link = self.on_open({"url": url, "argv": argv})
                writer.write(f"ok {link}\n".encode() if link else b"ok\n")
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
