"""The post store: bounds under a flood, TTL, restart from disk, and sync through it."""

from __future__ import annotations

import random
import sqlite3

import pytest

from shoal.core.groups.posts import GroupAdmin, seal_post
from shoal.core.rangeindex import INFINITY, MINIMUM
from shoal.core.reconcile import Reconciler, reconcile
from shoal.errors import RemoteProtocolError
from shoal.groups.store import DAY_MS, STORE_FILE, PostStore, StoreError
from shoal.identity import Identity

NOW = 1_760_000_000_000
RANDOM = random.Random(0).randbytes


def person(seed: int) -> Identity:
    return Identity(random.Random(seed).randbytes(32))


@pytest.fixture(scope="module")
def admin():
    return GroupAdmin.create("g", random.Random(1).randbytes)


def post(admin, author, number, size=100, time_ms=None):
    return seal_post(author, admin.keys, data=number.to_bytes(4, "big") + bytes(size),
                     time_ms=NOW + number if time_ms is None else time_ms,
                     random_bytes=RANDOM)


def test_a_flood_from_one_author_pushes_out_only_its_own_posts(tmp_path, admin):
    store = PostStore(tmp_path / "s", max_bytes=20_000, max_author_bytes=8_000)
    honest = [person(i) for i in range(3)]
    kept = [post(admin, author, i) for i, author in enumerate(honest * 5)]
    for envelope in kept:
        assert store.add(envelope, NOW)
    flooder = person(99)
    flood = [post(admin, flooder, 1000 + number) for number in range(300)]
    for envelope in flood:
        store.add(envelope, NOW)
    assert all(store.has(envelope.id) for envelope in kept)
    assert store.author_bytes(flooder.public_key) <= 8_000
    assert store.total_bytes <= 20_000
    assert store.has(flood[-1].id) and not store.has(flood[0].id)


def test_many_flooders_evict_the_heaviest_first(tmp_path, admin):
    store = PostStore(tmp_path / "s", max_bytes=30_000, max_author_bytes=10_000)
    quiet = person(1)
    mine = [post(admin, quiet, number) for number in range(10)]
    for envelope in mine:
        store.add(envelope, NOW)
    for flooder in range(10):
        for number in range(60):
            store.add(post(admin, person(100 + flooder), 2000 + number), NOW)
        assert store.total_bytes <= 30_000
    assert all(store.has(envelope.id) for envelope in mine)
    assert store.total_bytes == sum(len(r) for r in store.envelopes(admin.keys.tag))


def test_posts_expire_after_the_ttl_and_stale_or_future_ones_are_refused(tmp_path, admin):
    store = PostStore(tmp_path / "s", ttl_ms=DAY_MS)
    author = person(1)
    old, new = post(admin, author, 1, time_ms=NOW), post(admin, author, 2, time_ms=NOW + 5)
    store.add(old, NOW)
    store.add(new, NOW)
    assert store.expire(NOW + DAY_MS) == 0
    assert store.expire(NOW + DAY_MS + 1) == 1
    assert not store.has(old.id) and store.has(new.id)
    assert store.total_bytes == len(new.raw) == store.author_bytes(author.public_key)
    with pytest.raises(StoreError) as stale:
        store.add(old, NOW + 2 * DAY_MS)
    assert stale.value.code == "ESTALE"
    with pytest.raises(StoreError) as future:
        store.add(post(admin, author, 3, time_ms=NOW + 3_600_000), NOW)
    assert future.value.code == "ERANGE"


def test_the_store_restarts_from_disk_as_it_was(tmp_path, admin):
    author = person(1)
    envelopes = [post(admin, author, number) for number in range(20)]
    with PostStore.in_data_dir(tmp_path) as store:
        for envelope in envelopes:
            store.add_raw(envelope.raw, NOW)
        store.set_parents(envelopes[1].id, [envelopes[0].id, bytes(32)])
        summary = store.index(admin.keys.tag).summary(MINIMUM, INFINITY)
        total = store.total_bytes
        mode = store._db.execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal" and (tmp_path / STORE_FILE).exists()
    with PostStore.in_data_dir(tmp_path) as store:
        assert store.total_bytes == total == store.author_bytes(author.public_key)
        assert store.index(admin.keys.tag).summary(MINIMUM, INFINITY) == summary
        assert store.get(envelopes[7].id) == envelopes[7].raw
        assert store.parents(envelopes[1].id) == sorted([envelopes[0].id, bytes(32)])
        assert store.missing_parents(admin.keys.tag) == [bytes(32)]
        assert store.add(envelopes[3], NOW) is False


def test_hostile_envelopes_and_files_get_typed_errors(tmp_path, admin):
    store = PostStore(tmp_path / "s")
    raw = bytearray(post(admin, person(1), 1).raw)
    raw[-1] ^= 1
    with pytest.raises(RemoteProtocolError):
        store.add_raw(bytes(raw), NOW)
    assert store.count() == 0 and store.total_bytes == 0
    junk = tmp_path / "junk"
    junk.write_bytes(b"not a database" * 100)
    with pytest.raises(StoreError):
        PostStore(junk)


def test_two_stores_sync_through_reconciliation(tmp_path, admin):
    first, second = PostStore(tmp_path / "a"), PostStore(tmp_path / "b")
    authors = [person(i) for i in range(4)]
    shared = [post(admin, authors[i % 4], i) for i in range(200)]
    for envelope in shared:
        first.add(envelope, NOW)
        second.add(envelope, NOW)
    for number in range(200, 230):
        (first if number % 3 else second).add(post(admin, authors[0], number), NOW)
    tag = admin.keys.tag
    a, b = Reconciler(first.index(tag)), Reconciler(second.index(tag))
    list(reconcile(a, b))
    for post_id in a.have:
        second.add_raw(first.get(post_id), NOW)
    for post_id in a.need:
        first.add_raw(second.get(post_id), NOW)
    assert len(a.have) == 20 and len(a.need) == 10
    assert list(first.envelopes(tag)) == list(second.envelopes(tag))
    sqlite3.connect(tmp_path / "a").close()  # another reader may open the file meanwhile
