"""Groups at scale in virtual time: many ``shoal.Node``s, posts, churn, and what it cost.

``run_groups`` builds ``peers`` nodes on a seeded ``VirtualNetwork`` (latency, jitter,
loss; a share of the peers behind NAT boxes of one kind), splits them among ``groups``
groups and lets each member join its group through the real groups service; then
members publish ``posts`` posts (one every ``post_every`` virtual seconds, round robin
over the groups, each by a random member online), while ``churn`` of the peers are cut
off from the network at any time (each absence lasts 10-40 s; the node runs on,
unreachable, and its datagrams are lost). After the posts, every peer comes back and the
run waits until each member holds every post of its group.

Setup takes one shortcut, still through the protocol: a member joins as an invite would
have it join (the group's keys and hints of a few members already in), without posting
a *hello* (N hellos would each reach N members: N^2 deliveries before the first post).

The figures (``GroupSimResult``):

- ``delivery_online``: of the (post, member) pairs whose member was online from the
  post's publication for ``window`` seconds, the fraction delivered within that window;
- ``delivery_after_sync``: of all (post, member) pairs, the fraction delivered once
  every member is back and has synced;
- ``latency_p50_s``, ``latency_p99_s``: virtual seconds from publication to delivery,
  over the online pairs delivered;
- ``datagrams_per_node_per_post``, ``bytes_per_node_per_post``: datagrams (and their
  bytes) sent by all nodes while posts were spreading, divided by the (post, member)
  pairs (everything counts: gossip, announcements, acknowledgements, reconciliation,
  keepalives);
- ``copies_per_delivery``: whole posts received by all members (pushed, asked for or by
  reconciliation) per post delivered;
- ``wall_s``, ``cpu_s`` (the CPU time this process got: on a busy machine far less than
  ``wall_s``) and ``peak_rss_mb`` of this process; ``phases_wall_s`` and
  ``phases_cpu_s`` split them by phase.

The same arguments give the same figures (but these last ones) in interpreters started
with the same ``PYTHONHASHSEED`` (the order of sets follows it; ``shoal sim`` runs with 0).
"""

from __future__ import annotations

import asyncio
import heapq
import math
import random
import resource
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from shoal.core.config import CoreConfig
from shoal.core.groups.posts import Invite
from shoal.core.services.groups import GroupService
from shoal.core.services.groups import Member as CoreMember
from shoal.core.traversal import (
    ADDRESS_AND_PORT_DEPENDENT,
    ADDRESS_DEPENDENT,
    ENDPOINT_INDEPENDENT,
)
from shoal.core.wire import Address
from shoal.errors import LocalProtocolError
from shoal.sim.network import LinkProfile, SimNode
from shoal.sim.virtual import VirtualNetwork, VirtualTimeLoop

__all__ = ["GroupSimResult", "GroupSimSpec", "run_groups"]

HINTS = 3
"""Members already in that a joining member is told of (an invite's hints)."""
ABSENCE = (10.0, 40.0)
"""How long a churned peer stays cut off: uniform between these, in seconds."""
NAT_KINDS = {
    "full-cone": (ENDPOINT_INDEPENDENT, ENDPOINT_INDEPENDENT),
    "restricted": (ENDPOINT_INDEPENDENT, ADDRESS_DEPENDENT),
    "port-restricted": (ENDPOINT_INDEPENDENT, ADDRESS_AND_PORT_DEPENDENT),
    "symmetric": (ADDRESS_AND_PORT_DEPENDENT, ADDRESS_AND_PORT_DEPENDENT),
}
"""NAT kinds: their RFC 4787 (mapping, filtering) behaviours."""


