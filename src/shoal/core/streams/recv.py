"""The receiving side of a stream: out-of-order reassembly bounded by the granted window.

Theory of operation
-------------------
Bytes that continue what arrived so far (``contiguous``) join a queue the application
reads from; bytes further on wait in pieces keyed by offset, stored once each (a frame
that repeats bytes already held adds only the bytes missing), and join the queue when the
gap before them fills. Every byte held lies below the limit granted to the peer, which is
at most one window past what the application read, so a stream holds at most its window
and the connection at most its own: a frame that reaches beyond the limit breaks the
protocol (``RemoteProtocolError`` with code ``EFLOWCONTROL``), as does one that
contradicts the stream's final size. What each piece costs beyond its bytes is bounded
too: tiny in-order pieces are joined, and out-of-order pieces are counted per connection
(``MAX_PIECES``).
"""

from __future__ import annotations

from bisect import insort
from collections import deque

from shoal.core.streams.credit import RecvLimit
from shoal.core.streams.frames import (
    MaxStreamData,
    ResetStream,
    StopSending,
    StreamFrame,
    StreamsFrame,
    encoded_size,
)
from shoal.core.streams.ranges import ByteRanges
from shoal.core.streams.state import RECV_DONE, RecvEvent, RecvState, next_recv_state
from shoal.errors import RemoteProtocolError

MAX_PIECES = 8192
"""Out-of-order pieces a connection's streams may hold together; a peer that makes more
(tiny frames with gaps between them) breaks the protocol."""
SMALL_PIECE = 512
"""In-order pieces smaller than this are copied into a shared buffer of at most
``MAX_JOINED`` bytes."""
MAX_JOINED = 64 * 1024

_RESET = (RecvState.RESET_RECVD, RecvState.RESET_READ)
_ALL_IN = (RecvState.DATA_RECVD, RecvState.DATA_READ)


