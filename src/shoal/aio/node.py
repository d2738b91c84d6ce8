"""``shoal.Node``: the one public async API over the protocol core.

The CLI, the app runtime's JS bridge and the examples all go through this class; none
of them speak the protocol themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol

from shoal.aio.driver import LoopDriver
from shoal.aio.streams import Stream
from shoal.aio.udp import UdpDriver, bind_udp, open_udp_socket
from shoal.core import events as ev
from shoal.core.config import CoreConfig
from shoal.core.endpoint import Endpoint, PeerInfo
from shoal.core.events import ServiceEvent
from shoal.core.natcheck import NatReport
from shoal.core.services.base import Service
from shoal.core.wire import Address
from shoal.errors import ClosedError, DeliveryError, LocalProtocolError, ShoalError, os_error_code
from shoal.identity import Identity, IdentityLock, peer_id_to_bytes
from shoal.net import format_address, parse_address, resolve_address

if TYPE_CHECKING:
    from shoal.aio.files import FetchProgress, FetchResult, FileService, SharedFile
    from shoal.aio.groups import Group, Groups
    from shoal.core.blobs import Ticket

__all__ = ["Channel", "Datagram", "Delivery", "Message", "NatReport", "Node", "PeerInfo",
           "Service", "Stream", "ServiceEvent", "Subscription"]

NETWORK_POLL = 5.0
"""Seconds between checks of the local addresses (a change re-runs the NAT check)."""
ALTERNATE_PORT_SOCKET = -1
ALTERNATE_IP_SOCKET = -2
ALTERNATE_BOTH_SOCKET = -3
MAX_UNREAD_DATAGRAMS = 256
"""Datagrams a channel holds for its reader; one more pushes the oldest out (counted as
``datagrams_dropped_unread`` in ``Node.stats``)."""


@dataclass(frozen=True, slots=True)
class Message:
    """A message. ``sender`` is a peer id proven by the connection's handshake."""

    sender: str
    data: bytes
    path: str
    channel: str = ""
    receipt: object = field(default=None, compare=False, repr=False)
    """For the node: the message is read (its room given back) when the app takes it."""


@dataclass(frozen=True, slots=True)
class Datagram:
    """An unreliable datagram from ``sender`` (a peer id proven by the handshake)."""

    sender: str
    data: bytes
    channel: str = ""
    path: str = "direct"


@dataclass(frozen=True, slots=True)
class Delivery:
    """The outcome of ``Node.send``: the receiver acknowledged the message."""

    peer_id: str
    path: str
    seconds: float


class Network(Protocol):
    """Somewhere other than the host's UDP stack to run a node (``shoal.sim``)."""

    def random_bytes(self, count: int) -> bytes: ...
    def attach(self, endpoint: Endpoint, on_event: Callable[[ev.Event], None]
               ) -> LoopDriver: ...


def lan_discovery_default() -> bool:
    """LAN discovery is on unless ``SHOAL_NO_LAN`` is set to a non-empty value."""
    return not os.environ.get("SHOAL_NO_LAN")


