"""Cost of one wakeup as a node's peer count grows; prints one JSON object.

A hub node in the simulator gets N established connections; then one peer sends it a
message and the hub's work for that datagram and its timer is timed (median of many).
With every deadline in one heap, the cost should not grow with N.

    python bench/wakeup_bench.py [--peers 10,1000,10000]
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import statistics
import time

from shoal.core.config import CoreConfig
from shoal.sim import LinkProfile, SimNetwork

COUNTED = 50
"""Samples whose Python function calls are counted (and not timed): the work done per
datagram, which must not depend on the peer count; the time may, through CPU caches."""


def measure(peers: int, samples: int = 350) -> dict[str, float]:
    net = SimNetwork(seed=1, profile=LinkProfile(latency=0.001))
    hub = net.add_node(config=CoreConfig(max_sessions=peers + 16))
    nodes = [net.add_node() for _ in range(peers)]
    for node in nodes:
        node.endpoint.connect(hub.address, net.now)
        net.flush(node)
    # ``sessions`` is the table's name before connections: the same script then measures
    # an older checkout side by side.
    table = getattr(hub.endpoint, "connections", None)
    table = hub.endpoint.sessions if table is None else table
    net.run(5, until=lambda: len(table) >= peers)
    sender = nodes[0]
    costs = []
    profile = cProfile.Profile()
    for index in range(samples):
        sender.endpoint.send_message(hub.peer_id, b"x", net.now)
        for data, _destination, _socket in sender.endpoint.datagrams_to_send(net.now):
            counting = index < COUNTED
            if counting:
                profile.enable()
            start = time.perf_counter()
            hub.endpoint.receive_datagram(data, sender.address, net.now)
            hub.endpoint.datagrams_to_send(net.now)
            hub.endpoint.get_timer()
            hub.endpoint.handle_timer(net.now)
            elapsed = time.perf_counter() - start
            if counting:
                profile.disable()
            else:
                costs.append(elapsed)
        net.run(0.01)
        while hub.endpoint.next_event() is not None:
            pass
    calls = pstats.Stats(profile).total_calls  # type: ignore[attr-defined]
    return {"peers": peers, "connections": len(table),
            "function_calls_per_datagram": round(calls / COUNTED, 1),
            "us_per_datagram_p50": round(statistics.median(costs) * 1e6, 1),
            "us_per_datagram_p90": round(statistics.quantiles(costs, n=10)[-1] * 1e6, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--peers", default="10,1000,10000")
    args = parser.parse_args()
    print(json.dumps([measure(int(n)) for n in args.peers.split(",")]))


if __name__ == "__main__":
    main()
