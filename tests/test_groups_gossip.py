"""The groups service's messages and fragments: round trips, and untrusted bytes raise
only ``RemoteProtocolError``."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shoal.core.groups import gossip as g
from shoal.core.wire import encode_varint
from shoal.errors import RemoteProtocolError

ids = st.lists(st.binary(min_size=32, max_size=32), max_size=20).map(tuple)
tags = st.binary(min_size=32, max_size=32)
addresses = st.lists(st.tuples(st.sampled_from(["10.0.0.1", "192.168.1.9", "::1"]),
                               st.integers(1, 65535)), max_size=3).map(tuple)
messages = st.one_of(
    st.builds(g.Message, st.just(g.TAGS),
              tags=st.lists(st.tuples(tags, st.integers(0, 1)), max_size=5).map(tuple)),
    st.builds(g.Message, st.just(g.POST), mode=st.sampled_from([g.GOSSIP, g.SYNC]),
              data=st.binary(max_size=300)),
    st.builds(g.Message, st.sampled_from([g.IHAVE, g.GRAFT]), tag=tags, ids=ids),
    st.builds(g.Message, st.just(g.PRUNE), tag=tags),
    st.builds(g.Message, st.just(g.RECONCILE), tag=tags,
              mode=st.sampled_from([g.START, g.CONTINUE, g.REPLY]),
              data=st.binary(max_size=100)),
    st.builds(g.Message, st.just(g.MEMBERS), tag=tags,
              members=st.lists(st.tuples(st.binary(min_size=32, max_size=32), addresses),
                               max_size=4).map(tuple)),
)


@given(messages)
def test_every_message_reads_back_as_written(message: g.Message) -> None:
    assert g.decode(g.encode(message)) == message


@given(st.binary(max_size=400))
def test_garbage_raises_only_remote_protocol_errors(data: bytes) -> None:
    with contextlib.suppress(RemoteProtocolError):
        g.decode(data)


@given(st.lists(st.binary(max_size=1100), max_size=30))
def test_garbage_fragments_raise_only_remote_protocol_errors(bodies: list[bytes]) -> None:
    reassembly = g.Reassembly()
    for body in bodies:
        try:
            reassembly.take(body)
        except RemoteProtocolError:
            return
    assert reassembly.held <= g.MAX_PARTIAL_BYTES


@given(st.binary(max_size=5000), st.randoms(use_true_random=False))
def test_fragments_in_any_order_make_the_message_once(data: bytes, rng) -> None:  # type: ignore[no-untyped-def]
    pieces = g.fragments(3, data) + g.fragments(3, data)[:1]
    rng.shuffle(pieces)
    reassembly = g.Reassembly()
    out = [whole for piece in pieces if (whole := reassembly.take(piece)) is not None]
    assert out == [data]
    assert reassembly.held == 0


def test_a_message_larger_than_any_post_is_refused_at_its_first_fragment() -> None:
    fits = encode_varint(0) + encode_varint(g.MAX_MESSAGE) + encode_varint(0)
    assert g.Reassembly().take(fits + bytes(g.FRAGMENT_DATA)) is None
    huge = encode_varint(0) + encode_varint(g.MAX_MESSAGE + 1) + encode_varint(0)
    with pytest.raises(RemoteProtocolError):
        g.Reassembly().take(huge + bytes(g.FRAGMENT_DATA))


def test_message_ids_that_skip_far_ahead_are_refused() -> None:
    reassembly = g.Reassembly()
    with pytest.raises(RemoteProtocolError):
        for message_id in range(1, g.MAX_DONE + 10):  # id 0 never comes
            reassembly.take(g.fragments(message_id, b"x")[0])
