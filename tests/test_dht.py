"""The DHT service in virtual time: lookups over a hundred-odd nodes, provider records
and their expiry, the Python API, and peers that flood or lie."""

from __future__ import annotations

import asyncio
import inspect
import math
import random
import statistics

import pytest

from shoal import sim
from shoal.core.config import CoreConfig
from shoal.core.connection import Connection
from shoal.core.dht import wire as dw
from shoal.core.dht.table import RecordStore, RoutingTable, key_id, node_id
from shoal.core.services import interfaces
from shoal.core.services.base import Service
from shoal.core.services.dht import EXPIRE_INTERVAL, DhtService
from shoal.core.traversal import ADDRESS_AND_PORT_DEPENDENT as APD
from shoal.core.traversal import ENDPOINT_INDEPENDENT as EI
from shoal.core.wire import Extension, Frame
from shoal.errors import LocalProtocolError, RemoteProtocolError
from shoal.sim import SimNetwork, SimNode
from shoal.sim.dht import INTRODUCER, dht, dht_network, lookup

K = 8


@pytest.fixture(scope="module")
def network() -> tuple[SimNetwork, SimNode, list[SimNode]]:
    return dht_network(128, seed=3, k=K)


def _key(node: SimNode) -> bytes:
    return node.endpoint.identity.public_key


def test_a_provided_key_is_found_in_logarithmic_rounds(
        network: tuple[SimNetwork, SimNode, list[SimNode]]) -> None:
    net, introducer, nodes = network
    everyone = [introducer, *nodes]
    rng = random.Random(7)
    rounds, messages = [], []
    for _ in range(12):
        key = rng.randbytes(32)
        provider, finder = rng.sample(nodes, 2)
        announced = lookup(net, provider, "provide", key)
        assert announced is not None
        # The announcement reached the k other nodes nearest the key, as a ranking of
        # all of them has it.
        others = [n for n in everyone if n is not provider]
        nearest = sorted(others, key=lambda n: node_id(_key(n)) ^ key_id(key))[:K]
        assert set(announced.closest) == {_key(n) for n in nearest}
        net.run(1)
        found: list[bytes] = []
        result = lookup(net, finder, "find", key, found=found)
        assert result is not None and found == [_key(provider)]
        assert result.providers == (_key(provider),)
        rounds.append(result.rounds)
        messages.append(result.messages)
    n = len(everyone)
    # Each round halves the distance at least: never more rounds than log2(n), and a
    # lookup asks a few k of nodes, nowhere near all of them.
    assert max(rounds) <= math.log2(n) / 2
    assert statistics.median(messages) <= 2 * K
    assert max(messages) <= 4 * K < n / 4


def test_every_node_knows_only_a_bounded_part_of_the_network(
        network: tuple[SimNetwork, SimNode, list[SimNode]]) -> None:
    _, introducer, nodes = network
    for node in [introducer, *nodes]:
        table = dht(node).table
        assert 0 < len(table) <= K * 256
        assert all(len(bucket) <= K for bucket in table.buckets)
        assert len(table.buckets[255]) > 0  # the far half of the space is reachable


def test_a_record_expires_after_its_ttl_unless_announced_again() -> None:
    ttl = 300.0
    net, _, nodes = dht_network(24, seed=5, k=4, record_ttl=ttl)
    rng = random.Random(2)
    kept, dropped = rng.randbytes(32), rng.randbytes(32)
    provider, finder = nodes[3], nodes[17]
    for key in (kept, dropped):
        assert lookup(net, provider, "provide", key) is not None
    dht(provider).withdraw(dropped)
    net.run(ttl - 30)
    for key in (kept, dropped):
        found: list[bytes] = []
        lookup(net, finder, "find", key, found=found)
        assert found == [_key(provider)]
    net.run(60 + EXPIRE_INTERVAL)
    holders = [n for n in nodes if n is not provider]
    found = []
    result = lookup(net, finder, "find", dropped, found=found)
    assert result is not None and found == [] and result.messages > 0
    assert not any(dropped in dht(n).store.records for n in holders)
    assert sum(n.endpoint.stats["dht_records_expired"] for n in holders) > 0
    net.run(2 * ttl)  # the kept key was announced again every ttl / 2
    found = []
    lookup(net, finder, "find", kept, found=found)
    assert found == [_key(provider)]