@dataclass(frozen=True, slots=True, kw_only=True)
class GroupSimSpec:
    """What to simulate."""

    peers: int = 100
    groups: int = 1
    posts: int = 20
    churn: float = 0.0
    """Fraction of the peers offline at any time while posts spread."""
    seed: int = 1
    latency: float = 0.03
    jitter: float = 0.01
    loss: float = 0.01
    post_every: float = 0.5
    post_bytes: int = 256
    window: float = 10.0
    """Seconds after a post within which an online member counts as reached in time."""
    settle: float = 15.0
    """Seconds the members get to meet each other after the last join."""
    sync_limit: float = 300.0
    """Virtual seconds the final catch-up may take at most."""
    nat: float = 0.0
    """Fraction of the peers behind a NAT box of their own, of kind ``nat_kind``."""
    nat_kind: str = "port-restricted"
    """A key of ``NAT_KINDS``."""
    dht: bool = False
    """Run the DHT service on every node (members then also find each other through it,
    and every connection it makes between members carries the group too)."""

    def check(self) -> None:
        if self.peers < 2 or self.groups < 1 or self.peers < 2 * self.groups:
            raise LocalProtocolError("a simulation needs at least 2 peers per group",
                                     code="EINVAL")
        if self.posts < 0 or not 0.0 <= self.churn < 1.0:
            raise LocalProtocolError("posts must be >= 0 and churn in [0, 1)", code="EINVAL")
        if not 0.0 <= self.nat <= 1.0 or self.nat_kind not in NAT_KINDS:
            raise LocalProtocolError(f"nat must be in [0, 1], nat_kind one of "
                                     f"{', '.join(NAT_KINDS)}", code="EINVAL")
        if not 0.0 <= self.loss < 1.0 or min(self.latency, self.jitter) < 0:
            raise LocalProtocolError("loss must be in [0, 1), latency and jitter >= 0",
                                     code="EINVAL")


@dataclass(slots=True)
class GroupSimResult:
    """The figures of one run (see the module docstring)."""

    peers: int
    groups: int
    posts: int
    churn: float
    seed: int
    delivery_online: float
    delivery_after_sync: float
    latency_p50_s: float
    latency_p99_s: float
    datagrams_per_node_per_post: float
    bytes_per_node_per_post: float
    copies_per_delivery: float
    online_pairs: int
    links_per_node: float
    setup_virtual_s: float
    sync_virtual_s: float
    wall_s: float = 0.0
    cpu_s: float = 0.0
    peak_rss_mb: float = 0.0
    phases_wall_s: dict[str, float] = field(default_factory=dict)
    phases_cpu_s: dict[str, float] = field(default_factory=dict)

    def figures(self) -> dict[str, Any]:
        """Everything as a JSON-ready dict."""
        return asdict(self)


class _ChurnNetwork(VirtualNetwork):
    """A ``VirtualNetwork`` that counts what is sent and loses what an offline node sends
    (its inbound datagrams are lost by ``SimNetwork`` already)."""

    def __init__(self, seed: int, profile: LinkProfile) -> None:
        super().__init__(seed, profile)
        self.sent = 0
        self.sent_bytes = 0

    def send_from(self, node: SimNode, data: bytes, destination: Address, socket: int) -> None:
        if node.online:
            self.sent += 1
            self.sent_bytes += len(data)
            super().send_from(node, data, destination, socket)


