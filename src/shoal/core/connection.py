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
(PTO) sends a probe when acks stop coming. A congestion controller chosen by name
(``CoreConfig.congestion_control``, see ``congestion``) limits bytes in flight.

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

What a packet carries comes from *flows* (see ``flows``): the reliable control frames
of every service (``queue_frame``), then the flows services add (``add_flow``: the
messages of its channels, a stream), round-robin, all within the congestion window; each
hears which of its frames were acknowledged or lost. Unreliable control frames (CLOSE,
PING, relayed datagrams) go ahead of the window. Arriving frames go by type through the
endpoint's ``FrameRegistry``: a service's reader parses them in place, or they are
decoded and wait in ``frames_in`` for the endpoint to hand them to their service.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from shoal.core import congestion
from shoal.core.config import CoreConfig
from shoal.core.flows import ControlFlow, Flow, FlowScheduler, FrameOwner
from shoal.core.peers import Role
from shoal.core.pmtud import Pmtud, PmtuState
from shoal.core.recovery import RangeSet, ReplayWindow, RttEstimator
from shoal.core.wire import (
    AEAD_TAG_SIZE,
    DATA_HEADER,
    DATA_HEADER_SIZE,
    EXTENSION_FIRST,
    MAX_DATAGRAM_SIZE,
    MAX_RELAYED_DATAGRAM,
    Ack,
    Address,
    Close,
    Extension,
    Frame,
    FrameType,
    PacketKind,
    PathChallenge,
    PathResponse,
    Ping,
    RelayPath,
    encode_ack,
    encode_frame,
    encode_varint,
    take_blob_at,
)
from shoal.core.wire import DECODERS as _DECODERS
from shoal.errors import RemoteProtocolError

_decode_ack = _DECODERS[FrameType.ACK]
_decode_close = _DECODERS[FrameType.CLOSE]
_decode_challenge = _DECODERS[FrameType.PATH_CHALLENGE]
_decode_response = _DECODERS[FrameType.PATH_RESPONSE]

_NONCE_PREFIX = b"\x00\x00\x00\x00"
_PACK_PN = struct.Struct("<Q").pack
_PING = encode_frame(Ping())
_ACK = int(FrameType.ACK)

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
"""Seconds a connection set aside (see ``peers``) waits for the peer to confirm it; its
FINAL has gone out four times by then."""


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
    __slots__ = ("time_sent", "size", "items", "probe")

    def __init__(self, time_sent: float, size: int, items: list, probe: bool = False) -> None:
        self.time_sent = time_sent
        self.size = size
        self.items: list[tuple[Flow, object]] = items
        """(flow, record) for each flow that wrote into the packet."""
        self.probe = probe
        """A datagram size probe: its loss says nothing of congestion."""