def test_nodes_behind_nats_are_reached_through_the_introducer() -> None:
    net = SimNetwork(seed=4, profile=sim.LinkProfile(latency=0.02))
    settings = CoreConfig(services={"dht": {"k": 4}})
    introducer = net.add_node(config=CoreConfig(introducer=True, services=settings.services),
                              address=INTRODUCER)
    public, natted = [], []
    for index in range(16):
        if index % 4 == 3:  # port-restricted cones: only an introduction gets through
            nat = net.add_nat(f"198.51.100.{index}", mapping=EI, filtering=APD)
            node = net.add_node(address=(f"10.{index}.0.2", 7000), nat=nat, config=settings)
            natted.append(node)
        else:
            node = net.add_node(address=(f"203.0.113.{100 + index}", 7000), config=settings)
            public.append(node)
        node.endpoint.add_introducer(INTRODUCER, net.now)
        node.endpoint.call("dht", net.now, "join")
        net.flush(node)
        net.run(0.5)
    net.run(20)
    key = bytes(range(32))
    assert lookup(net, natted[0], "provide", key) is not None
    net.run(1)
    for finder in (natted[2], public[5]):
        found: list[tuple[bytes, list[tuple[str, int]]]] = []
        done: list[object] = []
        dht(finder).find(key, net.now, lambda peer, addresses, sink=found: sink.append(
            (peer, addresses)), on_done=done.append)
        net.flush(finder)
        assert net.run(30, until=done.__len__)
        # The record names the provider's public address as its storer saw it.
        assert [(peer, [a[0] for a in addresses]) for peer, addresses in found] == [
            (_key(natted[0]), ["198.51.100.3"])]
    assert introducer.endpoint.stats["introductions"] > 0
    assert sum(n.endpoint.stats["dht_timeouts"] for n in public + natted) == 0


def test_node_api_provides_and_finds_in_virtual_time() -> None:
    async def main(net: sim.VirtualNetwork) -> tuple[list[str], list[str], str, str, str]:
        settings = CoreConfig(nat_check=False, services={"dht": {"k": 4}})
        async with net.node(address=INTRODUCER, introducer=True, config=settings):
            nodes = [net.node(introducers=[f"{INTRODUCER[0]}:{INTRODUCER[1]}"],
                              config=settings) for _ in range(6)]
            for node in nodes:
                await node.start()
                await node.wait_for_introducers()
            key = bytes(range(32))
            await nodes[1].provide(key)
            found = await nodes[4].find_providers(key, timeout=10)
            missing = await nodes[4].find_providers(bytes(32), timeout=10)
            off = net.node(config=CoreConfig(dht=False))
            async with off:
                with pytest.raises(LocalProtocolError) as refused:
                    await off.provide(key)
            with pytest.raises(LocalProtocolError) as bad:
                await nodes[0].find_providers(b"short")
            # A lookup in progress when its node closes ends with what it had.
            silent = net.node(config=CoreConfig(dht=False))
            lonely = net.node(config=settings)
            async with silent:
                await lonely.start()
                await lonely.connect(silent.address)  # its one seed, which never answers
                asking = asyncio.ensure_future(lonely.provide(key))
                await asyncio.sleep(1)
                assert not asking.done()
                await lonely.close()
                await asyncio.wait_for(asking, 1)
            for node in nodes:
                await node.close()
            return found, missing, refused.value.code, bad.value.code, nodes[1].peer_id

    found, missing, refused, bad, provider = sim.run(main, seed=4)
    assert found == [provider] and missing == []
    assert refused == "ENOENT" and bad == "EINVAL"


def test_the_service_implements_the_providers_interface() -> None:
    for name in ("provide", "withdraw", "find"):
        wanted = list(inspect.signature(getattr(interfaces.Providers, name)).parameters)
        have = list(inspect.signature(getattr(DhtService, name)).parameters)
        assert have[: len(wanted)] == wanted
    with pytest.raises(LocalProtocolError):
        SimNetwork().add_node(config=CoreConfig(services={"dht": {"kk": 3}}))


# ----------------------------------------------------------------------- parsing


