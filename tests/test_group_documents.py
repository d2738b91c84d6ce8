"""Shared documents: two members editing offline converge after exchanging posts."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pycrdt = pytest.importorskip("pycrdt")

from shoal.core.groups.posts import GroupAdmin, open_post, parse_envelope, seal_post  # noqa: E402
from shoal.errors import LocalProtocolError, RemoteProtocolError  # noqa: E402
from shoal.groups.documents import SharedDocument  # noqa: E402
from shoal.identity import Identity  # noqa: E402

NOW = 1_760_000_000_000


def member(seed: int) -> tuple[Identity, SharedDocument]:
    document = SharedDocument("board")
    document.doc.get("text", type=pycrdt.Text)
    document.doc.get("cards", type=pycrdt.Map)
    return Identity(random.Random(seed).randbytes(32)), document


def publish(identity, document, keys, rng) -> list[bytes]:
    update = document.take_update()
    if update is None:
        return []
    envelope = seal_post(identity, keys, data=update.data, topic=document.topic,
                         parents=update.parents, time_ms=NOW, random_bytes=rng.randbytes)
    document.published(envelope.id, update)
    return [envelope.raw]


def edit(document: SharedDocument, rng: random.Random, steps: int) -> None:
    text, cards = document.doc["text"], document.doc["cards"]
    for _ in range(steps):
        choice = rng.randrange(3)
        if choice == 0:
            text.insert(rng.randrange(len(text) + 1), rng.choice("abcxyz"))
        elif choice == 1 and len(text):
            del text[rng.randrange(len(text))]
        else:
            cards[rng.choice("pqr")] = rng.randrange(100)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32))
def test_members_editing_offline_converge_in_any_order(seed):
    rng = random.Random(seed)
    admin = GroupAdmin.create("g", rng.randbytes)
    (alice, a), (bob, b) = member(1), member(2)
    posts_a: list[bytes] = []
    posts_b: list[bytes] = []
    for round_ in range(4):  # each edits and posts several times while apart
        edit(a, rng, rng.randrange(1, 6))
        posts_a += publish(alice, a, admin.keys, rng)
        edit(b, rng, rng.randrange(1, 6))
        posts_b += publish(bob, b, admin.keys, rng)
        if round_ == 1:  # they met once: b has a's first posts and edits on top of them
            for raw in posts_a:
                b.apply_post(open_post(parse_envelope(raw), admin.keys))
            edit(b, rng, 3)
            posts_b += publish(bob, b, admin.keys, rng)
    rng.shuffle(posts_a)
    rng.shuffle(posts_b)  # delivered out of order: later updates before earlier ones
    for raw in posts_b:
        a.apply_post(open_post(parse_envelope(raw), admin.keys))
    for raw in posts_a:
        b.apply_post(open_post(parse_envelope(raw), admin.keys))
    assert not a.missing() and not b.missing()
    assert a.heads == b.heads
    assert str(a.doc["text"]) == str(b.doc["text"])
    assert a.doc["cards"].to_py() == b.doc["cards"].to_py()
    assert a.take_update() is None and b.take_update() is None  # received edits not echoed
    fresh = SharedDocument("board")
    fresh.apply(a.state())
    assert str(fresh.doc.get("text", type=pycrdt.Text)) == str(a.doc["text"])


def test_bad_updates_and_names_get_typed_errors():
    _, document = member(1)
    with pytest.raises(RemoteProtocolError):
        document.apply(b"junk")
    admin = GroupAdmin.create("g", random.Random(2).randbytes)
    orphan = seal_post(Identity(bytes(32)), admin.keys, data=b"junk", topic="doc:board",
                       parents=[bytes(32)], time_ms=NOW, random_bytes=random.Random(5).randbytes)
    document.apply_post(open_post(orphan, admin.keys))  # waits for its parent, not applied
    assert document.missing() == {bytes(32)} and orphan.id not in document.applied
    with pytest.raises(LocalProtocolError):
        SharedDocument("")
    other = GroupAdmin.create("g", random.Random(3).randbytes)
    identity = Identity(bytes(32))
    envelope = seal_post(identity, other.keys, data=b"", topic="doc:other", time_ms=NOW,
                         random_bytes=random.Random(4).randbytes)
    with pytest.raises(LocalProtocolError):
        document.apply_post(open_post(envelope, other.keys))
