"""Ordered sets of (timestamp, id) items, summarised by range, for set reconciliation.

Theory of operation
-------------------
Reconciliation (``shoal.core.reconcile``) never asks for a whole set. It asks an index
three things about a half-open range ``[lower, upper)`` of keys:

- ``summary``: how many items lie in it and the sum of their ids, each read as a 256-bit
  little-endian integer, modulo 2**256 (``fingerprint`` hashes the two into 16 bytes);
- ``split``: bounds that cut it into parts of about equal count;
- ``keys``: its items in order (asked only of ranges that hold few).

A key is a ``(timestamp, id)`` tuple: ``timestamp`` an integer below ``2**63``, ``id`` 32
bytes. Bounds are keys too; a bound sent on the wire carries only as many leading id bytes
as it needs (the rest are zero), and ``INFINITY`` is past every key. An index that answers
these from a database with an ordered index (see ``shoal.groups.index``) lets two sides of a
million items each find one difference while holding only a few keys in memory at a time.
``SortedIndex`` answers them from a sorted list, for sets that fit in memory.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Protocol

from shoal.errors import LocalProtocolError

ID_BYTES = 32
MAX_TIMESTAMP = 2**63 - 1
"""The largest item timestamp (what a signed 64-bit database integer holds)."""
SUM_MODULUS = 2**256
FINGERPRINT_BYTES = 16

Key = tuple[int, bytes]
"""``(timestamp, 32-byte id)``: an item, or a bound (an id padded with zero bytes)."""

ZERO_ID = bytes(ID_BYTES)
MINIMUM: Key = (0, ZERO_ID)
"""The lowest bound: every key is at or above it."""
INFINITY: Key = (2**64, ZERO_ID)
"""The bound past every key."""


def fingerprint(count: int, total: int) -> bytes:
    """The 16-byte fingerprint of a range holding ``count`` items whose ids sum to ``total``
    (mod 2**256). The sum can be kept up to date item by item; the hash over it and the
    count makes ranges that differ collide only by chance."""
    digest = hashlib.sha256(total.to_bytes(32, "little") + count.to_bytes(8, "little"))
    return digest.digest()[:FINGERPRINT_BYTES]


def id_value(item_id: bytes) -> int:
    """An id as the integer its fingerprint sum adds."""
    return int.from_bytes(item_id, "little")


def check_key(key: Key) -> Key:
    """``key`` if it is a valid item key; ``LocalProtocolError`` otherwise."""
    timestamp, item_id = key
    if not 0 <= timestamp <= MAX_TIMESTAMP:
        raise LocalProtocolError(f"an item timestamp is 0..2**63-1, got {timestamp}")
    if len(item_id) != ID_BYTES:
        raise LocalProtocolError(f"an item id is {ID_BYTES} bytes, got {len(item_id)}")
    return (timestamp, bytes(item_id))


def separating_bound(before: Key, after: Key) -> Key:
    """The shortest bound above ``before`` and at or below ``after`` (``before < after``):
    the timestamp of ``after`` alone when the timestamps differ, else as many leading
    bytes of its id as tell it from ``before``'s."""
    if before[0] != after[0]:
        return (after[0], ZERO_ID)
    shared = 0
    while before[1][shared] == after[1][shared]:
        shared += 1
    return (after[0], after[1][: shared + 1].ljust(ID_BYTES, b"\0"))


class RangeIndex(Protocol):
    """What reconciliation asks of a set (all ranges half-open, ``lower < upper``)."""

    def summary(self, lower: Key, upper: Key) -> tuple[int, int]:
        """``(count, sum of ids mod 2**256)`` over the range."""
        ...

    def split(self, lower: Key, upper: Key, count: int, parts: int) -> list[Key]:
        """``parts - 1`` increasing bounds inside the range that cut its ``count`` items
        into ``parts`` runs of nearly equal size (``count >= parts``)."""
        ...

    def keys(self, lower: Key, upper: Key) -> Iterator[Key]:
        """The range's items in increasing order."""
        ...


def split_sorted(items: Iterable[Key], count: int, parts: int) -> list[Key]:
    """``RangeIndex.split`` over ``count`` items given in order, read once."""
    cuts = {count * part // parts for part in range(1, parts)}
    last = max(cuts, default=0)
    bounds: list[Key] = []
    previous: Key | None = None
    for rank, item in enumerate(items):
        if rank in cuts and previous is not None:
            bounds.append(separating_bound(previous, item))
        if rank >= last:
            break
        previous = item
    return bounds


class SortedIndex:
    """A ``RangeIndex`` over a sorted list in memory, with running sums so that a range's
    summary costs two binary searches."""

    def __init__(self, items: Iterable[Key] = ()) -> None:
        self._keys: list[Key] = sorted({check_key(item) for item in items})
        self._sums: list[int] = [0]
        self._rebuild_sums(0)

    def _rebuild_sums(self, start: int) -> None:
        del self._sums[start + 1 :]
        total = self._sums[start]
        for item in self._keys[start:]:
            total = (total + id_value(item[1])) % SUM_MODULUS
            self._sums.append(total)

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: object) -> bool:
        position = bisect.bisect_left(self._keys, key)  # type: ignore[arg-type]
        return position < len(self._keys) and self._keys[position] == key

    def add(self, key: Key) -> bool:
        """Insert an item; False if it was there already."""
        key = check_key(key)
        position = bisect.bisect_left(self._keys, key)
        if position < len(self._keys) and self._keys[position] == key:
            return False
        self._keys.insert(position, key)
        self._rebuild_sums(position)
        return True

    def remove(self, key: Key) -> bool:
        """Delete an item; False if it was absent."""
        position = bisect.bisect_left(self._keys, key)
        if position == len(self._keys) or self._keys[position] != key:
            return False
        del self._keys[position]
        self._rebuild_sums(position)
        return True

    def _positions(self, lower: Key, upper: Key) -> tuple[int, int]:
        return bisect.bisect_left(self._keys, lower), bisect.bisect_left(self._keys, upper)

    def summary(self, lower: Key, upper: Key) -> tuple[int, int]:
        start, end = self._positions(lower, upper)
        return end - start, (self._sums[end] - self._sums[start]) % SUM_MODULUS

    def split(self, lower: Key, upper: Key, count: int, parts: int) -> list[Key]:
        start, _ = self._positions(lower, upper)
        return split_sorted(iter(self._keys[start : start + count]), count, parts)

    def keys(self, lower: Key, upper: Key) -> Iterator[Key]:
        start, end = self._positions(lower, upper)
        return iter(self._keys[start:end])

    def items(self) -> Sequence[Key]:
        """Every item, in order."""
        return tuple(self._keys)