def test_frames_round_trip_and_garbage_raises_only_protocol_errors() -> None:
    entries = [dw.encode_entry(bytes([i]) * 32, (("198.51.100.7", 7000 + i),))
               for i in range(25)]
    frames = dw.encode_answers(9, [(dw.PROVIDERS, entries[:3]), (dw.NODES, entries)])
    parsed = [dw.decode(frame) for frame in frames]
    assert [p.kind for p in parsed] == [dw.PROVIDERS] + [dw.NODES] * 3
    assert all(isinstance(p, dw.Answer) and p.parts == 4 for p in parsed)
    assert sum(len(p.entries) for p in parsed) == 28  # type: ignore[union-attr]
    assert max(len(f.body) for f in frames) < 800
    request = dw.decode(dw.encode_request(dw.FIND_NODE, 3, b"t" * 32))
    assert request == dw.Request(dw.FIND_NODE, 3, b"t" * 32)
    rng = random.Random(1)
    errors = 0
    for _ in range(3000):
        body = rng.randbytes(rng.randrange(0, 90))
        try:
            dw.decode(Extension(rng.choice(dw.FRAME_TYPES), body))
        except RemoteProtocolError:
            errors += 1
    assert errors > 2500


def test_record_store_bounds_each_provider_each_key_and_the_total() -> None:
    store = RecordStore(per_peer=5, per_key=3, total=12)
    heavy, others = b"h" * 32, [bytes([i]) * 32 for i in range(10)]
    refusals = [store.add(bytes([i]) * 32, heavy, (), 100.0) for i in range(8)]
    assert refusals == [None] * 5 + ["per_peer"] * 3
    assert [store.add(b"k" * 32, p, (), 100.0) for p in others[:4]] == [None] * 3 + ["per_key"]
    for index, peer in enumerate(others[3:], start=1):
        store.add(bytes([100 + index]) * 32, peer, (), 100.0)
    assert store.count == 12
    assert len(store.by_peer[heavy]) < 5  # the heaviest provider lost its oldest records
    assert store.expire(100.0) == 12 and store.count == 0 and not store.by_peer


def test_full_buckets_keep_long_lived_contacts() -> None:
    table = RoutingTable(b"me" * 16, k=2)
    far = [p for p in (bytes([i]) * 32 for i in range(200))
           if table.bucket_of(node_id(p)) == 255][:5]
    for index, peer in enumerate(far):
        table.seen(peer, (), float(index))
    assert [c.peer for c in table.buckets[255]] == far[:2]
    table.failed(far[0])  # the newest held-aside contact takes its place
    assert [c.peer for c in table.buckets[255]] == [far[1], far[4]]


# ----------------------------------------------------------------------- abuse


def _pair(victim_options: dict[str, float] | None = None, *,
          attacker_services: tuple[Service, ...] = ()
          ) -> tuple[SimNetwork, SimNode, SimNode, Connection]:
    """A victim running the DHT and an attacker without it, connected (the victim dialed)."""
    net = SimNetwork(seed=9, profile=sim.LinkProfile(latency=0.01))
    victim = net.add_node(config=CoreConfig(nat_check=False,
                                            services={"dht": {"k": K, **(victim_options or {})}}),
                          address=("198.18.0.1", 7000))
    attacker = net.add_node(config=CoreConfig(nat_check=False, dht=False),
                            address=("198.18.0.2", 7000), services=attacker_services)
    victim.endpoint.connect(attacker.address, net.now, peer_id=attacker.peer_id)
    net.flush(victim)
    assert net.run(5, until=lambda: attacker.endpoint.connection_to(_key(victim)) is not None)
    connection = attacker.endpoint.connection_to(_key(victim))
    assert connection is not None
    return net, victim, attacker, connection


def test_a_peer_flooding_add_provider_is_held_to_its_quota() -> None:
    net, victim, attacker, connection = _pair({"max_records_per_peer": 100})
    rng = random.Random(3)
    for _ in range(20):
        for _ in range(500):
            connection.queue_frame(dw.encode_add_provider(rng.randbytes(32)))
        attacker.endpoint.mark(connection)
        net.flush(attacker)
        net.run(1)
    store = dht(victim).store
    stats = victim.endpoint.stats
    assert store.count == len(store.by_peer[_key(attacker)]) == 100
    assert stats["dht_records_refused_per_peer"] + stats["dht_dropped_rate"] > 9000
    assert stats["dht_records_stored"] == 100
    assert victim.endpoint.connection_to(_key(attacker)) is not None  # rate, not a crime


@pytest.mark.parametrize("frame", [Extension(dw.NODES, b"\x01\x07\x03\x00"),
                                   Extension(dw.ADD_PROVIDER, b"short"),
                                   Extension(dw.GET_PROVIDERS, b"\x01" + b"k" * 40),
                                   Extension(dw.PROVIDERS, b"\x01\x00\x01\x0b")])
