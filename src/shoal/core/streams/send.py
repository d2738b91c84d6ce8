"""The sending side of a stream: buffered application bytes, retransmission, FIN and reset.

Theory of operation
-------------------
The application's bytes wait in a buffer of chunks from the lowest unacknowledged offset
(``acked_floor``) to the end of what it wrote (``written``); ``write`` takes only what
fits under ``buffer_limit``, so the sender's memory is bounded and a writer whose peer
reads slowly is told to wait. Frames carry views of those chunks (no copy), except that
a frame spanning several small chunks joins them. A lost frame's bytes that are not yet
acknowledged go back in a set of ranges to resend, which ``fill`` serves before new
bytes; new bytes also need flow-control credit, from the stream's limit and from the
connection's. Acknowledged ranges advance ``acked_floor`` and free the chunks below it.
"""

from __future__ import annotations

import struct
from bisect import bisect_right

from shoal.core.streams.credit import SendLimit
from shoal.core.streams.frames import (
    ResetStream,
    StreamDataBlocked,
    StreamFrame,
    StreamsFrame,
    encoded_size,
    stream_overhead,
)
from shoal.core.streams.ranges import ByteRanges
from shoal.core.streams.state import SendEvent, SendState, next_send_state
from shoal.core.wire import FrameType, encode_varint
from shoal.errors import LocalProtocolError

COALESCE_BELOW = 4096
"""Writes smaller than this are appended to one growing chunk rather than kept apart."""
MIN_JOIN = 512
"""A frame that would end at a chunk boundary with fewer bytes than this joins chunks."""
MIN_FRAME_DATA = 16
"""Start no frame with room for fewer bytes than this while more are waiting."""
_STREAM = bytes((FrameType.STREAM,))
_STREAM_FIN = bytes((FrameType.STREAM_FIN,))
_SENDING = (SendState.READY, SendState.SEND, SendState.DATA_SENT)
"""(A tuple: membership by identity, where a set would call Enum.__hash__ in Python.)"""
_OFFSET_LENGTH = struct.Struct("!IH")
"""A 4-byte varint offset and a 2-byte varint length (their tags or'ed in)."""


