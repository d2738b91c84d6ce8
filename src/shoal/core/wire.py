"""The Shoal wire format: datagram headers, frames and their codecs.

Theory of operation
-------------------
Every Shoal datagram starts with a one-byte kind. Kinds 0x00-0x3f are left to STUN
(RFC 7983 demultiplexing), so Shoal's start at 0xd0::

    INIT    d1 | version u8 | sender_sid[8] | len u16 | noise msg 1 | cookie_len u8 | cookie
                | zero padding to >= 1200 bytes
    RESP    d2 | version u8 | receiver_sid[8] | sender_sid[8] | noise msg 2
    FINAL   d3 | receiver_sid[8] | sender_sid[8] | len u16 | noise msg 1 | noise msg 3
    DATA    d4 | receiver_sid[8] | packet_number u64 | AEAD(frames)   (AD = the 17 header bytes)
    PUNCH   d5 | token[8]     (hole punching: opens NAT mappings, carries no data)
    COOKIE  d6 | receiver_sid[8] | cookie[16]   (a busy responder: send the INIT again with it)
    VERSION d7 | receiver_sid[8] | count u8 | version u8 *   (the versions the responder speaks)

A responder keeps no state for an INIT: its ephemeral key and session id are derived from
a rotating secret, the INIT and its source address, and the FINAL repeats noise message 1
so that the responder can rebuild the handshake once the initiator has proven its address.

An INIT that travels inside a relay (see ``RelaySend``) is not padded: it reaches the
receiver through an authenticated session, so it cannot be used for amplification.

Session ids are random and chosen by the receiver of the packets that carry them, so a
connection survives a change of address (NAT rebinding, roaming, relay to direct).
A DATA packet's payload is a sequence of typed frames (see ``FrameType``). Frame types
0xc0-0xff are extensions: ``type u8 | length varint | body``; a node skips those it does
not know. Any other unknown type is a protocol error.

Integers inside frames are QUIC variable-length integers (RFC 9000 section 16).
Parsers here raise only ``RemoteProtocolError``; anything else is a bug.
"""

from __future__ import annotations

import functools
import ipaddress
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import IntEnum
from typing import NamedTuple

from shoal.errors import RemoteProtocolError

PROTOCOL_VERSION = 2
SUPPORTED_VERSIONS = (2,)
"""Every protocol version this implementation speaks, preferred first."""
MIN_INIT_SIZE = 1200
MAX_DATAGRAM_SIZE = 1232  # fits the IPv6 minimum MTU of 1280 after IP and UDP headers
SID_SIZE = 8
DATA_HEADER_SIZE = 1 + SID_SIZE + 8
AEAD_TAG_SIZE = 16
MAX_DATA_PAYLOAD = MAX_DATAGRAM_SIZE - DATA_HEADER_SIZE - AEAD_TAG_SIZE
RELAY_FRAME_OVERHEAD = 1 + 32 + 2
MAX_RELAYED_DATAGRAM = MAX_DATA_PAYLOAD - RELAY_FRAME_OVERHEAD
"""The largest Shoal datagram that fits in one relay frame of one DATA packet."""
PUNCH_SIZE = 9

Address = tuple[str, int]


class RelayPath(NamedTuple):
    """Where a relayed session's packets go: through node ``relay`` to node ``peer``.

    It stands in for an ``Address`` wherever the core names a packet's destination or
    source; drivers never see one, as the endpoint wraps such packets in relay frames.
    """

    relay: bytes
    peer: bytes


def path_kind(address: Address) -> str:
    """``"relay"`` for a path through a relay, else ``"direct"`` (as events name paths)."""
    return "relay" if isinstance(address, RelayPath) else "direct"


class PacketKind(IntEnum):
    INIT = 0xD1
    RESP = 0xD2
    FINAL = 0xD3
    DATA = 0xD4
    PUNCH = 0xD5
    COOKIE = 0xD6
    VERSION = 0xD7
    INIT_IK = 0xD8
    FINAL_IK = 0xD9


