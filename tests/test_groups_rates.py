"""Rate limits of the groups service, in virtual time: a member flooding the group is
held to its author's quota (gossip and reconciliation alike) without its posts being lost
for good, and one connected peer cannot make a node process more than its quota of group
traffic; honest members' posts get through all along."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

import shoal
from shoal import sim
from shoal.core.config import CoreConfig
from shoal.core.groups import gossip as g
from shoal.core.groups.posts import GroupKeys, seal_post
from shoal.core.services.groups import GroupService, quotas
from shoal.errors import LocalProtocolError
from test_groups_sim import _service, _take

FLOOD = 3_000
RATE, BURST_SECONDS = 20.0, 10.0


def _timed(service: GroupService, spent: list[float]) -> None:
    """Add the process time ``service`` spends on group frames to ``spent[0]``."""
    handle = service.on_frame

    def on_frame(*args: Any) -> None:
        start = time.process_time()
        handle(*args)
        spent[0] += time.process_time() - start

    service.on_frame = on_frame  # type: ignore[method-assign]


def test_a_flooding_member_is_held_to_its_rate_and_its_posts_come_later() -> None:
    settings = CoreConfig(services={"groups": {"author_posts_per_second": RATE,
                                               "author_burst_seconds": BURST_SECONDS}})
    seen: dict[str, Any] = {}

    async def main(net: sim.VirtualNetwork) -> None:
        victim, flooder, honest = [await net.node(config=settings).start() for _ in range(3)]
        group = await victim.create_group("team")
        invite = group.invite()
        flooding, posting = await flooder.join(invite), await honest.join(invite)
        await asyncio.sleep(5)
        service = _service(victim)
        spent = [0.0]
        _timed(service, spent)
        feed = group.subscribe(topic="honest")
        loop = asyncio.get_running_loop()
        start = loop.time()
        made, mine = [], []
        for chunk in range(10):
            made += [flooding._publish(b"%05d" % i + bytes(1019), "flood", None).id
                     for i in range(chunk * FLOOD // 10, (chunk + 1) * FLOOD // 10)]
            mine += [(await posting.publish(b"honest %d" % i, topic="honest")).id
                     for i in range(2 * chunk, 2 * chunk + 2)]
            await asyncio.sleep(0.5)
        got = await _take(feed, len(mine), 20)
        seen["honest"] = sorted(p.id for p in got) == sorted(mine)
        # The victim kept no more of the flood than the quota allows, whoever brought it.
        samples = []
        for _ in range(8):
            held = sum(service.store.has(bytes.fromhex(i)) for i in made)
            samples.append((loop.time() - start, held))
            await asyncio.sleep(15)
        seen["samples"] = samples
        seen["dropped"] = victim.stats.get("groups_dropped_rate", 0)
        seen["cpu_per_post"] = spent[0] / FLOOD
        await asyncio.sleep(400)  # reconciliation brings the rest, within the quota
        seen["all"] = sum(service.store.has(bytes.fromhex(i)) for i in made)
        for node in (victim, flooder, honest):
            await node.close()

    sim.run(main, seed=21)
    print(f"victim CPU per flood post: {seen['cpu_per_post'] * 1e6:.0f} us; "
          f"dropped for rate {seen['dropped']}; held over time {seen['samples']}")
    assert seen["honest"]
    assert seen["dropped"] > 0
    for elapsed, held in seen["samples"]:
        assert held <= RATE * (BURST_SECONDS + elapsed) + 5, (elapsed, held)
    assert seen["samples"][-1][1] > seen["samples"][0][1]  # it keeps coming, at the rate
    assert seen["all"] == FLOOD


def test_one_peer_cannot_make_a_node_process_more_than_its_quota() -> None:
    """Posts from as many free identities as the peer likes pass every author's quota;
    the peer's own quota bounds them."""
    per_second, burst = 300.0, 2.0
    settings = CoreConfig(services={"groups": {"peer_fragments_per_second": per_second,
                                               "peer_burst_seconds": burst}})
    seen: dict[str, Any] = {}

    async def main(net: sim.VirtualNetwork) -> None:
        victim, member = [await net.node(config=settings).start() for _ in range(2)]
        group = await victim.create_group("team")
        joined = await member.join(group.invite())
        attacker = await net.node(config=settings).start()
        attacker.carry(group.tag)
        await attacker.connect(victim.address)
        await asyncio.sleep(5)
        service, theirs = _service(victim), _service(attacker)
        tag = bytes.fromhex(group.tag)
        link = theirs.links[victim.identity.public_key]
        fake = GroupKeys(bytes.fromhex(group.id), {9: bytes(32)})
        before = service.store.count(tag)
        feed = group.subscribe(topic="honest")
        start = asyncio.get_running_loop().time()
        for index in range(FLOOD):
            raw = seal_post(shoal.Identity.generate(), fake, data=bytes(1000) + b"%d" % index,
                            time_ms=service._now_ms(), random_bytes=lambda n: bytes(n)).raw
            theirs._send(link, g.Message(g.POST, data=raw))
        mine = [(await joined.publish(b"honest %d" % i, topic="honest")).id for i in range(10)]
        got = await _take(feed, len(mine), 10)
        await asyncio.sleep(10)
        seen["elapsed"] = asyncio.get_running_loop().time() - start
        seen["honest"] = sorted(p.id for p in got) == sorted(mine)
        seen["taken"] = service.store.count(tag) - before
        seen["dropped"] = victim.stats.get("groups_dropped_peer_rate", 0)
        for node in (attacker, member, victim):
            await node.close()

    sim.run(main, seed=22)
    print(f"taken {seen['taken']} of {FLOOD} in {seen['elapsed']:.1f}s, "
          f"dropped {seen['dropped']}")
    assert seen["honest"]
    assert seen["dropped"] > 0
    # Each post is two fragments: the peer's quota bounds what was taken.
    assert seen["taken"] <= (per_second * (burst + seen["elapsed"])) / 2 + 5


def test_groups_settings_are_checked() -> None:
    for bad in ({"author_posts_per_sec": 1}, {"peer_bytes_per_second": 0},
                {"author_bytes_per_second": 1}, {"peer_burst_seconds": "fast"}):
        with pytest.raises(LocalProtocolError):
            quotas(bad)