PROBE_PADDING = bytes((0xFE,))
"""The extension frame type that pads a size probe (receivers skip it, as any unknown
extension): ``fe | length varint | zeros``."""


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
    relayed: bool = field(init=False)
    kind: str = field(init=False)
    """``"relay"`` or ``"direct"`` (as events name paths)."""

    def __post_init__(self) -> None:
        self.relayed = isinstance(self.address, RelayPath)
        self.kind = "relay" if self.relayed else "direct"

    def may_send(self, size: int) -> bool:
        return self.validated or self.allowance is None or size <= self.allowance

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
        "pacer",
        "path_since",
        "paced_until",
        "pmtud",
        "sent",
        "largest_acked",
        "loss_time",
        "pto_count",
        "probes",
        "last_eliciting_sent",
        "last_received",
        "control_out",
        "controls",
        "flows",
        "state",
        "readers",
        "unsettled",
        "_arrival",
        "confirmed",
        "final_datagram",
        "final_deadline",
        "final_backoff",
        "role",
        "path_changed",
        "peer_silent",
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
        "peer_incarnation",
        "held",
        "heard_at",
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
        readers: dict | None = None,
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
        self.cc = congestion.create(config.congestion_control, self.rtt)
        self.pacer = congestion.Pacer()
        self.path_since = now
        """When the current path's window and RTT began (acknowledgements of packets sent
        before then teach it nothing)."""
        self.paced_until: float | None = None
        """New packets wait for the pacer until then."""
        self.pmtud = Pmtud(max_size=max(config.max_datagram_size, MAX_DATAGRAM_SIZE),
                           base=MAX_DATAGRAM_SIZE)
        """The direct path's datagram size search (RFC 8899)."""
        self.sent: dict[int, SentPacket] = {}
        self.largest_acked = -1
        self.loss_time: float | None = None
        self.pto_count = 0
        self.probes = 0
        self.last_eliciting_sent = now
        self.last_received = now
        self.control_out: list[bytes] = []
        """Unreliable frames, sent ahead of the window (never again)."""
        self.controls = ControlFlow(self)
        """Reliable control frames of every service."""
        self.flows = FlowScheduler()
        self.state: dict[str, Any] = {}
        """Each service's state on this connection, by service name (made when first
        needed: most connections of an introducer carry nothing but keepalives)."""
        self.readers = TRANSPORT_READERS if readers is None else readers
        """Frame type -> reader (the endpoint's ``FrameRegistry``)."""
        self.unsettled: list[Any] = []
        """Flows to ``settle()`` once the packet being read has been handled whole."""
        self._arrival: Path = first
        self.confirmed = not initiator
        self.final_datagram: bytes | None = None
        self.final_deadline = 0.0
        self.final_backoff = config.handshake_retry
        self.role = Role.NEW
        """Its place among the peer's connections (see ``peers``)."""
        self.path_changed = False
        """The current path changed and the services have not been told yet."""
        self.peer_silent = False
        """Set when the peer stopped answering on the current path (any kind) with
        packets in flight; the endpoint clears it once it checked for a restart and, on a
        direct path, offered a relay as another path."""
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
        self.heard_at: float | None = None
        """When a packet last brought services' frames (not only ACKs, PINGs and path
        checks), until the silence after it was looked at (``silence_deadline``)."""
        self.held = False
        """Superseded, but a service still has work on it that cannot move to the
        peer's current connection (an open stream): it stays open, kept alive, until
        that work ends (see ``Service.holds``)."""
        self.peer_incarnation = b""
        """The incarnation the peer's handshake proof named (see ``handshake``): the
        run of the peer's node this connection exists in; empty if it named none."""

    # ------------------------------------------------------------------ properties

    @property
    def peer_id(self) -> str:
        return self.peer.hex()

    @property
    def wanted(self) -> bool:
        """Carries (or is about to carry) the peer's traffic: kept alive."""
        return self.role is Role.CURRENT or self.role is Role.NEW or (
            self.role is Role.UNCONFIRMED) or (self.role is Role.DRAINING and self.held)

    @property
    def draining(self) -> bool:
        """Superseded by another connection: takes no new work and closes once idle."""
        return self.role is Role.DRAINING

    @property
    def undecided(self) -> bool:
        """A second connection with the peer, kept aside until the peer confirms it (or
        carrying the traffic while it waits: ``Role.UNCONFIRMED``)."""
        return self.role is Role.ASIDE or self.role is Role.UNCONFIRMED

    @property
    def address(self) -> Address:
        return self.path.address

    @property
    def socket(self) -> int:
        return self.path.socket

    @property
    def path_kind(self) -> str:
        return self.path.kind

    @property
    def max_payload(self) -> int:
        if self.path.relayed:
            return MAX_RELAYED_DATAGRAM - DATA_HEADER_SIZE - AEAD_TAG_SIZE
        return max(self.pmtud.mtu, MAX_DATAGRAM_SIZE) - DATA_HEADER_SIZE - AEAD_TAG_SIZE

    # ------------------------------------------------------------------ commands

    def queue_frame(self, frame: Frame | bytes, *, reliable: bool = True,
                    owner: FrameOwner | None = None) -> None:
        """Send ``frame``: a reliable one within the congestion window until it is
        acknowledged (``owner`` hears of that, and of each loss), an unreliable one once,
        ahead of the window."""
        raw = frame if isinstance(frame, bytes) else encode_frame(frame)
        if reliable:
            self.controls.push(raw, owner)
        else:
            self.control_out.append(raw)

    def add_flow(self, flow: Flow) -> None:
        """Let ``flow`` fill this connection's packets from now on."""
        self.flows.add(flow)

    def remove_flow(self, flow: Flow) -> None:
        self.flows.remove(flow)

    def queued(self) -> int:
        """Control frames waiting to be sent (reliable or not)."""
        return len(self.control_out) + len(self.controls)

    def close(self, code: int = CLOSE_NORMAL, reason: str = "closed") -> None:
        """Send a CLOSE frame with the next flush and stop."""
        if self.closed:
            return
        self.control_out.clear()
        self.controls.clear()
        self.control_out.append(encode_frame(Close(code, reason)))
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
        datagram = self._seal(payload, 0.0, False, [])
        self.raw_out.append((datagram, path.address, path.socket))

    # ------------------------------------------------------------------ receiving

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
        self._arrival = path
        eliciting = False
        readers = self.readers
        try:
            pos, end = 0, len(payload)
            while pos < end:
                code = payload[pos]
                reader = readers.get(code)
                if reader is None:
                    if code < EXTENSION_FIRST:
                        raise RemoteProtocolError(f"unknown frame type 0x{code:02x}")
                    reader = _skip_extension
                if code != _ACK:
                    eliciting = True
                    if code not in TRANSPORT_READERS:
                        self.heard_at = now
                pos = reader(self, payload, pos + 1, now)
                if self.closed:  # a CLOSE, or a reader closed it for a broken rule
                    return True
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
            self._move_to(path, now)
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
                    self._move_to(path, now)
                return

    def _move_to(self, path: Path, now: float) -> None:
        if path.relayed and not self.path.relayed:
            # The direct path failed: it must prove itself again before it is used.
            self.path.validated, self.path.challenge, self.path.tries = False, None, 0
        if path.relayed or self.path.relayed or path.address[0] != self.path.address[0]:
            self._learn_path_afresh(now)  # not for a new port alone (NAT rebinding)
        self.path = path
        self.path_changed = True
        self.pmtud.disable()  # a new path: its size is searched again (datagrams() starts it)
        # Keep the relay as a known path only while it is the one in use.
        for key, other in list(self.paths.items()):
            if other.relayed and other is not path:
                del self.paths[key]

    def _learn_path_afresh(self, now: float) -> None:
        """Another path: its congestion window and RTT start from their initial values
        (RFC 9000 section 9.4). Packets still in flight on the old path count in flight
        until acknowledged or lost, but neither grow nor shrink the new window, nor time
        the new path."""
        in_flight = self.cc.bytes_in_flight
        self.rtt = RttEstimator()
        self.cc = congestion.create(self.config.congestion_control, self.rtt)
        self.cc.bytes_in_flight = in_flight
        self.cc.recovery_start = now
        self.pacer = congestion.Pacer()
        self.path_since = now

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
        for lo, hi in frame.ranges:
            if hi < lowest:
                break
            for pn in range(max(lo, lowest), hi + 1):
                packet = sent.pop(pn, None)
                if packet is None:
                    continue
                if pn == largest:
                    newest_time = packet.time_sent
                if packet.probe:
                    self.pmtud.on_probe_acked(packet.size, now)
                    continue
                self.pmtud.on_packet_acked(packet.size)
                self.cc.on_acked(packet.size, packet.time_sent, now)
                for flow, record in packet.items:
                    flow.on_acked(record)
        if largest > self.largest_acked:
            self.largest_acked = largest
        if newest_time is not None:
            if newest_time >= self.path_since:
                self.rtt.update(now - newest_time, frame.delay_us / 1e6)
            self.pto_count = 0
        self._detect_lost(now)
        self.pacer.update(self.cc, now)

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
                if packet.probe:
                    self.pmtud.on_probe_lost(packet.size, now)
                    continue
                self.pmtud.on_packet_lost(packet.size, now)
                self.cc.on_lost(packet.size, packet.time_sent, now)
                self._requeue(packet)
            else:
                self.loss_time = packet.time_sent + loss_delay
                break

    def _requeue(self, packet: SentPacket) -> None:
        """Tell the flows of a packet it is lost: they queue its frames again."""
        for flow, record in packet.items:
            flow.on_lost(record)

    # ------------------------------------------------------------------ sending

    def datagrams(self, now: float) -> list[tuple[bytes, Address, int]]:
        """Every packet that may be sent now (bounded by the congestion window), with
        its destination and local socket."""
        out = self.raw_out
        self.raw_out = []
        if self.closed and not self.control_out:
            return out
        destination, socket = self.path.address, self.path.socket
        controls, flows = self.controls, self.flows
        self.paced_until = None
        if not self.closed:
            self._probe_size(now, out)
        max_payload = self.max_payload  # (the path and its size stay as they are meanwhile)
        while True:
            parts: list[bytes] = []
            budget = max_payload
            items: list[tuple[Flow, object]] = []
            eliciting = False
            if self.ack_pending and self.received.ranges:
                ack = encode_ack(self.received.as_tuples(), 0)
                parts.append(ack)
                budget -= len(ack)
                self.ack_pending = False
            control_out = self.control_out
            while control_out and len(control_out[0]) <= budget:
                raw = control_out.pop(0)
                parts.append(raw)
                budget -= len(raw)
                eliciting = True
            if not self.closed and (self.probes > 0 or (
                    self.cc.can_send(MAX_DATAGRAM_SIZE) and self._paced(now))):
                if controls.queue:
                    budget, record = controls.fill(parts, budget)
                    if record is not None:
                        items.append((controls, record))
                flow_list = flows.flows
                if len(flow_list) == 1:  # the common case, without the scheduler's call
                    flow = flow_list[0]
                    budget, record = flow.fill(parts, budget)
                    if record is not None:
                        items.append((flow, record))
                elif flow_list:
                    flows.fill(parts, budget, items)
                if items:
                    eliciting = True
            if not parts:
                break
            if eliciting and self.probes > 0:
                self.probes -= 1
            out.append((self._seal(b"".join(parts), now, eliciting, items),
                        destination, socket))
            if self.closed:
                _CIPHERS.forget(self)  # sealing the CLOSE made a context: hold none
                break
        return out

    def _probe_size(self, now: float, out: list[tuple[bytes, Address, int]]) -> None:
        """Send a datagram size probe if the search wants one: a PING padded to the size
        (outside congestion control: its loss is not congestion)."""
        pmtud = self.pmtud
        if self.path.relayed or not self.confirmed:
            return
        if pmtud.state is PmtuState.DISABLED:
            if pmtud.max_size <= pmtud.base:
                return
            pmtud.start(now)
        size = pmtud.next_probe(now)
        if size is None:
            return
        room = size - DATA_HEADER_SIZE - AEAD_TAG_SIZE - 1  # less the PING
        filler = room - 1 - (1 if room - 2 < 0x40 else 2 if room - 3 < 0x4000 else 4)
        payload = b"".join((_PING, PROBE_PADDING, encode_varint(filler), bytes(filler)))
        out.append((self._seal(payload, now, True, [], probe=True),
                    self.path.address, self.path.socket))

    def _seal(self, payload: bytes, now: float, eliciting: bool, items: list, *,
              probe: bool = False) -> bytes:
        pn = self.next_pn
        self.next_pn = pn + 1
        header = DATA_HEADER.pack(PacketKind.DATA, self.remote_sid, pn)
        seal = (self._ciphers or _CIPHERS.make(self))[0].encrypt
        datagram = header + seal(_NONCE_PREFIX + _PACK_PN(pn), payload, header)
        self.bytes_sent += len(datagram)
        if probe:
            self.sent[pn] = SentPacket(now, len(datagram), items, probe=True)
        elif eliciting:
            self.sent[pn] = SentPacket(now, len(datagram), items)
            self.cc.on_sent(len(datagram), now)
            self.pacer.on_sent(len(datagram), now)
            self.last_eliciting_sent = now
        return datagram

    def _paced(self, now: float) -> bool:
        """Whether the pacer lets a new packet leave now (if not, when it will is kept
        for the timer)."""
        at = self.pacer.next_send_time(MAX_DATAGRAM_SIZE, now)
        if at <= now:
            return True
        if self.controls.queue or self.flows.has_data():
            self.paced_until = at
        return False

    def idle(self) -> bool:
        """Nothing in flight and nothing queued."""
        return not self.sent and not self.control_out and not self.controls.queue and (
            not self.flows.has_data()
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
        if self.initiator and self.wanted:
            deadline = min(deadline, self.last_eliciting_sent + self.config.keepalive_interval)
        if self.final_datagram is not None:
            deadline = min(deadline, self.final_deadline)
        if self.paced_until is not None:
            deadline = min(deadline, self.paced_until)
        pmtu_deadline = self.pmtud.deadline()
        if pmtu_deadline is not None:
            deadline = min(deadline, pmtu_deadline)
        for path in self.paths.values():
            if path.challenge is not None:
                deadline = min(deadline, path.next_try)
        if self.role is Role.DRAINING and self.idle() and not self.held:
            deadline = min(deadline, self.drained_at())
        if not self.confirmed:
            deadline = min(deadline, self.unconfirmed_until())
        silence = self.silence_deadline()
        if silence is not None:
            deadline = min(deadline, silence)
        return deadline

    def silence_deadline(self) -> float | None:
        """When the silence since services' frames last arrived is worth a look: the
        peer may have moved (a NAT rebinding, another network) while this side, only
        receiving, had nothing to send that would show it the way (``ping``)."""
        if self.heard_at is None:
            return None
        return self.heard_at + max(FAILOVER_SILENCE, 3 * self.rtt.pto())

    def ping(self, now: float) -> None:
        """Send a PING (acknowledged, so probed again until it is)."""
        self.control_out.append(_PING)
        self.last_eliciting_sent = now

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
        self.pmtud.on_timer(now)
        if self.loss_time is not None and now >= self.loss_time:
            self._detect_lost(now)
        else:
            pto = self._pto_deadline()
            if pto is not None and now >= pto:
                self.pto_count += 1
                self.probes = 2
                oldest = next(iter(self.sent.values()))
                self._requeue(oldest)  # a copy: it stays in flight
                self.control_out.append(_PING)
                self.last_eliciting_sent = now
                if self.pto_count >= FAILOVER_PTOS and self._silent(now):
                    self.peer_silent = True
        # The side that dialed keeps the connection (and its NATs' mappings) alive; the
        # other answers with ACKs, so an introducer sends nothing to idle peers unasked.
        if self.initiator and self.wanted and (
            now >= self.last_eliciting_sent + self.config.keepalive_interval
        ):
            self.control_out.append(_PING)
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


# ---------------------------------------------------------------------- frame readers
# The connection's own frame types, as readers (see ``frames``).


def _read_nothing(connection: Connection, payload: bytes, pos: int, now: float) -> int:
    return pos  # PING and HANDSHAKE_DONE: their only effect is an ACK


def _read_ack(connection: Connection, payload: bytes, pos: int, now: float) -> int:
    frame, pos = _decode_ack(payload, pos)
    connection._on_ack(frame, now)  # type: ignore[arg-type]
    return pos


def _read_close(connection: Connection, payload: bytes, pos: int, now: float) -> int:
    frame, pos = _decode_close(payload, pos)
    connection.close_code = frame.code  # type: ignore[union-attr]
    connection._finish(f"closed by peer: {frame.reason}")  # type: ignore[union-attr]
    return pos


def _read_challenge(connection: Connection, payload: bytes, pos: int, now: float) -> int:
    frame, pos = _decode_challenge(payload, pos)
    connection._send_on(connection._arrival, [encode_frame(PathResponse(frame.data))])  # type: ignore[union-attr]
    return pos


def _read_response(connection: Connection, payload: bytes, pos: int, now: float) -> int:
    frame, pos = _decode_response(payload, pos)
    connection._on_path_response(frame.data, now)  # type: ignore[union-attr]
    return pos


def _skip_extension(connection: Connection, payload: bytes, pos: int, now: float) -> int:
    """An extension frame no service reads: skipped (the endpoint counts it)."""
    code = payload[pos - 1]
    _, pos = take_blob_at(payload, pos)
    connection.frames_in.append((None, Extension(code, b"")))
    return pos


def _read_padding(connection: Connection, payload: bytes, pos: int, now: float) -> int:
    """The padding of a datagram size probe: skipped, as expected (not counted)."""
    _, pos = take_blob_at(payload, pos)
    return pos


TRANSPORT_READERS = {
    PROBE_PADDING[0]: _read_padding,
    FrameType.PING: _read_nothing,
    FrameType.HANDSHAKE_DONE: _read_nothing,
    FrameType.ACK: _read_ack,
    FrameType.CLOSE: _read_close,
    FrameType.PATH_CHALLENGE: _read_challenge,
    FrameType.PATH_RESPONSE: _read_response,
}
"""The frame types the connection reads itself."""
