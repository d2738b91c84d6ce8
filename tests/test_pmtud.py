"""The datagram size search (RFC 8899) against simulated paths."""

from __future__ import annotations

import asyncio
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shoal import sim
from shoal.core.config import CoreConfig
from shoal.core.pmtud import (
    BASE_PLPMTU,
    BLACK_HOLE_LOSSES,
    ERROR_RETRY,
    JUMBO_PLPMTU,
    MAX_PLPMTU,
    MAX_PROBES,
    RAISE_INTERVAL,
    SEARCH_GRANULARITY,
    TRANSITIONS,
    Pmtud,
    PmtuEvent,
    PmtuState,
)
from shoal.errors import LocalProtocolError


def _search(pmtud: Pmtud, path_mtu: int, now: float = 0.0, limit: int = 100) -> int:
    """Send every probe the search asks for over a path carrying ``path_mtu``; returns
    how many probes were sent."""
    sent = 0
    while sent < limit and (size := pmtud.next_probe(now)) is not None:
        sent += 1
        now += 0.05
        if size <= path_mtu:
            pmtud.on_probe_acked(size, now)
        else:
            pmtud.on_probe_lost(size, now)
    return sent


def test_a_path_that_carries_the_largest_size_needs_two_probes() -> None:
    pmtud = Pmtud()
    assert pmtud.state is PmtuState.DISABLED and pmtud.next_probe(0.0) is None
    pmtud.start(0.0)
    assert pmtud.state is PmtuState.BASE and pmtud.mtu == BASE_PLPMTU
    assert _search(pmtud, 1500) == 2
    assert pmtud.state is PmtuState.SEARCH_COMPLETE and pmtud.mtu == MAX_PLPMTU
    assert pmtud.deadline() == pytest.approx(0.1 + RAISE_INTERVAL)


@given(st.integers(BASE_PLPMTU, 10_000))
def test_the_search_finds_the_path_size_within_its_granularity(path_mtu: int) -> None:
    pmtud = Pmtud(max_size=JUMBO_PLPMTU)
    pmtud.start(0.0)
    probes = _search(pmtud, path_mtu)
    assert pmtud.state is PmtuState.SEARCH_COMPLETE
    assert pmtud.mtu <= min(path_mtu, JUMBO_PLPMTU)
    assert pmtud.mtu > min(path_mtu, JUMBO_PLPMTU) - SEARCH_GRANULARITY
    assert probes <= 2 + MAX_PROBES * 14  # one lost size costs MAX_PROBES probes


def test_one_lost_probe_is_not_a_refusal() -> None:
    pmtud = Pmtud()
    pmtud.start(0.0)
    _search(pmtud, 1200, limit=1)
    assert pmtud.next_probe(1.0) == MAX_PLPMTU
    pmtud.on_probe_lost(MAX_PLPMTU, 1.1)
    assert pmtud.next_probe(1.2) == MAX_PLPMTU  # the same size again
    pmtud.on_probe_acked(MAX_PLPMTU, 1.3)
    assert pmtud.mtu == MAX_PLPMTU


def test_a_path_below_the_base_size_is_an_error_retried_later() -> None:
    pmtud = Pmtud()
    pmtud.start(0.0)
    _search(pmtud, 1000)
    assert pmtud.state is PmtuState.ERROR and pmtud.mtu == BASE_PLPMTU
    retry = pmtud.deadline()
    assert retry is not None and pmtud.next_probe(retry - 1) is None
    pmtud.on_timer(retry - 1)
    assert pmtud.next_probe(retry - 0.5) is None
    pmtud.on_timer(retry)
    _search(pmtud, 1000, now=retry)  # still broken: ERROR again
    assert pmtud.state is PmtuState.ERROR
    assert pmtud.deadline() == pytest.approx(retry + MAX_PROBES * 0.05 + ERROR_RETRY)
    pmtud.on_timer(pmtud.deadline())
    _search(pmtud, 1452, now=30.0)  # the path healed
    assert pmtud.state is PmtuState.SEARCH_COMPLETE and pmtud.mtu == MAX_PLPMTU


def test_a_black_hole_falls_back_to_the_base_size_and_searches_again() -> None:
    pmtud = Pmtud()
    pmtud.start(0.0)
    _search(pmtud, 1452)
    for _ in range(BLACK_HOLE_LOSSES - 1):
        pmtud.on_packet_lost(1452, 1.0)
    assert pmtud.mtu == MAX_PLPMTU
    pmtud.on_packet_lost(1200, 1.0)  # small packets do not count
    pmtud.on_packet_lost(1452, 1.0)
    assert pmtud.state is PmtuState.BASE and pmtud.mtu == BASE_PLPMTU
    _search(pmtud, 1300, now=2.0)
    assert pmtud.state is PmtuState.SEARCH_COMPLETE
    assert 1300 - SEARCH_GRANULARITY < pmtud.mtu <= 1300


