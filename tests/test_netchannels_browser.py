"""Named channels and streams between two apps' pages in a real browser: each app's host
runs here (on a loop of its own thread, so that the test can look at what it holds), its
page in Chromium, the two nodes on loopback."""

from __future__ import annotations

import asyncio
import hashlib
import re
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from playwright.sync_api import Browser, Page

from shoal.runtime import AppHost

T = TypeVar("T")

TOML = """[app]
name = "Channels"
id = "test.shoal.channels.{name}"

[permissions]
network = true

[network]
lan = false
listen = "127.0.0.1:0"
"""

APP_JS = """import * as api from "shoal:api";
window.shoal = api;
window.pattern = (size) => new Uint8Array(size).map((_, i) => (i * 7919) % 251);
window.hex = async (bytes) => [...new Uint8Array(await crypto.subtle.digest("SHA-256", bytes))]
  .map((b) => b.toString(16).padStart(2, "0")).join("");
document.body.dataset.ready = "true";
"""

SIZE = 8 << 20
ROOT = Path(__file__).resolve().parent.parent


def _docs_example() -> str:
    """The page code of docs/runtime.md's channels example, as printed."""
    text = (ROOT / "docs" / "runtime.md").read_text()
    (block,) = [b for b in re.findall(r"```js\n(.*?)```", text, re.S)
                if "network.channel(" in b]
    return block


