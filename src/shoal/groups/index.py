"""A ``RangeIndex`` over a SQLite table, for reconciling sets larger than memory.

Each item row holds its timestamp, its id and the id's eight 32-bit little-endian limbs
(``l0``..``l7``). One index covers ``(scope, ts, id, l0..l7)``, so a range's count and
fingerprint sum are one aggregate query that SQLite answers from the index alone (the
limb sums cannot overflow below 2**31 items), and the ids of a range stream from a cursor.
Python holds a few keys per query, whatever the table's size.

A wide range would still make SQLite read every row in it. With *blocks*, triggers keep
the count and limb sums of each time block (``2**block_bits`` ms; 2**18, about 4.4
minutes, by default) in a side table, so a range's summary reads the blocks wholly inside
it and only the rows of the two partial blocks at its ends, and a split steps over whole
blocks by their counts: the first rounds of a reconciliation over a million items read a
few thousand rows instead of a million.
"""

from __future__ import annotations

import sqlite3
import struct
from collections.abc import Iterator

from shoal.core.rangeindex import (
    INFINITY,
    MAX_TIMESTAMP,
    SUM_MODULUS,
    ZERO_ID,
    Key,
    Part,
    cut_ranks,
    separating_bound,
    sorted_parts,
)
from shoal.errors import LocalProtocolError

LIMBS = tuple(f"l{i}" for i in range(8))
ITEM_COLUMNS = "ts INTEGER NOT NULL, id BLOB NOT NULL, " + ", ".join(
    f"{limb} INTEGER NOT NULL" for limb in LIMBS)
"""The columns a table needs to be indexed (with a scope column of its own, if any)."""
_UNPACK = struct.Struct("<8I").unpack


def limbs(item_id: bytes) -> tuple[int, ...]:
    """The eight limb values stored with ``item_id``."""
    return _UNPACK(item_id)


def create_item_table(db: sqlite3.Connection, table: str) -> None:
    """A table of bare items (no scope), if absent: stored in key order with its limbs, so
    it is its own range index."""
    _check_name(table)
    db.execute(f"CREATE TABLE IF NOT EXISTS {table} ({ITEM_COLUMNS}, PRIMARY KEY (ts, id)) "
               "WITHOUT ROWID")


def create_range_index(db: sqlite3.Connection, table: str, scope: str | None = None) -> None:
    """The covering index ``SqliteIndex`` reads, if absent."""
    _check_name(table)
    lead = f"{_check_name(scope)}, " if scope else ""
    db.execute(f"CREATE INDEX IF NOT EXISTS {table}_ranges ON {table} "
               f"({lead}ts, id, {', '.join(LIMBS)})")


BLOCK_BITS = 18
SMALL_RANGE = 1024
"""Ranges of at most this many rows are cut in Python from one query's rows."""


def create_blocks(db: sqlite3.Connection, table: str, scope: str | None = None,
                  block_bits: int = BLOCK_BITS) -> None:
    """The block table of ``table`` and the triggers that keep it, if absent (create them
    before the first row goes in)."""
    _check_name(table)
    lead = f"{_check_name(scope)}, " if scope else ""
    new_lead = f"NEW.{scope}, " if scope else ""
    old_match = f"{scope} = OLD.{scope} AND " if scope else ""
    sums = ", ".join(f"{limb} INTEGER NOT NULL" for limb in LIMBS)
    db.execute(f"CREATE TABLE IF NOT EXISTS {table}_blocks ({lead}block INTEGER NOT NULL, "
               f"count INTEGER NOT NULL, {sums}, PRIMARY KEY ({lead}block)) WITHOUT ROWID")
    added = ", ".join(f"{limb} = {limb} + excluded.{limb}" for limb in LIMBS)
    removed = ", ".join(f"{limb} = {limb} - OLD.{limb}" for limb in LIMBS)
    new_limbs = ", ".join(f"NEW.{limb}" for limb in LIMBS)
    db.execute(f"CREATE TRIGGER IF NOT EXISTS {table}_blocks_add AFTER INSERT ON {table} "
               f"BEGIN INSERT INTO {table}_blocks VALUES ({new_lead}NEW.ts >> {block_bits}, "
               f"1, {new_limbs}) ON CONFLICT DO UPDATE SET count = count + 1, {added}; END")
    db.execute(f"CREATE TRIGGER IF NOT EXISTS {table}_blocks_remove AFTER DELETE ON {table} "
               f"BEGIN UPDATE {table}_blocks SET count = count - 1, {removed} WHERE "
               f"{old_match}block = OLD.ts >> {block_bits}; END")


def _check_name(name: str) -> str:
    if not name.isidentifier():
        raise LocalProtocolError(f"not an SQL identifier: {name!r}")
    return name


