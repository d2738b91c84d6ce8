"""The page's file system: Node-style calls confined to the folders the app was granted.

Every path is resolved before it is checked: ``~`` expands, relative paths start at the
app's data dir, ``..`` and symlinks are followed to the real target (``realpath``), and
case is normalised where the platform ignores it. Only then is the target compared with
the granted roots: the data dir (read-write), ``permissions.fs.read`` (read) and
``permissions.fs.write`` (read-write). A refused call raises ``EPERM`` before touching
anything.
"""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
import stat as stat_module
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shoal.errors import ShoalError

MAX_CHUNK = 16 << 20
WATCH_INTERVAL = 0.25


class BridgeError(ShoalError):
    """A call from the page failed; ``code`` reaches the page unchanged."""


class FramedBytes(bytearray):
    """A binary result whose first ``FRAME_PREFIX`` bytes are left free for the bridge's
    frame header, so a large file goes to the page without another copy."""


FRAME_PREFIX = 4


def os_error(exc: OSError, shown: str) -> BridgeError:
    """A ``BridgeError`` with the errno name (``ENOENT``, ...) as its code."""
    code = errno.errorcode.get(exc.errno or 0, "EIO")
    return BridgeError(f"{exc.strerror or 'I/O error'}: {shown}", code=code)


class PathPolicy:
    """Resolves page paths and decides whether a read or write may touch them."""

    def __init__(self, data_dir: Path, read: tuple[str, ...], write: tuple[str, ...]) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir = Path(os.path.realpath(data_dir))
        self.read_roots = [self._root(p) for p in read]
        self.write_roots = [self.data_dir, *(self._root(p) for p in write)]

    @staticmethod
    def _root(path: str) -> Path:
        return Path(os.path.realpath(os.path.expanduser(path)))

    def resolve(self, path: Any, *, write: bool) -> Path:
        """The real path behind ``path``, or ``EPERM`` if it lies outside the grants."""
        if not isinstance(path, str) or not path or "\x00" in path:
            raise BridgeError("a path must be a non-empty string", code="EINVAL")
        candidate = Path(os.path.expanduser(path))
        if not candidate.is_absolute():
            candidate = self.data_dir / candidate
        real = Path(os.path.realpath(candidate))
        roots = self.write_roots if write else [*self.write_roots, *self.read_roots]
        if not any(_inside(real, root) for root in roots):
            kind = "write" if write else "read"
            raise BridgeError(f"this app may not {kind} {path}", code="EPERM")
        return real

    def is_root(self, real: Path) -> bool:
        return any(_same(real, root) for root in [*self.write_roots, *self.read_roots])


def _same(a: Path, b: Path) -> bool:
    return os.path.normcase(a) == os.path.normcase(b)


def _inside(path: Path, root: Path) -> bool:
    path_text, root_text = os.path.normcase(path), os.path.normcase(root)
    return path_text == root_text or path_text.startswith(root_text.rstrip(os.sep) + os.sep)


