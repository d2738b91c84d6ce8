"""The connections with one peer, and which of them carries its traffic.

Theory of operation
-------------------
There is one connection per peer, but for a moment there may be more: both sides dialed
at once (a crossed dial), the peer restarted and dialed again (a reconnection), or this
node dialed twice. Each connection therefore has a *role*, a named state changed only
through ``TRANSITIONS`` (the one table of legal moves, as h11 keeps its connection
states):

- ``NEW``: just established, not yet placed;
- ``CURRENT``: carries new traffic to the peer (at most one at a time);
- ``ASIDE``: a connection this node started that the peer has not confirmed yet (its
  first DATA); it waits for that, and closes after ``connection.UNCONFIRMED_ASIDE``
  seconds without it;
- ``UNCONFIRMED``: one set aside that carries the traffic after all (the other one
  ended) while the peer has still not confirmed it: it closes on the same deadline;
- ``DRAINING``: superseded; it finishes what it carries, then closes (an open stream,
  which cannot move, keeps it: see ``Service.holds``);
- ``CLOSED``: gone from the table.

``PeerConnections`` holds one peer's connections and arbitrates between them. When both
sides hold two confirmed connections made within ``CROSSED_DIAL_WINDOW`` of each other
from opposite dials, the one started by the smaller peer id is kept, so both sides keep
the same one; the other drains. A later connection from a peer whose handshakes name no
incarnation (below) means the peer lost the earlier one (a restart): it replaces it. A
connection this node started counts for that rule only once the peer confirmed it, so
both sides judge the same pair.

Each handshake proof names the *incarnation* of the node that sent it (random, new each
time a node starts; see ``handshake``). A connection whose peer incarnation differs from
the current one's is proof that the peer restarted: the connections of its earlier run
are dead at the peer, so the new one carries the traffic at once, confirmed or not and
however soon after the other it came (no crossed dial can be told apart by time alone),
and the earlier ones close (``stale``). A later connection from the same run of the
peer's node is no restart: the earlier one drains, as after a crossed dial.
"""

from __future__ import annotations

from enum import Enum
from typing import TYPE_CHECKING

from shoal.errors import LocalProtocolError

if TYPE_CHECKING:
    from shoal.core.connection import Connection

CROSSED_DIAL_WINDOW = 5.0
"""A second connection this soon after the first is a crossed dial, not a reconnection."""


class Role(Enum):
    NEW = "new"
    CURRENT = "current"
    ASIDE = "aside"
    UNCONFIRMED = "unconfirmed"
    DRAINING = "draining"
    CLOSED = "closed"


class Move(Enum):
    ADOPT = "adopt"
    """The peer's only live connection: it carries the traffic."""
    SET_ASIDE = "set aside"
    """Not confirmed by the peer while another carries traffic: wait."""
    TAKE_OVER = "take over"
    """Carries new traffic instead of another connection."""
    SUPERSEDE = "supersede"
    """Another connection won: finish what it carries, then close."""
    PROMOTE = "promote"
    """The connection that carried the traffic is gone: carry it instead."""
    CONFIRM = "confirm"
    """The peer showed it holds the connection (its first DATA)."""
    CLOSE = "close"
    """Gone (closed by either side, timed out, or replaced)."""


_R, _M = Role, Move
TRANSITIONS: dict[tuple[Role, Move], Role] = {
    (_R.NEW, _M.ADOPT): _R.CURRENT,
    (_R.NEW, _M.SET_ASIDE): _R.ASIDE,
    (_R.NEW, _M.TAKE_OVER): _R.CURRENT,
    (_R.NEW, _M.SUPERSEDE): _R.DRAINING,
    (_R.NEW, _M.CLOSE): _R.CLOSED,
    (_R.CURRENT, _M.SET_ASIDE): _R.ASIDE,
    (_R.CURRENT, _M.SUPERSEDE): _R.DRAINING,
    (_R.CURRENT, _M.CLOSE): _R.CLOSED,
    (_R.ASIDE, _M.ADOPT): _R.CURRENT,
    (_R.ASIDE, _M.TAKE_OVER): _R.CURRENT,
    (_R.ASIDE, _M.SUPERSEDE): _R.DRAINING,
    (_R.ASIDE, _M.PROMOTE): _R.UNCONFIRMED,
    (_R.ASIDE, _M.CLOSE): _R.CLOSED,
    (_R.UNCONFIRMED, _M.CONFIRM): _R.CURRENT,
    (_R.UNCONFIRMED, _M.SET_ASIDE): _R.ASIDE,
    (_R.UNCONFIRMED, _M.SUPERSEDE): _R.DRAINING,
    (_R.UNCONFIRMED, _M.CLOSE): _R.CLOSED,
    (_R.DRAINING, _M.PROMOTE): _R.CURRENT,
    (_R.DRAINING, _M.CLOSE): _R.CLOSED,
    (_R.CLOSED, _M.CLOSE): _R.CLOSED,
}
"""Every legal (role, move) and the role it leads to; any other move is a bug."""


class RoleError(LocalProtocolError):
    """A move the transition table does not allow from the connection's role."""


def next_role(role: Role, move: Move) -> Role:
    """The role ``move`` leads to from ``role``; ``RoleError`` if it is not allowed."""
    try:
        return TRANSITIONS[role, move]
    except KeyError:
        raise RoleError(f"a {role.value} connection cannot {move.value}") from None


def apply(connection: Connection, move: Move) -> None:
    connection.role = next_role(connection.role, move)


def restarted(earlier: Connection, later: Connection) -> bool:
    """Whether ``later`` was made with another run of the peer's node than ``earlier``
    (both handshakes named an incarnation, and not the same)."""
    return bool(earlier.peer_incarnation and later.peer_incarnation
                and earlier.peer_incarnation != later.peer_incarnation)


