"""An established, encrypted session with one peer: the transport layer of the core.

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

Direct messages are split into MESSAGE fragments at the sender and reassembled per
message id at the receiver; a message is *delivered* (event at the sender) when every
fragment has been acknowledged. Receivers deliver each message once, in completion order.
"""

from __future__ import annotations

import struct
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from shoal.core import events as ev
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
    Ping,
    RelayPath,
    decode_frames,
    decode_varint,
    encode_ack,
    encode_frame,
    encode_varint,
)
from shoal.errors import RemoteProtocolError

_NONCE_PREFIX = b"\x00\x00\x00\x00"
_PACK_PN = struct.Struct("<Q").pack
_PING = encode_frame(Ping())
_MESSAGE = int(FrameType.MESSAGE)
MAX_MESSAGE_WINDOW = 1 << 16

CLOSE_NORMAL = 0
CLOSE_PROTOCOL_ERROR = 1
CLOSE_IDLE = 2


class OutgoingMessage:
    __slots__ = ("handle", "message_id", "data", "next_offset", "acked", "acked_bytes", "done")

    def __init__(self, handle: int, message_id: int, data: bytes) -> None:
        self.handle = handle
        self.message_id = message_id
        self.data = data
        self.next_offset = 0
        self.acked: set[int] = set()
        self.acked_bytes = 0
        self.done = False


class SentPacket:
    __slots__ = ("time_sent", "size", "fragments", "controls")

    def __init__(self, time_sent: float, size: int, fragments: list, controls: list) -> None:
        self.time_sent = time_sent
        self.size = size
        self.fragments: list[tuple[OutgoingMessage, int, int]] = fragments
        self.controls: list[bytes] = controls


@dataclass(slots=True)
class _Reassembly:
    total: int
    parts: dict[int, bytes] = field(default_factory=dict)
    received: int = 0


