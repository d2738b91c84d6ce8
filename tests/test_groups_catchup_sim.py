"""A member away while many posts are written gets every one of them, each once, from a
member that stayed, after all the authors have gone (virtual time)."""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from pathlib import Path

import shoal
from shoal import sim
from shoal.core.services.groups import HELLO_TOPIC
from test_groups_sim import _members, _take

POSTS = int(os.environ.get("SHOAL_CATCHUP_POSTS", "50"))
"""Posts written while the member is away (more: ``SHOAL_CATCHUP_POSTS=500``)."""


def test_a_member_away_for_many_posts_gets_each_once_when_every_author_is_gone(
        tmp_path: Path) -> None:
    async def main(net: sim.VirtualNetwork) -> None:
        # 0..2 write, 3 only reads and stays, 4 is away while the others write.
        nodes, groups = await _members(net, 5, tmp_path)
        away = nodes[4]
        identity, address = away.identity, away.address
        await away.close()
        made: list[shoal.Post] = []
        for index in range(POSTS):
            author = groups[index % 3]
            made.append(await author.publish(f"post {index}".encode(), topic="log"))
            await asyncio.sleep(0.02)
        await asyncio.sleep(3)
        for author in nodes[:3]:
            await author.close()
        assert {p.author for p in made} == {node.peer_id for node in nodes[:3]}

        back = net.node(identity=identity, address=address, data_dir=tmp_path / "n4")
        events = back.subscribe("groups")  # before it starts: every post it takes in
        await back.start()
        [group] = back.groups()
        # One more than was written: a post shown twice, or a stray one, would show.
        got = await _take(group.subscribe(topic="log"), POSTS + 1, timeout=20)
        assert Counter(p.id for p in got) == Counter(p.id for p in made)
        assert {p.id: p.data for p in got} == {p.id: p.data for p in made}

        taken: Counter[str] = Counter()
        while not events._queue.empty():
            event = events._queue.get_nowait()
            if event is not None and event.kind == "post":
                post = event.data[1]
                if post.topic != HELLO_TOPIC:
                    taken[post.id.hex()] += 1
        assert taken == Counter(p.id for p in made)  # the service took each in once
        for node in (nodes[3], back):
            await node.close()

    sim.run(main, seed=11)


def test_a_member_killed_and_back_at_once_gets_what_it_missed_at_once(tmp_path: Path) -> None:
    """Gone without a word (as after SIGKILL) and back from its data dir before the others
    noticed: they meet its new run afresh and reconcile at once, not at the next periodic
    reconciliation."""

    async def main(net: sim.VirtualNetwork) -> float:
        nodes, groups = await _members(net, 3, tmp_path)
        # The one with the highest peer id, which leaves starting reconciliations to the
        # others (the lower id starts).
        index = max(range(3), key=lambda i: nodes[i].peer_id)
        killed = nodes.pop(index)
        groups.pop(index)
        identity, address = killed.identity, killed.address
        net.detach(net.nodes[address])
        made = [await groups[i % 2].publish(b"while away %d" % i) for i in range(6)]
        await asyncio.sleep(0.5)
        back = await net.node(identity=identity, address=address,
                              data_dir=tmp_path / f"n{index}").start()
        started = net.loop.time()
        [group] = back.groups()
        got = await _take(group.subscribe(), len(made), timeout=25)
        took = net.loop.time() - started
        assert Counter(p.id for p in got) == Counter(p.id for p in made)
        for node in (*nodes, back):
            await node.close()
        return took

    # At once: not at the next tick of the service (2 s), nor at the next periodic
    # reconciliation (30 s).
    assert sim.run(main, seed=12) < 1.0


def test_a_member_killed_keeps_the_members_it_met_and_finds_them_back(tmp_path: Path) -> None:
    """Its invite named only the admin; it met another member since. Killed, and back
    when the admin is gone too, it dials the member it met (kept on disk as it met it)
    and gets what that one wrote meanwhile."""

    async def main(net: sim.VirtualNetwork) -> float:
        nodes, groups = await _members(net, 3, tmp_path)
        admin, writer, killed = nodes
        identity, address = killed.identity, killed.address
        for node in (killed, admin):
            net.detach(net.nodes[node.address])
        made = [await groups[1].publish(b"meanwhile %d" % i) for i in range(3)]
        await asyncio.sleep(60)  # long enough for the writer to give the connection up
        back = await net.node(identity=identity, address=address,
                              data_dir=tmp_path / "n2").start()
        started = net.loop.time()
        [group] = back.groups()
        got = await _take(group.subscribe(), len(made), timeout=30)
        took = net.loop.time() - started
        assert [p.id for p in got] == [p.id for p in made]
        for node in (writer, back):
            await node.close()
        return took

    assert sim.run(main, seed=13) < 1.0
