"""Keyed node identities.

A node's identity is an Ed25519 key pair. Its peer id is the lowercase hex of the 32-byte
public key, so anyone holding a peer id can check that node's signatures and nobody can
claim an id without its private key. The X25519 key the node uses in Noise handshakes is
derived from the Ed25519 seed and endorsed by an Ed25519 signature (see ``static_proof``).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from shoal.errors import IdentityError, LocalProtocolError
from shoal.keys import keys_dir as keys_dir
from shoal.keys import keys_path as keys_path
from shoal.keys import private_folder as private_folder

PEER_ID_BYTES = 32
_FILE_HEADER = "shoal-identity-v1"
_STATIC_INFO = b"shoal/x25519-static/v1"
STATIC_PROOF_CONTEXT = b"shoal/static-key-endorsement/v1"

_RAW = serialization.Encoding.Raw
_RAW_PUB = serialization.PublicFormat.Raw
_RAW_PRIV = serialization.PrivateFormat.Raw
_NO_ENC = serialization.NoEncryption()


def peer_id_from_bytes(raw: bytes) -> str:
    """The text form of a 32-byte public key."""
    if len(raw) != PEER_ID_BYTES:
        raise LocalProtocolError(f"a peer id is {PEER_ID_BYTES} bytes, got {len(raw)}")
    return raw.hex()


def peer_id_to_bytes(peer_id: str) -> bytes:
    """Parse a peer id; raises ``LocalProtocolError`` (code ``EINVAL``) if it is malformed."""
    try:
        raw = bytes.fromhex(peer_id)
    except (ValueError, TypeError):
        raise LocalProtocolError(f"not a peer id (64 hex digits expected): {peer_id!r}") from None
    if len(raw) != PEER_ID_BYTES:
        raise LocalProtocolError(f"not a peer id (64 hex digits expected): {peer_id!r}")
    return raw


def verify_signature(peer_id: bytes, data: bytes, signature: bytes) -> bool:
    """Whether ``signature`` over ``data`` was made by the key behind ``peer_id``."""
    try:
        Ed25519PublicKey.from_public_bytes(peer_id).verify(signature, data)
    except (InvalidSignature, ValueError):
        return False
    return True


class Identity:
    """An Ed25519 key pair plus the X25519 key derived from it for handshakes."""

    def __init__(self, seed: bytes) -> None:
        if len(seed) != 32:
            raise LocalProtocolError("an identity seed is 32 bytes")
        self._seed = bytes(seed)
        self._signing_key = Ed25519PrivateKey.from_private_bytes(self._seed)
        self.public_key: bytes = self._signing_key.public_key().public_bytes(_RAW, _RAW_PUB)
        static_seed = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=None, info=_STATIC_INFO
        ).derive(self._seed)
        self.static_key = X25519PrivateKey.from_private_bytes(static_seed)
        self.static_public: bytes = self.static_key.public_key().public_bytes(_RAW, _RAW_PUB)
        self.static_proof: bytes = self.sign(STATIC_PROOF_CONTEXT + self.static_public)
        self.path: Path | None = None
        """The file this identity was loaded from or saved to (a node running it holds
        the file's lock, see ``IdentityLock``); None for one only in memory."""

    @property
    def peer_id(self) -> str:
        """This identity's peer id (64 lowercase hex digits)."""
        return self.public_key.hex()

    @classmethod
    def generate(cls) -> Identity:
        """A fresh identity from the OS random source."""
        return cls(os.urandom(32))

    def sign(self, data: bytes) -> bytes:
        """An Ed25519 signature over ``data``."""
        return self._signing_key.sign(data)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the seed to ``path``, readable by the owner only (0600); never overwrites,
        and appears whole (a reader never sees a half-written file)."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=".shoal-key-")
        except OSError as exc:
            raise IdentityError(f"{target}: cannot create ({exc.strerror})") from exc
        try:
            with os.fdopen(fd, "w") as handle:  # mkstemp makes it 0600
                handle.write(f"{_FILE_HEADER}\n{self._seed.hex()}\n")
            os.link(temporary, target)
            self.path = target
        except FileExistsError:
            raise IdentityError(f"{target}: already exists", code="EEXIST") from None
        except OSError as exc:
            raise IdentityError(f"{target}: cannot create ({exc.strerror})") from exc
        finally:
            with contextlib.suppress(OSError):
                os.unlink(temporary)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Identity:
        """Read an identity written by ``save``."""
        source = Path(path)
        try:
            text = source.read_text()
        except FileNotFoundError:
            raise IdentityError(f"{source}: no such identity file", code="ENOENT") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise IdentityError(f"{source}: cannot read identity ({exc})") from exc
        lines = text.split()
        if len(lines) != 2 or lines[0] != _FILE_HEADER:
            raise IdentityError(f"{source}: not a Shoal identity file")
        try:
            seed = bytes.fromhex(lines[1])
        except ValueError:
            raise IdentityError(f"{source}: corrupt identity file") from None
        if len(seed) != 32:
            raise IdentityError(f"{source}: corrupt identity file")
        identity = cls(seed)
        identity.path = source
        return identity

    @classmethod
    def load_or_create(cls, path: str | os.PathLike[str] | None = None) -> Identity:
        """Load the identity at ``path`` (default: the user data dir), creating it if absent."""
        target = Path(path) if path is not None else default_identity_path()
        if target.exists():
            return cls.load(target)
        identity = cls.generate()
        try:
            identity.save(target)
        except IdentityError as exc:
            if exc.code == "EEXIST":  # another process created it first
                return cls.load(target)
            raise
        return identity

    def __repr__(self) -> str:
        return f"Identity(peer_id={self.peer_id[:16]}...)"


def default_identity_path(role: str = "identity") -> Path:
    """Where ``Identity.load_or_create()`` keeps the identity when no path is given:
    ``<role>.key`` in ``keys_dir()``. ``role`` names another of the user's keys
    ("introducer", "publisher"), each a key of its own. A key an older Shoal kept in the
    user data dir is moved there."""
    from platformdirs import user_data_path

    target = keys_dir() / f"{role}.key"
    move_key(user_data_path("shoal", appauthor=False) / f"{role}.key", target)
    return target


def move_key(old: Path, new: Path) -> None:
    """Move the identity file at ``old`` to ``new`` (a private folder), unless ``new``
    exists already or ``old`` does not: the same key, the same peer id, in its new
    place."""
    if new.exists() or not old.is_file():
        return
    new.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        os.link(old, new)
    except FileExistsError:
        return
    except OSError:  # another file system: write a copy, 0600, then drop the old one
        Identity.load(old).save(new)
    os.unlink(old)


def is_identity_file(path: Path) -> bool:
    """Whether the file at ``path`` is a Shoal identity (a private key)."""
    try:
        with path.open("rb") as handle:
            return handle.read(len(_FILE_HEADER) + 1).rstrip() == _FILE_HEADER.encode()
    except OSError:
        return False


class IdentityLock:
    """An exclusive claim on the identity file at ``path`` while held: a second claim,
    from this process or another, raises ``IdentityError`` ``EBUSY`` (two nodes with one
    peer id would take each other's connections). ``Node`` holds one while it runs."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._handle = None
        try:
            import fcntl
        except ImportError:  # no advisory locks on this platform
            return
        try:
            handle = self.path.open("rb")
        except OSError as exc:
            raise IdentityError(f"{path}: cannot open ({exc.strerror})") from exc
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise IdentityError(
                f"{path}: this identity is in use by another running Shoal node; give each "
                "node its own (--identity)", code="EBUSY") from None
        self._handle = handle

    def release(self) -> None:
        """Give the claim up (its node has closed), so another node may run this identity."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None
