"""Floods against a real node, one kind at a time: what each costs the node, and whether
a legitimate peer still gets through while it lasts.

    python bench/abuse_floods.py reassembly relay stun --seconds 20

Starts ``shoal listen`` on 127.0.0.1 for each flood, then a flooder process:

- ``reassembly``: 48 peers (three /24s of 127.6.0.0/16) start messages they never finish,
  a third with 1,000-byte parts of 1 MiB messages, a third with one-byte parts, a third
  with empty parts, reconnecting whenever the node closes them.
- ``relay``: 64 peers (127.7.x.y) each push 1,100-byte RELAY_SEND packets to 16 others,
  as fast as their connections go.
- ``stun``: 20-byte STUN Binding requests (no padding) from 1,000 addresses (127.8.x.y)
  at ``--stun-rate`` a second.

After three seconds of flood a legitimate peer acts and is timed: a ``shoal.Node`` on
127.0.0.1 sends a 1 MiB and a 100-byte message (reassembly, stun); two sans-IO peers
meet through the node's relay and deliver a message over it (relay). The node's resident
memory is read before, at its peak during, and after the flood, and again once every
unfinished message has timed out. Prints one JSON object per flood, one per line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import socket
import threading
import time

import shoal
from fleet import Fleet, raise_file_limit
from proc_stats import cpu_seconds, rss_mib, running_node
from shoal.core import events as ev
from shoal.core.stun import encode_binding_request
from shoal.core.wire import MessageFragment, RelayPath, RelaySend
from shoal.identity import Identity, peer_id_to_bytes

HOST = "127.0.0.1"
LEGIT_AFTER = 3.0
QUEUE_DEPTH = 32
"""Frames a flooding peer keeps queued on its connection (its congestion window paces it)."""


# ----------------------------------------------------------------------- the floods


def reassembly_flood(target: tuple[str, int], seconds: float, report: dict) -> None:
    """Peers that begin messages and never finish them, in three shapes."""
    fleet = Fleet()
    attackers = [fleet.add(f"127.6.{i % 3}.{i // 3 + 1}") for i in range(48)]
    junk = os.urandom(1000)
    next_id = [0] * len(attackers)
    redial_at = [0.0] * len(attackers)
    closed = parts = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        now = time.monotonic()
        for index, endpoint in enumerate(attackers):
            connection = next(iter(endpoint.connections.values()), None)
            if connection is None:
                if now >= redial_at[index]:  # closed by the node (or not yet dialed): again
                    closed += redial_at[index] > 0
                    redial_at[index] = now + 1.0
                    next_id[index] = 0
                    endpoint.connect(target, now)
                    fleet.flush(endpoint)
                continue
            if not connection.confirmed or connection.queued() >= QUEUE_DEPTH:
                continue
            for _ in range(QUEUE_DEPTH):
                number = next_id[index]
                next_id[index] += 1
                shape = index % 3
                if shape == 0:  # the first 1,000 bytes of each of many 1 MiB messages
                    fragment = MessageFragment(0, number, 1 << 20, 0, junk)
                elif shape == 1:  # one-byte parts of one message, never the last
                    fragment = MessageFragment(0, 0, 1 << 20, number, b"x")
                else:  # empty parts of one message
                    fragment = MessageFragment(0, 0, 1 << 20, number, b"")
                connection.queue_frame(fragment)
            parts += QUEUE_DEPTH
            endpoint.mark(connection)
            fleet.flush(endpoint)
        fleet.pump(0.005)
    report.update(parts_sent=parts, connections_closed_by_node=closed,
                  flood_bytes_sent=fleet.bytes_out)


def relay_flood(target: tuple[str, int], seconds: float, report: dict) -> None:
    """Peers that push relayed packets to 16 others each, as fast as they can."""
    fleet = Fleet()
    attackers = [fleet.add(f"127.7.{i % 4}.{i // 4 + 1}") for i in range(64)]
    for endpoint in attackers:
        endpoint.connect(target, time.monotonic())
        fleet.flush(endpoint)
    fleet.pump_until(lambda: fleet.confirmed() == len(attackers), 15)
    ids = [peer_id_to_bytes(endpoint.peer_id) for endpoint in attackers]
    packets = 0
    junk = os.urandom(1100)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        fleet.pump(0.002)
        for index, endpoint in enumerate(attackers):
            connection = next(iter(endpoint.connections.values()), None)
            if connection is None or connection.queued() >= QUEUE_DEPTH:
                continue
            for step in range(16):
                connection.queue_frame(RelaySend(ids[(index + 1 + step) % len(ids)], junk),
                                       reliable=False)
            packets += 16
            endpoint.mark(connection)
            fleet.flush(endpoint)
    report.update(relay_packets_sent=packets, flood_bytes_sent=fleet.bytes_out,
                  flood_bytes_received=fleet.bytes_in)


def stun_flood(target: tuple[str, int], seconds: float, report: dict, rate: int) -> None:
    """Plain 20-byte Binding requests from 1,000 addresses."""
    sockets = []
    for index in range(1000):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((f"127.8.{index // 250}.{index % 250 + 1}", 0))
        sock.setblocking(False)
        sockets.append(sock)
    requests = [encode_binding_request(os.urandom(12)) for _ in range(4096)]
    sent = received = count = 0
    started = time.monotonic()
    while (elapsed := time.monotonic() - started) < seconds:
        while count < int(elapsed * rate):
            request = requests[count % len(requests)]
            with contextlib.suppress(BlockingIOError):
                sockets[count % len(sockets)].sendto(request, target)
                sent += len(request)
            count += 1
        for sock in sockets[(count // 50) % 20 :: 20]:
            with contextlib.suppress(BlockingIOError):
                while True:
                    received += len(sock.recv(2048))
        time.sleep(0.001)
    for sock in sockets:
        with contextlib.suppress(BlockingIOError):
            while True:
                received += len(sock.recv(2048))
    report.update(requests_sent=count, flood_bytes_sent=sent, flood_bytes_answered=received,
                  answered_per_byte=round(received / max(sent, 1), 4))


def _run_flood(kind: str, target: tuple[str, int], seconds: float, rate: int,
               results: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    raise_file_limit()
    report: dict = {}
    if kind == "reassembly":
        reassembly_flood(target, seconds, report)
    elif kind == "relay":
        relay_flood(target, seconds, report)
    else:
        stun_flood(target, seconds, report, rate)
    results.put(report)


# ------------------------------------------------------------------ the legitimate peer


async def deliver_big_and_small(target: tuple[str, int], peer_id: str) -> dict:
    """A fresh node connects and sends a 1 MiB message, then a 100-byte one."""
    out: dict = {}
    node = shoal.Node(Identity.generate(), listen=f"{HOST}:0", lan_discovery=False)
    async with node:
        started = time.monotonic()
        try:
            await node.connect(target, timeout=10)
            out["connect_ms"] = _ms(started)
            for name, size in (("one_mib_ms", 1 << 20), ("small_ms", 100)):
                started = time.monotonic()
                await node.send(peer_id, b"x" * size, timeout=15)
                out[name] = _ms(started)
            out["delivered"] = True
        except shoal.ShoalError as exc:
            out.update(delivered=False, error=exc.code)
    return out


def deliver_through_relay(target: tuple[str, int]) -> dict:
    """Two sans-IO peers connect to the node, then one dials the other through its relay
    and sends a message there."""
    fleet = Fleet()
    fleet.keep = (ev.MessageDelivered, ev.MessageFailed)
    sender, receiver = fleet.add(HOST), fleet.add(HOST)
    for endpoint in (sender, receiver):
        endpoint.connect(target, time.monotonic())
        fleet.flush(endpoint)
    started = time.monotonic()
    if not fleet.pump_until(lambda: fleet.confirmed() == 2, 10):
        return {"delivered": False, "error": "no connection to the relay"}
    (link,) = sender.connections.values()
    far = peer_id_to_bytes(receiver.peer_id)
    sender.dial(RelayPath(link.peer, far), time.monotonic(), expected=far)
    handle = sender.send_message(receiver.peer_id, b"through the relay", time.monotonic())
    fleet.flush(sender)
    fleet.pump_until(lambda: bool(fleet.received), 15)
    kind = type(fleet.received[0][1]).__name__ if fleet.received else "nothing"
    delivered = kind == "MessageDelivered" and fleet.received[0][1].handle == handle
    path = sender.connection_to(far)
    return {"delivered": delivered, "outcome": kind, "ms": _ms(started),
            "path": path.path_kind if path else None}


def _ms(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 1)


# -------------------------------------------------------------------------- driver


def _sample_peak(pid: int, flooder: multiprocessing.Process, peak: list[float]) -> None:
    """Keep the highest resident memory of ``pid`` in ``peak[0]`` while the flood lasts."""
    while flooder.is_alive() or flooder.exitcode is None:
        peak[0] = max(peak[0], rss_mib(pid))
        time.sleep(0.25)


def attack(kind: str, seconds: float, rate: int) -> dict:
    with running_node("listen", HOST) as (node, target, peer_id):
        rss_before = rss_mib(node.pid)
        results: multiprocessing.Queue = multiprocessing.Queue()
        flooder = multiprocessing.Process(target=_run_flood,
                                          args=(kind, target, seconds, rate, results))
        cpu_before, wall_before = cpu_seconds(node.pid), time.monotonic()
        peak = [rss_before]
        flooder.start()
        sampler = threading.Thread(target=_sample_peak, args=(node.pid, flooder, peak))
        sampler.start()
        time.sleep(LEGIT_AFTER)
        if kind == "relay":
            legit = deliver_through_relay(target)
        else:
            legit = asyncio.run(deliver_big_and_small(target, peer_id))
        flooder.join(seconds + 30)
        sampler.join()
        cores = (cpu_seconds(node.pid) - cpu_before) / (time.monotonic() - wall_before)
        report = results.get(timeout=30) if not results.empty() else {}
        time.sleep(2)
        after = rss_mib(node.pid)
        time.sleep(32)  # past the reassembly timeout: nothing unfinished is left
        settled = rss_mib(node.pid)
        alive = node.poll() is None
    return {"flood": kind, "seconds": seconds, **report, "node_alive": alive,
            "node_cores_during_flood": round(cores, 2), "legitimate_peer": legit,
            "node_rss_mib": {"before": rss_before, "peak": peak[0], "after": after,
                             "after_timeouts": settled}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("floods", nargs="*", choices=["reassembly", "relay", "stun"],
                        default=["reassembly", "relay", "stun"])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--stun-rate", type=int, default=20_000)
    args = parser.parse_args()
    for kind in args.floods:
        print(json.dumps(attack(kind, args.seconds, args.stun_rate)), flush=True)


if __name__ == "__main__":
    main()
