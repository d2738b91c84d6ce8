"""Received-packet ranges and the anti-replay window."""

import itertools

from hypothesis import given
from hypothesis import strategies as st

from shoal.core.recovery import RangeSet, ReplayWindow, RttEstimator


@given(st.lists(st.integers(0, 300), max_size=200))
def test_range_set_matches_a_plain_set(numbers: list[int]) -> None:
    ranges = RangeSet(limit=1000)
    for n in numbers:
        ranges.add(n)
    covered = {n for lo, hi in ranges.as_tuples() for n in range(lo, hi + 1)}
    assert covered == set(numbers)
    flat = ranges.as_tuples()
    for (lo1, _hi1), (_lo2, hi2) in itertools.pairwise(flat):
        assert hi2 < lo1 - 1  # sorted high to low, disjoint, never adjacent


@given(st.lists(st.integers(0, 10000), max_size=300))
def test_replay_window_accepts_each_number_once(numbers: list[int]) -> None:
    window = ReplayWindow(size=4096)
    seen: set[int] = set()
    for n in numbers:
        accepted = window.check(n)
        # new and within the window of the highest: accepted; anything else: refused
        expected = n not in seen and (not seen or n > max(seen) - 4096)
        assert accepted == expected
        if accepted:
            window.record(n)
            seen.add(n)


def test_replay_window_refuses_packets_older_than_the_window() -> None:
    window = ReplayWindow(size=64)
    window.record(1000)
    assert not window.check(1000 - 64)
    assert window.check(1000 - 63)


def test_rtt_estimator_converges() -> None:
    rtt = RttEstimator()
    for _ in range(50):
        rtt.update(0.050, 0.0)
    assert abs(rtt.smoothed - 0.050) < 1e-3
    assert rtt.pto() < 0.1
