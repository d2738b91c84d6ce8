"""One group post spreading through N members in the simulator: copies and time.

    python bench/groups.py [--nodes 200] [--seed 1] [--latency 0.02]

N ``shoal.Node``s run in virtual time (``shoal.sim``) on links of ``--latency`` seconds
each way. One creates a group; each other joins with an invite made by a member chosen at
random among those already in, so each first meets one random member and then, through
the members it hears of, up to ``TARGET_PEERS`` of them. Once the joins have settled
(every hello post reached every member), a random member publishes one post of 1 KiB,
and 2 s later another one does. Printed as one JSON object, for each of the two posts
(``first``, ``second``): ``members_reached`` (of N - 1), ``copies_sent`` (whole posts
sent by all nodes in the 2 s after publishing: ``pushed`` by gossip or asked for, and
``by_sync``, by reconciliation), ``copies_per_member`` (copies divided by members
reached), ``announcements`` (IHAVE messages) and ``seconds_to_all`` (virtual time from
publishing until the last member stored it); then ``links`` (connections per node,
mean) and ``wall_seconds`` (what the run took here: minutes for 200 members, most of an
hour for 1,000 on a 2-core machine).
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
    out: dict[str, object] = {"nodes": count}
    for name in ("first", "second"):
        out[name] = await _spread_one(nodes, groups, services, rng)
    out["links"] = round(sum(len(s.links) for s in services) / count, 2)
    for node in nodes:
        await node.close()
    return out


def _counter(nodes: list[object], name: str) -> int:
    return sum(node.stats.get(name, 0) for node in nodes)  # type: ignore[attr-defined]


async def _spread_one(nodes: list[object], groups: list[object], services: list[GroupService],
                      rng: random.Random) -> dict[str, object]:
    """Publish one post from a random member; what it cost to reach the others."""
    count = len(nodes)
    before = {name: _counter(nodes, name) for name in _COUNTERS}
    author = rng.randrange(count)
    loop = asyncio.get_running_loop()
    started = loop.time()
    post = await groups[author].publish(rng.randbytes(1024))  # type: ignore[attr-defined]
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
    sent = {name: _counter(nodes, name) - before[name] for name in _COUNTERS}
    copies = sent["groups_posts_sent_gossip"] + sent["groups_posts_sent_sync"]
    reached = count - 1 - len(waiting)
    return {
        "members_reached": reached, "copies_sent": copies,
        "copies_per_member": round(copies / max(reached, 1), 3),
        "pushed": sent["groups_posts_sent_gossip"], "by_sync": sent["groups_posts_sent_sync"],
        "announcements": sent["groups_ihave_sent"],
        "seconds_to_all": round(reached_at - started, 3),
    }


_COUNTERS = ("groups_posts_sent_gossip", "groups_posts_sent_sync", "groups_ihave_sent")


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
