"""A seeded, virtual-time network of ``Endpoint`` state machines."""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from shoal.core import events as ev
from shoal.core.config import CoreConfig
from shoal.core.endpoint import Endpoint
from shoal.core.services.base import Service
from shoal.core.wire import Address
from shoal.identity import Identity
from shoal.sim.nat import SimNat

POOL_PORT_BASE = 20000


@dataclass(frozen=True, slots=True, kw_only=True)
class LinkProfile:
    """How the simulated network treats every datagram."""

    latency: float = 0.010
    """One-way delay in seconds."""
    jitter: float = 0.0
    """Extra uniform random delay up to this many seconds (this reorders datagrams)."""
    loss: float = 0.0
    """Probability that a datagram is dropped."""
    duplicate: float = 0.0
    """Probability that a datagram is delivered twice."""


@dataclass(slots=True)
class SimNode:
    """One simulated node: its endpoint, address and the events it produced.

    Extra sockets the core asks for get ports ``POOL_PORT_BASE + id`` on the node's IP.
    """

    endpoint: Endpoint
    address: Address
    events: list[ev.Event] = field(default_factory=list)
    online: bool = True
    sockets: dict[int, Address] = field(default_factory=dict)
    nat: SimNat | None = None
    """The NAT this node sits behind (None: it has a public address)."""
    watched: float | None = None
    """The deadline the network last noted for this node's timer."""
    reads: bool = True
    """Its application reads every message as it arrives (False: it never reads, and
    what it received stays in its receive budgets)."""

    @property
    def peer_id(self) -> str:
        return self.endpoint.peer_id

    def received(self) -> list[ev.MessageReceived]:
        return [e for e in self.events if isinstance(e, ev.MessageReceived)]


