"""Reconciliation of two stores that differ a little: round trips, bytes, time, memory.

    python bench/sync.py --json [--sizes 1000,100000,1000000] [--diffs 1,100,10000]

For each size N, two SQLite item tables with block sums (``shoal.groups.index``, the index
a post store reconciles through) hold the same N items (time in ms over 30 days, random
32-byte id).
For each difference D, one side then gets ceil(D/2) items of its own and the other
floor(D/2), and the two sides reconcile (``shoal.core.reconcile``, default limits) in one
process, each on its own database connection. Printed, one JSON object per (N, D):
``round_trips`` (messages / 2, rounded up), ``bytes_initiator`` and ``bytes_responder``
(sent by each), ``seconds`` (both sides' work together), ``python_peak_kib`` (the Python
heap's peak during the session, by tracemalloc, in a second run) and ``rss_mib`` (the
process's peak resident memory so far, which includes building the tables). The found
differences are checked against the items added. The tables live in a temporary folder,
built once per N with bulk inserts.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import shutil
import sqlite3
import tempfile
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

from shoal.core.reconcile import Reconciler, reconcile
from shoal.groups.index import BLOCK_BITS, SqliteIndex, create_blocks, create_item_table, limbs

START_MS = 1_760_000_000_000
SPAN_MS = 30 * 86_400_000


def _rows(count: int, rng: random.Random) -> Iterator[tuple[object, ...]]:
    """``count`` items in key order (increasing times), so inserts append to the B-tree."""
    step = SPAN_MS // count
    for index in range(count):
        item_id = rng.randbytes(32)
        yield (START_MS + index * step + rng.randrange(step), item_id, *limbs(item_id))


def build(folder: Path, count: int, seed: int) -> tuple[Path, Path]:
    """Two databases holding the same ``count`` items."""
    first = folder / f"a-{count}.sqlite3"
    db = sqlite3.connect(first)
    db.execute("PRAGMA journal_mode=OFF")
    db.execute("PRAGMA synchronous=OFF")
    create_item_table(db, "items")
    create_blocks(db, "items")
    with db:
        db.executemany("INSERT INTO items VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       _rows(count, random.Random(seed)))
    db.close()
    second = folder / f"b-{count}.sqlite3"
    shutil.copyfile(first, second)
    return first, second


def _extra(count: int, rng: random.Random) -> list[tuple[object, ...]]:
    rows = []
    for _ in range(count):
        item_id = rng.randbytes(32)
        rows.append((START_MS + rng.randrange(SPAN_MS), item_id, *limbs(item_id)))
    return rows


def _session(first: sqlite3.Connection, second: sqlite3.Connection):
    a = Reconciler(SqliteIndex(first, "items", block_bits=BLOCK_BITS))
    b = Reconciler(SqliteIndex(second, "items", block_bits=BLOCK_BITS))
    messages = sum(1 for _ in reconcile(a, b))
    return a, b, messages


def measure(paths: tuple[Path, Path], count: int, difference: int, seed: int) -> dict:
    rng = random.Random(seed * 7919 + difference)
    only_first, only_second = _extra((difference + 1) // 2, rng), _extra(difference // 2, rng)
    first, second = sqlite3.connect(paths[0]), sqlite3.connect(paths[1])
    insert = "INSERT INTO items VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    with first:
        first.executemany(insert, only_first)
    with second:
        second.executemany(insert, only_second)
    try:
        started = time.perf_counter()
        a, b, messages = _session(first, second)
        seconds = time.perf_counter() - started
        assert sorted(a.have) == sorted(row[1] for row in only_first)
        assert sorted(a.need) == sorted(row[1] for row in only_second)
        tracemalloc.start()
        _session(first, second)
        python_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    finally:
        for db, rows in ((first, only_first), (second, only_second)):
            with db:
                db.executemany("DELETE FROM items WHERE ts = ? AND id = ?",
                               [row[:2] for row in rows])
            db.close()
    return {
        "items": count, "difference": difference, "messages": messages,
        "round_trips": (messages + 1) // 2, "bytes_initiator": a.bytes_sent,
        "bytes_responder": b.bytes_sent, "bytes_total": a.bytes_sent + b.bytes_sent,
        "seconds": round(seconds, 3), "python_peak_kib": round(python_peak / 1024),
        "rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,100000,1000000")
    parser.add_argument("--diffs", default="1,100,10000")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="JSON lines (the only output)")
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="shoal-sync-") as scratch:
        for count in (int(size) for size in arguments.sizes.split(",")):
            started = time.perf_counter()
            paths = build(Path(scratch), count, arguments.seed)
            build_seconds = round(time.perf_counter() - started, 1)
            for difference in (int(diff) for diff in arguments.diffs.split(",")):
                result = measure(paths, count, difference, arguments.seed)
                result["build_seconds"] = build_seconds
                print(json.dumps(result), flush=True)
            for path in paths:
                path.unlink()


if __name__ == "__main__":
    main()