class FrameType(IntEnum):
    PING = 0x01
    ACK = 0x02
    CLOSE = 0x03
    HANDSHAKE_DONE = 0x04
    PATH_CHALLENGE = 0x05
    PATH_RESPONSE = 0x06
    MESSAGE = 0x10
    CHANNEL = 0x11
    CHANNEL_ACCEPTED = 0x12
    CHANNEL_REFUSED = 0x13
    CHANNEL_WINDOW = 0x14
    MESSAGE_WINDOW = 0x15
    MESSAGES_BLOCKED = 0x16
    OBSERVED_ADDRESS = 0x20
    REGISTER = 0x21
    INTRO_REQUEST = 0x22
    INTRO = 0x23
    INTRO_FAILED = 0x24
    RELAY_SEND = 0x30
    RELAY_RECV = 0x31
    # Streams and datagrams (their codec is in shoal.core.streams.frames).
    STREAM = 0x40
    STREAM_FIN = 0x41
    RESET_STREAM = 0x42
    STOP_SENDING = 0x43
    MAX_STREAM_DATA = 0x44
    MAX_DATA = 0x45
    MAX_STREAMS = 0x46
    DATA_BLOCKED = 0x47
    STREAM_DATA_BLOCKED = 0x48
    STREAMS_BLOCKED = 0x49
    DATAGRAM = 0x4A


# ----------------------------------------------------------------------------- varints

_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_U64 = struct.Struct("!Q")
MAX_VARINT = 2**62 - 1


def encode_varint(value: int) -> bytes:
    """Encode ``value`` (0 <= value < 2**62) in 1, 2, 4 or 8 bytes."""
    if value < 0x40:
        return bytes((value,))
    if value < 0x4000:
        return _U16.pack(value | 0x4000)
    if value < 0x40000000:
        return _U32.pack(value | 0x80000000)
    if value <= MAX_VARINT:
        return _U64.pack(value | 0xC000000000000000)
    raise ValueError("varint out of range")


def decode_varint(buf: bytes, pos: int) -> tuple[int, int]:
    """Decode a varint at ``pos``; returns (value, next position)."""
    try:
        first = buf[pos]
    except IndexError:
        raise RemoteProtocolError("truncated varint") from None
    prefix = first >> 6
    if prefix == 0:
        return first, pos + 1
    size = 1 << prefix
    end = pos + size
    if end > len(buf):
        raise RemoteProtocolError("truncated varint")
    value = int.from_bytes(buf[pos:end], "big") & ((1 << (8 * size - 2)) - 1)
    return value, end


def _take(buf: bytes, pos: int, size: int) -> tuple[bytes, int]:
    end = pos + size
    if size < 0 or end > len(buf):
        raise RemoteProtocolError("truncated field")
    return bytes(buf[pos:end]), end


def _take_blob(buf: bytes, pos: int) -> tuple[bytes, int]:
    size, pos = decode_varint(buf, pos)
    return _take(buf, pos, size)


# ----------------------------------------------------------------------------- addresses


def encode_address(address: Address) -> bytes:
    """``family(4|6) | ip bytes | port u16``."""
    host, port = address
    return _packed_host(host) + _U16.pack(port)


@functools.lru_cache(maxsize=4096)
def _packed_host(host: str) -> bytes:
    """``family | ip bytes`` of ``host`` (parsing an address is dear, and peers are few)."""
    ip = ipaddress.ip_address(host)
    return bytes((ip.version,)) + ip.packed


@functools.lru_cache(maxsize=4096)
def _host_text(raw: bytes) -> str:
    return str(ipaddress.ip_address(raw))


