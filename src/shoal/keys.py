"""Where the user's keys live: one private folder, found and made without loading any
cryptography (every app host keeps its pages out of it, and most apps hold no key)."""

from __future__ import annotations

import os
from pathlib import Path

from shoal.errors import IdentityError


def keys_dir() -> Path:
    """The user's private folder of Shoal keys (the user's node identity, introducer and
    publisher keys, and every app's node key): ``$SHOAL_KEYS_DIR`` or ``keys`` in the user data
    dir, made with mode 0700 and refused (``EPERM``) if another user owns it or may read
    it. An app's page never reaches it, whatever folders it was granted."""
    return private_folder(keys_path())


def keys_path() -> Path:
    """Where ``keys_dir`` is, without making it."""
    base = os.environ.get("SHOAL_KEYS_DIR")
    if base:
        return Path(base)
    from platformdirs import user_data_path

    return user_data_path("shoal", appauthor=False) / "keys"


def private_folder(folder: Path) -> Path:
    """``folder``, created with mode 0700 if missing; ``IdentityError`` ``EPERM`` unless
    it is a real folder of this user's that no one else may enter."""
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        info = folder.lstat()
    except OSError as exc:
        raise IdentityError(f"{folder}: cannot make it a private folder ({exc.strerror})",
                            code="EACCES") from None
    import stat

    mine = not hasattr(os, "getuid") or info.st_uid == os.getuid()
    if not stat.S_ISDIR(info.st_mode) or not mine:
        raise IdentityError(f"{folder}: not a folder of this user's; Shoal keeps no key "
                            "there", code="EPERM")
    if info.st_mode & 0o077:
        os.chmod(folder, 0o700)
    return folder
