"""STUN Binding (RFC 8489) and NAT behaviour discovery (RFC 5780), as far as Shoal needs.

Shoal introducers answer Binding requests from any standard client, and a Shoal node can
ask any standard STUN server for its address. Only Binding is spoken; other methods and
classes are ignored. A plain answer carries nothing but XOR-MAPPED-ADDRESS (32 bytes for
IPv4, 44 for IPv6), and only to a request at least that large, but for a small budget
per source network kept for standard clients, which send 20-byte requests.

A server with an alternate address also honours CHANGE-REQUEST (answering from its other
port, or its other IP and port) and names that address in OTHER-ADDRESS, which is what
NAT filtering and mapping tests need. It does so only for requests padded (PADDING) to
at least the size of the answer, so the richer answers never amplify.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from shoal.core.wire import Address
from shoal.errors import RemoteProtocolError

MAGIC_COOKIE = 0x2112A442
HEADER = struct.Struct("!HHI12s")
HEADER_SIZE = HEADER.size
BINDING_REQUEST = 0x0001
BINDING_SUCCESS = 0x0101
ATTR_MAPPED_ADDRESS = 0x0001
ATTR_XOR_MAPPED_ADDRESS = 0x0020
ATTR_CHANGE_REQUEST = 0x0003
ATTR_PADDING = 0x0026
ATTR_RESPONSE_ORIGIN = 0x802B
ATTR_OTHER_ADDRESS = 0x802C
CHANGE_IP = 0x04
CHANGE_PORT = 0x02
PADDED_REQUEST_SIZE = 96
"""Size of the requests Shoal's NAT check sends: room for a full RFC 5780 answer."""
PLAIN_PADDED_SIZE = 48
"""Size of Shoal's plain Binding requests: room for an IPv6 XOR-MAPPED-ADDRESS answer."""
_COOKIE_BYTES = MAGIC_COOKIE.to_bytes(4, "big")


def looks_like_stun(datagram: bytes) -> bool:
    """Cheap check used to demultiplex STUN from Shoal packets on one socket."""
    return (
        len(datagram) >= HEADER_SIZE
        and datagram[0] < 0x40
        and datagram[4:8] == _COOKIE_BYTES
        and (datagram[2] << 8 | datagram[3]) % 4 == 0
    )


@dataclass(frozen=True, slots=True)
class StunMessage:
    method_class: int
    transaction_id: bytes
    mapped: Address | None = None
    change: int = 0
    """CHANGE-REQUEST flags of a request (``CHANGE_IP`` | ``CHANGE_PORT``)."""
    other: Address | None = None
    """OTHER-ADDRESS of an answer: the server's alternate IP and port."""
    size: int = 0


def encode_binding_request(transaction_id: bytes, *, change: int = 0, pad_to: int = 0) -> bytes:
    """A Binding request, with CHANGE-REQUEST when ``change`` is set, padded to ``pad_to``."""
    if len(transaction_id) != 12:
        raise ValueError("a STUN transaction id is 12 bytes")
    attributes = b""
    if change:
        attributes += struct.pack("!HHI", ATTR_CHANGE_REQUEST, 4, change)
    room = pad_to - HEADER_SIZE - len(attributes) - 4
    if room >= 0:
        room -= room % 4
        attributes += struct.pack("!HH", ATTR_PADDING, room) + bytes(room)
    return HEADER.pack(BINDING_REQUEST, len(attributes), MAGIC_COOKIE, transaction_id) + attributes


def encode_binding_success(
    transaction_id: bytes,
    mapped: Address,
    *,
    other: Address | None = None,
    origin: Address | None = None,
) -> bytes:
    """A Binding answer; ``other`` and ``origin`` add OTHER-ADDRESS and RESPONSE-ORIGIN."""
    attributes = _address_attribute(ATTR_XOR_MAPPED_ADDRESS, mapped, transaction_id)
    if other is not None:
        attributes += _address_attribute(ATTR_OTHER_ADDRESS, other, None)
    if origin is not None:
        attributes += _address_attribute(ATTR_RESPONSE_ORIGIN, origin, None)
    return HEADER.pack(BINDING_SUCCESS, len(attributes), MAGIC_COOKIE, transaction_id) + attributes


