"""What runs a node's endpoint in an asyncio loop, whatever carries its datagrams.

``LoopDriver`` holds the part every driver shares: it flushes the endpoint (datagrams
out, sockets closed, events delivered) and keeps one loop timer on the endpoint's next
deadline. Subclasses say how a datagram leaves: ``UdpDriver`` on real sockets, the
simulator's driver over a virtual network.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from shoal.core import events as ev
from shoal.core.endpoint import Endpoint
from shoal.core.wire import Address


class LoopDriver:
    """Runs ``endpoint`` in the running loop; its events go to ``on_event``."""

    def __init__(self, endpoint: Endpoint, on_event: Callable[[ev.Event], None]) -> None:
        self.endpoint = endpoint
        self._on_event = on_event
        self._loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._flush_scheduled = False
        self._closed = False

    @property
    def local_address(self) -> Address:
        raise NotImplementedError

    def local_addresses(self) -> list[Address]:
        """Every address peers may reach this node at."""
        raise NotImplementedError

    def now(self) -> float:
        raise NotImplementedError

    def _send(self, data: bytes, address: Address, socket_id: int) -> None:
        raise NotImplementedError

    def _send_all(self, datagrams: list[tuple[bytes, Address, int]]) -> None:
        """Send one flush's datagrams; a driver that can batch them overrides this."""
        send = self._send
        for data, address, socket_id in datagrams:
            send(data, address, socket_id)

    def _close_socket(self, socket_id: int) -> None:
        raise NotImplementedError

    def _release(self) -> None:
        """Free what carries the datagrams, once the endpoint said goodbye."""

    def flush_soon(self) -> None:
        """Flush once the current callback returns: commands issued together (many sends
        in one loop iteration) then share one pass, and their packets one burst."""
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self.flush)

    def flush(self) -> None:
        """Send what the core produced, deliver its events and re-arm the timer."""
        self._flush_scheduled = False
        if self._closed:
            return
        endpoint = self.endpoint
        self._send_all(endpoint.datagrams_to_send(self.now()))
        for socket_id in endpoint.sockets_to_close():
            self._close_socket(socket_id)
        while (event := endpoint.next_event()) is not None:
            self._on_event(event)
        self._arm_timer()

    def _arm_timer(self) -> None:
        # A later deadline leaves the armed timer alone: it fires early, finds nothing due
        # and re-arms. Most input pushes a deadline back (a keepalive moves its
        # connection's idle deadline), so this saves a cancel and a new loop timer per
        # datagram for one spurious wakeup now and then.
        deadline = self.endpoint.get_timer()
        armed = self._timer_at
        if deadline is None or (armed is not None and armed <= deadline):
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = deadline
        self._timer = self._loop.call_later(max(0.0, deadline - self.now()), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        self.endpoint.handle_timer(self.now())
        self.flush()

    def close(self) -> None:
        if self._closed:
            return
        self.endpoint.close(self.now())
        self.flush()
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        self._release()
