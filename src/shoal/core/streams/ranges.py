"""Sets of byte ranges: what was acknowledged, what was lost, what arrived out of order."""

from __future__ import annotations

from bisect import bisect_left, bisect_right


class ByteRanges:
    """Disjoint half-open ranges ``[lo, hi)``, sorted and merged when they touch."""

    __slots__ = ("los", "his")

    def __init__(self) -> None:
        self.los: list[int] = []
        self.his: list[int] = []

    def __bool__(self) -> bool:
        return bool(self.los)

    def __len__(self) -> int:
        return len(self.los)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return zip(self.los, self.his, strict=True)

    def add(self, lo: int, hi: int) -> None:
        if lo >= hi:
            return
        los, his = self.los, self.his
        first = bisect_left(his, lo)  # first range that ends at or after lo
        last = bisect_right(los, hi)  # ranges before this start at or before hi
        if first < last:
            lo = min(lo, los[first])
            hi = max(hi, his[last - 1])
        los[first:last] = [lo]
        his[first:last] = [hi]

    def remove(self, lo: int, hi: int) -> None:
        if lo >= hi:
            return
        los, his = self.los, self.his
        first = bisect_right(his, lo)  # first range ending after lo
        last = bisect_left(los, hi)  # ranges before this start before hi
        if first >= last:
            return
        keep_los: list[int] = []
        keep_his: list[int] = []
        if los[first] < lo:
            keep_los.append(los[first])
            keep_his.append(lo)
        if his[last - 1] > hi:
            keep_los.append(hi)
            keep_his.append(his[last - 1])
        los[first:last] = keep_los
        his[first:last] = keep_his

    def covers(self, lo: int, hi: int) -> bool:
        """Whether every byte of ``[lo, hi)`` is in the set."""
        if lo >= hi:
            return True
        index = bisect_right(self.los, lo) - 1
        return index >= 0 and self.his[index] >= hi

    def missing(self, lo: int, hi: int) -> list[tuple[int, int]]:
        """The parts of ``[lo, hi)`` not in the set."""
        out = []
        index = max(bisect_right(self.los, lo) - 1, 0)
        cursor = lo
        los, his = self.los, self.his
        while index < len(los) and los[index] < hi and cursor < hi:
            if his[index] > cursor:
                if los[index] > cursor:
                    out.append((cursor, los[index]))
                cursor = his[index]
            index += 1
        if cursor < hi:
            out.append((cursor, hi))
        return out

    def pop_below(self, floor: int) -> int:
        """Drop what lies below ``floor``; returns the end of a range starting at or
        below ``floor`` that reaches beyond it (the new floor), else ``floor``."""
        if self.los and self.los[0] < floor:
            self.remove(0, floor)
        if self.los and self.los[0] == floor:
            floor = self.his[0]
            del self.los[0], self.his[0]
        return floor

    def first(self) -> tuple[int, int] | None:
        return (self.los[0], self.his[0]) if self.los else None
