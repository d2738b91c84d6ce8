"""Congestion controllers, chosen by name, and the pacer that spreads a window over an RTT.

Theory of operation
-------------------
A connection's loss recovery tells its controller of every packet sent (``on_sent``),
acknowledged (``on_acked``) or declared lost (``on_lost``), with the time it was sent;
the controller keeps ``window``, the bytes that may be in flight, and ``can_send`` says
whether one more packet fits. A loss starts a recovery period: the window shrinks once,
and losses or acknowledgements of packets sent before the period began change nothing
(RFC 9002 section 7.3.2). Persistent congestion (every packet over a long span lost)
collapses the window to its minimum.

Controllers register under a name (``register``) and are made with ``create(name, rtt)``;
each reads the connection's ``RttEstimator``:

- ``newreno``: RFC 9002 section 7: slow start, then one datagram per window per RTT;
  a loss halves the window.
- ``cubic``: RFC 9438: after a loss the window is ``C*(t-K)**3 + W_max`` at ``t``
  seconds into the epoch, concave up to the old maximum and convex beyond it, never
  below what Reno would reach (the Reno-friendly estimate); a loss multiplies the window
  by 0.7, and a loss before the old maximum was regained lowers that maximum further
  (fast convergence).

``Pacer`` is a token bucket: it fills at ``N * window / smoothed_rtt`` (N = 1.25, 2 in
slow start: RFC 9002 section 7.7) up to a burst of ``PACING_BURST`` datagrams (or
of ``TIMER_GRANULARITY`` seconds at that rate, if more), and
``next_send_time`` says when a packet of a given size may leave.
"""

from __future__ import annotations

from collections.abc import Callable

from shoal.core.recovery import GRANULARITY, RttEstimator
from shoal.core.wire import MAX_DATAGRAM_SIZE
from shoal.errors import LocalProtocolError

INITIAL_WINDOW_PACKETS = 10
MINIMUM_WINDOW_PACKETS = 2
PACING_BURST = 10
"""Datagrams the pacer lets leave back to back (at most the window)..."""
TIMER_GRANULARITY = 0.002
"""...or, if more, what the pacing rate allows in this many seconds: drivers' timers
fire no more precisely (asyncio's wait on Linux rounds up to the millisecond), and a
finer burst would cap the rate at a burst per timer tick."""


class CongestionController:
    """The common part: bytes in flight, slow start, recovery periods; NewReno's growth."""

    name = "newreno"
    LOSS_REDUCTION = 0.5

    def __init__(self, rtt: RttEstimator, max_datagram_size: int = MAX_DATAGRAM_SIZE) -> None:
        self.rtt = rtt
        self.mss = max_datagram_size
        self.window = float(INITIAL_WINDOW_PACKETS * max_datagram_size)
        self.ssthresh = float("inf")
        self.bytes_in_flight = 0
        self.recovery_start = float("-inf")

    @property
    def minimum_window(self) -> float:
        return float(MINIMUM_WINDOW_PACKETS * self.mss)

    @property
    def in_slow_start(self) -> bool:
        return self.window < self.ssthresh

    def set_max_datagram_size(self, size: int) -> None:
        """The path carries larger (or smaller) datagrams: scale the window's unit."""
        self.window = max(self.window * size / self.mss, float(MINIMUM_WINDOW_PACKETS * size))
        self.mss = size

    def can_send(self, size: int) -> bool:
        return self.bytes_in_flight + size <= self.window

    def on_sent(self, size: int, now: float) -> None:
        self.bytes_in_flight += size

    def on_discarded(self, size: int) -> None:
        """A packet in flight no longer counts (its keys or path were dropped)."""
        self.bytes_in_flight -= size

    def on_acked(self, size: int, time_sent: float, now: float) -> None:
        self.bytes_in_flight -= size
        if time_sent <= self.recovery_start:
            return
        if self.in_slow_start:
            self.window += size
        else:
            self._grow(size, now)

    def _grow(self, size: int, now: float) -> None:
        self.window += self.mss * size / self.window

    def on_lost(self, size: int, time_sent: float, now: float) -> None:
        self.bytes_in_flight -= size
        if time_sent <= self.recovery_start:
            return
        self.recovery_start = now
        self._reduce(now)

    def _reduce(self, now: float) -> None:
        self.window = max(self.window * self.LOSS_REDUCTION, self.minimum_window)
        self.ssthresh = self.window

    def on_persistent_congestion(self, now: float) -> None:
        self.window = self.minimum_window
        self.recovery_start = now


