"""Handshakes: Noise XX with identity proofs, a responder that keeps no state per INIT,
cookies for a busy responder, and version agreement.

Identity proof
--------------
The proof travels as the payload of Noise messages 2 and 3 (so it is encrypted)::

    ed25519_public[32] | signature[64] | flags u8 | version varint | capabilities varint
        [| incarnation[8], with capability bit CAP_INCARNATION]

where the signature covers ``"shoal/static-key-endorsement/v1" || x25519_static_public``.
In message 2, ``version`` is the version the responder chose from the initiator's hello
and ``capabilities`` the responder's; in message 3 the initiator repeats the version.
The *incarnation* is random, drawn once each time a node starts: a handshake whose
incarnation differs from the one a connection with the same peer carries proves that the
peer restarted and lost that connection (see ``peers``).

Stateless responder
-------------------
A responder answers an INIT without remembering it. Its ephemeral key and its session
id are derived (HMAC-SHA256) from a secret that rotates every ``SECRET_LIFETIME``
seconds, the INIT's first Noise message, the initiator's session id and the INIT's
source address. The FINAL repeats that first message, so the responder rebuilds the
same handshake state once the initiator has shown it receives packets at that address,
and only then holds anything. The lowest bit of the responder's session id names the
secret's epoch. A busy responder (more INITs than ``handshake_rate`` allows) answers
with a COOKIE instead: 16 bytes bound to the source address that the initiator puts in
its next INIT, which is then answered even under load.

First message in the INIT
-------------------------
An initiator that knows the responder's static key (an introducer handed it on, with the
responder's signature over it) may open with ``Noise_IK`` instead (INIT_IK, FINAL_IK).
Its first Noise message is encrypted to the responder and authenticated by the
initiator's static key, so it carries the initiator's proof and the first application
message (``Early``); the responder delivers that message at once and says so in the RESP,
one round trip before a FINAL could have carried it. Each early message has a random id;
the responder remembers the ids it delivered for ``2 * EARLY_WINDOW`` seconds and takes
only messages stamped within ``EARLY_WINDOW`` seconds of its own clock, so a repeated or
replayed INIT never delivers a message twice. The responder still keeps no connection
before the FINAL_IK, which repeats the first message as FINAL does.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from shoal.core.noise import HandshakeState
from shoal.core.wire import (
    COOKIE_SIZE,
    STATIC_ENDORSEMENT_SIZE,
    SUPPORTED_VERSIONS,
    Address,
    PacketKind,
    RelayPath,
    decode_hello,
    decode_varint,
    encode_address,
    encode_hello,
    encode_init,
    encode_varint,
)
from shoal.errors import RemoteProtocolError
from shoal.identity import STATIC_PROOF_CONTEXT, Identity, verify_signature

PROLOGUE = b"shoal/2"
PROOF_SIZE = 32 + 64 + 1
EARLY_WINDOW = 30.0
"""Seconds an early message's timestamp may differ from the responder's clock."""
MAX_EARLY = 900
"""Bytes of channel name and data an early message may have (it fits in the INIT)."""
FLAG_INTRODUCER = 0x01
CAP_INCARNATION = 0x01
"""The proof ends with the sender's 8-byte incarnation."""
INCARNATION_SIZE = 8
SECRET_LIFETIME = 120.0


class Proof(NamedTuple):
    peer: bytes
    introducer: bool
    version: int
    capabilities: int
    endorsement: bytes
    """The peer's static key and its signature over it (what introducers hand on)."""
    incarnation: bytes = b""
    """Random, new each time the peer starts (empty if it sent none)."""


def make_proof(identity: Identity, introducer: bool, version: int, capabilities: int,
               incarnation: bytes = b"") -> bytes:
    flags = FLAG_INTRODUCER if introducer else 0
    if incarnation:
        if len(incarnation) != INCARNATION_SIZE:
            raise ValueError("an incarnation is 8 bytes")
        capabilities |= CAP_INCARNATION
    return (identity.public_key + identity.static_proof + bytes((flags,))
            + encode_varint(version) + encode_varint(capabilities) + incarnation)


def _proof_fields(payload: bytes) -> tuple[int, int, bytes, int]:
    """(version, capabilities, incarnation, end) of the proof ``payload`` begins with."""
    if len(payload) < PROOF_SIZE:
        raise RemoteProtocolError("handshake carries no identity proof")
    version, pos = decode_varint(payload, PROOF_SIZE)
    capabilities, pos = decode_varint(payload, pos)
    incarnation = b""
    if capabilities & CAP_INCARNATION:
        incarnation = bytes(payload[pos : pos + INCARNATION_SIZE])
        if len(incarnation) != INCARNATION_SIZE:
            raise RemoteProtocolError("truncated identity proof")
        pos += INCARNATION_SIZE
    return version, capabilities, incarnation, pos


