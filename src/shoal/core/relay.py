"""Limits on what a node relays for others, and the token bucket it shares with the
endpoint's per-source limits.

A relaying node admits a packet from ``source`` to ``target`` only while ``source`` stays
under its byte rate (``relay_bytes_per_second``, a two-second burst), under its count of
distinct targets, and the node under its total count of relayed pairs. Pairs idle for
longer than the idle timeout, or whose ends went away, are forgotten when room is needed.
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
        self._pairs[pair] = now
        return True

    def _room_for(self, source: bytes, now: float) -> bool:
        if self._has_room(source):
            return True
        idle = self.config.idle_timeout
        for pair, used in list(self._pairs.items()):
            if now - used > idle or not (self._connected(pair[0]) and self._connected(pair[1])):
                del self._pairs[pair]
        return self._has_room(source)

    def _has_room(self, source: bytes) -> bool:
        targets = sum(1 for s, _ in self._pairs if s == source)
        return (targets < self.config.max_relay_targets
                and len(self._pairs) < self.config.max_relayed_pairs)
