"""Streams and datagrams as flows of a connection's packet scheduler.

A connection fills each packet from its flows: a flow says whether it ``has_data``,
appends encoded frames to the packet's parts within a byte budget (``fill``), and gets
back what it wrote, as a *record*, when the packet is acknowledged (``on_acked``) or lost
(``on_lost``). ``FrameFlow`` makes such a flow of anything that returns frame objects
from ``fill(budget)`` and takes them back one by one: a ``StreamManager`` (all of a
connection's streams, which it shares fairly), one ``Stream``, or a ``DatagramQueue``.
Sources are filled in order, so datagrams put first never wait behind stream bytes.
A STREAM frame's data goes into the parts as the view it is, so the only copy of the
application's bytes on the way out is the one that builds the packet.
"""

from __future__ import annotations

from typing import Protocol

from shoal.core.streams.frames import StreamFrame, StreamsFrame, encode, stream_header


def write_frames(parts: list[bytes | memoryview], frames: list[StreamsFrame]) -> int:
    """Append the encoded ``frames`` to a packet's ``parts``; returns the bytes added."""
    size = 0
    for frame in frames:
        if type(frame) is StreamFrame:
            data = frame.data
            header = frame.header or stream_header(frame.stream_id, frame.offset, len(data),
                                                   frame.fin)
            parts.append(header)
            parts.append(data)
            size += len(header) + len(data)
        else:
            raw = encode(frame)
            parts.append(raw)
            size += len(raw)
    return size


class FrameSource(Protocol):
    @property
    def wants_send(self) -> bool: ...
    def fill(self, budget: int) -> list[StreamsFrame]: ...
    def on_acked(self, frame: StreamsFrame) -> None: ...
    def on_lost(self, frame: StreamsFrame) -> None: ...


class FrameFlow:
    """A flow (``has_data``, ``fill(parts, budget)``, ``on_acked``, ``on_lost``) over
    frame sources, filled in the order given."""

    __slots__ = ("sources",)

    def __init__(self, *sources: FrameSource) -> None:
        self.sources = sources

    def has_data(self) -> bool:
        return any(source.wants_send for source in self.sources)

    def fill(self, parts: list[bytes | memoryview], budget: int,
             ) -> tuple[int, list[tuple[FrameSource, list[StreamsFrame]]] | None]:
        """Append encoded frames of at most ``budget`` bytes to ``parts``; return the
        budget left and the record of what was written (None if nothing): each source
        that wrote with the list of its frames."""
        record: list[tuple[FrameSource, list[StreamsFrame]]] | None = None
        for source in self.sources:
            if budget <= 0 or not source.wants_send:
                continue
            frames = source.fill(budget)
            if not frames:
                continue
            budget -= write_frames(parts, frames)
            if record is None:
                record = [(source, frames)]
            else:
                record.append((source, frames))
        return budget, record

    def on_acked(self, record: list[tuple[FrameSource, list[StreamsFrame]]]) -> None:
        for source, frames in record:
            for frame in frames:
                source.on_acked(frame)

    def on_lost(self, record: list[tuple[FrameSource, list[StreamsFrame]]]) -> None:
        for source, frames in record:
            for frame in frames:
                source.on_lost(frame)
