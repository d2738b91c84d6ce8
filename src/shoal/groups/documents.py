"""Shared documents: a pycrdt ``Doc`` whose updates travel as group posts.

Theory of operation
-------------------
A document named NAME lives in the posts of topic ``doc:NAME``. Local edits to ``doc``
(a ``pycrdt.Doc``: Yrs, whose update format Yjs shares) are collected as updates;
``take_update`` merges those not yet published into one, to be posted with the parents it
names: the document's current *heads*, the posts applied here that no applied post follows.
A member applies posts of the topic with ``apply_post`` in whatever order they arrive; a
post waits until every parent is applied, so updates reach Yrs in a causal order (Yrs does
not reliably merge an update whose causal past is missing and arrives later). Merging
concurrent updates is commutative, so every member that holds the same posts holds the
same document. Updates applied from posts are not collected again: a document never
echoes what it received.

Needs the ``documents`` extra (``pip install shoal[documents]``).
"""

from __future__ import annotations

from dataclasses import dataclass

import pycrdt

from shoal.core.groups.posts import MAX_PARENTS, MAX_TOPIC_BYTES, Post
from shoal.errors import LocalProtocolError, RemoteProtocolError

TOPIC_PREFIX = "doc:"
MAX_WAITING = 10_000
"""Posts held back for a missing parent before new ones are refused."""


def document_topic(name: str) -> str:
    """The post topic of document ``name``."""
    topic = TOPIC_PREFIX + name
    if not name or len(topic.encode()) > MAX_TOPIC_BYTES:
        raise LocalProtocolError(f"a document name is 1..{MAX_TOPIC_BYTES - 4} bytes")
    return topic


@dataclass(frozen=True, slots=True)
class LocalUpdate:
    """Local edits to publish: post ``data`` on the document's topic with ``parents``."""

    data: bytes
    parents: tuple[bytes, ...]


class SharedDocument:
    """A ``pycrdt.Doc`` kept in step with a group through the posts of one topic."""

    def __init__(self, name: str, doc: pycrdt.Doc | None = None) -> None:
        self.name = name
        self.topic = document_topic(name)
        self.doc = doc if doc is not None else pycrdt.Doc()
        self.applied: set[bytes] = set()
        """Ids of the posts merged into ``doc`` (ours and others')."""
        self.heads: set[bytes] = set()
        self._waiting: dict[bytes, Post] = {}
        self._local: list[bytes] = []
        self._applying = False
        self._subscription = self.doc.observe(self._on_update)

    def _on_update(self, event: pycrdt.TransactionEvent) -> None:
        if not self._applying:
            self._local.append(event.update)

    def take_update(self) -> LocalUpdate | None:
        """Every local edit since the last call as one update, with the parents to post it
        with; None if there was none. Call ``published`` with the post's id."""
        if not self._local:
            return None
        updates, self._local = self._local, []
        data = updates[0] if len(updates) == 1 else pycrdt.merge_updates(*updates)
        return LocalUpdate(data, tuple(sorted(self.heads))[:MAX_PARENTS])

    def published(self, post_id: bytes, update: LocalUpdate) -> None:
        """Record that ``update`` went out as post ``post_id``."""
        self._advance(post_id, update.parents)

    def _advance(self, post_id: bytes, parents: tuple[bytes, ...]) -> None:
        self.applied.add(post_id)
        self.heads.difference_update(parents)
        self.heads.add(post_id)

    def apply_post(self, post: Post) -> None:
        """Merge the update a post of this document carries, once its parents are merged
        (until then it waits, see ``missing``). ``RemoteProtocolError`` if malformed."""
        if post.topic != self.topic:
            raise LocalProtocolError(f"a post of {post.topic!r}, not of {self.topic!r}")
        if post.id in self.applied or post.id in self._waiting:
            return
        if len(self._waiting) >= MAX_WAITING:
            raise RemoteProtocolError(f"document {self.name!r}: {MAX_WAITING} posts already "
                                      "wait for their parents")
        self._waiting[post.id] = post
        ready = [post] if self._ready(post) else []
        while ready:
            current = ready.pop()
            del self._waiting[current.id]
            self._merge(current.data)
            self._advance(current.id, current.parents)
            ready += [waiting for waiting in self._waiting.values()
                      if current.id in waiting.parents and self._ready(waiting)]

    def _ready(self, post: Post) -> bool:
        return all(parent in self.applied for parent in post.parents)

    def missing(self) -> set[bytes]:
        """Parents that waiting posts name and that have not been merged: fetch them."""
        return {parent for post in self._waiting.values() for parent in post.parents
                if parent not in self.applied and parent not in self._waiting}

    def _merge(self, update: bytes) -> None:
        self._applying = True
        try:
            self.doc.apply_update(update)
        except ValueError as exc:
            raise RemoteProtocolError(f"document {self.name!r}: bad update ({exc})") from None
        finally:
            self._applying = False

    def apply(self, update: bytes) -> None:
        """Merge a whole-document update (``state()`` of another copy) outside any post."""
        self._merge(update)

    def state(self) -> bytes:
        """The whole document as one update (what a page running Yjs starts from)."""
        return self.doc.get_update()

    def close(self) -> None:
        """Stop collecting local edits."""
        self.doc.unobserve(self._subscription)
