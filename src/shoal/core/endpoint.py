"""The node's protocol engine: a sans-IO state machine for one UDP socket.

Theory of operation
-------------------
The driver feeds ``receive_datagram(data, addr, now)`` for every datagram and
``handle_timer(now)`` when ``get_timer()`` passes; after either (and after any command)
it sends what ``datagrams_to_send(now)`` returns and reads ``next_event()`` until None.
Nothing here reads a clock, touches a socket or draws randomness of its own: the
driver passes ``random_bytes``, so a simulation replays exactly from a seed.

The endpoint only wires the parts together: it demultiplexes datagrams by first byte,
hands handshake datagrams to ``Handshakes`` (which returns established connections),
places each connection among its peer's with ``PeerConnections`` (one transition table
of roles), feeds DATA to connections, and keeps a registry of *services*. Each service
owns frame types (read through the ``FrameRegistry``), datagram kinds and timers, and
acts through its ``ServiceContext``: messages on named channels, streams, unreliable
datagrams, rendezvous (introducers, introductions, punching), relaying and the NAT check
are built in; an
application adds more the same way. Every deadline (connections, dials, services) lives
in one heap, so a wakeup costs O(log n) whatever the number of peers.

There is one connection per peer, which outlives its path (a relay, a direct address, a
rebinding); ``peers`` says which connection carries the traffic when two exist.

Besides the node's own socket (id 0) the core may use more: a birthday punch sends from
a pool of sockets with positive ids (the driver opens one the first time a datagram
names it, and closes those ``sockets_to_close`` returns), and a STUN server with an
alternate address answers from sockets with negative ids that its driver registered.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from shoal.core import events as ev
from shoal.core.admission import FairShares, prefix_of, source_of
from shoal.core.config import CoreConfig
from shoal.core.connection import (
    CLOSE_BUSY,
    CLOSE_NORMAL,
    CLOSE_PROTOCOL_ERROR,
    CLOSE_SUPERSEDED,
    TRANSPORT_READERS,
    Connection,
)
from shoal.core.frames import FrameRegistry
from shoal.core.handshake import (
    Dial,
)
from shoal.core.handshakes import Handshakes
from shoal.core.natcheck import NatReport
from shoal.core.peers import Outcome, PeerConnections, Role, restarted
from shoal.core.punching import PunchScheduler
from shoal.core.relay import KeyedBuckets
from shoal.core.services.base import Service
from shoal.core.services.context import ServiceContext
from shoal.core.services.datagrams import DatagramService
from shoal.core.services.dht import DhtService
from shoal.core.services.messages import MessageService
from shoal.core.services.nat import NatService
from shoal.core.services.relaying import RelayService
from shoal.core.services.rendezvous import RendezvousService
from shoal.core.services.streams import StreamService
from shoal.core.timers import TimerHeap
from shoal.core.traversal import NatType
from shoal.core.wire import (
    AEAD_TAG_SIZE,
    DATA_HEADER_SIZE,
    Address,
    Extension,
    PacketKind,
    RelayPath,
)
from shoal.errors import ClosedError, LocalProtocolError, RemoteProtocolError
from shoal.identity import Identity, peer_id_to_bytes

_HANDSHAKE_KINDS = frozenset((PacketKind.INIT, PacketKind.INIT_IK, PacketKind.RESP,
                              PacketKind.FINAL, PacketKind.FINAL_IK, PacketKind.COOKIE,
                              PacketKind.VERSION))
_PUNCH = "punch"


@dataclass(slots=True)
class PeerInfo:
    """What the endpoint knows about one peer."""

    peer_id: str
    connected: bool
    address: Address | None
    path: str | None
    rtt: float | None
    introducer: bool
    known_addresses: tuple[Address, ...]
    bytes_sent: int = 0
    bytes_received: int = 0


class Endpoint:
    """All of one node's protocol state. See the module docstring for the driving contract."""

    def __init__(
        self,
        identity: Identity,
        *,
        random_bytes: Callable[[int], bytes],
        config: CoreConfig | None = None,
        services: Iterable[Service] = (),
    ) -> None:
        self.identity = identity
        self.config = config or CoreConfig()
        self.random = random_bytes
        self._me = identity.public_key
        self.local_addresses: tuple[Address, ...] = ()
        self.connections: dict[bytes, Connection] = {}
        self._shares = FairShares()
        """Connections peers opened to this node, by source prefix (``admission``)."""
        self._peers: dict[bytes, PeerConnections] = {}
        self.timers = TimerHeap()
        self.stats: Counter[str] = Counter()
        self.frames = FrameRegistry(TRANSPORT_READERS)
        self.messages = MessageService()
        self.rendezvous = RendezvousService()
        self.relay = RelayService()
        self.nat_service = NatService()
        self.streams = StreamService()
        self.datagrams = DatagramService()
        self.handshakes = Handshakes(
            identity, self.config, random_bytes=random_bytes, host=self, timers=self.timers,
            stats=self.stats, readers=self.frames.readers, early=self.messages,
            rendezvous=self.rendezvous)
        self._buckets = KeyedBuckets(self.config.max_handshakes_per_source,
                                     self.config.handshake_burst)
        self._events: deque[ev.Event] = deque()
        self._out: list[tuple[bytes, Address, int]] = []
        self._dirty: dict[Connection, None] = {}  # ordered, so runs replay exactly
        self.punches = PunchScheduler(random_bytes)
        self._closed = False
        self.refusals: dict[Address, str] = {}
        """Addresses whose node refused a connection because it was full (CLOSE code 4),
        with the reason it gave; the latest 1,024."""
        self.faults: list[str] = []
        """The last 16 unforeseen failures that closed a connection (``_fault``): each
        is a bug to fix, kept for tests and diagnostics."""
        self.now = 0.0
        """The driver's time as of the latest input or command (``ServiceContext.now``)."""
        self.services: dict[str, Service] = {}
        self._packet_handlers: dict[int, Service] = {}
        builtin: list[Service] = [self.messages, self.rendezvous, self.relay, self.nat_service,
                                  self.streams, self.datagrams]
        if self.config.dht:
            builtin.append(DhtService())
        added = [*builtin, *services]
        for service in added:
            self._register(service)
        for service in added:
            self._attach(service)
        self._next_handle = 1
        self.wall_offset = 0.0
        """Seconds from the driver's clock (``now``) to wall-clock time, which early
        messages are stamped with; the driver sets it (the simulator's nodes agree)."""
        self.early_from = float("-inf")
        """Early messages stamped before this wall-clock time are not taken (they go the
        usual way, over the connection). The ids of those delivered are remembered in
        memory only, so a driver that starts a node which may have run before with the
        same key sets it ``EARLY_WINDOW`` seconds past its start: whatever an earlier run
        took was stamped before that, and a replay of it is refused."""

    # ================================================================== services

    def add_service(self, service: Service) -> None:
        """Plug a protocol service in: its frame types and datagram kinds route to it,
        and the services it ``requires`` (by name) must be plugged in already."""
        self._check_requires(service, self.services)
        self._register(service)
        self._attach(service)

    def service(self, name: str) -> Service:
        """The service named ``name``."""
        service = self.services.get(name)
        if service is None:
            raise LocalProtocolError(f"no service named {name!r}", code="ENOENT")
        return service

    def call(self, name: str, now: float, *args: object, **kwargs: object) -> object:
        """Hand an application's request to service ``name`` (its ``call``)."""
        self._check_open()
        self.now = now
        return self.service(name).call(now, *args, **kwargs)

    def _register(self, service: Service) -> None:
        if service.name in self.services:
            raise LocalProtocolError(f"a service named {service.name!r} is plugged in already")
        for kind in service.packet_kinds:
            if self._packet_handlers.get(kind, service) is not service:
                raise LocalProtocolError(f"datagram kind 0x{kind:02x} is already owned")
        self.frames.register(service)
        self._packet_handlers.update(dict.fromkeys(service.packet_kinds, service))
        self.services[service.name] = service

    @staticmethod
    def _check_requires(service: Service, available: Iterable[str]) -> None:
        missing = [name for name in service.requires if name not in available]
        if missing:
            raise LocalProtocolError(f"service {service.name!r} requires "
                                     f"{', '.join(map(repr, missing))}")

    def _attach(self, service: Service) -> None:
        self._check_requires(service, self.services)
        service.attach(ServiceContext(self, service),
                       {name: self.services[name] for name in service.requires})

    # ================================================================== public commands

    @property
    def peer_id(self) -> str:
        return self.identity.peer_id

    def set_local_addresses(self, addresses: Iterable[Address]) -> None:
        """The addresses this node can be reached at on its own networks (sent to introducers)."""
        self.local_addresses = tuple(dict.fromkeys(addresses))[:8]

    def add_introducer(self, address: Address, now: float) -> None:
        """Connect to an introducer at ``address`` now, and again whenever it drops."""
        self.now = now
        self._check_open()
        self.rendezvous.add_introducer(address, now)

    def add_peer_address(self, peer_id: str, address: Address, now: float, source: str) -> None:
        """Learn a candidate address for ``peer_id`` (from LAN discovery or the app)."""
        self.now = now
        peer = peer_id_to_bytes(peer_id)
        if peer != self._me:
            self.rendezvous.add_address(peer, address, source, now)

    def connect(self, address: Address, now: float, peer_id: str | None = None) -> None:
        """Start a handshake with whatever node listens at ``address``."""
        self.now = now
        self._check_open()
        expected = peer_id_to_bytes(peer_id) if peer_id else None
        self.dial(address, now, expected=expected)

    def reconnect(self, peer_id: str, now: float) -> None:
        """Ask the introducers for ``peer_id`` again now: a fresh introduction lets a
        relayed connection find a direct path, or an unreachable peer be tried again."""
        self.now = now
        self._check_open()
        self.rendezvous.reach(peer_id_to_bytes(peer_id), now, fresh=True)

    def send_message(self, peer_id: str, data: bytes, now: float, channel: str = "") -> int:
        """Queue a message on ``channel``; returns a handle that later events refer to.

        ``MessageDelivered`` follows once the receiver acknowledged every byte (and
        serves the channel), or ``MessageFailed`` when it cannot be delivered within
        ``message_timeout`` (``ENOPROTOOPT``: the peer does not serve the channel).
        """
        self.now = now
        self._check_open()
        peer = peer_id_to_bytes(peer_id)
        if peer == self._me:
            raise LocalProtocolError("cannot send a message to this node itself")
        return self.messages.send(peer, bytes(data), channel, now)

    def message_read(self, event: ev.MessageReceived) -> None:
        """The application took the message of ``event``: it leaves the receive budgets,
        and its peer may be granted room for more (see ``services.credit``). Call it once
        per message; a message never reported keeps its room taken."""
        self.messages.read(event.receipt)

    def cancel_message(self, handle: int, now: float, reason: str = "cancelled") -> None:
        """Give up on a message: it fails with ``ECANCELED`` unless already delivered."""
        self.now = now
        self.messages.cancel(handle, reason)

    def serve_channel(self, channel: str) -> None:
        """Accept messages on ``channel`` (the default channel ``""`` is always served)."""
        self.messages.serve(channel)

    def unserve_channel(self, channel: str) -> None:
        self.messages.unserve(channel)

    def stun_request(self, server: Address, now: float) -> int:
        """Ask a STUN server for our public address; answered by a ``StunResult`` event."""
        self.now = now
        self._check_open()
        handle = self.new_handle()
        self.nat_service.request(server, handle, now)
        return handle

    def start_nat_check(self, now: float, servers: Iterable[Address] = ()) -> None:
        """Learn this node's NAT kind from the introducers (and ``servers``) now.

        Also runs by itself once the first introducer reports our address, and again when
        an introducer reports a different one. Ends with a ``NatDetected`` event.
        """
        self.now = now
        self._check_open()
        self.nat_service.start_check(now, servers)

    @property
    def nat(self) -> NatType:
        """This node's NAT kind as last detected (all "unknown" before the first check)."""
        return self.nat_service.nat

    @property
    def nat_report(self) -> NatReport | None:
        return self.nat_service.report

    def set_nat_type(self, nat: NatType) -> None:
        """Declare this node's NAT kind instead of detecting it (with ``nat_check`` off)."""
        self.nat_service.nat = nat

    def set_stun_alternate(
        self, primary: Address, other: Address, *, port_socket: int, ip_socket: int,
        both_socket: int,
    ) -> None:
        """Act as an RFC 5780 STUN server. This node listens at ``primary`` on socket 0 and
        the driver has opened (and feeds datagrams from) negative-id sockets at the
        primary IP with the other port (``port_socket``), the other IP with the primary
        port (``ip_socket``) and ``other`` itself (``both_socket``)."""
        self.nat_service.set_alternate(primary, other, port_socket=port_socket,
                                       ip_socket=ip_socket, both_socket=both_socket)

    def sockets_to_close(self) -> list[int]:
        """Pool sockets the driver should close now (their punch is over)."""
        out, self.punches.closing = self.punches.closing, []
        return out

    def close(self, now: float) -> None:
        """Close every connection (peers are told) and fail every undelivered message."""
        if self._closed:
            return
        self.now = now
        for connection in list(self.connections.values()):
            if not connection.closed:
                connection.close(CLOSE_NORMAL, "node shutting down")
                self.flush_connection(connection, now)
            self._drop(connection, "node shutting down", now, notify=False)
        for service in self.services.values():
            service.close(now)
        self.handshakes.clear()
        self.punches.close_all()
        self._closed = True

    def peers(self) -> list[PeerInfo]:
        """Known peers, connected or not."""
        out = []
        known = self.rendezvous.peers
        current = [peer for peer, table in self._peers.items() if table.current is not None]
        for peer in dict.fromkeys([*current, *known]):
            connection = self.connection_to(peer)
            state = known.get(peer)
            out.append(
                PeerInfo(
                    peer_id=peer.hex(),
                    connected=connection is not None,
                    address=connection.address if connection else None,
                    path=connection.path_kind if connection else None,
                    rtt=connection.rtt.smoothed if connection else None,
                    introducer=peer in self.rendezvous.introducer_peers,
                    known_addresses=tuple(state.addresses) if state else (),
                    bytes_sent=connection.bytes_sent if connection else 0,
                    bytes_received=connection.bytes_received if connection else 0,
                )
            )
        return out

    def observed_addresses(self) -> dict[str, Address]:
        """Our address as each connected peer reports seeing it."""
        return {peer.hex(): address for peer, address in self.rendezvous.observed.items()}

    # ================================================================== driver interface

    def receive_datagram(self, data: bytes, address: Address, now: float, socket: int = 0) -> None:
        """Process one datagram that arrived on ``socket``. Never raises for anything the
        network sends."""
        self.now = now
        if self._closed:
            return
        self.stats["rx_datagrams"] += 1
        if not data:
            self.stats["dropped_malformed"] += 1
            return
        kind = data[0]
        try:
            if kind == PacketKind.DATA and socket >= 0:
                self._on_data(data, address, now, socket)
            elif socket < 0 and kind >= 0x40:  # a STUN server's alternate address
                self.stats["dropped_malformed"] += 1
            elif kind in _HANDSHAKE_KINDS:
                self._on_handshake(data, address, now, socket)
            elif (handler := self._packet_handlers.get(kind)) is not None:
                handler.on_packet(data, address, now, socket)
            else:
                self.stats["dropped_malformed"] += 1
        except RemoteProtocolError:
            self.stats["dropped_malformed"] += 1

    def handle_timer(self, now: float) -> None:
        """Run everything whose deadline has passed."""
        self.now = now
        if self._closed:
            return
        for owner in self.timers.pop_due(now):
            if isinstance(owner, Connection):
                if owner.local_sid in self.connections:
                    try:
                        owner.handle_timer(now)
                        self._check_silence(owner, now)
                        self._after_connection(owner, now)
                    except Exception as exc:  # one peer never stops the others (see _fault)
                        self._fault(owner, exc, now)
            elif isinstance(owner, Dial):
                self.handshakes.on_dial_timer(owner, now)
            elif isinstance(owner, tuple):
                service, key = owner
                service.on_timer(now, key)
            elif owner is self.handshakes:
                self.handshakes.on_timer(now)
            elif owner == _PUNCH:
                self.run_punch(now)

    def _check_silence(self, connection: Connection, now: float) -> None:
        """The peer went quiet after sending services' frames: if a service awaits more,
        PING it from here (its answers may be going to an address we no longer have)."""
        due = connection.silence_deadline()
        if due is None or now < due or connection.closed:
            return
        connection.heard_at = None
        if any(service.awaits(connection) for service in self.services.values()):
            self.stats["silence_pings"] += 1
            connection.ping(now)

    def get_timer(self) -> float | None:
        """The next absolute time ``handle_timer`` must run, or None."""
        if self._closed:
            return None
        return self.timers.next()

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address, int]]:
        """Everything to put on the wire now, as (datagram, destination, socket id)."""
        self.now = now
        # Relayed connections hand their packets to the relay's connection, which may
        # then have more to send: hence the loop.
        while self._dirty:
            dirty = self._dirty
            self._dirty = {}
            for connection in dirty:
                try:
                    self.flush_connection(connection, now)
                except Exception as exc:  # one peer never stops the others
                    self._fault(connection, exc, now)
                    continue
                if not connection.closed:
                    self.timers.set(connection, connection.get_timer())
        out = self._out
        self._out = []
        self.stats["tx_datagrams"] += len(out)
        return out

    def next_event(self) -> ev.Event | None:
        return self._events.popleft() if self._events else None

    # ================================================================== for services

    def new_handle(self) -> int:
        """A handle no other command of this node returned (messages, STUN queries)."""
        handle = self._next_handle
        self._next_handle += 1
        return handle

    def emit(self, event: ev.Event) -> None:
        self._events.append(event)

    def mark(self, connection: Connection) -> None:
        """``connection`` has something to send: flush it with the next datagrams."""
        self._dirty[connection] = None

    def close_connection(self, connection: Connection, code: int, reason: str,
                         now: float) -> None:
        """Close ``connection`` (the peer is told) and let every service know."""
        connection.close(code, reason)
        self._after_connection(connection, now)

    def connection_to(self, peer: bytes) -> Connection | None:
        """The connection that carries new traffic to ``peer``, if any."""
        table = self._peers.get(peer)
        if table is None:
            return None
        connection = table.current
        return connection if connection is not None and not connection.closed else None

    def connections_with(self, peer: bytes) -> list[Connection]:
        """Every connection with ``peer``, draining ones included."""
        table = self._peers.get(peer)
        return list(table.connections) if table is not None else []

    def send_datagram(self, datagram: bytes, address: Address, socket: int = 0) -> None:
        """Queue one datagram; one for a relayed path goes into a frame to the relay."""
        if isinstance(address, RelayPath):
            self.relay.send_via(address, datagram)
        else:
            self._out.append((datagram, address, socket))

    def allow_unauthenticated(self, address: Address, now: float) -> bool:
        """Per-source token bucket for unauthenticated input that costs work (see
        ``admission.source_of``: an IPv4 address, an IPv6 /64, a relay and the source it
        names)."""
        return self._buckets.take(source_of(address), now)

    def dialing(self, peer: bytes, *, pool: bool = False) -> bool:
        """Whether a handshake with ``peer`` is in progress (from a pool socket, with ``pool``)."""
        return self.handshakes.dialing(peer, pool=pool)

    def dial(self, address: Address, now: float, *, expected: bytes | None,
             purpose: str = "peer", socket: int = 0, timeout: float | None = None) -> None:
        """Start a handshake with ``address`` (or, if ``expected`` is connected already,
        probe ``address`` as a path of that connection)."""
        if expected is not None and purpose == "peer":
            connection = self.connection_to(expected)
            if connection is not None:
                connection.probe_path(address, socket, now)
                self.mark(connection)
                return
        self.handshakes.dial(address, now, expected=expected, purpose=purpose, socket=socket,
                             timeout=timeout)

    def receive_relayed(self, packet: bytes, path: RelayPath, now: float) -> None:
        """A Shoal datagram that came through a relay, from ``path.peer``."""
        self.stats["rx_relayed"] += 1
        try:
            if packet[0] == PacketKind.DATA:
                self._on_data(packet, path, now, 0)  # type: ignore[arg-type]
            elif packet[0] in _HANDSHAKE_KINDS:  # a busy node's COOKIE comes this way too
                self._on_handshake(packet, path, now, 0, relayed=True)  # type: ignore[arg-type]
            else:
                self.stats["dropped_malformed"] += 1
        except RemoteProtocolError:
            self.stats["dropped_malformed"] += 1

    def run_punch(self, now: float) -> None:
        self._out.extend(self.punches.run(now, self.rendezvous.punch_plan))
        if self.punches.active is None and self.punches.pool_sockets:
            self.sweep_sockets()
        self.timers.set(_PUNCH, self.punches.get_timer())

    def end_punch(self, now: float) -> None:
        self.punches.end(now)
        self.sweep_sockets()
        self.timers.set(_PUNCH, self.punches.get_timer())

    # ================================================================== connections

    def _on_handshake(self, data: bytes, address: Address, now: float, socket: int, *,
                      relayed: bool = False) -> None:
        connection = self.handshakes.receive(data, address, now, socket, relayed=relayed)
        if connection is not None:
            self._established(connection, now)

    def reached(self, connection: Connection, address: Address, socket: int,
                now: float) -> None:
        """A dial to ``address`` was answered by the peer ``connection`` is with (the
        same run of its node): try the address as a path of it."""
        connection.probe_path(address, socket, now)
        self.mark(connection)
        self.emit(ev.PeerReached(peer_id=connection.peer_id, address=address))

    def make_room(self, prefix: str, now: float) -> bool:
        """Close the oldest connection of the heaviest source prefix, if that is fair to
        a newcomer from ``prefix`` (see ``admission``)."""
        victim = self._shares.victim(prefix)
        connection = self.connections.get(victim) if victim is not None else None
        if connection is None:
            return False
        connection.close(CLOSE_NORMAL, "room for a newcomer")
        self.flush_connection(connection, now)
        self._drop(connection, "evicted", now)
        self.stats["evicted_sessions"] += 1
        return True

    def _established(self, connection: Connection, now: float) -> None:
        peer = connection.peer
        self.connections[connection.local_sid] = connection
        if not connection.initiator:
            self._shares.add(connection.local_sid, prefix_of(connection.path.address))
        for service in self.services.values():
            service.on_connection_created(connection)
        table = self._peers.get(peer)
        if table is None:
            table = self._peers[peer] = PeerConnections(peer, self._me)
        self._placed(connection, *table.place(connection, now), now)
        self.mark(connection)
        self._after_connection(connection, now)

    def _placed(self, connection: Connection, outcome: Outcome, other: Connection | None,
                now: float) -> None:
        """Act on where ``PeerConnections`` placed ``connection``."""
        if outcome is Outcome.ADOPTED:
            self.handshakes.connected(connection, now)
            self._up(connection, now)
            self._emit_connected(connection)
        if connection.initiator and connection.dialed is not None and (
            outcome is not Outcome.SET_ASIDE
        ):
            self.emit(ev.PeerReached(peer_id=connection.peer_id, address=connection.dialed))
        if outcome is Outcome.ADOPTED:
            return
        if outcome is Outcome.SET_ASIDE:
            self.timers.set(connection, connection.get_timer())
            return
        if outcome is Outcome.CROSSED_LOST or other is None:
            self.stats["crossed_dials"] += 1
            return
        hold = outcome is not Outcome.TOOK_OVER
        for service in self.services.values():
            service.on_connection_replaced(other, connection, hold=hold)
        if outcome is Outcome.TOOK_OVER:
            self.timers.set(other, other.get_timer())
        elif outcome is Outcome.CROSSED_WON:
            self.stats["crossed_dials"] += 1
        elif outcome is Outcome.SUPERSEDED:
            self.stats["connections_superseded"] += 1
        else:
            restart = restarted(other, connection)
            reason = "the peer restarted" if restart else "replaced by a new connection"
            # (``other`` is closed in the table already, so ``stale`` leaves it out.)
            for old in [other, *self._peers[connection.peer].stale(connection)]:
                old.close(CLOSE_SUPERSEDED, reason)
                self.stats["connections_replaced"] += 1
                self.mark(old)
                self._after_connection(old, now)
            if restart:
                # What the application knew of the peer's earlier run is gone with it
                # (its streams, its state): say so, then that it is back. Messages not
                # yet delivered go to the new run.
                self.stats["peer_restarts"] += 1
                self.emit(ev.PeerDisconnected(peer_id=connection.peer_id, reason=reason))
                self._up(connection, now)
                self._emit_connected(connection)
                return
        self._up(connection, now)

    def _emit_connected(self, connection: Connection) -> None:
        self.emit(ev.PeerConnected(
            peer_id=connection.peer_id, address=connection.address,
            path=connection.path_kind, initiator=connection.initiator,
            introducer=connection.peer in self.rendezvous.introducer_peers,
        ))

    def _up(self, connection: Connection, now: float) -> None:
        for service in self.services.values():
            service.on_connection_up(connection, now)

    def _on_data(self, data: bytes, address: Address, now: float, socket: int) -> None:
        if len(data) < DATA_HEADER_SIZE + AEAD_TAG_SIZE:
            self.stats["dropped_malformed"] += 1
            return
        connection = self.connections.get(data[1:9])
        if connection is None:
            self.stats["dropped_unknown_session"] += 1
            return
        try:
            if not connection.receive(data, address, now, socket):
                self.stats[f"dropped_{connection.drop_reason}"] += 1
                return
            self._after_connection(connection, now)
        except Exception as exc:  # one peer never stops the others
            self._fault(connection, exc, now)

    def _fault(self, connection: Connection, exc: Exception, now: float) -> None:
        """Something a peer sent made its connection fail in a way no check foresaw:
        close that connection alone (the peer is told, if that can still be sealed) and
        count it, so that every other peer is served on."""
        self.stats["connection_faults"] += 1
        self.faults.append(f"{type(exc).__name__}: {exc}"[:200])
        del self.faults[:-16]
        connection.ack_pending = False
        if not connection.closed:
            connection.close(CLOSE_PROTOCOL_ERROR, "internal error")
        try:
            self.flush_connection(connection, now)
        except Exception:  # the CLOSE itself failed: drop it unsaid
            connection.control_out.clear()
            connection.controls.clear()
        self._drop(connection, "internal error", now)

    def _after_connection(self, connection: Connection, now: float) -> None:
        """Route what a connection produced after input or a timer."""
        if connection.frames_in:
            frames = connection.frames_in
            connection.frames_in = []
            for service, frame in frames:
                if service is None:
                    self.stats["skipped_extension_frames" if type(frame) is Extension
                               else "dropped_unowned_frames"] += 1
                    continue
                try:
                    service.on_frame(connection, frame, now)
                except RemoteProtocolError as exc:
                    # The packet was taken in and acknowledged: the peer broke a rule
                    # or a limit, and its connection ends with the documented code.
                    connection.close(CLOSE_PROTOCOL_ERROR, f"protocol error: {exc}")
                    break
        if connection.unsettled:
            unsettled, connection.unsettled = connection.unsettled, []
            for flow in unsettled:
                flow.settle()
        if connection.peer_silent:
            connection.peer_silent = False
            if not connection.path.relayed:  # the direct path is failing
                self.stats["paths_failing"] += 1
                for service in self.services.values():
                    service.on_path_failing(connection, now)
            self._check_restart(connection, now)
        if connection.path_changed:
            connection.path_changed = False
            self.stats["path_changes"] += 1
            for service in self.services.values():
                service.on_path_changed(connection, now)
            self.emit(ev.PathChanged(peer_id=connection.peer_id, address=connection.address,
                                     path=connection.path_kind))
            self.sweep_sockets()
        role = connection.role
        if (role is Role.ASIDE or role is Role.UNCONFIRMED) and connection.confirmed \
                and not connection.closed:
            table = self._peers[connection.peer]
            if role is Role.UNCONFIRMED:
                table.confirm(connection)
            else:
                self._placed(connection, *table.confirmed(connection, now), now)
        if connection.role is Role.DRAINING and not connection.closed:
            held = False
            for service in self.services.values():
                service.on_connection_draining(connection)
                held = held or service.holds(connection)
            connection.held = held
            if connection.idle() and not held and now >= connection.drained_at():
                connection.close(CLOSE_SUPERSEDED, "superseded by another connection")
        if connection.closed:
            self.flush_connection(connection, now)
            self._drop(connection, connection.close_reason, now)
        else:
            self.mark(connection)  # flushed, and its timer re-armed, in datagrams_to_send

    def _check_restart(self, connection: Connection, now: float) -> None:
        """The peer went silent with packets in flight: it may have restarted (its new
        run drops what comes for a session it never had). A handshake tells, at the
        direct address and through the relays shared with the peer (which reach the
        peer's new run once it registered with them): the same run of the peer answers
        with the incarnation the connection holds, and nothing more is done (see
        ``Handshakes``); a new run answers with another, and its connection replaces
        this one at once (see ``peers``)."""
        peer = connection.peer
        if connection.purpose != "peer" or self.handshakes.dialing(peer):
            return
        self.stats["restart_checks"] += 1
        if not connection.path.relayed:
            self.handshakes.dial(connection.address, now, expected=peer,
                                 socket=connection.socket)
        for relay in self.rendezvous.relays_for(peer):
            self.handshakes.dial(RelayPath(relay, peer), now, expected=peer)

    def flush_connection(self, connection: Connection, now: float) -> None:
        send = self.send_datagram
        for datagram, destination, socket in connection.datagrams(now):
            send(datagram, destination, socket)

    def _drop(self, connection: Connection, reason: str, now: float, *,
              notify: bool = True) -> None:
        if self.connections.pop(connection.local_sid, None) is None:
            return
        self._shares.remove(connection.local_sid)
        self._dirty.pop(connection, None)
        self.timers.set(connection, None)
        peer = connection.peer
        if connection.close_code == CLOSE_BUSY:
            if len(self.refusals) >= 1024:
                self.refusals.clear()
            self.refusals[connection.dialed or connection.address] = reason
        table = self._peers.get(peer)
        if table is not None:
            was_current, successor = table.remove(connection)
            if not table.connections:
                del self._peers[peer]
            if was_current and successor is None and notify:
                self.emit(ev.PeerDisconnected(peer_id=connection.peer_id, reason=reason))
        for service in self.services.values():
            service.on_connection_down(connection, reason, now)
        if any(p.socket > 0 for p in connection.paths.values()):
            self.sweep_sockets()

    def sweep_sockets(self) -> None:
        """Close pool sockets that no punch, handshake or connection uses any more."""
        if not self.punches.pool_sockets:
            return
        in_use = {p.socket for c in self.connections.values() for p in c.paths.values()}
        in_use.update(d.socket for d in self.handshakes.dials.values())
        self.punches.sweep(in_use)

    # ================================================================== helpers

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("the node is closed")
