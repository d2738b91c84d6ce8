"""What a group member keeps across restarts, in virtual time: removals (the removed set
and the newest epoch), the end of feeds and document updates on leave and close, and the
tags a node carries for others."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

import shoal
from shoal import sim
from shoal.core.groups.posts import GRANT, grantees, group_tag, parse_envelope
from shoal.core.services.groups import GroupService
from shoal.errors import ShoalError

SETTLE = 5.0


def _service(node: shoal.Node) -> GroupService:
    return node.endpoint.service("groups")  # type: ignore[return-value]


async def _restart(net: sim.VirtualNetwork, node: shoal.Node, data_dir: Path) -> shoal.Node:
    identity, address = node.identity, node.address
    await node.close()
    return await net.node(identity=identity, address=address, data_dir=data_dir).start()


def _peers(group: shoal.Group) -> set[str]:
    return {member.peer_id for member in group.members()}


def test_a_removal_outlasts_restarts_of_the_admin_and_the_members(tmp_path: Path) -> None:
    async def main(net: sim.VirtualNetwork) -> None:
        dirs = [tmp_path / f"n{i}" for i in range(4)]
        nodes = [await net.node(data_dir=d).start() for d in dirs]
        admin = await nodes[0].create_group("team")
        invite = admin.invite()
        for node in nodes[1:]:
            await node.join(invite)
        await asyncio.sleep(SETTLE)
        gone = nodes[3].peer_id
        assert gone in _peers(nodes[1].groups()[0])
        await admin.remove(gone)
        await asyncio.sleep(SETTLE)
        nodes = [await _restart(net, node, d) for node, d in zip(nodes, dirs, strict=True)]
        await asyncio.sleep(SETTLE)
        groups = [node.groups()[0] for node in nodes]
        for group in groups[:3]:
            assert gone not in _peers(group)
        # The removed node, restarted, still knows it was removed.
        with pytest.raises(ShoalError) as refused:
            await groups[3].publish(b"back?")
        assert refused.value.code == "EPERM"
        # A later removal grants the new key to the one member left, not to the removed.
        await groups[0].remove(nodes[2].peer_id)
        await asyncio.sleep(SETTLE)
        tag = group_tag(bytes.fromhex(groups[0].id))
        grants = [e for e in map(parse_envelope, _service(nodes[0]).store.envelopes(tag))
                  if e.kind == GRANT]
        newest = max(grants, key=lambda e: e.epoch)
        assert newest.epoch == 2
        assert set(grantees(newest)) == {bytes.fromhex(nodes[0].peer_id),
                                          bytes.fromhex(nodes[1].peer_id)}
        carried = _service(nodes[3]).carried[tag]
        assert carried.keys is not None and 2 not in carried.keys.epochs
        assert _peers(groups[1]) == {nodes[0].peer_id, nodes[1].peer_id}
        for node in nodes:
            await node.close()

    sim.run(main, seed=21)


async def _ends(iterator: object, timeout: float = 5.0) -> bool:
    """Whether ``iterator`` (async) runs out within ``timeout`` virtual seconds."""

    async def drain() -> None:
        async for _ in iterator:  # type: ignore[attr-defined]
            pass

    try:
        await asyncio.wait_for(drain(), timeout)
    except TimeoutError:
        return False
    return True


def test_feeds_and_document_updates_end_on_leave_and_on_close() -> None:
    async def main(net: sim.VirtualNetwork) -> None:
        nodes = [await net.node().start() for _ in range(2)]
        admin = await nodes[0].create_group("team")
        member = await nodes[1].join(admin.invite())
        await asyncio.sleep(SETTLE)
        left_updates = member.document("notes").updates()
        left_feed = member.subscribe()
        waiting = asyncio.ensure_future(_ends(left_updates))
        await asyncio.sleep(1)
        await member.leave()
        assert await waiting
        assert await _ends(left_feed)
        closed_updates = admin.document("notes").updates()
        closed_feed = admin.subscribe()
        waiting = asyncio.ensure_future(_ends(closed_updates))
        await asyncio.sleep(1)
        await nodes[0].close()
        assert await waiting
        assert await _ends(closed_feed)
        with pytest.raises(shoal.ClosedError):
            admin.subscribe()
        await nodes[1].close()

    sim.run(main, seed=22)


def test_a_carrier_keeps_carrying_after_a_restart(tmp_path: Path) -> None:
    async def main(net: sim.VirtualNetwork) -> None:
        author = await net.node().start()
        group = await author.create_group("team")
        carrier = await net.node(data_dir=tmp_path / "carrier").start()
        carrier.carry(group.tag)
        await carrier.connect(author.address)
        await asyncio.sleep(1)
        posts = [await group.publish(b"kept %d" % i) for i in range(3)]
        await asyncio.sleep(2)
        carrier = await _restart(net, carrier, tmp_path / "carrier")
        tag = bytes.fromhex(group.tag)
        assert tag in _service(carrier).carried and carrier.groups() == []
        await carrier.connect(author.address)
        later = await group.publish(b"kept 3")
        await asyncio.sleep(2)
        assert _service(carrier).store.has(bytes.fromhex(later.id))
        invite = group.invite()
        await author.close()
        reader = await net.node().start()
        joined = await reader.join(invite)
        await reader.connect(carrier.address)
        feed = joined.subscribe()
        got: list[str] = []

        async def take() -> None:
            async for post in feed:
                got.append(post.id)
                if len(got) == 4:
                    return

        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(take(), 10)
        assert got == [p.id for p in (*posts, later)]
        await reader.close()
        await carrier.close()

    sim.run(main, seed=23)
