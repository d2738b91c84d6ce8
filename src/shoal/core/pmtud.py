"""Datagram size search: Datagram Packetization Layer PMTU Discovery (RFC 8899).

Theory of operation
-------------------
Every path carries ``BASE_PLPMTU`` (1200-byte) datagrams, as QUIC assumes; larger ones
may or may not get through, and no ICMP message is trusted to say. So a connection sends
*probes*: ack-eliciting packets padded to a candidate size, which count neither toward
congestion control's losses nor its retransmissions. A probe acknowledged proves the
size; ``MAX_PROBES`` probes of one size lost mean the path does not carry it.

The search probes the largest size configured first (most paths carry it, so the search
usually ends after one round trip), then bisects between the largest size proven and the
smallest refused, until the two are within ``SEARCH_GRANULARITY``. ``mtu`` is the size
ordinary packets may use: the largest proven.

A path can shrink (a route change, a tunnel). When ``BLACK_HOLE_LOSSES`` ordinary packets
larger than the base size are lost in a row, with no larger packet acknowledged in between,
the size falls back to the base and the search starts again from there. If even
base-size probes are lost, the path is in ERROR: packets stay at the base size, and a
base probe is tried again every ``ERROR_RETRY`` seconds. A completed search starts again
after ``RAISE_INTERVAL`` seconds, in case the path grew.

States and the events that move them are one table, ``TRANSITIONS``::

    DISABLED --start--> BASE --acked--> SEARCHING --done--> SEARCH_COMPLETE
                          |                |   ^                |
                          |           black hole|    raise timer+
                          |                v   |
                          +--failed--> ERROR --acked--> SEARCHING
"""

from __future__ import annotations

from shoal.core.streams.state import NamedState
from shoal.errors import LocalProtocolError

BASE_PLPMTU = 1200
MAX_PLPMTU = 1452
"""A 1500-byte Ethernet MTU less IPv6 and UDP headers (40 + 8 bytes)."""
JUMBO_PLPMTU = 8952
"""A 9000-byte jumbo frame less IPv6 and UDP headers."""
MAX_PROBES = 3
SEARCH_GRANULARITY = 16
BLACK_HOLE_LOSSES = 6
RAISE_INTERVAL = 600.0
ERROR_RETRY = 5.0


class PmtuState(NamedState):
    DISABLED = "disabled"
    BASE = "base"
    SEARCHING = "searching"
    SEARCH_COMPLETE = "search_complete"
    ERROR = "error"


class PmtuEvent(NamedState):
    START = "start"
    PROBE_ACKED = "probe_acked"
    PROBE_FAILED = "probe_failed"
    """``MAX_PROBES`` probes of one size were lost."""
    SEARCH_DONE = "search_done"
    BLACK_HOLE = "black_hole"
    RAISE_TIMER = "raise_timer"
    DISABLE = "disable"


_S, _E = PmtuState, PmtuEvent
TRANSITIONS: dict[PmtuState, dict[PmtuEvent, PmtuState]] = {
    _S.DISABLED: {_E.START: _S.BASE},
    _S.BASE: {_E.PROBE_ACKED: _S.SEARCHING, _E.PROBE_FAILED: _S.ERROR,
              _E.DISABLE: _S.DISABLED},
    _S.SEARCHING: {_E.PROBE_ACKED: _S.SEARCHING, _E.PROBE_FAILED: _S.SEARCHING,
                   _E.SEARCH_DONE: _S.SEARCH_COMPLETE, _E.BLACK_HOLE: _S.BASE,
                   _E.DISABLE: _S.DISABLED},
    _S.SEARCH_COMPLETE: {_E.RAISE_TIMER: _S.SEARCHING, _E.BLACK_HOLE: _S.BASE,
                         _E.DISABLE: _S.DISABLED},
    _S.ERROR: {_E.PROBE_ACKED: _S.SEARCHING, _E.PROBE_FAILED: _S.ERROR,
               _E.DISABLE: _S.DISABLED},
}
del _S, _E