def decode_address(buf: bytes, pos: int) -> tuple[Address, int]:
    try:
        family = buf[pos]
    except IndexError:
        raise RemoteProtocolError("truncated address") from None
    if family == 4:
        raw, pos = _take(buf, pos + 1, 4)
    elif family == 6:
        raw, pos = _take(buf, pos + 1, 16)
    else:
        raise RemoteProtocolError(f"unknown address family {family}")
    port_raw, pos = _take(buf, pos, 2)
    return (_host_text(raw), _U16.unpack(port_raw)[0]), pos


def _encode_addresses(addresses: tuple[Address, ...]) -> bytes:
    return encode_varint(len(addresses)) + b"".join(encode_address(a) for a in addresses)


def _decode_addresses(buf: bytes, pos: int, limit: int = 16) -> tuple[tuple[Address, ...], int]:
    count, pos = decode_varint(buf, pos)
    if count > limit:
        raise RemoteProtocolError("too many addresses")
    out = []
    for _ in range(count):
        address, pos = decode_address(buf, pos)
        out.append(address)
    return tuple(out), pos


# ----------------------------------------------------------------------------- frames


@dataclass(frozen=True, slots=True)
class Ping:
    pass


@dataclass(frozen=True, slots=True)
class Ack:
    """Acknowledged packet numbers as inclusive ranges, highest first."""

    ranges: tuple[tuple[int, int], ...]
    delay_us: int = 0


@dataclass(frozen=True, slots=True)
class Close:
    code: int
    reason: str = ""


@dataclass(frozen=True, slots=True)
class HandshakeDone:
    pass


@dataclass(frozen=True, slots=True)
class PathChallenge:
    """Asks the peer to echo ``data`` on the path this frame arrived by."""

    data: bytes


@dataclass(frozen=True, slots=True)
class PathResponse:
    """Echoes a ``PathChallenge``: the path it answers works both ways."""

    data: bytes


@dataclass(frozen=True, slots=True)
class MessageFragment:
    """``data`` is bytes ``offset .. offset+len(data)`` of message ``message_id`` of
    channel ``channel`` (0: the default channel)."""

    channel: int
    message_id: int
    total_length: int
    offset: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Channel:
    """Binds channel number ``number`` (chosen by the sender) to the name ``name``."""

    number: int
    name: str


@dataclass(frozen=True, slots=True)
class ChannelAccepted:
    number: int


@dataclass(frozen=True, slots=True)
class ChannelRefused:
    """The receiver does not serve the channel the sender bound to ``number``."""

    number: int


@dataclass(frozen=True, slots=True)
class ChannelWindow:
    """The sender may begin messages on its channel ``number`` while the bytes of the
    messages it began there before stay below ``limit`` (in all, since the channel began)."""

    number: int
    limit: int


@dataclass(frozen=True, slots=True)
class MessageWindow:
    """As ``ChannelWindow``, for the messages of every channel of the connection together."""

    limit: int


@dataclass(frozen=True, slots=True)
class MessagesBlocked:
    """The sender has a message for channel ``number`` that its credit (the channel's or
    the connection's) does not allow to begin."""

    number: int


@dataclass(frozen=True, slots=True)
class ObservedAddress:
    """The address the sender sees this connection's packets come from."""

    address: Address


@dataclass(frozen=True, slots=True)
class Register:
    """Ask an introducer to list this node; ``local`` are its LAN addresses and ``nat``
    its NAT kind as ``NatType.code`` (0 while unknown)."""

    local: tuple[Address, ...]
    nat: int = 0


@dataclass(frozen=True, slots=True)
class IntroRequest:
    request_id: int
    target: bytes


@dataclass(frozen=True, slots=True)
class Intro:
    """Peer ``peer`` can be reached at ``addresses``; start sending to it now.

    ``nat`` is the peer's NAT kind (``NatType.code``) and ``token`` a secret both sides
    of this introduction share, carried by their PUNCH packets. ``static`` is the peer's
    X25519 static key and the peer's signature over it, as its handshake with the
    introducer proved them (96 bytes, or empty): with it, the first INIT can carry the
    first message (IK).
    """

    request_id: int
    peer: bytes
    addresses: tuple[Address, ...]
    nat: int = 0
    token: bytes = bytes(8)
    static: bytes = b""


