"""The Noise Protocol Framework (revision 34), as much of it as Shoal needs.

Shoal sessions use ``Noise_XX_25519_ChaChaPoly_SHA256``: three messages, both sides'
static keys sent encrypted, forward secrecy from the ephemeral-ephemeral DH. A node that
knows the responder's static key already (an introducer told it) may use
``Noise_IK_25519_ChaChaPoly_SHA256`` instead, whose first message is encrypted and
authenticated, so it can carry the first application message. The handshake state
machine here is generic over the token patterns so it can be checked against the
published test vectors; every primitive comes from ``cryptography``.

Ephemeral keys are not generated here: the caller passes 32 random bytes, so a seeded
simulation replays exactly.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from shoal.errors import LocalProtocolError, RemoteProtocolError

DHLEN = 32
HASHLEN = 32
TAGLEN = 16
MAX_NONCE = 2**64 - 1

PATTERNS: dict[str, tuple[tuple[str, ...], ...]] = {
    "NN": (("e",), ("e", "ee")),
    "XX": (("e",), ("e", "ee", "s", "es"), ("s", "se")),
    "IK": (("e", "es", "s", "ss"), ("e", "ee", "se")),
}
RESPONDER_KEY_KNOWN = frozenset({"IK"})
"""Patterns whose pre-message is the responder's static key (``<- s``)."""


