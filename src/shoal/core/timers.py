"""A deadline heap: one entry per owner, re-armed in O(log n), the next deadline in O(1).

Owners (connections, dials, services) set their single deadline with ``set``; an older
entry of the same owner goes stale and is skipped when it reaches the top. The heap is
rebuilt when stale entries outnumber live ones, so its size stays within twice the owners.
"""

from __future__ import annotations

import heapq
from collections.abc import Hashable


class TimerHeap:
    __slots__ = ("_heap", "_live", "_sequence")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Hashable]] = []
        self._live: dict[Hashable, tuple[float, int]] = {}
        self._sequence = 0

    def __len__(self) -> int:
        return len(self._live)

    def set(self, owner: Hashable, deadline: float | None) -> None:
        """Arm ``owner``'s deadline (None: disarm it)."""
        live = self._live
        current = live.get(owner)
        if deadline is None:
            if current is not None:
                del live[owner]
            return
        if current is not None and current[0] == deadline:
            return
        self._sequence += 1
        entry = (deadline, self._sequence)
        live[owner] = entry
        heapq.heappush(self._heap, (deadline, self._sequence, owner))
        if len(self._heap) > 2 * len(live) + 64:
            self._heap = [(d, s, o) for o, (d, s) in live.items()]
            heapq.heapify(self._heap)

    def deadline(self, owner: Hashable) -> float | None:
        entry = self._live.get(owner)
        return entry[0] if entry is not None else None

    def next(self) -> float | None:
        """The earliest live deadline."""
        heap, live = self._heap, self._live
        while heap:
            deadline, sequence, owner = heap[0]
            entry = live.get(owner)
            if entry is not None and entry[1] == sequence:
                return deadline
            heapq.heappop(heap)
        return None

    def pop_due(self, now: float) -> list[Hashable]:
        """Owners whose deadline is at or before ``now``, earliest first (each disarmed)."""
        out = []
        heap, live = self._heap, self._live
        while heap and heap[0][0] <= now:
            _, sequence, owner = heapq.heappop(heap)
            entry = live.get(owner)
            if entry is not None and entry[1] == sequence:
                del live[owner]
                out.append(owner)
        return out
