"""Groups between ``shoal.Node``s in virtual time: posts reach the members online, those
back from an absence catch up through any carrier, removed members read nothing new,
forged and tampered posts are dropped, documents converge, and junk does no harm."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from pathlib import Path

import pycrdt
import pytest

import shoal
from shoal import sim
from shoal.core.config import CoreConfig
from shoal.core.groups import gossip as g
from shoal.core.groups.posts import seal_post
from shoal.core.services.groups import START_GAP, GroupService
from shoal.core.wire import Extension, encode_varint
from shoal.errors import ShoalError
from shoal.sim import LinkProfile

SETTLE = 5.0


async def _members(net: sim.VirtualNetwork, count: int, tmp: Path | None = None
                   ) -> tuple[list[shoal.Node], list[shoal.Group]]:
    nodes = []
    for index in range(count):
        data_dir = tmp / f"n{index}" if tmp is not None else None
        nodes.append(await net.node(data_dir=data_dir).start())
    admin = await nodes[0].create_group("team")
    invite = admin.invite()
    groups = [admin] + [await node.join(invite) for node in nodes[1:]]
    await asyncio.sleep(SETTLE)
    return nodes, groups


async def _take(feed: AsyncIterator[shoal.Post], count: int, timeout: float = 10.0
                ) -> list[shoal.Post]:
    out: list[shoal.Post] = []

    async def collect() -> None:
        async for post in feed:
            out.append(post)
            if len(out) == count:
                return

    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(collect(), timeout)
    return out


def _service(node: shoal.Node) -> GroupService:
    return node.endpoint.service("groups")  # type: ignore[return-value]


def test_a_post_reaches_every_online_member_once() -> None:
    async def main(net: sim.VirtualNetwork) -> None:
        nodes, groups = await _members(net, 5)
        feeds = [group.subscribe() for group in groups]
        sent = await groups[2].publish(b"hello all", topic="chat")
        for feed in feeds:
            got = await _take(feed, 2, timeout=5)
            assert [(p.id, p.data, p.topic, p.author) for p in got] == \
                [(sent.id, b"hello all", "chat", nodes[2].peer_id)]
        members = {m.peer_id: m for m in groups[1].members()}
        assert set(members) == {node.peer_id for node in nodes}
        assert members[nodes[0].peer_id].admin and not members[nodes[3].peer_id].admin
        assert all(m.online for m in members.values())
        assert groups[0].is_admin and not groups[1].is_admin
        for node in nodes:
            await node.close()

    sim.run(main, seed=3)


def test_a_member_back_gets_what_it_missed_though_the_author_is_gone(tmp_path: Path) -> None:
    async def main(net: sim.VirtualNetwork) -> None:
        nodes, groups = await _members(net, 4, tmp_path)
        late = nodes[3]
        identity, address = late.identity, late.address
        await late.close()
        made = [await groups[0].publish(f"post {i}".encode()) for i in range(5)]
        await asyncio.sleep(2)
        await nodes[0].close()  # the author leaves too
        back = await net.node(identity=identity, address=address,
                              data_dir=tmp_path / "n3").start()
        [group] = back.groups()
        started = asyncio.get_running_loop().time()
        got = await _take(group.subscribe(), 5, timeout=10)
        assert [p.id for p in got] == [p.id for p in made]
        assert asyncio.get_running_loop().time() - started < 5
        for node in (*nodes[1:3], back):
            await node.close()

    sim.run(main, seed=4)


def test_a_carrier_that_is_no_member_passes_on_posts_it_cannot_read() -> None:
    async def main(net: sim.VirtualNetwork) -> None:
        nodes, groups = await _members(net, 2)
        author, reader = nodes
        carrier = await net.node().start()
        carrier.carry(groups[0].tag)
        await carrier.connect(author.address)
        await asyncio.sleep(1)
        identity, address = reader.identity, reader.address
        await reader.close()
        posts = [await groups[0].publish(b"secret %d" % i) for i in range(3)]
        await asyncio.sleep(2)
        store = _service(carrier).store
        assert store.count(bytes.fromhex(groups[0].tag)) >= 3  # the hellos and the posts
        assert carrier.groups() == []
        held = [store.get(bytes.fromhex(p.id)) for p in posts]
        assert all(raw is not None and b"secret" not in raw for raw in held)
        invite = groups[0].invite()
        await author.close()
        # The reader comes back without its data dir's member list: it meets the carrier.
        back = await net.node(identity=identity, address=address).start()
        group = await back.join(invite)
        await back.connect(carrier.address)
        got = await _take(group.subscribe(), 3, timeout=10)
        assert [p.data for p in got] == [b"secret 0", b"secret 1", b"secret 2"]
        await back.close()
        await carrier.close()

    sim.run(main, seed=5)


def test_a_removed_member_cannot_read_what_is_posted_after() -> None:
    async def main(net: sim.VirtualNetwork) -> None:
        nodes, groups = await _members(net, 3)
        admin, kept, removed = groups
        with pytest.raises(ShoalError) as refused:
            await kept.remove(nodes[2].peer_id)
        assert refused.value.code == "EPERM"
        await admin.remove(nodes[2].peer_id)
        await asyncio.sleep(2)
        kept_feed, removed_feed = kept.subscribe(topic="after"), removed.subscribe(topic="after")
        post = await admin.publish(b"not for you", topic="after")
        assert [p.id for p in await _take(kept_feed, 1)] == [post.id]
        assert await _take(removed_feed, 1, timeout=5) == []
        # The post did reach the removed member's store: it just cannot open it.
        assert _service(nodes[2]).store.has(bytes.fromhex(post.id))
        with pytest.raises(ShoalError) as after:
            await removed.publish(b"still here?")
        assert after.value.code == "EPERM"
        # The remaining member reads and posts under the new key.
        answer = await kept.publish(b"ok", topic="after")
        assert [p.id for p in await _take(admin.subscribe(topic="after"), 2)] == \
            [post.id, answer.id]
        for node in nodes:
            await node.close()

    sim.run(main, seed=6)


def test_forged_and_tampered_posts_are_dropped_and_counted() -> None:
    async def main(net: sim.VirtualNetwork) -> None:
        nodes, groups = await _members(net, 2)
        victim, attacker = nodes
        service = _service(attacker)
        tag = bytes.fromhex(groups[0].tag)
        keys = service.carried[tag].keys
        assert keys is not None
        link = service.links[victim.identity.public_key]
        real = seal_post(attacker.identity, keys, data=b"x", time_ms=1000,
                         random_bytes=lambda n: bytes(n))
        forged = bytearray(real.raw)
        forged[-70] ^= 1  # inside the ciphertext: the signature no longer verifies
        broken = bytes(bytearray(keys.epochs[keys.epoch])[::-1])
        keys_copy = type(keys)(keys.group_id, {keys.epoch: broken})
        tampered = seal_post(attacker.identity, keys_copy, data=b"y", time_ms=1000,
                             random_bytes=lambda n: bytes(n))
        for raw in (bytes(forged), tampered.raw, b"\x01\x01 garbage"):
            service._send(link, g.Message(g.POST, data=raw))
        attacker.call("groups", "members", keys.group_id)  # flush
        await asyncio.sleep(2)
        stats = victim.stats
        assert stats["groups_dropped_forged"] == 1
        assert stats["groups_dropped_tampered"] == 1
        assert stats["groups_dropped_malformed"] == 1
        store = _service(victim).store
        assert not store.has(real.id) and not store.has(tampered.id)
        service._send(link, g.Message(g.POST, data=real.raw))  # the same post, unaltered
        attacker.call("groups", "members", keys.group_id)
        await asyncio.sleep(1)
        assert store.has(real.id)
        for node in nodes:
            await node.close()

    sim.run(main, seed=7)


def test_document_edits_from_two_members_converge() -> None:
    async def main(net: sim.VirtualNetwork) -> None:
        _, groups = await _members(net, 3)
        docs = [group.document("notes") for group in groups]
        first, second = (doc.doc.get("text", type=pycrdt.Text) for doc in docs[:2])
        first += "alpha "
        second += "beta "
        updates = docs[2].updates()
        assert len(await asyncio.wait_for(updates.__anext__(), 5)) > 0
        await asyncio.sleep(3)
        texts = [str(doc.doc.get("text", type=pycrdt.Text)) for doc in docs]
        assert texts[0] == texts[1] == texts[2]
        assert "alpha" in texts[0] and "beta" in texts[0]
        # A member that opens the document later starts from the stored posts.
        late = groups[1].document("other")
        assert str(late.doc.get("text", type=pycrdt.Text)) == ""
        docs[1].close()
        again = groups[1].document("notes")
        assert str(again.doc.get("text", type=pycrdt.Text)) == texts[0]

    sim.run(main, seed=8)


def test_a_peer_flooding_junk_frames_is_cut_off_and_the_node_stays_up() -> None:
    async def main(net: sim.VirtualNetwork) -> None:
        nodes, groups = await _members(net, 3)
        victim, attacker = nodes[0], nodes[2]
        connection = attacker.endpoint.connection_to(victim.identity.public_key)
        assert connection is not None
        # A flood of junk posts in well-formed messages: each dropped and counted.
        service = _service(attacker)
        link = service.links[victim.identity.public_key]
        stored = _service(victim).store.count()
        for index in range(2000):
            service._send(link, g.Message(g.POST, data=b"junk %d" % index))
        attacker.call("groups", "members", bytes.fromhex(groups[0].id))
        await asyncio.sleep(5)
        assert victim.stats["groups_dropped_malformed"] == 2000
        victim_service = _service(victim)
        assert victim_service.store.count() == stored
        assert all(r.held == 0 for r in victim_service._inbound.values())
        # A "huge post": a message announced larger than any post closes the connection.
        before = victim.endpoint.connection_to(attacker.identity.public_key)
        assert before is not None
        body = (encode_varint(link.next_id + 5) + encode_varint(64 * 2**20) +
                encode_varint(0) + bytes(g.FRAGMENT_DATA))
        connection.queue_frame(Extension(g.GROUP_FRAGMENT, body))
        attacker.endpoint.mark(connection)
        attacker.call("groups", "members", bytes.fromhex(groups[0].id))  # flush
        await asyncio.sleep(2)
        assert before.closed
        assert victim.endpoint.faults == []
        # The others still hear each other.
        feed = groups[1].subscribe()
        post = await groups[0].publish(b"still up")
        assert [p.id for p in await _take(feed, 1)] == [post.id]
        for node in nodes:
            await node.close()

    sim.run(main, seed=9)


def test_the_reassembly_budget_refuses_too_many_unfinished_messages() -> None:
    reassembly = g.Reassembly()
    big = bytes(g.MAX_MESSAGE // 2)
    for message_id in range(2):
        assert reassembly.take(g.fragments(message_id, big)[0]) is None
    with pytest.raises(shoal.RemoteProtocolError):
        for message_id in range(2, 10):
            reassembly.take(g.fragments(message_id, big)[0])
    assert reassembly.held <= g.MAX_PARTIAL_BYTES
    whole = bytes(range(256)) * 10
    fresh = g.Reassembly()
    pieces = g.fragments(0, whole)
    assert [fresh.take(p) for p in reversed(pieces)][-1] == whole
    assert fresh.take(pieces[0]) is None  # sent again after it was taken: ignored


INTRODUCER = ("198.51.100.1", 7000)


@pytest.mark.parametrize("with_dht", [True, False])
def test_a_member_whose_invite_leads_nowhere_finds_the_others_through_the_dht(
        with_dht: bool) -> None:
    async def main(net: sim.VirtualNetwork) -> list[bytes]:
        settings = CoreConfig(nat_check=False, dht=with_dht, services={"dht": {"k": 4}})
        introducer = f"{INTRODUCER[0]}:{INTRODUCER[1]}"

        async def node() -> shoal.Node:
            started = await net.node(introducers=[introducer], config=settings).start()
            await started.wait_for_introducers()
            return started

        async with net.node(address=INTRODUCER, introducer=True, config=settings):
            admin_node, member_node = await node(), await node()
            admin = await admin_node.create_group("team")
            invite = admin.invite()  # its only hint is the admin, who will be gone
            await member_node.join(invite)
            await asyncio.sleep(SETTLE)
            await admin.publish(b"before you came")
            await asyncio.sleep(2)
            await admin_node.close()
            newcomer = await node()
            group = await newcomer.join(invite)
            got = await _take(group.subscribe(), 1, timeout=15)
            online = [m.peer_id for m in group.members() if m.online]
            for each in (member_node, newcomer):
                await each.close()
        assert (member_node.peer_id in online) == with_dht
        return [p.data for p in got]

    assert sim.run(main, seed=10) == ([b"before you came"] if with_dht else [])


def test_a_member_that_leaves_forgets_the_group(tmp_path: Path) -> None:
    async def main(net: sim.VirtualNetwork) -> None:
        nodes, groups = await _members(net, 2, tmp_path)
        member = nodes[1]
        await groups[1].leave()
        assert member.groups() == []
        with pytest.raises(shoal.ClosedError):
            await groups[1].publish(b"gone")
        identity, address = member.identity, member.address
        await member.close()
        again = await net.node(identity=identity, address=address,
                               data_dir=tmp_path / "n1").start()
        assert again.groups() == []
        # The admin's node, restarted, is still the admin of its group.
        admin_identity, admin_address = nodes[0].identity, nodes[0].address
        await nodes[0].close()
        admin = await net.node(identity=admin_identity, address=admin_address,
                               data_dir=tmp_path / "n0").start()
        [group] = admin.groups()
        assert group.is_admin and group.id == groups[0].id and group.name == "team"
        await again.close()
        await admin.close()

    sim.run(main, seed=11)


def test_large_posts_cross_a_lossy_reordering_network_whole_and_in_order() -> None:
    async def main(net: sim.VirtualNetwork) -> None:
        nodes, groups = await _members(net, 4)
        feeds = [group.subscribe(topic="big") for group in groups[1:]]
        rng = random.Random(12)
        made = [await groups[0].publish(rng.randbytes(rng.randrange(1, 200_000)),
                                        topic="big") for _ in range(6)]
        for feed in feeds:
            got = await _take(feed, len(made), timeout=30)
            assert [(p.id, p.data) for p in got] == [(p.id, p.data) for p in made]
        for node in nodes:
            await node.close()

    sim.run(main, seed=12, profile=LinkProfile(latency=0.02, jitter=0.01, loss=0.05,
                                               duplicate=0.02))


def test_a_broken_reconciliation_ends_the_session_not_the_connection() -> None:
    async def main(net: sim.VirtualNetwork) -> None:
        nodes, groups = await _members(net, 2)
        victim, attacker = nodes
        service = _service(attacker)
        link = service.links[victim.identity.public_key]
        tag = bytes.fromhex(groups[0].tag)
        await asyncio.sleep(START_GAP)  # since the reconciliation the meeting started
        service._send(link, g.Message(g.RECONCILE, tag=tag, mode=g.START, data=b"\x07junk"))
        attacker.call("groups", "members", bytes.fromhex(groups[0].id))  # flush
        await asyncio.sleep(1)
        assert victim.stats["groups_dropped_sync_broken"] == 1
        service._send(link, g.Message(g.RECONCILE, tag=tag, mode=g.START, data=b"\x01"))
        attacker.call("groups", "members", bytes.fromhex(groups[0].id))
        await asyncio.sleep(1)
        assert victim.stats["groups_dropped_sync_too_often"] == 1
        feed = groups[0].subscribe()
        post = await groups[1].publish(b"still friends")
        assert [p.id for p in await _take(feed, 1)] == [post.id]
        for node in nodes:
            await node.close()

    sim.run(main, seed=13)
