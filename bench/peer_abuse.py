"""Attacks by peers that completed a real handshake, against a real node, one at a time:
whether an honest peer is still served while each lasts, and what the node's memory does.

    python bench/peer_abuse.py --json
    python bench/peer_abuse.py packet_numbers unread --seconds 10 --json

Each attack runs against a fresh ``shoal listen`` (``unread``: ``shoal introducer``) on
127.0.0.1, from a process of sans-IO peers (127.9.x.y) that handshake for real and then
(``none`` is the control run, with no attacker):

- ``packet_numbers``: send well-encrypted PINGs numbered 2^31, 2^60, 2^62 and 2^63, over
  and over, from 8 connections.
- ``channels``: bind channel numbers without end (the node closes them; they reconnect).
- ``credit``: begin 1 MiB messages, one 1,000-byte part each, without waiting for any
  credit (closed; they reconnect).
- ``unread``: send 1,000-byte messages, through the public API, on the default channel of
  an introducer, which never reads it.

Meanwhile an honest peer in a process of its own sends the node a 100-byte message every
50 ms (``unread``: connects a fresh identity every 250 ms, an introducer serving no
channel) and times each. The node's resident memory is read before, at its peak during,
and 2 s after the attack. Prints one JSON object per attack (``--json``) or a table.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import time

from fleet import Fleet, raise_file_limit
from proc_stats import rss_mib, running_node
from shoal.core import events as ev
from shoal.core.endpoint import Endpoint
from shoal.core.wire import Channel, MessageFragment, Ping

HOST = "127.0.0.1"
ATTACKERS = 8
HONEST_EVERY = 0.05
NUMBERS = (2**31, 2**60, 2**62, 2**63)
ATTACKS = ("none", "packet_numbers", "channels", "credit", "unread")


# ----------------------------------------------------------------------- the attacks


def _attack(kind: str, target: tuple[str, int], seconds: float, results) -> None:  # type: ignore[no-untyped-def]
    raise_file_limit()
    fleet = Fleet()
    attackers = [fleet.add(f"127.9.0.{i + 1}") for i in range(ATTACKERS)]
    redial_at = [0.0] * ATTACKERS
    counters = {"packets": 0, "reconnects": 0}
    step = {"packet_numbers": _numbers, "channels": _channels, "credit": _credit,
            "unread": _unread}.get(kind)
    end = time.monotonic() + seconds
    while step is None and time.monotonic() < end:
        time.sleep(0.1)
    while step is not None and time.monotonic() < end:
        now = time.monotonic()
        for index, endpoint in enumerate(attackers):
            connection = next(iter(endpoint.connections.values()), None)
            if connection is None or connection.closed:
                if now >= redial_at[index]:  # closed by the node, or not yet dialed
                    counters["reconnects"] += redial_at[index] > 0
                    redial_at[index] = now + 0.5
                    endpoint.connect(target, now)
                    fleet.flush(endpoint)
                continue
            if connection.confirmed and connection.queued() < 64:
                counters["packets"] += step(endpoint, connection, now)
                endpoint.mark(connection)
                fleet.flush(endpoint)
        fleet.pump(0.005)
    results.put(counters)


def _numbers(endpoint: Endpoint, connection, now: float) -> int:  # type: ignore[no-untyped-def]
    for number in NUMBERS:
        connection.next_pn = number
        connection.queue_frame(Ping())
        for datagram, destination, socket in connection.datagrams(now):
            endpoint.send_datagram(datagram, destination, socket)
    return len(NUMBERS)


_NEXT: dict[bytes, int] = {}
"""Per connection (by session id): the next channel number or message id to send."""


def _channels(endpoint: Endpoint, connection, now: float) -> int:  # type: ignore[no-untyped-def]
    first = _NEXT.get(connection.local_sid, 1)
    for number in range(first, first + 32):
        connection.queue_frame(Channel(number, "x"))
    _NEXT[connection.local_sid] = first + 32
    return 32


def _credit(endpoint: Endpoint, connection, now: float) -> int:  # type: ignore[no-untyped-def]
    first = _NEXT.get(connection.local_sid, 0)
    for message_id in range(first, first + 32):
        connection.queue_frame(MessageFragment(0, message_id, 1 << 20, 0, bytes(1000)))
    _NEXT[connection.local_sid] = first + 32
    return 32


def _unread(endpoint: Endpoint, connection, now: float) -> int:  # type: ignore[no-untyped-def]
    flow = connection.state.get("messages")
    if flow is not None and flow.has_data():
        return 0
    for _ in range(32):
        endpoint.send_message(connection.peer_id, bytes(1000), now)
    return 32


# ------------------------------------------------------------------ the honest peer


def _honest(target: tuple[str, int], peer_id: str | None, seconds: float, results) -> None:  # type: ignore[no-untyped-def]
    """Messages every 50 ms to ``peer_id`` over one connection, or (without a peer id) a
    fresh connection every 250 ms: how many got through, and how fast."""
    fleet = Fleet()
    fleet.keep = (ev.MessageDelivered, ev.MessageFailed, ev.PeerConnected)
    took: list[float] = []
    sent = failed = 0
    end = time.monotonic() + seconds
    if peer_id is None:
        while time.monotonic() < end:
            endpoint = fleet.add(HOST)
            started = time.monotonic()
            endpoint.connect(target, started)
            fleet.flush(endpoint)
            sent += 1
            if fleet.pump_until(lambda e=endpoint: any(  # type: ignore[misc]
                    c.confirmed for c in e.connections.values()), 5):
                took.append(time.monotonic() - started)
            else:
                failed += 1
            fleet.pump(max(0.0, 0.25 - (time.monotonic() - started)))
    else:
        endpoint = fleet.add(HOST)
        endpoint.connect(target, time.monotonic())
        fleet.flush(endpoint)
        fleet.pump_until(lambda: fleet.confirmed() == 1, 5)
        started_at: dict[int, float] = {}
        next_send = time.monotonic()
        while time.monotonic() < end + 5 and (time.monotonic() < end or started_at):
            now = time.monotonic()
            if now >= next_send and now < end:
                started_at[endpoint.send_message(peer_id, bytes(100), now)] = now
                sent += 1
                next_send = now + HONEST_EVERY
                fleet.flush(endpoint)
            fleet.pump(0.001)  # short slices: each outcome is timed when it comes
            for _, event in fleet.received:
                if isinstance(event, ev.MessageDelivered):
                    took.append(time.monotonic() - started_at.pop(event.handle))
                elif isinstance(event, ev.MessageFailed):
                    started_at.pop(event.handle, None)
                    failed += 1
            fleet.received.clear()
    ms = sorted(t * 1000 for t in took)
    results.put({
        "what": "messages" if peer_id else "connections",
        "sent": sent, "delivered": len(took), "failed": failed,
        "latency_ms": {
            "median": round(statistics.median(ms), 1) if ms else None,
            "p99": round(ms[min(len(ms) - 1, int(len(ms) * 0.99))], 1) if ms else None,
            "max": round(ms[-1], 1) if ms else None,
        },
    })


# -------------------------------------------------------------------------- driver


def run(kind: str, seconds: float) -> dict:
    command = "introducer" if kind == "unread" else "listen"
    with running_node(command, HOST) as (node, target, peer_id):
        before = rss_mib(node.pid)
        results: multiprocessing.Queue = multiprocessing.Queue()
        honest_results: multiprocessing.Queue = multiprocessing.Queue()
        attacker = multiprocessing.Process(target=_attack,
                                           args=(kind, target, seconds, results))
        honest = multiprocessing.Process(target=_honest, args=(
            target, None if kind == "unread" else peer_id, seconds, honest_results))
        attacker.start()
        time.sleep(1.0)  # the attack is under way
        honest.start()
        peak = before
        while attacker.is_alive() or honest.is_alive():
            peak = max(peak, rss_mib(node.pid))
            time.sleep(0.2)
        time.sleep(2)
        after = rss_mib(node.pid)
        alive = node.poll() is None
        return {"attack": kind, "node": command, "seconds": seconds,
                "attacker": results.get(timeout=10), "honest_peer": honest_results.get(timeout=10),
                "node_alive": alive,
                "node_rss_mib": {"before": before, "peak": peak, "after": after}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("attacks", nargs="*", choices=[*ATTACKS, []])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--json", action="store_true", help="one JSON object per attack")
    args = parser.parse_args()
    for kind in args.attacks or ATTACKS:
        row = run(kind, args.seconds)
        if args.json:
            print(json.dumps(row), flush=True)
        else:
            honest, rss = row["honest_peer"], row["node_rss_mib"]
            print(f"{kind:15} honest {honest['delivered']}/{honest['sent']} "
                  f"median {honest['latency_ms']['median']} ms  "
                  f"rss {rss['before']} / {rss['peak']} / {rss['after']} MiB", flush=True)


if __name__ == "__main__":
    main()
