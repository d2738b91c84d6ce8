"""Files shared and fetched by content, in virtual time (``shoal.sim``): several providers
at once, a provider that lies, a lossy network, resuming, and no partial file under the
final name. The CLI's share and fetch, killed mid-transfer, run as real processes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.cli_helpers import shoal as shoal_argv

import shoal
from shoal import sim
from shoal.aio import files
from shoal.core.blobs import (
    MAX_BLOB_SIZE,
    HashTree,
    Provider,
    Ticket,
    piece_count,
    piece_span,
)
from shoal.sim.network import LinkProfile

PIECE = 256 * 1024
pytestmark = pytest.mark.timeout(120)


def _file(folder: Path, size: int, seed: int = 1, name: str = "source.bin") -> Path:
    path = folder / name
    rng = random.Random(seed)
    with path.open("wb") as handle:
        for offset in range(0, size, 1 << 20):
            handle.write(rng.randbytes(min(1 << 20, size - offset)))
    return path


async def _lying_provider(node: shoal.Node, data: bytes) -> None:
    """Answers every request with the right proof and one flipped bit in the piece."""
    tree = HashTree.build(len(data), [data[o:o + PIECE] for o in range(0, len(data), PIECE)])
    channel = node.channel(files.CHANNEL)
    async for message in channel:
        request_id, piece, _ = files.decode(message.data)  # type: ignore[misc]
        offset, length = piece_span(len(data), piece)
        bad = bytearray(data[offset:offset + length])
        bad[len(bad) // 2] ^= 0x10
        channel.send_nowait(message.sender, files.encode_piece(
            request_id, piece, tree.piece_proof(piece), bytes(bad)))


def test_a_fetch_from_three_providers_drops_the_one_that_lies(tmp_path: Path) -> None:
    source = _file(tmp_path, 12 * PIECE + 1000)
    data = source.read_bytes()

    async def main(net: sim.VirtualNetwork) -> shoal.FetchResult:
        async with net.node() as good1, net.node() as good2, net.node() as liar, \
                net.node() as fetcher:
            lies = asyncio.get_running_loop().create_task(_lying_provider(liar, data))
            ticket = (await good1.share(source)).merge(
                await good2.share(source),
                Ticket(shoal.Ticket.parse(str(await good1.share(source))).root, len(data),
                       (Provider(liar.peer_id, (liar.address,)),)))
            # The liar is asked first as well as the others.
            ticket = Ticket(ticket.root, ticket.size, ticket.providers[::-1], ticket.name)
            seen: list[shoal.FetchProgress] = []
            result = await fetcher.fetch(str(ticket), tmp_path / "out.bin",
                                         progress=seen.append)
            lies.cancel()
            assert seen[-1].corrupt == 1 and seen[-1].bytes == len(data)
            served = [shared.served for node in (good1, good2) for shared in node.files()]
            assert sum(served) == result.fetched == piece_count(len(data))
            assert all(count > 0 for count in served)  # both honest ones were used
            assert liar.peer_id not in {p.peer_id for p in (await good1.share(source)).providers}
            assert fetcher.file_stats["corrupt"] == 1
            return result

    result = sim.run(main, seed=3)
    assert (tmp_path / "out.bin").read_bytes() == data
    liar_stats = [p for p in result.providers.values() if p["corrupt"]]
    assert liar_stats == [{"pieces": 0, "corrupt": 1, "state": "dropped",
                           "reason": "sent data that failed verification"}]
    assert not (tmp_path / "out.bin.part").exists()
    assert not (tmp_path / "out.bin.part.state").exists()


def test_a_fetch_over_a_lossy_reordering_link_is_byte_identical(tmp_path: Path) -> None:
    size = int(os.environ.get("SHOAL_FILES_TEST_BYTES", 16 * PIECE + 12345))
    source = _file(tmp_path, size, seed=5)
    profile = LinkProfile(latency=0.01, jitter=0.01, loss=0.10, duplicate=0.02)

    async def main(net: sim.VirtualNetwork) -> shoal.FetchResult:
        async with net.node() as a, net.node() as b, net.node() as c, \
                net.node() as fetcher:
            ticket = (await a.share(source)).merge(await b.share(source),
                                                   await c.share(source))
            return await fetcher.fetch(ticket, tmp_path / "out.bin")

    result = sim.run(main, seed=11, profile=profile)
    assert result.fetched == piece_count(size)
    assert (tmp_path / "out.bin").read_bytes() == source.read_bytes()


class _Stop(Exception):
    pass


def test_a_resumed_fetch_asks_for_no_piece_it_holds(tmp_path: Path) -> None:
    source = _file(tmp_path, 10 * PIECE)
    target = tmp_path / "out.bin"

    async def main(net: sim.VirtualNetwork) -> tuple[int, int, shoal.FetchResult]:
        async with net.node() as provider:
            ticket = await provider.share(source)

            def stop_after_four(progress: shoal.FetchProgress) -> None:
                # Never a partial file under the final name.
                assert not target.exists() and target.with_name("out.bin.part").exists()
                if progress.bytes >= 4 * PIECE:
                    raise _Stop

            async with net.node() as fetcher:
                with pytest.raises(_Stop):
                    await fetcher.fetch(ticket, target, progress=stop_after_four)
            await asyncio.sleep(1)  # requests the first fetcher had in flight land first
            first = provider.files()[0].served
            async with net.node() as fetcher:  # another node, the same partial file
                result = await fetcher.fetch(ticket, target)
            return first, provider.files()[0].served - first, result

    _first, second, result = sim.run(main, seed=2)
    assert result.resumed == 4 and result.fetched == 6 and result.requested == 6
    assert second == 6  # the provider was asked only for what was missing
    assert target.read_bytes() == source.read_bytes()


def test_a_killed_provider_is_resumed_from_when_it_comes_back(tmp_path: Path) -> None:
    source = _file(tmp_path, 8 * PIECE)
    target = tmp_path / "out.bin"
    identity = shoal.Identity.generate()

    async def main(net: sim.VirtualNetwork) -> shoal.FetchResult:
        async with net.node() as fetcher:
            provider = net.node(identity=identity)
            await provider.start()
            ticket = await provider.share(source)

            def kill_at_three_pieces(progress: shoal.FetchProgress) -> None:
                # Gone without a word, as after SIGKILL: its address stops answering.
                if progress.bytes >= 3 * PIECE and provider.address in net.nodes:
                    net.detach(net.nodes[provider.address])

            with pytest.raises(shoal.FetchError) as info:
                await fetcher.fetch(ticket, target, progress=kill_at_three_pieces)
            assert "kept for a later fetch" in str(info.value)
            assert not target.exists() and target.with_name("out.bin.part").exists()
            await provider.close()
            async with net.node(identity=identity) as again:
                return await fetcher.fetch(await again.share(source), target)

    result = sim.run(main, seed=4)
    assert result.resumed >= 3 and result.resumed + result.fetched == 8
    assert target.read_bytes() == source.read_bytes()


def test_a_provider_that_vanishes_mid_fetch_leaves_its_pieces_to_the_others(
        tmp_path: Path) -> None:
    source = _file(tmp_path, 24 * PIECE)

    async def main(net: sim.VirtualNetwork) -> tuple[shoal.FetchResult, float]:
        async with net.node() as stays, net.node() as goes, net.node() as fetcher:
            ticket = (await goes.share(source)).merge(await stays.share(source))

            def vanish(progress: shoal.FetchProgress) -> None:
                if progress.bytes >= 4 * PIECE and goes.address in net.nodes:
                    net.detach(net.nodes[goes.address])

            started = net.loop.time()
            result = await fetcher.fetch(ticket, tmp_path / "out.bin", progress=vanish)
            return result, net.loop.time() - started

    result, seconds = sim.run(main, seed=6)
    assert (tmp_path / "out.bin").read_bytes() == source.read_bytes()
    gone, stayed = result.providers.values()
    assert stayed["pieces"] > gone["pieces"] and stayed["state"] == "active"
    # Its requests timed out after a few times what answers took, not the 30 s limit.
    assert seconds < 10


def test_a_partial_file_changed_on_disk_is_caught_before_it_gets_its_name(
        tmp_path: Path) -> None:
    source = _file(tmp_path, 6 * PIECE)
    target = tmp_path / "out.bin"
    part = target.with_name("out.bin.part")

    async def main(net: sim.VirtualNetwork) -> shoal.FetchResult:
        async with net.node() as provider, net.node() as fetcher:
            ticket = await provider.share(source)

            def damage(progress: shoal.FetchProgress) -> None:
                if progress.bytes == 5 * PIECE:  # piece 0 is verified by now: spoil it
                    with part.open("r+b") as handle:
                        handle.write(b"\xff" * 10)

            return await fetcher.fetch(ticket, target, progress=damage)

    result = sim.run(main, seed=1)
    assert result.fetched == 7  # six, and the damaged one again
    assert target.read_bytes() == source.read_bytes()


def test_providers_without_the_file_are_dropped_and_the_partial_kept(tmp_path: Path) -> None:
    source = _file(tmp_path, 2 * PIECE)

    async def main(net: sim.VirtualNetwork) -> None:
        async with net.node() as provider, net.node() as stranger, net.node() as fetcher:
            ticket = await provider.share(source)
            assert provider.unshare(str(ticket)) and not provider.unshare(ticket)
            assert provider.files() == []
            served = Ticket(ticket.root, ticket.size, (
                *ticket.providers, Provider(stranger.peer_id, (stranger.address,))))
            stranger.files()  # serves blobs, but not this one
            with pytest.raises(shoal.FetchError) as info:
                await fetcher.fetch(served, tmp_path / "out.bin")
            assert "does not have the file" in str(info.value)
            assert info.value.code == "EHOSTUNREACH"
            assert not (tmp_path / "out.bin").exists()

    sim.run(main)


def test_a_provider_that_never_answers_ends_the_fetch_with_an_error(tmp_path: Path) -> None:
    """It takes every request (acknowledged) and answers none: the fetch gives up after
    its retries instead of waiting for ever."""
    source = _file(tmp_path, 2 * PIECE)

    async def main(net: sim.VirtualNetwork) -> float:
        async with net.node() as provider, net.node() as silent, net.node() as fetcher:
            ticket = await provider.share(source)
            silent.channel(files.CHANNEL)  # read by nobody
            mute = Ticket(ticket.root, ticket.size, (Provider(silent.peer_id,
                                                              (silent.address,)),))
            started = net.loop.time()
            with pytest.raises(shoal.FetchError) as info:
                await fetcher.fetch(mute, tmp_path / "out.bin")
            assert "did not answer" in str(info.value)
            assert "kept" not in str(info.value)
            # Nothing was fetched: nothing is left behind to resume.
            assert sorted(p.name for p in tmp_path.iterdir()) == ["source.bin"]
            return net.loop.time() - started

    assert sim.run(main) < 300  # virtual seconds: 5 timeouts of 30 s and their backoff


def test_a_ticket_larger_than_the_free_space_is_refused_before_anything_is_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_statvfs = os.statvfs
    free_blocks, block = 1 << 18, 4096  # 1 GiB free where the file goes, whatever the disk

    def small_disk(path: object) -> object:
        info = real_statvfs(path)  # type: ignore[arg-type]
        if Path(path) != tmp_path:  # type: ignore[arg-type]
            return info
        fields = list(info)
        fields[0], fields[1], fields[4] = block, block, free_blocks  # bsize, frsize, bavail
        return os.statvfs_result(fields)

    monkeypatch.setattr(os, "statvfs", small_disk)
    size = free_blocks * block + (1 << 30)
    assert size <= MAX_BLOB_SIZE

    async def main(net: sim.VirtualNetwork) -> None:
        async with net.node() as provider, net.node() as fetcher:
            huge = Ticket(bytes(32), size, (Provider(provider.peer_id,
                                                     (provider.address,)),))
            with pytest.raises(shoal.FetchError) as info:
                await fetcher.fetch(huge, tmp_path / "huge.bin")
            assert info.value.code == "ENOSPC", info.value
            assert list(tmp_path.iterdir()) == []

    sim.run(main)


def test_bad_arguments_are_typed_errors(tmp_path: Path) -> None:
    source = _file(tmp_path, 1000)
    (tmp_path / "taken").write_bytes(b"x")

    async def main(net: sim.VirtualNetwork) -> None:
        async with net.node() as node, net.node() as other:
            ticket = await other.share(source)
            cases = [
                (node.share(tmp_path / "missing"), shoal.LocalProtocolError, "ENOENT"),
                (node.share(tmp_path), shoal.LocalProtocolError, "EISDIR"),
                (node.fetch("blobnotaticket", tmp_path / "x"), shoal.TicketError, "EINVAL"),
                (node.fetch(ticket, tmp_path / "taken"), shoal.FetchError, "EEXIST"),
                (node.fetch(ticket, tmp_path), shoal.LocalProtocolError, "EISDIR"),
                (node.fetch(ticket, tmp_path / "no" / "x"), shoal.LocalProtocolError,
                 "ENOENT"),
                (other.fetch(ticket, tmp_path / "self"), shoal.FetchError, "EINVAL"),
            ]
            for call, kind, code in cases:
                with pytest.raises(kind) as info:
                    await call
                assert info.value.code == code, info.value
            assert (tmp_path / "taken").read_bytes() == b"x"
            # Two fetches into one file at once: the second is refused.
            first = asyncio.get_running_loop().create_task(node.fetch(ticket, tmp_path / "y"))
            await asyncio.sleep(0)
            with pytest.raises(shoal.FetchError) as info:
                await node.fetch(ticket, tmp_path / "y")
            assert info.value.code == "EBUSY"
            await first
            assert (tmp_path / "y").read_bytes() == source.read_bytes()

    sim.run(main)


def test_a_server_refuses_floods_and_survives_garbage(tmp_path: Path) -> None:
    source = _file(tmp_path, 40 * PIECE)

    async def main(net: sim.VirtualNetwork) -> dict[str, int]:
        async with net.node() as server, net.node() as attacker:
            ticket = await server.share(source)
            channel = attacker.channel(files.CHANNEL)
            attacker.add_peer_address(server.peer_id, server.address)
            for junk in (b"\x01short", b"\x09" * 50, b"\x02" + b"\0" * 5):
                await channel.send(server.peer_id, junk)
            for request_id in range(40):
                channel.send_nowait(server.peer_id,
                                    files.encode_request(request_id, ticket.root, request_id))
            answers = [files.decode((await channel.receive()).data) for _ in range(40)]
            refused = [a for a in answers if a.kind == files.REFUSED]  # type: ignore[union-attr]
            assert refused and all(a.reason == files.BUSY for a in refused)  # type: ignore[union-attr]
            assert len(answers) - len(refused) >= files.SERVE_PER_PEER
            stats = server.file_stats
            # Still serving.
            async with net.node() as fetcher:
                await fetcher.fetch(ticket, tmp_path / "out.bin")
            return stats

    stats = sim.run(main)
    assert stats["malformed"] == 3 and stats["busy"] > 0
    assert (tmp_path / "out.bin").read_bytes() == source.read_bytes()


def test_a_peer_that_asks_and_never_reads_makes_the_server_queue_little(
        tmp_path: Path) -> None:
    source = _file(tmp_path, 2 * PIECE)

    async def main(net: sim.VirtualNetwork) -> tuple[int, int, dict[str, int]]:
        async with net.node() as server, net.node() as attacker:
            ticket = await server.share(source)
            channel = attacker.channel(files.CHANNEL)  # bound, never read
            attacker.add_peer_address(server.peer_id, server.address)
            for request_id in range(20_000):  # for a root the server does not share
                channel.send_nowait(server.peer_id,
                                    files.encode_request(request_id, bytes(32), 0))
                if request_id % 500 == 0:
                    await asyncio.sleep(0.05)
            await asyncio.sleep(5)
            connection = server.endpoint.connection_to(bytes.fromhex(attacker.peer_id))
            assert connection is not None
            queued = sum(len(out.queue) for out in connection.state["messages"].out.values())
            # Still serving others.
            async with net.node() as fetcher:
                await fetcher.fetch(ticket, tmp_path / "out.bin")
            return queued, channel._inbox.qsize(), server.file_stats

    queued, unread, stats = sim.run(main)
    assert queued <= 64, queued
    assert stats["not_shared"] == 20_000 and stats.get("unanswered", 0) > 0
    assert unread <= 20_000 - stats["unanswered"]
    assert (tmp_path / "out.bin").read_bytes() == source.read_bytes()


# ---------------------------------------------------------------------- the CLI


def _json_lines(process: subprocess.Popen[str]):  # type: ignore[no-untyped-def]
    assert process.stdout is not None
    for line in process.stdout:
        yield json.loads(line)


@contextlib.contextmanager
def _sharing(tmp_path: Path, source: Path) -> Iterator[dict]:
    """``shoal share source`` running on loopback: its first JSON event; interrupted at
    the end."""
    share = subprocess.Popen(
        shoal_argv("share", str(source), "--listen", "127.0.0.1:0", "--no-lan", "--json",
                   "--identity", str(tmp_path / "share.key")),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        yield next(_json_lines(share))
    finally:
        share.send_signal(signal.SIGINT)
        share.wait(timeout=10)


def _fetch_argv(ticket: str, target: Path) -> list[str]:
    """``shoal fetch`` of ``ticket`` to ``target`` on loopback, a new peer each run (a
    fetch's identity is made up for it)."""
    return shoal_argv("fetch", ticket, "-o", str(target), "--listen", "127.0.0.1:0",
                      "--no-lan", "--json")


def test_the_cli_fetch_resumes_after_it_was_killed(tmp_path: Path) -> None:
    source = _file(tmp_path, 192 * PIECE)
    target = tmp_path / "got.bin"
    with _sharing(tmp_path, source) as ready:
        assert ready["event"] == "sharing" and ready["bytes"] == source.stat().st_size
        fetch_argv = _fetch_argv(ready["ticket"], target)
        first = subprocess.Popen(fetch_argv, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        for event in _json_lines(first):
            if event["event"] == "progress" and event["bytes"] >= 8 * PIECE:
                first.send_signal(signal.SIGKILL)
                break
        first.wait(timeout=30)
        assert first.returncode == -signal.SIGKILL
        assert not target.exists()
        state = target.with_name("got.bin.part.state").read_bytes()
        bits = state[48:48 + 24]  # after the header: magic, root, size
        held = sum(bin(b).count("1") for b in bits)
        assert 8 <= held < 192, held
        second = subprocess.run(fetch_argv, capture_output=True, text=True, timeout=120)
        assert second.returncode == 0, second.stderr
        done = [json.loads(line) for line in second.stdout.splitlines()][-1]
        assert done["event"] == "fetched", done
        assert done["resumed_pieces"] == held and done["fetched_pieces"] == 192 - held
        assert target.read_bytes() == source.read_bytes()
        assert not target.with_name("got.bin.part").exists()


def test_a_signal_after_the_fetch_is_done_is_no_interruption(tmp_path: Path) -> None:
    source = _file(tmp_path, 4 * PIECE)
    target = tmp_path / "got.bin"
    with _sharing(tmp_path, source) as ready:
        fetch = subprocess.Popen(_fetch_argv(ready["ticket"], target),
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        events = []
        for event in _json_lines(fetch):
            events.append(event)
            if event["event"] == "fetched":
                fetch.send_signal(signal.SIGINT)  # while its node closes
                break
        assert fetch.stdout is not None
        events += [json.loads(line) for line in fetch.stdout]
        fetch.wait(timeout=30)
        assert target.read_bytes() == source.read_bytes()
        assert fetch.returncode == 0 and [e for e in events if e["event"] == "error"] == []


@pytest.mark.parametrize(("argv", "said"), [
    (["fetch", "blobnope"], "not a ticket"),
    (["fetch", "hello"], "not a ticket"),
    (["share", "/nonexistent/file"], "cannot read"),
])
def test_the_cli_says_what_is_wrong_in_one_line(tmp_path: Path, argv: list[str],
                                               said: str) -> None:
    result = subprocess.run(shoal_argv(*argv, "--no-lan", "--identity",
                                       str(tmp_path / "k.key")),
                            capture_output=True, text=True, timeout=30, cwd=tmp_path)
    lines = result.stderr.strip().splitlines()
    assert result.returncode in (1, 2) and len(lines) == 1 and said in lines[0], result.stderr
    assert "Traceback" not in result.stderr


# ---------------------------------------------------------------------- pages (JS API)


def _app(folder: Path, toml: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "shoal.toml").write_text(toml)
    (folder / "index.html").write_text("<!doctype html><p>files")
    return folder


async def test_pages_share_and_fetch_within_their_folders(tmp_path: Path) -> None:
    from shoal.runtime import AppHost
    from shoal.runtime.testing import BridgeClient

    base = '[app]\nname = "T"\nid = "test.shoal.files"\n'
    net = '[permissions]\nnetwork = true\n[network]\nlan = false\nlisten = "127.0.0.1:0"\n'
    first, second = _app(tmp_path / "a", base + net), _app(tmp_path / "b", base + net)
    offline = _app(tmp_path / "c", base)
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = _file(outside, 5000, name="secret.bin")
    async with AppHost(first, data_dir=tmp_path / "da", lan_discovery=False) as host_a, \
            AppHost(second, data_dir=tmp_path / "db", lan_discovery=False) as host_b, \
            AppHost(offline, data_dir=tmp_path / "dc", lan_discovery=False) as host_c, \
            BridgeClient(host_a) as page_a, BridgeClient(host_b) as page_b, \
            BridgeClient(host_c) as page_c:
        data = random.Random(9).randbytes(3 * PIECE + 77)
        await page_a.call("fs.writeFile", "photo.jpg", data)
        shared = await page_a.call("files.share", "photo.jpg")
        assert shared["size"] == len(data) and shared["name"] == "photo.jpg"
        assert shared["ticket"].startswith("blob")
        got = await page_b.call("files.fetch", shared["ticket"], "copy.jpg", "f1")
        assert got["size"] == len(data) and got["fetched"] == 4
        assert await page_b.call("fs.readFile", "copy.jpg") == data
        events = []
        while not page_b.events.empty():
            events.append(page_b.events.get_nowait())
        progress = [e for name, e in events if name == "files.progress"]
        assert progress and all(e["id"] == "f1" for e in progress)
        assert progress[-1]["bytes"] == len(data) and progress[-1]["peers"] == 1
        # Outside the declared folders, or without the network permission: refused.
        refusals = [
            page_a.call("files.share", str(secret)),
            page_b.call("files.fetch", shared["ticket"], str(outside / "stolen.jpg")),
            page_b.call("files.fetch", shared["ticket"], "../escape.jpg"),
            page_c.call("files.share", "anything"),
            page_c.call("files.fetch", shared["ticket"], "x"),
        ]
        for refused in refusals:
            with pytest.raises(shoal.ShoalError) as info:
                await refused
            assert info.value.code == "EPERM"
        assert not (outside / "stolen.jpg").exists() and not (tmp_path / "escape.jpg").exists()
        with pytest.raises(shoal.ShoalError) as info:
            await page_b.call("files.fetch", "blobnonsense", "other.jpg")
        assert info.value.code == "EINVAL"
        assert [f["name"] for f in await page_a.call("files.list")] == ["photo.jpg"]
        assert await page_a.call("files.unshare", shared["ticket"]) is True
