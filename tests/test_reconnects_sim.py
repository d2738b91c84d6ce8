"""Peers that restart or are reached another way, in virtual time (``shoal.sim``): a
restarted peer takes over at once (the handshake names the run of its node), a message
or a fetch in progress goes on with it, and ``connect`` to another address of a peer
already connected returns that peer."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

import shoal
from shoal import sim

PIECE = 256 * 1024
pytestmark = pytest.mark.timeout(120)


def _kill(net: sim.VirtualNetwork, node: shoal.Node) -> None:
    """Gone without a word, as after SIGKILL: its address stops answering."""
    net.detach(net.nodes[node.address])


@pytest.mark.parametrize("settle", [0.0, 1.0])
def test_connect_to_another_address_of_a_connected_peer_returns_it(settle: float) -> None:
    async def main(net: sim.VirtualNetwork) -> None:
        async with net.node() as a, net.node() as b:
            peer = await a.connect(b.address)
            await asyncio.sleep(settle)  # 0: before the first connection is confirmed
            other = ("10.77.0.1", 7100)
            net.bind(net.nodes[b.address], 3, other)  # b is reachable there too
            started = net.loop.time()
            assert await a.connect(other, timeout=5) == peer
            assert net.loop.time() - started < 1
            await asyncio.sleep(2)
            # One connection on each side, which knows both addresses as validated paths.
            (connection,) = a.endpoint.connections.values()
            assert len(b.endpoint.connections) == 1
            validated = {p.address for p in connection.paths.values() if p.validated}
            assert other in validated
            assert (await a.send(peer, b"still there")).peer_id == peer
            assert (await b.receive(timeout=1)).data == b"still there"
            assert not any(p for p in a.peers() if p.peer_id == peer and not p.connected)

    sim.run(main, seed=1)


def test_a_big_message_reaches_the_receiver_restarted_mid_way() -> None:
    identity = shoal.Identity.generate()
    data = random.Random(3).randbytes(1 << 20)

    async def main(net: sim.VirtualNetwork) -> float:
        async with net.node() as sender:
            first = net.node(identity=identity)
            await first.start()
            peer = await sender.connect(first.address)
            sending = asyncio.ensure_future(sender.send(peer, data, timeout=60))
            await asyncio.sleep(0.1)
            assert not sending.done()
            _kill(net, first)
            async with net.node(identity=identity) as again:
                restarted = net.loop.time()
                assert await again.connect(sender.address) == sender.peer_id
                delivery = await sending
                assert delivery.peer_id == peer
                assert (await again.receive(timeout=5)).data == data
                return net.loop.time() - restarted

    assert sim.run(main, seed=2) < 3.0


def test_a_fetch_goes_on_with_the_provider_restarted_mid_way(tmp_path: Path) -> None:
    source = tmp_path / "source.bin"
    source.write_bytes(random.Random(1).randbytes(16 * PIECE))
    target = tmp_path / "out.bin"
    identity = shoal.Identity.generate()

    async def main(net: sim.VirtualNetwork) -> tuple[shoal.FetchResult, float]:
        async with net.node() as fetcher:
            provider = net.node(identity=identity)
            await provider.start()
            ticket = await provider.share(source)
            restarted: list[float] = []
            runs: list[shoal.Node] = []

            async def restart() -> None:
                again = net.node(identity=identity)
                runs.append(again)
                await again.start()
                await again.share(source)
                restarted.append(net.loop.time())
                await again.connect(fetcher.address)  # the restarted provider comes back

            def kill_at_three_pieces(progress: shoal.FetchProgress) -> None:
                if progress.bytes >= 3 * PIECE and not runs:
                    _kill(net, provider)
                    asyncio.get_running_loop().create_task(restart())

            result = await fetcher.fetch(ticket, target, progress=kill_at_three_pieces)
            took = net.loop.time() - restarted[0]
            for run in runs:
                await run.close()
            return result, took

    result, took = sim.run(main, seed=4)
    assert target.read_bytes() == source.read_bytes()
    (provider,) = result.providers.values()
    assert provider["state"] == "active" and provider["pieces"] == 16
    assert took < 2.0


async def _read_all(stream: shoal.Stream) -> bytes:
    out = bytearray()
    while chunk := await stream.read(65536):
        out += chunk
    return bytes(out)


@pytest.mark.parametrize("moving", ["writer", "reader"])
def test_a_stream_goes_on_when_either_side_changes_address_mid_way(moving: str) -> None:
    data = random.Random(5).randbytes(2 << 20)

    async def main(net: sim.VirtualNetwork) -> tuple[bytes, float]:
        async with net.node() as writer, net.node() as reader:
            inbox = reader.channel("bulk/1")
            await writer.connect(reader.address)
            stream = await writer.open_stream(reader.peer_id, channel="bulk/1")

            async def upload() -> None:
                await stream.write(data)
                await stream.close()

            sending = asyncio.ensure_future(upload())
            peer = await inbox.accept(timeout=5)
            got = bytearray(await peer.read(65536))
            while len(got) < len(data) // 4:
                got += await peer.read(65536)
            mover = writer if moving == "writer" else reader
            net.move(net.nodes[mover.address], ("10.0.9.9", 40000))
            moved = net.loop.time()
            got += await asyncio.wait_for(_read_all(peer), 60)
            took = net.loop.time() - moved
            await sending
            return bytes(got), took

    got, took = sim.run(main, seed=5)
    assert got == data
    assert took < 5.0


@pytest.mark.parametrize("dialer", ["stays", "restarts"])
@pytest.mark.parametrize("restarting", ["writer", "reader"])
def test_a_stream_fails_at_once_when_its_peer_comes_back_restarted(restarting: str,
                                                                   dialer: str) -> None:
    """The stream's state died with the peer's run: the stream fails as soon as the
    restarted run connects (not at the idle timeout), and a new stream works."""
    identity = shoal.Identity.generate()

    async def main(net: sim.VirtualNetwork) -> tuple[str, float, bytes]:
        async with net.node() as stays:
            goes = net.node(identity=identity)
            await goes.start()
            goes.channel("s/1")
            accepting = stays.channel("s/1")
            if dialer == "stays":
                await stays.connect(goes.address)
            else:
                await goes.connect(stays.address)
            await asyncio.sleep(0.2)  # the FINAL reaches the other side
            if restarting == "reader":
                stream = await stays.open_stream(goes.peer_id, channel="s/1")
                await stream.write(b"hello")
            else:
                opened = await goes.open_stream(stays.peer_id, channel="s/1")
                await opened.write(b"hello")
                stream = await accepting.accept(timeout=5)
                assert await stream.read() == b"hello"
            await asyncio.sleep(0.5)
            _kill(net, goes)
            async with net.node(identity=identity) as again:
                inbox = again.channel("s/1")
                restarted = net.loop.time()
                await again.connect(stays.address)
                try:
                    async with asyncio.timeout(30):
                        while True:
                            if restarting == "reader":
                                await stream.write(b"more")
                                await asyncio.sleep(0.1)
                            else:
                                await stream.read()
                except shoal.DeliveryError as exc:
                    code = exc.code
                took = net.loop.time() - restarted
                fresh = await stays.open_stream(again.peer_id, channel="s/1")
                await fresh.write(b"again")
                await fresh.close()
                accepted = await inbox.accept(timeout=5)
                return code, took, await _read_all(accepted)

    code, took, data = sim.run(main, seed=6)
    assert code in ("ECONNRESET", "EPIPE")
    assert took < 2.0
    assert data == b"again"


def test_a_fetcher_restarted_mid_way_resumes_at_once(tmp_path: Path) -> None:
    """The fetching node dies and its key starts again at once with the same partial
    file: the provider takes the new run's connection for the old one's and serves it
    (it never waits on the connection of the run that died)."""
    source = tmp_path / "source.bin"
    source.write_bytes(random.Random(2).randbytes(16 * PIECE))
    target = tmp_path / "out.bin"
    identity = shoal.Identity.generate()

    class Killed(Exception):
        pass

    async def main(net: sim.VirtualNetwork) -> tuple[shoal.FetchResult, float]:
        async with net.node() as provider:
            ticket = await provider.share(source)
            first = net.node(identity=identity)
            await first.start()

            def kill_at_three_pieces(progress: shoal.FetchProgress) -> None:
                if progress.bytes >= 3 * PIECE:
                    _kill(net, first)
                    raise Killed

            with pytest.raises(Killed):
                await first.fetch(ticket, target, progress=kill_at_three_pieces)
            async with net.node(identity=identity) as again:
                started = net.loop.time()
                result = await again.fetch(ticket, target)
                return result, net.loop.time() - started

    result, took = sim.run(main, seed=7)
    assert target.read_bytes() == source.read_bytes()
    assert result.resumed >= 3 and result.resumed + result.fetched == 16
    assert took < 3.0


@pytest.mark.parametrize("moving", ["provider", "fetcher"])
def test_a_fetch_goes_on_when_either_side_changes_address_mid_way(tmp_path: Path,
                                                                   moving: str) -> None:
    source = tmp_path / "source.bin"
    source.write_bytes(random.Random(3).randbytes(16 * PIECE))
    target = tmp_path / "out.bin"

    async def main(net: sim.VirtualNetwork) -> tuple[shoal.FetchResult, float]:
        async with net.node() as provider, net.node() as fetcher:
            ticket = await provider.share(source)
            moved: list[float] = []

            def move_at_four_pieces(progress: shoal.FetchProgress) -> None:
                if progress.bytes >= 4 * PIECE and not moved:
                    node = provider if moving == "provider" else fetcher
                    net.move(net.nodes[node.address], ("10.0.9.9", 40000))
                    moved.append(net.loop.time())

            result = await fetcher.fetch(ticket, target, progress=move_at_four_pieces)
            return result, net.loop.time() - moved[0]

    result, took = sim.run(main, seed=8)
    assert target.read_bytes() == source.read_bytes()
    (provider,) = result.providers.values()
    assert provider["state"] == "active" and provider["pieces"] == 16
    assert took < 3.0