def same_run(earlier: Connection, later: Connection) -> bool:
    """Whether both handshakes named the same incarnation of the peer's node: the peer
    still holds ``earlier``."""
    return bool(earlier.peer_incarnation) and (
        earlier.peer_incarnation == later.peer_incarnation)


class Outcome(Enum):
    """How a connection was placed among its peer's others (``PeerConnections.place``)."""

    ADOPTED = "adopted"
    SET_ASIDE = "set aside"
    TOOK_OVER = "took over"
    """Carries new traffic; the other one (unconfirmed) waits aside, sending on."""
    CROSSED_WON = "crossed, won"
    """Carries new traffic; the other one drains."""
    REPLACED = "replaced"
    """Carries new traffic; the other one must close (the peer restarted)."""
    SUPERSEDED = "superseded"
    """Carries new traffic; the other one, which the same run of the peer's node still
    holds, drains (a later dial that was no restart)."""
    CROSSED_LOST = "crossed, lost"
    """Drains; the other one carries on."""


class PeerConnections:
    """One peer's connections, and which of them is current (see the module docstring)."""

    __slots__ = ("peer", "me", "connections", "current")

    def __init__(self, peer: bytes, me: bytes) -> None:
        self.peer = peer
        self.me = me
        self.connections: list[Connection] = []
        self.current: Connection | None = None

    def live(self) -> Connection | None:
        """The current connection, unless it is closed."""
        current = self.current
        return current if current is not None and not current.closed else None

    def place(self, new: Connection, now: float) -> tuple[Outcome, Connection | None]:
        """Give a just-established connection its role; the outcome and the other
        connection it concerns."""
        self.connections.append(new)
        existing = self.live()
        if existing is None:
            self._make_current(new, Move.ADOPT)
            return Outcome.ADOPTED, None
        if restarted(existing, new):
            return self._replace(existing, new)
        if not new.confirmed:
            # A second connection we started: the peer may never get our FINAL (lost,
            # or sent to a punch socket that closed meanwhile). It counts once the peer
            # shows it has it, with its first DATA.
            apply(new, Move.SET_ASIDE)
            return Outcome.SET_ASIDE, existing
        if not existing.confirmed:
            # The same the other way round: the one we hold may not exist at the peer,
            # this one does. It carries new traffic; the rule waits for both.
            self._make_current(new, Move.TAKE_OVER)
            apply(existing, Move.SET_ASIDE)
            return Outcome.TOOK_OVER, existing
        return self._arbitrate(existing, new, now)

    def confirmed(self, connection: Connection, now: float
                  ) -> tuple[Outcome, Connection | None]:
        """A connection set aside was confirmed by the peer: place it now."""
        existing = self.live()
        if existing is None:
            self._make_current(connection, Move.ADOPT)
            return Outcome.ADOPTED, None
        return self._arbitrate(existing, connection, now)

    def confirm(self, connection: Connection) -> None:
        """The peer confirmed the ``UNCONFIRMED`` connection that carries its traffic."""
        apply(connection, Move.CONFIRM)

    def _arbitrate(self, existing: Connection, new: Connection, now: float
                   ) -> tuple[Outcome, Connection | None]:
        """Both sides hold ``existing`` and ``new``: keep one."""
        if restarted(existing, new):
            return self._replace(existing, new)
        if not self._keeps(existing, new, now):
            apply(new, Move.SUPERSEDE)
            return Outcome.CROSSED_LOST, existing
        self._make_current(new, Move.TAKE_OVER)
        if now - existing.established_at < CROSSED_DIAL_WINDOW:
            apply(existing, Move.SUPERSEDE)
            return Outcome.CROSSED_WON, existing
        if same_run(existing, new):
            apply(existing, Move.SUPERSEDE)
            return Outcome.SUPERSEDED, existing
        apply(existing, Move.CLOSE)
        return Outcome.REPLACED, existing

    def _replace(self, existing: Connection, new: Connection
                 ) -> tuple[Outcome, Connection | None]:
        self._make_current(new, Move.TAKE_OVER)
        apply(existing, Move.CLOSE)
        return Outcome.REPLACED, existing

    def stale(self, new: Connection) -> list[Connection]:
        """The peer's other open connections made with an earlier run of its node than
        ``new`` (see ``restarted``): dead at the peer."""
        return [c for c in self._open() if c is not new and restarted(c, new)]

    def _open(self) -> list[Connection]:
        return [c for c in self.connections if not c.closed and c.role is not Role.CLOSED]

    def _keeps(self, existing: Connection, new: Connection, now: float) -> bool:
        """Whether ``new`` replaces ``existing`` as the peer's connection."""
        def starter(connection: Connection) -> bytes:
            return self.me if connection.initiator else connection.peer

        if now - existing.established_at < CROSSED_DIAL_WINDOW and (
            starter(existing) != starter(new)
        ):
            return starter(new) < starter(existing)
        return True

    def _make_current(self, connection: Connection, move: Move) -> None:
        apply(connection, move)
        self.current = connection

    def remove(self, connection: Connection) -> tuple[bool, Connection | None]:
        """``connection`` is gone: whether it was the current one, and the connection
        promoted in its place (the newest live one), if any."""
        apply(connection, Move.CLOSE)
        if connection in self.connections:
            self.connections.remove(connection)
        if self.current is not connection:
            return False, None
        self.current = None
        others = self._open()
        if not others:
            return True, None
        successor = others[-1]
        self._make_current(successor, Move.PROMOTE)
        return True, successor
