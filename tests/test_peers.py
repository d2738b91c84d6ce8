"""A peer's connections: one transition table of roles, and crossed-dial arbitration."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shoal.core.peers import (
    CROSSED_DIAL_WINDOW,
    TRANSITIONS,
    Move,
    Outcome,
    PeerConnections,
    Role,
    RoleError,
    next_role,
)

ME, PEER = b"\x02" * 32, b"\x05" * 32


@given(st.sampled_from(Role), st.sampled_from(Move))
def test_every_move_from_every_role_is_legal_or_a_typed_error(role: Role, move: Move) -> None:
    try:
        after = next_role(role, move)
    except RoleError as exc:
        assert (role, move) not in TRANSITIONS
        assert role.value in exc.message and move.value in exc.message
    else:
        assert after is TRANSITIONS[role, move] and after in Role


@given(st.lists(st.sampled_from(Move), max_size=30))
def test_any_sequence_of_moves_stays_in_the_table(moves: list[Move]) -> None:
    role = Role.NEW
    for move in moves:
        if (role, move) in TRANSITIONS:
            role = next_role(role, move)
        else:
            with pytest.raises(RoleError):
                next_role(role, move)
    assert role in Role


def test_only_close_leaves_closed_and_every_role_can_close() -> None:
    assert {m for (r, m) in TRANSITIONS if r is Role.CLOSED} == {Move.CLOSE}
    assert all((role, Move.CLOSE) in TRANSITIONS for role in Role)
    assert all(TRANSITIONS[role, Move.CLOSE] is Role.CLOSED for role in Role)


def _connection(*, initiator: bool, confirmed: bool, at: float,
                incarnation: bytes = b"") -> SimpleNamespace:
    return SimpleNamespace(initiator=initiator, confirmed=confirmed, established_at=at,
                           peer=PEER, closed=False, role=Role.NEW,
                           peer_incarnation=incarnation)


def test_a_crossed_dial_keeps_the_one_the_smaller_id_started_on_both_sides() -> None:
    # Seen from this node (the smaller id): ours wins whichever came first.
    for ours_first in (True, False):
        table = PeerConnections(PEER, ME)
        ours = _connection(initiator=True, confirmed=True, at=0.0)
        theirs = _connection(initiator=False, confirmed=True, at=0.1)
        first, second = (ours, theirs) if ours_first else (theirs, ours)
        assert table.place(first, 0.0)[0] is Outcome.ADOPTED
        outcome, other = table.place(second, 0.1)
        assert other is first
        assert table.current is ours and theirs.role is Role.DRAINING
        assert outcome is (Outcome.CROSSED_LOST if ours_first else Outcome.CROSSED_WON)
    # Seen from the peer (the larger id), the same pair keeps the same connection.
    table = PeerConnections(ME, PEER)
    mine = _connection(initiator=True, confirmed=True, at=0.0)
    table.place(mine, 0.0)
    table.place(_connection(initiator=False, confirmed=True, at=0.1), 0.1)
    assert table.current is not mine and mine.role is Role.DRAINING


def test_a_later_connection_replaces_and_an_unconfirmed_one_waits_aside() -> None:
    table = PeerConnections(PEER, ME)
    old = _connection(initiator=False, confirmed=True, at=0.0)
    table.place(old, 0.0)
    later = _connection(initiator=False, confirmed=True, at=CROSSED_DIAL_WINDOW + 1)
    assert table.place(later, CROSSED_DIAL_WINDOW + 1) == (Outcome.REPLACED, old)
    assert old.role is Role.CLOSED and table.current is later
    ours = _connection(initiator=True, confirmed=False, at=7.0)
    assert table.place(ours, 7.0) == (Outcome.SET_ASIDE, later)
    # The current one ends: the one aside carries the traffic, still unconfirmed.
    later.closed = True
    assert table.remove(later) == (True, ours)
    assert ours.role is Role.UNCONFIRMED
    ours.confirmed = True
    table.confirm(ours)
    assert ours.role is Role.CURRENT
    assert table.remove(ours) == (True, None) and table.current is None


@pytest.mark.parametrize("confirmed", [True, False])
def test_another_incarnation_of_the_peer_replaces_its_connections_at_once(
        confirmed: bool) -> None:
    """Within the crossed-dial window, and whether the peer confirmed the new one yet:
    a handshake from another run of the peer's node proves the earlier run is gone."""
    table = PeerConnections(PEER, ME)
    old = _connection(initiator=True, confirmed=True, at=0.0, incarnation=b"run-one!")
    table.place(old, 0.0)
    crossed = _connection(initiator=False, confirmed=True, at=0.1, incarnation=b"run-one!")
    table.place(crossed, 0.1)  # the same run: a crossed dial, one drains
    assert Role.DRAINING in (old.role, crossed.role)
    current = table.current
    again = _connection(initiator=not confirmed, confirmed=confirmed, at=0.2,
                        incarnation=b"run-two!")
    assert table.place(again, 0.2) == (Outcome.REPLACED, current)
    assert table.current is again and again.role is Role.CURRENT
    assert table.stale(again) == [c for c in (old, crossed) if c is not current]
    # A peer that names no incarnation is judged by time alone, as before.
    legacy = PeerConnections(PEER, ME)
    first = _connection(initiator=True, confirmed=True, at=0.0, incarnation=b"")
    legacy.place(first, 0.0)
    second = _connection(initiator=False, confirmed=True, at=0.1, incarnation=b"run-two!")
    assert legacy.place(second, 0.1)[0] in (Outcome.CROSSED_WON, Outcome.CROSSED_LOST)


def test_a_later_connection_from_the_same_run_of_the_peer_lets_the_earlier_drain() -> None:
    table = PeerConnections(PEER, ME)
    old = _connection(initiator=False, confirmed=True, at=0.0, incarnation=b"run-one!")
    table.place(old, 0.0)
    at = CROSSED_DIAL_WINDOW + 1
    later = _connection(initiator=False, confirmed=True, at=at, incarnation=b"run-one!")
    assert table.place(later, at) == (Outcome.SUPERSEDED, old)
    assert old.role is Role.DRAINING and table.current is later
    assert table.stale(later) == []
