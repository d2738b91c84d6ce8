"""``shoal.Node`` in virtual time: an asyncio loop whose clock jumps, over a ``SimNetwork``.

Code written against ``shoal.Node`` runs here unchanged. The loop never sleeps: when
every task waits, its clock jumps to the next deadline (a timer, ``asyncio.sleep``, a
``wait_for`` timeout or a datagram's arrival), so an hour of protocol time with thousands
of nodes passes in as long as the work takes to compute. Runs are seeded and replayable::

    async def main(net: sim.VirtualNetwork) -> None:
        async with net.node() as alice, net.node() as bob:
            await alice.send(bob.peer_id, b"hi")

    sim.run(main, seed=1)
"""

from __future__ import annotations

import asyncio
import heapq
import selectors
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from shoal.aio.driver import LoopDriver
from shoal.core import events as ev
from shoal.core.endpoint import Endpoint
from shoal.core.wire import Address
from shoal.errors import LocalProtocolError, ShoalError
from shoal.identity import Identity
from shoal.sim.nat import SimNat
from shoal.sim.network import LinkProfile, SimNetwork, SimNode

T = TypeVar("T")

__all__ = ["VirtualNetwork", "VirtualTimeLoop", "run"]


POLL_EVERY = 16
"""Loop iterations with callbacks ready between polls of the real selector."""


class _JumpingSelector(selectors.BaseSelector):
    """Polls the real selector without blocking; a wait with nothing ready moves the
    loop's virtual clock forward by the wait instead of sleeping."""

    def __init__(self, loop: VirtualTimeLoop) -> None:
        self._real = selectors.DefaultSelector()
        self._loop = loop
        self._skipped = 0

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._real.register(fileobj, events, data)

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._real.unregister(fileobj)

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._real.modify(fileobj, events, data)

    def get_map(self) -> Any:
        return self._real.get_map()

    def close(self) -> None:
        self._real.close()

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout == 0:
            # Callbacks are ready: the clock stands still, so a poll (a system call per
            # loop iteration) can wait a few iterations; one always comes before a jump.
            self._skipped += 1
            if self._skipped < POLL_EVERY:
                return []
        self._skipped = 0
        ready = self._real.select(0)
        if ready or timeout == 0:
            return ready
        if timeout is None:
            # Nothing is scheduled: only another thread (an executor) can wake the loop.
            return self._real.select(None)
        self._loop.advance(timeout)
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop on a virtual clock that starts at 0 and advances only when idle."""

    def __init__(self) -> None:
        self._virtual_now = 0.0
        super().__init__(selector=_JumpingSelector(self))

    def time(self) -> float:
        return self._virtual_now

    def advance(self, seconds: float) -> None:
        self._virtual_now += max(0.0, seconds)


class _SimDriver(LoopDriver):
    """Runs one node's endpoint on a ``VirtualNetwork``, as ``UdpDriver`` does on UDP."""

    def __init__(self, network: VirtualNetwork, node: SimNode,
                 on_event: Callable[[ev.Event], None]) -> None:
        super().__init__(node.endpoint, on_event)
        self._network = network
        self._node = node

    @property
    def local_address(self) -> Address:
        return self._node.address

    def local_addresses(self) -> list[Address]:
        return [self._node.address]

    def now(self) -> float:
        return self._loop.time()

    def receive(self, data: bytes, source: Address, socket: int) -> None:
        if not self._closed:
            self.endpoint.receive_datagram(data, source, self._loop.time(), socket)
            self.flush_soon()

    def _send(self, data: bytes, address: Address, socket_id: int) -> None:
        self._network.now = self._loop.time()
        self._network.send_from(self._node, data, address, socket_id)

    def _close_socket(self, socket_id: int) -> None:
        self._network.close_socket(self._node, socket_id)

    def _release(self) -> None:
        self._network.detach(self._node)


