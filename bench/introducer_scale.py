"""How many registered peers one introducer holds: CPU and memory at each size.

    python bench/introducer_scale.py --sizes 10000,30000,100000

Starts a real ``shoal introducer`` process on loopback, then a load generator in this
process: sans-IO ``Endpoint`` peers, really handshaked and registered, spread over a few
hundred sockets on 127.1.x.y (so per-source limits see many hosts). Every peer keeps its
connection alive as a real node does (a PING each ``keepalive_interval``). At each size
the introducer's resident memory and its CPU over a window of steady keepalives are
read from /proc, and a fresh pair of peers measures how long an introduction takes.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import json
import os
import secrets
import selectors
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from proc_stats import cpu_seconds, rss_kib
from shoal.core.config import CoreConfig
from shoal.core.endpoint import Endpoint
from shoal.core.wire import PacketKind
from shoal.identity import Identity

HOST = "127.0.0.1"


class LoadGenerator:
    """Many sans-IO peers over a few sockets; datagrams are routed to the peer that
    owns the session id they name."""

    def __init__(self, introducer: tuple[str, int], sockets: int) -> None:
        self.introducer = introducer
        self.selector = selectors.DefaultSelector()
        self.sockets: list[socket.socket] = []
        for index in range(sockets):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            sock.bind((f"127.1.{index // 250}.{index % 250 + 1}", 0))
            sock.setblocking(False)
            self.selector.register(sock, selectors.EVENT_READ)
            self.sockets.append(sock)
        self.peers: list[tuple[Endpoint, socket.socket]] = []
        self.by_sid: dict[bytes, int] = {}
        self.timers: list[tuple[float, int]] = []
        self.config = CoreConfig(nat_check=False)

    def add_peers(self, count: int) -> None:
        """Start ``count`` more peers dialing the introducer."""
        now = time.monotonic()
        for _ in range(count):
            index = len(self.peers)
            endpoint = Endpoint(Identity(secrets.token_bytes(32)),
                                random_bytes=secrets.token_bytes, config=self.config)
            sock = self.sockets[index % len(self.sockets)]
            endpoint.set_local_addresses([sock.getsockname()])
            self.peers.append((endpoint, sock))
            endpoint.add_introducer(self.introducer, now)
            self._flush(index, now)

    def _flush(self, index: int, now: float) -> None:
        endpoint, sock = self.peers[index]
        for data, address, _ in endpoint.datagrams_to_send(now):
            if data[0] == PacketKind.INIT:  # replies name the sid it carries
                self.by_sid[data[2:10]] = index
            with contextlib.suppress(BlockingIOError):
                sock.sendto(data, address)
        while endpoint.next_event() is not None:
            pass
        deadline = endpoint.get_timer()
        if deadline is not None:
            heapq.heappush(self.timers, (deadline, index))

    def registered(self) -> int:
        """Peers whose connection to the introducer is up now."""
        return sum(1 for endpoint, _ in self.peers
                   if any(endpoint.connection_to(p) for p in endpoint.rendezvous.introducer_peers))

    def run(self, seconds: float) -> None:
        """Serve every peer's datagrams and timers for ``seconds``."""
        end = time.monotonic() + seconds
        while (now := time.monotonic()) < end:
            wait = min(end, self.timers[0][0] if self.timers else end) - now
            for key, _ in self.selector.select(max(0.0, wait)):
                sock: socket.socket = key.fileobj  # type: ignore[assignment]
                for _ in range(256):
                    try:
                        data, source = sock.recvfrom(2048)
                    except BlockingIOError:
                        break
                    sid = data[2:10] if data[0] == PacketKind.RESP else data[1:9]
                    index = self.by_sid.get(sid)
                    if index is None:
                        continue
                    now = time.monotonic()
                    self.peers[index][0].receive_datagram(data, source, now)
                    self._flush(index, now)
            now = time.monotonic()
            while self.timers and self.timers[0][0] <= now:
                deadline, index = heapq.heappop(self.timers)
                endpoint = self.peers[index][0]
                if endpoint.get_timer() == deadline:
                    endpoint.handle_timer(now)
                    self._flush(index, now)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,30000,100000")
    parser.add_argument("--sockets", type=int, default=500)
    parser.add_argument("--window", type=float, default=30.0,
                        help="seconds of steady keepalives over which CPU is measured")
    parser.add_argument("--join-rate", type=int, default=500, help="new peers a second")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory() as workdir:
        port = _free_port()
        process = subprocess.Popen(
            [sys.executable, "-m", "shoal.cli.main", "introducer", "--listen",
             f"{HOST}:{port}", "--no-lan", "--json", "--identity", f"{workdir}/i.key"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        if os.environ.get("INTRODUCER_PID_FILE"):
            Path(os.environ["INTRODUCER_PID_FILE"]).write_text(str(process.pid))
        try:
            time.sleep(1.5)
            baseline = rss_kib(process.pid)
            generator = LoadGenerator((HOST, port), args.sockets)
            rows = []
            for size in sizes:
                started = time.monotonic()
                while len(generator.peers) < size:
                    generator.add_peers(min(args.join_rate // 10, size - len(generator.peers)))
                    generator.run(0.1)
                while generator.registered() < size and time.monotonic() - started < 600:
                    generator.run(1.0)
                joined = time.monotonic() - started
                generator.run(args.window / 2)  # settle into the keepalive rhythm
                cpu_before, wall_before = cpu_seconds(process.pid), time.monotonic()
                generator.run(args.window)
                cpu = (cpu_seconds(process.pid) - cpu_before) / (
                    time.monotonic() - wall_before)
                memory = rss_kib(process.pid)
                rows.append({
                    "peers": size,
                    "registered": generator.registered(),
                    "join_seconds": round(joined, 1),
                    "introducer_cores": round(cpu, 3),
                    "introducer_rss_mib": round(memory / 1024, 1),
                    "kib_per_peer": round((memory - baseline) / size, 2),
                    "introduction_ms": _introduction_ms((HOST, port)),
                })
                print(json.dumps(rows[-1]), file=sys.stderr)
        finally:
            process.terminate()
            process.wait(timeout=10)
    print(json.dumps({"keepalive_s": CoreConfig().keepalive_interval,
                      "baseline_rss_mib": round(baseline / 1024, 1), "rows": rows}))


def _introduction_ms(introducer: tuple[str, int]) -> float:
    """Median time from an INTRO_REQUEST leaving a fresh peer to its INTRO arriving, for
    two peers in a process of their own (the load generator is busy)."""
    probe = subprocess.run(
        [sys.executable, __file__, "probe", introducer[0], str(introducer[1])],
        capture_output=True, text=True, timeout=120, check=True)
    return json.loads(probe.stdout)["introduction_ms"]


def probe_main(host: str, port: int) -> None:
    generator = LoadGenerator((host, port), 2)
    generator.add_peers(2)
    while generator.registered() < 2:
        generator.run(0.05)
    first, second = generator.peers[0][0], generator.peers[1][0]
    target = second.identity.public_key
    times = []
    for _ in range(7):
        state = first.rendezvous.peers.get(target)
        before = state.token if state is not None else None
        started = time.monotonic()
        first.rendezvous.reach(target, started, fresh=True)
        generator._flush(0, started)
        while time.monotonic() - started < 5:
            generator.run(0.0002)
            state = first.rendezvous.peers.get(target)
            if state is not None and state.token not in (None, before):
                times.append((time.monotonic() - started) * 1000)
                break
        generator.run(0.2)  # within the introducer's rate limit per requester
    print(json.dumps({"introduction_ms": round(statistics.median(times), 2) if times
                      else None}))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


if __name__ == "__main__":
    if sys.argv[1:2] == ["probe"]:
        probe_main(sys.argv[2], int(sys.argv[3]))
    else:
        main()