class SimNetwork:
    """Nodes joined by one shared link model, advanced in virtual time."""

    def __init__(self, seed: int = 0, profile: LinkProfile | None = None) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.profile = profile or LinkProfile()
        self.now = 0.0
        self.nodes: dict[Address, SimNode] = {}
        self._bound: dict[Address, tuple[SimNode, int]] = {}
        self._nats: dict[str, SimNat] = {}
        self._queue: list[tuple[float, int, Address, Address, bytes]] = []
        self._sequence = 0
        self._timers: list[tuple[float, int, SimNode]] = []
        """Nodes' timer deadlines, pushed whenever a node may have changed its own; an
        entry is stale (and skipped) once the node's deadline differs from it."""
        self._timer_sequence = 0
        self.delivered = 0
        self.dropped = 0
        self.tap: Callable[[bytes, Address, Address], bytes | None] | None = None
        """Optional hook that sees (data, src, dst) and may replace or drop (None) a datagram."""
        self.access_delay: dict[str, float] = {}
        """Extra one-way delay of a site's access link, by the site's public IP: a datagram
        from one site to another waits for both links on top of ``profile.latency``."""

    def add_nat(self, public_ip: str, *, mapping: str, filtering: str) -> SimNat:
        """A NAT box with ``public_ip``; put nodes behind it with ``add_node(nat=...)``."""
        nat = SimNat(public_ip, mapping=mapping, filtering=filtering, rng=self.rng)
        self._nats[public_ip] = nat
        return nat

    def add_node(
        self,
        *,
        config: CoreConfig | None = None,
        address: Address | None = None,
        identity: Identity | None = None,
        nat: SimNat | None = None,
        services: Iterable[Service] = (),
    ) -> SimNode:
        index = len(self.nodes) + 1
        address = address or (f"10.0.{index // 250}.{index % 250 + 1}", 7000)
        identity = identity or Identity(self.rng.randbytes(32))
        endpoint = Endpoint(identity, random_bytes=self.rng.randbytes, config=config,
                            services=services)
        endpoint.set_local_addresses([address])
        node = SimNode(endpoint, address, sockets={0: address}, nat=nat)
        self.nodes[address] = node
        self._bound[address] = (node, 0)
        self._watch(node)
        return node

    def bind(self, node: SimNode, socket: int, address: Address) -> None:
        """Give ``node`` another socket (e.g. a STUN server's alternate address)."""
        node.sockets[socket] = address
        self._bound[address] = (node, socket)

    def _behind(self, nat: SimNat, address: Address) -> bool:
        bound = self._bound.get(address)
        return bound is not None and bound[0].nat is nat

    def move(self, node: SimNode, address: Address) -> None:
        """Give ``node``'s own socket a new address, as a NAT rebinding would."""
        del self.nodes[node.address]
        self._bound.pop(node.address, None)
        node.address = address
        self.nodes[address] = node
        self.bind(node, 0, address)

    def flush(self, node: SimNode) -> None:
        """Put a node's outgoing datagrams on the wire and collect its events."""
        endpoint = node.endpoint
        self._collect(node)  # reading messages may grant room: sent below
        for data, destination, socket in endpoint.datagrams_to_send(self.now):
            self.send_from(node, data, destination, socket)
        for socket in endpoint.sockets_to_close():
            self.close_socket(node, socket)
        self._collect(node)
        self._watch(node)

    def _collect(self, node: SimNode) -> None:
        endpoint = node.endpoint
        while (event := endpoint.next_event()) is not None:
            node.events.append(event)
            if node.reads and isinstance(event, ev.MessageReceived):
                endpoint.message_read(event)

    def _watch(self, node: SimNode) -> None:
        """Note ``node``'s timer deadline (after anything that may have moved it)."""
        deadline = node.endpoint.get_timer()
        if deadline is None or deadline == node.watched:
            return
        node.watched = deadline
        self._timer_sequence += 1
        heapq.heappush(self._timers, (deadline, self._timer_sequence, node))
        if len(self._timers) > 4 * len(self.nodes) + 1024:
            self._rewatch()

    def _rewatch(self) -> None:
        """Rebuild the timer heap from every node (drops stale entries; sees changes
        made to endpoints outside ``flush``, as tests do between runs)."""
        self._timers = []
        for node in self.nodes.values():
            node.watched = None
            self._watch(node)

    def _next_timer(self) -> tuple[SimNode | None, float | None]:
        """The online node whose timer fires first, and when: O(log n), not a scan."""
        timers = self._timers
        while timers:
            deadline, _, node = timers[0]
            current = node.endpoint.get_timer()
            if node.online and current == deadline:
                return node, deadline
            heapq.heappop(timers)
            if node.watched == deadline:
                node.watched = None  # noted again by the next flush or run
                if node.online and current is not None:
                    self._watch(node)  # its deadline moved without a flush
        return None, None

    def send_from(self, node: SimNode, data: bytes, destination: Address, socket: int) -> None:
        """Send ``data`` from ``node``'s socket ``socket`` (bound on first use), through
        its NAT when the destination lies outside it."""
        source = node.sockets.get(socket)
        if source is None:
            source = (node.address[0], POOL_PORT_BASE + socket)
            self.bind(node, socket, source)
        if node.nat is not None and not self._behind(node.nat, destination):
            source = node.nat.outbound(source, destination)
        self._transmit(data, source, destination)

    def close_socket(self, node: SimNode, socket: int) -> None:
        address = node.sockets.pop(socket, None)
        if address is not None:
            self._bound.pop(address, None)

    def _transmit(self, data: bytes, source: Address, destination: Address) -> None:
        if self.tap is not None:
            replaced = self.tap(data, source, destination)
            if replaced is None:
                self.dropped += 1
                return
            data = replaced
        profile = self.profile
        copies = 2 if profile.duplicate and self.rng.random() < profile.duplicate else 1
        for _ in range(copies):
            if profile.loss and self.rng.random() < profile.loss:
                self.dropped += 1
                continue
            delay = profile.latency + (self.rng.random() * profile.jitter if profile.jitter else 0)
            if self.access_delay:
                delay += (self.access_delay.get(source[0], 0.0)
                          + self.access_delay.get(destination[0], 0.0))
            self._enqueue(self.now + delay, source, destination, data)

    def _enqueue(self, when: float, source: Address, destination: Address, data: bytes) -> None:
        self._sequence += 1
        heapq.heappush(self._queue, (when, self._sequence, source, destination, data))

    def _route(self, source: Address, destination: Address) -> tuple[SimNode, int] | None:
        """The node and socket a datagram reaches (through a NAT), or None when it dies.

        A host behind a NAT is reached through that NAT, or from its own LAN: its private
        address means nothing to the rest of the network."""
        nat = self._nats.get(destination[0])
        if nat is not None:
            private = nat.inbound(source, destination[1])
            if private is None:
                self.dropped += 1
                return None
            destination = private
        bound = self._bound.get(destination)
        if bound is None or not bound[0].online or (
            nat is None and bound[0].nat is not None and not self._behind(bound[0].nat, source)
        ):
            self.dropped += 1
            return None
        self.delivered += 1
        return bound

    def step(self) -> bool:
        """Advance to the next delivery or timer; False when nothing is left to do."""
        next_delivery = self._queue[0][0] if self._queue else None
        timer_node, next_timer = self._next_timer()
        if next_delivery is None and next_timer is None:
            return False
        if next_timer is not None and (next_delivery is None or next_timer < next_delivery):
            self.now = max(self.now, next_timer)
            assert timer_node is not None
            timer_node.endpoint.handle_timer(self.now)
            self.flush(timer_node)
            return True
        when, _, source, destination, data = heapq.heappop(self._queue)
        self.now = max(self.now, when)
        route = self._route(source, destination)
        if route is not None:
            node, socket = route
            node.endpoint.receive_datagram(data, source, self.now, socket)
            self.flush(node)
        return True

    def run(self, duration: float, until: Callable[[], bool] | None = None) -> bool:
        """Run for up to ``duration`` virtual seconds, or until ``until()`` is true.

        Returns whether ``until`` became true (True when no condition is given).
        """
        end = self.now + duration
        self._rewatch()
        while True:
            if until is not None and until():
                return True
            next_time = self._next_time()
            if next_time is None or next_time > end:
                self.now = end
                return until is None or until()
            self.step()

    def _next_time(self) -> float | None:
        times = [self._queue[0][0]] if self._queue else []
        _, deadline = self._next_timer()
        if deadline is not None:
            times.append(deadline)
        return min(times) if times else None
