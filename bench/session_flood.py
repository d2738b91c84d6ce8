"""Throw-away identities fill a real node's session table: does a peer from elsewhere
still get in, and what does the flood cost the node?

    python bench/session_flood.py --sessions 4200 --networks 17

Starts ``shoal listen`` (a node holding at most 4,096 sessions) on 127.0.0.1. A flooder
process completes real handshakes from ``--sessions`` fresh identities, each on its own
address in ``--networks`` /24s of 127.3.0.0/16, and keeps them alive. Then a legitimate
``shoal.Node`` on 127.0.0.1 (another /24) connects and sends a message, and a flood
identity from one of the flood's own networks tries one more session. The node's memory
and CPU are read from /proc throughout. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import subprocess
import tempfile
import time

import shoal
from fleet import Fleet, raise_file_limit
from proc_stats import cpu_seconds, node_process, rss_mib
from shoal.identity import Identity

HOST = "127.0.0.1"


def _address(index: int, networks: int) -> str:
    return f"127.3.{index % networks}.{index // networks % 250 + 1}"


def flood(target: tuple[str, int], sessions: int, networks: int, hold: float,
          established: multiprocessing.Value, done: multiprocessing.Event) -> None:  # type: ignore[valid-type]
    """Open ``sessions`` real sessions to ``target`` and keep them alive until ``done``."""
    raise_file_limit()
    fleet = Fleet()
    for index in range(sessions):
        endpoint = fleet.add(_address(index, networks))
        endpoint.connect(target, time.monotonic())
        fleet.flush(endpoint)
        if index % 50 == 49:
            fleet.pump(0.005)
            established.value = fleet.confirmed()  # type: ignore[attr-defined]
    end = time.monotonic() + hold
    while time.monotonic() < end and not done.is_set():
        fleet.pump(0.5)
        established.value = fleet.confirmed()  # type: ignore[attr-defined]


async def _try(node: shoal.Node, target: tuple[str, int], peer_id: str) -> dict:
    started = time.monotonic()
    try:
        await node.connect(target, timeout=10)
        delivery = await node.send(peer_id, b"hello", timeout=10)
        return {"delivered": True, "path": delivery.path,
                "ms": round((time.monotonic() - started) * 1000, 1)}
    except shoal.ShoalError as exc:
        return {"delivered": False, "error": exc.code,
                "ms": round((time.monotonic() - started) * 1000, 1)}


async def newcomers(target: tuple[str, int], peer_id: str, flood_address: str) -> list[dict]:
    """A peer from another network connects and sends a message; then, while it stays,
    one more identity from a flood network tries the same."""
    def node(source: str) -> shoal.Node:
        return shoal.Node(Identity.generate(), listen=f"{source}:0", lan_discovery=False)

    async with node(HOST) as elsewhere, node(flood_address) as flooding:
        first = await _try(elsewhere, target, peer_id)
        second = await _try(flooding, target, peer_id)
    return [first, second]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=4200)
    parser.add_argument("--networks", type=int, default=17)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir, node_process(
            "listen", workdir, HOST, stdout=subprocess.PIPE, text=True) as (node, target):
        assert node.stdout is not None
        peer_id = json.loads(node.stdout.readline())["peer_id"]
        rss_before = rss_mib(node.pid)
        established = multiprocessing.Value("q", 0)
        done = multiprocessing.Event()
        flooder = multiprocessing.Process(
            target=flood, args=(target, args.sessions, args.networks, 300.0, established, done))
        cpu_before, wall_before = cpu_seconds(node.pid), time.monotonic()
        flooder.start()
        deadline = time.monotonic() + 240
        last, still = -1, 0
        while time.monotonic() < deadline and still < 8:
            time.sleep(1)
            still = still + 1 if established.value == last else 0
            last = established.value
        fill_seconds = round(time.monotonic() - wall_before, 1)
        cpu = (cpu_seconds(node.pid) - cpu_before) / (time.monotonic() - wall_before)
        rss_full = rss_mib(node.pid)
        from_elsewhere, from_the_flood = asyncio.run(
            newcomers(target, peer_id, _address(0, args.networks)))
        flood_sessions = established.value
        done.set()
        flooder.join(timeout=30)
        if flooder.is_alive():
            flooder.kill()
        time.sleep(2)
        rss_after = rss_mib(node.pid)
    print(json.dumps({
        "flood_sessions_attempted": args.sessions,
        "flood_networks": args.networks,
        "flood_sessions_held": flood_sessions,
        "seconds_to_fill": fill_seconds,
        "node_cores_while_filling": round(cpu, 2),
        "peer_from_another_network": from_elsewhere,
        "one_more_from_a_flood_network": from_the_flood,
        "node_rss_mib": {"before": rss_before, "full": rss_full, "after": rss_after},
    }))


if __name__ == "__main__":
    main()
