"""An encrypted connection with one peer, over whichever path works best today.

Theory of operation
-------------------
After the Noise handshake each side holds a send key and a receive key. Every DATA
packet carries a 64-bit packet number that is both the AEAD nonce and the replay-window
index; the 17-byte header is the associated data, so nothing in the packet can be
altered unnoticed. The payload is a list of frames.

Reliability works as in QUIC: packets, not frames, are acknowledged; ACK frames list
ranges of received packet numbers; a packet is lost when three later ones are acked or
9/8 RTT has passed, and its frames (not the packet) are sent again. A probe timeout
(PTO) sends a probe when acks stop coming. NewReno limits bytes in flight.

Paths. A connection is found by its session id, never by address, so its keys, packet
numbers and everything in flight outlive the path it started on. A path is an address
and a local socket, or a relay. A new path carries traffic only once it is *validated*:
a PATH_CHALLENGE sent on it came back as a PATH_RESPONSE (on any path: the random
bytes went only to that address). Authenticated packets that arrive from an unvalidated
address (a NAT rebinding, or a copy an attacker sent first) get nothing but a challenge
there, and at most three times the bytes that came from it (anti-amplification). A
validated direct path replaces a relay; a validated path that the peer's newest packets
come from replaces the current one (the peer moved). Challenge and response packets are
not tracked for loss: each path retries its challenge on its own timer, a few times.

Services hand the connection frames to send (``queue_frame``) and a *flow* (the message
service's per-connection part) that fills packets with its frames and hears which of
them were acknowledged or lost. Frames of other services arrive in ``frames_in``.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from shoal.core.config import CoreConfig
from shoal.core.recovery import NewReno, RangeSet, ReplayWindow, RttEstimator
from shoal.core.wire import (
    AEAD_TAG_SIZE,
    DATA_HEADER,
    DATA_HEADER_SIZE,
    MAX_DATA_PAYLOAD,
    MAX_DATAGRAM_SIZE,
    MAX_RELAYED_DATAGRAM,
    Ack,
    Address,
    Close,
    Frame,
    FrameType,
    HandshakeDone,
    MessageFragment,
    PacketKind,
    PathChallenge,
    PathResponse,
    Ping,
    RelayPath,
    decode_frames,
    decode_varint,
    encode_ack,
    encode_frame,
    path_kind,
)
from shoal.errors import RemoteProtocolError

_NONCE_PREFIX = b"\x00\x00\x00\x00"
_PACK_PN = struct.Struct("<Q").pack
_PING = encode_frame(Ping())
_MESSAGE = int(FrameType.MESSAGE)

CLOSE_NORMAL = 0
CLOSE_PROTOCOL_ERROR = 1
CLOSE_IDLE = 2
CLOSE_SUPERSEDED = 3
CLOSE_BUSY = 4
"""The responder is full: its FINAL was authenticated, but no connection was made."""

MAX_PATHS = 4
CHALLENGE_TRIES = 4
AMPLIFICATION = 3
"""An unvalidated address is sent at most this many times the bytes it sent."""
_PATH_PACKET = DATA_HEADER_SIZE + 9 + AEAD_TAG_SIZE
"""The size of a packet holding one PATH_CHALLENGE or PATH_RESPONSE."""
FAILOVER_PTOS = 2
"""Probe timeouts in a row, with nothing heard on the path, before a relay is tried."""
FAILOVER_SILENCE = 1.0
"""Seconds a direct path must have been silent before a relay path may replace it."""
UNCONFIRMED_ASIDE = 3.0
"""Seconds a connection set aside (see ``Endpoint``) waits for the peer to confirm it; its
FINAL has gone out four times by then."""


class Flow(Protocol):
    """The part of a service that fills packets and is told what became of its frames."""

    def fill(self, parts: list[bytes], sent: list, budget: int) -> int: ...
    def on_acked(self, item: object) -> None: ...
    def on_lost(self, item: object) -> None: ...
    def on_fragment(self, channel: int, message_id: int, total: int, offset: int,
                    data: bytes) -> None: ...
    def has_data(self) -> bool: ...
    def settle(self) -> None: ...


class _CipherCache:
    """The AEAD contexts of the connections that sent or received most recently.

    A context costs about 2 KiB outside Python's heap; a node with a hundred thousand
    idle peers (an introducer) keeps only their keys and makes a pair again, in about
    3 us, when one of them speaks.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._holders: dict[Connection, None] = {}

    def make(self, connection: Connection) -> tuple[ChaCha20Poly1305, ChaCha20Poly1305]:
        send_key, recv_key = connection._keys
        pair = connection._ciphers = (ChaCha20Poly1305(send_key), ChaCha20Poly1305(recv_key))
        holders = self._holders
        holders[connection] = None
        while len(holders) > self.capacity:
            oldest = next(iter(holders))
            del holders[oldest]
            oldest._ciphers = None
        return pair

    def forget(self, connection: Connection) -> None:
        connection._ciphers = None
        self._holders.pop(connection, None)