def proof_length(payload: bytes) -> int:
    """How many bytes at the start of ``payload`` the proof takes."""
    return _proof_fields(payload)[3]


def endorsed_static(endorsement: bytes, peer: bytes) -> bytes | None:
    """The static key in ``endorsement`` (key and signature) if ``peer`` signed it."""
    if len(endorsement) != STATIC_ENDORSEMENT_SIZE:
        return None
    static, signature = endorsement[:32], endorsement[32:]
    if not verify_signature(peer, STATIC_PROOF_CONTEXT + static, signature):
        return None
    return bytes(static)


class Early(NamedTuple):
    """The first application message, carried in an INIT_IK."""

    message_id: bytes
    """8 random bytes, the same in every INIT that carries this message."""
    sent_at: float
    """The sender's wall clock, seconds (sent in milliseconds)."""
    channel: str
    data: bytes

    @property
    def size(self) -> int:
        """The bytes of channel name and data (at most ``MAX_EARLY``)."""
        return len(self.channel.encode()) + len(self.data)


def encode_early_payload(proof: bytes, early: Early, hello: bytes) -> bytes:
    """The payload of an INIT_IK's Noise message: proof, early message, hello."""
    channel = early.channel.encode()
    return b"".join((proof, early.message_id, round(early.sent_at * 1000).to_bytes(8, "big"),
                     bytes((len(channel),)), channel, len(early.data).to_bytes(2, "big"),
                     early.data, hello))


def decode_early_payload(payload: bytes) -> tuple[bytes, Early, bytes]:
    """(proof, early message, hello) from an INIT_IK's Noise payload."""
    pos = proof_length(payload)
    proof = payload[:pos]
    if len(payload) < pos + 17:
        raise RemoteProtocolError("truncated early message")
    message_id = payload[pos : pos + 8]
    sent_at = int.from_bytes(payload[pos + 8 : pos + 16], "big") / 1000
    size = payload[pos + 16]
    pos += 17
    channel = payload[pos : pos + size]
    pos += size
    if len(payload) < pos + 2:
        raise RemoteProtocolError("truncated early message")
    length = int.from_bytes(payload[pos : pos + 2], "big")
    data = payload[pos + 2 : pos + 2 + length]
    if len(channel) != size or len(data) != length:
        raise RemoteProtocolError("truncated early message")
    try:
        name = channel.decode()
    except UnicodeDecodeError:
        raise RemoteProtocolError("early message's channel is not UTF-8") from None
    return proof, Early(bytes(message_id), sent_at, name, bytes(data)), \
        payload[pos + 2 + length :]


def check_proof(payload: bytes, remote_static: bytes | None) -> Proof:
    """Verify a peer's proof."""
    if len(payload) < PROOF_SIZE or remote_static is None:
        raise RemoteProtocolError("handshake carries no identity proof")
    public, flags = bytes(payload[:32]), payload[96]
    endorsement = remote_static + bytes(payload[32:96])
    if endorsed_static(endorsement, public) is None:
        raise RemoteProtocolError("identity proof does not verify")
    version, capabilities, incarnation, _ = _proof_fields(payload)
    return Proof(public, bool(flags & FLAG_INTRODUCER), version, capabilities, endorsement,
                 incarnation)


def agreed_version(hello: bytes) -> int | None:
    """The version to speak with the initiator whose ``hello`` this is, or None."""
    offered, _ = decode_hello(hello)
    return choose_version(offered, SUPPORTED_VERSIONS[0])


def choose_version(offered: tuple[int, ...], header_version: int) -> int | None:
    """The best version both sides speak (our order of preference), or None."""
    offered = offered or (header_version,)
    return next((v for v in SUPPORTED_VERSIONS if v in offered), None)


def address_bytes(address: Address) -> bytes:
    if isinstance(address, RelayPath):
        return b"R" + address.relay + address.peer
    try:
        return encode_address(address)
    except ValueError:
        return repr(address).encode()


MAX_USED_SIDS = 65536
"""Session ids one secret may have made connections with; one more rotates the secret
early (so what is remembered stays bounded, and nothing older can be replayed)."""


