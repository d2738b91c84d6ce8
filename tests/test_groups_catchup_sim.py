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
