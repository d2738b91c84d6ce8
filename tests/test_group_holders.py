"""Which peers hold a post published here (what ``shoal publish`` waits for), in
virtual time: none while the author is alone, the members once they have it whole, and
the record of a post kept only for the last ones published."""

from __future__ import annotations

import asyncio

import shoal
from shoal import sim
from shoal.core.services import groups as service_module
from shoal.core.services.groups import GroupService


def _service(node: shoal.Node) -> GroupService:
    return node.endpoint.service("groups")  # type: ignore[return-value]


def test_holders_are_the_members_that_took_the_post() -> None:
    async def main(net: sim.VirtualNetwork) -> None:
        alice, bob, carol = [await net.node().start() for _ in range(3)]
        group = await alice.create_group("team")
        invite = group.invite()
        alone = await group.publish(b"anyone?")
        await asyncio.sleep(2)
        assert alice.call("groups", "holders", bytes.fromhex(alone.id)) == []
        await bob.join(invite)
        await carol.join(invite)
        await asyncio.sleep(5)
        post = await group.publish(b"x" * 3000)  # several fragments, each acknowledged
        wanted = {bytes.fromhex(bob.peer_id), bytes.fromhex(carol.peer_id)}
        for _ in range(100):
            if set(alice.call("groups", "holders", bytes.fromhex(post.id))) == wanted:
                break
            await asyncio.sleep(0.1)
        assert set(alice.call("groups", "holders", bytes.fromhex(post.id))) == wanted
        # The earlier post reached them later, as they caught up: they hold it too.
        assert set(alice.call("groups", "holders", bytes.fromhex(alone.id))) == wanted
        # A post another member wrote is not tracked here.
        theirs = await bob.groups()[0].publish(b"hi")
        await asyncio.sleep(3)
        assert alice.call("groups", "holders", bytes.fromhex(theirs.id)) == []
        for node in (alice, bob, carol):
            await node.close()

    sim.run(main, seed=5)


def test_only_the_last_posts_are_tracked(monkeypatch) -> None:
    monkeypatch.setattr(service_module, "MAX_TRACKED", 3)

    async def main(net: sim.VirtualNetwork) -> None:
        alice = await net.node().start()
        group = await alice.create_group("team")
        posts = [await group.publish(b"%d" % i) for i in range(5)]
        assert list(_service(alice).holders) == [bytes.fromhex(p.id) for p in posts[2:]]
        await alice.close()

    sim.run(main, seed=1)
