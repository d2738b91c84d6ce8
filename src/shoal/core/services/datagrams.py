"""The datagram service: unreliable datagrams between peers, on the connection they share.

Theory of operation
-------------------
A datagram is one DATAGRAM frame (0x4a, RFC 9221): ``channel varint | length varint |
data``. It travels in one packet or not at all, encrypted like everything else on the
connection, and is never sent again: a lost one is only counted. Its channel number is
the one the message service binds for the same name on that connection, so a node takes
a peer's datagrams on exactly the channels it serves messages on. Until the peer answers
the binding, a copy of the CHANNEL frame goes, unreliably, ahead of each flush of
datagrams, so that datagrams whose packets overtake the first binding (or outlive its
loss) are still read.

Sending. Each connection that carries datagrams has a ``DatagramFlow``: a short queue
(``max_queued``, 64 unless the service's options say) that its packet scheduler fills
packets from, taking turns with the messages' and the streams' flows, within the same
congestion window and pacer. A packet of datagrams counts in flight as any other, so
datagrams yield to congestion; while the window is full they wait in the queue, and one
more than it holds pushes the oldest out (for live data the newest matters most). A
flood of datagrams thus holds a bounded queue and half the packets at most while
acknowledged messages wait on the same connection. A datagram must fit in one packet on
the connection's current path, with room left for an ACK (``largest_datagram``); a
larger one is refused at once with ``EMSGSIZE``. Should the path's size fall (a relay,
or larger packets vanish), queued datagrams that no longer fit are dropped.

Receiving. A datagram on a channel the peer bound and this node serves becomes a
``ServiceEvent`` of this service, kind ``datagram``, data ``(channel, bytes, path)``. One
on a number the peer never bound, or on a channel this node refused, is dropped and
counted (``datagrams_dropped_channel``); it costs the connection nothing more. A frame
whose length runs past its packet is a protocol error, as for every frame: the
connection closes (CLOSE code 1).

Counters (``ctx.stats``): ``datagrams_sent``, ``datagrams_received``,
``datagrams_lost`` (declared lost, or probed again after a timeout),
``datagrams_dropped_queue_full``, ``datagrams_dropped_too_big``,
``datagrams_dropped_channel``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from shoal.core.services.base import Service
from shoal.core.streams import frames as stream_frames
from shoal.core.streams.datagrams import MAX_QUEUED, DatagramQueue
from shoal.core.streams.flow import FrameFlow
from shoal.core.streams.frames import Datagram, varint_size
from shoal.core.wire import Channel as ChannelFrame
from shoal.core.wire import Frame, FrameType, encode_frame
from shoal.errors import DeliveryError, LocalProtocolError

if TYPE_CHECKING:
    from shoal.core.connection import Connection
    from shoal.core.services.context import ServiceContext
    from shoal.core.services.interfaces import Channels

PACKET_ROOM = 64
"""Bytes of a packet kept for an ACK and control frames besides a datagram, so that the
largest datagram allowed always fits in the next packet it is first in."""


def largest_datagram(max_payload: int, channel: int) -> int:
    """The most bytes of data a DATAGRAM frame on ``channel`` may carry in a packet
    whose payload is at most ``max_payload`` bytes."""
    room = max_payload - PACKET_ROOM - 1 - varint_size(channel)
    for length_size in (1, 2, 4):
        size = room - length_size
        if varint_size(max(size, 0)) <= length_size:
            return max(size, 0)
    return 0  # pragma: no cover - no packet is that large


class DatagramFlow:
    """One connection's datagrams, as a flow of its packet scheduler."""

    __slots__ = ("service", "connection", "queue", "frames", "limit")

    def __init__(self, service: DatagramService, connection: Connection,
                 max_queued: int) -> None:
        self.service = service
        self.connection = connection
        self.queue = DatagramQueue(max_queued)
        self.frames = FrameFlow(self.queue)
        self.limit = connection.max_payload - PACKET_ROOM
        """The packet room datagrams were queued for."""

    def push(self, channel: int, data: bytes) -> None:
        queue = self.queue
        before = queue.dropped
        queue.push(channel, data, self.connection.max_payload - PACKET_ROOM)
        if queue.dropped > before:
            self.service.ctx.stats["datagrams_dropped_queue_full"] += queue.dropped - before

    def has_data(self) -> bool:
        return self.queue.wants_send

    def fill(self, parts: list[bytes], budget: int) -> tuple[int, object]:
        stats = self.service.ctx.stats
        limit = self.connection.max_payload - PACKET_ROOM
        if limit < self.limit:  # the path carries less now
            stats["datagrams_dropped_too_big"] += self.queue.drop_larger(limit)
        self.limit = limit
        budget, record = self.frames.fill(parts, budget)  # type: ignore[arg-type]
        if record is not None:
            stats["datagrams_sent"] += len(record)
        return budget, record

    def on_acked(self, record: Any) -> None:
        """Nothing to do: the datagram arrived, and nothing is kept of it."""

    def on_lost(self, record: Any) -> None:
        self.service.ctx.stats["datagrams_lost"] += len(record)


