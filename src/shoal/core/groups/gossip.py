"""The groups service's messages and how they travel in frames.

A group message is one of the kinds below. It travels split into GROUP_FRAGMENT frames
(an extension type), each ``message_id | total | offset | bytes`` (varints), which the
receiver puts together again within a bounded budget. Messages (varints as in QUIC)::

    TAGS       01  count, count * (tag[32] flags u8)       flags bit 0: a member
    POST       02  mode u8 (0 gossip, 1 sync), envelope
    IHAVE      03  tag[32], count, count * id[32]
    GRAFT      04  tag[32], count, count * id[32]
    PRUNE      05  tag[32]
    RECONCILE  06  tag[32], role u8, reconciliation message (``shoal.core.reconcile``)
                   role 0: an initiator's first message, 1: its next ones, 2: replies
    MEMBERS    07  tag[32], count, count * (peer[32] addresses)   addresses: count,
                   count * (family u8 (4|6), ip, port u16): where the sender reaches it

Parsers raise only ``RemoteProtocolError``.
"""

from __future__ import annotations

from dataclasses import dataclass

from shoal.core.groups.posts import MAX_ENVELOPE_BYTES
from shoal.core.reconcile import MAX_MESSAGE_BYTES
from shoal.core.wire import (
    Address,
    _decode_addresses,
    _encode_addresses,
    decode_varint,
    encode_varint,
)
from shoal.errors import RemoteProtocolError

GROUP_FRAGMENT = 0xF0
"""The extension frame type group messages travel in."""
FRAGMENT_DATA = 1024
"""Bytes of a message in one fragment (fits a DATA packet, relayed or not)."""
MAX_MESSAGE = max(MAX_ENVELOPE_BYTES, MAX_MESSAGE_BYTES) + 64
MAX_TAGS = 1024
MAX_IDS = 1024
MAX_ADDRESSES = 4
MAX_PARTIAL_BYTES = 2 * MAX_MESSAGE
"""Bytes of unfinished messages one connection may hold at the receiver."""
MAX_PARTIAL = 16
MAX_DONE = 4096

TAGS, POST, IHAVE, GRAFT, PRUNE, RECONCILE, MEMBERS = 1, 2, 3, 4, 5, 6, 7
GOSSIP, SYNC = 0, 1
START, CONTINUE, REPLY = 0, 1, 2


@dataclass(frozen=True, slots=True)
class Message:
    """A decoded group message; which fields mean something depends on ``kind``."""

    kind: int
    tag: bytes = b""
    ids: tuple[bytes, ...] = ()
    tags: tuple[tuple[bytes, int], ...] = ()
    mode: int = GOSSIP
    data: bytes = b""
    members: tuple[tuple[bytes, tuple[Address, ...]], ...] = ()


def _ids(out: bytearray, ids: tuple[bytes, ...] | list[bytes]) -> None:
    out += encode_varint(len(ids))
    for item in ids:
        out += item


def encode(message: Message) -> bytes:
    """The bytes of ``message``."""
    out = bytearray((message.kind,))
    kind = message.kind
    if kind == TAGS:
        out += encode_varint(len(message.tags))
        for tag, flags in message.tags:
            out += tag + bytes((flags,))
    elif kind == POST:
        out += bytes((message.mode,)) + message.data
    elif kind in (IHAVE, GRAFT):
        out += message.tag
        _ids(out, message.ids)
    elif kind == MEMBERS:
        out += message.tag + encode_varint(len(message.members))
        for peer, addresses in message.members:
            out += peer + _encode_addresses(addresses)
    elif kind == PRUNE:
        out += message.tag
    elif kind == RECONCILE:
        out += message.tag + bytes((message.mode,)) + message.data
    else:
        raise ValueError(f"unknown group message kind {kind}")
    return bytes(out)


def _take_ids(data: bytes, pos: int) -> tuple[bytes, ...]:
    count, pos = decode_varint(data, pos)
    if count > MAX_IDS or len(data) != pos + 32 * count:
        raise RemoteProtocolError("group message: bad id list")
    return tuple(data[i : i + 32] for i in range(pos, pos + 32 * count, 32))