_CIPHERS = _CipherCache(1024)


class SentPacket:
    __slots__ = ("time_sent", "size", "items", "controls")

    def __init__(self, time_sent: float, size: int, items: list, controls: list) -> None:
        self.time_sent = time_sent
        self.size = size
        self.items: list = items
        self.controls: list[bytes] = controls


@dataclass(slots=True, eq=False)
class Path:
    """One way of reaching the peer: an address from a local socket, or a relay."""

    address: Address
    socket: int = 0
    validated: bool = False
    challenge: bytes | None = None
    next_try: float = 0.0
    tries: int = 0
    last_received: float = -1.0
    allowance: int | None = None
    """Bytes this node may still send on the path before it is validated: three times
    what arrived from its address (RFC 9000's anti-amplification limit), for a path the
    network told us of; None for one this node chose itself (a dial, an introduction)."""

    def may_send(self, size: int) -> bool:
        return self.validated or self.allowance is None or size <= self.allowance

    @property
    def relayed(self) -> bool:
        return isinstance(self.address, RelayPath)

    @property
    def key(self) -> tuple[Address, int]:
        return (self.address, self.socket)


class Connection:
    """Transport state for one peer. Fed packets and time by the endpoint."""

    __slots__ = (
        "local_sid",
        "remote_sid",
        "peer",
        "peer_introducer",
        "peer_endorsement",
        "initiator",
        "version",
        "capabilities",
        "established_at",
        "config",
        "_random",
        "path",
        "paths",
        "_keys",
        "_ciphers",
        "next_pn",
        "replay",
        "received",
        "ack_pending",
        "rtt",
        "cc",
        "sent",
        "largest_acked",
        "loss_time",
        "pto_count",
        "probes",
        "last_eliciting_sent",
        "last_received",
        "control_out",
        "flow",
        "confirmed",
        "final_datagram",
        "final_deadline",
        "final_backoff",
        "wanted",
        "draining",
        "undecided",
        "path_changed",
        "path_failing",
        "drop_reason",
        "closed",
        "close_reason",
        "close_code",
        "frames_in",
        "raw_out",
        "bytes_sent",
        "bytes_received",
        "purpose",
        "dialed",
        "flow_factory",
    )

    def __init__(
        self,
        *,
        local_sid: bytes,
        remote_sid: bytes,
        peer: bytes,
        peer_introducer: bool,
        initiator: bool,
        send_key: bytes,
        recv_key: bytes,
        address: Address,
        now: float,
        config: CoreConfig,
        random_bytes,  # type: ignore[no-untyped-def]
        socket: int = 0,
        version: int = 2,
        capabilities: int = 0,
        peer_endorsement: bytes = b"",
    ) -> None:
        self.local_sid = local_sid
        self.remote_sid = remote_sid
        self.peer = peer
        self.peer_introducer = peer_introducer
        self.peer_endorsement = peer_endorsement
        """The peer's X25519 static key and its signature over it, as its handshake
        proved them (an introducer hands them on, so that others can reach the peer
        with IK)."""
        self.initiator = initiator
        self.version = version
        self.capabilities = capabilities
        self.established_at = now
        self.config = config
        self._random = random_bytes
        first = Path(address, socket, validated=True, last_received=now)
        self.path = first
        self.paths: dict[tuple[Address, int], Path] = {first.key: first}
        self._keys = (send_key, recv_key)
        self._ciphers: tuple[ChaCha20Poly1305, ChaCha20Poly1305] | None = None
        self.next_pn = 0
        self.replay = ReplayWindow()
        self.received = RangeSet()
        self.ack_pending = False
        self.rtt = RttEstimator()
        self.cc = NewReno()
        self.sent: dict[int, SentPacket] = {}
        self.largest_acked = -1
        self.loss_time: float | None = None
        self.pto_count = 0
        self.probes = 0
        self.last_eliciting_sent = now
        self.last_received = now
        self.control_out: list[tuple[bytes, bool]] = []
        self.flow: Flow | None = None
        self.flow_factory: Callable[[Connection], Flow] | None = None
        """Makes the flow when the first message frame arrives (idle peers have none)."""
        self.confirmed = not initiator
        self.final_datagram: bytes | None = None
        self.final_deadline = 0.0
        self.final_backoff = config.handshake_retry
        self.wanted = True
        self.draining = False
        """Superseded by another connection: takes no new work and closes once idle."""
        self.undecided = False
        """A second connection with the peer, kept aside until the peer confirms it."""
        self.path_changed = False
        """The current path changed and the services have not been told yet."""
        self.path_failing = False
        """Set when the direct path went silent with packets in flight (for the endpoint
        to offer a relay as another path); the endpoint clears it."""
        self.drop_reason = ""
        self.closed = False
        self.close_reason = ""
        self.close_code: int | None = None
        """The code of the CLOSE the peer sent, if it sent one."""
        self.frames_in: list[Frame] = []
        self.raw_out: list[tuple[bytes, Address, int]] = []
        self.bytes_sent = 0
        self.bytes_received = 0
        self.purpose = "peer"
        """Why this node dialed (``"introducer"`` for its introducers)."""
        self.dialed: Address | None = None

    # ------------------------------------------------------------------ properties

    @property
    def peer_id(self) -> str:
        return self.peer.hex()

    @property
    def address(self) -> Address:
        return self.path.address

    @property
    def socket(self) -> int:
        return self.path.socket

    @property
    def path_kind(self) -> str:
        return path_kind(self.path.address)

    @property
    def max_payload(self) -> int:
        if self.path.relayed:
            return MAX_RELAYED_DATAGRAM - DATA_HEADER_SIZE - AEAD_TAG_SIZE
        return MAX_DATA_PAYLOAD

    # ------------------------------------------------------------------ commands

    def queue_frame(self, frame: Frame | bytes, *, reliable: bool = True) -> None:
        raw = frame if isinstance(frame, bytes) else encode_frame(frame)
        self.control_out.append((raw, reliable))

    def close(self, code: int = CLOSE_NORMAL, reason: str = "closed") -> None:
        """Send a CLOSE frame with the next flush and stop."""
        if self.closed:
            return
        self.control_out.clear()
        self.control_out.append((encode_frame(Close(code, reason)), False))
        self._finish(reason)

    def _finish(self, reason: str) -> None:
        _CIPHERS.forget(self)
        self.closed = True
        self.close_reason = reason
        self.sent.clear()

    def probe_path(self, address: Address, socket: int, now: float) -> None:
        """Start validating ``address`` (from local ``socket``) as a path to the peer."""
        if self.closed:
            return
        path = self.paths.get((address, socket))
        if path is None:
            if isinstance(address, RelayPath) and not self.path.relayed \
                    and not self._silent(now):
                return  # never trade a working direct path for a relay
            path = self._new_path(address, socket)
        if path is not None and not path.validated and path.challenge is None:
            self._challenge(path, now)

    def _new_path(self, address: Address, socket: int) -> Path | None:
        """Track a new path, making room by forgetting an idle unvalidated one; None
        when every slot is busy."""
        if len(self.paths) >= MAX_PATHS:
            for key, path in list(self.paths.items()):
                if path is not self.path and not path.validated and path.challenge is None:
                    del self.paths[key]
                    break
            else:
                return None
        path = self.paths[(address, socket)] = Path(address, socket)
        return path

    def _challenge(self, path: Path, now: float) -> None:
        if not path.may_send(_PATH_PACKET):
            path.challenge = None  # until more arrives from there
            return
        path.challenge = self._random(8)
        path.tries += 1
        path.next_try = now + max(2 * self.rtt.smoothed, 0.1)
        self._send_on(path, [encode_frame(PathChallenge(path.challenge))])

    def _send_on(self, path: Path, parts: list[bytes]) -> None:
        """One untracked packet on ``path`` (challenges and responses), within what the
        path may be sent before it is validated."""
        payload = b"".join(parts)
        size = DATA_HEADER_SIZE + len(payload) + AEAD_TAG_SIZE
        if not path.may_send(size):
            return
        if path.allowance is not None and not path.validated:
            path.allowance -= size
        datagram = self._seal(payload, 0.0, False, [], [])
        self.raw_out.append((datagram, path.address, path.socket))

    # ------------------------------------------------------------------ receiving

    def _message_flow(self) -> Flow | None:
        """The flow, made now if this is the connection's first message."""
        if self.flow is None and self.flow_factory is not None:
            self.flow = self.flow_factory(self)
        return self.flow

    def receive(self, datagram: bytes, address: Address, now: float, socket: int = 0) -> bool:
        """Authenticate and process one DATA packet; False if it was dropped (the reason
        is then in ``drop_reason``: "replay", "packet_number" for a number too far
        ahead, or "unauthenticated")."""
        _, _, pn = DATA_HEADER.unpack_from(datagram)
        if not self.replay.check(pn):
            self.drop_reason = "replay" if pn <= self.replay.highest else "packet_number"
            return False
        try:
            payload = (self._ciphers or _CIPHERS.make(self))[1].decrypt(
                _NONCE_PREFIX + _PACK_PN(pn),
                datagram[DATA_HEADER_SIZE:],
                datagram[:DATA_HEADER_SIZE],
            )
        except InvalidTag:
            self.drop_reason = "unauthenticated"
            return False
        newest = pn > self.replay.highest
        self.replay.record(pn)
        self.last_received = now
        self.bytes_received += len(datagram)
        path = self.path
        if address != path.address or socket != path.socket:
            path = self._arrived_elsewhere(address, socket, newest, now, len(datagram))
        path.last_received = now
        if not self.confirmed:
            self.confirmed = True
            self.final_datagram = None
        eliciting = False
        try:
            pos, end = 0, len(payload)
            flow = self.flow
            # MESSAGE frames are parsed here, without a frame object: they are most of the
            # traffic. The first other frame hands the rest of the payload to the codec.
            while pos < end and payload[pos] == _MESSAGE and (
                flow is not None or (flow := self._message_flow()) is not None
            ):
                eliciting = True
                channel, pos = decode_varint(payload, pos + 1)
                message_id, pos = decode_varint(payload, pos)
                total, pos = decode_varint(payload, pos)
                offset, pos = decode_varint(payload, pos)
                size, pos = decode_varint(payload, pos)
                if pos + size > end or offset + size > total or (size == 0 and total):
                    raise RemoteProtocolError("message fragment beyond its bounds")
                flow.on_fragment(channel, message_id, total, offset, payload[pos : pos + size])
                pos += size
            for frame in decode_frames(payload, pos) if pos < end else ():
                kind = type(frame)
                if kind is Ack:
                    self._on_ack(frame, now)  # type: ignore[arg-type]
                elif kind is MessageFragment and (
                    flow is not None or (flow := self._message_flow()) is not None
                ):
                    eliciting = True
                    flow.on_fragment(frame.channel, frame.message_id, frame.total_length,  # type: ignore[union-attr]
                                     frame.offset, frame.data)  # type: ignore[union-attr]
                elif kind is Ping or kind is HandshakeDone:
                    eliciting = True
                elif kind is PathChallenge:
                    eliciting = True
                    self._send_on(path, [encode_frame(PathResponse(frame.data))])  # type: ignore[union-attr]
                elif kind is PathResponse:
                    eliciting = True
                    self._on_path_response(frame.data, now)  # type: ignore[union-attr]
                elif kind is Close:
                    self.close_code = frame.code  # type: ignore[union-attr]
                    self._finish(f"closed by peer: {frame.reason}")  # type: ignore[union-attr]
                    return True
                else:
                    eliciting = True
                    self.frames_in.append(frame)
        except RemoteProtocolError as exc:
            self.close(CLOSE_PROTOCOL_ERROR, f"protocol error: {exc}")
            return True
        self.received.add(pn)
        if eliciting:
            self.ack_pending = True
        return True

    def _arrived_elsewhere(self, address: Address, socket: int, newest: bool,
                           now: float, size: int) -> Path:
        path = self.paths.get((address, socket))
        if path is None:
            path = self._new_path(address, socket)
            if path is not None:
                path.allowance = 0
        if path is None:  # no room to track it: answer its challenges, nothing more
            return Path(address, socket, allowance=AMPLIFICATION * size)
        if path.allowance is not None and not path.validated:
            path.allowance += AMPLIFICATION * size
        if newest and path.validated and self._better(path, newest=True, now=now):
            self._move_to(path)
        elif not path.validated and path.challenge is None and path.tries < CHALLENGE_TRIES:
            self._challenge(path, now)
        return path

    def _better(self, path: Path, *, newest: bool, now: float) -> bool:
        current = self.path
        if path is current:
            return False
        if path.relayed and not current.relayed:
            return self._silent(now)  # a relay only replaces a direct path gone silent
        return (current.relayed and not path.relayed) or newest

    def _silent(self, now: float) -> bool:
        """Nothing has arrived on the current path for a while."""
        return now - self.path.last_received > max(
            FAILOVER_SILENCE, 3 * self.rtt.pto())

    def _on_path_response(self, data: bytes, now: float) -> None:
        for path in self.paths.values():
            if path.challenge is not None and path.challenge == data:
                path.challenge = None
                path.validated = True
                newest = path.last_received >= self.path.last_received and (
                    path.last_received >= 0
                )
                if self._better(path, newest=newest, now=now):
                    self._move_to(path)
                return

    def _move_to(self, path: Path) -> None:
        if path.relayed and not self.path.relayed:
            # The direct path failed: it must prove itself again before it is used.
            self.path.validated, self.path.challenge, self.path.tries = False, None, 0
        self.path = path
        self.path_changed = True
        # Keep the relay as a known path only while it is the one in use.
        for key, other in list(self.paths.items()):
            if other.relayed and other is not path:
                del self.paths[key]

    def _on_ack(self, frame: Ack, now: float) -> None:
        largest = frame.ranges[0][1]
        if largest >= self.next_pn:
            raise RemoteProtocolError("ACK for a packet never sent")
        sent = self.sent
        if not sent:
            self.largest_acked = max(self.largest_acked, largest)
            return
        lowest = next(iter(sent))
        newest_time: float | None = None
        flow = self.flow
        for lo, hi in frame.ranges:
            if hi < lowest:
                break
            for pn in range(max(lo, lowest), hi + 1):
                packet = sent.pop(pn, None)
                if packet is None:
                    continue
                if pn == largest:
                    newest_time = packet.time_sent
                self.cc.on_acked(packet.size, packet.time_sent)
                if packet.items and flow is not None:
                    for item in packet.items:
                        flow.on_acked(item)
        if largest > self.largest_acked:
            self.largest_acked = largest
        if newest_time is not None:
            self.rtt.update(now - newest_time, frame.delay_us / 1e6)
            self.pto_count = 0
        self._detect_lost(now)

    def _detect_lost(self, now: float) -> None:
        self.loss_time = None
        loss_delay = self.rtt.loss_delay()
        largest = self.largest_acked
        sent = self.sent
        while sent:
            pn, packet = next(iter(sent.items()))
            if pn >= largest:
                break
            # Same expression as the deadline below, so a timer firing at it always progresses.
            if largest - pn >= 3 or packet.time_sent + loss_delay <= now:
                del sent[pn]
                self.cc.on_lost(packet.size, packet.time_sent, now)
                self._requeue(packet)
            else:
                self.loss_time = packet.time_sent + loss_delay
                break

    def _requeue(self, packet: SentPacket, *, first: bool = False) -> None:
        """Queue a packet's frames again; ``first`` puts them ahead (PTO probes)."""
        flow = self.flow
        if flow is not None:
            for item in packet.items:
                flow.on_lost(item)
        if first:
            self.control_out[:0] = [(raw, True) for raw in packet.controls]
        else:
            self.control_out.extend((raw, True) for raw in packet.controls)

    # ------------------------------------------------------------------ sending

    def datagrams(self, now: float) -> list[tuple[bytes, Address, int]]:
        """Every packet that may be sent now (bounded by the congestion window), with
        its destination and local socket."""
        out = self.raw_out
        self.raw_out = []
        if self.closed and not self.control_out:
            return out
        destination, socket = self.path.address, self.path.socket
        flow = self.flow
        while True:
            parts: list[bytes] = []
            budget = self.max_payload
            items: list = []
            controls: list[bytes] = []
            eliciting = False
            if self.ack_pending and self.received.ranges:
                ack = encode_ack(self.received.as_tuples(), 0)
                parts.append(ack)
                budget -= len(ack)
                self.ack_pending = False
            control_out = self.control_out
            while control_out and len(control_out[0][0]) <= budget:
                raw, reliable = control_out.pop(0)
                parts.append(raw)
                budget -= len(raw)
                eliciting = True
                if reliable:
                    controls.append(raw)
            if flow is not None and not self.closed and (
                self.probes > 0 or self.cc.can_send(MAX_DATAGRAM_SIZE)
            ):
                budget = flow.fill(parts, items, budget)
                if items:
                    eliciting = True
            if not parts:
                break
            if eliciting and self.probes > 0:
                self.probes -= 1
            out.append((self._seal(b"".join(parts), now, eliciting, items, controls),
                        destination, socket))
            if self.closed:
                _CIPHERS.forget(self)  # sealing the CLOSE made a context: hold none
                break
        return out

    def _seal(
        self, payload: bytes, now: float, eliciting: bool, items: list, controls: list
    ) -> bytes:
        pn = self.next_pn
        self.next_pn = pn + 1
        header = DATA_HEADER.pack(PacketKind.DATA, self.remote_sid, pn)
        seal = (self._ciphers or _CIPHERS.make(self))[0].encrypt
        datagram = header + seal(_NONCE_PREFIX + _PACK_PN(pn), payload, header)
        self.bytes_sent += len(datagram)
        if eliciting:
            self.sent[pn] = SentPacket(now, len(datagram), items, controls)
            self.cc.on_sent(len(datagram))
            self.last_eliciting_sent = now
        return datagram

    def idle(self) -> bool:
        """Nothing in flight and nothing queued."""
        return not self.sent and not self.control_out and (
            self.flow is None or not self.flow.has_data()
        )

    # ------------------------------------------------------------------ timers

    def _pto_deadline(self) -> float | None:
        if not self.sent:
            return None
        return self.last_eliciting_sent + self.rtt.pto() * (2**self.pto_count)

    def get_timer(self) -> float | None:
        if self.closed:
            return None
        deadline = self.last_received + self.config.idle_timeout
        if self.loss_time is not None:
            deadline = min(deadline, self.loss_time)
        else:
            pto = self._pto_deadline()
            if pto is not None:
                deadline = min(deadline, pto)
        if self.wanted and self.initiator:
            deadline = min(deadline, self.last_eliciting_sent + self.config.keepalive_interval)
        if self.final_datagram is not None:
            deadline = min(deadline, self.final_deadline)
        for path in self.paths.values():
            if path.challenge is not None:
                deadline = min(deadline, path.next_try)
        if self.draining and self.idle():
            deadline = min(deadline, self.drained_at())
        if not self.confirmed:
            deadline = min(deadline, self.unconfirmed_until())
        return deadline

    def unconfirmed_until(self) -> float:
        """A connection we started that the peer never confirmed is given up then."""
        wait = UNCONFIRMED_ASIDE if self.undecided else self.config.handshake_timeout
        return self.established_at + wait

    def drained_at(self) -> float:
        """A draining connection closes once idle and quiet until then."""
        return self.last_received + 3 * self.rtt.pto()

    def handle_timer(self, now: float) -> None:
        if self.closed:
            return
        if now >= self.last_received + self.config.idle_timeout:
            self._finish("peer went silent (idle timeout)")
            return
        if not self.confirmed and now >= self.unconfirmed_until():
            self._finish("the peer never confirmed the handshake")
            return
        if self.loss_time is not None and now >= self.loss_time:
            self._detect_lost(now)
        else:
            pto = self._pto_deadline()
            if pto is not None and now >= pto:
                self.pto_count += 1
                self.probes = 2
                oldest = next(iter(self.sent.values()))
                self._requeue(oldest, first=True)  # a copy: it stays in flight
                self.control_out.append((_PING, False))
                self.last_eliciting_sent = now
                if self.pto_count >= FAILOVER_PTOS and not self.path.relayed \
                        and self._silent(now):
                    self.path_failing = True
        # The side that dialed keeps the connection (and its NATs' mappings) alive; the
        # other answers with ACKs, so an introducer sends nothing to idle peers unasked.
        if self.wanted and self.initiator and (
            now >= self.last_eliciting_sent + self.config.keepalive_interval
        ):
            self.control_out.append((_PING, False))
            self.last_eliciting_sent = now
        if self.final_datagram is not None and now >= self.final_deadline:
            self.raw_out.append((self.final_datagram, self.path.address, self.path.socket))
            self.final_backoff = min(self.final_backoff * 2, 4.0)
            self.final_deadline = now + self.final_backoff
        for key, path in list(self.paths.items()):
            if path.challenge is not None and now >= path.next_try:
                if path.tries >= CHALLENGE_TRIES:
                    path.challenge = None
                    if path is not self.path:
                        del self.paths[key]
                else:
                    self._challenge(path, now)
