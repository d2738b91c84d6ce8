"""Many sans-IO endpoints, each on a real loopback socket of its own, served by one
selector loop: the attackers (and the sans-IO bystanders) of the flood benches."""

from __future__ import annotations

import contextlib
import heapq
import os
import resource
import selectors
import socket
import time
from collections.abc import Callable

from shoal.core.config import CoreConfig
from shoal.core.endpoint import Endpoint
from shoal.identity import Identity


def raise_file_limit() -> None:
    """Allow as many open sockets as the hard limit does."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Fleet:
    """Endpoints on sockets of their own; ``pump`` moves their datagrams and timers."""

    def __init__(self, config: CoreConfig | None = None) -> None:
        self.config = config or CoreConfig(nat_check=False)
        self.selector = selectors.DefaultSelector()
        self.members: list[tuple[Endpoint, socket.socket]] = []
        self._index: dict[int, int] = {}
        self.bytes_out = self.bytes_in = 0
        self._timers: list[tuple[float, int]] = []
        self.received: list[tuple[Endpoint, object]] = []
        """Events of the kinds passed to ``keep``, with the endpoint that produced them."""
        self.keep: tuple[type, ...] = ()

    def add(self, host: str) -> Endpoint:
        """A new endpoint with a fresh identity on ``host``, any port."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((host, 0))
        sock.setblocking(False)
        endpoint = Endpoint(Identity.generate(), random_bytes=os.urandom, config=self.config)
        endpoint.set_local_addresses([sock.getsockname()])
        self._index[id(endpoint)] = len(self.members)
        self.selector.register(sock, selectors.EVENT_READ, len(self.members))
        self.members.append((endpoint, sock))
        return endpoint

    def flush(self, endpoint: Endpoint) -> None:
        """Send what ``endpoint`` has queued and re-arm its timer."""
        self._flush(self._index[id(endpoint)], time.monotonic())

    def _flush(self, index: int, now: float) -> None:
        endpoint, sock = self.members[index]
        for datagram, destination, _ in endpoint.datagrams_to_send(now):
            with contextlib.suppress(BlockingIOError):
                self.bytes_out += sock.sendto(datagram, destination)
        while (event := endpoint.next_event()) is not None:
            if isinstance(event, self.keep):
                self.received.append((endpoint, event))
        deadline = endpoint.get_timer()
        if deadline is not None:
            heapq.heappush(self._timers, (deadline, index))

    def pump(self, seconds: float) -> None:
        """Serve every member's datagrams and timers for ``seconds``."""
        end = time.monotonic() + seconds
        while True:
            now = time.monotonic()
            wait = min(end, self._timers[0][0] if self._timers else end) - now
            for key, _ in self.selector.select(max(0.0, wait)):
                index: int = key.data
                endpoint, sock = self.members[index]
                for _ in range(64):
                    try:
                        data, source = sock.recvfrom(2048)
                    except BlockingIOError:
                        break
                    self.bytes_in += len(data)
                    endpoint.receive_datagram(data, source, time.monotonic())
                self._flush(index, time.monotonic())
            now = time.monotonic()
            while self._timers and self._timers[0][0] <= now:
                deadline, index = heapq.heappop(self._timers)
                endpoint = self.members[index][0]
                if endpoint.get_timer() == deadline:
                    endpoint.handle_timer(now)
                    self._flush(index, now)
            if now >= end:
                return

    def pump_until(self, done: Callable[[], bool], timeout: float) -> bool:
        """Pump until ``done()`` or ``timeout`` seconds; whether ``done()`` came true."""
        end = time.monotonic() + timeout
        while not done():
            if time.monotonic() >= end:
                return False
            self.pump(0.01)
        return True

    def confirmed(self) -> int:
        """Connections the far side has confirmed (its HANDSHAKE_DONE arrived)."""
        return sum(1 for endpoint, _ in self.members
                   for connection in endpoint.connections.values() if connection.confirmed)