class VirtualNetwork(SimNetwork):
    """A ``SimNetwork`` whose datagrams travel as callbacks of a ``VirtualTimeLoop``, for
    ``shoal.Node`` objects made with ``node()``. Create it inside the loop (``run`` does)."""

    def __init__(self, seed: int = 0, profile: LinkProfile | None = None) -> None:
        super().__init__(seed, profile)
        self.loop = asyncio.get_running_loop()
        if not isinstance(self.loop, VirtualTimeLoop):
            raise LocalProtocolError("a VirtualNetwork runs in shoal.sim.run (virtual time)")
        self._drivers: dict[int, _SimDriver] = {}
        self._wakeup: asyncio.TimerHandle | None = None
        self._next_ip = 0

    def node(self, *, nat: SimNat | None = None, address: Address | None = None,
             identity: Identity | None = None, **options: Any) -> Any:
        """A ``shoal.Node`` (not yet started) on this network, behind ``nat`` if given;
        ``options`` are ``Node``'s (``introducers``, ``introducer``, ``config``...)."""
        from shoal.aio.node import Node

        if identity is None:
            identity = Identity(self.rng.randbytes(32))
        return Node(identity, network=_Placement(self, nat, address), **options)

    def _attach(self, endpoint: Endpoint, placement: _Placement,
                on_event: Callable[[ev.Event], None]) -> _SimDriver:
        address = placement.address or self._free_address()
        if address in self._bound:
            raise ShoalError(f"cannot listen on {address[0]}:{address[1]}: in use",
                             code="EADDRINUSE")
        endpoint.set_local_addresses([address])
        node = SimNode(endpoint, address, sockets={0: address}, nat=placement.nat)
        self.nodes[address] = node
        self._bound[address] = (node, 0)
        driver = self._drivers[id(node)] = _SimDriver(self, node, on_event)
        return driver

    def detach(self, node: SimNode) -> None:
        """Take a closed node off the network: its addresses stop receiving."""
        node.online = False
        for socket in list(node.sockets):
            self.close_socket(node, socket)
        self.nodes.pop(node.address, None)
        self._drivers.pop(id(node), None)

    def _free_address(self) -> Address:
        while True:
            self._next_ip += 1
            address = (f"10.{self._next_ip >> 16 & 255}.{self._next_ip >> 8 & 255}."
                       f"{self._next_ip & 255}", 7000)
            if address not in self._bound and self._next_ip & 255:
                return address

    def _enqueue(self, when: float, source: Address, destination: Address, data: bytes) -> None:
        # The network's own queue keeps datagrams due at one instant in the order sent
        # (the loop's timer heap does not); one loop timer waits for the earliest.
        super()._enqueue(when, source, destination, data)
        if self._wakeup is None or when < self._wakeup.when():
            if self._wakeup is not None:
                self._wakeup.cancel()
            self._wakeup = self.loop.call_at(when, self._arrive)

    def _arrive(self) -> None:
        self._wakeup = None
        queue, now = self._queue, self.loop.time()
        while queue and queue[0][0] <= now:
            _, _, source, destination, data = heapq.heappop(queue)
            self.now = now
            route = self._route(source, destination)
            if route is not None:
                node, socket = route
                driver = self._drivers.get(id(node))
                if driver is not None:
                    driver.receive(data, source, socket)
        if queue:
            self._wakeup = self.loop.call_at(queue[0][0], self._arrive)

    def step(self) -> bool:
        raise LocalProtocolError("a VirtualNetwork advances with its event loop, not step()")

    def run(self, duration: float, until: Callable[[], bool] | None = None) -> bool:
        raise LocalProtocolError("a VirtualNetwork advances with its event loop: "
                                 "use asyncio.sleep() in virtual time")


class _Placement:
    """Where a ``Node`` made by ``VirtualNetwork.node`` lives; ``Node.start`` attaches it."""

    def __init__(self, network: VirtualNetwork, nat: SimNat | None,
                 address: Address | None) -> None:
        self.network = network
        self.nat = nat
        self.address = address

    def random_bytes(self, count: int) -> bytes:
        return self.network.rng.randbytes(count)

    def attach(self, endpoint: Endpoint, on_event: Callable[[ev.Event], None]) -> _SimDriver:
        return self.network._attach(endpoint, self, on_event)


def run(main: Callable[[VirtualNetwork], Awaitable[T]], *, seed: int = 0,
        profile: LinkProfile | None = None) -> T:
    """Run ``main(network)`` to completion in virtual time on a fresh seeded network and
    return its result (as ``asyncio.run`` does in real time)."""

    async def entry() -> T:
        return await main(VirtualNetwork(seed, profile))

    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        return runner.run(entry())