@dataclass(frozen=True, slots=True)
class IntroFailed:
    request_id: int
    target: bytes


@dataclass(frozen=True, slots=True)
class RelaySend:
    """Ask the receiving node to pass ``packet`` on to ``peer`` (a relayed Shoal datagram)."""

    peer: bytes
    packet: bytes


@dataclass(frozen=True, slots=True)
class RelayRecv:
    """``packet`` was relayed by the sending node from ``peer``."""

    peer: bytes
    packet: bytes


@dataclass(frozen=True, slots=True)
class Extension:
    """A frame in the extension range (0xc0-0xff): ``type u8 | length varint | body``."""

    type: int
    body: bytes


Frame = (
    Ping | Ack | Close | HandshakeDone | PathChallenge | PathResponse | MessageFragment
    | Channel | ChannelAccepted | ChannelRefused | ChannelWindow | MessageWindow
    | MessagesBlocked
    | ObservedAddress | Register | IntroRequest
    | Intro | IntroFailed | RelaySend | RelayRecv | Extension
)

EXTENSION_FIRST = 0xC0
MAX_CHANNEL_NAME = 255
_PING = bytes((FrameType.PING,))
_HANDSHAKE_DONE = bytes((FrameType.HANDSHAKE_DONE,))


def encode_frame(frame: Frame) -> bytes:
    """The wire bytes of one frame."""
    ev = encode_varint
    match frame:
        case MessageFragment(channel, message_id, total, offset, data):
            return b"".join((b"\x10", ev(channel), ev(message_id), ev(total), ev(offset),
                             ev(len(data)), data))
        case Ack(ranges, delay):
            return encode_ack(ranges, delay)
        case Ping():
            return _PING
        case HandshakeDone():
            return _HANDSHAKE_DONE
        case Close(code, reason):
            raw = reason.encode()[:512]
            return b"\x03" + ev(code) + ev(len(raw)) + raw
        case PathChallenge(data):
            return b"\x05" + data
        case PathResponse(data):
            return b"\x06" + data
        case Channel(number, name):
            raw = name.encode()
            return b"\x11" + ev(number) + ev(len(raw)) + raw
        case ChannelAccepted(number):
            return b"\x12" + ev(number)
        case ChannelRefused(number):
            return b"\x13" + ev(number)
        case ChannelWindow(number, limit):
            return b"\x14" + ev(number) + ev(limit)
        case MessageWindow(limit):
            return b"\x15" + ev(limit)
        case MessagesBlocked(number):
            return b"\x16" + ev(number)
        case ObservedAddress(address):
            return b"\x20" + encode_address(address)
        case Register(local, nat):
            return b"\x21" + _encode_addresses(local) + ev(nat)
        case IntroRequest(request_id, target):
            return b"\x22" + ev(request_id) + target
        case Intro(request_id, peer, addresses, nat, token, static):
            return b"".join((b"\x23", ev(request_id), peer, _encode_addresses(addresses),
                             ev(nat), token, ev(len(static)), static))
        case IntroFailed(request_id, target):
            return b"\x24" + ev(request_id) + target
        case RelaySend(peer, packet):
            return b"\x30" + peer + ev(len(packet)) + packet
        case RelayRecv(peer, packet):
            return b"\x31" + peer + ev(len(packet)) + packet
        case Extension(kind, body):
            if not EXTENSION_FIRST <= kind <= 0xFF:
                raise ValueError("extension frame types are 0xc0-0xff")
            return bytes((kind,)) + ev(len(body)) + body
    raise TypeError(f"not a frame: {frame!r}")


