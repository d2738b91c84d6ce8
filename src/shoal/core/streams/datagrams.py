"""Unreliable datagrams on a connection (RFC 9221's DATAGRAM frames).

Theory of operation
-------------------
A datagram goes in one packet or not at all: it is never split, never retransmitted, and
a lost one is only counted. Datagrams wait in a short queue of their own (the datagram
service makes one per connection, a flow of the connection's packet scheduler), so
real-time data never waits behind bulk data's retransmissions; when the queue is full
the oldest datagram is dropped (for live data the newest matters most), and counted too.
"""

from __future__ import annotations

from collections import deque

from shoal.core.streams.frames import Datagram, StreamsFrame, varint_size
from shoal.errors import LocalProtocolError

MAX_QUEUED = 64
"""Datagrams that may wait for a packet; the oldest goes when one more arrives."""


def datagram_overhead(channel: int, size: int) -> int:
    """The bytes a DATAGRAM frame adds to ``size`` bytes of data."""
    return 1 + varint_size(channel) + varint_size(size)


class DatagramQueue:
    """The datagrams a connection has yet to send: a flow that never retransmits."""

    __slots__ = ("queue", "max_queued", "dropped", "lost", "sent")

    def __init__(self, max_queued: int = MAX_QUEUED) -> None:
        self.queue: deque[Datagram] = deque()
        self.max_queued = max_queued
        self.dropped = 0
        """Datagrams pushed out of a full queue."""
        self.lost = 0
        self.sent = 0

    def push(self, channel: int, data: bytes, max_payload: int) -> None:
        """Queue ``data`` for ``channel``; ``max_payload`` is the most a packet carries
        now (``LocalProtocolError`` EMSGSIZE if the datagram cannot fit in one)."""
        if len(data) + datagram_overhead(channel, len(data)) > max_payload:
            raise LocalProtocolError(f"a datagram of {len(data)} bytes does not fit in a "
                                     f"packet ({max_payload} bytes)", code="EMSGSIZE")
        if len(self.queue) >= self.max_queued:
            self.queue.popleft()
            self.dropped += 1
        self.queue.append(Datagram(channel, bytes(data)))

    def drop_larger(self, max_payload: int) -> int:
        """Drop the queued datagrams that no longer fit in a packet of ``max_payload``
        bytes (the path's datagram size fell); how many went."""
        keep = deque(frame for frame in self.queue
                     if len(frame.data) + datagram_overhead(frame.channel, len(frame.data))
                     <= max_payload)
        dropped = len(self.queue) - len(keep)
        if dropped:
            self.queue = keep
            self.dropped += dropped
        return dropped

    @property
    def wants_send(self) -> bool:
        return bool(self.queue)

    def fill(self, budget: int) -> list[StreamsFrame]:
        """The queued datagrams, in order, that fit in ``budget`` bytes."""
        out: list[StreamsFrame] = []
        queue = self.queue
        while queue:
            frame = queue[0]
            size = len(frame.data) + datagram_overhead(frame.channel, len(frame.data))
            if size > budget:
                break
            out.append(queue.popleft())
            budget -= size
        self.sent += len(out)
        return out

    def on_acked(self, frame: StreamsFrame) -> None:
        """Nothing to do: a datagram is never sent again."""

    def on_lost(self, frame: StreamsFrame) -> None:
        self.lost += 1
