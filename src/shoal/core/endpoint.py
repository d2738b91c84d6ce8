"""The node's protocol engine: a sans-IO state machine for one UDP socket.

Theory of operation
-------------------
The driver feeds ``receive_datagram(data, addr, now)`` for every datagram and
``handle_timer(now)`` when ``get_timer()`` passes; after either (and after any command)
it sends what ``datagrams_to_send(now)`` returns and reads ``next_event()`` until None.
Nothing here reads a clock, touches a socket or draws randomness of its own: the
driver passes ``random_bytes``, so a simulation replays exactly from a seed.

The endpoint keeps only what every protocol shares: demultiplexing by first byte,
handshakes (Noise XX with identity proofs, see ``handshake``), the connection table and
a registry of *services*. Each service owns frame types (and datagram kinds) and a few
timers: messages on named channels, rendezvous (introducers, introductions, punching),
relaying and the NAT check. Frames reach their service through a dispatch table, and
every deadline (connections, dials, services) lives in one heap, so a wakeup costs
O(log n) whatever the number of peers.

There is one connection per peer. A connection outlives its path: a relay, a direct
address, a rebinding. When two handshakes with one peer complete at nearly the same
time (both sides dialed), the one started by the smaller peer id is kept; the other
finishes what it carries and closes, and the kept one sends nothing new until then. A
later handshake with a connected peer means the peer lost its connection (a restart),
and replaces the old one. A connection this node started counts for that rule only once the
peer has shown it holds it too (its first DATA), so both sides judge the same pair;
until then a confirmed one carries new traffic, and one set aside that the peer never
confirms closes after ``connection.UNCONFIRMED_ASIDE`` seconds, its messages moving to
the other.

Responders keep no state per INIT (see ``handshake``). Unauthenticated input is rate
limited per source (``admission.source_of``), an INIT must be padded to 1200 bytes so no
answer amplifies, and beyond ``handshake_rate`` INITs a second the node answers with
cookies only.

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
    PROLOGUE,
    Dial,
    ResponderSecrets,
    agreed_version,
    check_proof,
    choose_version,
    decode_early_payload,
    early_initiator_state,
    early_responder_state,
    encode_early_payload,
    initiator_state,
    make_proof,
    proof_length,
)
from shoal.core.natcheck import NatReport
from shoal.core.noise import HandshakeState
from shoal.core.punching import PunchScheduler
from shoal.core.relay import KeyedBuckets, TokenBucket
from shoal.core.services.base import Service
from shoal.core.services.context import ServiceContext
from shoal.core.services.messages import MessageService
from shoal.core.services.nat import NatService
from shoal.core.services.relaying import RelayService
from shoal.core.services.rendezvous import RendezvousService
from shoal.core.timers import TimerHeap
from shoal.core.traversal import NatType
from shoal.core.wire import (
    AEAD_TAG_SIZE,
    DATA_HEADER_SIZE,
    SUPPORTED_VERSIONS,
    Address,
    Extension,
    HandshakeDone,
    PacketKind,
    RelayPath,
    decode_cookie,
    decode_final,
    decode_hello,
    decode_init,
    decode_resp,
    decode_version,
    encode_cookie,
    encode_final,
    encode_hello,
    encode_resp,
    encode_version,
    path_kind,
)
from shoal.errors import ClosedError, LocalProtocolError, RemoteProtocolError
from shoal.identity import Identity, peer_id_to_bytes

CROSSED_DIAL_WINDOW = 5.0
"""A second connection this soon after the first is a crossed dial, not a reconnection."""
_SECRETS = "secrets"
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
        self._current: dict[bytes, Connection] = {}
        self._by_peer: dict[bytes, list[Connection]] = {}
        self._dials: dict[bytes, Dial] = {}
        self.timers = TimerHeap()
        self._secrets = ResponderSecrets(random_bytes, 0.0)
        self.timers.set(_SECRETS, self._secrets.next_rotation())
        self._buckets = KeyedBuckets(self.config.max_handshakes_per_source,
                                     self.config.handshake_burst)
        self._work: TokenBucket | None = None
        self._events: deque[ev.Event] = deque()
        self._out: list[tuple[bytes, Address, int]] = []
        self._dirty: dict[Connection, None] = {}  # ordered, so runs replay exactly
        self.punches = PunchScheduler(random_bytes)
        self._closed = False
        self.stats: Counter[str] = Counter()
        self.refusals: dict[Address, str] = {}
        """Addresses whose node refused a connection because it was full (CLOSE code 4),
        with the reason it gave; the latest 1,024."""
        self.faults: list[str] = []
        """The last 16 unforeseen failures that closed a connection (``_fault``): each
        is a bug to fix, kept for tests and diagnostics."""
        self.now = 0.0
        """The driver's time as of the latest input or command (``ServiceContext.now``)."""
        self.services: dict[str, Service] = {}
        self.frames = FrameRegistry(TRANSPORT_READERS)
        self._packet_handlers: dict[int, Service] = {}
        self.messages = MessageService()
        self.rendezvous = RendezvousService()
        self.relay = RelayService()
        self.nat_service = NatService()
        added = [self.messages, self.rendezvous, self.relay, self.nat_service, *services]
        for service in added:
            self._register(service)
        for service in added:
            self._attach(service)
        self._proofs: dict[int, bytes] = {}
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

    def _attach(self, service: Service) -> None:
        missing = [name for name in service.requires if name not in self.services]
        if missing:
            raise LocalProtocolError(f"service {service.name!r} requires "
                                     f"{', '.join(map(repr, missing))}")
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
        for connection in list(self.connections.values()):
            if not connection.closed:
                connection.close(CLOSE_NORMAL, "node shutting down")
                self._flush_connection(connection, now)
            self._drop(connection, "node shutting down", now, notify=False)
        for service in self.services.values():
            service.close(now)
        self._dials.clear()
        self.punches.close_all()
        self._closed = True

    def peers(self) -> list[PeerInfo]:
        """Known peers, connected or not."""
        out = []
        known = self.rendezvous.peers
        for peer in dict.fromkeys([*self._current, *known]):
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
            elif kind == PacketKind.INIT:
                self._on_init(data, address, now, socket)
            elif kind == PacketKind.INIT_IK:
                self._on_init(data, address, now, socket, early=True)
            elif kind == PacketKind.RESP:
                self._on_resp(data, address, now)
            elif kind in (PacketKind.FINAL, PacketKind.FINAL_IK):
                self._on_final(data, address, now, socket)
            elif kind == PacketKind.COOKIE:
                self._on_cookie(data, address, now)
            elif kind == PacketKind.VERSION:
                self._on_version(data, address, now)
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
                        self._after_connection(owner, now)
                    except Exception as exc:  # one peer never stops the others (see _fault)
                        self._fault(owner, exc, now)
            elif isinstance(owner, Dial):
                self._dial_timer(owner, now)
            elif isinstance(owner, tuple):
                service, key = owner
                service.on_timer(now, key)
            elif owner == _SECRETS:
                self._secrets.rotate(now)
                self.timers.set(_SECRETS, self._secrets.next_rotation())
            elif owner == _PUNCH:
                self.run_punch(now)

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
                    self._flush_connection(connection, now)
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
        connection = self._current.get(peer)
        if connection is None or connection.closed:
            return None
        return connection

    def connections_with(self, peer: bytes) -> list[Connection]:
        """Every connection with ``peer``, draining ones included."""
        return list(self._by_peer.get(peer, ()))

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
        return any(d.expected_peer == peer and (not pool or d.socket > 0)
                   for d in self._dials.values())

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
        for dial in self._dials.values():
            if dial.address == address and dial.expected_peer == expected and (
                dial.socket == socket
            ):
                return
        seed = self.random(32)
        # A first message waiting for a peer whose static key is known rides in the INIT.
        static = early = None
        if purpose == "peer" and expected is not None:
            static = self.rendezvous.static_of(expected)
            if static is not None:
                early = self.messages.early_message(expected, now + self.wall_offset)
        payload = b""
        if early is not None and static is not None:
            payload = encode_early_payload(self._proof(SUPPORTED_VERSIONS[0]), early,
                                           encode_hello(SUPPORTED_VERSIONS, 0))
            _, message = early_initiator_state(self.identity, seed, static, payload)
        else:
            _, message = initiator_state(self.identity, seed)
        retry = self.config.handshake_retry
        dial = Dial(local_sid=self._new_sid(), seed=seed, init_message=message,
                    address=address, created=now, expected_peer=expected,
                    next_retry=now + retry, backoff=retry,
                    deadline=now + (timeout or self.config.handshake_timeout), purpose=purpose,
                    socket=socket, early=early, responder_static=static or b"",
                    payload=payload)
        dial.datagram = dial.encode()
        self._dials[dial.local_sid] = dial
        self.timers.set(dial, dial.next_retry)
        self.send_datagram(dial.datagram, address, socket)

    def receive_relayed(self, packet: bytes, path: RelayPath, now: float) -> None:
        """A Shoal datagram that came through a relay, from ``path.peer``."""
        self.stats["rx_relayed"] += 1
        kind = packet[0]
        try:
            if kind == PacketKind.DATA:
                self._on_data(packet, path, now, 0)  # type: ignore[arg-type]
            elif kind in (PacketKind.INIT, PacketKind.INIT_IK):
                self._on_init(packet, path, now, 0, relayed=True,  # type: ignore[arg-type]
                              early=kind == PacketKind.INIT_IK)
            elif kind == PacketKind.RESP:
                self._on_resp(packet, path, now)  # type: ignore[arg-type]
            elif kind in (PacketKind.FINAL, PacketKind.FINAL_IK):
                self._on_final(packet, path, now, 0)  # type: ignore[arg-type]
            elif kind == PacketKind.COOKIE:  # a busy node's answer through a relay
                self._on_cookie(packet, path, now)  # type: ignore[arg-type]
            elif kind == PacketKind.VERSION:
                self._on_version(packet, path, now)  # type: ignore[arg-type]
            else:
                self.stats["dropped_malformed"] += 1
        except RemoteProtocolError:
            self.stats["dropped_malformed"] += 1

    def run_punch(self, now: float) -> None:
        self._out.extend(self.punches.run(now, self.rendezvous.punch_plan))
        if self.punches.active is None and self.punches.pool_sockets:
            self._sweep_sockets()
        self.timers.set(_PUNCH, self.punches.get_timer())

    def end_punch(self, now: float) -> None:
        self.punches.end(now)
        self._sweep_sockets()
        self.timers.set(_PUNCH, self.punches.get_timer())

    # ================================================================== handshakes

    def _proof(self, version: int) -> bytes:
        proof = self._proofs.get(version)
        if proof is None:
            proof = self._proofs[version] = make_proof(self.identity, self.config.introducer,
                                                       version, 0)
        return proof

    def _work_allowed(self, now: float) -> bool:
        rate = self.config.handshake_rate
        if self._work is None:
            self._work = TokenBucket(rate, now)
        return self._work.take(1, rate, rate, now)

    def _on_init(self, data: bytes, address: Address, now: float, socket: int = 0, *,
                 relayed: bool = False, early: bool = False) -> None:
        init = decode_init(data, padded=not relayed)
        if len(init.noise_message) < 32:
            raise RemoteProtocolError("INIT carries no ephemeral key")
        if early:  # the hello is inside the encrypted payload: read once admitted
            version: int | None = SUPPORTED_VERSIONS[0]
        else:
            offered, _ = decode_hello(init.noise_message[32:])
            version = choose_version(offered, init.version)
        if version is None:
            self.stats["dropped_version"] += 1
            if self.allow_unauthenticated(address, now):
                self.send_datagram(encode_version(init.sender_sid, SUPPORTED_VERSIONS),
                                   address, socket)
            return
        # Relayed INITs too: the relay is authenticated, the source it names is not.
        if not self.allow_unauthenticated(address, now):
            self.stats["dropped_rate_limited"] += 1
            return
        if not self._work_allowed(now):
            if not self._secrets.cookie_valid(address, init.cookie):
                self.stats["cookies_sent"] += 1
                self.send_datagram(encode_cookie(init.sender_sid, self._secrets.cookie(address)),
                                   address, socket)
                return
            self.stats["handshakes_with_cookie"] += 1
        seed, local_sid = self._secrets.responder_keys(address, init.sender_sid,
                                                       init.noise_message)
        if early:
            answer = self._answer_early(init.noise_message, seed, address, now)
            if answer is None:
                return
            state, version, taken = answer
            reply_payload = self._proof(version) + bytes((taken,))
        else:
            state = HandshakeState("XX", False, PROLOGUE, self.identity.static_key, seed)
            state.read_message(init.noise_message)
            reply_payload = self._proof(version)
        reply = encode_resp(init.sender_sid, local_sid, state.write_message(reply_payload),
                            version)
        if len(reply) > len(data) and not relayed:  # never amplify; a padded INIT cannot
            return
        self.send_datagram(reply, address, socket)
        self.stats["handshakes_answered"] += 1

    def _answer_early(self, message: bytes, seed: bytes, address: Address, now: float
                      ) -> tuple[HandshakeState, int, bool] | None:
        """Read an INIT_IK's first message and deliver its early message (once). The
        handshake, the version chosen and whether the message was taken; None if the
        INIT is to be dropped."""
        state = early_responder_state(self.identity, seed)
        try:
            proof_bytes, early, hello = decode_early_payload(state.read_message(message))
            proof = check_proof(proof_bytes, state.remote_static)
        except RemoteProtocolError:
            self.stats["dropped_handshake"] += 1
            return None
        version = agreed_version(hello)
        if version is None or proof.peer == self._me:
            self.stats["dropped_version" if version is None else "dropped_wrong_peer"] += 1
            return None
        taken = self.messages.take_early(proof.peer, early, path_kind(address), now,
                                         now + self.wall_offset, self.early_from)
        return state, version, taken

    def _on_cookie(self, data: bytes, address: Address, now: float) -> None:
        receiver_sid, cookie = decode_cookie(data)
        dial = self._dials.get(receiver_sid)
        if dial is None or dial.address != address or dial.cookie == cookie:
            self.stats["dropped_unsolicited_cookie"] += 1
            return
        dial.cookie = cookie
        dial.datagram = dial.encode()
        self.send_datagram(dial.datagram, dial.address, dial.socket)
        self.stats["cookies_echoed"] += 1

    def _on_version(self, data: bytes, address: Address, now: float) -> None:
        receiver_sid, versions = decode_version(data)
        dial = self._dials.get(receiver_sid)
        if dial is None or dial.address != address:
            self.stats["dropped_unsolicited_version"] += 1
            return
        if not set(versions) & set(SUPPORTED_VERSIONS):
            self.stats["dials_version_mismatch"] += 1
            self._remove_dial(dial, now)
            self.rendezvous.on_dial_failed(dial, now)

    def _on_resp(self, data: bytes, address: Address, now: float) -> None:
        version, receiver_sid, sender_sid, noise_message = decode_resp(data)
        dial = self._dials.get(receiver_sid)
        if dial is None or version not in SUPPORTED_VERSIONS:
            self.stats["dropped_unknown_session"] += 1
            return
        # The Noise state is rebuilt from the dial's seed, so a forged RESP that fails
        # here leaves the dial exactly as it was.
        if dial.early is not None:
            state, _ = early_initiator_state(self.identity, dial.seed, dial.responder_static,
                                             dial.payload)
        else:
            state, _ = initiator_state(self.identity, dial.seed)
        try:
            payload = state.read_message(noise_message)
            proof = check_proof(payload, state.remote_static)
        except RemoteProtocolError:
            self.stats["dropped_handshake"] += 1
            return
        if proof.peer == self._me or (dial.expected_peer and proof.peer != dial.expected_peer):
            self.stats["dropped_wrong_peer"] += 1
            self._remove_dial(dial, now)
            self.rendezvous.on_dial_failed(dial, now)
            return
        if dial.early is not None:
            end = proof_length(payload)
            taken = len(payload) > end and payload[end] == 1
            # Connected another way meanwhile: this answer was all the dial was for.
            answered_only = self.connection_to(proof.peer) is not None
            if answered_only:
                self._remove_dial(dial)
            self.messages.early_answered(proof.peer, dial.early.message_id, taken,
                                         path_kind(address), now)
            if answered_only:
                return
        if len(self.connections) >= self.config.session_limit:
            self.stats["dropped_busy"] += 1
            return
        self._remove_dial(dial)
        if dial.early is not None:
            final = encode_final(sender_sid, dial.local_sid, dial.init_message, b"",
                                 kind=PacketKind.FINAL_IK)
        else:
            final = encode_final(sender_sid, dial.local_sid, dial.init_message,
                                 state.write_message(self._proof(version)))
        send_key, recv_key = state.split()
        connection = Connection(
            local_sid=dial.local_sid, remote_sid=sender_sid, peer=proof.peer,
            peer_introducer=proof.introducer, initiator=True, send_key=send_key,
            recv_key=recv_key, address=address, now=now, config=self.config,
            random_bytes=self.random, socket=dial.socket, version=version,
            capabilities=proof.capabilities,
            peer_endorsement=proof.endorsement, readers=self.frames.readers,
        )
        connection.purpose, connection.dialed = dial.purpose, dial.address
        if not dial.retransmitted:
            connection.rtt.update(now - dial.created, 0.0)
        connection.final_datagram = final
        connection.final_deadline = now + max(connection.rtt.pto(), self.config.handshake_retry)
        self.send_datagram(final, address, dial.socket)
        self._established(connection, now)

    def _on_final(self, data: bytes, address: Address, now: float, socket: int) -> None:
        receiver_sid, sender_sid, first, noise_message = decode_final(data)
        if receiver_sid in self.connections:
            self.stats["dropped_repeated_final"] += 1
            return
        epoch = self._secrets.epoch_of(receiver_sid)
        if epoch is None or len(first) < 32:
            self.stats["dropped_unknown_session"] += 1
            return
        seed, local_sid = self._secrets.responder_keys(address, sender_sid, first, epoch)
        if local_sid != receiver_sid:  # not our answer to an INIT from this address
            self.stats["dropped_unknown_session"] += 1
            return
        if self._secrets.used(local_sid, epoch):
            # That handshake made a connection already (since closed or replaced): a
            # replay must not rebuild it over the peer's newer one.
            self.stats["dropped_replayed_final"] += 1
            return
        if data[0] == PacketKind.FINAL_IK:
            # The INIT_IK again: its early message was dealt with when it first came.
            state = early_responder_state(self.identity, seed)
            try:
                proof_bytes, _, hello = decode_early_payload(state.read_message(first))
                version = agreed_version(hello)
                if version is None:
                    self.stats["dropped_version"] += 1
                    return
                state.write_message(self._proof(version) + b"\x00")
                proof = check_proof(proof_bytes, state.remote_static)
            except RemoteProtocolError:
                self.stats["dropped_handshake"] += 1
                return
        else:
            version = agreed_version(first[32:])
            if version is None:
                self.stats["dropped_version"] += 1
                return
            state = HandshakeState("XX", False, PROLOGUE, self.identity.static_key, seed)
            try:
                state.read_message(first)
                state.write_message(self._proof(version))
                proof_bytes = state.read_message(noise_message)
                proof = check_proof(proof_bytes, state.remote_static)
            except RemoteProtocolError:
                self.stats["dropped_handshake"] += 1
                return
        if proof.peer == self._me:
            return
        full = len(self.connections) >= self.config.session_limit \
            and not self._make_room(prefix_of(address), now)
        recv_key, send_key = state.split()
        connection = Connection(
            local_sid=local_sid, remote_sid=sender_sid, peer=proof.peer,
            peer_introducer=proof.introducer, initiator=False, send_key=send_key,
            recv_key=recv_key, address=address, now=now, config=self.config,
            random_bytes=self.random, socket=socket, version=version,
            capabilities=proof.capabilities,
            peer_endorsement=proof.endorsement, readers=self.frames.readers,
        )
        if full:
            # Say so, authenticated, rather than leave the initiator waiting; the
            # connection is never stored.
            self.stats["refused_busy"] += 1
            connection.close(CLOSE_BUSY, "this node holds all the connections it can")
            self._flush_connection(connection, now)
            return
        self._secrets.use(local_sid, epoch, now)
        self.timers.set(_SECRETS, self._secrets.next_rotation())  # it may have rotated
        connection.queue_frame(HandshakeDone(), reliable=False)
        self._established(connection, now)

    def _dial_timer(self, dial: Dial, now: float) -> None:
        if dial.local_sid not in self._dials:
            return
        if now >= dial.deadline:
            self._remove_dial(dial, now)
            if dial.socket > 0:
                self._sweep_sockets()
            self.stats["handshake_timeouts"] += 1
            self.rendezvous.on_dial_failed(dial, now)
            return
        dial.retransmitted = True
        dial.backoff = min(dial.backoff * 2, 2.0)
        dial.next_retry = now + dial.backoff
        self.timers.set(dial, min(dial.next_retry, dial.deadline))
        self.send_datagram(dial.datagram, dial.address, dial.socket)

    def _ask_again(self, dial: Dial, address: Address, socket: int) -> None:
        """Send ``dial``'s INIT to ``address`` from now on."""
        if (dial.address, dial.socket) != (address, socket):
            # A cookie is bound to the address it came from.
            dial.address, dial.socket, dial.cookie = address, socket, b""
            dial.datagram = dial.encode()
        dial.retransmitted = True
        self.send_datagram(dial.datagram, address, socket)

    def _remove_dial(self, dial: Dial, now: float | None = None) -> None:
        """Forget ``dial``; given ``now``, it ended unanswered (see ``early_unanswered``)."""
        self._dials.pop(dial.local_sid, None)
        self.timers.set(dial, None)
        early, peer = dial.early, dial.expected_peer
        if now is None or early is None or peer is None:
            return
        if any(d.early is not None and d.early.message_id == early.message_id
               for d in self._dials.values()):
            return  # another INIT with the same message may still be answered
        self.messages.early_unanswered(peer, early.message_id, now)

    # ================================================================== connections

    def _make_room(self, prefix: str, now: float) -> bool:
        """Close the oldest connection of the heaviest source prefix, if that is fair to
        a newcomer from ``prefix`` (see ``admission``)."""
        victim = self._shares.victim(prefix)
        connection = self.connections.get(victim) if victim is not None else None
        if connection is None:
            return False
        connection.close(CLOSE_NORMAL, "room for a newcomer")
        self._flush_connection(connection, now)
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
        self._by_peer.setdefault(peer, []).append(connection)
        existing = self.connection_to(peer)
        if existing is None:
            self._adopt(connection, now)
        elif not connection.confirmed:
            # A second connection we started: the peer may never get our FINAL (lost,
            # or sent to a punch socket that closed meanwhile). It counts once the peer
            # shows it has it, with its first DATA.
            self._set_aside(connection)
        elif not existing.confirmed:
            # The same the other way round: the one we hold may not exist at the peer,
            # this one does. It carries new traffic; the rule waits for both.
            self._current[peer] = connection
            self.messages.take_over(existing, connection, hold=False)
            self._set_aside(existing)
            for service in self.services.values():
                service.on_connection_up(connection, now)
        else:
            self._second_connection(existing, connection, now)
        self.mark(connection)
        self._after_connection(connection, now)

    def _adopt(self, connection: Connection, now: float) -> None:
        """``connection`` is the peer's only one: it carries the traffic from now on."""
        peer = connection.peer
        self._current[peer] = connection
        awaited = self.messages.early_awaited(peer)
        asking = False
        for dial in [d for d in self._dials.values() if d.expected_peer == peer]:
            if not asking and dial.early is not None and dial.early.message_id == awaited:
                # Its answer says whether the peer has the early message: ask again on
                # the path that works (the INIT may never have got through).
                asking = True
                self._ask_again(dial, connection.address, connection.path.socket)
                continue
            self._remove_dial(dial)
            if dial.address != connection.address:
                connection.probe_path(dial.address, dial.socket, now)
        for service in self.services.values():
            service.on_connection_up(connection, now)
        self.emit(ev.PeerConnected(
            peer_id=connection.peer_id, address=connection.address,
            path=connection.path_kind, initiator=connection.initiator,
            introducer=peer in self.rendezvous.introducer_peers,
        ))

    def _set_aside(self, connection: Connection) -> None:
        connection.undecided, connection.wanted = True, False
        self.timers.set(connection, connection.get_timer())

    def _second_connection(self, existing: Connection, new: Connection, now: float) -> None:
        """Both sides hold ``existing`` and ``new`` with one peer: keep one (see the
        module docstring)."""
        if self._keeps(existing, new, now):
            self._current[new.peer] = new
            new.wanted = True
            self.messages.take_over(existing, new)
            if now - existing.established_at < CROSSED_DIAL_WINDOW:
                existing.draining, existing.wanted = True, False
                self.stats["crossed_dials"] += 1
            else:
                existing.close(CLOSE_SUPERSEDED, "replaced by a new connection")
                self.stats["connections_replaced"] += 1
                self.mark(existing)
                self._after_connection(existing, now)
            for service in self.services.values():
                service.on_connection_up(new, now)
        else:
            new.draining, new.wanted = True, False
            self.stats["crossed_dials"] += 1

    def _keeps(self, existing: Connection, new: Connection, now: float) -> bool:
        """Whether ``new`` replaces ``existing`` as the peer's connection."""
        def starter(connection: Connection) -> bytes:
            return self._me if connection.initiator else connection.peer

        if now - existing.established_at < CROSSED_DIAL_WINDOW and (
            starter(existing) != starter(new)
        ):
            return starter(new) < starter(existing)
        return True

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
            self._flush_connection(connection, now)
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
        if connection.path_failing:
            connection.path_failing = False
            self.stats["paths_failing"] += 1
            for service in self.services.values():
                service.on_path_failing(connection, now)
        if connection.path_changed:
            connection.path_changed = False
            self.stats["path_changes"] += 1
            for service in self.services.values():
                service.on_path_changed(connection, now)
            self.emit(ev.PathChanged(peer_id=connection.peer_id, address=connection.address,
                                     path=connection.path_kind))
            self._sweep_sockets()
        if connection.undecided and connection.confirmed and not connection.closed:
            connection.undecided = False
            existing = self.connection_to(connection.peer)
            if existing is None:
                connection.wanted = True
                self._adopt(connection, now)
            else:
                self._second_connection(existing, connection, now)
        if connection.draining and not connection.closed:
            self.messages.on_draining(connection)
            if connection.idle() and now >= connection.drained_at():
                connection.close(CLOSE_SUPERSEDED, "superseded by another connection")
        if connection.closed:
            self._flush_connection(connection, now)
            self._drop(connection, connection.close_reason, now)
        else:
            self.mark(connection)  # flushed, and its timer re-armed, in datagrams_to_send

    def _flush_connection(self, connection: Connection, now: float) -> None:
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
        siblings = self._by_peer.get(peer, [])
        if connection in siblings:
            siblings.remove(connection)
        if not siblings:
            self._by_peer.pop(peer, None)
        if self._current.get(peer) is connection:
            del self._current[peer]
            others = [c for c in siblings if not c.closed]
            if others:
                successor = others[-1]
                successor.draining, successor.wanted = False, True
                self._current[peer] = successor
            elif notify:
                self.emit(ev.PeerDisconnected(peer_id=connection.peer_id, reason=reason))
        for service in self.services.values():
            service.on_connection_down(connection, reason, now)
        if any(p.socket > 0 for p in connection.paths.values()):
            self._sweep_sockets()

    def _sweep_sockets(self) -> None:
        """Close pool sockets that no punch, handshake or connection uses any more."""
        if not self.punches.pool_sockets:
            return
        in_use = {p.socket for c in self.connections.values() for p in c.paths.values()}
        in_use.update(d.socket for d in self._dials.values())
        self.punches.sweep(in_use)

    # ================================================================== helpers

    def _new_sid(self) -> bytes:
        while True:
            sid = self.random(8)
            if sid not in self.connections and sid not in self._dials:
                return sid

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("the node is closed")
