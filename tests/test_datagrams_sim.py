"""Unreliable datagrams between nodes in virtual time: delivered on a clean link, never
sent again when lost, not reordered back, refused beyond one packet, never starving
acknowledged messages on the same connection, and a peer's garbage counted and dropped."""

from __future__ import annotations

import asyncio

import pytest

import shoal
from shoal import sim
from shoal.core import events as ev
from shoal.core.config import CoreConfig
from shoal.core.connection import CLOSE_PROTOCOL_ERROR
from shoal.core.services.datagrams import PACKET_ROOM, largest_datagram
from shoal.core.streams.frames import Datagram, encode
from shoal.core.wire import DATA_HEADER, Channel, PacketKind, encode_varint
from shoal.errors import ShoalError
from shoal.sim import LinkProfile, SimNetwork, SimNode
from test_peer_abuse import _connected


async def _pair(net: sim.VirtualNetwork) -> tuple[shoal.Node, shoal.Node]:
    alice = await net.node().start()
    bob = await net.node().start()
    await alice.connect(bob.address)
    return alice, bob


async def _collect(channel: shoal.Channel, until: float) -> list[shoal.Datagram]:
    """Every datagram ``channel`` receives for ``until`` seconds."""
    got: list[shoal.Datagram] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + until
    while (left := deadline - loop.time()) > 0:
        try:
            got.append(await channel.receive_datagram(timeout=left))
        except TimeoutError:
            break
    return got


def test_datagrams_arrive_whole_on_a_clean_link_on_their_channel_only() -> None:
    async def main(net: sim.VirtualNetwork) -> tuple[list[bytes], list[bytes], dict, dict]:
        alice, bob = await _pair(net)
        live = bob.channel("live/1")
        other = bob.channel("other/1")
        sent = [bytes([n]) * (1 + 7 * n) for n in range(40)]
        for data in sent:
            await alice.send_datagram(bob.peer_id, data, channel="live/1")
            await asyncio.sleep(0.002)
        got = await _collect(live, 1.0)
        assert all(d.sender == alice.peer_id and d.channel == "live/1" for d in got)
        assert other._datagrams.empty()
        return sent, [d.data for d in got], alice.stats, bob.stats

    sent, got, sender, receiver = sim.run(main, seed=1)
    assert sorted(got) == sorted(sent) and len(got) == len(sent)
    assert sender["datagrams_sent"] == len(sent) == receiver["datagrams_received"]
    assert sender.get("datagrams_lost", 0) == 0


def test_a_lost_datagram_is_counted_and_never_sent_again() -> None:
    profile = LinkProfile(latency=0.02, loss=0.3)

    async def main(net: sim.VirtualNetwork) -> tuple[int, list[bytes], dict]:
        alice, bob = await _pair(net)
        live = bob.channel("live/1")
        count = 200
        for n in range(count):
            await alice.send_datagram(bob.peer_id, n.to_bytes(2, "big"), channel="live/1")
            await asyncio.sleep(0.01)
        got = await _collect(live, 3.0)  # long after every loss was declared
        return count, [d.data for d in got], alice.stats

    count, got, stats = sim.run(main, seed=2, profile=profile)
    assert len(set(got)) == len(got)  # none twice
    assert 0 < len(got) < count  # some were lost ...
    assert stats["datagrams_sent"] == count  # ... and none went out again
    assert stats["datagrams_lost"] >= count - len(got) - 5


def test_datagrams_are_handed_over_in_the_order_they_arrive() -> None:
    profile = LinkProfile(latency=0.02, jitter=0.03)

    async def main(net: sim.VirtualNetwork) -> list[int]:
        alice, bob = await _pair(net)
        live = bob.channel("live/1")
        await asyncio.sleep(0.2)  # the handshake's last packet may be overtaken too
        for n in range(60):
            await alice.send_datagram(bob.peer_id, bytes([n]), channel="live/1")
            await asyncio.sleep(0.003)
        return [d.data[0] for d in await _collect(live, 1.0)]

    got = sim.run(main, seed=3, profile=profile)
    assert sorted(got) == list(range(60))  # every one arrived ...
    assert got != sorted(got)  # ... as the link reordered them: nothing waits for a gap


def test_a_datagram_larger_than_a_packet_is_refused_with_the_limit() -> None:
    async def main(net: sim.VirtualNetwork) -> tuple[int, int, ShoalError, bytes]:
        alice, bob = await _pair(net)
        live = bob.channel("live/1")
        limit = alice.max_datagram_size(bob.peer_id, "live/1")
        payload = alice.endpoint.connection_to(bytes.fromhex(bob.peer_id)).max_payload
        await alice.send_datagram(bob.peer_id, b"z" * limit, channel="live/1")
        with pytest.raises(ShoalError) as refused:
            await alice.send_datagram(bob.peer_id, b"z" * (limit + 1), channel="live/1")
        got = await live.receive_datagram(timeout=2)
        return limit, payload, refused.value, got.data

    limit, payload, error, got = sim.run(main, seed=4)
    assert error.code == "EMSGSIZE" and str(limit) in error.message
    assert got == b"z" * limit
    # the frame (type, channel, length) and the room kept for an ACK fill the packet
    assert limit + 1 + 1 + 2 + PACKET_ROOM == payload
    assert largest_datagram(payload, 1) == limit