class _Loop:
    """An asyncio loop on a thread of its own, for the hosts."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, make: Callable[[], Awaitable[T]], timeout: float = 30) -> T:
        async def wrapped() -> T:
            return await make()

        return asyncio.run_coroutine_threadsafe(wrapped(), self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def apps(tmp_path: Path, browser: Browser
         ) -> Iterator[tuple[list[AppHost], list[Page], _Loop]]:
    loop = _Loop()
    hosts: list[AppHost] = []
    pages: list[Page] = []
    try:
        for name in ("alice", "bob"):
            folder = tmp_path / name
            folder.mkdir()
            (folder / "shoal.toml").write_text(TOML.format(name=name))
            (folder / "index.html").write_text(
                '<!doctype html><html><head><script type="module" src="app.js"></script>'
                "</head><body></body></html>")
            (folder / "app.js").write_text(_docs_example() + APP_JS)
            host = AppHost(folder, data_dir=tmp_path / f"{name}-data", lan_discovery=False)
            hosts.append(loop.run(host.start))
        alice, bob = hosts
        assert alice.node is not None and bob.node is not None
        alice.node.add_peer_address(bob.node.peer_id, bob.node.address)
        for host in hosts:
            page = browser.new_page()
            pages.append(page)
            page.goto(host.url)
            page.wait_for_selector("body[data-ready=true]", state="attached", timeout=20000)
        yield hosts, pages, loop
    finally:
        for page in pages:
            page.close()
        for host in hosts:
            loop.run(host.close)
        loop.close()


def _held(host: AppHost) -> Callable[[], Awaitable[int]]:
    async def held() -> int:
        assert host.channels is not None
        return host.channels.held_bytes()

    return held


def _ids(hosts: list[AppHost]) -> tuple[str, str]:
    alice, bob = hosts
    assert alice.node is not None and bob.node is not None
    return alice.node.peer_id, bob.node.peer_id


def test_two_pages_message_each_other_on_a_named_channel(apps: Any) -> None:
    hosts, (alice, bob), _ = apps
    alice_id, bob_id = _ids(hosts)
    bob.evaluate("""async () => {
        const chat = await window.shoal.network.channel("chat/1");
        window.heard = [];
        chat.on("message", (m) => window.heard.push({ from: m.from, text: m.text(),
                                                      size: m.data.length }));
    }""")
    sent = alice.evaluate("""async (bob) => {
        const chat = await window.shoal.network.channel("chat/1");
        const first = await chat.send(bob, "hello bob");
        const second = await chat.send(bob, new Uint8Array([1, 2, 3]));
        return [first.path, second.path];
    }""", bob_id)
    assert sent == ["direct", "direct"]
    bob.wait_for_function("window.heard.length === 2", timeout=10000)
    heard = bob.evaluate("window.heard")
    assert heard[0] == {"from": alice_id, "text": "hello bob", "size": 9}
    assert heard[1]["from"] == alice_id and heard[1]["size"] == 3
    # The default channel heard none of it.
    assert bob.evaluate("""async () => {
        let count = 0;
        window.shoal.network.on("message", () => count++);
        await new Promise((r) => setTimeout(r, 200));
        return count;
    }""") == 0


def test_a_stream_carries_8_mib_page_to_page(apps: Any) -> None:
    hosts, (alice, bob), _ = apps
    _, bob_id = _ids(hosts)
    bob.evaluate("""async () => {
        const bulk = await window.shoal.network.channel("bulk");
        window.received = new Promise((resolve) => bulk.on("stream", async (stream) => {
            const parts = [];
            let size = 0;
            for await (const chunk of stream.readable) { parts.push(chunk); size += chunk.length; }
            const all = new Uint8Array(size);
            let at = 0;
            for (const part of parts) { all.set(part, at); at += part.length; }
            const writer = stream.writable.getWriter();
            await writer.write("got it");
            await writer.close();
            resolve({ size, hash: await window.hex(all), peer: stream.peerId });
        }));
    }""")
    sent = alice.evaluate("""async ([bob, size]) => {
        const network = window.shoal.network;
        const bulk = await network.channel("bulk");
        await bulk.send(bob, "hi");  // a connection first
        const data = window.pattern(size);
        const started = performance.now();
        const stream = await network.openStream(bob, "bulk");
        const writer = stream.writable.getWriter();
        for (let at = 0; at < size; at += 1 << 20) {
            await writer.write(data.subarray(at, at + (1 << 20)));
        }
        await writer.close();
        const ms = performance.now() - started;
        const reply = await new Response(stream.readable).text();
        return { hash: await window.hex(data), ms, reply };
    }""", [bob_id, SIZE])
    received = bob.evaluate("window.received")
    expected = hashlib.sha256(bytes((i * 7919) % 251 for i in range(SIZE))).hexdigest()
    print(f"8 MiB page to page in {sent['ms']:.0f} ms")
    assert received["size"] == SIZE and received["hash"] == expected == sent["hash"]
    assert received["peer"] == _ids(hosts)[0] and sent["reply"] == "got it"


def test_a_reserved_channel_name_is_refused_with_a_clear_error(apps: Any) -> None:
    hosts, (alice, _), _ = apps
    _, bob_id = _ids(hosts)
    refused = alice.evaluate("""async (bob) => {
        const out = [];
        for (const attempt of [() => window.shoal.network.channel("shoal/blobs/1"),
                               () => window.shoal.network.openStream(bob, "shoal/pair/1"),
                               () => window.shoal.network.channel("no spaces")]) {
            try { await attempt(); out.push(null); }
            catch (e) { out.push({ name: e.name, code: e.code, message: e.message }); }
        }
        return out;
    }""", bob_id)
    assert [r["code"] for r in refused] == ["EPERM", "EPERM", "EINVAL"]
    assert all(r["name"] == "ShoalError" for r in refused)
    assert "reserved for Shoal's own protocols" in refused[0]["message"]
    assert "'shoal/blobs/1'" in refused[0]["message"]


def test_a_page_that_never_reads_a_stream_does_not_grow_its_host(apps: Any) -> None:
    """Bob's page takes alice's stream and never reads it while alice's page writes as
    fast as it can: bob's host holds at most the stream's window, alice's writes wait."""
    hosts, (alice, bob), loop = apps
    _, bob_id = _ids(hosts)
    bob.evaluate("""async () => {
        const sink = await window.shoal.network.channel("sink");
        sink.on("stream", (stream) => { window.held = stream; });  // never read
    }""")
    alice.evaluate("""async (bob) => {
        const network = window.shoal.network;
        await (await network.channel("sink")).send(bob, "hi");
        const stream = await network.openStream(bob, "sink");
        const writer = stream.writable.getWriter();
        const chunk = new Uint8Array(1 << 20);
        window.written = 0;
        (async () => {
            for (let i = 0; i < 64; i++) {
                await writer.write(chunk);
                window.written += chunk.length;
            }
        })().catch(() => {});
    }""", bob_id)
    bob.wait_for_function("window.held !== undefined", timeout=10000)
    time.sleep(3)
    samples = []
    for _ in range(3):
        held = [loop.run(_held(h)) for h in hosts]  # on the hosts' own loop
        samples.append((alice.evaluate("window.written"), *held))
        time.sleep(0.5)
    info = bob.evaluate("window.held.info()")
    print(f"written by alice's page, held by alice's host, held by bob's host: {samples}; "
          f"bob's stream {info}")
    window, send_buffer, chunk = 1 << 20, 1 << 20, 256 << 10
    for written, held_alice, held_bob in samples:
        assert held_bob <= window and held_alice <= send_buffer + chunk
        assert written <= window + send_buffer + (1 << 20)
    assert samples[-1][0] == samples[0][0]  # the writer is stuck, not slow
    assert info["readable"] == samples[-1][2] > window // 2


def test_the_docs_example_sends_a_photo_and_hears_the_reply(apps: Any) -> None:
    """Both pages run the example of docs/runtime.md as printed (see the fixture)."""
    hosts, (alice, _), _ = apps
    _, bob_id = _ids(hosts)
    reply = alice.evaluate("""async (bob) => {
        const { sendPhoto } = await import("/app.js");
        return sendPhoto(bob, window.pattern(300000));
    }""", bob_id)
    assert reply == "got 300000 bytes"