class SendStream:
    """The sending side of stream ``stream_id``."""

    __slots__ = ("stream_id", "state", "credit", "connection", "buffer_limit", "written",
                 "acked_floor", "fin_wanted", "fin_sent", "fin_acked", "reset_code",
                 "_reset_pending", "_chunks", "_starts", "_acked", "_lost", "_prefix",
                 "_fin_prefix")

    def __init__(self, stream_id: int, limit: int, connection: SendLimit,
                 buffer_limit: int) -> None:
        self.stream_id = stream_id
        self.state = SendState.READY
        self.credit = SendLimit(limit)
        self.connection = connection
        self.buffer_limit = buffer_limit
        self.written = 0
        self.acked_floor = 0
        self.fin_wanted = False
        self.fin_sent = False
        self.fin_acked = False
        self.reset_code: int | None = None
        self._reset_pending = False
        self._chunks: list[bytes | bytearray | memoryview] = []
        self._starts: list[int] = []
        self._acked = ByteRanges()
        self._lost = ByteRanges()
        self._prefix = _STREAM + encode_varint(stream_id)
        """A STREAM frame's header up to its offset (and with FIN, ``_fin_prefix``)."""
        self._fin_prefix = _STREAM_FIN + self._prefix[1:]

    # ----------------------------------------------------------------- application side

    @property
    def sent(self) -> int:
        """Bytes below this offset were sent at least once."""
        return self.credit.used

    @property
    def buffered(self) -> int:
        """Bytes held: written and not yet acknowledged."""
        return self.written - self.acked_floor

    @property
    def writable(self) -> int:
        """How many bytes ``write`` would take now."""
        if self.fin_wanted or self.reset_code is not None:
            return 0
        return max(self.buffer_limit - self.buffered, 0)

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Buffer as much of ``data`` as fits; returns how many bytes were taken."""
        if self.fin_wanted or self.reset_code is not None:
            raise LocalProtocolError("the stream is closed for writing", code="EPIPE")
        size = min(len(data), self.buffer_limit - self.buffered)
        if size <= 0:
            return 0
        chunks = self._chunks
        if size < COALESCE_BELOW:
            tail = chunks[-1] if chunks else None
            if (type(tail) is bytearray and self._starts[-1] >= self.sent
                    and len(tail) < COALESCE_BELOW):
                tail += data[:size]
                self.written += size
                return size
            piece: bytes | bytearray | memoryview = bytearray(data[:size])
        elif type(data) is bytes:
            piece = memoryview(data)[:size]  # kept as a view: frames are slices of it
        elif type(data) is memoryview and data.readonly and type(data.obj) is bytes:
            piece = data[:size]  # a view of bytes nobody can change
        else:
            piece = memoryview(bytes(data[:size]))  # the caller may change its buffer
        chunks.append(piece)
        self._starts.append(self.written)
        self.written += size
        return size

    def close(self) -> None:
        """No more bytes: FIN follows the last one."""
        if self.reset_code is not None:
            raise LocalProtocolError("the stream was reset", code="EPIPE")
        self.fin_wanted = True

    def reset(self, code: int) -> None:
        """Abandon the stream: buffered bytes are dropped and RESET_STREAM is sent."""
        if self.state in (SendState.DATA_RECVD, SendState.RESET_SENT, SendState.RESET_RECVD):
            return
        self.state = next_send_state(self.state, SendEvent.RESET)
        self.reset_code = code
        self._reset_pending = True
        self._chunks.clear()
        self._starts.clear()
        self._lost = ByteRanges()
        self.acked_floor = self.written

    # ----------------------------------------------------------------- peer side

    def on_max_stream_data(self, limit: int) -> bool:
        """The peer granted ``limit``; whether it gave room."""
        return self.credit.raise_to(limit)

    def on_stop_sending(self, code: int) -> None:
        """The peer will not read: answer with a reset (RFC 9000 section 3.5)."""
        self.reset(code)

    # ----------------------------------------------------------------- the flow

    @property
    def wants_send(self) -> bool:
        if self._reset_pending or self._lost.los:
            return True
        if self.state not in _SENDING:
            return False
        credit = self.credit
        if credit.used < self.written:
            if credit.used >= credit.limit:
                return credit.reported != credit.limit  # STREAM_DATA_BLOCKED due
            connection = self.connection
            return connection.used < connection.limit
        return self.fin_wanted and not self.fin_sent

    @property
    def blocked_by_connection(self) -> bool:
        """New bytes wait for the connection's credit alone."""
        return (self.sent < self.written and self.credit.available() > 0
                and self.connection.available() <= 0)

    def fill(self, budget: int) -> list[StreamsFrame]:
        """Frames to send now, their encoded sizes summing to at most ``budget``."""
        out: list[StreamsFrame] = []
        if self._reset_pending:
            frame = ResetStream(self.stream_id, self.reset_code or 0, self.sent)
            if encoded_size(frame) <= budget:
                out.append(frame)
                self._reset_pending = False
            return out
        if self.state not in _SENDING:
            return out
        stream_id = self.stream_id
        lost = self._lost
        while lost.los and budget > 0:
            lo, hi = lost.los[0], lost.his[0]
            room = budget - stream_overhead(stream_id, lo, budget)
            if room < min(hi - lo, MIN_FRAME_DATA):
                return out
            data = self._slice(lo, min(hi, lo + room))
            end = lo + len(data)
            lost.remove(lo, end)
            budget -= self._emit(out, lo, data, end)
        credit, connection = self.credit, self.connection
        written = self.written
        prefix_size = len(self._prefix)
        while credit.used < written and budget > 0:
            # New bytes, the bulk of a transfer: kept to few calls per packet.
            lo = credit.used
            hi = connection.limit - connection.used + lo
            if credit.limit < hi:
                hi = credit.limit
            if hi <= lo:
                break
            room = budget - prefix_size - (
                1 if lo < 0x40 else 2 if lo < 0x4000 else 4 if lo < 0x40000000 else 8) - (
                1 if budget < 0x40 else 2 if budget < 0x4000 else 4 if budget < 0x40000000 else 8)
            if room < MIN_FRAME_DATA and room < written - lo:
                return out
            if lo + room < hi:
                hi = lo + room
            if written < hi:
                hi = written
            data = self._slice(lo, hi)
            end = lo + len(data)
            credit.used = end
            connection.used += end - lo
            budget -= self._emit(out, lo, data, end)
        if self.fin_wanted and not self.fin_sent and credit.used == written:
            if stream_overhead(stream_id, written, 0) <= budget:
                self._emit(out, written, b"", written)
        elif credit.used < written and credit.used >= credit.limit:
            limit = self.credit.blocked_report()
            if limit is not None:
                frame = StreamDataBlocked(stream_id, limit)
                if encoded_size(frame) <= budget:
                    out.append(frame)
                else:
                    self.credit.reported = -1
        return out

    def _emit(self, out: list[StreamsFrame], lo: int, data: bytes | memoryview,
              end: int) -> int:
        size = len(data)
        # The usual offset (4 bytes) and length (2 bytes) are packed in one call.
        if 0x4000 <= lo < 0x40000000 and 0x40 <= size < 0x4000:
            tail = _OFFSET_LENGTH.pack(lo | 0x80000000, size | 0x4000)
        else:
            tail = encode_varint(lo) + encode_varint(size)
        if self.fin_wanted and end == self.written:
            header = self._fin_prefix + tail
            out.append(StreamFrame(self.stream_id, lo, data, True, header))
            self.fin_sent = True
            self.state = next_send_state(self.state, SendEvent.SEND_FIN)
        else:
            header = self._prefix + tail
            out.append(StreamFrame(self.stream_id, lo, data, False, header))
            if self.state is SendState.READY:  # elsewhere SEND_DATA leaves the state as is
                self.state = next_send_state(self.state, SendEvent.SEND_DATA)
        return len(header) + size

    def _slice(self, lo: int, hi: int) -> bytes | memoryview:
        """Bytes ``lo .. hi`` (or fewer, ending at a chunk boundary) of the buffer."""
        starts, chunks = self._starts, self._chunks
        index = bisect_right(starts, lo) - 1
        start = starts[index]
        chunk = chunks[index]
        chunk_end = start + len(chunk)
        if hi <= chunk_end or chunk_end - lo >= MIN_JOIN:
            view = chunk if type(chunk) is memoryview else memoryview(chunk)
            return view[lo - start : min(hi, chunk_end) - start]
        pieces = [memoryview(chunk)[lo - start :]]
        cursor = chunk_end
        while cursor < hi:
            index += 1
            chunk = chunks[index]
            pieces.append(memoryview(chunk)[: hi - cursor])
            cursor += len(chunk)
        return b"".join(pieces)

    def on_acked(self, frame: StreamsFrame) -> None:
        if type(frame) is StreamFrame:
            self.on_data_acked(frame)
        elif type(frame) is ResetStream and self.state is SendState.RESET_SENT:
            self.state = next_send_state(self.state, SendEvent.RESET_ACKED)

    def on_data_acked(self, frame: StreamFrame) -> None:
        """A STREAM frame of this side was acknowledged."""
        if self.reset_code is not None or self.state is SendState.DATA_RECVD:
            return
        offset = frame.offset
        end = offset + len(frame.data)
        if self._lost.los:
            self._lost.remove(offset, end)
        if frame.fin:
            self.fin_acked = True
        if end > self.acked_floor:
            acked = self._acked
            if offset <= self.acked_floor and not acked.los:
                floor = end  # in order: the usual case
            else:
                acked.add(offset, end)
                floor = acked.pop_below(self.acked_floor)
            if floor != self.acked_floor:
                self.acked_floor = floor
                if self._starts[0] + len(self._chunks[0]) <= floor:
                    self._free_below(floor)
        if self.fin_acked and self.acked_floor == self.written:
            self.state = next_send_state(self.state, SendEvent.ALL_ACKED)

    def _free_below(self, floor: int) -> None:
        starts, chunks = self._starts, self._chunks
        count = 0
        while count < len(chunks) and starts[count] + len(chunks[count]) <= floor:
            count += 1
        if count:
            del starts[:count], chunks[:count]

    def on_lost(self, frame: StreamsFrame) -> None:
        kind = type(frame)
        if kind is StreamFrame:
            if self.reset_code is not None or self.state is SendState.DATA_RECVD:
                return
            for lo, hi in self._acked.missing(max(frame.offset, self.acked_floor),  # type: ignore[union-attr]
                                              frame.end):  # type: ignore[union-attr]
                self._lost.add(lo, hi)
            if frame.fin and not self.fin_acked:  # type: ignore[union-attr]
                self.fin_sent = False
        elif kind is ResetStream and self.state is SendState.RESET_SENT:
            self._reset_pending = True
        elif kind is StreamDataBlocked and frame.limit == self.credit.limit:  # type: ignore[union-attr]
            self.credit.reported = -1