class _Run:
    def __init__(self, spec: GroupSimSpec, net: _ChurnNetwork,
                 progress: Callable[[str], None] | None) -> None:
        self.spec = spec
        self.progress = progress
        self.net = net
        self.rng = random.Random(spec.seed ^ 0x5EED)
        self.loop = asyncio.get_running_loop()
        self.nodes: list[Any] = []
        self.sim_nodes: list[SimNode] = []
        self.services: list[GroupService] = []
        self.group_of: list[int] = []
        self.members: list[list[int]] = [[] for _ in range(spec.groups)]
        self.public: list[list[int]] = [[] for _ in range(spec.groups)]
        """Members not behind a NAT, in the order they joined."""
        self.group_ids: list[bytes] = []
        self.received: dict[bytes, dict[int, float]] = {}
        self.offline: list[list[tuple[float, float]]] = []
        """Each node's absences: (from, until) in virtual seconds."""
        self.back_at: list[tuple[float, int]] = []
        self.walls: dict[str, float] = {}
        self.cpus: dict[str, float] = {}
        self.config = CoreConfig(dht=spec.dht)

    def now(self) -> float:
        return self.loop.time()

    def phase(self, name: str, began: tuple[float, float]) -> None:
        """Note the wall and CPU seconds phase ``name`` took since ``began``."""
        wall, cpu = _clocks()
        self.walls[name] = wall - began[0]
        self.cpus[name] = cpu - began[1]
        if self.progress is not None:
            self.progress(f"{name}: {self.walls[name]:.1f} s wall, {self.cpus[name]:.1f} s CPU, "
                          f"virtual time {self.now():.1f} s")

    def _watch(self, index: int) -> None:
        """Note when each post reaches node ``index`` (its ``post`` events)."""
        manager = self.nodes[index]._group_manager()
        handle = manager.on_event
        received = self.received

        def on_event(kind: str, data: Any) -> None:
            if kind == "post":
                got = received.get(data[1].id)
                if got is not None and index not in got:
                    got[index] = self.loop.time()
            handle(kind, data)

        manager.on_event = on_event

    async def setup(self) -> None:
        spec = self.spec
        began = _clocks()
        mapping, filtering = NAT_KINDS[spec.nat_kind]
        behind = round(spec.nat * (spec.peers - spec.groups))
        self.natted = set(self.rng.sample(range(spec.groups, spec.peers), behind))
        for index in range(spec.peers):
            nat = None
            if index in self.natted:
                nat = self.net.add_nat(f"100.{64 + (index >> 16)}.{index >> 8 & 255}."
                                       f"{index & 255}", mapping=mapping, filtering=filtering)
            node = await self.net.node(config=self.config, nat=nat).start()
            self.nodes.append(node)
            self.sim_nodes.append(self.net.nodes[node.address])
            self.services.append(node.endpoint.service("groups"))
            self.group_of.append(index % spec.groups)
            self.offline.append([])
        self.phase("start", began)
        began = _clocks()
        invites = []
        for group in range(spec.groups):
            admin = self.nodes[group]
            made = await admin.create_group(f"group {group}")
            self.group_ids.append(bytes.fromhex(made.id))
            invites.append(made.invite())
            self.members_added([group])
            self._watch(group)
        joining = list(range(spec.groups, spec.peers))
        wave = max(20, spec.peers // 25)
        for start in range(0, len(joining), wave):
            for index in joining[start:start + wave]:
                group = self.group_of[index]
                # An invite names members at public addresses (the group's admin at least).
                already = self.public[group]
                hints = [already[0]] if len(already) == 1 else \
                    self.rng.sample(already, min(HINTS, len(already)))
                members = [CoreMember(self.services[i].ctx.identity.public_key,
                                      addresses=(self.nodes[i].address,)) for i in hints]
                manager = self.nodes[index]._group_manager()
                keys = Invite.decode(invites[group]).keys()
                manager._add(keys, f"group {group}", None, members, hello=False)
                self._watch(index)
            self.members_added(joining[start:start + wave])
            await asyncio.sleep(0.5)
        await asyncio.sleep(spec.settle)
        self.phase("join", began)

    def members_added(self, indexes: list[int]) -> None:
        for index in indexes:
            self.members[self.group_of[index]].append(index)
            if index not in self.natted:
                self.public[self.group_of[index]].append(index)

    def _set_online(self, index: int, online: bool) -> None:
        node = self.sim_nodes[index]
        node.online = online
        if online:
            start, _ = self.offline[index][-1]
            self.offline[index][-1] = (start, self.now())

    def _churn_step(self, carry: float) -> float:
        """Send some peers away and bring back those whose absence ended."""
        spec = self.spec
        now = self.now()
        while self.back_at and self.back_at[0][0] <= now:
            _, index = heapq.heappop(self.back_at)
            self._set_online(index, True)
        mean = sum(ABSENCE) / 2
        carry += spec.churn * spec.peers / mean
        leaving, carry = int(carry), carry - int(carry)
        self._send_away(leaving, now)
        return carry

    def _send_away(self, count: int, now: float, *, already: bool = False) -> None:
        spec = self.spec
        for _ in range(count):
            index = self.rng.randrange(spec.peers)
            if index < spec.groups or not self.sim_nodes[index].online:  # admins stay
                continue
            length = self.rng.uniform(*ABSENCE)
            if already:  # part of the steady state: some of the absence has passed
                length *= self.rng.random()
            self.sim_nodes[index].online = False
            self.offline[index].append((now, math.inf))
            heapq.heappush(self.back_at, (now + length, index))

    async def spread(self) -> tuple[int, int, int]:
        """Publish the posts under churn; (datagrams, bytes, copies) meanwhile."""
        spec = self.spec
        sent, sent_bytes = self.net.sent, self.net.sent_bytes
        copies = sum(s.copies for s in self.services)
        self._send_away(round(spec.churn * spec.peers), self.now(), already=True)
        carry = 0.0
        self.published: list[tuple[bytes, int, int, float]] = []
        """(post id, group, author, when)."""
        for number in range(spec.posts):
            carry = self._churn_step(carry)
            group = number % spec.groups
            online = [i for i in self.members[group] if self.sim_nodes[i].online]
            author = self.rng.choice(online)
            handle = self.nodes[author]._group_manager().groups[self.group_ids[group]]
            post = await handle.publish(self.rng.randbytes(spec.post_bytes))
            post_id = bytes.fromhex(post.id)
            self.received[post_id] = {author: self.now()}
            self.published.append((post_id, group, author, self.now()))
            await asyncio.sleep(spec.post_every)
        ends = self.now() + spec.window
        while self.now() < ends:
            carry = self._churn_step(carry)
            await asyncio.sleep(1.0)
        return (self.net.sent - sent, self.net.sent_bytes - sent_bytes,
                sum(s.copies for s in self.services) - copies)

    def _online_through(self, index: int, start: float, end: float) -> bool:
        return not any(a < end and b > start for a, b in self.offline[index])

    async def catch_up(self) -> float:
        """Bring everyone back; virtual seconds until each member holds every post."""
        for index in range(self.spec.peers):
            if not self.sim_nodes[index].online:
                self._set_online(index, True)
        self.back_at.clear()
        began = self.now()
        wanted = sum(len(self.members[group]) for _, group, _, _ in self.published)
        while self.now() - began < self.spec.sync_limit:
            if sum(len(got) for got in self.received.values()) >= wanted:
                break
            await asyncio.sleep(1.0)
        return self.now() - began


async def _simulate(spec: GroupSimSpec, net: _ChurnNetwork,
                    progress: Callable[[str], None] | None) -> GroupSimResult:
    run = _Run(spec, net, progress)
    await run.setup()
    setup_virtual = run.now()
    began = _clocks()
    sent, sent_bytes, copies = await run.spread()
    run.phase("posts", began)
    latencies: list[float] = []
    online_pairs = delivered_online = delivered_run = 0
    for post_id, group, author, when in run.published:
        got = run.received[post_id]
        for index in run.members[group]:
            if index == author:
                continue
            at = got.get(index)
            if at is not None:
                delivered_run += 1
            if run._online_through(index, when, when + spec.window):
                online_pairs += 1
                if at is not None and at - when <= spec.window:
                    delivered_online += 1
                    latencies.append(at - when)
    began = _clocks()
    sync_virtual = await run.catch_up()
    run.phase("catch_up", began)
    pairs = sum(len(run.members[group]) - 1 for _, group, _, _ in run.published)
    after = sum(len(run.received[post_id]) - 1 for post_id, _, _, _ in run.published)
    latencies.sort()
    links = sum(len(s.links) for s in run.services) / spec.peers
    for node in run.nodes:
        await node.close()
    return GroupSimResult(
        peers=spec.peers, groups=spec.groups, posts=spec.posts, churn=spec.churn,
        seed=spec.seed,
        delivery_online=round(delivered_online / online_pairs, 6) if online_pairs else 1.0,
        delivery_after_sync=round(after / pairs, 6) if pairs else 1.0,
        latency_p50_s=round(_quantile(latencies, 0.5), 4),
        latency_p99_s=round(_quantile(latencies, 0.99), 4),
        datagrams_per_node_per_post=round(sent / pairs, 3) if pairs else 0.0,
        bytes_per_node_per_post=round(sent_bytes / pairs, 1) if pairs else 0.0,
        copies_per_delivery=round(copies / delivered_run, 3) if delivered_run else 0.0,
        online_pairs=online_pairs, links_per_node=round(links, 2),
        setup_virtual_s=round(setup_virtual, 3), sync_virtual_s=round(sync_virtual, 3),
        phases_wall_s={k: round(v, 2) for k, v in run.walls.items()},
        phases_cpu_s={k: round(v, 2) for k, v in run.cpus.items()},
    )


def _clocks() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _quantile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    return values[min(len(values) - 1, int(q * len(values)))]


def run_groups(spec: GroupSimSpec, progress: Callable[[str], None] | None = None
               ) -> GroupSimResult:
    """Run one simulation (see the module docstring); its figures. ``progress`` is told
    of each phase as it ends (a line of text)."""
    spec.check()
    began, cpu = _clocks()
    profile = LinkProfile(latency=spec.latency, jitter=spec.jitter, loss=spec.loss)

    async def entry() -> GroupSimResult:
        return await _simulate(spec, _ChurnNetwork(spec.seed, profile), progress)

    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        result = runner.run(entry())
    result.wall_s = round(time.perf_counter() - began, 2)
    result.cpu_s = round(time.process_time() - cpu, 2)
    result.peak_rss_mb = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return result
