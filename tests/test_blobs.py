"""The BLAKE3 blob tree, its proofs, tickets, and the fetch plan (pure code, no network)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.core import blobs
from shoal.core.blobs import (
    CHUNK_SIZE,
    PIECE_SIZE,
    HashTree,
    Provider,
    Ticket,
    TicketError,
    VerificationError,
)
from shoal.core.fetchplan import Bitmap, FetchPlan, PeerState
from shoal.errors import LocalProtocolError, RemoteProtocolError

PEER = "ab" * 32


def _blob(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def _pieces(data: bytes) -> list[bytes]:
    return [data[o:o + PIECE_SIZE] for o in range(0, max(1, len(data)), PIECE_SIZE)]


sizes = st.one_of(
    st.integers(0, 2 * CHUNK_SIZE),
    st.sampled_from([PIECE_SIZE - 1, PIECE_SIZE, PIECE_SIZE + 1, 3 * PIECE_SIZE]),
    st.integers(0, 5 * PIECE_SIZE),
)


@settings(max_examples=40, deadline=None)
@given(size=sizes, seed=st.integers(0, 2**32))
def test_every_piece_proves_against_the_root_and_the_root_is_stable(size: int, seed: int
                                                                    ) -> None:
    data = _blob(size, seed)
    tree = HashTree.build(size, _pieces(data))
    assert tree.root == blobs.blob_root(data) == HashTree.build(
        size, [data[o:o + CHUNK_SIZE] for o in range(0, max(1, size), CHUNK_SIZE)],
        base=0).root
    for index, piece in enumerate(_pieces(data)):
        node = blobs.verify_piece(tree.root, size, index, piece, tree.piece_proof(index))
        assert node == tree.node(tree.base, index)
    # One byte more or less is another blob.
    assert blobs.blob_root(data + b"\0") != tree.root
    if size:
        assert blobs.blob_root(data[:-1]) != tree.root


@settings(max_examples=40, deadline=None)
@given(size=sizes, seed=st.integers(0, 2**32), where=st.floats(0, 1, exclude_max=True),
       bit=st.integers(0, 7), in_proof=st.booleans())
def test_any_tampered_byte_of_a_piece_or_its_proof_is_rejected(
        size: int, seed: int, where: float, bit: int, in_proof: bool) -> None:
    data = _blob(size, seed)
    tree = HashTree.build(size, _pieces(data))
    index = int(where * blobs.piece_count(size))
    piece = bytearray(_pieces(data)[index])
    proof = bytearray(tree.piece_proof(index))
    target = proof if in_proof and proof else piece
    if not target:  # the empty blob: nothing to flip, but a byte too many is caught
        piece.append(0)
    else:
        target[int(where * len(target)) % len(target)] ^= 1 << bit
    with pytest.raises(VerificationError) as info:
        blobs.verify_piece(tree.root, size, index, bytes(piece), bytes(proof))
    assert isinstance(info.value, RemoteProtocolError) and info.value.code == "EBADMSG"


@settings(max_examples=30, deadline=None)
@given(size=st.integers(PIECE_SIZE + 1, 4 * PIECE_SIZE), seed=st.integers(0, 2**32),
       cut=st.integers(1, 64))
def test_a_piece_passed_off_as_another_or_cut_short_is_rejected(size: int, seed: int,
                                                                cut: int) -> None:
    data = _blob(size, seed)
    tree = HashTree.build(size, _pieces(data))
    first = _pieces(data)[0]
    for index in (1, blobs.piece_count(size), -1):  # right bytes, wrong place
        with pytest.raises(VerificationError):
            blobs.verify_piece(tree.root, size, index, first, tree.piece_proof(0))
    with pytest.raises(VerificationError):
        blobs.verify_piece(tree.root, size, 0, first[:-cut], tree.piece_proof(0))
    with pytest.raises(VerificationError):
        blobs.verify_piece(tree.root, size, 0, first, tree.piece_proof(0)[:-cut])
    with pytest.raises(VerificationError):  # the same blob claimed to be shorter
        blobs.verify_piece(tree.root, size - 1, 0, first, tree.piece_proof(0))


def test_the_tree_has_a_fixed_shape_and_keyed_roles() -> None:
    """Known answers, so that a change of the tree (and of every root) is noticed."""
    assert blobs.blob_root(b"").hex()[:16] == blobs.root_hash(0, blobs.leaf_hash(0, b"")
                                                              ).hex()[:16]
    three = b"a" * CHUNK_SIZE + b"b" * CHUNK_SIZE + b"c"
    leaves = [blobs.leaf_hash(i, three[i * CHUNK_SIZE:(i + 1) * CHUNK_SIZE]) for i in range(3)]
    top = blobs.parent_hash(blobs.parent_hash(leaves[0], leaves[1]), leaves[2])
    assert blobs.blob_root(three) == blobs.root_hash(len(three), top)
    # A leaf is not a parent of the same bytes, and the index is bound.
    assert blobs.leaf_hash(0, leaves[0] + leaves[1]) != blobs.parent_hash(leaves[0], leaves[1])
    assert blobs.leaf_hash(0, b"x") != blobs.leaf_hash(1, b"x")


@settings(max_examples=60, deadline=None)
@given(size=st.integers(0, blobs.MAX_BLOB_SIZE), root=st.binary(min_size=32, max_size=32),
       name=st.text(max_size=40).filter(lambda n: blobs._safe_name(n)),
       providers=st.lists(st.tuples(st.binary(min_size=32, max_size=32), st.lists(
           st.tuples(st.sampled_from(["127.0.0.1", "203.0.113.9", "::1", "2001:db8::5"]),
                     st.integers(0, 65535)), max_size=4)), max_size=16))
def test_a_ticket_reads_back_as_written(size: int, root: bytes, name: str,
                                        providers: list) -> None:
    ticket = Ticket(root, size, tuple(Provider(p.hex(), tuple(a)) for p, a in providers), name)
    text = str(ticket)
    assert text.startswith("blob") and text == text.lower()
    assert Ticket.parse(text) == ticket
    assert Ticket.parse(text.upper()) == ticket


@settings(max_examples=200, deadline=None)
@given(text=st.one_of(st.text(max_size=300), st.builds(
    lambda b: "blob" + __import__("base64").b32encode(b).decode().rstrip("="),
    st.binary(max_size=200))))
def test_bad_ticket_text_raises_only_a_ticket_error(text: str) -> None:
    try:
        Ticket.parse(text)
    except TicketError as exc:
        assert exc.code == "EINVAL" and "\n" not in str(exc)


def test_ticket_errors_say_what_is_wrong() -> None:
    good = str(Ticket(bytes(32), 5, (Provider(PEER, (("127.0.0.1", 7000),)),), "a.txt"))
    cases = {"hello": "does not start", good[:-9]: "cut short", good + "aaaaaaaa": "after",
             good[:10] + "1" + good[11:]: "base32", "blob" + "a" * 5000: "longer"}
    for text, said in cases.items():
        with pytest.raises(TicketError, match=said):
            Ticket.parse(text)
    with pytest.raises(TicketError, match="1 TiB"):
        Ticket(bytes(32), blobs.MAX_BLOB_SIZE + 1)
    with pytest.raises(TicketError, match="at most 16"):
        Ticket(bytes(32), 1, tuple(Provider(PEER) for _ in range(17)))
    for name in ("../etc/passwd", "a/b", "..", "bell\a"):
        with pytest.raises(TicketError, match="plain name"):
            Ticket(bytes(32), 1, (), name)


# ---------------------------------------------------------------------- the fetch plan


def test_the_plan_asks_every_provider_at_once_within_its_limit() -> None:
    plan = FetchPlan(20, per_peer=3)
    for peer in "abc":
        plan.add_peer(peer)
    asked = plan.requests(0.0)
    assert len(asked) == 9 and {p for p, _ in asked} == set("abc")
    assert len({piece for _, piece in asked}) == 9
    assert plan.requests(0.0) == []  # everyone is full
    plan.verified("a", asked[0][1])
    assert [p for p, _ in plan.requests(0.0)] == ["a"]


def test_a_provider_that_sends_a_bad_piece_is_dropped_and_its_pieces_go_to_others() -> None:
    plan = FetchPlan(8, per_peer=2)
    plan.add_peer("good")
    plan.add_peer("bad")
    asked = dict((piece, peer) for peer, piece in plan.requests(0.0))
    bad_pieces = [piece for piece, peer in asked.items() if peer == "bad"]
    plan.corrupt("bad", bad_pieces[0])
    assert plan.peers["bad"].state is PeerState.DROPPED and plan.peers["bad"].corrupt == 1
    plan.add_peer("bad")  # named again: still dropped, it lied
    assert plan.peers["bad"].state is PeerState.DROPPED
    for piece in [p for p, peer in asked.items() if peer == "good"]:
        plan.verified("good", piece)
    again = plan.requests(1.0)
    assert {p for p, _ in again} == {"good"} and {pc for _, pc in again} == set(bad_pieces)


def test_a_verified_piece_is_never_asked_again() -> None:
    """Whatever happens (timeouts, late answers, peers leaving), every request is for a
    piece not held, and each piece is verified once."""
    rng = random.Random(7)
    have = Bitmap(50)
    for piece in rng.sample(range(50), 20):
        have.add(piece)
    before = set(i for i in range(50) if i in have)
    plan = FetchPlan(50, have, per_peer=3, request_timeout=1.0, max_failures=1000)
    for peer in "abcd":
        plan.add_peer(peer)
    now, outstanding, verified = 0.0, [], set()
    while not plan.done:
        for peer, piece in plan.requests(now):
            assert piece not in plan.have and piece not in before and piece not in verified
            outstanding.append((peer, piece))
        rng.shuffle(outstanding)
        if outstanding:
            peer, piece = outstanding.pop()
            roll = rng.random()
            if roll < 0.6 and plan.wanted(piece):
                plan.verified(peer, piece)
                verified.add(piece)
            elif roll < 0.8:
                plan.failed(peer, piece, now)
        now += rng.choice([0.01, 0.5, 1.5])
        if rng.random() < 0.05:
            plan.remove_peer(rng.choice("abcd"))
            plan.add_peer(rng.choice("abcd"))
    assert verified == set(range(50)) - before


def test_providers_that_do_not_answer_back_off_then_are_dropped() -> None:
    plan = FetchPlan(4, per_peer=1, request_timeout=2.0, max_failures=2)
    plan.add_peer("a")
    assert plan.requests(0.0) == [("a", 0)]
    assert plan.next_deadline() == 2.0
    assert plan.requests(2.0) == []  # timed out: backing off
    assert plan.peers["a"].state is PeerState.BACKOFF
    retry = plan.next_deadline()
    assert retry is not None and retry > 2.0
    assert plan.requests(retry) == [("a", 0)]  # the same piece again
    plan.requests(retry + 2.0)
    assert plan.peers["a"].state is PeerState.DROPPED and plan.stuck


def test_a_bitmap_keeps_its_bits_through_bytes() -> None:
    bitmap = Bitmap(13)
    for i in (0, 7, 12):
        bitmap.add(i)
    again = Bitmap(13, bitmap.to_bytes())
    assert [i for i in range(13) if i in again] == [0, 7, 12] and len(again) == 3
    assert Bitmap(13, b"\xff\xff").complete
    with pytest.raises(LocalProtocolError):
        Bitmap(13, b"\x00")


def test_a_lost_provider_hands_its_pieces_over_and_timeouts_follow_the_answers() -> None:
    plan = FetchPlan(12, per_peer=2, request_timeout=30.0)
    plan.add_peer("a")
    plan.add_peer("b")
    asked = plan.requests(0.0)
    assert plan.timeout() == 30.0  # nothing answered yet
    for peer, piece in asked:
        if peer == "b":
            plan.verified("b", piece, 0.2)
    assert plan.timeout() == 3.0  # about 0.2 s + 4 x 0.1 s, but at least 3 s
    a_pieces = sorted(piece for peer, piece in asked if peer == "a")
    plan.lost_peer("a", 0.3)
    assert plan.peers["a"].state is PeerState.BACKOFF and not plan.peers["a"].in_flight
    again = plan.requests(0.3)
    assert sorted(piece for _, piece in again) == a_pieces and {p for p, _ in again} == {"b"}
    plan.failed("a", a_pieces[0], 0.4)  # its old request failing later costs it nothing more
    assert plan.peers["a"].failures == 1
