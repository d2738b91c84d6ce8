"""The frames of streams and datagrams, and their codec.

Theory of operation
-------------------
A connection carries many bidirectional byte streams, each reliable and ordered, and
unreliable datagrams, as QUIC does (RFC 9000 section 19, RFC 9221). Integers are QUIC
varints; ``id`` is a stream id, ``limit`` an absolute byte offset or count::

    STREAM              40 | id | offset | length | data          (41: the same, with FIN)
    RESET_STREAM        42 | id | error code | final size
    STOP_SENDING        43 | id | error code
    MAX_STREAM_DATA     44 | id | limit      the peer may send stream bytes below limit
    MAX_DATA            45 | limit           the same, for all streams' bytes together
    MAX_STREAMS         46 | limit           the peer may open streams numbered below limit
    DATA_BLOCKED        47 | limit           the sender has data the connection limit holds
    STREAM_DATA_BLOCKED 48 | id | limit      the same, for one stream's limit
    STREAMS_BLOCKED     49 | limit           the sender would open a stream beyond limit
    DATAGRAM            4a | channel | length | data   (never retransmitted)

The decoders take the bytes after the type byte, as ``shoal.core.wire.DECODERS`` does,
and raise only ``RemoteProtocolError``. A STREAM frame's ``data`` is a slice of the
payload it was parsed from (a copy of bytes, a view of a memoryview): no further copy.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from shoal.core.wire import MAX_VARINT, FrameType, decode_varint, encode_varint
from shoal.errors import RemoteProtocolError

MAX_STREAM_OFFSET = MAX_VARINT
"""No stream carries a byte at or beyond this offset (RFC 9000 section 19.8)."""
MAX_STREAM_COUNT = 1 << 60
"""The most streams either side may ever open on one connection (RFC 9000 section 19.11)."""
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")


@dataclass(slots=True)
class StreamFrame:
    """Bytes ``offset .. offset+len(data)`` of stream ``stream_id``; ``fin``: the last.

    Not frozen, unlike the other frames: two are made per packet of stream data (one
    sent, one received), and a frozen dataclass takes twice as long to make. Nothing
    changes one once made."""

    stream_id: int
    offset: int
    data: bytes | memoryview
    fin: bool = False
    header: bytes = field(default=b"", compare=False, repr=False)
    """The encoded bytes before ``data``, when the sender made them already."""

    @property
    def end(self) -> int:
        return self.offset + len(self.data)


@dataclass(frozen=True, slots=True)
class ResetStream:
    """The sender abandons stream ``stream_id``, whose bytes end at ``final_size``."""

    stream_id: int
    error_code: int
    final_size: int


@dataclass(frozen=True, slots=True)
class StopSending:
    """The receiver will not read stream ``stream_id``: the sender should reset it."""

    stream_id: int
    error_code: int


@dataclass(frozen=True, slots=True)
class MaxStreamData:
    stream_id: int
    limit: int


@dataclass(frozen=True, slots=True)
class MaxData:
    limit: int


@dataclass(frozen=True, slots=True)
class MaxStreams:
    limit: int


@dataclass(frozen=True, slots=True)
class DataBlocked:
    limit: int


@dataclass(frozen=True, slots=True)
class StreamDataBlocked:
    stream_id: int
    limit: int


@dataclass(frozen=True, slots=True)
class StreamsBlocked:
    limit: int


@dataclass(frozen=True, slots=True)
class Datagram:
    """An unreliable datagram on channel ``channel`` (RFC 9221's DATAGRAM frame)."""

    channel: int
    data: bytes | memoryview


StreamsFrame = (
    StreamFrame | ResetStream | StopSending | MaxStreamData | MaxData | MaxStreams
    | DataBlocked | StreamDataBlocked | StreamsBlocked | Datagram
)

_STREAM = bytes((FrameType.STREAM,))
_STREAM_FIN = bytes((FrameType.STREAM_FIN,))


def stream_header(stream_id: int, offset: int, size: int, fin: bool) -> bytes:
    """The bytes of a STREAM frame before its data."""
    ev = encode_varint
    return b"".join((_STREAM_FIN if fin else _STREAM, ev(stream_id), ev(offset), ev(size)))


def varint_size(value: int) -> int:
    """How many bytes ``encode_varint(value)`` takes."""
    return 1 if value < 0x40 else 2 if value < 0x4000 else 4 if value < 0x40000000 else 8


def stream_overhead(stream_id: int, offset: int, size: int) -> int:
    """The size of a STREAM frame's header."""
    return 1 + varint_size(stream_id) + varint_size(offset) + varint_size(size)


def encode(frame: StreamsFrame) -> bytes:
    """The wire bytes of one frame (a STREAM or DATAGRAM frame's data is copied in)."""
    ev = encode_varint
    match frame:
        case StreamFrame(stream_id, offset, data, fin, header):
            return (header or stream_header(stream_id, offset, len(data), fin)) + data
        case ResetStream(stream_id, code, final_size):
            return b"\x42" + ev(stream_id) + ev(code) + ev(final_size)
        case StopSending(stream_id, code):
            return b"\x43" + ev(stream_id) + ev(code)
        case MaxStreamData(stream_id, limit):
            return b"\x44" + ev(stream_id) + ev(limit)
        case MaxData(limit):
            return b"\x45" + ev(limit)
        case MaxStreams(limit):
            return b"\x46" + ev(limit)
        case DataBlocked(limit):
            return b"\x47" + ev(limit)
        case StreamDataBlocked(stream_id, limit):
            return b"\x48" + ev(stream_id) + ev(limit)
        case StreamsBlocked(limit):
            return b"\x49" + ev(limit)
        case Datagram(channel, data):
            return b"\x4a" + ev(channel) + ev(len(data)) + data
    raise TypeError(f"not a stream frame: {frame!r}")


def encoded_size(frame: StreamsFrame) -> int:
    """``len(encode(frame))`` without building it."""
    if type(frame) is StreamFrame:
        size = len(frame.data)
        if frame.header:
            return len(frame.header) + size
        return stream_overhead(frame.stream_id, frame.offset, size) + size
    return len(encode(frame))


# ----------------------------------------------------------------------------- decoders


def _decode_stream(fin: bool) -> Callable[[bytes, int], tuple[StreamFrame, int]]:
    def decode(buf: bytes, pos: int) -> tuple[StreamFrame, int]:
        # A 1-byte id, a 4-byte offset and a 2-byte length, the usual header, are read
        # here without a call each; anything else (or a short buffer) by decode_varint.
        if (len(buf) >= pos + 7 and buf[pos] < 0x40 and buf[pos + 1] >> 6 == 2
                and buf[pos + 5] >> 6 == 1):
            stream_id = buf[pos]
            offset = _U32.unpack_from(buf, pos + 1)[0] & 0x3FFFFFFF
            size = _U16.unpack_from(buf, pos + 5)[0] & 0x3FFF
            pos += 7
        else:
            stream_id, pos = decode_varint(buf, pos)
            offset, pos = decode_varint(buf, pos)
            size, pos = decode_varint(buf, pos)
        end = pos + size
        if end > len(buf):
            raise RemoteProtocolError("truncated STREAM frame")
        if offset + size > MAX_STREAM_OFFSET:
            raise RemoteProtocolError("STREAM frame beyond the largest stream offset")
        return StreamFrame(stream_id, offset, buf[pos:end], fin), end

    return decode


def _decode_reset(buf: bytes, pos: int) -> tuple[ResetStream, int]:
    stream_id, pos = decode_varint(buf, pos)
    code, pos = decode_varint(buf, pos)
    final_size, pos = decode_varint(buf, pos)
    return ResetStream(stream_id, code, final_size), pos


def _decode_pair(kind: type[StopSending] | type[MaxStreamData] | type[StreamDataBlocked],
                 ) -> Callable[[bytes, int], tuple[StreamsFrame, int]]:
    def decode(buf: bytes, pos: int) -> tuple[StreamsFrame, int]:
        first, pos = decode_varint(buf, pos)
        second, pos = decode_varint(buf, pos)
        return kind(first, second), pos

    return decode


def _decode_limit(kind: type[MaxData] | type[DataBlocked]) -> Callable[
        [bytes, int], tuple[StreamsFrame, int]]:
    def decode(buf: bytes, pos: int) -> tuple[StreamsFrame, int]:
        limit, pos = decode_varint(buf, pos)
        return kind(limit), pos

    return decode


def _decode_count(kind: type[MaxStreams] | type[StreamsBlocked]) -> Callable[
        [bytes, int], tuple[StreamsFrame, int]]:
    def decode(buf: bytes, pos: int) -> tuple[StreamsFrame, int]:
        limit, pos = decode_varint(buf, pos)
        if limit > MAX_STREAM_COUNT:
            raise RemoteProtocolError("stream count beyond the largest allowed")
        return kind(limit), pos

    return decode


def _decode_datagram(buf: bytes, pos: int) -> tuple[Datagram, int]:
    channel, pos = decode_varint(buf, pos)
    size, pos = decode_varint(buf, pos)
    end = pos + size
    if end > len(buf):
        raise RemoteProtocolError("truncated DATAGRAM frame")
    return Datagram(channel, buf[pos:end]), end


DECODERS: dict[int, Callable[[bytes, int], tuple[StreamsFrame, int]]] = {
    FrameType.STREAM: _decode_stream(False),
    FrameType.STREAM_FIN: _decode_stream(True),
    FrameType.RESET_STREAM: _decode_reset,
    FrameType.STOP_SENDING: _decode_pair(StopSending),
    FrameType.MAX_STREAM_DATA: _decode_pair(MaxStreamData),
    FrameType.MAX_DATA: _decode_limit(MaxData),
    FrameType.MAX_STREAMS: _decode_count(MaxStreams),
    FrameType.DATA_BLOCKED: _decode_limit(DataBlocked),
    FrameType.STREAM_DATA_BLOCKED: _decode_pair(StreamDataBlocked),
    FrameType.STREAMS_BLOCKED: _decode_count(StreamsBlocked),
    FrameType.DATAGRAM: _decode_datagram,
}
"""Frame type -> decoder of the fields after the type byte (to merge into the wire's)."""

FRAME_CLASSES: dict[int, type] = {
    FrameType.STREAM: StreamFrame, FrameType.STREAM_FIN: StreamFrame,
    FrameType.RESET_STREAM: ResetStream, FrameType.STOP_SENDING: StopSending,
    FrameType.MAX_STREAM_DATA: MaxStreamData, FrameType.MAX_DATA: MaxData,
    FrameType.MAX_STREAMS: MaxStreams, FrameType.DATA_BLOCKED: DataBlocked,
    FrameType.STREAM_DATA_BLOCKED: StreamDataBlocked,
    FrameType.STREAMS_BLOCKED: StreamsBlocked, FrameType.DATAGRAM: Datagram,
}
"""Frame type -> the class its decoder yields."""


def decode(payload: bytes, pos: int = 0) -> list[StreamsFrame]:
    """Every frame in ``payload`` from ``pos`` on (all must be stream or datagram frames)."""
    out: list[StreamsFrame] = []
    end = len(payload)
    while pos < end:
        decoder = DECODERS.get(payload[pos])
        if decoder is None:
            raise RemoteProtocolError(f"not a stream frame: 0x{payload[pos]:02x}")
        frame, pos = decoder(payload, pos + 1)
        out.append(frame)
    return out