def _address_attribute(kind: int, address: Address, transaction_id: bytes | None) -> bytes:
    """An address attribute; XOR-encoded when ``transaction_id`` is given."""
    host, port = address
    ip = ipaddress.ip_address(host)
    family = 0x01 if ip.version == 4 else 0x02
    if transaction_id is None:
        value = struct.pack("!BBH", 0, family, port) + ip.packed
        return struct.pack("!HH", kind, len(value)) + value
    xport = port ^ (MAGIC_COOKIE >> 16)
    if ip.version == 4:
        xaddr = (int(ip) ^ MAGIC_COOKIE).to_bytes(4, "big")
    else:
        mask = int.from_bytes(_COOKIE_BYTES + transaction_id, "big")
        xaddr = (int(ip) ^ mask).to_bytes(16, "big")
    value = struct.pack("!BBH", 0, family, xport) + xaddr
    return struct.pack("!HH", kind, len(value)) + value


def decode(datagram: bytes) -> StunMessage:
    """Parse a STUN message; raises ``RemoteProtocolError`` if it is malformed."""
    if len(datagram) < HEADER_SIZE:
        raise RemoteProtocolError("truncated STUN header")
    method_class, length, cookie, transaction_id = HEADER.unpack_from(datagram)
    if cookie != MAGIC_COOKIE or method_class & 0xC000:
        raise RemoteProtocolError("not a STUN message")
    if HEADER_SIZE + length > len(datagram) or length % 4:
        raise RemoteProtocolError("bad STUN length")
    mapped: Address | None = None
    other: Address | None = None
    change = 0
    pos = HEADER_SIZE
    end = HEADER_SIZE + length
    while pos + 4 <= end:
        attr_type, attr_len = struct.unpack_from("!HH", datagram, pos)
        value = datagram[pos + 4 : pos + 4 + attr_len]
        if len(value) != attr_len:
            raise RemoteProtocolError("truncated STUN attribute")
        if attr_type == ATTR_XOR_MAPPED_ADDRESS:
            mapped = _decode_address(value, transaction_id, xor=True)
        elif attr_type == ATTR_MAPPED_ADDRESS and mapped is None:
            mapped = _decode_address(value, transaction_id, xor=False)
        elif attr_type == ATTR_OTHER_ADDRESS:
            other = _decode_address(value, transaction_id, xor=False)
        elif attr_type == ATTR_CHANGE_REQUEST:
            if attr_len != 4:
                raise RemoteProtocolError("bad CHANGE-REQUEST")
            change = struct.unpack("!I", value)[0] & (CHANGE_IP | CHANGE_PORT)
        pos += 4 + ((attr_len + 3) & ~3)
    return StunMessage(method_class, transaction_id, mapped, change, other, end)


def _decode_address(value: bytes, transaction_id: bytes, *, xor: bool) -> Address:
    if len(value) < 8:
        raise RemoteProtocolError("truncated STUN address")
    _, family, port = struct.unpack_from("!BBH", value)
    raw = value[4:]
    if family == 0x01 and len(raw) == 4:
        number = int.from_bytes(raw, "big") ^ (MAGIC_COOKIE if xor else 0)
        host = str(ipaddress.IPv4Address(number))
    elif family == 0x02 and len(raw) == 16:
        mask = int.from_bytes(_COOKIE_BYTES + transaction_id, "big") if xor else 0
        host = str(ipaddress.IPv6Address(int.from_bytes(raw, "big") ^ mask))
    else:
        raise RemoteProtocolError("bad STUN address family")
    if xor:
        port ^= MAGIC_COOKIE >> 16
    return host, port
