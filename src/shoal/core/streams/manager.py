"""A connection's streams: ids, limits on their number, connection credit, scheduling.

Theory of operation
-------------------
Either side opens bidirectional streams. A stream id is ``4 * n + side``: ``side`` is 0
for the connection's initiator and 1 for its responder, ``n`` counts that side's streams
from 0, and bit 1 (unidirectional, in QUIC's numbering) is never set. A side may open
streams numbered below the limit its peer granted (MAX_STREAMS); the peer grants one more
each time one of its streams is done on both sides, so at most ``max_streams`` of a peer's
streams exist at once. A frame for a peer's stream opens it (and every lower one); a frame
for a stream that is done is a late copy and is ignored; a frame naming a stream beyond
the limit, or one of ours not yet opened, breaks the protocol.

Both sides start from the same implicit limits (``INITIAL_STREAM_DATA`` per stream,
``INITIAL_DATA`` for the connection, ``INITIAL_MAX_STREAMS``), so a stream's first bytes
never wait a round trip; the receiver raises them with MAX_STREAM_DATA, MAX_DATA and
MAX_STREAMS as the application reads. The connection's credit is shared by its streams.

``StreamManager`` is sans-IO: ``receive(frame)`` takes a decoded frame and may raise
``RemoteProtocolError`` (close the connection); ``fill(budget)`` returns frames to send,
the connection's own first, then each stream with something to send in turn (a stream
that sent goes to the back, so streams share the path fairly); ``on_acked`` and
``on_lost`` take back the frames ``fill`` returned. Each ``Stream`` is a flow of its own
with the same three methods, for a scheduler that schedules streams one by one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from shoal.core.streams.credit import RecvLimit, SendLimit
from shoal.core.streams.frames import (
    MAX_STREAM_COUNT,
    DataBlocked,
    MaxData,
    MaxStreamData,
    MaxStreams,
    ResetStream,
    StopSending,
    StreamDataBlocked,
    StreamFrame,
    StreamsBlocked,
    StreamsFrame,
    encoded_size,
)
from shoal.core.streams.recv import RecvStream
from shoal.core.streams.send import SendStream
from shoal.core.streams.state import SEND_DONE
from shoal.errors import LocalProtocolError, RemoteProtocolError

INITIAL_STREAM_DATA = 64 * 1024
"""Bytes a side may send on a new stream before the first MAX_STREAM_DATA."""
INITIAL_DATA = 256 * 1024
"""Bytes a side may send on all streams before the first MAX_DATA."""
INITIAL_MAX_STREAMS = 16
"""Streams a side may open before the first MAX_STREAMS."""


@dataclass(frozen=True, slots=True)
class StreamConfig:
    """How much a node holds for a connection's streams (all bytes)."""

    stream_window: int = 1 << 20
    """Unread bytes one stream may make this node hold."""
    connection_window: int = 4 << 20
    """Unread bytes all streams of a connection may make this node hold together."""
    send_buffer: int = 1 << 20
    """Bytes a stream holds written and not yet acknowledged; ``write`` takes no more."""
    max_streams: int = 100
    """A peer's streams open at once."""

    def __post_init__(self) -> None:
        # A peer may use the implicit limits before it hears of ours, so they are floors.
        if self.stream_window < INITIAL_STREAM_DATA or self.connection_window < INITIAL_DATA:
            raise LocalProtocolError(f"stream windows must be at least {INITIAL_STREAM_DATA} "
                                     f"bytes, and the connection's {INITIAL_DATA}")
        if self.send_buffer < 1024:
            raise LocalProtocolError("a stream's send buffer must be at least 1 KiB")
        if not INITIAL_MAX_STREAMS <= self.max_streams <= 1 << 20:
            raise LocalProtocolError(f"max_streams must be {INITIAL_MAX_STREAMS} .. 2**20")


# ----------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class StreamOpened:
    """The peer opened stream ``stream_id``."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class StreamReadable:
    """Bytes, or the end, of stream ``stream_id`` can be read."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class StreamWritable:
    """A writer that found stream ``stream_id``'s buffer full can write again: half of
    the buffer is free."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class StreamReset:
    """The peer abandoned its side of stream ``stream_id``."""

    stream_id: int
    error_code: int


@dataclass(frozen=True, slots=True)
class StreamStopped:
    """The peer will not read stream ``stream_id``: this side's bytes were dropped."""

    stream_id: int
    error_code: int


