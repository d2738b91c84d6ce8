"""A ``RangeIndex`` over a SQLite table, for reconciling sets larger than memory.

Each item row holds its timestamp, its id and the id's eight 32-bit little-endian limbs
(``l0``..``l7``). One index covers ``(scope, ts, id, l0..l7)``, so a range's count and
fingerprint sum are one aggregate query that SQLite answers from the index alone (the
limb sums cannot overflow below 2**31 items), and the ids of a range stream from a cursor.
Python holds a few keys per query, whatever the table's size.
"""

from __future__ import annotations

import sqlite3
import struct
from collections.abc import Iterator

from shoal.core.rangeindex import INFINITY, SUM_MODULUS, Key, separating_bound
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


def _check_name(name: str) -> str:
    if not name.isidentifier():
        raise LocalProtocolError(f"not an SQL identifier: {name!r}")
    return name


class SqliteIndex:
    """``RangeIndex`` over the rows of ``table`` whose ``scope`` column equals ``value``
    (every row if ``scope`` is None)."""

    def __init__(self, db: sqlite3.Connection, table: str, scope: str | None = None,
                 value: object = None) -> None:
        self._db = db
        _check_name(table)
        self._table = table
        self._scope_sql = f"{_check_name(scope)} = ? AND " if scope else ""
        self._scope_args: tuple[object, ...] = (value,) if scope else ()
        sums = ", ".join(f"SUM({limb})" for limb in LIMBS)
        self._summary_sql = f"SELECT COUNT(*), {sums} FROM {table} WHERE {self._scope_sql}"

    def _where(self, lower: Key, upper: Key) -> tuple[str, tuple[object, ...]]:
        sql = "(ts, id) >= (?, ?)"
        args: tuple[object, ...] = (*self._scope_args, lower[0], lower[1])
        if upper != INFINITY:
            sql += " AND (ts, id) < (?, ?)"
            args += (upper[0], upper[1])
        return sql, args

    def summary(self, lower: Key, upper: Key) -> tuple[int, int]:
        sql, args = self._where(lower, upper)
        row = self._db.execute(self._summary_sql + sql, args).fetchone()
        total = 0
        for position, value in enumerate(row[1:]):
            total += (value or 0) << (32 * position)
        return row[0], total % SUM_MODULUS

    def split(self, lower: Key, upper: Key, count: int, parts: int) -> list[Key]:
        cuts = sorted({count * part // parts for part in range(1, parts)} - {0})
        bounds: list[Key] = []
        start, rank = lower, 0
        for cut in cuts:
            sql, args = self._where(start, upper)
            rows = self._db.execute(
                f"SELECT ts, id FROM {self._table} WHERE {self._scope_sql}{sql} "
                "ORDER BY ts, id LIMIT 2 OFFSET ?", (*args, cut - rank - 1)).fetchall()
            if len(rows) < 2:
                break
            before, after = (rows[0][0], rows[0][1]), (rows[1][0], rows[1][1])
            bounds.append(separating_bound(before, after))
            start, rank = after, cut
        return bounds

    def keys(self, lower: Key, upper: Key) -> Iterator[Key]:
        sql, args = self._where(lower, upper)
        cursor = self._db.execute(
            f"SELECT ts, id FROM {self._table} WHERE {self._scope_sql}{sql} ORDER BY ts, id",
            args)
        yield from cursor