class Session:
    """Transport state for one peer. Fed packets and time by the endpoint."""

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
        socket: int = 0,
    ) -> None:
        self.local_sid = local_sid
        self.remote_sid = remote_sid
        self.peer = peer
        self.peer_id = peer.hex()
        self.peer_introducer = peer_introducer
        self.initiator = initiator
        self.address = address
        self.socket = socket
        """The local socket this session's packets use (0: the node's own)."""
        relayed = isinstance(address, RelayPath)
        self.path = "relay" if relayed else "direct"
        self.max_payload = (
            MAX_RELAYED_DATAGRAM - DATA_HEADER_SIZE - AEAD_TAG_SIZE if relayed else MAX_DATA_PAYLOAD
        )
        self.config = config
        self._send = ChaCha20Poly1305(send_key)
        self._recv = ChaCha20Poly1305(recv_key)
        self.next_pn = 0
        self.replay = ReplayWindow()
        self.received = RangeSet()
        self.ack_pending = False
        self.rtt = RttEstimator()
        self.cc = NewReno()
        self.sent: OrderedDict[int, SentPacket] = OrderedDict()
        self.largest_acked = -1
        self.loss_time: float | None = None
        self.pto_count = 0
        self.probes = 0
        self.last_eliciting_sent = now
        self.last_received = now
        self.control_out: deque[tuple[bytes, bool]] = deque()
        self.retransmit: deque[tuple[OutgoingMessage, int, int]] = deque()
        self.send_queue: deque[OutgoingMessage] = deque()
        self.next_message_id = 0
        self.incoming: dict[int, _Reassembly] = {}
        self.incoming_bytes = 0
        self.delivered_floor = 0
        self.delivered_above: set[int] = set()
        self.confirmed = not initiator
        self.final_datagram: bytes | None = None
        self.final_deadline = 0.0
        self.final_backoff = config.handshake_retry
        self.wanted = True
        self.rebound = False
        """The peer's address changed (NAT rebinding) and it has not been told yet."""
        self.drop_reason = ""
        self.closed = False
        self.close_reason = ""
        self.events: list[ev.Event] = []
        self.control_in: list[Frame] = []
        self.raw_out: list[bytes] = []

    # ------------------------------------------------------------------ commands

    def send_message(self, handle: int, data: bytes) -> None:
        self.send_queue.append(OutgoingMessage(handle, self.next_message_id, data))
        self.next_message_id += 1

    def queue_control(self, frame: Frame, *, reliable: bool = True) -> None:
        self.control_out.append((encode_frame(frame), reliable))

    def cancel_message(self, handle: int) -> bool:
        for message in self.send_queue:
            if message.handle == handle:
                self.send_queue.remove(message)
                return True
        for packet in self.sent.values():
            for message, _, _ in packet.fragments:
                if message.handle == handle:
                    message.done = True
                    return True
        return False

    def close(self, code: int = CLOSE_NORMAL, reason: str = "closed") -> None:
        """Send a CLOSE frame with the next flush and stop."""
        if self.closed:
            return
        self.control_out.clear()
        self.control_out.append((encode_frame(Close(code, reason)), False))
        self._finish(reason)

    def _finish(self, reason: str) -> None:
        self.closed = True
        self.close_reason = reason
        self.send_queue.clear()
        self.retransmit.clear()
        self.sent.clear()
        self.incoming.clear()

    def pending_handles(self) -> list[int]:
        """Handles of messages queued or in flight but not yet delivered."""
        handles = {m.handle for m in self.send_queue}
        for packet in self.sent.values():
            handles.update(m.handle for m, _, _ in packet.fragments if not m.done)
        handles.update(m.handle for m, _, _ in self.retransmit if not m.done)
        return sorted(handles)

    # ------------------------------------------------------------------ receiving

    def receive(self, datagram: bytes, address: Address, now: float) -> bool:
        """Authenticate and process one DATA packet; False if it was dropped (the reason
        is then in ``drop_reason``: "replay" or "unauthenticated")."""
        _, _, pn = DATA_HEADER.unpack_from(datagram)
        if not self.replay.check(pn):
            self.drop_reason = "replay"
            return False
        try:
            payload = self._recv.decrypt(
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
        if newest and address != self.address:
            self.address = address
            self.rebound = True
        if not self.confirmed:
            self.confirmed = True
            self.final_datagram = None
        eliciting = False
        try:
            pos, end = 0, len(payload)
            # MESSAGE frames are parsed here, without a frame object: they are most of the
            # traffic. The first other frame hands the rest of the payload to the codec.
            while pos < end and payload[pos] == _MESSAGE:
                eliciting = True
                message_id, pos = decode_varint(payload, pos + 1)
                total, pos = decode_varint(payload, pos)
                offset, pos = decode_varint(payload, pos)
                size, pos = decode_varint(payload, pos)
                if pos + size > end or offset + size > total:
                    raise RemoteProtocolError("message fragment beyond its bounds")
                self._on_fragment(message_id, total, offset, payload[pos : pos + size])
                pos += size
            for frame in decode_frames(payload, pos) if pos < end else ():
                if isinstance(frame, MessageFragment):
                    eliciting = True
                    self._on_fragment(frame.message_id, frame.total_length, frame.offset,
                                      frame.data)
                elif isinstance(frame, Ack):
                    self._on_ack(frame, now)
                elif isinstance(frame, Ping | HandshakeDone):
                    eliciting = True
                elif isinstance(frame, Close):
                    self._finish(f"closed by peer: {frame.reason}")
                    return True
                else:
                    eliciting = True
                    self.control_in.append(frame)
        except RemoteProtocolError as exc:
            self.close(CLOSE_PROTOCOL_ERROR, f"protocol error: {exc}")
            return True
        self.received.add(pn)
        if eliciting:
            self.ack_pending = True
        return True

    def _on_fragment(self, message_id: int, total: int, offset: int, data: bytes) -> None:
        if message_id < self.delivered_floor or message_id in self.delivered_above:
            return
        if message_id >= self.delivered_floor + MAX_MESSAGE_WINDOW:
            raise RemoteProtocolError("message id too far ahead")
        if total > self.config.max_message_size:
            raise RemoteProtocolError("message larger than this node accepts")
        entry = self.incoming.get(message_id)
        if entry is None and offset == 0 and len(data) == total:
            self._deliver(message_id, data)  # the whole message in one fragment
            return
        if entry is None:
            entry = self.incoming[message_id] = _Reassembly(total)
        elif entry.total != total:
            raise RemoteProtocolError("message fragments disagree on length")
        if offset in entry.parts:
            return
        size = len(data)
        if self.incoming_bytes + size > self.config.max_reassembly_bytes:
            raise RemoteProtocolError("peer exceeded the reassembly budget")
        entry.parts[offset] = data
        entry.received += size
        self.incoming_bytes += size
        if entry.received < entry.total or (entry.total == 0 and not entry.parts):
            return
        whole = b"".join(entry.parts[k] for k in sorted(entry.parts))
        del self.incoming[message_id]
        self.incoming_bytes -= entry.received
        if len(whole) != entry.total:
            raise RemoteProtocolError("message fragments overlap")
        self._deliver(message_id, whole)

    def _deliver(self, message_id: int, data: bytes) -> None:
        self.delivered_above.add(message_id)
        while self.delivered_floor in self.delivered_above:
            self.delivered_above.discard(self.delivered_floor)
            self.delivered_floor += 1
        self.events.append(ev.MessageReceived(peer_id=self.peer_id, data=data, path=self.path))

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
                self.cc.on_acked(packet.size, packet.time_sent)
                for message, offset, length in packet.fragments:
                    if offset in message.acked:
                        continue
                    message.acked.add(offset)
                    message.acked_bytes += length
                    if not message.done and message.acked_bytes >= len(message.data) and (
                        message.next_offset >= len(message.data)
                    ):
                        message.done = True
                        self.events.append(
                            ev.MessageDelivered(
                                handle=message.handle, peer_id=self.peer_id, path=self.path
                            )
                        )
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
        add_fragment = self.retransmit.appendleft if first else self.retransmit.append
        add_control = self.control_out.appendleft if first else self.control_out.append
        for fragment in packet.fragments:
            if not fragment[0].done:
                add_fragment(fragment)
        for raw in packet.controls:
            add_control((raw, True))

    # ------------------------------------------------------------------ sending

    def datagrams(self, now: float) -> list[bytes]:
        """Build every packet that may be sent now (bounded by the congestion window)."""
        out = self.raw_out
        self.raw_out = []
        if self.closed and not self.control_out:
            return out
        while True:
            parts: list[bytes] = []
            budget = self.max_payload
            fragments: list[tuple[OutgoingMessage, int, int]] = []
            controls: list[bytes] = []
            eliciting = False
            if self.ack_pending and self.received.ranges:
                ack = encode_ack(self.received.as_tuples(), 0)
                parts.append(ack)
                budget -= len(ack)
                self.ack_pending = False
            control_out = self.control_out
            while control_out and len(control_out[0][0]) <= budget:
                raw, reliable = control_out.popleft()
                parts.append(raw)
                budget -= len(raw)
                eliciting = True
                if reliable:
                    controls.append(raw)
            if not self.closed and (self.probes > 0 or self.cc.can_send(MAX_DATAGRAM_SIZE)):
                budget = self._fill_messages(parts, fragments, budget)
                if fragments:
                    eliciting = True
            if not parts:
                break
            if eliciting and self.probes > 0:
                self.probes -= 1
            out.append(self._seal(b"".join(parts), now, eliciting, fragments, controls))
            if self.closed:
                break
        return out

    def _fill_messages(self, parts: list[bytes], fragments: list, budget: int) -> int:
        retransmit = self.retransmit
        while retransmit and budget > 24:
            message, offset, length = retransmit[0]
            if message.done:
                retransmit.popleft()
                continue
            frame = _fragment_frame(message, offset, length)
            if len(frame) > budget:
                break
            retransmit.popleft()
            parts.append(frame)
            fragments.append((message, offset, length))
            budget -= len(frame)
        queue = self.send_queue
        while queue and budget > 24:
            message = queue[0]
            total = len(message.data)
            offset = message.next_offset
            head = 1 + 3 * 4 + 2
            length = min(total - offset, budget - head)
            if length <= 0 and total > 0:
                break
            frame = _fragment_frame(message, offset, length)
            parts.append(frame)
            fragments.append((message, offset, length))
            budget -= len(frame)
            message.next_offset = offset + length
            if message.next_offset >= total:
                queue.popleft()
        return budget

    def _seal(
        self, payload: bytes, now: float, eliciting: bool, fragments: list, controls: list
    ) -> bytes:
        pn = self.next_pn
        self.next_pn = pn + 1
        header = DATA_HEADER.pack(PacketKind.DATA, self.remote_sid, pn)
        datagram = header + self._send.encrypt(_NONCE_PREFIX + _PACK_PN(pn), payload, header)
        if eliciting:
            self.sent[pn] = SentPacket(now, len(datagram), fragments, controls)
            self.cc.on_sent(len(datagram))
            self.last_eliciting_sent = now
        return datagram

    # ------------------------------------------------------------------ timers

    def _pto_deadline(self) -> float | None:
        if not self.sent:
            return None
        return self.last_eliciting_sent + self.rtt.pto() * (2**self.pto_count)

    def get_timer(self) -> float:
        deadlines = [self.last_received + self.config.idle_timeout]
        if self.loss_time is not None:
            deadlines.append(self.loss_time)
        else:
            pto = self._pto_deadline()
            if pto is not None:
                deadlines.append(pto)
        if self.wanted:
            deadlines.append(self.last_eliciting_sent + self.config.keepalive_interval)
        if self.final_datagram is not None:
            deadlines.append(self.final_deadline)
        return min(deadlines)

    def handle_timer(self, now: float) -> None:
        if self.closed:
            return
        if now >= self.last_received + self.config.idle_timeout:
            self._finish("peer went silent (idle timeout)")
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
        if self.wanted and now >= self.last_eliciting_sent + self.config.keepalive_interval:
            self.control_out.append((_PING, False))
            self.last_eliciting_sent = now
        if self.final_datagram is not None and now >= self.final_deadline:
            self.raw_out.append(self.final_datagram)
            self.final_backoff = min(self.final_backoff * 2, 4.0)
            self.final_deadline = now + self.final_backoff


def _fragment_frame(message: OutgoingMessage, offset: int, length: int) -> bytes:
    data = message.data[offset : offset + length]
    return b"".join(
        (
            b"\x10",
            encode_varint(message.message_id),
            encode_varint(len(message.data)),
            encode_varint(offset),
            encode_varint(length),
            data,
        )
    )