class ResponderSecrets:
    """The rotating secret behind stateless answers and cookies (current and previous),
    and the session ids each made a connection with: a FINAL is taken once, so a replay
    of an old one never rebuilds a connection over a newer one."""

    def __init__(self, random_bytes: Callable[[int], bytes], now: float) -> None:
        self._random = random_bytes
        self.epoch = 0
        self._secrets = {0: random_bytes(32)}
        self._used: dict[int, set[bytes]] = {0: set()}
        self._rotated = now

    def next_rotation(self) -> float:
        return self._rotated + SECRET_LIFETIME

    def rotate(self, now: float) -> None:
        self.epoch += 1
        self._secrets = {self.epoch: self._random(32),
                         self.epoch - 1: self._secrets[self.epoch - 1]}
        self._used = {self.epoch: set(), self.epoch - 1: self._used[self.epoch - 1]}
        self._rotated = now

    def used(self, sid: bytes, epoch: int) -> bool:
        """Whether session id ``sid`` of ``epoch`` made a connection already."""
        return sid in self._used[epoch]

    def use(self, sid: bytes, epoch: int, now: float) -> None:
        """``sid`` of ``epoch`` made a connection: its FINAL is never taken again."""
        used = self._used[epoch]
        used.add(sid)
        if len(used) >= MAX_USED_SIDS and epoch == self.epoch:
            self.rotate(now)

    def derive(self, label: bytes) -> bytes:
        """32 bytes as secret as the first epoch's secret, for ``label``."""
        return self._mac(min(self._secrets), label)

    def _mac(self, epoch: int, label: bytes, *parts: bytes) -> bytes:
        return hmac.new(self._secrets[epoch], label + b"".join(parts), hashlib.sha256).digest()

    def responder_keys(self, address: Address, initiator_sid: bytes, message: bytes,
                       epoch: int | None = None) -> tuple[bytes, bytes]:
        """(ephemeral seed, responder session id) for one INIT, from ``epoch`` or now."""
        epoch = self.epoch if epoch is None else epoch
        where = address_bytes(address)
        seed = self._mac(epoch, b"ephemeral", where, initiator_sid, message)
        sid = self._mac(epoch, b"sid", where, initiator_sid, message)[:8]
        sid = bytes((sid[0] & 0xFE | epoch & 1,)) + sid[1:]
        return seed, sid

    def epoch_of(self, sid: bytes) -> int | None:
        """The epoch whose secret made session id ``sid``, if still kept."""
        parity = sid[0] & 1
        return next((e for e in self._secrets if e & 1 == parity), None)

    def cookie(self, address: Address, epoch: int | None = None) -> bytes:
        epoch = self.epoch if epoch is None else epoch
        return self._mac(epoch, b"cookie", address_bytes(address))[:COOKIE_SIZE]

    def cookie_valid(self, address: Address, cookie: bytes) -> bool:
        return len(cookie) == COOKIE_SIZE and any(
            hmac.compare_digest(cookie, self.cookie(address, e)) for e in self._secrets
        )


@dataclass(slots=True, eq=False)
class Dial:
    """A handshake this node started, waiting for the RESP."""

    local_sid: bytes
    seed: bytes
    """The ephemeral seed: the Noise state is rebuilt from it, so a forged RESP changes nothing."""
    init_message: bytes
    address: Address
    created: float
    expected_peer: bytes | None
    next_retry: float
    backoff: float
    deadline: float
    purpose: str = "peer"
    socket: int = 0
    cookie: bytes = b""
    retransmitted: bool = False
    early: Early | None = None
    """The first message this INIT_IK carries (None: an XX INIT)."""
    responder_static: bytes = b""
    payload: bytes = b""
    """The INIT_IK's Noise payload, to rebuild the handshake from the seed."""
    datagram: bytes = b""
    """What is sent (again) to ``address``: ``encode()`` as of the last change."""

    def encode(self) -> bytes:
        """The INIT (an INIT_IK, with an early message) for ``address`` and ``cookie``."""
        return encode_init(self.local_sid, self.init_message, cookie=self.cookie,
                           pad=not isinstance(self.address, RelayPath),
                           kind=PacketKind.INIT_IK if self.early else PacketKind.INIT)


def initiator_state(identity: Identity, seed: bytes) -> tuple[HandshakeState, bytes]:
    """A fresh initiator handshake and its first message (carrying our hello)."""
    state = HandshakeState("XX", True, PROLOGUE, identity.static_key, seed)
    return state, state.write_message(encode_hello(SUPPORTED_VERSIONS, 0))


def early_initiator_state(identity: Identity, seed: bytes, responder_static: bytes,
                          payload: bytes) -> tuple[HandshakeState, bytes]:
    """A fresh IK initiator handshake and its first message, carrying ``payload`` (see
    ``encode_early_payload``)."""
    state = HandshakeState("IK", True, PROLOGUE, identity.static_key, seed,
                           remote_static=responder_static)
    return state, state.write_message(payload)


def early_responder_state(identity: Identity, seed: bytes) -> HandshakeState:
    return HandshakeState("IK", False, PROLOGUE, identity.static_key, seed)