def encode_ack(ranges: tuple[tuple[int, int], ...] | list[tuple[int, int]], delay_us: int) -> bytes:
    """ACK: largest | delay | extra range count | first range length | (gap, length)*."""
    ev = encode_varint
    largest_lo, largest = ranges[0][0], ranges[0][1]
    parts = [b"\x02", ev(largest), ev(delay_us), ev(len(ranges) - 1), ev(largest - largest_lo)]
    previous_lo = largest_lo
    for lo, hi in ranges[1:]:
        parts.append(ev(previous_lo - hi - 2))
        parts.append(ev(hi - lo))
        previous_lo = lo
    return b"".join(parts)


MAX_ACK_RANGES = 64


def _decode_ack(buf: bytes, pos: int) -> tuple[Ack, int]:
    largest, pos = decode_varint(buf, pos)
    delay, pos = decode_varint(buf, pos)
    extra, pos = decode_varint(buf, pos)
    if extra >= MAX_ACK_RANGES:
        raise RemoteProtocolError("too many ACK ranges")
    length, pos = decode_varint(buf, pos)
    hi, lo = largest, largest - length
    if lo < 0:
        raise RemoteProtocolError("ACK range below zero")
    ranges = [(lo, hi)]
    for _ in range(extra):
        gap, pos = decode_varint(buf, pos)
        length, pos = decode_varint(buf, pos)
        hi = lo - gap - 2
        lo = hi - length
        if lo < 0:
            raise RemoteProtocolError("ACK range below zero")
        ranges.append((lo, hi))
    return Ack(tuple(ranges), delay), pos


def _decode_fragment(buf: bytes, pos: int) -> tuple[MessageFragment, int]:
    dv = decode_varint
    channel, pos = dv(buf, pos)
    message_id, pos = dv(buf, pos)
    total, pos = dv(buf, pos)
    offset, pos = dv(buf, pos)
    data, pos = take_blob_at(buf, pos)
    if offset + len(data) > total:
        raise RemoteProtocolError("message fragment beyond message length")
    if not data and total:
        raise RemoteProtocolError("empty fragment of a non-empty message")
    return MessageFragment(channel, message_id, total, offset, data), pos


def _decode_close(buf: bytes, pos: int) -> tuple[Close, int]:
    code, pos = decode_varint(buf, pos)
    raw, pos = _take_blob(buf, pos)
    return Close(code, raw.decode("utf-8", "replace")), pos


def _decode_path(kind: type[PathChallenge] | type[PathResponse]) -> FrameDecoder:
    def decode(buf: bytes, pos: int) -> tuple[Frame, int]:
        data, pos = _take(buf, pos, 8)
        return kind(data), pos

    return decode


def _decode_channel(buf: bytes, pos: int) -> tuple[Channel, int]:
    number, pos = decode_varint(buf, pos)
    raw, pos = _take_blob(buf, pos)
    if len(raw) > MAX_CHANNEL_NAME:
        raise RemoteProtocolError("channel name too long")
    try:
        return Channel(number, raw.decode()), pos
    except UnicodeDecodeError:
        raise RemoteProtocolError("channel name is not UTF-8") from None


def _decode_number(
    kind: type[ChannelAccepted] | type[ChannelRefused] | type[MessagesBlocked],
) -> FrameDecoder:
    def decode(buf: bytes, pos: int) -> tuple[Frame, int]:
        number, pos = decode_varint(buf, pos)
        return kind(number), pos

    return decode


def _decode_channel_window(buf: bytes, pos: int) -> tuple[Frame, int]:
    number, pos = decode_varint(buf, pos)
    limit, pos = decode_varint(buf, pos)
    return ChannelWindow(number, limit), pos


def _decode_message_window(buf: bytes, pos: int) -> tuple[Frame, int]:
    limit, pos = decode_varint(buf, pos)
    return MessageWindow(limit), pos


def _decode_register(buf: bytes, pos: int) -> tuple[Register, int]:
    local, pos = _decode_addresses(buf, pos)
    nat, pos = decode_varint(buf, pos)
    return Register(local, nat), pos