class RecvStream:
    """The receiving side of stream ``stream_id``."""

    __slots__ = ("stream_id", "state", "credit", "connection", "contiguous", "read_offset",
                 "final_size", "reset_code", "stop_code", "stop_acked", "_stop_pending", "_ready",
                 "_ready_size", "_pieces", "_starts", "_held")

    def __init__(self, stream_id: int, initial: int, window: int,
                 connection: RecvLimit) -> None:
        self.stream_id = stream_id
        self.state = RecvState.RECV
        self.credit = RecvLimit(initial, window)
        self.connection = connection
        self.contiguous = 0
        self.read_offset = 0
        self.final_size: int | None = None
        self.reset_code: int | None = None
        self.stop_code: int | None = None
        self.stop_acked = False
        self._stop_pending = False
        self._ready: deque[bytes | bytearray | memoryview] = deque()
        self._ready_size = 0
        self._pieces: dict[int, bytes | memoryview] = {}
        self._starts: list[int] = []
        self._held = ByteRanges()

    @property
    def buffered(self) -> int:
        """Bytes held for the application: ready to read, or waiting for a gap to fill."""
        return self._ready_size + sum(len(p) for p in self._pieces.values())

    @property
    def readable(self) -> int:
        """Bytes ``read`` would return now."""
        return self._ready_size

    @property
    def finished(self) -> bool:
        """Nothing more is owed to the application or the peer: the end (or the reset)
        was read, or the application stopped reading and the peer heard it (or reset)."""
        if self.state in RECV_DONE:
            return True
        return self.stop_code is not None and (self.stop_acked or self.state in _RESET)

    @property
    def at_eof(self) -> bool:
        """Every byte was read (or the stream was reset): ``read`` has nothing more."""
        return self.state in (RecvState.DATA_READ, *_RESET) or (
            self.final_size is not None and self.read_offset == self.final_size)

    # ----------------------------------------------------------------- peer side

    def _check_final(self, end: int, fin: bool) -> None:
        final = self.final_size
        if fin:
            if final is not None and end != final:
                raise RemoteProtocolError("a stream's final size changed", code="EFINALSIZE")
            if end < self.credit.received:
                raise RemoteProtocolError("a stream's final size is below its data",
                                          code="EFINALSIZE")
        elif final is not None and end > final:
            raise RemoteProtocolError("stream data beyond its final size", code="EFINALSIZE")

    def _count(self, end: int) -> None:
        new = end - self.credit.received
        if new > 0:
            self.credit.receive(new, "stream data")
            self.connection.receive(new, "connection data")
            if self.stop_code is not None:
                self.connection.consume(new)  # never to be read: free it at once

    def on_frame(self, frame: StreamFrame) -> bool:
        """Take a STREAM frame; whether it made bytes (or the end) readable."""
        data = frame.data
        size = len(data)
        end = frame.offset + size
        credit, connection = self.credit, self.connection
        if (frame.offset == self.contiguous == credit.received and not frame.fin
                and self.state is RecvState.RECV and self.stop_code is None
                and size >= SMALL_PIECE and end <= credit.granted
                and connection.received + size <= connection.granted):
            # in order, new, not the last, within both limits: the usual case, inline
            credit.received = end
            connection.received += size
            self._ready.append(data)
            self._ready_size += size
            self.contiguous = end
            return True
        self._check_final(end, frame.fin)
        self._count(end)
        if frame.fin and self.final_size is None:
            self.final_size = end
            self.state = next_recv_state(self.state, RecvEvent.RECV_FIN)
        self.state = next_recv_state(self.state, RecvEvent.RECV_DATA)
        if self.state in _ALL_IN or self.state in _RESET or self.stop_code is not None:
            return False
        readable = False
        contiguous = self.contiguous
        if end > contiguous:
            lo, data = frame.offset, frame.data
            if type(data) is not memoryview:
                data = memoryview(data)
            if lo <= contiguous:
                self._push(data[contiguous - lo :], end)
                readable = True
            else:
                gaps = self._held.missing(lo, end)
                connection = self.connection
                connection.pieces += len(gaps)
                if connection.pieces > MAX_PIECES:
                    raise RemoteProtocolError("too many out-of-order pieces of stream data")
                for gap_lo, gap_hi in gaps:
                    insort(self._starts, gap_lo)
                    self._pieces[gap_lo] = data[gap_lo - lo : gap_hi - lo]
                    self._held.add(gap_lo, gap_hi)
        if self.final_size is not None and self.contiguous == self.final_size:
            self.state = next_recv_state(self.state, RecvEvent.ALL_RECEIVED)
            readable = True
        return readable

    def _push(self, data: bytes | memoryview, end: int) -> None:
        """Queue bytes that continue ``contiguous``, then the pieces they reach."""
        self._queue(data)
        self.contiguous = end
        starts, pieces = self._starts, self._pieces
        while starts and starts[0] <= self.contiguous:
            start = starts.pop(0)
            piece = pieces.pop(start)
            self.connection.pieces -= 1
            piece_end = start + len(piece)
            if piece_end > self.contiguous:
                self._queue(piece[self.contiguous - start :])
                self.contiguous = piece_end
        self._held.remove(0, self.contiguous)

    def _queue(self, data: bytes | memoryview) -> None:
        """Make ``data`` readable; small pieces join one buffer, so that a peer sending
        tiny frames costs no more memory than their bytes (and a little)."""
        ready = self._ready
        if len(data) < SMALL_PIECE:
            if ready and type(ready[-1]) is bytearray and len(ready[-1]) < MAX_JOINED:
                ready[-1] += data  # type: ignore[operator]
            else:
                ready.append(bytearray(data))
        else:
            ready.append(data)
        self._ready_size += len(data)

    def on_reset(self, frame: ResetStream) -> bool:
        """The peer abandoned the stream; whether the application should hear of it."""
        self._check_final(frame.final_size, True)
        self._count(frame.final_size)
        if self.state in _ALL_IN or self.state in _RESET:
            return False
        self.final_size = frame.final_size
        self.state = next_recv_state(self.state, RecvEvent.RECV_RESET)
        self.reset_code = frame.error_code
        if self.stop_code is None:
            self.connection.consume(frame.final_size - self.read_offset)
        self._drop()
        return True

    def _drop(self) -> None:
        self.connection.pieces -= len(self._pieces)
        self._ready.clear()
        self._ready_size = 0
        self._pieces.clear()
        self._starts.clear()
        self._held = ByteRanges()

    # ----------------------------------------------------------------- application side

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes (all that is ready if negative); b"" if none is ready."""
        if self.state is RecvState.RESET_RECVD:
            self.state = next_recv_state(self.state, RecvEvent.RESET_READ)
            return b""
        ready = self._ready
        if size < 0 or size >= self._ready_size:
            pieces = list(ready)
            ready.clear()
        else:
            pieces = []
            left = size
            while left:
                piece = ready[0]
                if type(piece) is bytearray:
                    piece = memoryview(piece)  # slices of it without copies
                if len(piece) <= left:
                    pieces.append(ready.popleft())
                    left -= len(piece)
                else:
                    pieces.append(piece[:left])
                    ready[0] = piece[left:]
                    left = 0
        data = pieces[0].tobytes() if len(pieces) == 1 and type(pieces[0]) is memoryview \
            else b"".join(pieces)
        taken = len(data)
        self._ready_size -= taken
        self.read_offset += taken
        if taken:
            self.credit.consume(taken)
            self.connection.consume(taken)
        if self.state is RecvState.DATA_RECVD and self.read_offset == self.final_size:
            self.state = next_recv_state(self.state, RecvEvent.ALL_READ)
        return data

    def stop(self, code: int) -> None:
        """Read no more: drop what is held and ask the peer to stop (STOP_SENDING)."""
        if self.stop_code is not None or self.state in _RESET or self.at_eof:
            return
        self.stop_code = code
        self._stop_pending = True
        self.connection.consume(self.credit.received - self.read_offset)
        self._drop()

    # ----------------------------------------------------------------- the flow

    @property
    def wants_send(self) -> bool:
        return self._stop_pending or (self.credit.pending and self.state is RecvState.RECV)

    def fill(self, budget: int) -> list[StreamsFrame]:
        out: list[StreamsFrame] = []
        if self._stop_pending and self.state not in _RESET:
            frame: StreamsFrame = StopSending(self.stream_id, self.stop_code or 0)
            if encoded_size(frame) <= budget:
                out.append(frame)
                budget -= encoded_size(frame)
                self._stop_pending = False
        if self.credit.pending and self.state is RecvState.RECV and self.stop_code is None:
            frame = MaxStreamData(self.stream_id, self.credit.granted)
            if encoded_size(frame) <= budget:
                out.append(frame)
                self.credit.pending = False
        return out

    def on_acked(self, frame: StreamsFrame) -> None:
        if type(frame) is StopSending:
            self.stop_acked = True

    def on_lost(self, frame: StreamsFrame) -> None:
        if type(frame) is StopSending:
            self._stop_pending = self.state not in _RESET and not self.at_eof
        elif type(frame) is MaxStreamData and frame.limit == self.credit.granted:
            self.credit.pending = self.state is RecvState.RECV
