"""The page's file system: Node-style calls confined to the folders the app was granted.

Every path is resolved before it is checked: ``~`` expands, relative paths start at the
app's data dir, ``..`` and symlinks are followed to the real target (``realpath``), and
case is normalised where the platform ignores it. Only then is the target compared with
the granted roots: the data dir (read-write), ``permissions.fs.read`` (read) and
``permissions.fs.write`` (read-write). A refused call raises ``EPERM`` before touching
anything. ``rm`` and ``rename`` act on the entry the path names (a link itself, never
what it points to), so for them only the folder holding it is resolved.

What was checked is what is used: every call then reaches its file from a descriptor on
the granted root without following links (``beneath``), so a folder swapped for a link
in between makes the call fail instead of escaping. Only regular files are read or
appended to; a FIFO or a device is refused, never waited on.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import secrets
import shutil
import stat as stat_module
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO

from shoal.errors import ShoalError
from shoal.keys import keys_path
from shoal.runtime.beneath import (
    WALKS,
    open_beneath,
    parent_of,
    parts_below,
    regular_file,
    walk,
)
from shoal.runtime.config import IDENTITY_FILE, WEBVIEW_STORAGE
from shoal.runtime.scope import current_page

MAX_CHUNK = 16 << 20
WATCH_INTERVAL = 0.25
MAX_WATCHES_PER_PAGE = 64
IO_THREADS = 16
IO_PER_PAGE = 4
"""File calls of one page running at once; the rest wait their turn, so that one page
cannot take every I/O thread."""


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


SHOAL_OWN = frozenset({IDENTITY_FILE, WEBVIEW_STORAGE})
"""Entries of the app's data folder that Shoal keeps there for the app and the page may
not touch: the node's private key (a script injected into the page could send it away),
and the webview's own storage."""


class PathPolicy:
    """Resolves page paths and decides whether a read or write may touch them."""

    def __init__(self, data_dir: Path, read: tuple[str, ...], write: tuple[str, ...]) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir = Path(os.path.realpath(data_dir))
        self.read_roots = [self._root(p) for p in read]
        self.write_roots = [self.data_dir, *(self._root(p) for p in write)]
        self.keys = Path(os.path.realpath(keys_path()))
        """The user's Shoal keys: never the page's, whatever it was granted."""

    @staticmethod
    def _root(path: str) -> Path:
        return Path(os.path.realpath(os.path.expanduser(path)))

    def locate(self, path: Any, *, write: bool) -> tuple[Path, Path]:
        """``(granted root, real path)`` for ``path``, or ``EPERM``."""
        return self._checked(path, Path(os.path.realpath(self._candidate(path))), write)

    def locate_entry(self, path: Any) -> tuple[Path, Path]:
        """``(granted root, entry)`` for a call that acts on the entry ``path`` names
        (``rm``, ``rename``): its folder is resolved, its last component is not, so a
        link is itself the entry. Granted folders themselves are refused."""
        candidate = self._candidate(path)
        name = candidate.name
        if name in ("", ".", ".."):  # "a/..": the entry is the folder it resolves to
            entry = Path(os.path.realpath(candidate))
        else:
            entry = Path(os.path.realpath(candidate.parent)) / name
        root, entry = self._checked(path, entry, True)
        if self.is_root(entry):
            raise BridgeError(f"{path} is a granted folder itself", code="EPERM")
        if _inside(self.keys, entry):  # moving a folder that holds the keys moves them
            raise BridgeError(f"{path} holds Shoal's keys", code="EPERM")
        return root, entry

    def _candidate(self, path: Any) -> Path:
        if not isinstance(path, str) or not path or "\x00" in path:
            raise BridgeError("a path must be a non-empty string", code="EINVAL")
        candidate = Path(os.path.expanduser(path))
        return candidate if candidate.is_absolute() else self.data_dir / candidate

    def _checked(self, path: str, real: Path, write: bool) -> tuple[Path, Path]:
        roots = self.write_roots if write else [*self.write_roots, *self.read_roots]
        holding = [root for root in roots if _inside(real, root)]
        if not holding:
            kind = "write" if write else "read"
            raise BridgeError(f"this app may not {kind} {path}", code="EPERM")
        if _inside(real, self.keys):
            raise BridgeError(f"{path} is one of Shoal's keys, not the page's",
                              code="EPERM")
        if _inside(real, self.data_dir) and not _same(real, self.data_dir) and \
                real.relative_to(self.data_dir).parts[0] in SHOAL_OWN:
            raise BridgeError(f"{path} is Shoal's own, not the page's", code="EPERM")
        return max(holding, key=lambda root: len(str(root))), real

    def is_root(self, real: Path) -> bool:
        return any(_same(real, root) for root in [*self.write_roots, *self.read_roots])


