"""One group post spreading through N members in the simulator: copies and time.

    python bench/groups.py [--nodes 200] [--seed 1] [--latency 0.02]

N ``shoal.Node``s run in virtual time (``shoal.sim``) on links of ``--latency`` seconds
each way. One creates a group; each other joins with an invite made by a member chosen at
random among those already in, so each first meets one random member and then, through
the members it hears of, up to ``TARGET_PEERS`` of them. Once the joins have settled
(every hello post reached every member), a random member publishes one post of 1 KiB.
Printed as one JSON object: ``members_reached`` (of N - 1), ``copies_sent`` (whole posts
sent by all nodes while it spread, pushed or asked for), ``copies_per_member`` (the two
divided), ``announcements`` (ids announced to lazy peers), ``seconds_to_all`` (virtual
time from publishing until the last member stored it), ``links`` (connections per node,
mean) and ``wall_seconds`` (what the run took here).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time

from shoal import sim
from shoal.core.services.groups import GroupService
from shoal.sim import LinkProfile


def _service(node: object) -> GroupService:
    return node.endpoint.service("groups")  # type: ignore[attr-defined,no-any-return]


async def run(net: sim.VirtualNetwork, count: int, seed: int) -> dict[str, object]:
    rng = random.Random(seed)
    nodes = [await net.node().start() for _ in range(count)]
    groups = [await nodes[0].create_group("bench")]
    for node in nodes[1:]:
        inviter = rng.choice(groups)
        groups.append(await node.join(inviter.invite()))
        await asyncio.sleep(0.05)
    tag = bytes.fromhex(groups[0].tag)
    services = [_service(node) for node in nodes]
    hellos = count
    for _ in range(600):
        await asyncio.sleep(1)
        if all(s.store.count(tag) >= hellos for s in services):
            break
    await asyncio.sleep(3)
    sent_before = sum(s.sent_posts for s in services)
    announced_before = sum(node.stats.get("groups_ihave_sent", 0) for node in nodes)
    author = rng.randrange(count)
    loop = asyncio.get_running_loop()
    started = loop.time()
    post = await groups[author].publish(rng.randbytes(1024))
    post_id = bytes.fromhex(post.id)
    reached_at = started
    waiting = set(range(count)) - {author}
    while waiting and loop.time() - started < 60:
        await asyncio.sleep(0.005)
        done = {i for i in waiting if services[i].store.has(post_id)}
        if done:
            reached_at = loop.time()
            waiting -= done
    await asyncio.sleep(2)
    copies = sum(s.sent_posts for s in services) - sent_before
    reached = count - 1 - len(waiting)
    links = sum(len(s.links) for s in services) / count
    for node in nodes:
        await node.close()
    return {
        "nodes": count, "members_reached": reached, "copies_sent": copies,
        "copies_per_member": round(copies / max(reached, 1), 3),
        "announcements": sum(node.stats.get("groups_ihave_sent", 0) for node in nodes)
        - announced_before,
        "seconds_to_all": round(reached_at - started, 3), "links": round(links, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--latency", type=float, default=0.02)
    args = parser.parse_args()
    began = time.perf_counter()
    result = sim.run(lambda net: run(net, args.nodes, args.seed), seed=args.seed,
                     profile=LinkProfile(latency=args.latency))
    result["wall_seconds"] = round(time.perf_counter() - began, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
