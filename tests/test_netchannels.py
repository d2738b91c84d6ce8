"""Named channels and streams of the page's network API, through the bridge as a page
calls it: two apps on loopback, each with its own node."""

from __future__ import annotations

import asyncio
import base64
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from shoal.runtime import AppHost
from shoal.runtime.fsapi import BridgeError
from shoal.runtime.netchannels import STREAM_CHUNK
from shoal.runtime.testing import BridgeClient

TOML = ('[app]\nname = "T"\nid = "test.shoal.{name}"\n[permissions]\nnetwork = true\n'
        '[network]\nlan = false\nlisten = "127.0.0.1:0"\n')


def _app(folder: Path, name: str, network: bool = True) -> Path:
    folder.mkdir(parents=True)
    toml = TOML.format(name=name)
    (folder / "shoal.toml").write_text(toml if network else toml.split("[permissions]")[0])
    (folder / "index.html").write_text("<!doctype html><p>hi")
    return folder


async def _event(page: BridgeClient, name: str, timeout: float = 10) -> dict:
    while True:
        event, data = await asyncio.wait_for(page.events.get(), timeout)
        if event == name:
            return data


async def _code(coroutine) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(BridgeError) as info:
        await coroutine
    return info.value.code


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[tuple[AppHost, AppHost, BridgeClient,
                                                        BridgeClient, str]]:
    async with AppHost(_app(tmp_path / "a", "a"), data_dir=tmp_path / "da",
                       lan_discovery=False) as host_a, \
            AppHost(_app(tmp_path / "b", "b"), data_dir=tmp_path / "db",
                    lan_discovery=False) as host_b, \
            BridgeClient(host_a) as page_a, BridgeClient(host_b) as page_b:
        assert host_a.node is not None and host_b.node is not None
        id_b = host_b.node.peer_id
        host_a.node.add_peer_address(id_b, host_b.node.address)
        yield host_a, host_b, page_a, page_b, id_b


async def test_messages_on_a_named_channel_reach_that_channel_only(pair) -> None:  # type: ignore[no-untyped-def]
    _, _, page_a, page_b, id_b = pair
    await page_b.call("network.channel", "chat/1")
    await page_a.call("network.channel", "chat/1")
    assert await _code(page_b.call("network.channel", "chat/1")) == "EBUSY"
    delivery = await page_a.call("network.channelSend", "chat/1", id_b, b"hi bob", {})
    assert delivery["path"] == "direct"
    message = await _event(page_b, "network.channel.message")
    assert message["channel"] == "chat/1" and base64.b64decode(message["data"]) == b"hi bob"
    # A channel bob does not serve: the peer says so.
    await page_a.call("network.channel", "other")
    assert await _code(page_a.call("network.channelSend", "other", id_b, b"x",
                                   {"timeout": 5})) == "ENOPROTOOPT"
    # Closed, the node's channel is free again: another open takes it anew.
    await page_b.call("network.channelClose", "chat/1")
    await page_b.call("network.channel", "chat/1")
    await page_a.call("network.channelSend", "chat/1", id_b, b"again", {})
    message = await _event(page_b, "network.channel.message")
    assert base64.b64decode(message["data"]) == b"again"


@pytest.mark.parametrize(("name", "code"), [
    ("shoal/blobs/1", "EPERM"), ("shoal/anything", "EPERM"), ("", "EINVAL"),
    ("/chat", "EINVAL"), ("a b", "EINVAL"), ("x" * 101, "EINVAL"), (7, "EINVAL")])
async def test_reserved_and_malformed_channel_names_are_refused(pair, name, code) -> None:  # type: ignore[no-untyped-def]
    _, _, page_a, _, id_b = pair
    assert await _code(page_a.call("network.channel", name)) == code
    assert await _code(page_a.call("network.openStream", id_b, name, {})) == code


async def test_without_the_network_permission_channels_are_refused(tmp_path: Path) -> None:
    async with AppHost(_app(tmp_path / "a", "a", network=False), data_dir=tmp_path / "d",
                       lan_discovery=False) as host, BridgeClient(host) as page:
        assert await _code(page.call("network.channel", "chat")) == "EPERM"
        assert await _code(page.call("network.openStream", "00" * 32, "chat", {})) == "EPERM"


