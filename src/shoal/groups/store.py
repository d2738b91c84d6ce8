"""The post store: signed envelopes kept on disk for members and for others, within bounds.

Theory of operation
-------------------
One SQLite database (WAL mode) holds the envelopes of every group a node carries, member
or not. Each row keeps the envelope, its group tag, time, author and size, and the limbs
of its id, so that ``index(tag)`` is a ``RangeIndex`` over one group's posts that
reconciliation reads straight from a covering SQLite index and per-block sums kept by
triggers (``shoal.groups.index``).
Parents, which only members can read (they are inside the ciphertext), are kept apart by
the member who opened the post (``set_parents``), to find what is missing in a post's
causal past.

Bounds hold after every ``add``: at most ``max_bytes`` of envelopes in all and
``max_author_bytes`` per author; posts live ``ttl_ms`` after their own time (so every
node drops a post at the same time and sync does not bring it back). When the store is
full, the author holding the most bytes loses its oldest post first: an author who
floods the store pushes out its own posts, not the others'. Totals per author are kept
in a table, so the bounds cost no scan, and survive a restart.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path

from shoal.core.groups.posts import Envelope, parse_envelope
from shoal.errors import LocalProtocolError, ShoalError
from shoal.groups.index import (
    BLOCK_BITS,
    ITEM_COLUMNS,
    SqliteIndex,
    create_blocks,
    create_range_index,
    limbs,
)

STORE_FILE = "groups.sqlite3"
"""The store's file name in a node's data dir."""
DAY_MS = 86_400_000
_SCHEMA_VERSION = 1


class StoreError(ShoalError):
    """The store refused a post (too large, expired, too far in the future) or its file is
    unusable."""

    default_code = "EREFUSED"


class PostStore:
    """Envelopes of many groups in one SQLite file, bounded in bytes per author and in all."""

    def __init__(self, path: str | Path, *, max_bytes: int = 256 * 2**20,
                 max_author_bytes: int = 16 * 2**20, ttl_ms: int = 30 * DAY_MS,
                 max_future_ms: int = 600_000) -> None:
        if not 0 < max_author_bytes <= max_bytes:
            raise LocalProtocolError("need 0 < max_author_bytes <= max_bytes")
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.max_author_bytes = max_author_bytes
        self.ttl_ms = ttl_ms
        self.max_future_ms = max_future_ms
        try:
            self._db = sqlite3.connect(self.path)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            with self._db:
                self._create()
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path}: not a usable post store ({exc})", code="EIO") \
                from None
        self.total_bytes = self._db.execute(
            "SELECT COALESCE(SUM(bytes), 0) FROM authors").fetchone()[0]

    @classmethod
    def in_data_dir(cls, data_dir: str | Path, **bounds: int) -> PostStore:
        """The store of the node whose data dir is ``data_dir``."""
        folder = Path(data_dir)
        folder.mkdir(parents=True, exist_ok=True)
        return cls(folder / STORE_FILE, **bounds)

    def _create(self) -> None:
        db = self._db
        db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER)")
        row = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        if row is not None and row[0] != _SCHEMA_VERSION:
            raise sqlite3.DatabaseError(f"schema {row[0]}, this Shoal reads {_SCHEMA_VERSION}")
        db.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (_SCHEMA_VERSION,))
        db.execute(f"CREATE TABLE IF NOT EXISTS posts (tag BLOB NOT NULL, {ITEM_COLUMNS}, "
                   "author BLOB NOT NULL, size INTEGER NOT NULL, envelope BLOB NOT NULL)")
        db.execute("CREATE UNIQUE INDEX IF NOT EXISTS posts_id ON posts (id)")
        db.execute("CREATE INDEX IF NOT EXISTS posts_author ON posts (author, ts, id)")
        db.execute("CREATE INDEX IF NOT EXISTS posts_time ON posts (ts)")
        create_range_index(db, "posts", "tag")
        create_blocks(db, "posts", "tag")
        db.execute("CREATE TABLE IF NOT EXISTS parents (child BLOB NOT NULL, "
                   "parent BLOB NOT NULL, PRIMARY KEY (child, parent)) WITHOUT ROWID")
        db.execute("CREATE INDEX IF NOT EXISTS parents_parent ON parents (parent)")
        db.execute("CREATE TABLE IF NOT EXISTS authors (author BLOB PRIMARY KEY, "
                   "bytes INTEGER NOT NULL, posts INTEGER NOT NULL)")
        db.execute("CREATE INDEX IF NOT EXISTS authors_bytes ON authors (bytes)")

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> PostStore:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- adding and removing -------------------------------------------------------------

    def add_raw(self, raw: bytes, now_ms: int) -> Envelope:
        """Check and add an envelope received from a peer (``RemoteProtocolError`` if it
        is malformed or forged, ``StoreError`` if refused)."""
        envelope = parse_envelope(raw)
        self.add(envelope, now_ms)
        return envelope

    def add(self, envelope: Envelope, now_ms: int) -> bool:
        """Store a checked envelope; False if it was here already or, the store being full,
        was itself its author's oldest post and so was dropped at once."""
        size = len(envelope.raw)
        if size > self.max_author_bytes:
            raise StoreError(f"a post of {size} bytes is above the per-author bound")
        if envelope.time_ms < now_ms - self.ttl_ms:
            raise StoreError("the post is older than the store keeps posts", code="ESTALE")
        if envelope.time_ms > now_ms + self.max_future_ms:
            raise StoreError("the post is dated in the future", code="ERANGE")
        post_id = envelope.id
        with self._db:
            inserted = self._db.execute(
                "INSERT OR IGNORE INTO posts VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (envelope.tag, envelope.time_ms, post_id, *limbs(post_id), envelope.author,
                 size, envelope.raw)).rowcount
            if not inserted:
                return False
            self._count(envelope.author, size, 1)
            self._evict(envelope.author)
        return self.has(post_id)

    def _count(self, author: bytes, size: int, posts: int) -> None:
        self._db.execute(
            "INSERT INTO authors VALUES (?, ?, ?) ON CONFLICT (author) DO UPDATE SET "
            "bytes = bytes + excluded.bytes, posts = posts + excluded.posts",
            (author, size, posts))
        self.total_bytes += size

    def _evict(self, author: bytes) -> None:
        while self.author_bytes(author) > self.max_author_bytes:
            self._drop_oldest(author)
        while self.total_bytes > self.max_bytes:
            heaviest = self._db.execute(
                "SELECT author FROM authors ORDER BY bytes DESC LIMIT 1").fetchone()[0]
            self._drop_oldest(heaviest)

    def _drop_oldest(self, author: bytes) -> None:
        post_id, size = self._db.execute(
            "SELECT id, size FROM posts WHERE author = ? ORDER BY ts, id LIMIT 1",
            (author,)).fetchone()
        self._delete([(post_id, author, size)])

    def _delete(self, rows: Iterable[tuple[bytes, bytes, int]]) -> int:
        deleted = 0
        for post_id, author, size in rows:
            self._db.execute("DELETE FROM posts WHERE id = ?", (post_id,))
            self._db.execute("DELETE FROM parents WHERE child = ?", (post_id,))
            self._count(author, -size, -1)
            deleted += 1
        self._db.execute("DELETE FROM authors WHERE posts <= 0")
        return deleted

    def expire(self, now_ms: int) -> int:
        """Drop posts older than the TTL; how many."""
        with self._db:
            rows = self._db.execute("SELECT id, author, size FROM posts WHERE ts < ?",
                                    (now_ms - self.ttl_ms,)).fetchall()
            return self._delete(rows)

    def set_parents(self, post_id: bytes, parents: Iterable[bytes]) -> None:
        """Record a post's parents (read by a member who opened it)."""
        with self._db:
            self._db.executemany("INSERT OR IGNORE INTO parents VALUES (?, ?)",
                                 [(post_id, parent) for parent in parents])

    # -- reading -------------------------------------------------------------------------

    def has(self, post_id: bytes) -> bool:
        return self._db.execute("SELECT 1 FROM posts WHERE id = ?", (post_id,)).fetchone() \
            is not None

    def get(self, post_id: bytes) -> bytes | None:
        """The envelope with id ``post_id``, if held."""
        row = self._db.execute("SELECT envelope FROM posts WHERE id = ?",
                               (post_id,)).fetchone()
        return row[0] if row else None

    def envelopes(self, tag: bytes) -> Iterator[bytes]:
        """A group's envelopes, oldest first (streamed)."""
        for (raw,) in self._db.execute(
                "SELECT envelope FROM posts WHERE tag = ? ORDER BY ts, id", (tag,)):
            yield raw

    def parents(self, post_id: bytes) -> list[bytes]:
        return [row[0] for row in self._db.execute(
            "SELECT parent FROM parents WHERE child = ? ORDER BY parent", (post_id,))]

    def missing_parents(self, tag: bytes) -> list[bytes]:
        """Parents named by a group's posts that the store does not hold."""
        return [row[0] for row in self._db.execute(
            "SELECT DISTINCT parents.parent FROM parents JOIN posts ON posts.id = "
            "parents.child WHERE posts.tag = ? AND parents.parent NOT IN "
            "(SELECT id FROM posts)", (tag,))]

    def author_bytes(self, author: bytes) -> int:
        row = self._db.execute("SELECT bytes FROM authors WHERE author = ?",
                               (author,)).fetchone()
        return row[0] if row else 0

    def count(self, tag: bytes | None = None) -> int:
        if tag is None:
            return self._db.execute("SELECT COUNT(*) FROM posts").fetchone()[0]
        return self._db.execute("SELECT COUNT(*) FROM posts WHERE tag = ?",
                                (tag,)).fetchone()[0]

    def index(self, tag: bytes) -> SqliteIndex:
        """The reconciliation index over one group's posts (keys: time in ms, post id)."""
        return SqliteIndex(self._db, "posts", "tag", tag, block_bits=BLOCK_BITS)