class Node:
    """A Shoal node: one UDP socket, one identity, sessions with any number of peers.

    Use it as an async context manager::

        async with shoal.Node(introducers=["203.0.113.2:7000"]) as node:
            await node.send(peer_id, b"hello")
            async for message in node.messages():
                ...
    """

    def __init__(
        self,
        identity: Identity | None = None,
        *,
        introducers: Iterable[str | Address] = (),
        listen: str | Address = "0.0.0.0:0",
        introducer: bool = False,
        lan_discovery: bool | None = None,
        config: CoreConfig | None = None,
        alternate: str | Address | None = None,
        stun_servers: Iterable[str | Address] = (),
        network: Network | None = None,
        services: Iterable[Service] = (),
        data_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        """``alternate``: a second IP and port of this host, from which a node acting as
        STUN server answers NAT behaviour tests (RFC 5780); ``stun_servers``: STUN
        servers the NAT check asks besides the introducers; ``network``: run somewhere
        other than the host's UDP stack (``shoal.sim.VirtualNetwork.node`` passes it);
        ``services``: protocol services to plug in besides the built-in ones (see
        ``shoal.core.services.base``), reached with ``call``."""
        if network is not None and (identity is None or alternate is not None):
            raise LocalProtocolError("a node on a simulated network needs an identity "
                                     "and has no alternate address")
        self.identity = identity or Identity.load_or_create()
        self._network = network
        self._introducers: list[Address] = []
        self._introducer_names: list[str] = []
        """Introducers given by host name, looked up when the node starts."""
        for value in introducers:
            try:
                self._introducers.append(parse_address(value))
            except LocalProtocolError as exc:
                if not isinstance(value, str) or "not an IP address" not in exc.message:
                    raise
                self._introducer_names.append(value)
        self._listen = parse_address(listen, default_port=0)
        self._alternate = parse_address(alternate) if alternate is not None else None
        base = config or CoreConfig()
        self.config = replace(
            base,
            introducer=introducer or base.introducer,
            stun_servers=(*base.stun_servers, *(parse_address(a) for a in stun_servers)),
        )
        if network is not None:
            self.lan_discovery = False
        elif lan_discovery is None:
            self.lan_discovery = lan_discovery_default()
        else:
            self.lan_discovery = lan_discovery
        random_bytes = network.random_bytes if network is not None else secrets.token_bytes
        from shoal.core.services.groups import GroupService

        self._group_service = GroupService()
        self.endpoint = Endpoint(self.identity, random_bytes=random_bytes, config=self.config,
                                 services=(*services, self._group_service))
        self._group_service.providers = self.endpoint.services.get("dht")  # type: ignore[assignment]
        if data_dir is not None:
            self.data_dir: Path | None = Path(data_dir)
        elif self.identity.path is not None:
            self.data_dir = self.identity.path.parent / f"{self.identity.path.stem}.groups"
        else:
            self.data_dir = None
        """Where the node keeps its groups (None: in memory)."""
        self._groups: Groups | None = None
        self._driver: LoopDriver | None = None
        self._lan: object | None = None
        self._lan_start: asyncio.Task[None] | None = None
        self.lan_error: str | None = None
        """Why LAN discovery stopped, if it did."""
        self._streams: dict[int, Stream] = {}
        """Open streams, by the stream service's handle."""
        self._streams_available: dict[str, asyncio.Event] = {}
        self._default = Channel(self, "")
        self._channels: dict[str, Channel] = {"": self._default}
        self._subscriptions: list[Subscription] = []
        self._waiters: dict[int, tuple[asyncio.Future[Delivery], float]] = {}
        self._handles: dict[asyncio.Future[Delivery], int] = {}
        self._stun_waiters: dict[int, asyncio.Future[ev.StunResult]] = {}
        self._connected: dict[str, asyncio.Event] = {}
        self._reached: dict[str, str] = {}
        """The peer that answered a ``connect`` in progress, by its waiter's key."""
        self._observed: asyncio.Event = asyncio.Event()
        self._introducer_news = asyncio.Event()
        """Set whenever an introducer answered or all of them failed to."""
        self._nat_waiters: list[asyncio.Future[NatReport]] = []
        self._watcher: asyncio.Task[None] | None = None
        self._key_lock: IdentityLock | None = None
        self._files: FileService | None = None
        self._closed = False

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> Node:
        """Bind the socket, start LAN discovery and connect to the introducers."""
        if self._driver is not None:
            return self
        ipv6 = ":" in self._listen[0]
        while self._introducer_names:  # LocalProtocolError ENOTFOUND if one does not resolve
            name = self._introducer_names.pop(0)
            self._introducers.append(await asyncio.to_thread(resolve_address, name, ipv6=ipv6))
        if self._network is not None:
            self._driver = self._network.attach(self.endpoint, self._on_event)
        else:
            if self.identity.path is not None:
                self._key_lock = IdentityLock(self.identity.path)  # EBUSY if in use
            try:
                self._driver = self._open_udp()
            except BaseException:
                self._release_key()
                raise
        bound = self._driver.local_address
        self.endpoint.set_local_addresses(self._driver.local_addresses())
        now = self._driver.now()
        for address in self._introducers:
            self.endpoint.add_introducer(address, now)
        if self.lan_discovery:
            from shoal.aio.lan import LanDiscovery

            lan = LanDiscovery(self.peer_id, bound[1], self._on_lan_peer)
            self._lan = lan
            # Announcing takes about a second of mDNS probing: nothing waits for it.
            self._lan_start = asyncio.get_running_loop().create_task(lan.start())
            self._lan_start.add_done_callback(self._lan_started)
        if self.data_dir is not None and (self.data_dir / "groups.json").exists():
            self._group_manager()
        self._driver.flush()
        if self._network is None:
            self._watcher = asyncio.get_running_loop().create_task(self._watch_network())
        return self

    def _open_udp(self) -> UdpDriver:
        sock = bind_udp(self._listen)
        driver = UdpDriver(self.endpoint, sock, self._on_event)
        if self._alternate is not None:
            try:
                self._open_alternates(driver, driver.local_address)
            except BaseException:
                driver.close()
                raise
        return driver

    def _open_alternates(self, driver: UdpDriver, bound: Address) -> None:
        assert self._alternate is not None
        host, other = bound[0], self._alternate
        if host in ("0.0.0.0", "::") or other[0] == host or other[1] == bound[1]:
            raise ShoalError(
                "an alternate address needs a specific listen IP, and a different IP and "
                "port of its own", code="EINVAL",
            )
        sockets = {}
        try:
            for socket_id, address in ((ALTERNATE_PORT_SOCKET, (host, other[1])),
                                       (ALTERNATE_IP_SOCKET, (other[0], bound[1])),
                                       (ALTERNATE_BOTH_SOCKET, other)):
                sockets[socket_id] = open_udp_socket(*address)
        except OSError as exc:
            for sock in sockets.values():
                sock.close()
            raise ShoalError(f"cannot listen on the alternate address: {exc.strerror}",
                             code=os_error_code(exc)) from exc
        for socket_id, sock in sockets.items():
            driver.add_socket(socket_id, sock)
        self.endpoint.set_stun_alternate(bound, other, port_socket=ALTERNATE_PORT_SOCKET,
                                         ip_socket=ALTERNATE_IP_SOCKET,
                                         both_socket=ALTERNATE_BOTH_SOCKET)

    async def _watch_network(self) -> None:
        """Re-run the NAT check when the host's addresses change (a new network)."""
        assert self._driver is not None
        known = set(self._driver.local_addresses())
        while not self._closed:
            await asyncio.sleep(NETWORK_POLL)
            if self._closed or self._driver is None:
                return
            current = set(self._driver.local_addresses())
            if current != known:
                known = current
                self.endpoint.set_local_addresses(sorted(current))
                if self.config.nat_check:
                    self.endpoint.start_nat_check(self._driver.now())
                    self._driver.flush()
    async def close(self) -> None:
        """Tell connected peers goodbye and release the socket."""
        if self._closed:
            return
        self._closed = True
        if self._watcher is not None:
            self._watcher.cancel()
        if self._files is not None:
            self._files.close()
        if self._groups is not None:
            self._groups.close()
        if self._lan_start is not None and not self._lan_start.done():
            self._lan_start.cancel()
            with contextlib.suppress(BaseException):
                await self._lan_start
        if self._lan is not None:
            with contextlib.suppress(Exception):
                await self._lan.close()  # type: ignore[attr-defined]
        if self._driver is not None:
            self._driver.close()
        self._release_key()
        for future, _ in self._waiters.values():
            if not future.done():
                future.set_exception(ClosedError("the node is closed"))
        for waiter in self._nat_waiters:
            if not waiter.done():
                waiter.set_exception(ClosedError("the node is closed"))
        for channel in self._channels.values():
            channel._inbox.put_nowait(None)
            channel._accepted.put_nowait(None)
            channel._offer_datagram(None)
        for stream in list(self._streams.values()):
            stream._on_event("failed", (stream.handle, "the node is closed"))
        self._streams.clear()
        for subscription in list(self._subscriptions):
            subscription._queue.put_nowait(None)

    def _release_key(self) -> None:
        if self._key_lock is not None:
            self._key_lock.release()
            self._key_lock = None

    async def __aenter__(self) -> Node:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # ------------------------------------------------------------------ properties

    @property
    def peer_id(self) -> str:
        return self.identity.peer_id

    @property
    def address(self) -> Address:
        """The local address the socket is bound to."""
        return self._require_driver().local_address

    @property
    def stats(self) -> dict[str, int]:
        """Counters of datagrams received, sent and dropped (by reason)."""
        return dict(self.endpoint.stats)

    @property
    def io_stats(self) -> dict[str, int]:
        """What the node's sockets did: datagrams, bytes and system calls each way, GSO
        batches sent and GRO buffers received, drops and offload fallbacks (empty on a
        simulated network, or before the node starts)."""
        stats = getattr(self._driver, "io_stats", None)
        return stats.as_dict() if stats is not None else {}

    def peers(self) -> list[PeerInfo]:
        return self.endpoint.peers()

    def snapshot(self) -> dict[str, Any]:
        """Everything an observer of this node wants at one instant, as plain JSON values:
        identity, addresses, NAT, each known peer (path, RTT, bytes), the channels served
        and the counters (what ``shoal inspect`` shows)."""
        endpoint = self.endpoint
        report = endpoint.nat_report
        peers = []
        for peer in self.peers():
            peers.append({
                "peer_id": peer.peer_id, "connected": peer.connected,
                "address": format_address(peer.address) if peer.address else None,
                "path": peer.path, "introducer": peer.introducer,
                "rtt_ms": round(peer.rtt * 1000, 3) if peer.rtt is not None else None,
                "bytes_sent": peer.bytes_sent, "bytes_received": peer.bytes_received,
            })
        return {
            "peer_id": self.peer_id,
            "time": time.time(),
            "local": [format_address(a) for a in self._require_driver().local_addresses()],
            "public": sorted({format_address(a) for a in self.public_addresses().values()}),
            "nat": None if report is None else {
                "mapping": report.mapping, "filtering": report.filtering,
                "public": report.nat.public, "reachable": report.nat.reachable},
            "peers": peers,
            "channels": sorted(endpoint.messages.served),
            "stats": dict(endpoint.stats),
        }

    def introducer_states(self) -> dict[str, str]:
        """Each introducer ("HOST:PORT") and how it stands: "connected", "connecting"
        (not answered yet) or "unreachable" (its last dial had no answer; dials go on)."""
        return {
            format_address(address): "connected" if intro.peer is not None else
            "unreachable" if intro.failures and not intro.dialing else "connecting"
            for address, intro in self.endpoint.rendezvous.introducers.items()
        }

    def public_addresses(self) -> dict[str, Address]:
        """Our address as each connected peer (introducers included) reports it."""
        return self.endpoint.observed_addresses()

    @property
    def nat_report(self) -> NatReport | None:
        """The latest NAT check's outcome (None before the first one finished)."""
        return self.endpoint.nat_report

    async def detect_nat(
        self, servers: Iterable[str | Address] = (), *, timeout: float = 10.0
    ) -> NatReport:
        """Run a NAT check now against the introducers, the configured STUN servers and
        ``servers``; returns its report (mapping and filtering in RFC 4787 terms)."""
        driver = self._require_driver()
        waiter = self._nat_waiter()
        targets = [parse_address(a) for a in servers]
        if not targets and not self._introducers and not self.config.stun_servers:
            raise LocalProtocolError("a NAT check needs at least one introducer or STUN server")
        self.endpoint.start_nat_check(driver.now(), targets)
        driver.flush()
        return await self._await_nat(waiter, timeout)

    async def wait_for_nat(self, *, timeout: float = 10.0) -> NatReport:
        """The NAT report, waiting for the automatic check if it has not finished yet."""
        if self.endpoint.nat_report is not None:
            return self.endpoint.nat_report
        return await self._await_nat(self._nat_waiter(), timeout)

    def _nat_waiter(self) -> asyncio.Future[NatReport]:
        waiter: asyncio.Future[NatReport] = asyncio.get_running_loop().create_future()
        self._nat_waiters.append(waiter)
        return waiter

    async def _await_nat(self, waiter: asyncio.Future[NatReport], timeout: float) -> NatReport:
        try:
            return await asyncio.wait_for(waiter, timeout)
        except TimeoutError:
            raise DeliveryError("the NAT check did not finish", code="ETIMEDOUT") from None
        finally:
            if waiter in self._nat_waiters:
                self._nat_waiters.remove(waiter)

    # ------------------------------------------------------------------ operations

    async def send(self, peer_id: str, data: bytes, *, timeout: float | None = None,
                   channel: str = "") -> Delivery:
        """Send ``data`` to ``peer_id``; returns once the peer acknowledged every byte.

        Raises ``DeliveryError`` (``ETIMEDOUT``, ``EHOSTUNREACH``, ``ENETUNREACH`` when no
        introducer answers, ``ENOPROTOOPT`` when the
        peer does not serve ``channel``, ...) if it was not.
        """
        future = self.send_nowait(peer_id, data, channel=channel)
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout)
        except TimeoutError:
            self._cancel(future, f"timed out after {timeout:g} s")
            raise DeliveryError(
                f"{peer_id} did not acknowledge within {timeout:g} s", code="ETIMEDOUT"
            ) from None
        except asyncio.CancelledError:
            self._cancel(future, "cancelled")  # nobody is left to hear how it ends
            raise

    def send_nowait(self, peer_id: str, data: bytes, *, channel: str = ""
                    ) -> asyncio.Future[Delivery]:
        """Queue ``data`` for ``peer_id`` and return a future of its ``Delivery``.

        The cheap form of ``send`` for many messages in flight: no task per message, and
        messages queued in one loop iteration leave together. The future fails with
        ``DeliveryError`` when the message cannot be delivered (after ``message_timeout``
        of the config at the latest).
        """
        driver = self._require_driver()
        if not isinstance(data, bytes | bytearray | memoryview):
            raise LocalProtocolError("message data must be bytes")
        now = driver.now()
        handle = self.endpoint.send_message(peer_id, bytes(data), now, channel)
        future: asyncio.Future[Delivery] = asyncio.get_running_loop().create_future()
        self._waiters[handle] = (future, now)
        self._handles[future] = handle
        driver.flush_soon()
        return future

    def _cancel(self, future: asyncio.Future[Delivery], reason: str) -> None:
        handle = self._handles.pop(future, None)
        if handle is None:
            return
        self._waiters.pop(handle, None)
        future.cancel()
        if self._driver is None or self._closed:
            return
        self.endpoint.cancel_message(handle, self._driver.now(), reason)
        self._driver.flush_soon()

    def channel(self, name: str) -> Channel:
        """Open the named channel ``name`` (an application protocol, such as ``"chat/1"``):
        this node then accepts messages on it, and they go to the returned ``Channel``
        only. One ``Channel`` per name at a time; ``close()`` it to stop serving."""
        if not isinstance(name, str) or not name:
            raise LocalProtocolError("a channel needs a non-empty name (\"\" is the default)")
        if name in self._channels:
            raise LocalProtocolError(f"channel {name!r} is already open", code="EBUSY")
        self.endpoint.serve_channel(name)
        channel = self._channels[name] = Channel(self, name)
        return channel

    def call(self, service: str, *args: Any, **kwargs: Any) -> Any:
        """Hand a request to the service named ``service`` (its ``call`` method, with the
        driver's time first) and return its answer; what it sends leaves at once.
        ``ENOENT`` if no such service is plugged in."""
        driver = self._require_driver()
        result = self.endpoint.call(service, driver.now(), *args, **kwargs)
        driver.flush_soon()
        return result

    def subscribe(self, service: str | None = None) -> Subscription:
        """A queue of every core event (connections, paths, NAT, ...) for one consumer;
        with ``service``, only that service's ``ServiceEvent``s."""
        subscription = Subscription(self, service)
        self._subscriptions.append(subscription)
        return subscription

    async def open_stream(self, peer_id: str, channel: str = "", *,
                          timeout: float | None = None) -> Stream:
        """Open a byte stream to ``peer_id`` on ``channel``, on the connection to it
        (``DeliveryError`` ``EHOSTUNREACH`` without one). The peer accepts it with
        ``node.channel(channel).streams()``; if it serves no streams there, the first
        write or read after its answer fails with ``ENOPROTOOPT``. Waits, up to
        ``timeout``, while the peer allows no more streams at once."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            try:
                handle = self.call("streams", "open", peer_id, channel)
                break
            except LocalProtocolError as exc:
                if exc.code != "EAGAIN":
                    raise
            available = self._streams_available.setdefault(peer_id, asyncio.Event())
            available.clear()
            left = None if deadline is None else deadline - loop.time()
            try:
                await asyncio.wait_for(available.wait(), left)
            except TimeoutError:
                raise DeliveryError(f"{peer_id} allows no more streams now",
                                    code="ETIMEDOUT") from None
        stream = self._streams[handle] = Stream(self, handle, peer_id, channel)
        return stream

    def streams(self) -> AsyncIterator[Stream]:
        """Every stream peers open on the default channel, until the node closes."""
        return self._default.streams()

    def messages(self) -> AsyncIterator[Message]:
        """Every message received on the default channel, until the node closes."""
        return aiter(self._default)

    async def receive(self, timeout: float | None = None) -> Message:
        """The next message on the default channel."""
        return await self._default.receive(timeout)

    async def reach(self, peer_id: str, *, timeout: float = 10.0) -> None:
        """Make sure a connection to ``peer_id`` is up, asking the introducers for it
        if there is none; ``DeliveryError`` ``ETIMEDOUT`` if none came up in time."""
        self._require_driver()
        peer = peer_id_to_bytes(peer_id)
        if peer == self.identity.public_key:
            raise LocalProtocolError("this node cannot connect to itself")
        if self.endpoint.connection_to(peer) is not None:
            return
        await self._until_connected(
            f"peer:{peer_id}", lambda now: self.endpoint.reconnect(peer_id, now), timeout,
            f"no connection to {peer_id} came up within {timeout:g} s")

    async def _until_connected(self, key: str, start: Callable[[float], None],
                               timeout: float, failure: str) -> None:
        """Run ``start(now)`` and wait up to ``timeout`` for the connection that
        ``key`` names (``addr:HOST:PORT`` or ``peer:ID``); ``DeliveryError``
        ``ETIMEDOUT`` saying ``failure`` if none came up."""
        driver = self._require_driver()
        waiter = self._connected.setdefault(key, asyncio.Event())
        start(driver.now())
        driver.flush()
        try:
            await asyncio.wait_for(waiter.wait(), timeout)
        except TimeoutError:
            raise DeliveryError(failure, code="ETIMEDOUT") from None
        finally:
            self._connected.pop(key, None)

    async def send_datagram(self, peer_id: str, data: bytes, *, channel: str = "",
                            timeout: float = 10.0) -> None:
        """Send ``data`` to ``peer_id`` as one unreliable datagram on ``channel``: it
        may be lost, arrive out of order, or be dropped when the connection is
        congested, and is never sent again. Connects first if needed (up to
        ``timeout``). ``LocalProtocolError`` ``EMSGSIZE`` if it does not fit in one
        packet on the current path (``max_datagram_size`` says how much does)."""
        peer_id_to_bytes(peer_id)
        if self.endpoint.connection_to(bytes.fromhex(peer_id)) is None:
            await self.reach(peer_id, timeout=timeout)
        self.call("datagrams", "send", peer_id, channel, data)

    def max_datagram_size(self, peer_id: str, channel: str = "") -> int:
        """The largest datagram ``send_datagram`` takes for ``peer_id`` on ``channel``
        now: 1,131 bytes on any path, more once a larger datagram size was found
        (``DeliveryError`` ``EHOSTUNREACH`` without a connection)."""
        return self.call("datagrams", "max_size", peer_id, channel)  # type: ignore[no-any-return]

    def datagrams(self) -> AsyncIterator[Datagram]:
        """Every datagram received on the default channel, until the node closes."""
        return self._default.datagrams()

    async def receive_datagram(self, timeout: float | None = None) -> Datagram:
        """The next datagram on the default channel."""
        return await self._default.receive_datagram(timeout)

    async def connect(self, address: str | Address, *, timeout: float = 10.0) -> str:
        """Handshake with the node at ``address``; returns its peer id."""
        self._require_driver()
        target = parse_address(address)
        before = {p.peer_id for p in self.peers() if p.connected and p.address == target}
        if before:
            return before.pop()
        key = f"addr:{target[0]}:{target[1]}"
        try:
            await self._until_connected(
                key, lambda now: self.endpoint.connect(target, now),
                timeout, f"no Shoal node answered at {target[0]}:{target[1]}")
        finally:
            reached = self._reached.pop(key, None)
        # A peer connected already answers from another of its addresses: the
        # connection it has is kept (and tries this address as a path).
        if reached is not None and any(p.connected and p.peer_id == reached
                                       for p in self.peers()):
            return reached
        for peer in self.peers():
            if peer.connected and peer.address == target:
                return peer.peer_id
        refused = self.endpoint.refusals.pop(target, None)
        if refused is not None:
            raise DeliveryError(f"{target[0]}:{target[1]} refused the connection: {refused}",
                                code="ECONNREFUSED")
        raise DeliveryError(f"session with {target[0]}:{target[1]} closed at once",
                            code="ECONNRESET")

    async def wait_for_introducers(self, timeout: float = 10.0) -> dict[str, Address]:
        """Wait until at least one introducer reported our public address. Raises
        ``DeliveryError`` ``ENETUNREACH`` as soon as every introducer failed to answer
        (about 5 s), or at ``timeout``."""
        if not self._introducers:
            return {}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self._observed.is_set():
            if self.endpoint.rendezvous.introducers_unreachable() or loop.time() >= deadline:
                names = ", ".join(f"{host}:{port}" for host, port in self._introducers)
                raise DeliveryError(f"no introducer answered ({names})", code="ENETUNREACH")
            self._introducer_news.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._introducer_news.wait(), deadline - loop.time())
        return self.public_addresses()

    async def stun(self, server: str | Address, *, timeout: float | None = None) -> ev.StunResult:
        """Ask a STUN server (or an introducer) which address our packets come from."""
        driver = self._require_driver()
        handle = self.endpoint.stun_request(parse_address(server), driver.now())
        future: asyncio.Future[ev.StunResult] = asyncio.get_running_loop().create_future()
        self._stun_waiters[handle] = future
        driver.flush()
        try:
            return await asyncio.wait_for(future, timeout)
        finally:
            self._stun_waiters.pop(handle, None)

    def add_peer_address(self, peer_id: str, address: str | Address) -> None:
        """Tell the node where ``peer_id`` may be reached (used by LAN discovery)."""
        driver = self._require_driver()
        self.endpoint.add_peer_address(peer_id, parse_address(address), driver.now(), "app")
        driver.flush()

    # ------------------------------------------------------------------ groups

    async def create_group(self, name: str) -> Group:
        """A new group with this node as its admin (see ``shoal.aio.groups``)."""
        return self._group_manager().create(name)

    async def join(self, invite: str) -> Group:
        """Join the group an invite names (``EINVAL`` if it is no invite)."""
        return self._group_manager().join(invite)

    def carry(self, tag: str) -> None:
        """Store and pass on the posts of the group whose tag is ``tag`` (``Group.tag``)
        without being a member: they stay unreadable here. A node with a data dir keeps
        carrying the tag after a restart."""
        self._group_manager().carry(tag)

    def groups(self) -> list[Group]:
        """The groups this node is in."""
        if self._groups is None:
            return []
        return list(self._groups.groups.values())

    def _group_manager(self) -> Groups:
        if self._groups is None:
            from shoal.aio.groups import Groups

            self._require_driver()
            self._groups = Groups(self, self._group_service, self.data_dir)
            self._groups.load()
        return self._groups

    # ------------------------------------------------------------------ files

    async def share(self, path: str | os.PathLike[str]) -> Ticket:
        """Hash the file at ``path`` (BLAKE3, in 256 KiB pieces) and serve it to peers
        until ``unshare`` or ``close``; ``str(ticket)`` is the text others fetch it by."""
        return await self._file_service().share(path)

    async def fetch(self, ticket: Ticket | str, path: str | os.PathLike[str], *,
                    progress: Callable[[FetchProgress], object] | None = None) -> FetchResult:
        """Fetch the file of ``ticket`` into ``path`` from every provider at once, each
        piece verified as it arrives; see ``shoal.aio.files`` (``FetchError`` if no
        provider is left; a later call resumes)."""
        return await self._file_service().fetch(ticket, path, progress=progress)

    def unshare(self, ticket: Ticket | str | bytes) -> bool:
        """Stop serving a shared file; whether it was shared."""
        return self._file_service().unshare(ticket)

    def files(self) -> list[SharedFile]:
        """The files this node shares."""
        return self._file_service().files()

    @property
    def file_stats(self) -> dict[str, int]:
        """Counters of sharing and fetching: pieces served, requests refused (busy,
        not shared), messages dropped (malformed, unasked) and pieces that failed
        verification (corrupt)."""
        return dict(self._file_service().stats)

    def _file_service(self) -> FileService:
        if self._files is None:
            self._require_driver()
            from shoal.aio.files import FileService

            self._files = FileService(self)
        return self._files

    # ------------------------------------------------------------------ DHT

    async def provide(self, key: bytes) -> None:
        """Announce this node as a provider of ``key`` (32 bytes) to the DHT nodes
        nearest it, now and again before the records expire, until ``withdraw``.
        Returns once the first announcement went out (``ENOENT`` with the DHT off)."""
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        self.call("dht", "provide", key, on_done=_settler(future))
        await future

    def withdraw(self, key: bytes) -> None:
        """Stop announcing ``key``; the records others hold expire on their own."""
        self.call("dht", "withdraw", key)

    async def find_providers(self, key: bytes, *, timeout: float = 10.0) -> list[str]:
        """The peer ids the DHT names as providers of ``key`` (32 bytes): what one
        lookup found, or what it had found when ``timeout`` seconds passed."""
        found: list[str] = []
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        self.call("dht", "find", key, lambda peer, _addresses: found.append(peer.hex()),
                  on_done=_settler(future))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(future), timeout)
        return list(found)

    # ------------------------------------------------------------------ internals

    def _require_driver(self) -> LoopDriver:
        if self._closed:
            raise ClosedError("the node is closed")
        if self._driver is None:
            raise LocalProtocolError("the node is not started (use 'async with Node(...)')")
        return self._driver

    def _lan_started(self, task: asyncio.Task[None]) -> None:
        """LAN discovery could not start (no multicast, or this identity is already
        announced on the LAN): the node goes on without it."""
        if task.cancelled() or task.exception() is None:
            return
        self.lan_error = f"LAN discovery is off: {task.exception()!r}"
        self.lan_discovery = False

    def _on_lan_peer(self, peer_id: str, addresses: list[Address]) -> None:
        if self._closed or self._driver is None or peer_id == self.peer_id:
            return
        now = self._driver.now()
        for address in addresses:
            self.endpoint.add_peer_address(peer_id, address, now, "lan")
        self._driver.flush()

    def _settle(self, event: ev.MessageDelivered | ev.MessageFailed) -> None:
        """Resolve the future of the message ``event`` is about."""
        waiter = self._waiters.pop(event.handle, None)
        if waiter is None:
            return
        future, started = waiter
        self._handles.pop(future, None)
        if future.done():
            return
        if isinstance(event, ev.MessageDelivered):
            seconds = self._driver.now() - started if self._driver else 0.0
            future.set_result(Delivery(event.peer_id, event.path, seconds))
        else:
            future.set_exception(DeliveryError(event.reason, code=event.code))

    def _taken(self, message: Message) -> Message:
        """The app took ``message``: the sender may be granted room for more."""
        if isinstance(message.receipt, ev.MessageReceived) and self._driver is not None:
            self.endpoint.message_read(message.receipt)
            self._driver.flush_soon()
        return message

    def _on_event(self, event: ev.Event) -> None:
        for subscription in self._subscriptions:
            if subscription.service is None or (
                isinstance(event, ev.ServiceEvent) and event.service == subscription.service
            ):
                subscription._queue.put_nowait(event)
        if isinstance(event, ev.MessageReceived):
            channel = self._channels.get(event.channel)
            if channel is not None:
                channel._inbox.put_nowait(
                    Message(event.peer_id, event.data, event.path, event.channel, event))
            else:  # closed meanwhile: nobody will read it
                self.endpoint.message_read(event)
        elif isinstance(event, ev.MessageDelivered | ev.MessageFailed):
            self._settle(event)
        elif isinstance(event, ev.PeerConnected):
            for waiter_key in (f"addr:{event.address[0]}:{event.address[1]}",
                               f"peer:{event.peer_id}"):
                if waiter_key in self._connected:
                    self._connected[waiter_key].set()
        elif isinstance(event, ev.PeerReached):
            address_key = f"addr:{event.address[0]}:{event.address[1]}"
            if address_key in self._connected:
                self._reached[address_key] = event.peer_id
            for waiter_key in (address_key, f"peer:{event.peer_id}"):
                if waiter_key in self._connected:
                    self._connected[waiter_key].set()
        elif isinstance(event, ev.AddressObserved):
            self._observed.set()
            self._introducer_news.set()
        elif isinstance(event, ev.IntroducersUnreachable):
            self._introducer_news.set()
        elif isinstance(event, ev.NatDetected):
            for waiter in self._nat_waiters:
                if not waiter.done():
                    waiter.set_result(event.report)
        elif isinstance(event, ServiceEvent) and event.service == "streams":
            self._on_stream_event(event)
        elif isinstance(event, ServiceEvent) and event.service == "groups":
            if self._groups is not None:
                self._groups.on_event(event.kind, event.data)
        elif isinstance(event, ServiceEvent) and event.service == "datagrams":
            name, data, path = event.data  # type: ignore[misc]
            channel = self._channels.get(name)
            if channel is not None:
                channel._offer_datagram(Datagram(event.peer_id or "", data, name, path))
        elif isinstance(event, ev.StunResult):
            future = self._stun_waiters.get(event.handle)
            if future is not None and not future.done():
                future.set_result(event)

    def _on_stream_event(self, event: ServiceEvent) -> None:
        kind, data = event.kind, event.data
        if kind == "accepted":
            handle, name = data  # type: ignore[misc]
            channel = self._channels.get(name)
            stream = self._streams[handle] = Stream(self, handle, event.peer_id or "", name)
            if channel is None:  # closed meanwhile
                stream.stop(1)
                stream.reset(1)
            else:
                channel._accepted.put_nowait(stream)
            return
        if kind == "available":
            waiter = self._streams_available.get(event.peer_id or "")
            if waiter is not None:
                waiter.set()
            return
        handle = data[0] if isinstance(data, tuple) else data
        stream = self._streams.get(handle)  # type: ignore[arg-type]
        if stream is None:
            return
        if kind in ("closed", "failed"):
            del self._streams[handle]  # type: ignore[arg-type]
        stream._on_event(kind, data)


def _settler(future: asyncio.Future[object]) -> Callable[[object], None]:
    def settle(result: object) -> None:
        if not future.done():
            future.set_result(result)

    return settle


async def _until_closed(queue: asyncio.Queue, timeout: float | None, what: str):  # type: ignore[no-untyped-def]
    """The next item of ``queue``; a None in it means closed (and stays for others)."""
    get = queue.get()
    item = await (get if timeout is None else asyncio.wait_for(get, timeout))
    if item is None:
        queue.put_nowait(None)
        raise ClosedError(f"the {what} is closed")
    return item


async def _each(queue: asyncio.Queue):  # type: ignore[no-untyped-def]
    """Every item of ``queue`` until the None that closes it (left there for others)."""
    while (item := await queue.get()) is not None:
        yield item
    queue.put_nowait(None)


class Channel:
    """A named channel on a node: messages sent here reach the peer's channel of the
    same name, and the peer's messages on it arrive here only."""

    def __init__(self, node: Node, name: str) -> None:
        self.node = node
        self.name = name
        self._inbox: asyncio.Queue[Message | None] = asyncio.Queue()
        self._accepted: asyncio.Queue[Stream | None] = asyncio.Queue()
        self._datagrams: asyncio.Queue[Datagram | None] = asyncio.Queue(
            MAX_UNREAD_DATAGRAMS)
        if name or not node.config.introducer:
            node.endpoint.streams.serve(name)

    async def send(self, peer_id: str, data: bytes, *, timeout: float | None = None
                   ) -> Delivery:
        """Send on this channel; see ``Node.send``."""
        return await self.node.send(peer_id, data, timeout=timeout, channel=self.name)

    def send_nowait(self, peer_id: str, data: bytes) -> asyncio.Future[Delivery]:
        return self.node.send_nowait(peer_id, data, channel=self.name)

    async def receive(self, timeout: float | None = None) -> Message:
        """The next message on this channel."""
        what = f"channel {self.name!r}" if self.name else "node"
        return self.node._taken(await _until_closed(self._inbox, timeout, what))

    async def __aiter__(self) -> AsyncIterator[Message]:
        async for message in _each(self._inbox):
            yield self.node._taken(message)

    async def send_datagram(self, peer_id: str, data: bytes, *, timeout: float = 10.0
                            ) -> None:
        """Send an unreliable datagram on this channel; see ``Node.send_datagram``."""
        await self.node.send_datagram(peer_id, data, channel=self.name, timeout=timeout)

    def max_datagram_size(self, peer_id: str) -> int:
        """See ``Node.max_datagram_size``."""
        return self.node.max_datagram_size(peer_id, self.name)

    def datagrams(self) -> AsyncIterator[Datagram]:
        """Every datagram peers send on this channel, until it (or the node) closes.
        Unread ones wait, up to 256; past that the oldest are dropped."""
        return _each(self._datagrams)

    async def receive_datagram(self, timeout: float | None = None) -> Datagram:
        """The next datagram on this channel."""
        what = f"channel {self.name!r}" if self.name else "node"
        return await _until_closed(self._datagrams, timeout, what)

    def _offer_datagram(self, datagram: Datagram | None) -> None:
        """Hold ``datagram`` (None: the channel closed) for the reader, dropping the
        oldest held if it is full."""
        queue = self._datagrams
        if queue.full():
            queue.get_nowait()
            self.node.endpoint.stats["datagrams_dropped_unread"] += 1
        queue.put_nowait(datagram)

    async def open_stream(self, peer_id: str, *, timeout: float | None = None) -> Stream:
        """Open a stream to ``peer_id`` on this channel; see ``Node.open_stream``."""
        return await self.node.open_stream(peer_id, self.name, timeout=timeout)

    def streams(self) -> AsyncIterator[Stream]:
        """Every stream peers open on this channel, until it (or the node) closes."""
        return _each(self._accepted)

    async def accept(self, timeout: float | None = None) -> Stream:
        """The next stream a peer opens on this channel."""
        what = f"channel {self.name!r}" if self.name else "node"
        return await _until_closed(self._accepted, timeout, what)

    def close(self) -> None:
        """Stop serving the channel; peers' later messages on it fail with ENOPROTOOPT,
        and their later streams are refused."""
        if self.name and self.node._channels.get(self.name) is self:
            del self.node._channels[self.name]
            self.node.endpoint.unserve_channel(self.name)
            self.node.endpoint.streams.unserve(self.name)
            self._inbox.put_nowait(None)
            self._accepted.put_nowait(None)
            self._offer_datagram(None)

    async def __aenter__(self) -> Channel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


class Subscription:
    """Every core event from the moment of subscribing, for one consumer."""

    def __init__(self, node: Node, service: str | None = None) -> None:
        self._node = node
        self.service = service
        """Only this service's ``ServiceEvent``s, if set."""
        self._queue: asyncio.Queue[ev.Event | None] = asyncio.Queue()

    async def get(self, timeout: float | None = None) -> ev.Event:
        return await _until_closed(self._queue, timeout, "node")

    def __aiter__(self) -> AsyncIterator[ev.Event]:
        return _each(self._queue)

    def close(self) -> None:
        if self in self._node._subscriptions:
            self._node._subscriptions.remove(self)
