"""Named channels on real sockets: independent consumers on one node, refusal of a channel
the peer does not serve, and no head-of-line blocking between channels (nor from a
channel the app does not read)."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

import shoal
from shoal.core.services.credit import charge

LOOPBACK = "127.0.0.1:0"


def _node() -> shoal.Node:
    return shoal.Node(shoal.Identity.generate(), listen=LOOPBACK, lan_discovery=False)


async def test_two_channels_have_two_independent_consumers() -> None:
    async with _node() as a, _node() as b:
        chat, files = b.channel("chat/1"), b.channel("files/1")
        await a.connect(b.address)
        await a.send(b.peer_id, b"to chat", channel="chat/1", timeout=5)
        await a.send(b.peer_id, b"to files", channel="files/1", timeout=5)
        await a.send(b.peer_id, b"to default", timeout=5)

        async def first(source: object) -> shoal.Message:
            return await source.receive(timeout=5)  # type: ignore[attr-defined]

        got = await asyncio.gather(first(chat), first(files), first(b))
        assert [(m.channel, m.data) for m in got] == [
            ("chat/1", b"to chat"), ("files/1", b"to files"), ("", b"to default")]
        assert all(m.sender == a.peer_id for m in got)
        # Each consumer saw its own message only.
        for source in (chat, files):
            with pytest.raises(TimeoutError):
                await source.receive(timeout=0.1)


async def test_a_channel_the_peer_does_not_serve_fails_and_the_connection_stays() -> None:
    async with _node() as a, _node() as b:
        await a.connect(b.address)
        with pytest.raises(shoal.DeliveryError) as info:
            await a.send(b.peer_id, b"anyone?", channel="nobody/1", timeout=5)
        assert info.value.code == "ENOPROTOOPT"
        assert "nobody/1" in str(info.value)
        await a.send(b.peer_id, b"still here", timeout=5)
        assert (await b.receive(timeout=5)).data == b"still here"
        assert [p.connected for p in a.peers() if p.peer_id == b.peer_id] == [True]
        # Once b serves it, the channel works on the same connection.
        late = b.channel("nobody/1")
        await a.send(b.peer_id, b"now", channel="nobody/1", timeout=5)
        assert (await late.receive(timeout=5)).data == b"now"


async def test_one_channel_per_name() -> None:
    async with _node() as a:
        chat = a.channel("chat/1")
        with pytest.raises(shoal.LocalProtocolError) as info:
            a.channel("chat/1")
        assert info.value.code == "EBUSY"
        chat.close()
        a.channel("chat/1").close()


async def test_a_small_message_is_not_stuck_behind_a_large_one_on_another_channel() -> None:
    async with _node() as a, _node() as b:
        readers = [asyncio.create_task(_read_all(b.channel(name)))
                   for name in ("bulk/1", "chat/1")]
        await a.connect(b.address)
        await a.send(b.peer_id, b"warm up", timeout=5)
        bulk = [a.send_nowait(b.peer_id, os.urandom(1 << 20), channel="bulk/1")
                for _ in range(8)]
        await asyncio.sleep(0.005)  # the bulk is in flight
        assert not any(f.done() for f in bulk)
        started = time.monotonic()
        await a.send(b.peer_id, b"x" * 100, channel="chat/1", timeout=5)
        small_at = time.monotonic() - started
        await asyncio.gather(*bulk)
        bulk_at = time.monotonic() - started
        assert small_at < 0.05, (small_at, bulk_at)
        assert small_at < bulk_at / 3, (small_at, bulk_at)
        for reader in readers:
            reader.cancel()


async def _read_all(channel: shoal.Channel) -> None:
    async for _ in channel:
        pass


async def test_a_channel_the_app_does_not_read_holds_up_no_other_channel() -> None:
    async with _node() as a, _node() as b:
        sink_in = b.channel("sink/1")  # served, not read until the end
        chat = b.channel("chat/1")
        await a.connect(b.address)
        sink = [a.send_nowait(b.peer_id, bytes(1 << 19), channel="sink/1") for _ in range(8)]
        await asyncio.sleep(0.3)  # the sink takes what its window allows, then waits
        for i in range(5):
            await a.send(b.peer_id, b"chat %d" % i, channel="chat/1", timeout=5)
            assert (await chat.receive(timeout=5)).data == b"chat %d" % i
        window = b.config.channel_receive_window
        assert sum(f.done() for f in sink) == window // charge(1 << 19)
        assert b.endpoint.messages.unread <= window
        # Read at last, the rest flows.
        for _ in range(8):
            await sink_in.receive(timeout=5)
        await asyncio.gather(*sink)