def test_a_datagram_flood_does_not_starve_messages_on_the_same_connection() -> None:
    profile = LinkProfile(latency=0.03, loss=0.02)

    async def main(net: sim.VirtualNetwork) -> tuple[float, float, dict, int]:
        alice, bob = await _pair(net)
        live = bob.channel("live/1")
        loop = asyncio.get_running_loop()

        async def messages() -> float:
            started = loop.time()
            for n in range(10):
                await alice.send(bob.peer_id, bytes([n]) * 32768, timeout=20)
            return loop.time() - started

        alone = await messages()
        flooding = True

        async def flood() -> None:
            while flooding:
                for _ in range(16):
                    await alice.send_datagram(bob.peer_id, b"f" * 1000, channel="live/1")
                await asyncio.sleep(0.01)

        async def drain() -> int:
            count = 0
            async for _ in live.datagrams():
                count += 1
            return count

        flooder = asyncio.create_task(flood())
        reader = asyncio.create_task(drain())
        await asyncio.sleep(1.0)  # the flood fills the window first
        flooded = await messages()
        flooding = False
        await flooder
        live.close()
        return alone, flooded, alice.stats, await reader

    alone, flooded, stats, received = sim.run(main, seed=5, profile=profile)
    assert stats["datagrams_dropped_queue_full"] > 0  # more was offered than fits
    assert received > 100  # the flood went on meanwhile
    # Messages take turns with datagrams packet by packet: at most about twice as slow.
    assert flooded < 2.5 * alone, (alone, flooded)


def _network() -> tuple[SimNetwork, SimNode, SimNode]:
    net = SimNetwork(seed=6, profile=LinkProfile(latency=0.005))
    victim = net.add_node(config=CoreConfig())
    return net, victim, net.add_node()


def _datagrams(node: SimNode) -> list[ev.ServiceEvent]:
    return [e for e in node.events if isinstance(e, ev.ServiceEvent)
            and e.service == "datagrams" and e.kind == "datagram"]


def test_a_peers_garbage_datagram_frames_are_counted_and_dropped() -> None:
    net, victim, attacker = _network()
    victim.endpoint.serve_channel("live/1")
    hostile = _connected(net, attacker, victim)
    # Datagrams on channel numbers never bound, and on one bound to a name not served.
    hostile.queue_frame(Channel(1, "not-served"))
    for number in (1, 5, 77, 2**40):
        hostile.queue_frame(encode(Datagram(number, b"junk")), reliable=False)
    attacker.endpoint.mark(hostile)
    net.flush(attacker)
    net.run(1.0)
    stats = victim.endpoint.stats
    assert stats["datagrams_dropped_channel"] == 4
    assert not _datagrams(victim) and not hostile.closed
    # The connection still carries good ones.
    hostile.queue_frame(Channel(2, "live/1"))
    attacker.endpoint.mark(hostile)
    net.flush(attacker)
    net.run(1.0)
    hostile.queue_frame(encode(Datagram(2, b"good")), reliable=False)
    attacker.endpoint.mark(hostile)
    net.flush(attacker)
    net.run(1.0)
    assert [e.data[:2] for e in _datagrams(victim)] == [("live/1", b"good")]
    # A frame whose length runs past its packet closes the connection with code 1.
    hostile.queue_frame(b"\x4a\x02" + encode_varint(5000) + b"short", reliable=False)
    attacker.endpoint.mark(hostile)
    net.flush(attacker)
    net.run(1.0)
    assert hostile.closed and hostile.close_code == CLOSE_PROTOCOL_ERROR
    assert len(_datagrams(victim)) == 1


def test_a_strangers_datagram_packets_are_counted_and_dropped() -> None:
    net, victim, peer = _network()
    connection = _connected(net, peer, victim)
    stranger = net.add_node()
    before = dict(victim.endpoint.stats)
    frame = encode(Datagram(0, b"forged"))
    for sid in (connection.remote_sid, b"\x01" * 8):  # a live session, and none
        # a packet number just ahead, and no valid tag: the stranger has no key
        forged = DATA_HEADER.pack(PacketKind.DATA, sid, 1000) + frame + bytes(16)
        net.send_from(stranger, forged, victim.address, 0)
    net.run(1.0)
    stats = victim.endpoint.stats
    assert stats["dropped_unauthenticated"] == before.get("dropped_unauthenticated", 0) + 1
    assert stats["dropped_unknown_session"] == before.get("dropped_unknown_session", 0) + 1
    assert not _datagrams(victim) and not connection.closed