def _public_bytes(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _dh(private: X25519PrivateKey, public: bytes) -> bytes:
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError:  # low-order point: the shared secret would be all zeros
        raise RemoteProtocolError("handshake key is not a valid X25519 point") from None


def _hmac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


def hkdf2(chaining_key: bytes, input_key_material: bytes) -> tuple[bytes, bytes]:
    """The Noise HKDF with two outputs."""
    temp = _hmac(chaining_key, input_key_material)
    out1 = _hmac(temp, b"\x01")
    return out1, _hmac(temp, out1 + b"\x02")


def nonce_bytes(n: int) -> bytes:
    """The ChaChaPoly nonce for counter ``n``: 32 zero bits then 64-bit little-endian."""
    return b"\x00\x00\x00\x00" + n.to_bytes(8, "little")


class CipherState:
    """A key and a counter nonce."""

    __slots__ = ("_aead", "n")

    def __init__(self, key: bytes | None = None) -> None:
        self._aead = ChaCha20Poly1305(key) if key is not None else None
        self.n = 0

    @property
    def has_key(self) -> bool:
        return self._aead is not None

    def encrypt_with_ad(self, ad: bytes, plaintext: bytes) -> bytes:
        if self._aead is None:
            return plaintext
        if self.n >= MAX_NONCE:
            raise LocalProtocolError("nonce space exhausted")
        out = self._aead.encrypt(nonce_bytes(self.n), plaintext, ad)
        self.n += 1
        return out

    def decrypt_with_ad(self, ad: bytes, ciphertext: bytes) -> bytes:
        if self._aead is None:
            return ciphertext
        try:
            out = self._aead.decrypt(nonce_bytes(self.n), ciphertext, ad)
        except InvalidTag:
            raise RemoteProtocolError("handshake message failed authentication") from None
        self.n += 1
        return out


@dataclass
class HandshakeState:
    """One side of a Noise handshake.

    Call ``write_message``/``read_message`` in the order the pattern dictates; once
    ``complete`` is true, ``split()`` gives the two transport keys.
    """

    pattern: str
    initiator: bool
    prologue: bytes
    static_key: X25519PrivateKey | None
    ephemeral_seed: bytes
    protocol_name: bytes = b""
    remote_static: bytes | None = None
    remote_ephemeral: bytes | None = None
    _messages: tuple[tuple[str, ...], ...] = ()
    _index: int = 0
    _ck: bytes = b""
    _h: bytes = b""
    _cipher: CipherState = field(default_factory=CipherState)
    _ephemeral: X25519PrivateKey | None = None

    def __post_init__(self) -> None:
        if self.pattern not in PATTERNS:
            raise LocalProtocolError(f"unsupported Noise pattern {self.pattern}")
        if len(self.ephemeral_seed) != DHLEN:
            raise LocalProtocolError("ephemeral seed must be 32 bytes")
        self._messages = PATTERNS[self.pattern]
        name = self.protocol_name or f"Noise_{self.pattern}_25519_ChaChaPoly_SHA256".encode()
        self.protocol_name = name
        self._h = name.ljust(HASHLEN, b"\x00") if len(name) <= HASHLEN else _sha256(name)
        self._ck = self._h
        self._mix_hash(self.prologue)
        if self.pattern in RESPONDER_KEY_KNOWN:
            if self.initiator:
                if self.remote_static is None:
                    raise LocalProtocolError(f"{self.pattern} needs the responder's static key")
                self._mix_hash(self.remote_static)
            else:
                if self.static_key is None:
                    raise LocalProtocolError(f"{self.pattern} needs a static key")
                self._mix_hash(_public_bytes(self.static_key))

    @property
    def complete(self) -> bool:
        return self._index >= len(self._messages)

    @property
    def handshake_hash(self) -> bytes:
        return self._h

    @property
    def my_turn(self) -> bool:
        return not self.complete and (self._index % 2 == 0) == self.initiator

    def _mix_hash(self, data: bytes) -> None:
        self._h = _sha256(self._h + data)

    def _mix_key(self, ikm: bytes) -> None:
        self._ck, key = hkdf2(self._ck, ikm)
        self._cipher = CipherState(key)

    def _encrypt_and_hash(self, plaintext: bytes) -> bytes:
        out = self._cipher.encrypt_with_ad(self._h, plaintext)
        self._mix_hash(out)
        return out

    def _decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        out = self._cipher.decrypt_with_ad(self._h, ciphertext)
        self._mix_hash(ciphertext)
        return out

    def _dh_token(self, token: str) -> bytes:
        mine_first = {"ee": ("e", "e"), "es": ("e", "s"), "se": ("s", "e"), "ss": ("s", "s")}
        local_kind, remote_kind = mine_first[token]
        if not self.initiator:
            local_kind, remote_kind = remote_kind, local_kind
        local = self._ephemeral if local_kind == "e" else self.static_key
        remote = self.remote_ephemeral if remote_kind == "e" else self.remote_static
        if local is None or remote is None:
            raise LocalProtocolError(f"Noise token {token} needs a key that is missing")
        return _dh(local, remote)

    def write_message(self, payload: bytes) -> bytes:
        """The next handshake message, carrying ``payload``."""
        if not self.my_turn:
            raise LocalProtocolError("not this side's turn to write a handshake message")
        out = bytearray()
        for token in self._messages[self._index]:
            if token == "e":
                self._ephemeral = X25519PrivateKey.from_private_bytes(self.ephemeral_seed)
                epub = _public_bytes(self._ephemeral)
                out += epub
                self._mix_hash(epub)
            elif token == "s":
                if self.static_key is None:
                    raise LocalProtocolError("this pattern needs a static key")
                out += self._encrypt_and_hash(_public_bytes(self.static_key))
            else:
                self._mix_key(self._dh_token(token))
        out += self._encrypt_and_hash(payload)
        self._index += 1
        return bytes(out)

    def read_message(self, message: bytes) -> bytes:
        """Consume the peer's next handshake message and return its payload."""
        if self.complete or self.my_turn:
            raise RemoteProtocolError("unexpected handshake message")
        view = memoryview(message)
        pos = 0
        for token in self._messages[self._index]:
            if token == "e":
                if len(view) - pos < DHLEN:
                    raise RemoteProtocolError("handshake message truncated")
                self.remote_ephemeral = bytes(view[pos : pos + DHLEN])
                pos += DHLEN
                self._mix_hash(self.remote_ephemeral)
            elif token == "s":
                size = DHLEN + (TAGLEN if self._cipher.has_key else 0)
                if len(view) - pos < size:
                    raise RemoteProtocolError("handshake message truncated")
                self.remote_static = self._decrypt_and_hash(bytes(view[pos : pos + size]))
                pos += size
            else:
                self._mix_key(self._dh_token(token))
        rest = bytes(view[pos:])
        if self._cipher.has_key and len(rest) < TAGLEN:
            raise RemoteProtocolError("handshake message truncated")
        payload = self._decrypt_and_hash(rest)
        self._index += 1
        return payload

    def split(self) -> tuple[bytes, bytes]:
        """(initiator-to-responder key, responder-to-initiator key) after completion."""
        if not self.complete:
            raise LocalProtocolError("handshake not complete")
        return hkdf2(self._ck, b"")


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()
