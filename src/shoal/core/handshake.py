"""Handshake bookkeeping: one Noise XX exchange in flight, plus the identity proof that
binds a peer's Ed25519 identity to the X25519 key it used.

The proof travels as the payload of Noise messages 2 and 3 (so it is encrypted)::

    ed25519_public[32] | signature[64] | flags u8     (flags bit 0: the sender is an introducer)

where the signature covers ``"shoal/static-key-endorsement/v1" || x25519_static_public``.
"""

from __future__ import annotations

from dataclasses import dataclass

from shoal.core.noise import HandshakeState
from shoal.core.wire import Address
from shoal.errors import RemoteProtocolError
from shoal.identity import STATIC_PROOF_CONTEXT, Identity, verify_signature

PROLOGUE = b"shoal/1"
PROOF_SIZE = 32 + 64 + 1
FLAG_INTRODUCER = 0x01


def make_proof(identity: Identity, introducer: bool) -> bytes:
    flags = FLAG_INTRODUCER if introducer else 0
    return identity.public_key + identity.static_proof + bytes((flags,))


def check_proof(payload: bytes, remote_static: bytes | None) -> tuple[bytes, bool]:
    """Verify a peer's proof; returns (peer id bytes, is introducer)."""
    if len(payload) < PROOF_SIZE or remote_static is None:
        raise RemoteProtocolError("handshake carries no identity proof")
    public, signature, flags = payload[:32], payload[32:96], payload[96]
    if not verify_signature(public, STATIC_PROOF_CONTEXT + remote_static, signature):
        raise RemoteProtocolError("identity proof does not verify")
    return bytes(public), bool(flags & FLAG_INTRODUCER)


@dataclass(slots=True)
class PendingHandshake:
    """A handshake we started (waiting for RESP) or answered (waiting for FINAL)."""

    local_sid: bytes
    state: HandshakeState
    initiator: bool
    address: Address
    created: float
    expected_peer: bytes | None = None
    remote_sid: bytes = b""
    datagram: bytes = b""
    """INIT to retransmit (initiator) or RESP to repeat when INIT repeats (responder)."""
    next_retry: float = 0.0
    backoff: float = 0.25
    deadline: float = 0.0
    purpose: str = "peer"
    socket: int = 0
    """The local socket the handshake's packets use."""