def _decode_request(kind: type[IntroRequest] | type[IntroFailed]) -> FrameDecoder:
    def decode(buf: bytes, pos: int) -> tuple[Frame, int]:
        request_id, pos = decode_varint(buf, pos)
        target, pos = _take(buf, pos, 32)
        return kind(request_id, target), pos

    return decode


def _decode_intro(buf: bytes, pos: int) -> tuple[Intro, int]:
    request_id, pos = decode_varint(buf, pos)
    peer, pos = _take(buf, pos, 32)
    addresses, pos = _decode_addresses(buf, pos)
    nat, pos = decode_varint(buf, pos)
    token, pos = _take(buf, pos, 8)
    static, pos = take_blob_at(buf, pos)
    if len(static) not in (0, STATIC_ENDORSEMENT_SIZE):
        raise RemoteProtocolError("INTRO static key must be 96 bytes (key and signature)")
    return Intro(request_id, peer, addresses, nat, token, static), pos


def _decode_relay(kind: type[RelaySend] | type[RelayRecv]) -> FrameDecoder:
    def decode(buf: bytes, pos: int) -> tuple[Frame, int]:
        peer, pos = _take(buf, pos, 32)
        packet, pos = take_blob_at(buf, pos)
        if not packet or len(packet) > MAX_RELAYED_DATAGRAM:
            raise RemoteProtocolError("relayed packet empty or too large")
        return kind(peer, packet), pos

    return decode


def _decode_observed(buf: bytes, pos: int) -> tuple[Frame, int]:
    address, pos = decode_address(buf, pos)
    return ObservedAddress(address), pos


FrameDecoder = Callable[[bytes, int], tuple[Frame, int]]

DECODERS: dict[int, FrameDecoder] = {
    FrameType.PING: lambda buf, pos: (Ping(), pos),
    FrameType.ACK: _decode_ack,
    FrameType.CLOSE: _decode_close,
    FrameType.HANDSHAKE_DONE: lambda buf, pos: (HandshakeDone(), pos),
    FrameType.PATH_CHALLENGE: _decode_path(PathChallenge),
    FrameType.PATH_RESPONSE: _decode_path(PathResponse),
    FrameType.MESSAGE: _decode_fragment,
    FrameType.CHANNEL: _decode_channel,
    FrameType.CHANNEL_ACCEPTED: _decode_number(ChannelAccepted),
    FrameType.CHANNEL_REFUSED: _decode_number(ChannelRefused),
    FrameType.CHANNEL_WINDOW: _decode_channel_window,
    FrameType.MESSAGE_WINDOW: _decode_message_window,
    FrameType.MESSAGES_BLOCKED: _decode_number(MessagesBlocked),
    FrameType.OBSERVED_ADDRESS: _decode_observed,
    FrameType.REGISTER: _decode_register,
    FrameType.INTRO_REQUEST: _decode_request(IntroRequest),
    FrameType.INTRO: _decode_intro,
    FrameType.INTRO_FAILED: _decode_request(IntroFailed),
    FrameType.RELAY_SEND: _decode_relay(RelaySend),
    FrameType.RELAY_RECV: _decode_relay(RelayRecv),
}
"""Frame type -> decoder of the fields after the type byte."""


def decode_frames(payload: bytes, pos: int = 0) -> Iterator[Frame]:
    """Yield the frames in a decrypted DATA payload, from byte ``pos`` on."""
    end = len(payload)
    decoders = DECODERS
    while pos < end:
        kind = payload[pos]
        decoder = decoders.get(kind)
        if decoder is not None:
            frame, pos = decoder(payload, pos + 1)
            yield frame
        elif kind >= EXTENSION_FIRST:
            body, pos = take_blob_at(payload, pos + 1)
            yield Extension(kind, bytes(body))
        else:
            raise RemoteProtocolError(f"unknown frame type 0x{kind:02x}")


