"""Opening files beneath a granted folder, so that what was checked is what is used.

A path is checked once it is fully resolved (``PathPolicy``), but between that check and
the use another process may swap a folder or a file on the way for a symlink that leads
out. Here every use walks from a descriptor held on the granted root, one component at a
time, refusing to follow any link (``O_NOFOLLOW``): the check already followed the links
that were there, so a link met now is a swap, and the call fails with ``ELOOP`` instead of
escaping. On systems without ``dir_fd`` support (Windows) the walk falls back to plain
paths.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path

WALKS = os.open in os.supports_dir_fd and hasattr(os, "O_NOFOLLOW")
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_DIR_FLAGS = os.O_RDONLY | _DIRECTORY | _NOFOLLOW | _CLOEXEC


def parts_below(root: Path, real: Path) -> tuple[str, ...]:
    """The components of ``real`` below ``root`` (``real`` is inside it, both resolved)."""
    return real.relative_to(root).parts


@contextlib.contextmanager
def parent_of(root: Path, real: Path) -> Iterator[tuple[int | None, str]]:
    """``(directory descriptor, name)`` of ``real``'s entry in its folder, the folder
    reached from ``root`` without following links. With no walk support: ``(None,
    full path)``. ``real`` must lie strictly below ``root``."""
    parts = parts_below(root, real)
    if not parts:
        raise OSError(errno.EPERM, "a granted folder itself", str(real))
    if not WALKS:
        yield None, str(real)
        return
    folder = walk(root, parts[:-1])
    try:
        yield folder, parts[-1]
    finally:
        os.close(folder)


def walk(root: Path, parts: tuple[str, ...]) -> int:
    """A descriptor on the folder ``root/parts...``, reached without following links."""
    folder = os.open(root, _DIR_FLAGS)
    try:
        for part in parts:
            inner = os.open(part, _DIR_FLAGS, dir_fd=folder)
            os.close(folder)
            folder = inner
    except BaseException:
        os.close(folder)
        raise
    return folder


def open_beneath(root: Path, real: Path, flags: int, mode: int = 0o666) -> int:
    """``os.open`` of ``real`` (inside ``root``) without following any link on the way
    or at the end. ``O_NONBLOCK`` is added so that opening a FIFO or a device cannot
    stall the caller; ``regular_file`` refuses those afterwards."""
    extra = _NOFOLLOW | _CLOEXEC | _NONBLOCK
    parts = parts_below(root, real)
    if not WALKS:
        return os.open(real, flags | extra, mode)
    if not parts:
        return os.open(root, flags | extra, mode)
    with parent_of(root, real) as (folder, name):
        return os.open(name, flags | extra, mode, dir_fd=folder)


def regular_file(descriptor: int, shown: str) -> os.stat_result:
    """The descriptor's status; ``EINVAL`` unless it is a regular file (a FIFO, socket or
    device would block a reader or never end), ``EISDIR`` for a folder."""
    info = os.fstat(descriptor)
    if stat.S_ISDIR(info.st_mode):
        raise IsADirectoryError(errno.EISDIR, "is a directory", shown)
    if not stat.S_ISREG(info.st_mode):
        raise OSError(errno.EINVAL, "not a regular file", shown)
    if _NONBLOCK:
        os.set_blocking(descriptor, True)
    return info
