"""Range-based set reconciliation: two sides find what each holds that the other lacks.

Theory of operation
-------------------
Each side holds a set of ``(timestamp, id)`` items behind a ``RangeIndex``. The initiator
describes its whole set in one message: either the list of its ids, if it holds few, or
``BUCKETS`` consecutive ranges with the fingerprint of each (``rangeindex.fingerprint``:
a hash of the item count and of the sum of the ids). The other side compares each range
with its own: an equal fingerprint ends that range; an unequal one is described again, in
smaller pieces, in the reply. Ranges thus narrow where the sets differ and close where they
agree, so the bytes and round trips grow with the difference (and the logarithm of the
size), not with the sets. A range that one side holds few items of is answered with its
list of ids (``IDLIST``); the other side answers that list with the ids it alone holds and
a bitmap of the listed ids it lacks (``IDLIST_RESPONSE``), which needs no reply. Both sides
learn every difference: ``have`` (ids only this side holds) and ``need`` (ids only the peer
holds). Reconciliation ends when a message asks nothing more (no fingerprint and no id list);
a message that asks something always gets an answer, if only an empty one.

This follows the range-based reconciliation of Meyer (arXiv 2212.13567) and the negentropy
protocol built on it, with a bitmap reply to id lists in place of a second list.

Wire format (all integers unsigned LEB128 varints)::

    message  = VERSION range*                     ranges cover [MINIMUM, upper) in order;
    range    = bound mode payload                  after the last one, all is skipped
    bound    = ts_code prefix_length prefix        ts_code 0: infinity, else 1 + the
                                                   timestamp's increase over the last bound
    mode 0   SKIP             (nothing)
    mode 1   FINGERPRINT      16 bytes
    mode 2   IDLIST           count, count * 32-byte ids
    mode 3   IDLIST_RESPONSE  count, count * 32-byte ids, listed, ceil(listed / 8) bitmap bytes

Bad input raises ``RemoteProtocolError`` only, and the work a message can cause is bounded:
messages and id lists have size limits, ranges must increase, a session has a round limit
that grows only with the differences found (each costs the peer 32 bytes), and the ids
collected but not yet taken by the caller have a cap.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass, field

from shoal.core.rangeindex import (
    FINGERPRINT_BYTES,
    ID_BYTES,
    INFINITY,
    MAX_TIMESTAMP,
    MINIMUM,
    ZERO_ID,
    Key,
    RangeIndex,
    fingerprint,
)
from shoal.errors import LocalProtocolError, RemoteProtocolError

VERSION = 0x01
BUCKETS = 16
"""How many ranges a range that differs is cut into."""
ROUND_CREDIT = 4
MAX_MESSAGE_BYTES = 16_384


class Mode(enum.IntEnum):
    SKIP = 0
    FINGERPRINT = 1
    IDLIST = 2
    IDLIST_RESPONSE = 3


@dataclass(frozen=True, slots=True)
class Range:
    """One range of a message: from the previous range's ``upper`` up to this one's."""

    upper: Key
    mode: Mode
    fingerprint: bytes = b""
    ids: tuple[bytes, ...] = ()
    """IDLIST: the sender's ids; IDLIST_RESPONSE: the ids only the sender holds."""
    lacking: tuple[bool, ...] = ()
    """IDLIST_RESPONSE: for each id of the list answered, whether the sender lacks it."""


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on what one session accepts and sends."""

    max_message_bytes: int = MAX_MESSAGE_BYTES
    """Messages above this are refused; replies are kept within it."""
    max_rounds: int = 64
    """Messages a session accepts before giving up on the peer, plus one for every
    ``ROUND_CREDIT`` differences found (a large difference needs many messages)."""
    max_pending_ids: int = 200_000
    """Differences held before the caller takes them (``take_have``, ``take_need``)."""
    idlist_threshold: int = 2 * BUCKETS
    """A range holding at most this many of our items is sent as an id list."""
    response_ids: int = 64
    """An id list is answered with ids if we hold at most this many in its range (else
    the range is split again)."""

    def __post_init__(self) -> None:
        needed = _reserve(self) + 64
        if self.max_message_bytes < needed:
            raise LocalProtocolError(
                f"max_message_bytes must be at least {needed} for these limits")
        if self.idlist_threshold < BUCKETS or self.response_ids < self.idlist_threshold:
            raise LocalProtocolError("need BUCKETS <= idlist_threshold <= response_ids")
        if self.max_rounds < 1 or self.max_pending_ids < 1:
            raise LocalProtocolError("max_rounds and max_pending_ids must be positive")


_BOUND_BYTES = 10 + 1 + ID_BYTES
"""The largest encoded bound."""


def _reserve(limits: Limits) -> int:
    """The most bytes one range of input can add to a reply."""
    split = BUCKETS * (_BOUND_BYTES + 1 + FINGERPRINT_BYTES)
    idlist = _BOUND_BYTES + 1 + 3 + limits.idlist_threshold * ID_BYTES
    listed = limits.max_message_bytes // ID_BYTES
    response = _BOUND_BYTES + 1 + 3 + limits.response_ids * ID_BYTES + 3 + listed // 8 + 1
    return max(split, idlist, response) + 2 * (_BOUND_BYTES + 1 + FINGERPRINT_BYTES)


# -- codec ----------------------------------------------------------------------------


def _put_varint(out: bytearray, value: int) -> None:
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


class _Reader:
    __slots__ = ("data", "position")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.position = 0

    def remaining(self) -> int:
        return len(self.data) - self.position

    def varint(self) -> int:
        value = shift = 0
        for _ in range(10):
            if self.position >= len(self.data):
                raise RemoteProtocolError("reconcile: message ends inside a number")
            byte = self.data[self.position]
            self.position += 1
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                if value >= 2**64:
                    raise RemoteProtocolError("reconcile: number above 2**64")
                return value
            shift += 7
        raise RemoteProtocolError("reconcile: number longer than 10 bytes")

    def take(self, count: int) -> bytes:
        if count > self.remaining():
            raise RemoteProtocolError("reconcile: message ends inside a field")
        chunk = self.data[self.position : self.position + count]
        self.position += count
        return chunk

    def ids(self, count: int) -> tuple[bytes, ...]:
        if count * ID_BYTES > self.remaining():
            raise RemoteProtocolError(f"reconcile: {count} ids announced, fewer sent")
        raw = self.take(count * ID_BYTES)
        return tuple(raw[i : i + ID_BYTES] for i in range(0, len(raw), ID_BYTES))


class _Writer:
    """Builds a message range by range; merges skipped ranges into the next one sent."""

    def __init__(self) -> None:
        self.out = bytearray([VERSION])
        self.last: Key = MINIMUM
        self.queries = 0
        """Ranges that need an answer (fingerprints and id lists)."""
        self.asked = False
        """Whether the message this one answers asked anything."""

    def __len__(self) -> int:
        return len(self.out)

    def _bound(self, bound: Key) -> None:
        timestamp, padded = bound
        if bound == INFINITY:
            _put_varint(self.out, 0)
            self.out.append(0)
        else:
            _put_varint(self.out, 1 + timestamp - self.last[0])
            prefix = padded.rstrip(b"\0")
            _put_varint(self.out, len(prefix))
            self.out += prefix
        self.last = bound

    def add(self, lower: Key, item: Range) -> None:
        if lower != self.last:
            self._bound(lower)
            self.out.append(Mode.SKIP)
        self._bound(item.upper)
        self.out.append(item.mode)
        if item.mode == Mode.FINGERPRINT:
            self.out += item.fingerprint
            self.queries += 1
        elif item.mode == Mode.IDLIST:
            _put_varint(self.out, len(item.ids))
            self.out += b"".join(item.ids)
            self.queries += 1
        elif item.mode == Mode.IDLIST_RESPONSE:
            _put_varint(self.out, len(item.ids))
            self.out += b"".join(item.ids)
            _put_varint(self.out, len(item.lacking))
            bits = bytearray((len(item.lacking) + 7) // 8)
            for index, lacking in enumerate(item.lacking):
                if lacking:
                    bits[index // 8] |= 1 << (index % 8)
            self.out += bits


def encode_message(ranges: list[Range]) -> bytes:
    """The wire form of ``ranges`` (each starting where the previous one ends)."""
    writer = _Writer()
    lower = MINIMUM
    for item in ranges:
        if item.mode != Mode.SKIP:
            writer.add(lower, item)
        lower = item.upper
    return bytes(writer.out)


def decode_message(data: bytes, max_bytes: int = MAX_MESSAGE_BYTES) -> list[Range]:
    """Parse a message; ``RemoteProtocolError`` if it is malformed or above ``max_bytes``."""
    if len(data) > max_bytes:
        raise RemoteProtocolError(f"reconcile: message of {len(data)} bytes, limit {max_bytes}")
    if not data or data[0] != VERSION:
        raise RemoteProtocolError("reconcile: unknown message version")
    reader = _Reader(data)
    reader.position = 1
    ranges: list[Range] = []
    last = MINIMUM
    while reader.remaining():
        if last == INFINITY:
            raise RemoteProtocolError("reconcile: range after the infinite bound")
        code = reader.varint()
        length = reader.varint()
        if length > ID_BYTES:
            raise RemoteProtocolError(f"reconcile: bound prefix of {length} bytes")
        prefix = reader.take(length)
        if code == 0:
            if length:
                raise RemoteProtocolError("reconcile: the infinite bound has an id prefix")
            upper = INFINITY
        else:
            timestamp = last[0] + code - 1
            if timestamp > MAX_TIMESTAMP:
                raise RemoteProtocolError("reconcile: bound timestamp above 2**63 - 1")
            upper = (timestamp, prefix.ljust(ID_BYTES, b"\0"))
        if upper <= last:
            raise RemoteProtocolError("reconcile: bounds do not increase")
        last = upper
        try:
            mode = Mode(reader.varint())
        except ValueError:
            raise RemoteProtocolError("reconcile: unknown range mode") from None
        if mode == Mode.SKIP:
            ranges.append(Range(upper, mode))
        elif mode == Mode.FINGERPRINT:
            ranges.append(Range(upper, mode, fingerprint=reader.take(FINGERPRINT_BYTES)))
        elif mode == Mode.IDLIST:
            ranges.append(Range(upper, mode, ids=reader.ids(reader.varint())))
        else:
            ids = reader.ids(reader.varint())
            listed = reader.varint()
            if listed > 8 * reader.remaining():
                raise RemoteProtocolError("reconcile: bitmap longer than the message")
            bits = reader.take((listed + 7) // 8)
            if listed % 8 and bits[-1] >> (listed % 8):
                raise RemoteProtocolError("reconcile: bits set past the bitmap's end")
            lacking = tuple(bool(bits[i // 8] >> (i % 8) & 1) for i in range(listed))
            ranges.append(Range(upper, mode, ids=ids, lacking=lacking))
    return ranges


# -- the state machine ----------------------------------------------------------------


class State(enum.Enum):
    READY = "ready"
    """Nothing sent or received yet."""
    WAITING = "waiting"
    """We sent a message that asks something; the peer's reply is due."""
    DONE = "done"
    """Nothing more to ask: ``have`` and ``need`` are complete."""
    FAILED = "failed"
    """The peer broke the protocol; the session is over."""