def decode(data: bytes) -> Message:
    """Parse one whole group message."""
    if not data:
        raise RemoteProtocolError("empty group message")
    kind = data[0]
    if kind == TAGS:
        count, pos = decode_varint(data, 1)
        if count > MAX_TAGS or len(data) != pos + 33 * count:
            raise RemoteProtocolError("group message: bad tag list")
        tags = tuple((data[i : i + 32], data[i + 32]) for i in range(pos, len(data), 33))
        return Message(TAGS, tags=tags)
    if kind == POST:
        if len(data) < 2 or data[1] not in (GOSSIP, SYNC):
            raise RemoteProtocolError("group message: bad post")
        return Message(POST, mode=data[1], data=data[2:])
    if len(data) < 33:
        raise RemoteProtocolError("group message too short")
    tag = data[1:33]
    if kind in (IHAVE, GRAFT):
        return Message(kind, tag=tag, ids=_take_ids(data, 33))
    if kind == MEMBERS:
        count, pos = decode_varint(data, 33)
        if count > MAX_IDS:
            raise RemoteProtocolError("group message: too many members")
        members = []
        for _ in range(count):
            peer = data[pos : pos + 32]
            if len(peer) != 32:
                raise RemoteProtocolError("group message: truncated member")
            addresses, pos = _decode_addresses(data, pos + 32, MAX_ADDRESSES)
            members.append((peer, addresses))
        if pos != len(data):
            raise RemoteProtocolError("group message: bytes after the members")
        return Message(MEMBERS, tag=tag, members=tuple(members))
    if kind == PRUNE:
        if len(data) != 33:
            raise RemoteProtocolError("group message: bad prune")
        return Message(PRUNE, tag=tag)
    if kind == RECONCILE:
        if len(data) < 34 or data[33] not in (START, CONTINUE, REPLY):
            raise RemoteProtocolError("group message: bad reconciliation role")
        return Message(RECONCILE, tag=tag, mode=data[33], data=data[34:])
    raise RemoteProtocolError(f"unknown group message kind {kind}")


def fragments(message_id: int, data: bytes) -> list[bytes]:
    """The frame bodies that carry ``data`` as message ``message_id``."""
    total = len(data)
    head = encode_varint(message_id) + encode_varint(total)
    return [head + encode_varint(offset) + data[offset : offset + FRAGMENT_DATA]
            for offset in range(0, max(total, 1), FRAGMENT_DATA)]


class Reassembly:
    """One connection's unfinished messages, within ``MAX_PARTIAL_BYTES``."""

    __slots__ = ("_partial", "held", "_floor", "_done")

    def __init__(self) -> None:
        self._partial: dict[int, tuple[bytearray, set[int]]] = {}
        self.held = 0
        """Bytes reserved by unfinished messages (their declared sizes)."""
        self._floor = 0
        """Every message id below this one was taken (a fragment sent again is ignored)."""
        self._done: set[int] = set()

    def _finish(self, message_id: int) -> None:
        self._done.add(message_id)
        while self._floor in self._done:
            self._done.remove(self._floor)
            self._floor += 1
        if len(self._done) > MAX_DONE:
            raise RemoteProtocolError("group message ids skip too far ahead")

    def take(self, body: bytes) -> bytes | None:
        """Add one fragment; the whole message once its last piece is in."""
        message_id, pos = decode_varint(body, 0)
        total, pos = decode_varint(body, pos)
        offset, pos = decode_varint(body, pos)
        piece = body[pos:]
        if total > MAX_MESSAGE or offset % FRAGMENT_DATA or offset + len(piece) > total \
                or (len(piece) != min(FRAGMENT_DATA, total - offset)):
            raise RemoteProtocolError("group fragment out of bounds")
        if message_id < self._floor or message_id in self._done:
            return None
        if total <= FRAGMENT_DATA:
            self._finish(message_id)
            return bytes(piece)
        entry = self._partial.get(message_id)
        if entry is None:
            if len(self._partial) >= MAX_PARTIAL or self.held + total > MAX_PARTIAL_BYTES:
                raise RemoteProtocolError("too many unfinished group messages")
            entry = self._partial[message_id] = (bytearray(total), set())
            self.held += total
        buffer, seen = entry
        if len(buffer) != total:
            raise RemoteProtocolError("group fragments disagree on the message size")
        if offset in seen:
            return None
        seen.add(offset)
        buffer[offset : offset + len(piece)] = piece
        if len(seen) * FRAGMENT_DATA < total:
            return None
        del self._partial[message_id]
        self.held -= total
        self._finish(message_id)
        return bytes(buffer)
