"""Limits on what a node relays for others, and the token bucket it shares with the
endpoint's per-source limits.

A relaying node admits a packet from ``source`` to ``target`` only while ``source`` stays
under its byte rate (``relay_bytes_per_second``, a two-second burst), under its count of
distinct targets, and the node under its total count of relayed pairs. The node also
relays at most ``relay_total_bytes_per_second`` in all, beyond what each source may send
anyway (``LIGHT_RATE``): relaying costs a decryption, an encryption and a send per
packet, and a few heavy sources must not spend the CPU that everyone's traffic needs.
When the node is full, room is made in this order: pairs idle for longer than the idle
timeout or whose ends went away are forgotten; then, so that the budget is shared
fairly, the least recently used pair of the source holding the most pairs goes, if that
source holds at least two more than the newcomer. A source never loses a pair to one
that holds as many.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable

from shoal.core.admission import FairShares
from shoal.core.config import CoreConfig

LIGHT_RATE = 32 * 1024
"""Bytes a second a source may have relayed whatever the node-wide budget says, so
that heavy sources cannot crowd out a chat."""


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


class KeyedBuckets:
    """A full ``TokenBucket`` per key (a source IP, a peer, a network), made on first use;
    past ``max_keys`` keys all are forgotten at once, so a flood of keys cannot grow it."""

    __slots__ = ("rate", "burst", "max_keys", "_buckets")

    def __init__(self, rate: float, burst: float, max_keys: int = 65536) -> None:
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._buckets: dict[Hashable, TokenBucket] = {}

    def take(self, key: Hashable, now: float, amount: float = 1) -> bool:
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) > self.max_keys:
                self._buckets.clear()
            bucket = self._buckets[key] = TokenBucket(self.burst, now)
        return bucket.take(amount, self.rate, self.burst, now)


class RelayQuotas:
    """Admission of relayed packets. ``connected(peer)`` says whether a peer still has a
    direct session with this node."""

    def __init__(self, config: CoreConfig, connected: Callable[[bytes], bool]) -> None:
        self.config = config
        self._connected = connected
        rate = config.relay_bytes_per_second
        self._bytes = KeyedBuckets(rate, 2 * rate, max_keys=4 * config.max_relayed_pairs)
        self._total = TokenBucket(2 * config.relay_total_bytes_per_second, 0.0)
        self._light = KeyedBuckets(LIGHT_RATE, 2 * LIGHT_RATE,
                                   max_keys=4 * config.max_relayed_pairs)
        self._pairs: dict[tuple[bytes, bytes], float] = {}
        self._shares = FairShares()
        """Each source's pairs, least recently used first."""
        self._swept = -math.inf
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
        if not self._bytes.take(source, now, size):
            return False
        total = self.config.relay_total_bytes_per_second
        if not self._light.take(source, now, size) \
                and not self._total.take(size, total, 2 * total, now):
            return False
        self._pairs[pair] = now
        self._shares.add(pair, source)
        self._shares.touch(pair)
        return True

    def _drop(self, pair: tuple[bytes, bytes]) -> None:
        del self._pairs[pair]
        self._shares.remove(pair)

    def _room_for(self, source: bytes, now: float) -> bool:
        if self._shares.count(source) >= self.config.max_relay_targets:
            self._forget_stale(now)
            return self._shares.count(source) < self.config.max_relay_targets
        if len(self._pairs) < self.config.max_relayed_pairs:
            return True
        self._forget_stale(now)
        if len(self._pairs) < self.config.max_relayed_pairs:
            return True
        victim = self._shares.victim(source)
        if victim is None:
            return False  # everyone holds about as much as the newcomer: full
        self._drop(victim)  # type: ignore[arg-type]
        self.evicted += 1
        return True

    def _forget_stale(self, now: float) -> None:
        # A sweep walks every pair: at most one a second, however many packets ask.
        if now - self._swept < 1.0:
            return
        self._swept = now
        idle = self.config.idle_timeout
        for (source, target), used in list(self._pairs.items()):
            if now - used > idle or not (self._connected(source) and self._connected(target)):
                self._drop((source, target))
