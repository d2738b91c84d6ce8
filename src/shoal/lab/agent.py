"""A Shoal node run inside a lab namespace and driven by JSON lines, for tests that move
streams and files over real, impaired paths.

    python -m shoal.lab.agent --identity KEY [--introducer HOST:PORT] [--listen HOST:PORT]
                              [--serve-introducer [--alternate HOST:PORT]]
                              [--relay-rate BYTES_PER_S]

It starts a node (LAN discovery off), waits for its introducers and NAT check, prints
``{"event": "ready", "peer_id": ...}`` and then reads commands on stdin, one JSON object
a line with an ``id`` and an ``op``; each runs as a task of its own and answers with one
line carrying the same ``id`` (``"error"`` set if it failed). Ops:

``sink`` (channel)
    accept streams on ``channel``: each is read to its end, hashed (SHA-256) and sampled
    (bytes read every 50 ms); answers once per stream, when it ends.
``serve`` (channel)
    take messages on ``channel`` (their sender measures delivery).
``send_stream`` (peer, channel, size, seed)
    open a stream and write ``size`` bytes of seeded pseudo-random data, then close it;
    answers with the SHA-256, the seconds, and the connection's path sampled every 50 ms.
``pings`` (peer, channel, count, interval)
    send ``count`` small messages ``interval`` seconds apart, each awaited: answers with
    each one's delivery time and the connection's smoothed RTT when it was sent.
``share`` (path) / ``fetch`` (ticket, path)
    ``node.share`` and ``node.fetch``; a fetch answers with its seconds and SHA-256.
``peers``
    the node's peers: id, path, RTT.
``connection`` (peer)
    each connection with the peer: its role, path, congestion window, bytes in flight
    and RTT; and the node's counters.

Stops on SIGTERM or at the end of stdin.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import random
import signal
import sys
import time
from pathlib import Path
from typing import Any

from shoal.aio.node import Node
from shoal.core.config import CoreConfig
from shoal.identity import Identity, peer_id_to_bytes

CHUNK = 64 * 1024
SAMPLE = 0.05


def pattern(size: int, seed: int) -> bytes:
    """``size`` seeded pseudo-random bytes (the same on every host)."""
    return random.Random(seed).randbytes(size)


class Agent:
    def __init__(self, node: Node) -> None:
        self.node = node
        self.tasks: set[asyncio.Task[None]] = set()

    def reply(self, message: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()

    def run(self, command: dict[str, Any]) -> None:
        self.run_background(self._run(command))

    async def _run(self, command: dict[str, Any]) -> None:
        op = command.get("op", "")
        handler = getattr(self, f"op_{op}", None)
        try:
            if handler is None:
                raise ValueError(f"unknown op {op!r}")
            kwargs = {k: v for k, v in command.items() if k not in ("id", "op")}
            if op == "sink":
                kwargs["command_id"] = command.get("id")
            answer = await handler(**kwargs)
            if answer is not None:
                self.reply({"id": command.get("id"), **answer})
        except Exception as exc:  # every failure goes back to the test as an answer
            self.reply({"id": command.get("id"), "error": f"{type(exc).__name__}: {exc}"})

    def path_of(self, peer_id: str) -> tuple[str | None, float | None]:
        for peer in self.node.peers():
            if peer.peer_id == peer_id:
                return peer.path, peer.rtt
        return None, None

    async def op_peers(self) -> dict[str, Any]:
        return {"peers": [{"peer_id": p.peer_id, "path": p.path, "rtt": p.rtt,
                           "introducer": p.introducer} for p in self.node.peers()]}

    async def op_connection(self, peer: str) -> dict[str, Any]:
        """The transport state of each connection with ``peer`` (role, path, window, RTT)."""
        endpoint = self.node.endpoint
        current = endpoint.connection_to(peer_id_to_bytes(peer))
        return {"connections": [{
            "current": connection is current, "role": connection.role.value,
            "path": connection.path.kind, "window": connection.cc.window,
            "ssthresh": connection.cc.ssthresh, "in_flight": connection.cc.bytes_in_flight,
            "srtt": connection.rtt.smoothed, "unacked": len(connection.sent),
            "mtu": connection.pmtud.mtu,
        } for connection in endpoint.connections_with(peer_id_to_bytes(peer))],
            "stats": {k: v for k, v in endpoint.stats.items() if v}}

    async def op_serve(self, channel: str) -> dict[str, Any]:
        inbox = self.node.channel(channel)

        async def drain() -> None:
            async for _ in inbox:
                pass

        self.run_background(drain())
        return {"serving": channel}

    async def op_sink(self, channel: str, command_id: Any = None) -> None:
        accepted = self.node.channel(channel)
        self.reply({"id": command_id, "sinking": channel})
        async for stream in accepted.streams():
            self.run_background(self._sink_one(stream, command_id))

    async def _sink_one(self, stream: Any, command_id: Any) -> None:
        digest = hashlib.sha256()
        total = 0
        samples: list[tuple[float, int]] = []
        start = time.monotonic()
        last = start
        try:
            while chunk := await stream.read(CHUNK):
                digest.update(chunk)
                total += len(chunk)
                now = time.monotonic()
                if now - last >= SAMPLE:
                    samples.append((round(now - start, 4), total))
                    last = now
        except Exception as exc:
            self.reply({"id": command_id, "peer_id": stream.peer_id, "bytes": total,
                        "error": f"{type(exc).__name__}: {exc}"})
            return
        samples.append((round(time.monotonic() - start, 4), total))
        self.reply({"id": command_id, "peer_id": stream.peer_id, "bytes": total,
                    "sha256": digest.hexdigest(), "start": start, "samples": samples})

    def run_background(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def op_send_stream(self, peer: str, channel: str, size: int,
                             seed: int = 0) -> dict[str, Any]:
        data = pattern(size, seed)
        await self.node.reach(peer, timeout=30)
        # Timed from here: the connection is up, and its path is known.
        paths: list[tuple[float, str | None]] = []
        start = time.monotonic()
        done = asyncio.Event()

        async def watch() -> None:
            while not done.is_set():
                path, _ = self.path_of(peer)
                if not paths or paths[-1][1] != path:
                    paths.append((round(time.monotonic() - start, 4), path))
                await asyncio.sleep(SAMPLE)

        watcher = asyncio.get_running_loop().create_task(watch())
        try:
            stream = await self.node.open_stream(peer, channel)
            view = memoryview(data)
            for offset in range(0, len(data), CHUNK):
                await stream.write(view[offset:offset + CHUNK])
            await stream.close()
        finally:
            done.set()
            await watcher
        seconds = time.monotonic() - start
        path, rtt = self.path_of(peer)
        paths.append((round(seconds, 4), path))
        return {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data),
                "seconds": seconds, "start": start, "paths": paths, "rtt": rtt}

    async def op_pings(self, peer: str, channel: str, count: int,
                       interval: float) -> dict[str, Any]:
        pings = []
        for n in range(count):
            _, rtt = self.path_of(peer)
            sent = time.monotonic()
            await self.node.send(peer, b"ping %d" % n, channel=channel, timeout=30)
            pings.append({"at": sent, "seconds": time.monotonic() - sent, "rtt": rtt})
            await asyncio.sleep(interval)
        return {"pings": pings}

    async def op_share(self, path: str) -> dict[str, Any]:
        return {"ticket": str(await self.node.share(path))}

    async def op_fetch(self, ticket: str, path: str) -> dict[str, Any]:
        start = time.monotonic()
        result = await self.node.fetch(ticket, path)
        seconds = time.monotonic() - start
        with Path(path).open("rb") as file:
            digest = hashlib.file_digest(file, "sha256")
        return {"seconds": seconds, "size": result.size, "sha256": digest.hexdigest(),
                "requested": result.requested, "fetched": result.fetched}


async def _main(args: argparse.Namespace) -> None:
    rates = {"relay_bytes_per_second": args.relay_rate,
             "relay_total_bytes_per_second": 4 * args.relay_rate} if args.relay_rate else {}
    config = CoreConfig(introducer=args.serve_introducer, **rates)
    node = Node(Identity.load_or_create(Path(args.identity)),
                introducers=args.introducer, listen=args.listen, lan_discovery=False,
                config=config, alternate=args.alternate)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with node:
        if args.introducer:
            await node.wait_for_introducers(timeout=20)
            await node.wait_for_nat(timeout=20)
        agent = Agent(node)
        agent.reply({"event": "ready", "peer_id": node.peer_id})
        reader = asyncio.StreamReader(limit=1 << 20)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

        async def commands() -> None:
            while line := await reader.readline():
                agent.run(json.loads(line))
            stop.set()

        reading = loop.create_task(commands())
        await stop.wait()
        reading.cancel()
        for task in list(agent.tasks):
            task.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--identity", required=True)
    parser.add_argument("--introducer", action="append", default=[])
    parser.add_argument("--listen", default="0.0.0.0:0")
    parser.add_argument("--serve-introducer", action="store_true")
    parser.add_argument("--alternate", help="a second HOST:PORT for NAT behaviour tests")
    parser.add_argument("--relay-rate", type=float, default=0.0)
    asyncio.run(_main(parser.parse_args()))


if __name__ == "__main__":
    main()