class Pmtud:
    """One path's datagram size search (sans-IO: every input takes ``now``)."""

    def __init__(self, max_size: int = MAX_PLPMTU, base: int = BASE_PLPMTU) -> None:
        if not base <= max_size <= 65_527:
            raise LocalProtocolError("the largest datagram size must be at least the base "
                                     "size and fit in UDP")
        self.base = base
        self.max_size = max_size
        self.state = PmtuState.DISABLED
        self.mtu = base
        """The size ordinary packets may use."""
        self.low = base
        """The largest size proven in this search."""
        self.high = max_size
        """The largest size not yet refused in this search."""
        self.probe_in_flight: int | None = None
        self.losses = 0
        """Probes of the current candidate lost so far."""
        self.large_losses = 0
        self._deadline: float | None = None

    # ----------------------------------------------------------------- state

    def _fire(self, event: PmtuEvent) -> None:
        try:
            self.state = TRANSITIONS[self.state][event]
        except KeyError:
            raise LocalProtocolError(f"path MTU search: {event.value} in {self.state.value}") \
                from None

    def start(self, now: float) -> None:
        """Begin: confirm the base size, then search upward."""
        self._fire(PmtuEvent.START)
        self._restart()

    def disable(self) -> None:
        """Stop probing (the path cannot carry probes, or the application said so)."""
        if self.state is not PmtuState.DISABLED:
            self._fire(PmtuEvent.DISABLE)
        self.mtu = self.base
        self.probe_in_flight = None
        self._deadline = None

    def _restart(self) -> None:
        self.low, self.high = self.base, self.max_size
        self.losses = 0
        self.probe_in_flight = None
        self._deadline = None

    # ----------------------------------------------------------------- probes

    def candidate(self) -> int | None:
        """The size the next probe would have, if one is wanted."""
        if self.state in (PmtuState.BASE, PmtuState.ERROR):
            return self.base if self._deadline is None else None
        if self.state is not PmtuState.SEARCHING:
            return None
        if self.high == self.max_size and self.low < self.max_size:
            return self.max_size
        return (self.low + self.high + 1) // 2

    def next_probe(self, now: float) -> int | None:
        """The size of a probe to send now (the caller pads one packet to it), or None."""
        if self.probe_in_flight is not None:
            return None
        size = self.candidate()
        if size is not None:
            self.probe_in_flight = size
        return size

    def on_probe_acked(self, size: int, now: float) -> None:
        if size != self.probe_in_flight:
            return
        self.probe_in_flight = None
        self.losses = 0
        self.large_losses = 0
        if self.state in (PmtuState.BASE, PmtuState.ERROR):
            self._deadline = None
            self._fire(PmtuEvent.PROBE_ACKED)
            self.mtu = self.low = self.base
            self._check_done(now)
            return
        self._fire(PmtuEvent.PROBE_ACKED)
        self.low = max(self.low, size)
        self.mtu = self.low
        self._check_done(now)

    def on_probe_lost(self, size: int, now: float) -> None:
        if size != self.probe_in_flight:
            return
        self.probe_in_flight = None
        self.losses += 1
        if self.losses < MAX_PROBES:
            return
        self.losses = 0
        self._fire(PmtuEvent.PROBE_FAILED)
        if self.state is PmtuState.ERROR:
            self.mtu = self.base
            self._deadline = now + ERROR_RETRY
            return
        self.high = size - 1
        self._check_done(now)

    def _check_done(self, now: float) -> None:
        if self.state is PmtuState.SEARCHING and self.high - self.low < SEARCH_GRANULARITY:
            self._fire(PmtuEvent.SEARCH_DONE)
            self._deadline = now + RAISE_INTERVAL

    # ----------------------------------------------------------------- ordinary packets

    def on_packet_acked(self, size: int) -> None:
        """An ordinary packet of ``size`` bytes was acknowledged."""
        if size > self.base:
            self.large_losses = 0

    def on_packet_lost(self, size: int, now: float) -> None:
        """An ordinary packet of ``size`` bytes was lost: too many large ones in a row
        mean the path no longer carries the size in use."""
        if size <= self.base or self.state not in (PmtuState.SEARCHING,
                                                   PmtuState.SEARCH_COMPLETE):
            return
        self.large_losses += 1
        if self.large_losses >= BLACK_HOLE_LOSSES:
            self.large_losses = 0
            self._fire(PmtuEvent.BLACK_HOLE)
            self.mtu = self.base
            self._restart()

    # ----------------------------------------------------------------- timers

    def deadline(self) -> float | None:
        return self._deadline

    def on_timer(self, now: float) -> None:
        if self._deadline is None or now < self._deadline:
            return
        self._deadline = None
        if self.state is PmtuState.SEARCH_COMPLETE:
            self._fire(PmtuEvent.RAISE_TIMER)
            self.high = self.max_size
            self.losses = 0
            if self.low >= self.max_size:  # nothing larger to find: look again later
                self._check_done(now)