class SqliteIndex:
    """``RangeIndex`` over the rows of ``table`` whose ``scope`` column equals ``value``
    (every row if ``scope`` is None); ``block_bits`` as given to ``create_blocks``, if the
    table has blocks."""

    def __init__(self, db: sqlite3.Connection, table: str, scope: str | None = None,
                 value: object = None, block_bits: int | None = None) -> None:
        self._db = db
        _check_name(table)
        self._table = table
        self._scope_sql = f"{_check_name(scope)} = ? AND " if scope else ""
        self._scope_args: tuple[object, ...] = (value,) if scope else ()
        sums = ", ".join(f"SUM({limb})" for limb in LIMBS)
        self._summary_sql = f"SELECT COUNT(*), {sums} FROM {table} WHERE {self._scope_sql}"
        self._bits = block_bits
        self._blocks_sql = (f"SELECT SUM(count), {sums} FROM {table}_blocks WHERE "
                            f"{self._scope_sql}block >= ? AND block < ?")

    def _full_blocks(self, lower: Key, upper: Key) -> tuple[int, int] | None:
        """The blocks wholly inside the range (first, end), if there are at least two."""
        if self._bits is None:
            return None
        bits = self._bits
        if lower[1] == ZERO_ID:
            first = (lower[0] + (1 << bits) - 1) >> bits
        else:
            first = (lower[0] >> bits) + 1
        end = MAX_TIMESTAMP >> bits if upper == INFINITY else upper[0] >> bits
        return (first, end) if end - first >= 2 else None

    def _where(self, lower: Key, upper: Key) -> tuple[str, tuple[object, ...]]:
        sql = "(ts, id) >= (?, ?)"
        args: tuple[object, ...] = (*self._scope_args, lower[0], lower[1])
        if upper != INFINITY:
            sql += " AND (ts, id) < (?, ?)"
            args += (upper[0], upper[1])
        return sql, args

    def summary(self, lower: Key, upper: Key) -> tuple[int, int]:
        blocks = self._full_blocks(lower, upper)
        if blocks is None:
            return self._sum_rows(lower, upper)
        first, end = blocks
        bits = self._bits or 0
        row = self._db.execute(self._blocks_sql, (*self._scope_args, first, end)).fetchone()
        count, total = _row_sum(row)
        for part in (self._sum_rows(lower, (first << bits, ZERO_ID)),
                     self._sum_rows((end << bits, ZERO_ID), upper)):
            count += part[0]
            total += part[1]
        return count, total % SUM_MODULUS

    def _sum_rows(self, lower: Key, upper: Key) -> tuple[int, int]:
        if lower[0] > MAX_TIMESTAMP or lower >= upper:
            return 0, 0
        sql, args = self._where(lower, upper)
        return _row_sum(self._db.execute(self._summary_sql + sql, args).fetchone())

    def count(self, lower: Key, upper: Key) -> int:
        if self._full_blocks(lower, upper) is not None:
            return self.summary(lower, upper)[0]
        return self._count_rows(lower, upper)

    def _count_rows(self, lower: Key, upper: Key) -> int:
        sql, args = self._where(lower, upper)
        return self._db.execute(
            f"SELECT COUNT(*) FROM {self._table} WHERE {self._scope_sql}{sql}", args).fetchone()[0]

    def _seek(self, start: Key, skip: int, upper: Key) -> tuple[Key, int]:
        """A bound at or after ``start`` and how many items lie between it and the item
        ``skip`` places after ``start``: whole blocks are stepped over by their counts."""
        blocks = self._full_blocks(start, upper)
        if blocks is None:
            return start, skip
        first, end = blocks
        bits = self._bits or 0
        remaining = skip - self._count_rows(start, (first << bits, ZERO_ID))
        if remaining < 0:
            return start, skip
        position = (first << bits, ZERO_ID)
        for block, count in self._db.execute(
                f"SELECT block, count FROM {self._table}_blocks WHERE {self._scope_sql}"
                "block >= ? AND block < ? ORDER BY block", (*self._scope_args, first, end)):
            position = (block << bits, ZERO_ID)
            if remaining < count:
                return position, remaining
            remaining -= count
        return (end << bits, ZERO_ID), remaining

    def parts(self, lower: Key, upper: Key, count: int, parts: int) -> list[Part]:
        if count <= SMALL_RANGE:
            return sorted_parts(self.keys(lower, upper), count, parts, upper)
        result: list[Part] = []
        for bound in [*self.split(lower, upper, count, parts), upper]:
            result.append((bound, *self.summary(lower, bound)))
            lower = bound
        return result

    def split(self, lower: Key, upper: Key, count: int, parts: int) -> list[Key]:
        """The bounds between the runs of ``parts``, found by stepping over blocks."""
        cuts = cut_ranks(count, parts)
        bounds: list[Key] = []
        start, rank = lower, 0  # the item at rank ``rank`` is the first at or after start
        for cut in cuts:
            position, skip = self._seek(start, cut - rank, upper)
            sql, args = self._where(position, upper)
            row = self._db.execute(
                f"SELECT ts, id FROM {self._table} WHERE {self._scope_sql}{sql} "
                "ORDER BY ts, id LIMIT 1 OFFSET ?", (*args, skip)).fetchone()
            if row is None:
                break
            after = (row[0], row[1])
            before = self._db.execute(
                f"SELECT ts, id FROM {self._table} WHERE {self._scope_sql}(ts, id) < (?, ?) "
                "ORDER BY ts DESC, id DESC LIMIT 1", (*self._scope_args, *after)).fetchone()
            bounds.append(separating_bound((before[0], before[1]), after))
            start, rank = after, cut
        return bounds

    def keys(self, lower: Key, upper: Key) -> Iterator[Key]:
        sql, args = self._where(lower, upper)
        cursor = self._db.execute(
            f"SELECT ts, id FROM {self._table} WHERE {self._scope_sql}{sql} ORDER BY ts, id",
            args)
        yield from cursor


def _row_sum(row: tuple[int | None, ...]) -> tuple[int, int]:
    total = 0
    for position, value in enumerate(row[1:]):
        total += (value or 0) << (32 * position)
    return row[0] or 0, total % SUM_MODULUS
