"""The asyncio driver: UDP sockets read and written in batches, feeding an ``Endpoint``.

``DatagramSocket`` drains every datagram a socket holds per wake-up (up to a bound) into
one preallocated buffer, and sends what a flush produced in as few system calls as it
can. On Linux it uses UDP segmentation offload: a run of equal-size datagrams to one
address leaves in one ``sendmsg`` with a ``UDP_SEGMENT`` size (GSO), and the receiving
socket asks for ``UDP_GRO``, so that such runs arrive as one buffer the socket splits by
the segment size the kernel reports. Where the kernel or the socket refuses either, the
socket falls back to one datagram per call and counts it; ``SHOAL_UDP_OFFLOAD=0`` turns
both off. ``IoStats`` counts what happened (``Node.io_stats``).

The node's own socket is id 0. The core may name more: a positive id is a pool socket
for hole punching, opened here the first time a datagram is sent from it (same family
and host as socket 0, any port) and closed when the core says so; negative ids are
sockets the owner registered with ``add_socket`` (a STUN server's alternate addresses).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import os
import socket
import struct
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass

from shoal.aio.driver import LoopDriver
from shoal.core import events as ev
from shoal.core.endpoint import Endpoint
from shoal.core.handshake import EARLY_WINDOW
from shoal.core.wire import Address
from shoal.errors import ShoalError, os_error_code
from shoal.net import format_address, local_addresses

RECV_SIZE = 2048
"""The largest datagram taken in; a longer one is dropped and counted."""
SOCKET_BUFFER = 4 << 20
READS_PER_WAKEUP = 64
DATAGRAMS_PER_WAKEUP = 512
"""Receive calls and datagrams per wake-up at most, so that one busy socket neither
starves the loop nor holds its acknowledgements back for long."""
SOL_UDP = 17
UDP_SEGMENT = 103
UDP_GRO = 104
GRO_BUFFER = 65536
GSO_MAX_SEGMENTS = 64
GSO_MAX_BYTES = 65000
"""What one GSO send may carry: within a UDP datagram's 65,507 bytes, and the kernel's
segment count."""
BACKLOG = 4096
"""Datagrams held while the socket's send buffer is full; beyond, they are dropped."""
_REFUSALS = frozenset({errno.EIO, errno.EINVAL, errno.ENOPROTOOPT, errno.EOPNOTSUPP,
                       errno.EMSGSIZE})
"""What a kernel or socket without segmentation offload answers to it."""
IP_MTU_DISCOVER = 10
IPV6_MTU_DISCOVER = 23
PMTUDISC_PROBE = 3
"""Linux's ``IP_PMTUDISC_PROBE`` (and ``IPV6_PMTUDISC_PROBE``): every datagram leaves
with Don't Fragment set, and the kernel neither fragments it nor holds it to a path MTU
learnt from ICMP (which anyone can forge). The connection's own search (``core.pmtud``,
RFC 8899) decides the size; a datagram beyond the interface's MTU fails at once."""
_GRO_ANCILLARY = socket.CMSG_SPACE(4)
_SEGMENT_SIZE = struct.Struct("=H")


def offload_wanted() -> bool:
    """UDP GSO and GRO are tried unless ``SHOAL_UDP_OFFLOAD`` is "0" (or "off", "no")."""
    return os.environ.get("SHOAL_UDP_OFFLOAD", "1").strip().lower() not in ("0", "off", "no")


@dataclass(slots=True)
class IoStats:
    """What a driver's sockets did: datagrams and bytes each way, the system calls that
    moved them, how many went as GSO batches or came as GRO buffers, and what was
    dropped or refused."""

    rx_datagrams: int = 0
    rx_bytes: int = 0
    rx_syscalls: int = 0
    rx_gro_buffers: int = 0
    """Receive calls that returned several datagrams coalesced by the kernel."""
    rx_gro_segments: int = 0
    rx_truncated: int = 0
    """Datagrams longer than the receive buffer (the kernel cut them): dropped."""
    rx_oversize: int = 0
    """Datagrams (or GRO segments) longer than ``RECV_SIZE``: dropped."""
    rx_errors: int = 0
    tx_datagrams: int = 0
    tx_bytes: int = 0
    tx_syscalls: int = 0
    tx_gso_batches: int = 0
    tx_gso_segments: int = 0
    tx_blocked: int = 0
    """Times the send buffer was full and datagrams waited for the socket."""
    tx_dropped: int = 0
    """Datagrams lost to a send error or a full backlog, as the network may lose them."""
    gso_fallbacks: int = 0
    gro_fallbacks: int = 0
    wakeups: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def split_segments(view: memoryview, length: int, segment: int) -> list[bytes]:
    """The datagrams of a GRO buffer: ``length`` bytes cut every ``segment`` bytes (the
    last one may be shorter)."""
    whole = bytes(view[:length])
    if segment <= 0 or segment >= length:
        return [whole]
    return [whole[offset:offset + segment] for offset in range(0, length, segment)]