class FileSystem:
    """``fs.*`` calls. Blocking work runs in a thread so the bridge stays responsive."""

    def __init__(self, policy: PathPolicy, emit: Callable[[str, dict], None]) -> None:
        self.policy = policy
        self._emit = emit
        self._watches: dict[int, asyncio.Task[None]] = {}
        self._next_watch = 1

    def calls(self) -> dict[str, Callable[..., Any]]:
        return {
            "fs.readFile": self.read_file,
            "fs.read": self.read,
            "fs.writeFile": self.write_file,
            "fs.appendFile": self.append_file,
            "fs.stat": self.stat,
            "fs.readdir": self.readdir,
            "fs.mkdir": self.mkdir,
            "fs.rm": self.rm,
            "fs.rename": self.rename,
            "fs.watch": self.watch,
            "fs.unwatch": self.unwatch,
            "fs.dataDir": self.data_dir,
        }

    async def data_dir(self) -> str:
        return str(self.policy.data_dir)

    async def read_file(self, path: str) -> FramedBytes:
        real = self.policy.resolve(path, write=False)
        return await _io(lambda: _read_framed(real), path)

    async def read(self, path: str, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes at ``offset``: the pull side of read streams."""
        if not _count(offset) or not _count(length) or length > MAX_CHUNK:
            raise BridgeError(f"offset and length must be integers, length <= {MAX_CHUNK}",
                              code="EINVAL")
        real = self.policy.resolve(path, write=False)

        def chunk() -> bytes:
            with real.open("rb") as handle:
                handle.seek(offset)
                return handle.read(length)

        return await _io(chunk, path)

    async def write_file(self, path: str, data: bytes | str) -> None:
        real = self.policy.resolve(path, write=True)
        payload = _bytes(data)
        await _io(lambda: _atomic_write(real, payload), path)

    async def append_file(self, path: str, data: bytes | str) -> None:
        real = self.policy.resolve(path, write=True)
        payload = _bytes(data)

        def append() -> None:
            with real.open("ab") as handle:
                handle.write(payload)

        await _io(append, path)

    async def stat(self, path: str) -> dict[str, Any]:
        real = self.policy.resolve(path, write=False)
        info = await _io(real.stat, path)
        return {
            "size": info.st_size,
            "mtimeMs": info.st_mtime * 1000,
            "ctimeMs": info.st_ctime * 1000,
            "mode": info.st_mode,
            "isFile": stat_module.S_ISREG(info.st_mode),
            "isDirectory": stat_module.S_ISDIR(info.st_mode),
        }

    async def readdir(self, path: str = ".") -> list[dict[str, Any]]:
        real = self.policy.resolve(path, write=False)

        def listing() -> list[dict[str, Any]]:
            with os.scandir(real) as entries:
                return sorted(
                    ({"name": e.name, "isDirectory": e.is_dir(follow_symlinks=False),
                      "isFile": e.is_file(follow_symlinks=False),
                      "isSymbolicLink": e.is_symlink()} for e in entries),
                    key=lambda e: e["name"],
                )

        return await _io(listing, path)

    async def mkdir(self, path: str, recursive: bool = False) -> None:
        real = self.policy.resolve(path, write=True)
        await _io(lambda: real.mkdir(parents=bool(recursive), exist_ok=bool(recursive)), path)

    async def rm(self, path: str, recursive: bool = False) -> None:
        candidate = self.policy.resolve(path, write=True)
        if self.policy.is_root(candidate):
            raise BridgeError(f"{path} is a granted folder itself", code="EPERM")
        # A symlink inside the grants is removed itself, never what it points to.
        link = Path(os.path.expanduser(path))
        link = link if link.is_absolute() else self.policy.data_dir / link
        target = link if link.is_symlink() else candidate

        def remove() -> None:
            if target.is_dir() and not target.is_symlink():
                if not recursive:
                    target.rmdir()
                else:
                    shutil.rmtree(target)
            else:
                target.unlink()

        await _io(remove, path)

    async def rename(self, source: str, target: str) -> None:
        real_source = self.policy.resolve(source, write=True)
        real_target = self.policy.resolve(target, write=True)
        if self.policy.is_root(real_source):
            raise BridgeError(f"{source} is a granted folder itself", code="EPERM")
        await _io(lambda: os.replace(real_source, real_target), source)

    async def watch(self, path: str) -> int:
        """Report changes under ``path`` as ``fs.watch`` events until ``unwatch``."""
        real = self.policy.resolve(path, write=False)
        if not real.exists():
            raise BridgeError(f"no such file or directory: {path}", code="ENOENT")
        watch_id = self._next_watch
        self._next_watch += 1
        self._watches[watch_id] = asyncio.get_running_loop().create_task(
            self._poll(watch_id, real)
        )
        return watch_id

    async def unwatch(self, watch_id: int) -> None:
        task = self._watches.pop(watch_id, None)
        if task is not None:
            task.cancel()

    def close(self) -> None:
        for task in self._watches.values():
            task.cancel()
        self._watches.clear()

    async def _poll(self, watch_id: int, real: Path) -> None:
        before = await asyncio.to_thread(_snapshot, real)
        while True:
            await asyncio.sleep(WATCH_INTERVAL)
            after = await asyncio.to_thread(_snapshot, real)
            for name in sorted(set(before) | set(after)):
                if before.get(name) != after.get(name):
                    kind = "change" if name in before and name in after else "rename"
                    self._emit("fs.watch", {"id": watch_id, "type": kind, "filename": name})
            before = after


def _read_framed(real: Path) -> FramedBytes:
    with real.open("rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        buffer = FramedBytes(FRAME_PREFIX + size)
        view = memoryview(buffer)
        filled = FRAME_PREFIX
        while filled < len(buffer):
            count = handle.readinto(view[filled:])
            if not count:
                break
            filled += count
        view.release()
        del buffer[filled:]  # the file shrank while it was read
        rest = handle.read()  # or grew
    buffer += rest
    return buffer


def _snapshot(real: Path) -> dict[str, tuple[int, int]]:
    try:
        if real.is_dir():
            out = {}
            with os.scandir(real) as entries:
                for entry in entries:
                    info = entry.stat(follow_symlinks=False)
                    out[entry.name] = (info.st_mtime_ns, info.st_size)
            return out
        info = real.stat()
        return {real.name: (info.st_mtime_ns, info.st_size)}
    except OSError:
        return {}


def _atomic_write(real: Path, payload: bytes) -> None:
    """Write to a temporary file beside the target, then rename: no half-written files."""
    temporary = real.with_name(f".{real.name}.shoal-tmp")
    with temporary.open("wb") as handle:
        handle.write(payload)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, real)


def _bytes(data: Any) -> bytes:
    if isinstance(data, bytes | bytearray):
        return bytes(data)
    if isinstance(data, str):
        return data.encode("utf-8")
    raise BridgeError("data must be a string or a Uint8Array", code="EINVAL")


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


async def _io(function: Callable[[], Any], shown: str) -> Any:
    try:
        return await asyncio.to_thread(function)
    except OSError as exc:
        raise os_error(exc, shown) from None