class Cubic(CongestionController):
    """CUBIC (RFC 9438)."""

    name = "cubic"
    C = 0.4
    LOSS_REDUCTION = 0.7
    RENO_ALPHA = 3 * (1 - LOSS_REDUCTION) / (1 + LOSS_REDUCTION)

    def __init__(self, rtt: RttEstimator, max_datagram_size: int = MAX_DATAGRAM_SIZE) -> None:
        super().__init__(rtt, max_datagram_size)
        self.w_max = 0.0
        """The window before the last reduction (bytes)."""
        self.k = 0.0
        """Seconds from the epoch's start until the curve regains ``w_max``."""
        self.epoch_start: float | None = None
        self.w_est = 0.0
        """What Reno would have reached in this epoch (bytes)."""

    def w_cubic(self, t: float) -> float:
        """The curve's window ``t`` seconds into the epoch (bytes)."""
        return self.C * (t - self.k) ** 3 * self.mss + self.w_max

    def _grow(self, size: int, now: float) -> None:
        if self.epoch_start is None:
            self.epoch_start = now
            if self.w_max <= self.window:
                self.w_max = self.window
                self.k = 0.0
            else:
                self.k = ((self.w_max - self.window) / (self.C * self.mss)) ** (1 / 3)
            self.w_est = self.window
        t = now - self.epoch_start
        alpha = self.RENO_ALPHA if self.w_est < self.w_max else 1.0
        self.w_est += alpha * self.mss * size / self.window
        cubic = self.w_cubic(t)
        if cubic < self.w_est:
            self.window = max(self.window, self.w_est)
            return
        target = min(max(self.w_cubic(t + self.rtt.smoothed), self.window), 1.5 * self.window)
        self.window += (target - self.window) * size / self.window

    def _reduce(self, now: float) -> None:
        if self.window < self.w_max:  # fast convergence: yield to newer flows
            self.w_max = self.window * (1 + self.LOSS_REDUCTION) / 2
        else:
            self.w_max = self.window
        self.window = max(self.window * self.LOSS_REDUCTION, self.minimum_window)
        self.ssthresh = self.window
        self.epoch_start = None

    def on_persistent_congestion(self, now: float) -> None:
        super().on_persistent_congestion(now)
        self.epoch_start = None
        self.w_max = 0.0


ControllerFactory = Callable[[RttEstimator, int], CongestionController]
CONTROLLERS: dict[str, ControllerFactory] = {}
"""Congestion controllers by name."""


def register(name: str, factory: ControllerFactory) -> None:
    """Make ``create(name, ...)`` build controllers with ``factory``."""
    if name in CONTROLLERS:
        raise LocalProtocolError(f"congestion controller {name!r} is already registered")
    CONTROLLERS[name] = factory


def create(name: str, rtt: RttEstimator,
           max_datagram_size: int = MAX_DATAGRAM_SIZE) -> CongestionController:
    """A new controller of the kind registered as ``name``."""
    try:
        factory = CONTROLLERS[name]
    except KeyError:
        known = ", ".join(sorted(CONTROLLERS))
        raise LocalProtocolError(f"unknown congestion controller {name!r} (known: {known})") \
            from None
    return factory(rtt, max_datagram_size)


register("newreno", CongestionController)
register("cubic", Cubic)


class Pacer:
    """A token bucket that spreads a congestion window over the smoothed RTT."""

    __slots__ = ("rate", "capacity", "tokens", "updated", "mss")

    def __init__(self, max_datagram_size: int = MAX_DATAGRAM_SIZE) -> None:
        self.mss = max_datagram_size
        self.rate = float("inf")
        """Bytes per second."""
        self.capacity = float(PACING_BURST * max_datagram_size)
        self.tokens = self.capacity
        self.updated: float | None = None

    def update(self, controller: CongestionController, now: float) -> None:
        """Take the controller's window and RTT (after each acknowledgement or loss)."""
        self._refill(now)
        gain = 2.0 if controller.in_slow_start else 1.25
        self.rate = gain * controller.window / max(controller.rtt.smoothed, GRANULARITY)
        self.mss = controller.mss
        self.capacity = float(min(max(PACING_BURST * controller.mss,
                                      self.rate * TIMER_GRANULARITY),
                                  max(controller.window, controller.mss)))
        self.tokens = min(self.tokens, self.capacity)

    def _refill(self, now: float) -> None:
        updated = self.updated
        if updated is None:
            self.updated = now
        elif now > updated:  # (called again at the same time, as per packet: nothing to do)
            self.tokens = min(self.capacity, self.tokens + (now - updated) * self.rate)
            self.updated = now

    def next_send_time(self, size: int, now: float) -> float:
        """When a packet of ``size`` bytes may leave (``now`` if it may at once)."""
        self._refill(now)
        if self.tokens >= min(size, self.capacity):
            return now
        return now + (min(size, self.capacity) - self.tokens) / self.rate

    def on_sent(self, size: int, now: float) -> None:
        self._refill(now)
        self.tokens -= size
