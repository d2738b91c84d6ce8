"""The DHT's frames, in the extension range (see ``shoal.core.wire``; 0xe0-0xe9 are left
to applications' own services, as the docs' examples use them).

Every body is parsed here; a malformed one raises ``RemoteProtocolError`` only::

    FIND_NODE      ea | len | request_id varint | target[32]
    NODES          eb | len | request_id varint | part u8 | parts u8 | count varint | entry*
    ADD_PROVIDER   ec | len | key[32]
    GET_PROVIDERS  ed | len | request_id varint | key[32]
    PROVIDERS      ee | len | request_id varint | part u8 | parts u8 | count varint | entry*

    entry = peer[32] | address count varint (<= 2) | address*

An answer may take several frames (``parts``, at most 16, each of at most 10 entries,
so every frame fits in one packet); the answer to GET_PROVIDERS numbers its PROVIDERS
and NODES frames together.
"""

from __future__ import annotations

from dataclasses import dataclass

from shoal.core.wire import (
    Address,
    Extension,
    _decode_addresses,
    _encode_addresses,
    _take,
    decode_varint,
    encode_varint,
)
from shoal.errors import RemoteProtocolError

FIND_NODE = 0xEA
NODES = 0xEB
ADD_PROVIDER = 0xEC
GET_PROVIDERS = 0xED
PROVIDERS = 0xEE
FRAME_TYPES = (FIND_NODE, NODES, ADD_PROVIDER, GET_PROVIDERS, PROVIDERS)

ID_SIZE = 32
MAX_PARTS = 16
MAX_ENTRIES = 10
"""Entries in one NODES or PROVIDERS frame (each at most 71 bytes)."""
MAX_ENTRY_ADDRESSES = 2


@dataclass(frozen=True, slots=True)
class Entry:
    """A node (NODES) or a provider (PROVIDERS): its peer key and where to reach it."""

    peer: bytes
    addresses: tuple[Address, ...] = ()


@dataclass(frozen=True, slots=True)
class Request:
    """FIND_NODE or GET_PROVIDERS."""

    kind: int
    request_id: int
    target: bytes


@dataclass(frozen=True, slots=True)
class Answer:
    """One frame of a NODES or PROVIDERS answer."""

    kind: int
    request_id: int
    part: int
    parts: int
    entries: tuple[Entry, ...]


@dataclass(frozen=True, slots=True)
class AddProvider:
    key: bytes


DhtFrame = Request | Answer | AddProvider


def encode_request(kind: int, request_id: int, target: bytes) -> Extension:
    return Extension(kind, encode_varint(request_id) + target)


def encode_add_provider(key: bytes) -> Extension:
    return Extension(ADD_PROVIDER, key)


def encode_entry(peer: bytes, addresses: tuple[Address, ...] = ()) -> bytes:
    """One entry's bytes (kept by the table, so answers cost no encoding)."""
    return peer + _encode_addresses(addresses[:MAX_ENTRY_ADDRESSES])


def encode_answers(request_id: int, sections: list[tuple[int, list[bytes]]]) -> list[Extension]:
    """The frames of one answer: each ``(kind, encoded entries)`` section cut into frames
    of at most MAX_ENTRIES entries, numbered together (an empty answer is one NODES
    frame)."""
    chunks = [(kind, entries[i:i + MAX_ENTRIES])
              for kind, entries in sections for i in range(0, len(entries), MAX_ENTRIES)]
    chunks = chunks[:MAX_PARTS] or [(NODES, [])]
    head = encode_varint(request_id)
    return [Extension(kind, b"".join((head, bytes((part, len(chunks))),
                                      encode_varint(len(entries)), *entries)))
            for part, (kind, entries) in enumerate(chunks)]


def decode(frame: Extension) -> DhtFrame:
    """Parse one DHT frame's body (``RemoteProtocolError`` if malformed)."""
    body, kind = frame.body, frame.type
    if kind == ADD_PROVIDER:
        if len(body) != ID_SIZE:
            raise RemoteProtocolError("ADD_PROVIDER needs a 32-byte key")
        return AddProvider(body)
    request_id, pos = decode_varint(body, 0)
    if kind in (FIND_NODE, GET_PROVIDERS):
        if len(body) - pos != ID_SIZE:
            raise RemoteProtocolError("a DHT request needs a 32-byte target")
        return Request(kind, request_id, body[pos:])
    if kind not in (NODES, PROVIDERS):
        raise RemoteProtocolError(f"not a DHT frame: 0x{kind:02x}")
    raw, pos = _take(body, pos, 2)
    part, parts = raw[0], raw[1]
    if not 0 < parts <= MAX_PARTS or part >= parts:
        raise RemoteProtocolError("bad DHT answer part")
    count, pos = decode_varint(body, pos)
    if count > MAX_ENTRIES:
        raise RemoteProtocolError("too many entries in a DHT answer")
    entries = []
    for _ in range(count):
        peer, pos = _take(body, pos, ID_SIZE)
        addresses, pos = _decode_addresses(body, pos, MAX_ENTRY_ADDRESSES)
        entries.append(Entry(peer, addresses))
    if pos != len(body):
        raise RemoteProtocolError("trailing bytes in a DHT answer")
    return Answer(kind, request_id, part, parts, tuple(entries))
