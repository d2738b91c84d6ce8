"""Streams between ``shoal.Node``s in virtual time: bytes intact over bad links, memory
bounded by windows when a reader stops, many streams at once, refusals and resets."""

from __future__ import annotations

import asyncio
import os
import random

import pytest

import shoal
from shoal import sim
from shoal.core import events as ev
from shoal.core.config import CoreConfig
from shoal.core.connection import Connection
from shoal.core.streams import frames as F
from shoal.core.streams.manager import INITIAL_MAX_STREAMS, INITIAL_STREAM_DATA, StreamConfig
from shoal.errors import DeliveryError
from shoal.sim import LinkProfile, SimNetwork, SimNode
from test_traversal_sim import _block_direct, _confirmed_connection, _lab

LONG = bool(os.environ.get("SHOAL_LONG_TESTS"))


async def _pair(net: sim.VirtualNetwork, **options: object) -> tuple[shoal.Node, shoal.Node]:
    alice = await net.node(**options).start()
    bob = await net.node(**options).start()
    await alice.connect(bob.address)
    return alice, bob


async def _drain_to(stream: shoal.Stream, size: int = 65536) -> bytes:
    out = bytearray()
    while chunk := await stream.read(size):
        out += chunk
    return bytes(out)


@pytest.mark.parametrize("seed", [1, 2])
def test_a_stream_is_byte_identical_both_ways_over_a_lossy_reordering_link(seed: int) -> None:
    size = (16 if LONG else 1) << 20
    profile = LinkProfile(latency=0.01, jitter=0.004, loss=0.1, duplicate=0.05)

    async def main(net: sim.VirtualNetwork) -> tuple[bool, bool]:
        alice, bob = await _pair(net)
        up = random.Random(seed).randbytes(size)
        down = random.Random(seed + 100).randbytes(size // 2)
        echo = bob.channel("echo/1")
        stream = await alice.open_stream(bob.peer_id, channel="echo/1")

        async def upload() -> None:
            await stream.write(up)
            await stream.close()

        writing = asyncio.create_task(upload())
        peer = await echo.accept(timeout=30)
        got_up = await _drain_to(peer)
        await peer.write(down)
        await peer.close()
        got_down = await _drain_to(stream)
        await writing
        await alice.close()
        await bob.close()
        return got_up == up, got_down == down

    assert sim.run(main, seed=seed, profile=profile) == (True, True)


def test_a_reader_that_stops_bounds_both_sides_and_holds_the_writer_back() -> None:
    window = INITIAL_STREAM_DATA
    config = CoreConfig(services={"streams": {"stream_window": window, "send_buffer": 32768}})

    async def main(net: sim.VirtualNetwork) -> tuple[int, int, int, bool]:
        alice, bob = await _pair(net, config=config)
        inbox = bob.channel("bulk/1")
        stream = await alice.open_stream(bob.peer_id, channel="bulk/1")
        data = random.Random(3).randbytes(1 << 20)
        writing = asyncio.create_task(stream.write(data))
        peer = await inbox.accept(timeout=10)
        await asyncio.sleep(5)  # bob reads nothing for 5 s
        sent = alice.call("streams", "info", stream.handle)
        held = bob.call("streams", "info", peer.handle)
        assert not writing.done()
        reading = asyncio.create_task(_drain_to(peer))  # reading lets the writer go on
        await asyncio.wait_for(writing, 60)
        await asyncio.wait_for(stream.close(), 60)
        got = await asyncio.wait_for(reading, 60)
        return sent["buffered"], held["readable"], sent["writable"], got == data

    buffered, held, writable, intact = sim.run(main, seed=4)
    assert buffered == 32768 and writable == 0  # the writer waits on a full buffer
    # what the receiver holds is its window (less the channel's name it read)
    assert window - 16 <= held <= window
    assert intact


def test_many_streams_at_once_beyond_the_initial_limit() -> None:
    count = 3 * INITIAL_MAX_STREAMS

    async def main(net: sim.VirtualNetwork) -> bool:
        alice, bob = await _pair(net)
        inbox = bob.channel("many/1")
        payloads = [random.Random(n).randbytes(random.Random(n).randrange(1, 200_000))
                    for n in range(count)]
        received: dict[int, bytes] = {}

        async def serve() -> None:
            async def one(peer: shoal.Stream) -> None:
                header = await peer.readexactly(2)
                received[int.from_bytes(header, "big")] = await _drain_to(peer)

            tasks = []
            async for peer in inbox.streams():
                tasks.append(asyncio.create_task(one(peer)))
                if len(tasks) == count:
                    break
            await asyncio.gather(*tasks)

        serving = asyncio.create_task(serve())

        async def send(n: int) -> None:
            stream = await alice.open_stream(bob.peer_id, channel="many/1", timeout=60)
            await stream.write(n.to_bytes(2, "big") + payloads[n])
            await stream.close()

        await asyncio.gather(*(send(n) for n in range(count)))
        await asyncio.wait_for(serving, 60)
        return all(received[n] == payloads[n] for n in range(count))

    assert sim.run(main, seed=5, profile=LinkProfile(loss=0.02, jitter=0.002))


def test_a_small_message_is_not_held_behind_a_big_stream() -> None:
    async def main(net: sim.VirtualNetwork) -> tuple[bool, bool]:
        alice, bob = await _pair(net)
        bob.channel("bulk/1")
        chat = bob.channel("chat/1")
        stream = await alice.open_stream(bob.peer_id, channel="bulk/1")
        writing = asyncio.create_task(stream.write(bytes(4 << 20)))
        await asyncio.sleep(0.2)
        await alice.send(bob.peer_id, b"hello", channel="chat/1", timeout=5)
        message = await chat.receive(timeout=5)
        return message.data == b"hello", writing.done()

    delivered, stream_done = sim.run(main, seed=6)
    assert delivered and not stream_done


def test_a_stream_on_a_channel_the_peer_does_not_serve_is_refused() -> None:
    async def main(net: sim.VirtualNetwork) -> str:
        alice, bob = await _pair(net)
        stream = await alice.open_stream(bob.peer_id, channel="nobody/1")
        try:
            for _ in range(100):
                await stream.write(b"x" * 1000)
                await asyncio.sleep(0.05)
        except DeliveryError as exc:
            return exc.code
        return "written"

    assert sim.run(main, seed=7) == "ENOPROTOOPT"


def test_a_reset_reaches_the_reader_and_a_stop_reaches_the_writer() -> None:
    async def main(net: sim.VirtualNetwork) -> tuple[str, str]:
        alice, bob = await _pair(net)
        inbox = bob.channel("r/1")
        stream = await alice.open_stream(bob.peer_id, channel="r/1")
        await stream.write(b"partial")
        peer = await inbox.accept(timeout=5)
        assert await peer.read() == b"partial"
        stream.reset(9)
        try:
            await peer.read()
            read_code = "read"
        except DeliveryError as exc:
            read_code = exc.code
        second = await alice.open_stream(bob.peer_id, channel="r/1")
        await second.write(b"more")
        other = await inbox.accept(timeout=5)
        other.stop(3)
        try:
            for _ in range(100):
                await second.write(b"y" * 10_000)
                await asyncio.sleep(0.05)
            write_code = "written"
        except DeliveryError as exc:
            write_code = exc.code
        return read_code, write_code

    assert sim.run(main, seed=8) == ("ECONNRESET", "EPIPE")


def test_streams_reset_before_they_were_accepted_leave_the_peer_room_to_open_more() -> None:
    async def main(net: sim.VirtualNetwork) -> bytes:
        alice, bob = await _pair(net)
        inbox = bob.channel("c/1")
        for _ in range(2 * StreamConfig().max_streams):  # each abandoned at once by its opener
            stream = await alice.open_stream(bob.peer_id, channel="c/1", timeout=5)
            await stream.write(b"x")
            stream.reset(1)
        await asyncio.sleep(2)
        stream = await alice.open_stream(bob.peer_id, channel="c/1", timeout=5)
        await stream.write(b"still open")
        await stream.close()
        return await _drain_to(await inbox.accept(timeout=5))

    assert sim.run(main) == b"still open"


def test_streams_fail_when_their_connection_ends() -> None:
    async def main(net: sim.VirtualNetwork) -> str:
        alice, bob = await _pair(net)
        inbox = bob.channel("f/1")
        stream = await alice.open_stream(bob.peer_id, channel="f/1")
        await stream.write(b"hello")
        peer = await inbox.accept(timeout=5)
        await peer.read()
        await alice.close()
        try:
            await peer.read()
        except DeliveryError as exc:
            return exc.code
        return "eof"

    assert sim.run(main, seed=9) == "ECONNRESET"


def test_a_peer_that_sends_beyond_its_credit_loses_its_connection() -> None:
    """A peer with a handshake sends stream bytes far past the window it was granted."""

    async def main(net: sim.VirtualNetwork) -> tuple[bool, int]:
        alice, bob = await _pair(net)
        bob.channel("victim/1")
        events = bob.subscribe()
        connection = alice.endpoint.connection_to(bytes.fromhex(bob.peer_id))
        assert connection is not None
        connection.queue_frame(F.encode(F.StreamFrame(0, 10 << 20, b"x" * 100)))
        alice.endpoint.mark(connection)
        alice._driver.flush()  # type: ignore[union-attr]
        while True:
            event = await events.get(timeout=10)
            if isinstance(event, ev.PeerDisconnected):
                return "protocol error" in event.reason, len(bob.endpoint.streams.handles)

    closed, handles = sim.run(main, seed=10)
    assert closed and handles == 0


def _stream_across(net: SimNetwork, a: SimNode, b: SimNode, data: bytes,
                   connection: Connection, blocked: dict[str, bool], *,
                   unblock_at: int) -> tuple[bytes, int | None]:
    """Stream ``data`` from ``a`` to ``b`` on channel "bulk/1" in 20 ms steps, opening the
    direct path at step ``unblock_at``: the bytes ``b`` read, and how many it had read
    when ``connection`` moved to a direct path (None if it never did)."""
    handle = a.endpoint.call("streams", net.now, "open", b.peer_id, "bulk/1")
    offset, got, accepted, moved_at = 0, bytearray(), None, None
    for step in range(4000):
        if offset < len(data):
            offset += a.endpoint.call("streams", net.now, "write", handle, data[offset:])
            if offset == len(data):
                a.endpoint.call("streams", net.now, "close", handle)
        if step == unblock_at:
            blocked["on"] = False
        net.flush(a)
        net.run(0.02)
        if moved_at is None and connection.path_kind == "direct":
            moved_at = len(got)
        if accepted is None:
            accepted = next((e.data[0] for e in b.events if isinstance(e, ev.ServiceEvent)
                             and e.kind == "accepted"), None)
        if accepted is not None:
            chunk = b.endpoint.call("streams", net.now, "read", accepted)
            net.flush(b)
            if chunk is None:
                break
            got += chunk
    return bytes(got), moved_at


def test_a_stream_goes_on_across_a_relay_to_direct_upgrade() -> None:
    """Driven through the core (``SimNetwork``): the stream is opened while only the
    relay works, and the direct path opens in the middle of the transfer."""
    net, _, (a, b) = _lab(4, ["port-restricted", "port-restricted"],
                          config=CoreConfig(punching=False))
    b.endpoint.streams.serve("bulk/1")
    blocked = _block_direct(net)
    warm = a.endpoint.send_message(b.peer_id, b"warm", net.now)
    net.flush(a)
    assert net.run(30, until=lambda: any(
        isinstance(e, ev.MessageDelivered) and e.handle == warm for e in a.events))
    connection = _confirmed_connection(net, a, b)
    assert connection.path_kind == "relay"
    data = random.Random(11).randbytes(600_000)
    # A direct path opens with bytes in flight.
    got, at_change = _stream_across(net, a, b, data, connection, blocked, unblock_at=10)
    assert got == data
    assert at_change is not None and 0 < at_change < len(data)  # moved mid-transfer
    assert a.endpoint.connection_to(b.endpoint.identity.public_key) is connection
    assert connection.path_kind == "direct"
    assert any(isinstance(e, ev.PathChanged) and e.path == "direct" for e in a.events)


def test_a_stream_on_the_loser_of_a_crossed_dial_follows_it_to_the_direct_path() -> None:
    """Both sides dial at once through the relay and a stream opens before the dials are
    decided: the connection that carries it drains, and moves to the direct path the
    kept connection found instead of finishing on the relay."""
    net, _, (a, b) = _lab(2, ["port-restricted", "port-restricted"],
                          config=CoreConfig(punching=False))
    b.endpoint.streams.serve("bulk/1")
    blocked = _block_direct(net)
    a.endpoint.send_message(b.peer_id, b"hi", net.now)
    b.endpoint.send_message(a.peer_id, b"hi", net.now)
    net.flush(a)
    net.flush(b)
    peer = b.endpoint.identity.public_key
    assert net.run(30, until=lambda: a.endpoint.connection_to(peer) is not None)
    carrier = a.endpoint.connection_to(peer)
    data = random.Random(12).randbytes(8_000_000)
    # The direct path opens after the carrier's own probes of it are over.
    got, moved_at = _stream_across(net, a, b, data, carrier, blocked, unblock_at=250)
    assert got == data
    assert a.endpoint.stats["crossed_dials"] == 1
    # The stream stayed on the connection it opened on, which lost the crossed dial...
    assert carrier is not a.endpoint.connection_to(peer) and carrier.draining
    # ...and that connection left the relay in the middle of the transfer.
    assert moved_at is not None and 0 < moved_at < len(data)


@pytest.mark.parametrize("seed", range(4))
def test_a_stream_on_the_connection_a_crossed_dial_supersedes_goes_on_to_its_end(
        seed: int) -> None:
    """Both nodes dial each other at once and a stream opens on the first connection up,
    which may be the one that then drains: the stream keeps it open (and alive, past the
    idle timeout) until the stream ends; new streams open on the one kept."""

    async def main(net: sim.VirtualNetwork) -> tuple[bytes, bytes, int, int, int]:
        alice = await net.node().start()
        bob = await net.node().start()
        inbox = bob.channel("long/1")
        await asyncio.gather(alice.connect(bob.address), bob.connect(alice.address))
        stream = await alice.open_stream(bob.peer_id, channel="long/1")
        await stream.write(b"one ")
        peer = await inbox.accept(timeout=5)
        first = await peer.read()
        await asyncio.sleep(60)  # quiet, past the drain and the idle timeout
        later = await alice.open_stream(bob.peer_id, channel="long/1")
        held = alice.endpoint.streams.handles[later.handle].owner.connection
        assert held is alice.endpoint.connection_to(bytes.fromhex(bob.peer_id))
        await later.close()
        await stream.write(b"two")
        await stream.close()
        rest = await _drain_to(peer)
        await peer.close()
        assert await stream.read() in (b"", None)
        await (await inbox.accept(timeout=5)).close()
        await asyncio.sleep(30)
        counts = len(alice.endpoint.connections), len(bob.endpoint.connections)
        superseded = alice.stats.get("crossed_dials", 0)
        await alice.close()
        await bob.close()
        return first, rest, *counts, superseded

    first, rest, at_alice, at_bob, crossed = sim.run(main, seed=seed)
    assert first + rest == b"one two"
    assert (at_alice, at_bob) == (1, 1) and crossed == 1
