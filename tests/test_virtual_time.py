"""``shoal.Node`` and code written against it, run in virtual time by ``shoal.sim.run``."""

from __future__ import annotations

import asyncio
import time

import pytest

import shoal
from shoal import sim
from shoal.errors import DeliveryError, LocalProtocolError
from shoal.identity import Identity


async def ping_pong(alice: shoal.Node, bob: shoal.Node) -> list[bytes]:
    """Application code: it knows only the public Node API."""
    chat = bob.channel("chat/1")
    replies = []

    async def echo() -> None:
        async for message in chat:
            await chat.send(message.sender, message.data.upper())

    echoing = asyncio.get_running_loop().create_task(echo())
    mine = alice.channel("chat/1")
    for word in (b"one", b"two", b"three"):
        await mine.send(bob.peer_id, word, timeout=10)
        replies.append((await mine.receive(timeout=10)).data)
    echoing.cancel()
    return replies


def test_the_same_code_runs_on_udp_and_in_virtual_time() -> None:
    async def over_udp() -> list[bytes]:
        options = {"listen": "127.0.0.1:0", "lan_discovery": False}
        async with shoal.Node(Identity.generate(), **options) as alice, \
                shoal.Node(Identity.generate(), **options) as bob:
            alice.add_peer_address(bob.peer_id, bob.address)
            return await ping_pong(alice, bob)

    async def simulated(net: sim.VirtualNetwork) -> list[bytes]:
        async with net.node() as alice, net.node() as bob:
            alice.add_peer_address(bob.peer_id, bob.address)
            return await ping_pong(alice, bob)

    expected = [b"ONE", b"TWO", b"THREE"]
    assert asyncio.run(over_udp()) == expected
    assert sim.run(simulated, seed=1) == expected


def test_timeouts_and_sleeps_pass_in_virtual_time() -> None:
    async def main(net: sim.VirtualNetwork) -> tuple[float, str]:
        loop = asyncio.get_running_loop()
        async with net.node() as lonely:
            await asyncio.sleep(3600)
            with pytest.raises(TimeoutError):
                await lonely.receive(timeout=600)
            with pytest.raises(DeliveryError) as failed:
                await lonely.send("ab" * 32, b"to nobody", timeout=20)
            return loop.time(), failed.value.code

    started = time.perf_counter()
    virtual_seconds, code = sim.run(main)
    assert virtual_seconds == pytest.approx(4220, abs=0.5)
    assert code == "ETIMEDOUT"
    assert time.perf_counter() - started < 20


def _crowd(size: int, seed: int) -> tuple[int, dict[str, int], list[float]]:
    """``size`` nodes behind their own NATs meet through one introducer; each sends to
    another. Returns messages delivered, paths, and each delivery's virtual seconds."""

    async def main(net: sim.VirtualNetwork) -> tuple[int, dict[str, int], list[float]]:
        introducer = await net.node(introducer=True).start()
        where = [f"{introducer.address[0]}:{introducer.address[1]}"]
        nodes = []
        for index in range(size):
            kind = "address-and-port-dependent" if index % 3 == 0 else "endpoint-independent"
            nat = net.add_nat(f"198.51.{index // 250}.{index % 250 + 1}", mapping=kind,
                              filtering="address-and-port-dependent")
            nodes.append(await net.node(introducers=where, nat=nat).start())
        outcomes = await asyncio.gather(
            *(node.send(nodes[(index * 7 + 1) % size].peer_id, b"hello %d" % index,
                        timeout=60) for index, node in enumerate(nodes)),
            return_exceptions=True)
        received = 0
        for node in nodes:
            while True:
                try:
                    await node.receive(timeout=0.001)
                except TimeoutError:
                    break
                received += 1
        paths: dict[str, int] = {}
        seconds = []
        for outcome in outcomes:
            if isinstance(outcome, shoal.Delivery):
                paths[outcome.path] = paths.get(outcome.path, 0) + 1
                seconds.append(round(outcome.seconds, 6))
        for node in (*nodes, introducer):
            await node.close()
        return received, paths, seconds

    return sim.run(main, seed=seed)


def test_hundreds_of_nodes_behind_nats_meet_in_virtual_time() -> None:
    received, paths, seconds = _crowd(300, seed=5)
    assert received == 300
    assert sum(paths.values()) == 300
    # Cone pairs punch through at once; a pair with a symmetric NAT is first relayed.
    symmetric = [index % 3 == 0 for index in range(300)]
    cone_pairs = sum(not symmetric[i] and not symmetric[(i * 7 + 1) % 300] for i in range(300))
    assert paths == {"direct": cone_pairs, "relay": 300 - cone_pairs}
    assert _crowd(300, seed=5) == (received, paths, seconds)  # the same seed replays


def test_a_virtual_network_needs_the_virtual_loop() -> None:
    async def main() -> None:
        sim.VirtualNetwork(seed=1)

    with pytest.raises(LocalProtocolError):
        asyncio.run(main())


def test_a_simulated_node_needs_an_identity_of_its_own() -> None:
    async def main(net: sim.VirtualNetwork) -> None:
        shoal.Node(network=net.node()._network)

    with pytest.raises(LocalProtocolError):
        sim.run(main)


def test_a_dead_introducer_is_reported_as_such_within_seconds() -> None:
    async def main(net: sim.VirtualNetwork) -> tuple[str, float, str, float, str, float]:
        loop = asyncio.get_running_loop()
        started = loop.time()
        async with net.node(introducers=["203.0.113.99:7000"]) as lonely:
            with pytest.raises(DeliveryError) as waited:
                await lonely.wait_for_introducers(timeout=30)
            waited_for = loop.time() - started
            with pytest.raises(DeliveryError) as first:
                await lonely.send("ab" * 32, b"anyone?", timeout=30)
            first_after = loop.time() - started
            await asyncio.sleep(60)
            sent_at = loop.time()
            with pytest.raises(DeliveryError) as later:
                await lonely.send("ab" * 32, b"still nobody?", timeout=30)
            return (waited.value.code, waited_for, first.value.code, first_after,
                    later.value.code, loop.time() - sent_at)

    waited, waited_for, first, first_after, later, later_after = sim.run(main)
    assert waited == first == later == "ENETUNREACH"
    assert 4 <= waited_for <= 6
    assert first_after <= 6
    assert later_after <= 6  # a retry of the introducer is under way, and fails again


def test_a_live_introducer_is_not_mistaken_for_a_dead_one() -> None:
    async def main(net: sim.VirtualNetwork) -> str:
        introducer = await net.node(introducer=True).start()
        where = [f"{introducer.address[0]}:{introducer.address[1]}"]
        async with net.node(introducers=where) as alice, net.node(introducers=where) as bob:
            await alice.wait_for_introducers()
            with pytest.raises(DeliveryError) as unknown:
                await alice.send("ab" * 32, b"to nobody", timeout=60)
            await bob.wait_for_introducers()
            await alice.send(bob.peer_id, b"hi", timeout=10)
            return unknown.value.code

    assert sim.run(main) == "EHOSTUNREACH"
