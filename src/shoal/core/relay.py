"""Limits on what a node relays for others, and the token bucket it shares with the
endpoint's per-source limits.

A relaying node admits a packet from ``source`` to ``target`` only while ``source`` stays
under its byte rate (``relay_bytes_per_second``, a two-second burst), under its count of
distinct targets, and the node under its total count of relayed pairs. When the node is
full, room is made in this order: pairs idle for longer than the idle timeout or whose
ends went away are forgotten; then, so that the budget is shared fairly, the least
recently used pair of the source holding the most pairs goes, if that source holds at
least two more than the newcomer. A source never loses a pair to one that holds as many.
"""

from __future__ import annotations

from collections.abc import Callable

from shoal.core.config import CoreConfig


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved; refilled on each ``take``."""

    __slots__ = ("tokens", "stamp")

    def __init__(self, tokens: float, stamp: float) -> None:
        self.tokens = tokens
        self.stamp = stamp

    def take(self, amount: float, rate: float, burst: float, now: float) -> bool:
        self.tokens = min(burst, self.tokens + (now - self.stamp) * rate)
        self.stamp = now
        if self.tokens < amount:
            return False
        self.tokens -= amount
        return True


class RelayQuotas:
    """Admission of relayed packets. ``connected(peer)`` says whether a peer still has a
    direct session with this node."""

    def __init__(self, config: CoreConfig, connected: Callable[[bytes], bool]) -> None:
        self.config = config
        self._connected = connected
        self._buckets: dict[bytes, TokenBucket] = {}
        self._pairs: dict[tuple[bytes, bytes], float] = {}
        self._by_source: dict[bytes, dict[bytes, float]] = {}
        """Each source's targets, least recently used first."""
        self.evicted = 0
        """Pairs taken from heavier sources to make room (for tests and stats)."""

    @property
    def pairs(self) -> int:
        return len(self._pairs)

    def admit(self, source: bytes, target: bytes, size: int, now: float) -> bool:
        """Whether a ``size``-byte packet from ``source`` to ``target`` may be relayed."""
        pair = (source, target)
        if pair not in self._pairs and not self._room_for(source, now):
            return False
        rate = self.config.relay_bytes_per_second
        bucket = self._buckets.get(source)
        if bucket is None:
            if len(self._buckets) > 4 * self.config.max_relayed_pairs:
                self._buckets.clear()
            bucket = self._buckets[source] = TokenBucket(2 * rate, now)
        if not bucket.take(size, rate, 2 * rate, now):
            return False
        self._use(source, target, now)
        return True

    def _use(self, source: bytes, target: bytes, now: float) -> None:
        self._pairs[(source, target)] = now
        targets = self._by_source.setdefault(source, {})
        targets.pop(target, None)
        targets[target] = now  # most recently used last

    def _drop(self, source: bytes, target: bytes) -> None:
        del self._pairs[(source, target)]
        targets = self._by_source[source]
        del targets[target]
        if not targets:
            del self._by_source[source]

    def _count(self, source: bytes) -> int:
        return len(self._by_source.get(source, ()))

    def _room_for(self, source: bytes, now: float) -> bool:
        if self._count(source) >= self.config.max_relay_targets:
            self._forget_stale(now)
            return self._count(source) < self.config.max_relay_targets
        if len(self._pairs) < self.config.max_relayed_pairs:
            return True
        self._forget_stale(now)
        if len(self._pairs) < self.config.max_relayed_pairs:
            return True
        heaviest = max(self._by_source, key=lambda s: len(self._by_source[s]))
        if self._count(heaviest) < self._count(source) + 2:
            return False  # everyone holds about as much as the newcomer: full
        oldest = next(iter(self._by_source[heaviest]))
        self._drop(heaviest, oldest)
        self.evicted += 1
        return True

    def _forget_stale(self, now: float) -> None:
        idle = self.config.idle_timeout
        for (source, target), used in list(self._pairs.items()):
            if now - used > idle or not (self._connected(source) and self._connected(target)):
                self._drop(source, target)