def test_garbage_frames_end_the_connection_and_the_node_goes_on(frame: Extension) -> None:
    net, victim, attacker, connection = _pair()
    connection.queue_frame(frame)
    attacker.endpoint.mark(connection)
    net.flush(attacker)
    net.run(2)
    assert victim.endpoint.stats["dht_malformed"] == 1
    assert victim.endpoint.connection_to(_key(attacker)) is None
    # The victim still answers an honest peer.
    honest = net.add_node(config=CoreConfig(nat_check=False), address=("198.18.0.3", 7000))
    honest.endpoint.connect(victim.address, net.now, peer_id=victim.peer_id)
    net.flush(honest)
    net.run(2)
    assert lookup(net, honest, "find_node", bytes(32)) is not None
    assert victim.endpoint.stats["dht_requests_answered"] >= 1


class Liar(Service):
    """Answers every DHT request with 1,000 NODES frames: 10,000 made-up contacts."""

    name = "liar"
    frame_types = dw.FRAME_TYPES

    def on_frame(self, connection: Connection, frame: Frame, now: float) -> None:
        assert isinstance(frame, Extension)
        request = dw.decode(frame)
        if not isinstance(request, dw.Request):
            return
        rng = random.Random(request.request_id)
        for index in range(1000):
            entries = [dw.encode_entry(rng.randbytes(32), ((f"203.0.113.{rng.randrange(1, 250)}",
                                                            rng.randrange(1, 65535)),))
                       for _ in range(dw.MAX_ENTRIES)]
            self.ctx.send(connection, Extension(dw.NODES, dw.encode_varint(request.request_id)
                                                + bytes((index % dw.MAX_PARTS, dw.MAX_PARTS))
                                                + dw.encode_varint(len(entries))
                                                + b"".join(entries)))


def test_a_peer_naming_ten_thousand_bogus_contacts_costs_a_bounded_lookup() -> None:
    net, victim, attacker, _ = _pair(attacker_services=(Liar(),))
    victim.endpoint.call("dht", net.now, "join")  # its first question gets the flood
    net.flush(victim)
    net.run(20)
    service = dht(victim)
    result = lookup(net, victim, "find_node", bytes(32), timeout=600)
    assert result is not None
    stats = victim.endpoint.stats
    assert stats["dht_dropped_unasked"] > 2 * (1000 - dw.MAX_PARTS)
    # Made-up contacts are asked, never added: the table holds the liar alone, and a
    # lookup asks at most its 8 k candidates.
    assert list(service.table.contacts) == [_key(attacker)]
    assert result.messages <= 8 * K + 1
    assert stats["dht_timeouts"] >= result.messages - 1
    # Those sought through the introducer in vain are forgotten once their request ends.
    sought = {p for p in victim.endpoint.rendezvous.peers if p != _key(attacker)}
    assert sought <= set(service.pending)
    # What is still in flight belongs to the lookups still running (the join's).
    assert len(service.requests) <= 3 * len(service.lookups)
    assert len(service.pending) <= len(service.requests)


def test_lookups_beyond_the_limit_wait_their_turn() -> None:
    net = SimNetwork(seed=2, profile=sim.LinkProfile(latency=0.01))
    silent = net.add_node(config=CoreConfig(nat_check=False, dht=False),
                          address=("198.18.0.9", 7000))
    asker = net.add_node(config=CoreConfig(nat_check=False, services={"dht": {"k": K}}),
                         address=("198.18.0.1", 7000))
    asker.endpoint.add_introducer(silent.address, net.now)  # a seed that never answers
    net.flush(asker)
    assert net.run(5, until=lambda: asker.endpoint.connection_to(_key(silent)) is not None)
    service = dht(asker)
    service.join(net.now)
    net.flush(asker)
    net.run(30)
    assert not service.lookups  # the join's, unanswered, are over
    before = asker.endpoint.stats["dht_timeouts"]
    done: list[object] = []
    for index in range(500):
        service.find(index.to_bytes(32, "big"), net.now, lambda *_: None, on_done=done.append)
    net.flush(asker)
    assert len(service.lookups) == 32 and len(service.waiting) == 468
    net.run(120)
    assert len(done) == 500 and not service.lookups and not service.waiting
    # One request each, and the two of the refresh a minute after joining (a self-lookup
    # and one of the far bucket), which waited their turn too.
    assert asker.endpoint.stats["dht_timeouts"] - before == 502
