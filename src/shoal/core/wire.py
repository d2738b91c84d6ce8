"""The Shoal wire format: datagram headers, frames and their codecs.

Theory of operation
-------------------
Every Shoal datagram starts with a one-byte kind. Kinds 0x00-0x3f are left to STUN
(RFC 7983 demultiplexing), so Shoal's start at 0xd0::

    INIT   d1 | version u8 | sender_sid[8] | noise msg 1 | zero padding to >= 1200 bytes
    RESP   d2 | version u8 | receiver_sid[8] | sender_sid[8] | noise msg 2
    FINAL  d3 | receiver_sid[8] | noise msg 3
    DATA   d4 | receiver_sid[8] | packet_number u64 | AEAD(frames)   (AD = the 17 header bytes)
    PUNCH  d5 | token[8]     (hole punching: opens NAT mappings, carries no data)

An INIT that travels inside a relay (see ``RelaySend``) is not padded: it reaches the
receiver through an authenticated session, so it cannot be used for amplification.

Session ids are random and chosen by the receiver of the packets that carry them, so a
session survives a change of address (NAT rebinding, roaming). A DATA packet's payload
is a sequence of typed frames (see ``FrameType``); unknown frame types end the session,
as a peer that sends them speaks a newer protocol and must negotiate first.

Integers inside frames are QUIC variable-length integers (RFC 9000 section 16).
Parsers here raise only ``RemoteProtocolError``; anything else is a bug.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from enum import IntEnum
from typing import NamedTuple

from shoal.errors import RemoteProtocolError

PROTOCOL_VERSION = 1
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


class PacketKind(IntEnum):
    INIT = 0xD1
    RESP = 0xD2
    FINAL = 0xD3
    DATA = 0xD4
    PUNCH = 0xD5


class FrameType(IntEnum):
    PING = 0x01
    ACK = 0x02
    CLOSE = 0x03
    HANDSHAKE_DONE = 0x04
    MESSAGE = 0x10
    OBSERVED_ADDRESS = 0x20
    REGISTER = 0x21
    INTRO_REQUEST = 0x22
    INTRO = 0x23
    INTRO_FAILED = 0x24
    RELAY_SEND = 0x30
    RELAY_RECV = 0x31


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
    ip = ipaddress.ip_address(host)
    return bytes((ip.version,)) + ip.packed + _U16.pack(port)


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
    host = str(ipaddress.ip_address(raw))
    return (host, _U16.unpack(port_raw)[0]), pos


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
class MessageFragment:
    """``data`` is bytes ``offset .. offset+len(data)`` of message ``message_id``."""

    message_id: int
    total_length: int
    offset: int
    data: bytes


@dataclass(frozen=True, slots=True)
class ObservedAddress:
    """The address the sender sees this session's packets come from."""

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
    of this introduction share, carried by their PUNCH packets.
    """

    request_id: int
    peer: bytes
    addresses: tuple[Address, ...]
    nat: int = 0
    token: bytes = bytes(8)


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


Frame = (
    Ping | Ack | Close | HandshakeDone | MessageFragment | ObservedAddress | Register
    | IntroRequest | Intro | IntroFailed | RelaySend | RelayRecv
)

_PING = bytes((FrameType.PING,))
_HANDSHAKE_DONE = bytes((FrameType.HANDSHAKE_DONE,))


def encode_frame(frame: Frame) -> bytes:
    """The wire bytes of one frame."""
    ev = encode_varint
    match frame:
        case MessageFragment(message_id, total, offset, data):
            return b"".join((b"\x10", ev(message_id), ev(total), ev(offset), ev(len(data)), data))
        case Ack(ranges, delay):
            return encode_ack(ranges, delay)
        case Ping():
            return _PING
        case HandshakeDone():
            return _HANDSHAKE_DONE
        case Close(code, reason):
            raw = reason.encode()[:512]
            return b"\x03" + ev(code) + ev(len(raw)) + raw
        case ObservedAddress(address):
            return b"\x20" + encode_address(address)
        case Register(local, nat):
            return b"\x21" + _encode_addresses(local) + ev(nat)
        case IntroRequest(request_id, target):
            return b"\x22" + ev(request_id) + target
        case Intro(request_id, peer, addresses, nat, token):
            return b"".join(
                (b"\x23", ev(request_id), peer, _encode_addresses(addresses), ev(nat), token)
            )
        case IntroFailed(request_id, target):
            return b"\x24" + ev(request_id) + target
        case RelaySend(peer, packet):
            return b"\x30" + peer + ev(len(packet)) + packet
        case RelayRecv(peer, packet):
            return b"\x31" + peer + ev(len(packet)) + packet
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


def decode_frames(payload: bytes, pos: int = 0) -> Iterator[Frame]:
    """Yield the frames in a decrypted DATA payload, from byte ``pos`` on."""
    end = len(payload)
    dv = decode_varint
    while pos < end:
        kind = payload[pos]
        pos += 1
        if kind == 0x10:
            message_id, pos = dv(payload, pos)
            total, pos = dv(payload, pos)
            offset, pos = dv(payload, pos)
            data, pos = _take_blob_at(payload, pos)
            if offset + len(data) > total:
                raise RemoteProtocolError("message fragment beyond message length")
            yield MessageFragment(message_id, total, offset, data)
        elif kind == 0x02:
            frame, pos = _decode_ack(payload, pos)
            yield frame
        elif kind == 0x01:
            yield Ping()
        elif kind == 0x04:
            yield HandshakeDone()
        elif kind == 0x03:
            code, pos = dv(payload, pos)
            raw, pos = _take_blob(payload, pos)
            yield Close(code, raw.decode("utf-8", "replace"))
        elif kind == 0x20:
            address, pos = decode_address(payload, pos)
            yield ObservedAddress(address)
        elif kind == 0x21:
            local, pos = _decode_addresses(payload, pos)
            nat, pos = dv(payload, pos)
            yield Register(local, nat)
        elif kind == 0x22:
            request_id, pos = dv(payload, pos)
            target, pos = _take(payload, pos, 32)
            yield IntroRequest(request_id, target)
        elif kind == 0x23:
            request_id, pos = dv(payload, pos)
            peer, pos = _take(payload, pos, 32)
            addresses, pos = _decode_addresses(payload, pos)
            nat, pos = dv(payload, pos)
            token, pos = _take(payload, pos, 8)
            yield Intro(request_id, peer, addresses, nat, token)
        elif kind == 0x24:
            request_id, pos = dv(payload, pos)
            target, pos = _take(payload, pos, 32)
            yield IntroFailed(request_id, target)
        elif kind == 0x30 or kind == 0x31:
            peer, pos = _take(payload, pos, 32)
            packet, pos = _take_blob_at(payload, pos)
            if not packet or len(packet) > MAX_RELAYED_DATAGRAM:
                raise RemoteProtocolError("relayed packet empty or too large")
            yield RelaySend(peer, packet) if kind == 0x30 else RelayRecv(peer, packet)
        else:
            raise RemoteProtocolError(f"unknown frame type 0x{kind:02x}")


def _take_blob_at(buf: bytes, pos: int) -> tuple[bytes, int]:
    size, pos = decode_varint(buf, pos)
    end = pos + size
    if end > len(buf):
        raise RemoteProtocolError("truncated field")
    return buf[pos:end], end


# ----------------------------------------------------------------------------- packets

INIT_HEADER = struct.Struct("!BB8s")
RESP_HEADER = struct.Struct("!BB8s8s")
FINAL_HEADER = struct.Struct("!B8s")
DATA_HEADER = struct.Struct("!B8sQ")


def encode_init(sender_sid: bytes, noise_message: bytes, *, pad: bool = True) -> bytes:
    """An INIT, padded to ``MIN_INIT_SIZE`` unless it travels through a relay."""
    head = INIT_HEADER.pack(PacketKind.INIT, PROTOCOL_VERSION, sender_sid)
    body = head + _U16.pack(len(noise_message)) + noise_message
    return body.ljust(MIN_INIT_SIZE, b"\x00") if pad else body


def decode_init(datagram: bytes, *, padded: bool = True) -> tuple[int, bytes, bytes]:
    """(version, sender_sid, noise message)."""
    if len(datagram) < INIT_HEADER.size + 2 or (padded and len(datagram) < MIN_INIT_SIZE):
        raise RemoteProtocolError("INIT shorter than the anti-amplification minimum")
    _, version, sid = INIT_HEADER.unpack_from(datagram)
    (size,) = _U16.unpack_from(datagram, INIT_HEADER.size)
    start = INIT_HEADER.size + 2
    if start + size > len(datagram):
        raise RemoteProtocolError("truncated INIT")
    return version, sid, bytes(datagram[start : start + size])


def encode_resp(receiver_sid: bytes, sender_sid: bytes, noise_message: bytes) -> bytes:
    head = RESP_HEADER.pack(PacketKind.RESP, PROTOCOL_VERSION, receiver_sid, sender_sid)
    return head + noise_message


def decode_resp(datagram: bytes) -> tuple[int, bytes, bytes, bytes]:
    """(version, receiver_sid, sender_sid, noise message)."""
    if len(datagram) < RESP_HEADER.size:
        raise RemoteProtocolError("truncated RESP")
    _, version, receiver, sender = RESP_HEADER.unpack_from(datagram)
    return version, receiver, sender, bytes(datagram[RESP_HEADER.size :])


def encode_final(receiver_sid: bytes, noise_message: bytes) -> bytes:
    return FINAL_HEADER.pack(PacketKind.FINAL, receiver_sid) + noise_message


def decode_final(datagram: bytes) -> tuple[bytes, bytes]:
    if len(datagram) < FINAL_HEADER.size:
        raise RemoteProtocolError("truncated FINAL")
    _, receiver = FINAL_HEADER.unpack_from(datagram)
    return receiver, bytes(datagram[FINAL_HEADER.size :])


def encode_punch(token: bytes) -> bytes:
    return bytes((PacketKind.PUNCH,)) + token


def decode_punch(datagram: bytes) -> bytes:
    """The token of a PUNCH packet."""
    if len(datagram) != PUNCH_SIZE:
        raise RemoteProtocolError("PUNCH of the wrong size")
    return bytes(datagram[1:])