def take_blob_at(buf: bytes, pos: int) -> tuple[bytes, int]:
    """A varint length at ``pos`` and that many bytes after it; the position past them."""
    size, pos = decode_varint(buf, pos)
    end = pos + size
    if end > len(buf):
        raise RemoteProtocolError("truncated field")
    return buf[pos:end], end


# ----------------------------------------------------------------------------- packets

INIT_HEADER = struct.Struct("!BB8s")
RESP_HEADER = struct.Struct("!BB8s8s")
FINAL_HEADER = struct.Struct("!B8s8s")
DATA_HEADER = struct.Struct("!B8sQ")
COOKIE_SIZE = 16
COOKIE_PACKET_SIZE = 1 + SID_SIZE + COOKIE_SIZE
MAX_NOISE_MESSAGE = 1200
STATIC_ENDORSEMENT_SIZE = 32 + 64
"""An X25519 static key and its owner's Ed25519 signature over it (as in a proof)."""


class Init(NamedTuple):
    version: int
    sender_sid: bytes
    noise_message: bytes
    cookie: bytes


def encode_init(sender_sid: bytes, noise_message: bytes, *, cookie: bytes = b"",
                pad: bool = True, version: int = PROTOCOL_VERSION,
                kind: PacketKind = PacketKind.INIT) -> bytes:
    """An INIT (or INIT_IK), padded to ``MIN_INIT_SIZE`` unless it travels through a
    relay."""
    head = INIT_HEADER.pack(kind, version, sender_sid)
    body = b"".join((head, _U16.pack(len(noise_message)), noise_message,
                     bytes((len(cookie),)), cookie))
    return body.ljust(MIN_INIT_SIZE, b"\x00") if pad else body


def decode_init(datagram: bytes, *, padded: bool = True) -> Init:
    if len(datagram) < INIT_HEADER.size + 2 or (padded and len(datagram) < MIN_INIT_SIZE):
        raise RemoteProtocolError("INIT shorter than the anti-amplification minimum")
    _, version, sid = INIT_HEADER.unpack_from(datagram)
    (size,) = _U16.unpack_from(datagram, INIT_HEADER.size)
    start = INIT_HEADER.size + 2
    if size > MAX_NOISE_MESSAGE or start + size + 1 > len(datagram):
        raise RemoteProtocolError("truncated INIT")
    message = bytes(datagram[start : start + size])
    cookie_size = datagram[start + size]
    cookie, _ = _take(datagram, start + size + 1, cookie_size)
    return Init(version, sid, message, cookie)


def encode_resp(receiver_sid: bytes, sender_sid: bytes, noise_message: bytes,
                version: int = PROTOCOL_VERSION) -> bytes:
    head = RESP_HEADER.pack(PacketKind.RESP, version, receiver_sid, sender_sid)
    return head + noise_message


def decode_resp(datagram: bytes) -> tuple[int, bytes, bytes, bytes]:
    """(version, receiver_sid, sender_sid, noise message)."""
    if len(datagram) < RESP_HEADER.size:
        raise RemoteProtocolError("truncated RESP")
    _, version, receiver, sender = RESP_HEADER.unpack_from(datagram)
    return version, receiver, sender, bytes(datagram[RESP_HEADER.size :])


def encode_final(receiver_sid: bytes, sender_sid: bytes, init_message: bytes,
                 noise_message: bytes, kind: PacketKind = PacketKind.FINAL) -> bytes:
    """A FINAL (message 1 repeated, then message 3), or a FINAL_IK (message 1 only)."""
    head = FINAL_HEADER.pack(kind, receiver_sid, sender_sid)
    return b"".join((head, _U16.pack(len(init_message)), init_message, noise_message))