class DatagramService(Service):
    """Unreliable datagrams on every connection (see the module docstring)."""

    name = "datagrams"
    requires = ("messages",)
    frame_types = (FrameType.DATAGRAM,)
    frame_decoders = {FrameType.DATAGRAM: stream_frames.DECODERS[FrameType.DATAGRAM]}

    def attach(self, ctx: ServiceContext, services: Mapping[str, Any]) -> None:
        super().attach(ctx, services)
        self.channels: Channels = services["messages"]
        self.max_queued = int(ctx.options.get("max_queued", MAX_QUEUED))

    def flow(self, connection: Connection) -> DatagramFlow:
        """The connection's datagram flow, made when first needed."""
        flow = connection.state.get(self.name)
        if flow is None:
            flow = connection.state[self.name] = DatagramFlow(self, connection,
                                                              self.max_queued)
            connection.add_flow(flow)
        return flow

    # ---------------------------------------------------------------- the application

    def call(self, now: float, op: str, *args: Any, **kwargs: Any) -> Any:
        """``op`` is ``send`` (peer_id, channel, data) or ``max_size`` (peer_id,
        channel)."""
        if op == "send":
            return self.send(*args, **kwargs)
        if op == "max_size":
            return self.max_size(*args, **kwargs)
        raise LocalProtocolError(f"the datagram service has no operation {op!r}")

    def _connection(self, peer_id: str) -> Connection:
        try:
            peer = bytes.fromhex(peer_id)
        except (TypeError, ValueError):
            raise LocalProtocolError(f"not a peer id: {peer_id!r}") from None
        connection = self.ctx.connection_to(peer)
        if connection is None:
            raise DeliveryError(f"no connection to {peer_id}", code="EHOSTUNREACH")
        return connection

    def max_size(self, peer_id: str, channel: str = "") -> int:
        """The largest datagram that goes to ``peer_id`` on ``channel`` now (the path's
        datagram size, less the packet's and the frame's overhead)."""
        connection = self._connection(peer_id)
        number = self.channels.outbound_number(connection, channel)
        return largest_datagram(connection.max_payload, number)

    def send(self, peer_id: str, channel: str, data: bytes | bytearray | memoryview) -> None:
        """Queue ``data`` for ``peer_id`` on ``channel``. ``EHOSTUNREACH`` without a
        connection, ``EMSGSIZE`` if it does not fit in one packet, ``ENOPROTOOPT`` if
        the peer refused the channel on this connection."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise LocalProtocolError("datagram data must be bytes")
        connection = self._connection(peer_id)
        number = self.channels.outbound_number(connection, channel)
        limit = largest_datagram(connection.max_payload, number)
        if len(data) > limit:
            raise LocalProtocolError(
                f"a datagram of {len(data)} bytes does not fit in one packet: at most "
                f"{limit} bytes on this path", code="EMSGSIZE")
        if self.channels.unanswered(connection, channel):
            # Until the peer answers, the binding goes again with each packet of
            # datagrams: one that overtakes (or outlives) the first is still read.
            binding = encode_frame(ChannelFrame(number, channel))
            if binding not in connection.control_out:
                self.ctx.send(connection, binding, reliable=False)
        self.flow(connection).push(number, bytes(data))
        self.ctx.wake(connection)

    # ---------------------------------------------------------------- frames in

    def on_frame(self, connection: Connection, frame: Frame, now: float) -> None:
        if type(frame) is not Datagram:
            return
        name = self.channels.inbound_name(connection, frame.channel)
        if name is None:
            self.ctx.stats["datagrams_dropped_channel"] += 1
            return
        self.ctx.stats["datagrams_received"] += 1
        self.ctx.event("datagram", (name, bytes(frame.data), connection.path_kind),
                       peer=connection.peer)