@dataclass(frozen=True, slots=True)
class StreamClosed:
    """Both sides of stream ``stream_id`` are done; it is forgotten."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class StreamsAvailable:
    """The peer allows more streams: ``open`` works again."""

    limit: int


StreamEvent = (StreamOpened | StreamReadable | StreamWritable | StreamReset | StreamStopped
               | StreamClosed | StreamsAvailable)


# ----------------------------------------------------------------------------- a stream


class Stream:
    """One bidirectional stream: an application's handle and a flow of frames."""

    __slots__ = ("stream_id", "send", "recv", "writer_waiting", "notify_readable", "_wake")

    def __init__(self, stream_id: int, send: SendStream, recv: RecvStream,
                 wake: Callable[[Stream], None]) -> None:
        self.stream_id = stream_id
        self.send = send
        self.recv = recv
        self.writer_waiting = False
        self.notify_readable = True
        """Whether the next bytes (or end) that arrive are to make a ``StreamReadable``."""
        self._wake = wake

    def __repr__(self) -> str:
        return f"<Stream {self.stream_id} {self.send.state.value}/{self.recv.state.value}>"

    # ----------------------------------------------------------------- application side

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Buffer what fits of ``data``; returns the bytes taken (see ``StreamWritable``)."""
        taken = self.send.write(data)
        self.writer_waiting = taken < len(data)
        if taken:
            self._wake(self)
        return taken

    def close(self) -> None:
        """Send FIN after the bytes written."""
        self.send.close()
        self._wake(self)

    def reset(self, code: int = 0) -> None:
        """Abandon the sending side."""
        self.send.reset(code)
        self._wake(self)

    def read(self, size: int = -1) -> bytes:
        data = self.recv.read(size)
        if not data:
            self.notify_readable = True
        if self.recv.wants_send or self.done:
            self._wake(self)
        return data

    def stop(self, code: int = 0) -> None:
        """Read no more of this stream (the peer is asked to stop sending)."""
        self.recv.stop(code)
        self._wake(self)

    @property
    def done(self) -> bool:
        return self.send.state in SEND_DONE and self.recv.finished

    # ----------------------------------------------------------------- the flow

    @property
    def wants_send(self) -> bool:
        return self.recv.wants_send or self.send.wants_send

    def fill(self, budget: int) -> list[StreamsFrame]:
        """Frames of this stream to send now, at most ``budget`` bytes encoded."""
        if not self.recv.wants_send:
            return self.send.fill(budget)
        out = self.recv.fill(budget)
        if out:
            budget -= sum(encoded_size(f) for f in out)
        out += self.send.fill(budget)
        return out

    def on_acked(self, frame: StreamsFrame) -> None:
        if type(frame) in (StopSending, MaxStreamData):
            self.recv.on_acked(frame)
        else:
            self.send.on_acked(frame)

    def on_lost(self, frame: StreamsFrame) -> None:
        if type(frame) in (StopSending, MaxStreamData):
            self.recv.on_lost(frame)
        else:
            self.send.on_lost(frame)
        if self.wants_send:
            self._wake(self)


# ----------------------------------------------------------------------------- all of them


class StreamManager:
    """The streams of one connection (one per side of it)."""

    def __init__(self, *, initiator: bool, config: StreamConfig | None = None) -> None:
        self.config = config or StreamConfig()
        self.side = 0 if initiator else 1
        self.send_credit = SendLimit(INITIAL_DATA)
        self.recv_credit = RecvLimit(INITIAL_DATA, self.config.connection_window)
        self.streams: dict[int, Stream] = {}
        self.events: list[StreamEvent] = []
        self.opened = 0
        """Streams this side opened."""
        self.open_limit = INITIAL_MAX_STREAMS
        """Streams the peer allows this side to open (in all)."""
        self.peer_opened = 0
        self.peer_done = 0
        self.peer_limit = INITIAL_MAX_STREAMS
        """Streams this side allows the peer to open (in all)."""
        self._limit_pending = self.config.max_streams != INITIAL_MAX_STREAMS
        self._blocked_reported = -1
        self._data_blocked = -1
        self._active: dict[int, Stream] = {}
        self._grant_limit()

    # ----------------------------------------------------------------- application side

    def can_open(self) -> bool:
        return self.opened < self.open_limit

    def open(self) -> Stream:
        """A new stream of this side; ``LocalProtocolError`` (EAGAIN) when the peer's limit
        is reached (a ``StreamsAvailable`` event follows when it is raised)."""
        if not self.can_open():
            if self._blocked_reported != self.open_limit:
                self._blocked_reported = -2  # STREAMS_BLOCKED is due
            raise LocalProtocolError("the peer allows no more streams now", code="EAGAIN")
        stream = self._create(4 * self.opened + self.side)
        self.opened += 1
        return stream

    def pop_events(self) -> list[StreamEvent]:
        """The events since the last call. A stream is named readable once, and again only
        after its ``notify_readable`` is set (a reader that found nothing sets it)."""
        events, self.events = self.events, []
        return events

    # ----------------------------------------------------------------- frames in

    def receive(self, frame: StreamsFrame) -> None:
        """Take one frame from the peer; ``RemoteProtocolError`` means close the connection."""
        kind = type(frame)
        if kind is StreamFrame:
            stream = self._stream_for(frame.stream_id)  # type: ignore[union-attr]
            if stream is not None and stream.recv.on_frame(frame):  # type: ignore[arg-type]
                if stream.notify_readable:  # one event, until the reader asks again
                    stream.notify_readable = False
                    self.events.append(StreamReadable(stream.stream_id))
                if frame.fin:  # type: ignore[union-attr]
                    self._check_done(stream)  # (bytes alone finish no stream: a read does)
        elif kind is MaxData:
            if self.send_credit.raise_to(frame.limit):  # type: ignore[union-attr]
                for stream in self.streams.values():
                    if stream.send.sent < stream.send.written:
                        self._wake(stream)
        elif kind is MaxStreamData:
            stream = self._stream_for(frame.stream_id)  # type: ignore[union-attr]
            if stream is not None and stream.send.on_max_stream_data(frame.limit):  # type: ignore[union-attr]
                self._wake(stream)
        elif kind is ResetStream:
            stream = self._stream_for(frame.stream_id)  # type: ignore[union-attr]
            if stream is not None and stream.recv.on_reset(frame):  # type: ignore[arg-type]
                self.events.append(StreamReset(stream.stream_id, frame.error_code))  # type: ignore[union-attr]
                self._check_done(stream)
        elif kind is StopSending:
            stream = self._stream_for(frame.stream_id)  # type: ignore[union-attr]
            if stream is not None and stream.send.reset_code is None \
                    and stream.send.state not in SEND_DONE:
                stream.send.on_stop_sending(frame.error_code)  # type: ignore[union-attr]
                self.events.append(StreamStopped(stream.stream_id, frame.error_code))  # type: ignore[union-attr]
                self._wake(stream)
        elif kind is MaxStreams:
            if frame.limit > self.open_limit:  # type: ignore[union-attr]
                self.open_limit = frame.limit  # type: ignore[union-attr]
                self.events.append(StreamsAvailable(self.open_limit))
        elif kind is StreamDataBlocked:
            self._stream_for(frame.stream_id)  # type: ignore[union-attr]
        elif kind not in (DataBlocked, StreamsBlocked):
            raise TypeError(f"not a stream frame: {frame!r}")

    def _stream_for(self, stream_id: int) -> Stream | None:
        stream = self.streams.get(stream_id)
        if stream is not None:
            return stream
        if stream_id & 2:
            raise RemoteProtocolError("unidirectional streams are not supported",
                                      code="ESTREAMSTATE")
        index = stream_id >> 2
        if stream_id & 1 == self.side:
            if index >= self.opened:
                raise RemoteProtocolError("frame for a stream this side never opened",
                                          code="ESTREAMSTATE")
            return None
        if index < self.peer_opened:
            return None
        if index >= self.peer_limit:
            raise RemoteProtocolError("the peer opened more streams than allowed",
                                      code="ESTREAMLIMIT")
        while self.peer_opened <= index:
            created = self._create(4 * self.peer_opened + (1 - self.side))
            self.peer_opened += 1
            self.events.append(StreamOpened(created.stream_id))
        return self.streams[stream_id]

    def _create(self, stream_id: int) -> Stream:
        config = self.config
        send = SendStream(stream_id, INITIAL_STREAM_DATA, self.send_credit, config.send_buffer)
        recv = RecvStream(stream_id, INITIAL_STREAM_DATA, config.stream_window,
                          self.recv_credit)
        stream = Stream(stream_id, send, recv, self._wake)
        self.streams[stream_id] = stream
        if recv.wants_send:
            self._wake(stream)
        return stream

    def _check_done(self, stream: Stream) -> None:
        # A stream already forgotten may be woken once more (a read at its end): once.
        if not stream.done or self.streams.get(stream.stream_id) is not stream:
            return
        del self.streams[stream.stream_id]
        self._active.pop(stream.stream_id, None)
        self.events.append(StreamClosed(stream.stream_id))
        if stream.stream_id & 1 != self.side:
            self.peer_done += 1
            self._grant_limit()

    def _grant_limit(self) -> None:
        limit = min(self.peer_done + self.config.max_streams, MAX_STREAM_COUNT)
        if limit > self.peer_limit:
            self.peer_limit = limit
            self._limit_pending = True

    def _wake(self, stream: Stream) -> None:
        self._active[stream.stream_id] = stream

    # ----------------------------------------------------------------- the flow

    @property
    def wants_send(self) -> bool:
        return bool(self._active or self.recv_credit.pending or self._limit_pending
                    or self._blocked_reported == -2)

    def fill(self, budget: int) -> list[StreamsFrame]:
        """Frames to send now, their encoded sizes summing to at most ``budget``."""
        out: list[StreamsFrame] = []
        if self.recv_credit.pending or self._limit_pending or self._blocked_reported == -2:
            budget -= self._fill_control(out, budget)
        active = self._active
        if len(active) == 1:  # the usual case of bulk data, without the loop's upkeep
            stream_id, stream = next(iter(active.items()))
            recv, send = stream.recv, stream.send
            frames = stream.fill(budget) if recv.wants_send else send.fill(budget)
            if not out:
                out = frames
            elif frames:
                out += frames
            if not (send.wants_send or recv.wants_send):
                del active[stream_id]
                if stream.send.blocked_by_connection:
                    for frame in frames:
                        budget -= encoded_size(frame)
                    self._report_data_blocked(out, budget)
                elif not frames:
                    self._check_done(stream)
            return out
        blocked_on_connection = False
        for stream_id, stream in list(active.items()):
            if budget <= 0:
                break
            frames = stream.fill(budget)
            del active[stream_id]
            if frames:
                out += frames
                for frame in frames:
                    budget -= encoded_size(frame)
            if stream.wants_send:
                active[stream_id] = stream  # to the back: the others go first next time
            elif stream.send.blocked_by_connection:
                blocked_on_connection = True
            elif not frames:
                self._check_done(stream)  # woken by a read that finished it, say
        if blocked_on_connection:
            self._report_data_blocked(out, budget)
        return out

    def _report_data_blocked(self, out: list[StreamsFrame], budget: int) -> None:
        limit = self.send_credit.limit
        if self._data_blocked != limit and budget >= encoded_size(DataBlocked(limit)):
            self._data_blocked = limit
            out.append(DataBlocked(limit))

    def _fill_control(self, out: list[StreamsFrame], budget: int) -> int:
        candidates: list[StreamsFrame] = []
        if self.recv_credit.pending:
            candidates.append(MaxData(self.recv_credit.granted))
        if self._limit_pending:
            candidates.append(MaxStreams(self.peer_limit))
        if self._blocked_reported == -2:
            candidates.append(StreamsBlocked(self.open_limit))
        used = 0
        for frame in candidates:
            size = encoded_size(frame)
            if used + size > budget:
                break
            out.append(frame)
            used += size
            if type(frame) is MaxData:
                self.recv_credit.pending = False
            elif type(frame) is MaxStreams:
                self._limit_pending = False
            else:
                self._blocked_reported = self.open_limit
        return used

    def on_acked(self, frame: StreamsFrame) -> None:
        if type(frame) is StreamFrame:  # the usual case: straight to its sending side
            stream = self.streams.get(frame.stream_id)
            if stream is None:
                return
            send = stream.send
            send.on_data_acked(frame)
        else:
            stream_id = getattr(frame, "stream_id", None)
            if stream_id is None:
                return
            stream = self.streams.get(stream_id)
            if stream is None:
                return
            stream.on_acked(frame)
            send = stream.send
        # A waiting writer hears once half its buffer is free (or the stream is reset):
        # it then writes in large pieces, not a packet's worth per acknowledgement.
        if stream.writer_waiting and (send.reset_code is not None or (
                send.buffered <= send.buffer_limit - send.buffer_limit // 2
                and send.writable >= send.buffer_limit // 2)):
            stream.writer_waiting = False
            self.events.append(StreamWritable(stream.stream_id))
        if send.state in SEND_DONE:
            self._check_done(stream)

    def on_lost(self, frame: StreamsFrame) -> None:
        kind = type(frame)
        if kind is MaxData:
            if frame.limit == self.recv_credit.granted:  # type: ignore[union-attr]
                self.recv_credit.pending = True
        elif kind is MaxStreams:
            if frame.limit == self.peer_limit:  # type: ignore[union-attr]
                self._limit_pending = True
        elif kind is DataBlocked:
            if frame.limit == self.send_credit.limit:  # type: ignore[union-attr]
                self._data_blocked = -1
        elif kind is StreamsBlocked:
            if frame.limit == self.open_limit and not self.can_open():  # type: ignore[union-attr]
                self._blocked_reported = -2
        else:
            stream = self.streams.get(frame.stream_id)  # type: ignore[union-attr]
            if stream is not None:
                stream.on_lost(frame)
