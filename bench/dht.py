"""DHT lookups over many simulated nodes, in virtual time.

    python bench/dht.py --nodes 500 --lookups 50

Builds a network of ``--nodes`` public nodes and one introducer (``shoal.sim.dht``),
each joining the DHT as it starts; then, ``--lookups`` times, one random node provides a
random key and another looks it up. Prints one JSON object: the nodes, the lookups, the
median (and largest) rounds and requests per lookup, the round whose answer named the
provider, and the share of lookups that found it. Rounds count requests one after the
other; requests count FIND_NODE/GET_PROVIDERS frames sent.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time

from shoal.sim.dht import dht, dht_network, lookup


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, default=500)
    parser.add_argument("--lookups", type=int, default=50)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    started = time.perf_counter()
    net, _, nodes = dht_network(args.nodes, seed=args.seed, k=args.k)
    built = time.perf_counter() - started
    rng = random.Random(args.seed)
    rounds, found_rounds, messages, found = [], [], [], 0
    for _ in range(args.lookups):
        key = rng.randbytes(32)
        provider, finder = rng.sample(nodes, 2)
        lookup(net, provider, "provide", key)
        net.run(1)
        providers: list[bytes] = []
        result = lookup(net, finder, "find", key, found=providers)
        if result is None:
            continue
        rounds.append(result.rounds)
        messages.append(result.messages)
        found_rounds.append(result.found_round)
        found += provider.endpoint.identity.public_key in providers
    print(json.dumps({
        "nodes": args.nodes, "k": args.k, "alpha": dht(nodes[0]).alpha, "lookups": args.lookups,
        "median_rounds": statistics.median(rounds), "max_rounds": max(rounds),
        "median_found_round": statistics.median(found_rounds),
        "median_messages": statistics.median(messages), "max_messages": max(messages),
        "success_rate": found / args.lookups,
        "contacts_per_node": statistics.median(len(dht(n).table) for n in nodes),
        "build_seconds": round(built, 1),
        "wall_seconds": round(time.perf_counter() - started, 1),
    }))


if __name__ == "__main__":
    main()