def test_large_packets_acknowledged_between_losses_are_no_black_hole() -> None:
    pmtud = Pmtud()
    pmtud.start(0.0)
    _search(pmtud, 1452)
    for _ in range(5 * BLACK_HOLE_LOSSES):
        pmtud.on_packet_lost(1452, 1.0)
        pmtud.on_packet_lost(1452, 1.0)
        pmtud.on_packet_acked(1452)
    assert pmtud.state is PmtuState.SEARCH_COMPLETE and pmtud.mtu == MAX_PLPMTU


def test_a_completed_search_looks_again_for_a_larger_size() -> None:
    pmtud = Pmtud()
    pmtud.start(0.0)
    _search(pmtud, 1300)
    first = pmtud.mtu
    deadline = pmtud.deadline()
    assert deadline is not None
    pmtud.on_timer(deadline)
    assert pmtud.state is PmtuState.SEARCHING
    _search(pmtud, 1452, now=deadline)
    assert first < 1300 < pmtud.mtu == MAX_PLPMTU


def test_a_late_answer_to_an_old_probe_changes_nothing() -> None:
    pmtud = Pmtud()
    pmtud.start(0.0)
    pmtud.on_probe_acked(1452, 0.1)  # no probe of that size in flight
    assert pmtud.state is PmtuState.BASE and pmtud.mtu == BASE_PLPMTU


def test_disable() -> None:
    pmtud = Pmtud()
    pmtud.start(0.0)
    _search(pmtud, 1452)
    pmtud.disable()
    assert pmtud.state is PmtuState.DISABLED and pmtud.mtu == BASE_PLPMTU
    assert pmtud.next_probe(1.0) is None and pmtud.deadline() is None
    with pytest.raises(LocalProtocolError):
        Pmtud(max_size=1000)


@given(st.lists(st.sampled_from(list(PmtuEvent)), max_size=20))
def test_the_transition_table_is_closed(events: list[PmtuEvent]) -> None:
    pmtud = Pmtud()
    for event in events:
        before = pmtud.state
        try:
            pmtud._fire(event)
        except LocalProtocolError:
            assert event not in TRANSITIONS[before]
        else:
            assert pmtud.state is TRANSITIONS[before][event]


# ----------------------------------------------------------------------------- on a connection


def _transfer(limit: dict[str, int], config: CoreConfig | None = None,
              shrink_to: int | None = None) -> tuple[bool, int, int]:
    """3 MB over a stream, on a simulated path that drops datagrams above
    ``limit["mtu"]`` bytes (lowered to ``shrink_to`` after the first megabyte)."""
    sizes: list[int] = []

    def tap(data: bytes, source: object, destination: object) -> bytes | None:
        if len(data) > limit["mtu"]:
            return None
        sizes.append(len(data))
        return data

    async def main(net: sim.VirtualNetwork) -> tuple[bool, int, int]:
        net.tap = tap
        options = {"config": config} if config else {}
        alice, bob = await net.node(**options).start(), await net.node(**options).start()
        await alice.connect(bob.address)
        inbox = bob.channel("bulk/1")
        stream = await alice.open_stream(bob.peer_id, "bulk/1")
        data = random.Random(1).randbytes(3_000_000)

        async def upload() -> None:
            await stream.write(data[:1_000_000])
            if shrink_to is not None:
                limit["mtu"] = shrink_to  # the path shrinks mid-transfer
            await stream.write(data[1_000_000:])
            await stream.close()

        writing = asyncio.create_task(upload())
        peer = await inbox.accept(timeout=5)
        got = bytearray()
        while chunk := await peer.read(1 << 20):
            got += chunk
        await asyncio.wait_for(writing, 30)
        connection = alice.endpoint.connection_to(bytes.fromhex(bob.peer_id))
        assert connection is not None
        return bytes(got) == data, connection.pmtud.mtu, max(sizes)

    return sim.run(main, seed=3)


def test_a_connection_finds_its_path_size_and_uses_it() -> None:
    intact, mtu, largest = _transfer({"mtu": 1400})
    assert intact and 1400 - SEARCH_GRANULARITY < mtu <= 1400 and largest == mtu


def test_a_path_that_shrinks_mid_transfer_loses_nothing() -> None:
    intact, mtu, _ = _transfer({"mtu": MAX_PLPMTU}, shrink_to=1300)
    assert intact and mtu <= 1300


def test_the_search_can_be_turned_off() -> None:
    intact, mtu, largest = _transfer({"mtu": 9000}, CoreConfig(max_datagram_size=1232))
    assert intact and mtu == 1232 and largest <= 1232
