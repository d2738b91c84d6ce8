"""Which piece of a blob to ask which provider for, and what to do when one fails.

Theory of operation
-------------------
A fetch knows which pieces it holds, verified (a ``Bitmap``, kept beside the partial file
so that a fetch resumes where it stopped), and a set of providers. ``requests(now)`` hands
out the lowest wanted pieces, round robin, to every provider with room below its in-flight
limit, so that every provider works at once. A piece is in flight at one provider at a
time; a verified piece is never asked for again.

A provider is in one of three states:

    ============  =====================================  ==========
    state         input                                  next state
    ============  =====================================  ==========
    ACTIVE        a request fails or times out           BACKOFF
    ACTIVE        its connection ends (``lost_peer``)    BACKOFF
    ACTIVE        it says it is busy                     BACKOFF
    BACKOFF       its retry time comes (``requests``)    ACTIVE
    ACTIVE        a piece verifies                       ACTIVE (failures reset)
    any           ``max_failures`` failures in a row     DROPPED
    any           a piece fails verification             DROPPED
    any           it leaves (``remove_peer``)            DROPPED
    ============  =====================================  ==========

The pieces a provider had in flight when it failed or left go back to the front of the
queue for the others. A dropped provider is never asked again in this fetch; pieces that
failed verification are counted per provider (``corrupt``). Nothing here reads a clock:
every call that needs the time takes ``now``.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field

from shoal.errors import LocalProtocolError

DEFAULT_PER_PEER = 4
"""Requests in flight at one provider (each answered by one piece, 256 KiB)."""
DEFAULT_REQUEST_TIMEOUT = 30.0
"""The longest a request waits for its piece; less once answers show how long they take."""
MIN_REQUEST_TIMEOUT = 3.0
"""A request waits at least this long (a busy machine or link may slow answers)."""
DEFAULT_MAX_FAILURES = 5
CLOCK_SLACK = 1e-6
BACKOFF_BASE = 0.5
BACKOFF_MAX = 10.0


class Bitmap:
    """Which of ``count`` pieces are held, as bytes (bit ``i % 8`` of byte ``i // 8``)."""

    __slots__ = ("_bits", "_set", "count")

    def __init__(self, count: int, raw: bytes | None = None) -> None:
        size = (count + 7) // 8
        if raw is not None and len(raw) != size:
            raise LocalProtocolError(f"a bitmap of {count} pieces is {size} bytes")
        self.count = count
        self._bits = bytearray(raw) if raw is not None else bytearray(size)
        if count % 8 and size:
            self._bits[-1] &= (1 << (count % 8)) - 1  # no bits beyond the end
        self._set = sum(bin(b).count("1") for b in self._bits)

    def __contains__(self, index: int) -> bool:
        return 0 <= index < self.count and bool(self._bits[index >> 3] >> (index & 7) & 1)

    def add(self, index: int) -> None:
        if index not in self:
            self._bits[index >> 3] |= 1 << (index & 7)
            self._set += 1

    def discard(self, index: int) -> None:
        if index in self:
            self._bits[index >> 3] &= ~(1 << (index & 7)) & 0xFF
            self._set -= 1

    def __len__(self) -> int:
        """Pieces held."""
        return self._set

    @property
    def complete(self) -> bool:
        return self._set == self.count

    def missing(self) -> list[int]:
        return [i for i in range(self.count) if i not in self]

    def byte_of(self, index: int) -> tuple[int, int]:
        """The offset and value of the byte that holds piece ``index``'s bit."""
        return index >> 3, self._bits[index >> 3]

    def to_bytes(self) -> bytes:
        return bytes(self._bits)


class PeerState(enum.Enum):
    ACTIVE = "active"
    BACKOFF = "backoff"
    DROPPED = "dropped"


@dataclass(slots=True)
class PeerProgress:
    """What one provider did in this fetch."""

    state: PeerState = PeerState.ACTIVE
    in_flight: dict[int, float] = field(default_factory=dict)
    """Piece -> when it was asked for."""
    failures: int = 0
    """Failures in a row (reset by a verified piece)."""
    retry_at: float = 0.0
    pieces: int = 0
    """Pieces from it that verified."""
    corrupt: int = 0
    """Pieces from it that failed verification."""
    reason: str = ""
    """Why it was dropped."""


class FetchPlan:
    """The plan of one fetch of ``pieces`` pieces, of which ``have`` are held."""

    def __init__(self, pieces: int, have: Bitmap | None = None, *,
                 per_peer: int = DEFAULT_PER_PEER,
                 request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
                 max_failures: int = DEFAULT_MAX_FAILURES) -> None:
        if per_peer < 1 or request_timeout <= 0 or max_failures < 1:
            raise LocalProtocolError("a fetch plan needs positive limits")
        self.have = have if have is not None else Bitmap(pieces)
        if self.have.count != pieces:
            raise LocalProtocolError("the bitmap is not of this blob")
        self.per_peer = per_peer
        self.request_timeout = request_timeout
        self.max_failures = max_failures
        self.peers: dict[str, PeerProgress] = {}
        self._wanted: deque[int] = deque(self.have.missing())
        self._owner: dict[int, str] = {}
        """Piece in flight -> the provider asked for it."""
        self._turn = 0
        self.answer_time: float | None = None
        """Smoothed seconds from a request to its verified piece."""
        self._answer_spread = 0.0
        self.requested = 0
        """Requests handed out (a piece asked again after a failure counts again)."""

    # ------------------------------------------------------------------ providers

    def add_peer(self, peer_id: str) -> None:
        """Ask ``peer_id`` too (again, if it was dropped for failing to answer)."""
        peer = self.peers.get(peer_id)
        if peer is None:
            self.peers[peer_id] = PeerProgress()
        elif peer.state is PeerState.DROPPED and not peer.corrupt:
            peer.state, peer.failures, peer.reason = PeerState.ACTIVE, 0, ""

    def remove_peer(self, peer_id: str, reason: str = "left") -> None:
        """``peer_id`` is gone: its pieces in flight go to the others."""
        self._drop(peer_id, reason)

    def _drop(self, peer_id: str, reason: str) -> None:
        peer = self.peers.get(peer_id)
        if peer is None or peer.state is PeerState.DROPPED:
            return
        peer.state, peer.reason = PeerState.DROPPED, reason
        self._requeue(peer_id, list(peer.in_flight))

    def _requeue(self, peer_id: str, pieces: list[int]) -> None:
        peer = self.peers[peer_id]
        for piece in sorted(pieces, reverse=True):
            peer.in_flight.pop(piece, None)
            if self._owner.get(piece) == peer_id:
                del self._owner[piece]
                if piece not in self.have:
                    self._wanted.appendleft(piece)

    def _fail(self, peer_id: str, now: float, reason: str) -> None:
        peer = self.peers[peer_id]
        peer.failures += 1
        if peer.failures >= self.max_failures:
            self._drop(peer_id, reason)
            return
        peer.state = PeerState.BACKOFF
        peer.retry_at = now + min(BACKOFF_MAX, BACKOFF_BASE * 2 ** (peer.failures - 1))

    # ------------------------------------------------------------------ requests

    def requests(self, now: float) -> list[tuple[str, int]]:
        """New (provider, piece) requests to send now, the providers taken in turn."""
        self.expire(now)
        ready = []
        for peer_id, peer in self.peers.items():
            if peer.state is PeerState.BACKOFF and now + CLOCK_SLACK >= peer.retry_at:
                peer.state = PeerState.ACTIVE
            if peer.state is PeerState.ACTIVE and len(peer.in_flight) < self.per_peer:
                ready.append(peer_id)
        out: list[tuple[str, int]] = []
        if not ready:
            return out
        start = self._turn % len(ready)
        ready = ready[start:] + ready[:start]
        self._turn += 1
        while self._wanted and ready:
            for peer_id in list(ready):
                peer = self.peers[peer_id]
                if not self._wanted:
                    break
                if len(peer.in_flight) >= self.per_peer:
                    ready.remove(peer_id)
                    continue
                piece = self._wanted.popleft()
                if piece in self.have or piece in self._owner:
                    continue
                peer.in_flight[piece] = now
                self._owner[piece] = peer_id
                self.requested += 1
                out.append((peer_id, piece))
        return out

    def expire(self, now: float) -> None:
        """Requests unanswered past their time count as failures of their provider."""
        for peer_id, peer in self.peers.items():
            # A deadline a rounding error away counts as reached: a driver woken at it
            # must see it pass (a float clock may not advance by so little).
            cutoff = now + CLOCK_SLACK - self.timeout()
            late = [piece for piece, sent in peer.in_flight.items() if sent <= cutoff]
            if late:
                self._requeue(peer_id, late)
                self._fail(peer_id, now, "did not answer")

    def next_deadline(self) -> float | None:
        """When ``requests`` may have something new without any answer arriving."""
        times = [sent + self.timeout() for p in self.peers.values()
                 for sent in p.in_flight.values()]
        times += [p.retry_at for p in self.peers.values() if p.state is PeerState.BACKOFF]
        return min(times, default=None)

    # ------------------------------------------------------------------ answers

    def wanted(self, piece: int) -> bool:
        """Whether a piece that arrived is still worth checking and writing."""
        return 0 <= piece < self.have.count and piece not in self.have

    def timeout(self) -> float:
        """How long a request sent now may wait for its piece."""
        if self.answer_time is None:
            return self.request_timeout
        # As TCP's retransmission timeout (RFC 6298): the mean plus four deviations.
        return min(self.request_timeout, max(
            MIN_REQUEST_TIMEOUT, self.answer_time + 4 * self._answer_spread))

    def verified(self, peer_id: str, piece: int, now: float | None = None) -> None:
        """``piece`` from ``peer_id`` matched the root and is written."""
        owner = self._owner.get(piece)
        sent = self.peers[owner].in_flight.get(piece) if owner is not None else None
        if now is not None and sent is not None and owner == peer_id:
            took = now - sent
            if self.answer_time is None:
                self.answer_time, self._answer_spread = took, took / 2
            else:
                self._answer_spread = 0.75 * self._answer_spread + \
                    0.25 * abs(self.answer_time - took)
                self.answer_time = 0.875 * self.answer_time + 0.125 * took
        self.have.add(piece)
        peer = self.peers.get(peer_id)
        if peer is not None:
            peer.pieces += 1
            peer.failures = 0
            peer.in_flight.pop(piece, None)
        owner = self._owner.pop(piece, None)
        if owner is not None and owner != peer_id:
            self.peers[owner].in_flight.pop(piece, None)

    def corrupt(self, peer_id: str, piece: int) -> None:
        """``piece`` from ``peer_id`` failed verification: that provider is dropped."""
        peer = self.peers.get(peer_id)
        if peer is None:
            return
        peer.corrupt += 1
        self._drop(peer_id, "sent data that failed verification")

    def failed(self, peer_id: str, piece: int, now: float, reason: str = "failed") -> None:
        """The request for ``piece`` failed (not delivered, or the provider has not got
        it): the piece goes back; the provider backs off or, after too many, is dropped."""
        peer = self.peers.get(peer_id)
        if peer is None or piece not in peer.in_flight:
            return  # requeued already (it timed out, or the peer was lost)
        self._requeue(peer_id, [piece])
        if peer.state is not PeerState.DROPPED:
            self._fail(peer_id, now, reason)

    def lost_peer(self, peer_id: str, now: float, reason: str = "disconnected") -> None:
        """The connection to ``peer_id`` ended: its pieces in flight go to the others at
        once, and it is asked again after a backoff (it may come back)."""
        peer = self.peers.get(peer_id)
        if peer is None or peer.state is PeerState.DROPPED:
            return
        self._requeue(peer_id, list(peer.in_flight))
        self._fail(peer_id, now, reason)

    def refused(self, peer_id: str, reason: str) -> None:
        """The provider does not have the blob: it is dropped."""
        self._drop(peer_id, reason)

    def lost(self, piece: int) -> None:
        """A held piece turned out damaged (the partial file changed): want it again."""
        self.have.discard(piece)
        if piece not in self._owner and piece not in self._wanted:
            self._wanted.append(piece)

    # ------------------------------------------------------------------ status

    @property
    def done(self) -> bool:
        return self.have.complete

    @property
    def stuck(self) -> bool:
        """No provider is left to ask and pieces are missing."""
        return not self.done and all(p.state is PeerState.DROPPED for p in self.peers.values())

    def active_peers(self) -> int:
        return sum(1 for p in self.peers.values() if p.state is not PeerState.DROPPED)