def _same(a: Path, b: Path) -> bool:
    return os.path.normcase(a) == os.path.normcase(b)


def _inside(path: Path, root: Path) -> bool:
    path_text, root_text = os.path.normcase(path), os.path.normcase(root)
    return path_text == root_text or path_text.startswith(root_text.rstrip(os.sep) + os.sep)


def bulk_result(call: Callable[..., Any]) -> Callable[..., Any]:
    """Mark a call whose result may be large: the bridge runs few of them at once per
    page and sends each result before it starts more."""
    call.bulk = True  # type: ignore[attr-defined]
    return call


class _Watch:
    """Key of one watch in its page's scope."""

    __slots__ = ("watch_id",)

    def __init__(self, watch_id: int) -> None:
        self.watch_id = watch_id


class FileSystem:
    """``fs.*`` calls. Blocking work runs on I/O threads so the bridge stays responsive."""

    def __init__(self, policy: PathPolicy, emit: Callable[[str, dict], None]) -> None:
        self.policy = policy
        self._emit = emit
        self._watches: dict[int, asyncio.Task[None]] = {}
        self._next_watch = 1
        self._threads = ThreadPoolExecutor(IO_THREADS, thread_name_prefix="shoal-fs")
        self._turns: dict[object, asyncio.Semaphore] = {}

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

    def open_for_reading(self, path: str) -> BinaryIO:
        """A regular file of the grants, open for reading (``BridgeError`` otherwise)."""
        root, real = self.policy.locate(path, write=False)
        try:
            return _open_regular(root, real, path)
        except OSError as exc:
            raise os_error(exc, path) from None

    @bulk_result
    async def read_file(self, path: str) -> FramedBytes:
        root, real = self.policy.locate(path, write=False)

        def whole() -> FramedBytes:
            with _open_regular(root, real, path) as handle:
                return _read_framed(handle)

        return await self._io(whole, path)

    @bulk_result
    async def read(self, path: str, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes at ``offset``: the pull side of read streams."""
        if not _count(offset) or not _count(length) or length > MAX_CHUNK:
            raise BridgeError(f"offset and length must be integers, length <= {MAX_CHUNK}",
                              code="EINVAL")
        root, real = self.policy.locate(path, write=False)

        def chunk() -> bytes:
            with _open_regular(root, real, path) as handle:
                handle.seek(offset)
                return handle.read(length)

        return await self._io(chunk, path)

    async def write_file(self, path: str, data: bytes | str) -> None:
        root, real = self.policy.locate(path, write=True)
        payload = _bytes(data)
        await self._io(lambda: _atomic_write(root, real, payload), path)

    async def append_file(self, path: str, data: bytes | str) -> None:
        root, real = self.policy.locate(path, write=True)
        payload = _bytes(data)

        def append() -> None:
            descriptor = open_beneath(root, real, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
            with os.fdopen(descriptor, "ab") as handle:
                regular_file(descriptor, path)
                handle.write(payload)

        await self._io(append, path)

    async def stat(self, path: str) -> dict[str, Any]:
        root, real = self.policy.locate(path, write=False)

        def status() -> os.stat_result:
            descriptor = open_beneath(root, real, os.O_RDONLY)
            try:
                return os.fstat(descriptor)
            finally:
                os.close(descriptor)

        info = await self._io(status, path)
        return {
            "size": info.st_size,
            "mtimeMs": info.st_mtime * 1000,
            "ctimeMs": info.st_ctime * 1000,
            "mode": info.st_mode,
            "isFile": stat_module.S_ISREG(info.st_mode),
            "isDirectory": stat_module.S_ISDIR(info.st_mode),
        }

    async def readdir(self, path: str = ".") -> list[dict[str, Any]]:
        root, real = self.policy.locate(path, write=False)

        def listing() -> list[dict[str, Any]]:
            return [
                {"name": name, "isDirectory": stat_module.S_ISDIR(info.st_mode),
                 "isFile": stat_module.S_ISREG(info.st_mode),
                 "isSymbolicLink": stat_module.S_ISLNK(info.st_mode)}
                for name, info in sorted(_entries(root, real))
            ]

        return await self._io(listing, path)

    async def mkdir(self, path: str, recursive: bool = False) -> None:
        root, real = self.policy.locate(path, write=True)
        await self._io(lambda: _make_folder(root, real, bool(recursive)), path)

    async def rm(self, path: str, recursive: bool = False) -> None:
        root, entry = self.policy.locate_entry(path)

        def remove() -> None:
            with parent_of(root, entry) as (folder, name):
                info = os.stat(name, dir_fd=folder, follow_symlinks=False)
                if not stat_module.S_ISDIR(info.st_mode):
                    os.unlink(name, dir_fd=folder)
                elif not recursive:
                    os.rmdir(name, dir_fd=folder)
                elif folder is None:
                    shutil.rmtree(name)
                else:
                    shutil.rmtree(name, dir_fd=folder)  # walks by descriptors, no links

        await self._io(remove, path)

    async def rename(self, source: str, target: str) -> None:
        source_root, source_entry = self.policy.locate_entry(source)
        target_root, target_entry = self.policy.locate_entry(target)

        def move() -> None:
            with parent_of(source_root, source_entry) as (from_folder, from_name), \
                    parent_of(target_root, target_entry) as (to_folder, to_name):
                os.replace(from_name, to_name, src_dir_fd=from_folder, dst_dir_fd=to_folder)

        await self._io(move, source)

    async def watch(self, path: str) -> int:
        """Report changes under ``path`` as ``fs.watch`` events until ``unwatch`` or
        until the page that asked goes away."""
        root, real = self.policy.locate(path, write=False)
        page = current_page.get()
        if page is not None and page.count(_Watch) >= MAX_WATCHES_PER_PAGE:
            raise BridgeError(f"a page may watch at most {MAX_WATCHES_PER_PAGE} paths",
                              code="EMFILE")
        first = await self._io(lambda: _snapshot(root, real, strict=True), path)
        watch_id = self._next_watch
        self._next_watch += 1
        self._watches[watch_id] = asyncio.get_running_loop().create_task(
            self._poll(watch_id, root, real, first)
        )
        if page is not None:
            page.hold(_Watch(watch_id), lambda: self._stop_watch(watch_id))
        return watch_id

    async def unwatch(self, watch_id: int) -> None:
        self._stop_watch(watch_id)

    def _stop_watch(self, watch_id: Any) -> None:
        task = self._watches.pop(watch_id, None) if isinstance(watch_id, int) else None
        if task is not None:
            task.cancel()

    @property
    def watching(self) -> int:
        """Watches running now (for tests and the inspector)."""
        return len(self._watches)

    def close(self) -> None:
        for task in self._watches.values():
            task.cancel()
        self._watches.clear()
        self._threads.shutdown(wait=False, cancel_futures=True)

    async def _io(self, function: Callable[[], Any], shown: str) -> Any:
        """Run ``function`` on an I/O thread, at most ``IO_PER_PAGE`` at once per page."""
        page = current_page.get()
        turns = self._turns.get(page)
        if turns is None:
            turns = self._turns[page] = asyncio.Semaphore(IO_PER_PAGE)
            if page is not None:
                page.hold(turns, lambda: self._turns.pop(page, None))
        async with turns:
            try:
                return await asyncio.get_running_loop().run_in_executor(self._threads, function)
            except OSError as exc:
                raise os_error(exc, shown) from None

    async def _poll(self, watch_id: int, root: Path, real: Path,
                    before: dict[str, tuple[int, int]]) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(WATCH_INTERVAL)
            after = await loop.run_in_executor(self._threads, _snapshot, root, real)
            for name in sorted(set(before) | set(after)):
                if before.get(name) != after.get(name):
                    kind = "change" if name in before and name in after else "rename"
                    self._emit("fs.watch", {"id": watch_id, "type": kind, "filename": name})
            before = after


def _open_regular(root: Path, real: Path, shown: str) -> BinaryIO:
    descriptor = open_beneath(root, real, os.O_RDONLY)
    try:
        regular_file(descriptor, shown)
    except BaseException:
        os.close(descriptor)
        raise
    return os.fdopen(descriptor, "rb")


def _listing(folder: int | Path) -> list[tuple[str, os.stat_result]]:
    """The names in an open folder (or at a path) with their own status (links not
    followed)."""
    with os.scandir(folder) as entries:
        return [(e.name, e.stat(follow_symlinks=False)) for e in entries]


def _entries(root: Path, real: Path) -> list[tuple[str, os.stat_result]]:
    """``_listing`` of folder ``real``, reached from ``root`` without following links."""
    if not WALKS:
        return _listing(real)
    folder = walk(root, parts_below(root, real))
    try:
        return _listing(folder)
    finally:
        os.close(folder)


def _make_folder(root: Path, real: Path, recursive: bool) -> None:
    parts = parts_below(root, real)
    if not WALKS:
        real.mkdir(parents=recursive, exist_ok=recursive)
        return
    if not parts:
        if not recursive:
            raise FileExistsError(errno.EEXIST, "file exists", str(real))
        return
    if not recursive:
        with parent_of(root, real) as (folder, name):
            os.mkdir(name, dir_fd=folder)
        return
    for depth in range(1, len(parts) + 1):
        with parent_of(root, root.joinpath(*parts[:depth])) as (folder, name):
            try:
                os.mkdir(name, dir_fd=folder)
            except FileExistsError:
                if not stat_module.S_ISDIR(os.stat(name, dir_fd=folder,
                                                   follow_symlinks=False).st_mode):
                    raise


def _read_framed(handle: BinaryIO) -> FramedBytes:
    size = os.fstat(handle.fileno()).st_size
    buffer = FramedBytes(FRAME_PREFIX + size)
    view = memoryview(buffer)
    filled = FRAME_PREFIX
    while filled < len(buffer):
        count = handle.readinto(view[filled:])  # type: ignore[attr-defined]
        if not count:
            break
        filled += count
    view.release()
    del buffer[filled:]  # the file shrank while it was read
    buffer += handle.read()  # or grew
    return buffer


def _snapshot(root: Path, real: Path, strict: bool = False) -> dict[str, tuple[int, int]]:
    """Names under ``real`` (or ``real`` itself) with their mtime and size; ``strict``
    raises where a later poll would answer with nothing."""
    try:
        descriptor = open_beneath(root, real, os.O_RDONLY)
        try:
            info = os.fstat(descriptor)
            if not stat_module.S_ISDIR(info.st_mode):
                return {real.name: (info.st_mtime_ns, info.st_size)}
            listing = _listing(descriptor if WALKS else real)  # the folder just opened
        finally:
            os.close(descriptor)
        return {name: (entry.st_mtime_ns, entry.st_size) for name, entry in listing}
    except OSError:
        if strict:
            raise
        return {}


def _atomic_write(root: Path, real: Path, payload: bytes) -> None:
    """Write to a new file of an unguessable name beside the target, created exclusively
    (never through a link someone planted), then rename it over the target."""
    with parent_of(root, real) as (folder, name):
        temporary = f".{name}.{secrets.token_hex(8)}.shoal-tmp"
        if folder is None:  # no walk here: the names are full paths
            temporary = os.path.join(os.path.dirname(name), os.path.basename(temporary))
        flags = (os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
                 | getattr(os, "O_CLOEXEC", 0))
        descriptor = os.open(temporary, flags, 0o666, dir_fd=folder)
        try:
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(payload)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, name, src_dir_fd=folder, dst_dir_fd=folder)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary, dir_fd=folder)
            raise


def _bytes(data: Any) -> bytes:
    if isinstance(data, bytes | bytearray):
        return bytes(data)
    if isinstance(data, str):
        return data.encode("utf-8")
    raise BridgeError("data must be a string or a Uint8Array", code="EINVAL")


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