def decode_final(datagram: bytes) -> tuple[bytes, bytes, bytes, bytes]:
    """(receiver_sid, sender_sid, noise message 1 repeated, noise message 3)."""
    if len(datagram) < FINAL_HEADER.size + 2:
        raise RemoteProtocolError("truncated FINAL")
    _, receiver, sender = FINAL_HEADER.unpack_from(datagram)
    (size,) = _U16.unpack_from(datagram, FINAL_HEADER.size)
    start = FINAL_HEADER.size + 2
    if size > MAX_NOISE_MESSAGE:
        raise RemoteProtocolError("FINAL repeats an oversized INIT")
    first, pos = _take(datagram, start, size)
    return receiver, sender, first, bytes(datagram[pos:])


def encode_cookie(receiver_sid: bytes, cookie: bytes) -> bytes:
    return bytes((PacketKind.COOKIE,)) + receiver_sid + cookie


def decode_cookie(datagram: bytes) -> tuple[bytes, bytes]:
    """(receiver_sid, cookie)."""
    if len(datagram) != COOKIE_PACKET_SIZE:
        raise RemoteProtocolError("COOKIE of the wrong size")
    return bytes(datagram[1:9]), bytes(datagram[9:])


def encode_version(receiver_sid: bytes, versions: tuple[int, ...]) -> bytes:
    return bytes((PacketKind.VERSION,)) + receiver_sid + bytes((len(versions), *versions))


def decode_version(datagram: bytes) -> tuple[bytes, tuple[int, ...]]:
    """(receiver_sid, the versions the sender speaks)."""
    if len(datagram) < 10 or len(datagram) != 10 + datagram[9]:
        raise RemoteProtocolError("malformed VERSION")
    return bytes(datagram[1:9]), tuple(datagram[10:])


def encode_hello(versions: tuple[int, ...], capabilities: int) -> bytes:
    """The INIT's Noise payload: the versions the initiator speaks and its capabilities."""
    return (encode_varint(len(versions)) + b"".join(encode_varint(v) for v in versions)
            + encode_varint(capabilities))


def decode_hello(payload: bytes) -> tuple[tuple[int, ...], int]:
    if not payload:  # an initiator that names nothing speaks the version in its header
        return (), 0
    count, pos = decode_varint(payload, 0)
    if count > 16:
        raise RemoteProtocolError("too many versions offered")
    versions = []
    for _ in range(count):
        version, pos = decode_varint(payload, pos)
        versions.append(version)
    capabilities, _ = decode_varint(payload, pos)
    return tuple(versions), capabilities


def encode_punch(token: bytes) -> bytes:
    return bytes((PacketKind.PUNCH,)) + token


def decode_punch(datagram: bytes) -> bytes:
    """The token of a PUNCH packet."""
    if len(datagram) != PUNCH_SIZE:
        raise RemoteProtocolError("PUNCH of the wrong size")
    return bytes(datagram[1:])


FRAME_CLASSES: dict[int, type] = {
    FrameType.PING: Ping, FrameType.ACK: Ack, FrameType.CLOSE: Close,
    FrameType.HANDSHAKE_DONE: HandshakeDone, FrameType.PATH_CHALLENGE: PathChallenge,
    FrameType.PATH_RESPONSE: PathResponse, FrameType.MESSAGE: MessageFragment,
    FrameType.CHANNEL: Channel, FrameType.CHANNEL_ACCEPTED: ChannelAccepted,
    FrameType.CHANNEL_REFUSED: ChannelRefused, FrameType.CHANNEL_WINDOW: ChannelWindow,
    FrameType.MESSAGE_WINDOW: MessageWindow, FrameType.MESSAGES_BLOCKED: MessagesBlocked,
    FrameType.OBSERVED_ADDRESS: ObservedAddress,
    FrameType.REGISTER: Register, FrameType.INTRO_REQUEST: IntroRequest,
    FrameType.INTRO: Intro, FrameType.INTRO_FAILED: IntroFailed,
    FrameType.RELAY_SEND: RelaySend, FrameType.RELAY_RECV: RelayRecv,
}
"""Frame type -> the class its decoder yields."""