async def test_a_stream_carries_bytes_both_ways_between_pages(pair) -> None:  # type: ignore[no-untyped-def]
    host_a, host_b, page_a, page_b, id_b = pair
    await page_b.call("network.channel", "bulk")
    await page_a.call("network.channel", "bulk")
    await page_a.call("network.channelSend", "bulk", id_b, b"hello", {})  # connected now
    opened = await page_a.call("network.openStream", id_b, "bulk", {})
    data = bytes(range(256)) * (3 * 4096 + 7)  # 3 MiB and a bit
    chunks = [data[i:i + STREAM_CHUNK] for i in range(0, len(data), STREAM_CHUNK)]

    async def send() -> None:
        for chunk in chunks:
            await page_a.call("network.streamWrite", opened["id"], chunk)
        await page_a.call("network.streamClose", opened["id"])

    sending = asyncio.get_running_loop().create_task(send())
    incoming = await _event(page_b, "network.stream")
    assert incoming["channel"] == "bulk" and incoming["peerId"] == host_a.node.peer_id
    got = hashlib.sha256()
    size = 0
    while chunk := await page_b.call("network.streamRead", incoming["id"]):
        assert len(chunk) <= STREAM_CHUNK
        got.update(chunk)
        size += len(chunk)
    await asyncio.wait_for(sending, 30)
    assert size == len(data) and got.digest() == hashlib.sha256(data).digest()
    # Back the other way on the same stream.
    await page_b.call("network.streamWrite", incoming["id"], b"thanks")
    await page_b.call("network.streamClose", incoming["id"])
    assert await page_a.call("network.streamRead", opened["id"]) == b"thanks"
    assert await page_a.call("network.streamRead", opened["id"]) == b""
    # Done both ways: the ids are gone, and another page's ids were never this page's.
    assert await _code(page_a.call("network.streamRead", opened["id"])) == "EBADF"
    assert await _code(page_a.call("network.streamWrite", 10**6, b"x")) == "EBADF"
    too_big = b"x" * (STREAM_CHUNK + 1)
    again = await page_a.call("network.openStream", id_b, "bulk", {})
    assert await _code(page_a.call("network.streamWrite", again["id"], too_big)) == "EMSGSIZE"
    assert host_a.node.endpoint.faults == [] and host_b.node.endpoint.faults == []


async def test_a_page_that_never_reads_holds_the_peer_to_the_stream_window(pair) -> None:  # type: ignore[no-untyped-def]
    """Bob's page takes the stream and never reads it: his host holds at most the
    stream's receive window, and alice's writes stop."""
    host_a, host_b, page_a, page_b, id_b = pair
    await page_b.call("network.channel", "sink")
    await page_a.call("network.channel", "sink")
    await page_a.call("network.channelSend", "sink", id_b, b"hello", {})
    opened = await page_a.call("network.openStream", id_b, "sink", {})
    written = 0

    async def flood() -> None:
        nonlocal written
        chunk = b"\xab" * STREAM_CHUNK
        while True:
            await page_a.call("network.streamWrite", opened["id"], chunk)
            written += len(chunk)

    flooding = asyncio.get_running_loop().create_task(flood())
    incoming = await _event(page_b, "network.stream")
    await asyncio.sleep(2)
    held_b = host_b.channels.held_bytes()
    held_a = host_a.channels.held_bytes()
    info = await page_b.call("network.streamInfo", incoming["id"])
    # A second write beside the one waiting for room is refused, not queued.
    assert await _code(page_a.call("network.streamWrite", opened["id"], b"more")) == "EBUSY"
    assert await page_a.call("network.streamInfo", opened["id"]) == {
        "readable": 0, "buffered": held_a - STREAM_CHUNK, "inHand": STREAM_CHUNK}
    flooding.cancel()
    window = 1 << 20  # StreamConfig.stream_window
    print(f"written {written} held by bob's host {held_b} by alice's {held_a} info {info}")
    assert 0 < held_b <= window and info["readable"] == held_b
    assert held_a <= (1 << 20) + STREAM_CHUNK  # send buffer and one chunk in hand
    assert written <= window + held_a + STREAM_CHUNK
    # Bob's page leaves: the stream goes with it, and his host holds nothing.
    await page_b.__aexit__(None, None, None)
    for _ in range(100):
        if host_b.channels.held_bytes() == 0:
            break
        await asyncio.sleep(0.05)
    assert host_b.channels.held_bytes() == 0
