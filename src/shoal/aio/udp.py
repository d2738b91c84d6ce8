"""The asyncio driver: UDP sockets, drained in batches, feeding an ``Endpoint``.

The stdlib's datagram transport performs one ``recvfrom`` per event-loop wake-up; this
driver registers a reader callback that drains up to ``BATCH`` datagrams at a time, then
flushes whatever the core wants to send once, so ACKs for a whole batch share packets.

The node's own socket is id 0. The core may name more: a positive id is a pool socket
for hole punching, opened here the first time a datagram is sent from it (same family
and host as socket 0, any port) and closed when the core says so; negative ids are
sockets the owner registered with ``add_socket`` (a STUN server's alternate addresses).
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import time
from collections.abc import Callable

from shoal.aio.driver import LoopDriver
from shoal.core import events as ev
from shoal.core.endpoint import Endpoint
from shoal.core.handshake import EARLY_WINDOW
from shoal.core.wire import Address
from shoal.errors import ShoalError, os_error_code
from shoal.net import format_address, local_addresses

BATCH = 64
RECV_SIZE = 2048
SOCKET_BUFFER = 4 << 20


def normalize_address(raw: tuple) -> Address:
    """(host, port) with IPv4-mapped IPv6 addresses turned back into IPv4."""
    host, port = raw[0], raw[1]
    if ":" in host:
        if "%" in host:
            host = host.split("%", 1)[0]
        mapped = ipaddress.IPv6Address(host).ipv4_mapped
        if mapped is not None:
            host = str(mapped)
    return host, port


def open_udp_socket(host: str, port: int) -> socket.socket:
    """A non-blocking UDP socket bound to host:port; "::" gives a dual-stack socket."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)
        sock.bind((host, port))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock



def bind_udp(address: Address) -> socket.socket:
    """``open_udp_socket`` on ``address``, failing with a ``ShoalError`` that names the
    address and the socket error (``EADDRINUSE``, ``EADDRNOTAVAIL``, ...)."""
    try:
        return open_udp_socket(*address)
    except OSError as exc:
        raise ShoalError(f"cannot listen on {format_address(address)}: {exc.strerror}",
                         code=os_error_code(exc)) from exc


class UdpDriver(LoopDriver):
    """Runs ``endpoint`` on ``sock`` in the running loop; events go to ``on_event``."""

    def __init__(
        self,
        endpoint: Endpoint,
        sock: socket.socket,
        on_event: Callable[[ev.Event], None],
    ) -> None:
        super().__init__(endpoint, on_event)
        # The core's clock is monotonic; early messages are stamped with the wall clock.
        endpoint.wall_offset = time.time() - time.monotonic()
        # A process may restart with the same key: take no early message that an earlier
        # run could have taken (see ``Endpoint.early_from``).
        endpoint.early_from = time.time() + EARLY_WINDOW
        self.sock = sock
        self._sockets: dict[int, socket.socket] = {}
        self._dual_stack = sock.family == socket.AF_INET6
        self.send_errors = 0
        self.add_socket(0, sock)

    def add_socket(self, socket_id: int, sock: socket.socket) -> None:
        """Feed datagrams arriving on ``sock`` to the core as socket ``socket_id``."""
        self._sockets[socket_id] = sock
        if socket_id == 0:
            self._loop.add_reader(sock.fileno(), self._on_readable)
        else:
            self._loop.add_reader(sock.fileno(), self._on_readable_extra, socket_id)

    @property
    def local_address(self) -> Address:
        return normalize_address(self.sock.getsockname())

    def local_addresses(self) -> list[Address]:
        return local_addresses(self.local_address)

    def now(self) -> float:
        # Not loop.time(): uvloop's clock only advances once per loop iteration, in ms.
        return time.monotonic()

    def _on_readable(self) -> None:
        endpoint = self.endpoint
        recvfrom = self.sock.recvfrom
        now = time.monotonic()
        for _ in range(BATCH):
            try:
                data, raw = recvfrom(RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:  # ICMP errors surface here (ECONNREFUSED); nothing to read
                continue
            endpoint.receive_datagram(data, normalize_address(raw), now)
        self.flush()

    def _on_readable_extra(self, socket_id: int) -> None:
        sock = self._sockets.get(socket_id)
        if sock is None:
            return
        now = time.monotonic()
        for _ in range(BATCH):
            try:
                data, raw = sock.recvfrom(RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                continue
            self.endpoint.receive_datagram(data, normalize_address(raw), now, socket_id)
        self.flush()

    def _extra_socket(self, socket_id: int) -> socket.socket | None:
        sock = self._sockets.get(socket_id)
        if sock is None and socket_id > 0:
            host = self.sock.getsockname()[0]
            try:
                sock = open_udp_socket(host, 0)
            except OSError:
                return None
            self.add_socket(socket_id, sock)
        return sock

    def _send(self, data: bytes, address: Address, socket_id: int) -> None:
        if self._dual_stack and ":" not in address[0]:
            address = (f"::ffff:{address[0]}", address[1])
        try:
            if socket_id == 0:
                self.sock.sendto(data, address)
            elif (extra := self._extra_socket(socket_id)) is not None:
                extra.sendto(data, address)
        except OSError:  # a full buffer loses the datagram, as the network may
            self.send_errors += 1

    def _release(self) -> None:
        for socket_id in list(self._sockets):
            self._close_socket(socket_id)

    def _close_socket(self, socket_id: int) -> None:
        sock = self._sockets.pop(socket_id, None)
        if sock is not None:
            self._loop.remove_reader(sock.fileno())
            sock.close()