class _Input(enum.Enum):
    INITIATE = "initiate"
    ASKED = "asked"  # we processed a message and our reply asks something
    ANSWERED = "answered"  # we processed a message and have nothing more to ask
    BROKEN = "broken"  # the peer's message broke the protocol


_TRANSITIONS: dict[tuple[State, _Input], State] = {
    (State.READY, _Input.INITIATE): State.WAITING,
    (State.READY, _Input.ASKED): State.WAITING,
    (State.READY, _Input.ANSWERED): State.DONE,
    (State.READY, _Input.BROKEN): State.FAILED,
    (State.WAITING, _Input.ASKED): State.WAITING,
    (State.WAITING, _Input.ANSWERED): State.DONE,
    (State.WAITING, _Input.BROKEN): State.FAILED,
}


@dataclass(slots=True)
class Reconciler:
    """One side of one reconciliation over ``index``.

    The initiator calls ``initiate()`` and sends the result; each side passes every message
    it receives to ``receive()`` and sends back what that returns, until it returns None.
    Then ``state`` is DONE and ``have``/``need`` hold the differences (also while running:
    the caller may take them early with ``take_have``/``take_need``). The index must not
    change during the session.
    """

    index: RangeIndex
    limits: Limits = field(default_factory=Limits)
    state: State = State.READY
    have: list[bytes] = field(default_factory=list)
    """Ids we hold that the peer lacks."""
    need: list[bytes] = field(default_factory=list)
    """Ids the peer holds that we lack."""
    rounds: int = 0
    """Messages received."""
    found: int = 0
    """Differences found (taken or not)."""
    bytes_sent: int = 0
    bytes_received: int = 0
    _pending: dict[tuple[Key, Key], tuple[bytes, ...]] = field(default_factory=dict)
    """Id lists in our last message, by range, awaiting the peer's response."""

    def _move(self, event: _Input) -> None:
        target = _TRANSITIONS.get((self.state, event))
        if target is None:
            raise LocalProtocolError(f"reconcile: cannot {event.value} when {self.state.value}")
        self.state = target

    def initiate(self) -> bytes:
        """The first message of the session (initiator only)."""
        self._move(_Input.INITIATE)
        writer = _Writer()
        count, total = self.index.summary(MINIMUM, INFINITY)
        self._describe(writer, MINIMUM, INFINITY, count, total)
        return self._sent(writer)

    def receive(self, message: bytes) -> bytes | None:
        """Process the peer's message; the reply to send, or None when there is none (then
        the session is DONE). ``RemoteProtocolError`` if the peer broke the protocol."""
        if self.state not in (State.READY, State.WAITING):
            raise LocalProtocolError(f"reconcile: cannot receive when {self.state.value}")
        try:
            reply = self._process(message)
        except RemoteProtocolError:
            self._move(_Input.BROKEN)
            raise
        if reply.queries:
            self._move(_Input.ASKED)
            return self._sent(reply)
        self._move(_Input.ANSWERED)
        # A message that asked something gets an answer, if only an empty one.
        return self._sent(reply) if reply.asked or len(reply) > 1 else None

    def take_have(self) -> list[bytes]:
        """The ``have`` ids found so far, removed from ``have``."""
        taken, self.have = self.have, []
        return taken

    def take_need(self) -> list[bytes]:
        """The ``need`` ids found so far, removed from ``need``."""
        taken, self.need = self.need, []
        return taken

    def _sent(self, writer: _Writer) -> bytes:
        data = bytes(writer.out)
        self.bytes_sent += len(data)
        return data

    def _process(self, message: bytes) -> _Writer:
        self.rounds += 1
        self.bytes_received += len(message)
        allowed = self.limits.max_rounds + self.found // ROUND_CREDIT
        if self.rounds > allowed:
            raise RemoteProtocolError(f"reconcile: more than {allowed} rounds")
        ranges = decode_message(message, self.limits.max_message_bytes)
        pending, self._pending = self._pending, {}
        writer = _Writer()
        writer.asked = any(item.mode in (Mode.FINGERPRINT, Mode.IDLIST) for item in ranges)
        budget = self.limits.max_message_bytes - _reserve(self.limits)
        lower = MINIMUM
        for item in ranges:
            if item.mode == Mode.SKIP:
                lower = item.upper
                continue
            if len(writer) > budget:
                # The reply is full: everything from here on is left to the next round,
                # as one fingerprint that the peer will compare (and split if it differs).
                count, total = self.index.summary(lower, INFINITY)
                writer.add(lower, Range(INFINITY, Mode.FINGERPRINT,
                                        fingerprint=fingerprint(count, total)))
                break
            if item.mode == Mode.FINGERPRINT:
                count, total = self.index.summary(lower, item.upper)
                if fingerprint(count, total) != item.fingerprint:
                    self._describe(writer, lower, item.upper, count, total)
            elif item.mode == Mode.IDLIST:
                self._answer_list(writer, lower, item)
            else:
                listed = pending.get((lower, item.upper))
                if listed is None:
                    raise RemoteProtocolError("reconcile: response to an id list never sent")
                self._read_response(listed, item)
            lower = item.upper
        return writer

    def _describe(self, writer: _Writer, lower: Key, upper: Key, count: int,
                  total: int) -> None:
        """Send our view of a range: its ids if few, else fingerprints of its parts."""
        if count <= self.limits.idlist_threshold:
            ids = tuple(key[1] for key in self.index.keys(lower, upper))
            writer.add(lower, Range(upper, Mode.IDLIST, ids=ids))
            self._pending[(lower, upper)] = ids
            return
        bounds = [*self.index.split(lower, upper, count, BUCKETS), upper]
        start = lower
        for bound in bounds:
            part_count, part_total = self.index.summary(start, bound)
            writer.add(start, Range(bound, Mode.FINGERPRINT,
                                    fingerprint=fingerprint(part_count, part_total)))
            start = bound

    def _answer_list(self, writer: _Writer, lower: Key, item: Range) -> None:
        theirs = set(item.ids)
        if len(theirs) != len(item.ids):
            raise RemoteProtocolError("reconcile: an id list repeats an id")
        count, total = self.index.summary(lower, item.upper)
        if count > self.limits.response_ids:
            self._describe(writer, lower, item.upper, count, total)
            return
        only_ours = []
        ours = set()
        for _, item_id in self.index.keys(lower, item.upper):
            ours.add(item_id)
            if item_id not in theirs:
                only_ours.append(item_id)
        lacking = tuple(item_id not in ours for item_id in item.ids)
        self._record(only_ours, [i for i, lack in zip(item.ids, lacking, strict=True) if lack])
        writer.add(lower, Range(item.upper, Mode.IDLIST_RESPONSE, ids=tuple(only_ours),
                                lacking=lacking))

    def _read_response(self, listed: tuple[bytes, ...], item: Range) -> None:
        if len(item.lacking) != len(listed):
            raise RemoteProtocolError("reconcile: bitmap does not match the id list")
        mine = set(listed)
        theirs = [item_id for item_id in item.ids if item_id not in mine]
        if len(set(item.ids)) != len(item.ids):
            raise RemoteProtocolError("reconcile: a response repeats an id")
        self._record([i for i, lack in zip(listed, item.lacking, strict=True) if lack], theirs)

    def _record(self, have: list[bytes], need: list[bytes]) -> None:
        if len(self.have) + len(self.need) + len(have) + len(need) > self.limits.max_pending_ids:
            raise RemoteProtocolError(
                f"reconcile: more than {self.limits.max_pending_ids} differences pending")
        self.have += have
        self.need += need
        self.found += len(have) + len(need)


def reconcile(first: Reconciler, second: Reconciler) -> Iterator[tuple[str, bytes]]:
    """Run a session between two local sides, yielding ``(sender, message)`` with sender
    ``"first"`` or ``"second"``: for tests and benchmarks."""
    message: bytes | None = first.initiate()
    sides = (("first", first), ("second", second))
    turn = 0
    while message is not None:
        yield sides[turn][0], message
        turn ^= 1
        message = sides[turn][1].receive(message)


__all__ = ["BUCKETS", "INFINITY", "MINIMUM", "ZERO_ID", "Limits", "Mode", "Range",
           "Reconciler", "State", "decode_message", "encode_message", "reconcile"]
