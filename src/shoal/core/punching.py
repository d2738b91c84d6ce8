"""Scheduling of birthday punches: one at a time per node, a queue, a cool-down, and the
pool sockets they open (see ``traversal`` for what one punch sends)."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable

from shoal.core.traversal import POOL_SIZE, PUNCH_COOLDOWN, BirthdayPunch
from shoal.core.wire import Address


class PunchScheduler:
    """Runs queued punches in turn. Pool socket ids are handed out here; sockets no
    punch, handshake or session uses any more are listed in ``closing``."""

    def __init__(self, random_bytes: Callable[[int], bytes]) -> None:
        self._random = random_bytes
        self.active: BirthdayPunch | None = None
        self.queue: deque[bytes] = deque()
        self.idle_at = 0.0
        self.pool_sockets: set[int] = set()
        self.closing: list[int] = []
        self._next_socket = 1

    def request(self, peer: bytes) -> None:
        if (self.active is None or self.active.peer != peer) and peer not in self.queue:
            self.queue.append(peer)

    def forget(self, peer: bytes) -> None:
        """Drop a queued punch for ``peer`` (its plan no longer needs one)."""
        if peer in self.queue:
            self.queue.remove(peer)

    def is_punching(self, peer: bytes) -> bool:
        return self.active is not None and self.active.peer == peer

    def get_timer(self) -> float | None:
        if self.active is not None:
            deadline = self.active.get_timer()
            return self.active.deadline if deadline is None else deadline
        return self.idle_at if self.queue else None

    def run(
        self, now: float, plan_for: Callable[[bytes], tuple[str, Address, bytes] | None]
    ) -> list[tuple[bytes, Address, int]]:
        """Datagrams due now. ``plan_for(peer)`` gives (role, target, token) for a queued
        peer that still needs a punch, or None."""
        if self.active is not None:
            out = self.active.due(now)
            self.pool_sockets.update(s for _, _, s in out if s > 0)
            if self.active.finished:
                self.end(now)
            return out
        while self.queue and now >= self.idle_at:
            peer = self.queue.popleft()
            plan = plan_for(peer)
            if plan is None:
                continue
            role, target, token = plan
            first = self._next_socket
            self._next_socket += POOL_SIZE
            self.active = BirthdayPunch(role=role, peer=peer, target=target, token=token,
                                        now=now, random_bytes=self._random, first_socket=first)
            return self.run(now, plan_for)
        return []

    def end(self, now: float) -> None:
        if self.active is None:
            return
        self.active.finished = True
        self.active = None
        self.idle_at = now + PUNCH_COOLDOWN

    def sweep(self, in_use: Iterable[int]) -> None:
        """Close pool sockets outside the active punch and not in ``in_use``."""
        if not self.pool_sockets:
            return
        keep = set(self.active.sockets) if self.active is not None else set()
        keep.update(in_use)
        for socket in sorted(self.pool_sockets - keep):
            self.pool_sockets.discard(socket)
            self.closing.append(socket)

    def close_all(self) -> None:
        self.closing.extend(sorted(self.pool_sockets))
        self.pool_sockets.clear()
        self.active = None
        self.queue.clear()
