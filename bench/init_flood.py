"""A flood of spoofed INITs against a real node: does a legitimate peer still get in?

    python bench/init_flood.py --rate 10000 --sources 1000 --seconds 20

Starts ``shoal introducer`` on loopback. A flooder process sends well-formed INITs (each
from a fresh ephemeral key, so none is a repeat) at ``--rate`` a second from ``--sources``
addresses 127.2.x.y, none of which ever answers. Meanwhile this process dials the node
again and again with a real ``shoal.Node`` and times each handshake. The node's memory
and CPU are read from /proc before, during and after the flood. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import socket
import statistics
import subprocess
import tempfile
import time

import shoal
from proc_stats import cpu_seconds, node_process, rss_mib
from shoal.core.handshake import initiator_state
from shoal.core.wire import encode_init
from shoal.identity import Identity

HOST = "127.0.0.1"


def flood(target: tuple[str, int], rate: int, sources: int, seconds: float,
          sent: multiprocessing.Value) -> None:  # type: ignore[valid-type]
    """Send spoofed INITs at ``rate`` a second from ``sources`` addresses."""
    sockets = []
    for index in range(sources):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((f"127.2.{index // 250}.{index % 250 + 1}", 0))
        sock.setblocking(False)
        sockets.append(sock)
    identity = Identity.generate()
    inits = [encode_init(os.urandom(8), initiator_state(identity, os.urandom(32))[1])
             for _ in range(4 * sources)]
    started = time.monotonic()
    count = 0
    while (elapsed := time.monotonic() - started) < seconds:
        due = int(elapsed * rate)
        while count < due:
            with contextlib.suppress(BlockingIOError):
                sockets[count % sources].sendto(inits[count % len(inits)], target)
            count += 1
        time.sleep(0.001)
    sent.value = count


async def handshake_times(target: tuple[str, int], seconds: float) -> list[float]:
    """Dial the node with a fresh identity over and over; each handshake's seconds."""
    times = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        async with shoal.Node(Identity.generate(), listen=f"{HOST}:0",
                              lan_discovery=False) as node:
            started = time.monotonic()
            try:
                await node.connect(target, timeout=10)
                times.append(time.monotonic() - started)
            except shoal.DeliveryError:
                times.append(float("inf"))
        await asyncio.sleep(0.2)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=int, default=10_000)
    parser.add_argument("--sources", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir, node_process(
            "introducer", workdir, HOST, stdout=subprocess.DEVNULL) as (node, target):
        time.sleep(1.5)
        quiet = asyncio.run(handshake_times(target, 3))
        rss_before = rss_mib(node.pid)
        sent = multiprocessing.Value("q", 0)
        flooder = multiprocessing.Process(
            target=flood, args=(target, args.rate, args.sources, args.seconds, sent))
        cpu_before, wall_before = cpu_seconds(node.pid), time.monotonic()
        flooder.start()
        time.sleep(1)
        rss_early = rss_mib(node.pid)
        under_flood = asyncio.run(handshake_times(target, args.seconds - 3))
        rss_late = rss_mib(node.pid)
        flooder.join()
        cpu = (cpu_seconds(node.pid) - cpu_before) / (time.monotonic() - wall_before)
        time.sleep(1)
        rss_after = rss_mib(node.pid)
    print(json.dumps({
        "flood_inits_per_s": round(sent.value / args.seconds),
        "sources": args.sources,
        "handshake_ms_quiet_median": _ms(statistics.median(quiet)),
        "handshake_ms_under_flood_median": _ms(statistics.median(under_flood)),
        "handshake_ms_under_flood_max": _ms(max(under_flood)),
        "handshakes_under_flood": len(under_flood),
        "handshakes_failed": sum(t == float("inf") for t in under_flood),
        "node_cores_during_flood": round(cpu, 2),
        "node_rss_mib": {"before": rss_before, "after_1s": rss_early, "at_end": rss_late,
                         "after": rss_after},
    }))


def _ms(seconds: float) -> float | None:
    return None if seconds == float("inf") else round(seconds * 1000, 2)


if __name__ == "__main__":
    main()
