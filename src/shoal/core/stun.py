"""STUN Binding (RFC 8489), the part a node needs to learn and report public addresses.

Shoal introducers answer Binding requests from any standard client, and a Shoal node can
ask any standard STUN server for its address. Only Binding is spoken; other methods and
classes are ignored. Answers carry nothing but XOR-MAPPED-ADDRESS, which keeps them as
small as the standard allows (32 bytes for IPv4, 44 for IPv6).
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


def encode_binding_request(transaction_id: bytes) -> bytes:
    if len(transaction_id) != 12:
        raise ValueError("a STUN transaction id is 12 bytes")
    return HEADER.pack(BINDING_REQUEST, 0, MAGIC_COOKIE, transaction_id)


def encode_binding_success(transaction_id: bytes, mapped: Address) -> bytes:
    host, port = mapped
    ip = ipaddress.ip_address(host)
    xport = port ^ (MAGIC_COOKIE >> 16)
    if ip.version == 4:
        xaddr = (int(ip) ^ MAGIC_COOKIE).to_bytes(4, "big")
        family = 0x01
    else:
        mask = int.from_bytes(_COOKIE_BYTES + transaction_id, "big")
        xaddr = (int(ip) ^ mask).to_bytes(16, "big")
        family = 0x02
    value = struct.pack("!BBH", 0, family, xport) + xaddr
    attribute = struct.pack("!HH", ATTR_XOR_MAPPED_ADDRESS, len(value)) + value
    return HEADER.pack(BINDING_SUCCESS, len(attribute), MAGIC_COOKIE, transaction_id) + attribute


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
        pos += 4 + ((attr_len + 3) & ~3)
    return StunMessage(method_class, transaction_id, mapped)


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