def _gro_segment(ancillary: list[tuple[int, int, bytes]]) -> int:
    for level, kind, data in ancillary:
        if level == SOL_UDP and kind == UDP_GRO:
            if len(data) >= 4:  # an int; older kernels wrote a u16
                return int.from_bytes(data[:4], sys.byteorder, signed=True)
            if len(data) >= 2:
                return _SEGMENT_SIZE.unpack_from(data)[0]
    return 0


class DatagramSocket:
    """A non-blocking UDP socket read and written in batches, with GSO and GRO where
    the kernel has them. ``stats`` may be shared by several sockets."""

    def __init__(self, sock: socket.socket, stats: IoStats | None = None, *,
                 offload: bool | None = None,
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.sock = sock
        self.stats = stats if stats is not None else IoStats()
        self._loop = loop
        offload = offload_wanted() if offload is None else offload
        self.gso = offload and self._probe_gso()
        self.gro = offload and self._enable_gro()
        self._buffer = bytearray(GRO_BUFFER if self.gro else RECV_SIZE)
        self._view = memoryview(self._buffer)
        self._ancillary = _GRO_ANCILLARY if self.gro else 0
        self._backlog: deque[Sequence] = deque()
        self._writing = False

    def _probe_gso(self) -> bool:
        try:
            self.sock.getsockopt(SOL_UDP, UDP_SEGMENT)
        except OSError:
            self.stats.gso_fallbacks += 1
            return False
        return True

    def _enable_gro(self) -> bool:
        try:
            self.sock.setsockopt(SOL_UDP, UDP_GRO, 1)
        except OSError:
            self.stats.gro_fallbacks += 1
            return False
        return True

    # ------------------------------------------------------------------ receiving

    def receive(self, limit: int = READS_PER_WAKEUP, most: int = DATAGRAMS_PER_WAKEUP
                ) -> list[tuple[list[bytes], tuple]]:
        """What is readable now, in at most ``limit`` receive calls and until ``most``
        datagrams came: for each call, the datagrams it returned (several for a GRO
        buffer) and their source address."""
        stats = self.stats
        stats.wakeups += 1
        recvmsg_into, buffers = self.sock.recvmsg_into, [self._buffer]
        ancillary, view = self._ancillary, self._view
        out: list[tuple[list[bytes], tuple]] = []
        for _ in range(limit):
            try:
                length, extra, flags, source = recvmsg_into(buffers, ancillary)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:  # ICMP errors surface here (ECONNREFUSED); nothing to read
                stats.rx_errors += 1
                continue
            stats.rx_syscalls += 1
            if flags & socket.MSG_TRUNC:
                stats.rx_truncated += 1
                continue
            segment = _gro_segment(extra) if extra else 0
            if 0 < segment < length:
                if segment > RECV_SIZE:
                    stats.rx_oversize += -(-length // segment)
                    continue
                datagrams = split_segments(view, length, segment)
                stats.rx_gro_buffers += 1
                stats.rx_gro_segments += len(datagrams)
            elif length > RECV_SIZE:
                stats.rx_oversize += 1
                continue
            else:
                datagrams = [bytes(view[:length])]
            stats.rx_datagrams += len(datagrams)
            stats.rx_bytes += length
            out.append((datagrams, source))
            most -= len(datagrams)
            if most <= 0:
                break
        return out

    # ------------------------------------------------------------------ sending

    def send(self, datagrams: Iterable[Sequence]) -> None:
        """Send ``(datagram, address, ...)`` tuples in order (what follows the address is
        ignored); runs of equal-size datagrams to one address leave as one GSO send. What
        the send buffer has no room for waits (in a bounded backlog) until the socket is
        writable."""
        if self._backlog:
            self._hold(datagrams)
            return
        items = datagrams if isinstance(datagrams, list) else list(datagrams)
        sent = self._send_items(items)
        if sent < len(items):
            self._hold(items[sent:])

    def _hold(self, datagrams: Iterable[Sequence]) -> None:
        backlog, stats = self._backlog, self.stats
        for item in datagrams:
            if len(backlog) >= BACKLOG:
                stats.tx_dropped += 1
            else:
                backlog.append(item)
        if backlog and not self._writing and self._loop is not None:
            self._writing = True
            self._loop.add_writer(self.sock.fileno(), self._on_writable)

    def _on_writable(self) -> None:
        items = list(self._backlog)
        self._backlog.clear()
        sent = self._send_items(items)
        if sent < len(items):
            self._backlog.extend(items[sent:])
        elif self._writing:
            self._writing = False
            if self._loop is not None:
                self._loop.remove_writer(self.sock.fileno())

    def _send_items(self, items: Sequence[Sequence]) -> int:
        """Send from the start of ``items`` (datagram and address first in each); how many
        left (or were dropped) before the send buffer filled."""
        sock, stats = self.sock, self.stats
        count, index = len(items), 0
        while index < count:
            item = items[index]
            data, address = item[0], item[1]
            size = len(data)
            end = index + 1
            if self.gso and size:
                # Every segment is at most ``size``: the run's bytes stay within the limit.
                limit = min(count, index + GSO_MAX_SEGMENTS, index + GSO_MAX_BYTES // size)
                while end < limit:
                    following = items[end]
                    if following[1] != address:
                        break
                    extra = len(following[0])
                    if extra != size:
                        if extra < size:  # a shorter datagram ends a GSO run
                            end += 1
                        break
                    end += 1
            try:
                if end - index > 1:
                    total = self._send_run(items, index, end, size, address)
                else:
                    sock.sendto(data, address)
                    total = size
            except (BlockingIOError, InterruptedError):
                stats.tx_blocked += 1
                return index
            except OSError as exc:
                if end - index > 1 and exc.errno in _REFUSALS:
                    self.gso = False  # this kernel, socket or path refuses GSO
                    stats.gso_fallbacks += 1
                    continue
                stats.tx_dropped += end - index  # a full buffer, or a firewall's drop
                index = end
                continue
            stats.tx_syscalls += 1
            stats.tx_datagrams += end - index
            stats.tx_bytes += total
            index = end
        return count

    def _send_run(self, items: Sequence[Sequence], start: int, end: int,
                  size: int, address: object) -> int:
        buffers = [item[0] for item in items[start:end]]
        total = self.sock.sendmsg(
            buffers, [(SOL_UDP, UDP_SEGMENT, _SEGMENT_SIZE.pack(size))], 0, address)
        self.stats.tx_gso_batches += 1
        self.stats.tx_gso_segments += end - start
        return total

    def close(self) -> None:
        if self._writing and self._loop is not None:
            self._loop.remove_writer(self.sock.fileno())
        self._writing = False
        self._backlog.clear()
        self.sock.close()


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
        set_pmtu_probe(sock)
        sock.bind((host, port))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def set_pmtu_probe(sock: socket.socket) -> bool:
    """Send ``sock``'s datagrams unfragmented, sized by the connections' own search
    (``PMTUDISC_PROBE``); whether the system took it (Linux only). A dual-stack socket
    gets it for IPv4 as well."""
    if not sys.platform.startswith("linux"):
        return False
    levels = [(socket.IPPROTO_IP, IP_MTU_DISCOVER)]
    if sock.family == socket.AF_INET6:
        levels.insert(0, (socket.IPPROTO_IPV6, IPV6_MTU_DISCOVER))
    done = False
    for level, option in levels:
        try:
            sock.setsockopt(level, option, PMTUDISC_PROBE)
            done = True
        except OSError:
            pass
    return done


def bind_udp(address: Address) -> socket.socket:
    """``open_udp_socket`` on ``address``, failing with a ``ShoalError`` that names the
    address and the socket error (``EADDRINUSE``, ``EADDRNOTAVAIL``, ...)."""
    try:
        return open_udp_socket(*address)
    except OSError as exc:
        raise ShoalError(f"cannot listen on {format_address(address)}: {exc.strerror}",
                         code=os_error_code(exc)) from exc


ADDRESS_CACHE = 1024


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
        self.io_stats = IoStats()
        self._sockets: dict[int, DatagramSocket] = {}
        self._dual_stack = sock.family == socket.AF_INET6
        self._sources: dict[tuple, Address] = {}
        """Source addresses as the socket gives them, normalized (a bounded cache)."""
        self._destinations: dict[Address, object] = {}
        self.add_socket(0, sock)

    def add_socket(self, socket_id: int, sock: socket.socket) -> None:
        """Feed datagrams arriving on ``sock`` to the core as socket ``socket_id``."""
        self._sockets[socket_id] = DatagramSocket(sock, self.io_stats, loop=self._loop)
        self._loop.add_reader(sock.fileno(), self._on_readable, socket_id)

    @property
    def send_errors(self) -> int:
        """Datagrams lost on the way out (full buffers, firewall drops)."""
        return self.io_stats.tx_dropped

    @property
    def local_address(self) -> Address:
        return normalize_address(self.sock.getsockname())

    def local_addresses(self) -> list[Address]:
        return local_addresses(self.local_address)

    def now(self) -> float:
        # Not loop.time(): uvloop's clock only advances once per loop iteration, in ms.
        return time.monotonic()

    def _on_readable(self, socket_id: int) -> None:
        sock = self._sockets.get(socket_id)
        if sock is None:
            return
        batches = sock.receive()
        if not batches:
            return
        receive, sources = self.endpoint.receive_datagram, self._sources
        now = time.monotonic()
        for datagrams, raw in batches:
            address = sources.get(raw)
            if address is None:
                if len(sources) >= ADDRESS_CACHE:
                    sources.clear()
                address = sources[raw] = normalize_address(raw)
            for data in datagrams:
                receive(data, address, now, socket_id)
        self.flush()

    def _socket_for(self, socket_id: int) -> DatagramSocket | None:
        """Socket ``socket_id``; a pool socket is opened the first time it is named."""
        sock = self._sockets.get(socket_id)
        if sock is None and socket_id > 0:
            host = self.sock.getsockname()[0]
            try:
                raw = open_udp_socket(host, 0)
            except OSError:
                return None
            self.add_socket(socket_id, raw)
            sock = self._sockets[socket_id]
        return sock

    def _destination(self, address: Address) -> object:
        """``address`` as the socket takes it (IPv4 mapped on a dual-stack socket)."""
        if not self._dual_stack or ":" in address[0]:
            return address
        mapped = self._destinations.get(address)
        if mapped is None:
            if len(self._destinations) >= ADDRESS_CACHE:
                self._destinations.clear()
            mapped = self._destinations[address] = (f"::ffff:{address[0]}", address[1])
        return mapped

    def _send_all(self, datagrams: list[tuple[bytes, Address, int]]) -> None:
        if not datagrams:
            return
        if not self._dual_stack and all(item[2] == 0 for item in datagrams):
            self._sockets[0].send(datagrams)  # the usual case, as the core made them
            return
        destination = self._destination
        by_socket: dict[int, list[tuple[bytes, object]]] = {}
        for data, address, socket_id in datagrams:
            batch = by_socket.get(socket_id)
            if batch is None:
                batch = by_socket[socket_id] = []
            batch.append((data, destination(address)))
        for socket_id, batch in by_socket.items():
            sock = self._socket_for(socket_id)
            if sock is None:
                self.io_stats.tx_dropped += len(batch)
            else:
                sock.send(batch)

    def _send(self, data: bytes, address: Address, socket_id: int) -> None:
        self._send_all([(data, address, socket_id)])

    def _release(self) -> None:
        for socket_id in list(self._sockets):
            self._close_socket(socket_id)

    def _close_socket(self, socket_id: int) -> None:
        sock = self._sockets.pop(socket_id, None)
        if sock is not None:
            self._loop.remove_reader(sock.sock.fileno())
            sock.close()
