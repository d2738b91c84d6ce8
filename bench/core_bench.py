"""Benchmark of the core over real UDP sockets on loopback; prints one JSON object.

Two nodes run in two processes (one per core):
- acknowledged 1 KiB messages per second, with up to ``--window`` messages in flight
  (``Node.send_nowait``; also with one awaited ``Node.send`` task per message);
- round trip (send until acknowledged) of one small message at a time, p50 and p99;
- datagrams per second through the receive path (1200-byte datagrams blasted at a node).

    python bench/core_bench.py [--messages 50000] [--window 512] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import socket
import statistics
import time

os.environ.setdefault("SHOAL_NO_LAN", "1")

import shoal
from shoal.identity import Identity


def _use_uvloop() -> str:
    try:
        import uvloop
    except ImportError:
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return "uvloop"


def receiver(ready: mp.Queue, stop: mp.Event, seed: bytes) -> None:
    _use_uvloop()

    async def run() -> None:
        async with shoal.Node(Identity(seed), listen="127.0.0.1:0", lan_discovery=False) as node:
            ready.put(node.address[1])

            async def drain() -> None:
                async for _ in node.messages():
                    pass

            task = asyncio.create_task(drain())
            while not stop.is_set():
                await asyncio.sleep(0.05)
            ready.put(node.stats.get("rx_datagrams", 0))
            task.cancel()

    asyncio.run(run())


async def _throughput(node: shoal.Node, peer: str, count: int, window: int) -> float:
    """Acknowledged messages per second, ``window`` in flight, via ``Node.send_nowait``."""
    payload = os.urandom(1024)
    finished = asyncio.get_running_loop().create_future()
    sent = acked = 0

    def launch() -> None:
        nonlocal sent
        sent += 1
        node.send_nowait(peer, payload).add_done_callback(on_done)

    def on_done(future: asyncio.Future) -> None:
        nonlocal acked
        if future.exception() is not None and not finished.done():
            finished.set_exception(future.exception())
            return
        acked += 1
        if sent < count:
            launch()
        elif acked == count and not finished.done():
            finished.set_result(None)

    started = time.perf_counter()
    for _ in range(min(window, count)):
        launch()
    await finished
    return count / (time.perf_counter() - started)


async def _throughput_awaiting(node: shoal.Node, peer: str, count: int, window: int) -> float:
    """The same with one awaited ``Node.send`` per message (a task each)."""
    payload = os.urandom(1024)
    semaphore = asyncio.Semaphore(window)

    async def one() -> None:
        async with semaphore:
            await node.send(peer, payload)

    started = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(count)))
    return count / (time.perf_counter() - started)


async def _round_trips(node: shoal.Node, peer: str, count: int) -> list[float]:
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        await node.send(peer, b"ping")
        samples.append(time.perf_counter() - started)
    return samples


def blaster(port: int, seconds: float) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    datagram = b"\xd4" + os.urandom(1199)
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        for _ in range(256):
            with contextlib.suppress(BlockingIOError, OSError):
                sock.sendto(datagram, ("127.0.0.1", port))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=50000)
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--round-trips", type=int, default=2000)
    parser.add_argument("--blast-seconds", type=float, default=3.0)
    parser.add_argument("--json", action="store_true", help="(output is always JSON)")
    args = parser.parse_args()
    loop_kind = _use_uvloop()
    ctx = mp.get_context("spawn")
    ready: mp.Queue = ctx.Queue()
    stop = ctx.Event()
    seed = os.urandom(32)
    proc = ctx.Process(target=receiver, args=(ready, stop, seed))
    proc.start()
    port = ready.get(timeout=30)
    peer = Identity(seed).peer_id
    result: dict[str, object] = {"loop": loop_kind, "message_bytes": 1024}

    async def run() -> None:
        async with shoal.Node(Identity.generate(), listen="127.0.0.1:0",
                              lan_discovery=False) as node:
            await node.connect(("127.0.0.1", port))
            await _throughput(node, peer, 2000, args.window)  # warm-up: grow the window
            rate = await _throughput(node, peer, args.messages, args.window)
            result["acked_messages_per_s"] = round(rate)
            result["acked_mbit_per_s"] = round(rate * 1024 * 8 / 1e6, 1)
            awaiting = await _throughput_awaiting(node, peer, args.messages // 2, args.window)
            result["acked_messages_per_s_awaiting_send"] = round(awaiting)
            samples = await _round_trips(node, peer, args.round_trips)
            samples.sort()
            result["rtt_p50_ms"] = round(statistics.median(samples) * 1000, 3)
            result["rtt_p99_ms"] = round(samples[int(len(samples) * 0.99) - 1] * 1000, 3)

    asyncio.run(run())
    before = None
    stop.set()
    before = ready.get(timeout=30)
    proc.join(timeout=10)
    # Receive path: a fresh receiver process, blasted from this one.
    ready2: mp.Queue = ctx.Queue()
    stop2 = ctx.Event()
    proc2 = ctx.Process(target=receiver, args=(ready2, stop2, os.urandom(32)))
    proc2.start()
    port2 = ready2.get(timeout=30)
    blaster(port2, args.blast_seconds)
    stop2.set()
    received = ready2.get(timeout=30)
    proc2.join(timeout=10)
    result["receive_path_datagrams_per_s"] = round(received / args.blast_seconds)
    result["receiver_datagrams_first_phase"] = before
    print(json.dumps(result))


if __name__ == "__main__":
    main()
