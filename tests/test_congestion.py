"""Congestion control and pacing, fed synthetic acknowledgements and losses."""

from __future__ import annotations

import itertools

import pytest

from shoal.core.config import CoreConfig
from shoal.core.congestion import (
    CONTROLLERS,
    PACING_BURST,
    TIMER_GRANULARITY,
    CongestionController,
    Cubic,
    Pacer,
    create,
    register,
)
from shoal.core.connection import Connection
from shoal.core.recovery import RttEstimator
from shoal.core.wire import MAX_DATAGRAM_SIZE
from shoal.errors import LocalProtocolError

MSS = 1200
RTT = 0.1


def _rtt() -> RttEstimator:
    rtt = RttEstimator()
    rtt.update(RTT, 0.0)
    return rtt


def _round(cc: CongestionController, now: float, lose: int = 0) -> float:
    """Send a full window at ``now``; ``lose`` of its packets are lost, the rest acked one
    RTT later, spread over that RTT. Returns the time the round ends."""
    packets = max(int(cc.window // MSS), 1)
    for _ in range(packets):
        cc.on_sent(MSS, now)
    for index in range(packets):
        at = now + RTT + RTT * index / packets
        if index < lose:
            cc.on_lost(MSS, now, at)
        else:
            cc.on_acked(MSS, now, at)
    assert cc.bytes_in_flight == 0
    return now + 2 * RTT


@pytest.mark.parametrize("name", ["newreno", "cubic"])
def test_slow_start_doubles_the_window_each_round_trip(name: str) -> None:
    cc = create(name, _rtt(), MSS)
    assert cc.window == 10 * MSS and cc.in_slow_start
    now = 0.0
    for expected in (20, 40, 80):
        now = _round(cc, now)
        assert cc.window == expected * MSS


@pytest.mark.parametrize(("name", "factor"), [("newreno", 0.5), ("cubic", 0.7)])
def test_a_loss_reduces_the_window_once_per_recovery_period(name: str, factor: float) -> None:
    cc = create(name, _rtt(), MSS)
    now = _round(cc, 0.0)
    before = cc.window
    now = _round(cc, now, lose=3)  # three losses in one window: one reduction
    assert cc.window == pytest.approx(before * factor)
    assert cc.ssthresh == cc.window and not cc.in_slow_start


def test_the_window_never_falls_below_two_datagrams() -> None:
    cc = create("cubic", _rtt(), MSS)
    now = 0.0
    for _ in range(10):
        now = _round(cc, now, lose=1)
    assert cc.window == 2 * MSS
    cc.on_persistent_congestion(now)
    assert cc.window == 2 * MSS


def test_cubic_regains_its_old_maximum_after_k_seconds_then_probes_beyond() -> None:
    rtt = _rtt()
    cc = Cubic(rtt, MSS)
    cc.ssthresh = cc.window = 200 * MSS  # a large window in congestion avoidance
    cc.on_sent(MSS, 0.0)
    cc.on_lost(MSS, 0.0, 0.0)
    assert cc.window == pytest.approx(140 * MSS) and cc.w_max == 200 * MSS
    now, sizes = 0.01, []
    while now < 8.0:
        now = _round(cc, now)
        sizes.append((now, cc.window))
    k = (60 / 0.4) ** (1 / 3)  # (W_max - cwnd) / C, in datagrams: about 5.3 s
    assert cc.k == pytest.approx(k)
    near_k = [w for t, w in sizes if abs(t - k) < 0.25]
    assert all(abs(w - 200 * MSS) < 8 * MSS for w in near_k)
    # concave before K (growth slows), convex after (growth speeds up)
    early = [w for t, w in sizes if t < k]
    late = [w for t, w in sizes if t > k + 0.5]
    assert early[1] - early[0] > early[-1] - early[-2] >= 0
    assert late[-1] - late[-2] > late[1] - late[0] > 0


def test_cubic_fast_convergence_lowers_the_old_maximum() -> None:
    cc = Cubic(_rtt(), MSS)
    cc.ssthresh = cc.window = 100 * MSS
    cc.on_sent(MSS, 0.0)
    cc.on_lost(MSS, 0.0, 0.0)
    assert cc.w_max == 100 * MSS
    now = _round(cc, 1.0)  # grows a little, stays below 100 datagrams
    cc.on_sent(MSS, now)
    cc.on_lost(MSS, now, now)
    assert cc.w_max < cc.window / 0.7 * (1 + 0.7) / 2 + 1


def test_cubic_grows_at_least_as_reno_would_where_its_curve_is_flat() -> None:
    cc = Cubic(_rtt(), MSS)
    cc.ssthresh = cc.window = 14 * MSS
    cc.on_sent(MSS, 0.0)
    cc.on_lost(MSS, 0.0, 0.0)
    now, windows = 0.01, []
    for _ in range(25):  # 5 s, across K (about 2.2 s) where the curve is flat
        now = _round(cc, now)
        assert cc.window >= cc.w_est  # never below what Reno would have reached
        windows.append(cc.window)
    assert all(b > a for a, b in itertools.pairwise(windows))
    assert windows[-1] - windows[0] >= 24 * Cubic.RENO_ALPHA * MSS


def test_acknowledgements_during_recovery_do_not_grow_the_window() -> None:
    cc = create("cubic", _rtt(), MSS)
    for _ in range(20):
        cc.on_sent(MSS, 0.0)
    cc.on_lost(MSS, 0.0, 0.1)
    window = cc.window
    for _ in range(19):
        cc.on_acked(MSS, 0.0, 0.15)
    assert cc.window == window


def test_the_registry() -> None:
    assert {"newreno", "cubic"} <= set(CONTROLLERS)
    with pytest.raises(LocalProtocolError):
        create("bbr9", _rtt())
    with pytest.raises(LocalProtocolError):
        register("cubic", Cubic)
    register("test-slow", CongestionController)
    try:
        assert type(create("test-slow", _rtt())) is CongestionController
    finally:
        del CONTROLLERS["test-slow"]


def test_a_larger_datagram_size_scales_the_window() -> None:
    cc = create("cubic", _rtt(), 1200)
    cc.set_max_datagram_size(1452)
    assert cc.window == 10 * 1452 and cc.mss == 1452


def test_the_pacer_allows_a_burst_then_spaces_packets_at_the_window_rate() -> None:
    cc = create("newreno", _rtt(), MSS)
    cc.ssthresh = cc.window = 100 * MSS  # congestion avoidance: gain 1.25
    pacer = Pacer(MSS)
    pacer.update(cc, 0.0)
    assert pacer.rate == pytest.approx(1.25 * 100 * MSS / RTT)
    now, departures = 0.0, []
    for _ in range(40):
        now = pacer.next_send_time(MSS, now)
        departures.append(now)
        pacer.on_sent(MSS, now)
    assert departures[:10] == [0.0] * 10  # the burst
    gaps = [b - a for a, b in itertools.pairwise(departures[10:])]
    assert all(g == pytest.approx(MSS / pacer.rate) for g in gaps)
    # the 30 paced packets took 30 * MSS / rate: the window spread over 0.8 RTT
    assert departures[-1] == pytest.approx(30 * MSS / pacer.rate)


def test_the_pacer_paces_faster_in_slow_start_and_never_bursts_beyond_the_window() -> None:
    cc = create("cubic", _rtt(), MSS)
    pacer = Pacer(MSS)
    pacer.update(cc, 0.0)
    assert pacer.rate == pytest.approx(2 * 10 * MSS / RTT)
    cc.window = 2 * MSS
    pacer.update(cc, 0.0)
    assert pacer.capacity == 2 * MSS
    pacer.on_sent(MSS, 0.0)
    pacer.on_sent(MSS, 0.0)
    assert pacer.next_send_time(MSS, 0.0) > 0.0


def test_a_node_config_names_a_known_controller() -> None:
    assert CoreConfig().congestion_control == "cubic"
    CoreConfig(congestion_control="newreno")
    with pytest.raises(LocalProtocolError):
        CoreConfig(congestion_control="vegas")


class _Bulk:
    """A flow with endless 1,000-byte extension frames."""

    def has_data(self) -> bool:
        return True

    def fill(self, parts: list[bytes], budget: int) -> tuple[int, object]:
        if budget < 1003:
            return budget, None
        parts.append(b"\xe5\x87\x68" + bytes(1000))  # type, varint length 1000, body
        return budget - 1003, "bulk"

    def on_acked(self, record: object) -> None:
        pass

    def on_lost(self, record: object) -> None:
        pass


def test_a_connection_paces_its_packets_over_the_round_trip() -> None:
    connection = Connection(local_sid=b"l" * 8, remote_sid=b"r" * 8, peer=b"p" * 32,
                            peer_introducer=False, initiator=True, send_key=bytes(32),
                            recv_key=bytes(32), address=("127.0.0.1", 1), now=0.0,
                            config=CoreConfig(), random_bytes=lambda n: bytes(n))
    assert isinstance(connection.cc, Cubic)
    connection.add_flow(_Bulk())
    connection.rtt.update(0.1, 0.0)
    connection.cc.window = connection.cc.ssthresh = 1_000_000  # congestion avoidance
    connection.pacer.update(connection.cc, 0.0)
    burst = connection.datagrams(0.0)  # the bucket starts with 10 datagrams' worth
    sizes = sum(len(d) for d, _, _ in burst)
    start = PACING_BURST * MAX_DATAGRAM_SIZE
    assert start - MAX_DATAGRAM_SIZE < sizes <= start + MAX_DATAGRAM_SIZE
    # it then holds up to one timer tick at the rate (2 ms), more than 10 datagrams here
    assert connection.pacer.capacity == pytest.approx(1.25e7 * TIMER_GRANULARITY)
    deadline = connection.get_timer()
    rate = connection.pacer.rate
    assert rate == pytest.approx(1.25 * 1_000_000 / 0.1)
    assert deadline is not None and 0 < deadline <= MAX_DATAGRAM_SIZE / rate
    assert connection.datagrams(deadline / 2) == []
    assert len(connection.datagrams(deadline)) == 1
    sent, now = 0, deadline
    while now < deadline + 0.05:  # 50 ms, flushing whenever the connection's timer says
        now = connection.get_timer()
        sent += sum(len(d) for d, _, _ in connection.datagrams(now))
    assert sent == pytest.approx(rate * 0.05, rel=0.05)  # the window would allow 1 MB
