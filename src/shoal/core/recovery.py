"""Loss recovery building blocks: RTT estimation, the set of received packet numbers that
ACK frames report, and the anti-replay window (congestion control is in ``congestion``).

They follow RFC 9002 (QUIC loss detection and congestion control) in spirit and
constants: packet threshold 3, time threshold 9/8 RTT, initial RTT 333 ms.
"""

from __future__ import annotations

INITIAL_RTT = 0.333
GRANULARITY = 0.001
PACKET_THRESHOLD = 3
TIME_THRESHOLD = 9 / 8
MAX_ACK_DELAY = 0.025


class RttEstimator:
    """Smoothed RTT and variance (RFC 9002 section 5)."""

    __slots__ = ("latest", "min", "smoothed", "variance", "_has_sample")

    def __init__(self) -> None:
        self.latest = 0.0
        self.min = 0.0
        self.smoothed = INITIAL_RTT
        self.variance = INITIAL_RTT / 2
        self._has_sample = False

    def update(self, sample: float, ack_delay: float) -> None:
        self.latest = sample
        if not self._has_sample:
            self._has_sample = True
            self.min = sample
            self.smoothed = sample
            self.variance = sample / 2
            return
        self.min = min(self.min, sample)
        adjusted = sample - ack_delay if sample - ack_delay >= self.min else sample
        self.variance = 0.75 * self.variance + 0.25 * abs(self.smoothed - adjusted)
        self.smoothed = 0.875 * self.smoothed + 0.125 * adjusted

    def pto(self) -> float:
        """The probe timeout, before backoff."""
        return self.smoothed + max(4 * self.variance, GRANULARITY) + MAX_ACK_DELAY

    def loss_delay(self) -> float:
        return max(TIME_THRESHOLD * max(self.latest, self.smoothed), GRANULARITY)


class RangeSet:
    """Received packet numbers as inclusive ranges, highest first, at most ``limit`` kept."""

    __slots__ = ("ranges", "limit")

    def __init__(self, limit: int = 32) -> None:
        self.ranges: list[list[int]] = []
        self.limit = limit

    def add(self, pn: int) -> None:
        ranges = self.ranges
        if ranges:
            top = ranges[0]
            if pn == top[1] + 1:
                top[1] = pn
                return
            if pn > top[1]:
                ranges.insert(0, [pn, pn])
                del ranges[self.limit :]
                return
        for index, (lo, hi) in enumerate(ranges):
            if lo <= pn <= hi:
                return
            if pn == hi + 1:
                ranges[index][1] = pn
                self._merge(index)
                return
            if pn == lo - 1:
                ranges[index][0] = pn
                if index + 1 < len(ranges):
                    self._merge(index)
                return
            if pn > hi:
                ranges.insert(index, [pn, pn])
                del ranges[self.limit :]
                return
        if len(ranges) < self.limit:
            ranges.append([pn, pn])

    def _merge(self, index: int) -> None:
        ranges = self.ranges
        if index > 0 and ranges[index - 1][0] == ranges[index][1] + 1:
            ranges[index - 1][0] = ranges[index][0]
            del ranges[index]
            index -= 1
        if index + 1 < len(ranges) and ranges[index + 1][1] + 1 == ranges[index][0]:
            ranges[index][0] = ranges[index + 1][0]
            del ranges[index + 1]

    def as_tuples(self) -> list[tuple[int, int]]:
        return [(lo, hi) for lo, hi in self.ranges]


MAX_PACKET_NUMBER = 2**62 - 1
"""The largest packet number an ACK frame can name (a QUIC varint)."""
MAX_PACKET_JUMP = 1 << 24
"""How far beyond the highest number seen a packet may be. A sender numbers its packets
one by one and congestion control keeps it from sending millions unanswered, so a larger
jump is an attack (or a corrupt peer): the packet is dropped before decryption."""


class ReplayWindow:
    """Accepts each packet number once, within ``size`` of the highest seen (RFC 6479 idea).

    Only numbers from the highest seen up to ``MAX_PACKET_JUMP`` beyond it, and at most
    ``MAX_PACKET_NUMBER``, are new: whatever a peer sends, the window costs ``size`` bits
    and a check or a record costs O(size / 64).
    """

    __slots__ = ("highest", "bitmap", "size", "_mask")

    def __init__(self, size: int = 4096) -> None:
        self.highest = -1
        self.bitmap = 0
        self.size = size
        self._mask = (1 << size) - 1

    def check(self, pn: int) -> bool:
        """Whether ``pn`` is new and inside the window (does not record it)."""
        if pn > self.highest:
            return pn <= MAX_PACKET_NUMBER and pn - self.highest <= MAX_PACKET_JUMP
        offset = self.highest - pn
        return offset < self.size and not (self.bitmap >> offset) & 1

    def record(self, pn: int) -> None:
        if pn > self.highest:
            shift = pn - self.highest
            if shift >= self.size:
                self.bitmap = 1
            else:
                self.bitmap = ((self.bitmap << shift) | 1) & self._mask
            self.highest = pn
        else:
            self.bitmap |= 1 << (self.highest - pn)
