"""Range-based set reconciliation: exact differences, compact messages, hostile peers."""

from __future__ import annotations

import itertools
import random
import sqlite3

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shoal.core.rangeindex import INFINITY, MINIMUM, SortedIndex, fingerprint
from shoal.core.reconcile import (
    Limits,
    Mode,
    Range,
    Reconciler,
    State,
    decode_message,
    encode_message,
    reconcile,
)
from shoal.errors import LocalProtocolError, RemoteProtocolError
from shoal.groups.index import SqliteIndex, create_item_table, limbs

SMALL = Limits(max_message_bytes=2_000, idlist_threshold=16, response_ids=16)
"""Limits small enough that replies are cut short and id lists are split again."""

keys = st.binary(min_size=32, max_size=32).map(lambda item_id: (item_id[0] % 50, item_id))
"""An id and a timestamp that the id decides (an item's id is a hash over its timestamp):
few timestamps, so that many items share one and bounds need id prefixes."""


def run(first: SortedIndex, second: SortedIndex, limits: Limits | None = None):
    limits = limits or Limits()
    a, b = Reconciler(first, limits), Reconciler(second, limits)
    messages = list(reconcile(a, b))
    assert a.state is State.DONE and b.state is State.DONE
    return a, b, messages


def ids(items) -> set[bytes]:
    return {item[1] for item in items}


@settings(max_examples=150, deadline=None)
@given(st.sets(keys, max_size=120), st.sets(keys, max_size=120), st.sets(keys, max_size=120),
       st.sampled_from([Limits(), SMALL]))
def test_any_two_sets_reconcile_to_their_exact_difference(shared, left, right, limits):
    first, second = SortedIndex(shared | left), SortedIndex(shared | right)
    a, b, _ = run(first, second, limits)
    only_first = ids(first.items()) - ids(second.items())
    only_second = ids(second.items()) - ids(first.items())
    assert sorted(a.have) == sorted(only_first) and sorted(b.need) == sorted(only_first)
    assert sorted(a.need) == sorted(only_second) and sorted(b.have) == sorted(only_second)


def items(count: int, seed: int) -> list[tuple[int, bytes]]:
    rng = random.Random(seed)
    return [(rng.randrange(10**12), rng.randbytes(32)) for _ in range(count)]


def test_large_sets_differing_by_one_take_three_round_trips_and_little_bytes():
    shared = items(20_000, 1)
    extra = items(1, 2)
    a, b, messages = run(SortedIndex(shared + extra), SortedIndex(shared))
    assert a.have == [extra[0][1]] and b.need == [extra[0][1]] and not a.need
    assert len(messages) <= 6
    assert sum(len(message) for _, message in messages) < 2_000


def test_a_side_that_holds_nothing_learns_everything_through_cut_replies():
    everything = items(3_000, 3)
    a, b, messages = run(SortedIndex(), SortedIndex(everything), SMALL)
    assert sorted(a.need) == sorted(ids(everything)) and sorted(b.have) == sorted(a.need)
    assert max(len(message) for _, message in messages) <= SMALL.max_message_bytes


def sqlite_index(members) -> SqliteIndex:
    db = sqlite3.connect(":memory:")
    create_item_table(db, "items")
    db.executemany("INSERT INTO items VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                   [(ts, item_id, *limbs(item_id)) for ts, item_id in members])
    return SqliteIndex(db, "items")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sets(keys, max_size=150), st.sets(keys, max_size=40))
def test_the_sqlite_index_answers_like_the_sorted_one(shared, extra):
    memory, database = SortedIndex(shared), sqlite_index(shared)
    bounds = sorted({MINIMUM, INFINITY, *(key for key in extra)})
    for lower, upper in itertools.pairwise(bounds):
        assert database.summary(lower, upper) == memory.summary(lower, upper)
        assert list(database.keys(lower, upper)) == list(memory.keys(lower, upper))
        count = memory.summary(lower, upper)[0]
        if count >= 16:
            assert database.split(lower, upper, count, 16) == memory.split(
                lower, upper, count, 16)
    a = Reconciler(database, SMALL)
    b = Reconciler(SortedIndex(shared | extra), SMALL)
    list(reconcile(a, b))
    assert sorted(a.need) == sorted(ids(extra - shared)) and not a.have


# -- hostile peers ---------------------------------------------------------------------


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_the_remote_error(data):
    side = Reconciler(SortedIndex(items(100, 4)), SMALL)
    try:
        side.receive(b"\x01" + data)
    except RemoteProtocolError:
        assert side.state is State.FAILED
    else:
        assert side.state in (State.WAITING, State.DONE)


class CountingIndex(SortedIndex):
    """Counts the keys and summaries a peer's message makes us read."""

    work = 0

    def summary(self, lower, upper):
        self.work += 1
        return super().summary(lower, upper)

    def keys(self, lower, upper):
        for key in super().keys(lower, upper):
            self.work += 1
            yield key


@pytest.mark.parametrize("message, reason", [
    (b"", "version"),
    (b"\x02", "version"),
    (b"\x01\x05\x00\x02" + b"\xff" * 8 + b"\x7f", "ids announced"),  # a 2**63 id count
    (b"\x01\x05\x00\x02\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01", "longer than 10"),
    (b"\x01\x05\x00\x00\x01\x00\x00", "do not increase"),  # a bound equal to the last
    (b"\x01\x00\x00\x00\x05\x00\x00", "after the infinite"),
    (b"\x01\x05\x21" + bytes(33) + b"\x00", "prefix of 33"),
    (b"\x01\x05\x00\x09", "unknown range mode"),
    (b"\x01\x05\x00\x03\x00\xff\xff\x03", "bitmap longer"),
    (b"\x01\x00\x00\x03\x00\x00", "never sent"),
    (b"\x01\x00\x00\x02\x02" + bytes(64), "repeats an id"),
    (b"\x01" + b"\x01\x00\x00" * 6000, "limit"),
])
def test_hostile_messages_get_a_typed_error_and_cost_little(message, reason):
    index = CountingIndex(items(2_000, 5))
    side = Reconciler(index)
    with pytest.raises(RemoteProtocolError, match=reason):
        side.receive(message)
    assert side.state is State.FAILED and index.work <= 2
    with pytest.raises(LocalProtocolError):
        side.receive(encode_message([]))


def test_a_peer_that_never_agrees_is_cut_off_after_the_round_limit():
    limits = Limits(max_rounds=8)
    side = Reconciler(SortedIndex(items(5_000, 6)), limits)
    wrong = encode_message([Range(INFINITY, Mode.FINGERPRINT, fingerprint=bytes(16))])
    for _ in range(8):
        assert side.receive(wrong) is not None
    with pytest.raises(RemoteProtocolError, match="rounds"):
        side.receive(wrong)


def test_a_message_splitting_every_range_costs_one_pass_over_the_store():
    index = CountingIndex(items(2_000, 7))
    side = Reconciler(index, SMALL)
    every = sorted(index.items())[::3]
    ranges = [Range(key, Mode.FINGERPRINT, fingerprint=bytes(16)) for key in every]
    message = encode_message(ranges)[: SMALL.max_message_bytes]
    try:
        reply = side.receive(message)
    except RemoteProtocolError:  # cut inside a range
        return
    assert reply is not None and len(reply) <= SMALL.max_message_bytes
    assert index.work <= 2 * len(decode_message(message, SMALL.max_message_bytes)) + 2_000


def test_a_flood_of_claimed_ids_stops_at_the_pending_cap():
    limits = Limits(max_pending_ids=100)
    side = Reconciler(SortedIndex(), limits)
    rng = random.Random(8)
    claimed = tuple(rng.randbytes(32) for _ in range(300))
    with pytest.raises(RemoteProtocolError, match="differences pending"):
        side.receive(encode_message([Range(INFINITY, Mode.IDLIST, ids=claimed)]))


def test_codec_round_trip_and_fingerprint_of_the_empty_range():
    ranges = [
        Range((5, bytes(32)), Mode.FINGERPRINT, fingerprint=bytes(range(16))),
        Range((5, b"\x07" + bytes(31)), Mode.IDLIST, ids=(bytes(32), b"\x01" * 32)),
        Range(INFINITY, Mode.IDLIST_RESPONSE, ids=(b"\x02" * 32,),
              lacking=(True, False, True)),
    ]
    assert decode_message(encode_message(ranges)) == ranges
    assert SortedIndex().summary(MINIMUM, INFINITY) == (0, 0)
    assert len(fingerprint(0, 0)) == 16


def test_misuse_is_a_local_error():
    side = Reconciler(SortedIndex())
    side.initiate()
    with pytest.raises(LocalProtocolError):
        side.initiate()
    with pytest.raises(LocalProtocolError):
        Limits(max_message_bytes=100)
