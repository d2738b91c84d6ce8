"""The node's protocol engine: a sans-IO state machine for one UDP socket.

Theory of operation
-------------------
The driver feeds ``receive_datagram(data, addr, now)`` for every datagram and
``handle_timer(now)`` when ``get_timer()`` passes; after either (and after any command)
it sends what ``datagrams_to_send(now)`` returns and reads ``next_event()`` until None.
Nothing here reads a clock, touches a socket or draws randomness of its own: the
driver passes ``random_bytes``, so a simulation replays exactly from a seed.

Datagrams are demultiplexed by their first byte: STUN (0x00-0x3f), then Shoal's INIT,
RESP, FINAL and DATA (see ``wire``). Handshakes are Noise XX with identity proofs
(``handshake``); established sessions are ``Session`` objects keyed by the session id we
chose, never by address. Unauthenticated input (INIT, STUN) is rate-limited per source
IP, and an INIT must be padded to 1200 bytes so a RESP (about 210 bytes) never amplifies.

Peers are reached in this order: an established session; addresses we already know
(LAN discovery, earlier sessions); an introduction through every connected introducer,
which tells both sides each other's addresses and NAT kinds so both start handshakes at
once. From the two NAT kinds each side derives the same ``traversal.Plan``: plain
dialing, a birthday punch, and a relayed session through the introducer if no direct
one exists by the plan's deadline. When two sessions with one peer exist, a direct one
wins over a relayed one; otherwise both sides prefer the one started by the smaller id.

Besides the node's own socket (id 0) the core may use more: a birthday punch sends from
a pool of sockets with positive ids (the driver opens one the first time a datagram
names it, and closes those ``sockets_to_close`` returns), and a STUN server with an
alternate address answers from sockets with negative ids that its driver registered.
"""

from __future__ import annotations

import ipaddress
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from shoal.core import events as ev
from shoal.core import stun
from shoal.core.config import CoreConfig
from shoal.core.handshake import PROLOGUE, PendingHandshake, check_proof, make_proof
from shoal.core.natcheck import NatCheck, NatReport
from shoal.core.noise import HandshakeState
from shoal.core.punching import PunchScheduler
from shoal.core.relay import RelayQuotas, TokenBucket
from shoal.core.session import CLOSE_NORMAL, Session
from shoal.core.traversal import NatType, Plan, choose_plan
from shoal.core.wire import (
    AEAD_TAG_SIZE,
    DATA_HEADER_SIZE,
    MAX_RELAYED_DATAGRAM,
    PROTOCOL_VERSION,
    Address,
    HandshakeDone,
    Intro,
    IntroFailed,
    IntroRequest,
    ObservedAddress,
    PacketKind,
    Register,
    RelayPath,
    RelayRecv,
    RelaySend,
    decode_final,
    decode_init,
    decode_punch,
    decode_resp,
    encode_final,
    encode_init,
    encode_resp,
)
from shoal.errors import ClosedError, LocalProtocolError, RemoteProtocolError
from shoal.identity import Identity, peer_id_to_bytes

MAX_PENDING_RESPONDER = 1024
MAX_PUNCH_TOKENS = 4096
INTRO_RETRY = 2.0
INTRODUCER_BACKOFF_MAX = 30.0
STUN_RETRIES = (0.5, 1.0)


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


@dataclass(slots=True)
class _Peer:
    peer: bytes
    session: Session | None = None
    addresses: dict[Address, str] = field(default_factory=dict)
    pending: list[tuple[int, bytes]] = field(default_factory=list)
    intro_requested: float = -1e9
    unknown: bool = False
    """Every introducer asked said it does not know this peer."""
    nat: NatType = field(default_factory=NatType)
    plan: Plan | None = None
    relay_via: bytes | None = None
    """The introducer that introduced us, which can relay between us."""
    relay_at: float | None = None
    punch_target: Address | None = None
    token: bytes = b""


@dataclass(slots=True)
class _Introducer:
    address: Address
    peer: bytes | None = None
    dialing: bool = False
    next_attempt: float = 0.0
    backoff: float = 1.0


@dataclass(slots=True)
class _StunAlternate:
    """A STUN server's four addresses (RFC 5780), keyed by (other IP?, other port?)."""

    other: Address
    sockets: dict[tuple[bool, bool], int]
    addresses: dict[tuple[bool, bool], Address]

    def place(self, socket: int) -> tuple[bool, bool] | None:
        return next((k for k, s in self.sockets.items() if s == socket), None)


@dataclass(slots=True)
class _StunQuery:
    handle: int
    server: Address
    request: bytes
    first_sent: float
    retries: list[float]
    deadline: float


class Endpoint:
    """All of one node's protocol state. See the module docstring for the driving contract."""

    def __init__(
        self,
        identity: Identity,
        *,
        random_bytes: Callable[[int], bytes],
        config: CoreConfig | None = None,
    ) -> None:
        self.identity = identity
        self.config = config or CoreConfig()
        self._random = random_bytes
        self._proof = make_proof(identity, self.config.introducer)
        self._me = identity.public_key
        self.sessions: dict[bytes, Session] = {}
        self._handshakes: dict[bytes, PendingHandshake] = {}
        self._responder_index: dict[tuple[Address, bytes], bytes] = {}
        self._peers: dict[bytes, _Peer] = {}
        self._introducers: dict[Address, _Introducer] = {}
        self._introducer_peers: set[bytes] = set()
        self._registry: dict[bytes, tuple[Session, tuple[Address, ...]]] = {}
        self._local_addresses: tuple[Address, ...] = ()
        self._observed: dict[bytes, Address] = {}
        self._next_handle = 1
        self._message_peer: dict[int, bytes] = {}
        # Every message gets the same timeout, so deadlines arrive in order: a FIFO, from
        # which delivered messages are dropped lazily.
        self._deadlines: deque[tuple[float, int]] = deque()
        self._stun: dict[bytes, _StunQuery] = {}
        self._buckets: dict[str, TokenBucket] = {}
        self._events: deque[ev.Event] = deque()
        self._out: list[tuple[bytes, Address, int]] = []
        self._dirty: dict[Session, None] = {}  # ordered, so runs replay exactly
        self._next_request_id = 1
        self._nat_check: NatCheck | None = None
        self.nat_report: NatReport | None = None
        self._nat = NatType()
        self._stun_alternate: _StunAlternate | None = None
        self._punches = PunchScheduler(random_bytes)
        self._punch_tokens: dict[bytes, bytes] = {}
        self._relay_quotas = RelayQuotas(self.config, self._connected_direct)
        self._closed = False
        self.stats: Counter[str] = Counter()

    # ================================================================== public commands

    @property
    def peer_id(self) -> str:
        return self.identity.peer_id

    def set_local_addresses(self, addresses: Iterable[Address]) -> None:
        """The addresses this node can be reached at on its own networks (sent to introducers)."""
        self._local_addresses = tuple(dict.fromkeys(addresses))[:8]

    def add_introducer(self, address: Address, now: float) -> None:
        """Connect to an introducer at ``address`` now, and again whenever it drops."""
        self._check_open()
        if address not in self._introducers:
            self._introducers[address] = _Introducer(address)
        self._service_introducers(now)

    def add_peer_address(self, peer_id: str, address: Address, now: float, source: str) -> None:
        """Learn a candidate address for ``peer_id`` (from LAN discovery or the app)."""
        peer = peer_id_to_bytes(peer_id)
        if peer == self._me:
            return
        state = self._peer(peer)
        state.addresses[address] = source
        if state.pending and (state.session is None or state.session.closed):
            self._dial(address, now, expected=peer)

    def connect(self, address: Address, now: float, peer_id: str | None = None) -> None:
        """Start a handshake with whatever node listens at ``address``."""
        self._check_open()
        expected = peer_id_to_bytes(peer_id) if peer_id else None
        self._dial(address, now, expected=expected)

    def send_message(self, peer_id: str, data: bytes, now: float) -> int:
        """Queue a direct message; returns a handle that later events refer to.

        ``MessageDelivered`` follows once the receiver acknowledged every byte, or
        ``MessageFailed`` when it cannot be delivered within ``message_timeout``.
        """
        self._check_open()
        peer = peer_id_to_bytes(peer_id)
        if peer == self._me:
            raise LocalProtocolError("cannot send a message to this node itself")
        if len(data) > self.config.max_message_size:
            raise LocalProtocolError(
                f"message of {len(data)} bytes exceeds the limit of "
                f"{self.config.max_message_size}",
                code="EMSGSIZE",
            )
        handle = self._next_handle
        self._next_handle += 1
        self._message_peer[handle] = peer
        self._deadlines.append((now + self.config.message_timeout, handle))
        if len(self._deadlines) > 2 * len(self._message_peer) + 1024:
            live = self._message_peer
            self._deadlines = deque(d for d in self._deadlines if d[1] in live)
        state = self._peer(peer)
        session = state.session
        if session is not None and not session.closed:
            session.send_message(handle, bytes(data))
            self._mark(session)
        else:
            state.pending.append((handle, bytes(data)))
            self._ensure_connecting(state, now)
        return handle

    def cancel_message(self, handle: int, now: float, reason: str = "cancelled") -> None:
        """Give up on a message: it fails with ``ECANCELED`` unless already delivered."""
        self._fail_message(handle, "ECANCELED", reason)

    def stun_request(self, server: Address, now: float) -> int:
        """Ask a STUN server for our public address; answered by a ``StunResult`` event."""
        self._check_open()
        handle = self._next_handle
        self._next_handle += 1
        txid = self._random(12)
        request = stun.encode_binding_request(txid)
        self._stun[txid] = _StunQuery(
            handle, server, request, now, [now + t for t in STUN_RETRIES],
            now + self.config.stun_timeout,
        )
        self._send(request, server)
        return handle

    def start_nat_check(self, now: float, servers: Iterable[Address] = ()) -> None:
        """Learn this node's NAT kind from the introducers (and ``servers``) now.

        Also runs by itself once the first introducer reports our address, and again when
        an introducer reports a different one. Ends with a ``NatDetected`` event.
        """
        self._check_open()
        every = [*self._introducers, *self.config.stun_servers, *servers]
        targets = tuple(dict.fromkeys(a for a in every if not isinstance(a, RelayPath)))
        if not targets:
            return
        self._nat_check = NatCheck(targets, self._local_addresses, self._random, now)
        self._after_nat_check(now)

    @property
    def nat(self) -> NatType:
        """This node's NAT kind as last detected (all "unknown" before the first check)."""
        return self._nat

    def set_nat_type(self, nat: NatType) -> None:
        """Declare this node's NAT kind instead of detecting it (with ``nat_check`` off)."""
        self._nat = nat

    def set_stun_alternate(
        self, primary: Address, other: Address, *, port_socket: int, ip_socket: int,
        both_socket: int,
    ) -> None:
        """Act as an RFC 5780 STUN server. This node listens at ``primary`` on socket 0 and
        the driver has opened (and feeds datagrams from) negative-id sockets at the
        primary IP with the other port (``port_socket``), the other IP with the primary
        port (``ip_socket``) and ``other`` itself (``both_socket``)."""
        if max(port_socket, ip_socket, both_socket) >= 0:
            raise LocalProtocolError("alternate STUN sockets use negative ids")
        (ip1, port1), (ip2, port2) = primary, other
        self._stun_alternate = _StunAlternate(
            other,
            {(False, False): 0, (False, True): port_socket, (True, False): ip_socket,
             (True, True): both_socket},
            {(False, False): primary, (False, True): (ip1, port2), (True, False): (ip2, port1),
             (True, True): other},
        )

    def sockets_to_close(self) -> list[int]:
        """Pool sockets the driver should close now (their punch is over)."""
        out, self._punches.closing = self._punches.closing, []
        return out

    def close(self, now: float) -> None:
        """Close every session (peers are told) and fail every undelivered message."""
        if self._closed:
            return
        for session in list(self.sessions.values()):
            if not session.closed:
                session.close(CLOSE_NORMAL, "node shutting down")
                for datagram in session.datagrams(now):
                    self._send(datagram, session.address, session.socket)
            self._drop_session(session, "node shutting down", notify=False)
        for handle in list(self._message_peer):
            self._fail_message(handle, "ECLOSED", "node closed")
        self._handshakes.clear()
        self._punches.close_all()
        self._closed = True

    def peers(self) -> list[PeerInfo]:
        """Known peers, connected or not."""
        out = []
        for state in self._peers.values():
            session = state.session if state.session and not state.session.closed else None
            out.append(
                PeerInfo(
                    peer_id=state.peer.hex(),
                    connected=session is not None,
                    address=session.address if session else None,
                    path=session.path if session else None,
                    rtt=session.rtt.smoothed if session else None,
                    introducer=state.peer in self._introducer_peers,
                    known_addresses=tuple(state.addresses),
                )
            )
        return out

    def observed_addresses(self) -> dict[str, Address]:
        """Our address as each connected peer reports seeing it."""
        return {peer.hex(): address for peer, address in self._observed.items()}

    # ================================================================== driver interface

    def receive_datagram(self, data: bytes, address: Address, now: float, socket: int = 0) -> None:
        """Process one datagram that arrived on ``socket``. Never raises for anything the
        network sends."""
        if self._closed:
            return
        self.stats["rx_datagrams"] += 1
        if not data:
            self.stats["dropped_malformed"] += 1
            return
        kind = data[0]
        try:
            if socket < 0:  # a STUN server's alternate address answers STUN only
                if kind < 0x40:
                    self._on_stun(data, address, now, socket)
                else:
                    self.stats["dropped_malformed"] += 1
            elif kind == PacketKind.DATA:
                self._on_data(data, address, now)
            elif kind < 0x40:
                self._on_stun(data, address, now, socket)
            elif kind == PacketKind.PUNCH:
                self._on_punch(data, address, now, socket)
            elif kind == PacketKind.INIT:
                self._on_init(data, address, now, socket)
            elif kind == PacketKind.RESP:
                self._on_resp(data, address, now)
            elif kind == PacketKind.FINAL:
                self._on_final(data, address, now)
            else:
                self.stats["dropped_malformed"] += 1
        except RemoteProtocolError:
            self.stats["dropped_malformed"] += 1

    def handle_timer(self, now: float) -> None:
        """Run everything whose deadline has passed."""
        if self._closed:
            return
        for session in list(self.sessions.values()):
            if session.get_timer() <= now:
                session.handle_timer(now)
                self._after_session(session, now)
        for handshake in list(self._handshakes.values()):
            if now >= handshake.deadline:
                self._handshake_timed_out(handshake, now)
            elif handshake.initiator and now >= handshake.next_retry:
                handshake.backoff = min(handshake.backoff * 2, 2.0)
                handshake.next_retry = now + handshake.backoff
                self._send(handshake.datagram, handshake.address, handshake.socket)
        deadlines = self._deadlines
        while deadlines and (deadlines[0][0] <= now or deadlines[0][1] not in self._message_peer):
            _, handle = deadlines.popleft()
            peer = self._message_peer.get(handle)
            if peer is not None:
                state = self._peers.get(peer)
                if state is not None and state.unknown and state.session is None:
                    self._fail_message(handle, "EHOSTUNREACH", "no introducer knows this peer")
                else:
                    self._fail_message(handle, "ETIMEDOUT", "not acknowledged in time")
        for txid, query in list(self._stun.items()):
            if now >= query.deadline:
                del self._stun[txid]
                self._events.append(
                    ev.StunResult(handle=query.handle, server=query.server, mapped=None, rtt=None)
                )
            elif query.retries and now >= query.retries[0]:
                query.retries.pop(0)
                self._send(query.request, query.server)
        self._service_introducers(now)
        for state in self._peers.values():
            if state.pending and now >= state.intro_requested + INTRO_RETRY:
                self._ensure_connecting(state, now)
            if state.relay_at is not None and now >= state.relay_at:
                state.relay_at = None
                self._dial_relayed(state, now)
        check = self._nat_check
        if check is not None:
            check.handle_timer(now)
            self._after_nat_check(now)
        self._run_punch(now)

    def get_timer(self) -> float | None:
        """The next absolute time ``handle_timer`` must run, or None."""
        if self._closed:
            return None
        candidates = [s.get_timer() for s in self.sessions.values()]
        for handshake in self._handshakes.values():
            candidates.append(handshake.deadline)
            if handshake.initiator:
                candidates.append(handshake.next_retry)
        while self._deadlines and self._deadlines[0][1] not in self._message_peer:
            self._deadlines.popleft()
        if self._deadlines:
            candidates.append(self._deadlines[0][0])
        for query in self._stun.values():
            candidates.append(query.retries[0] if query.retries else query.deadline)
        for intro in self._introducers.values():
            if intro.peer is None and not intro.dialing:
                candidates.append(intro.next_attempt)
        for state in self._peers.values():
            if state.pending:
                candidates.append(state.intro_requested + INTRO_RETRY)
            if state.relay_at is not None:
                candidates.append(state.relay_at)
        if self._nat_check is not None and (deadline := self._nat_check.get_timer()) is not None:
            candidates.append(deadline)
        if (deadline := self._punches.get_timer()) is not None:
            candidates.append(deadline)
        return min(candidates) if candidates else None

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address, int]]:
        """Everything to put on the wire now, as (datagram, destination, socket id)."""
        # Relayed sessions hand their packets to the relay's session, which may then
        # have more to send: hence the loop.
        while self._dirty:
            dirty = self._dirty
            self._dirty = {}
            out = self._out
            for session in dirty:
                address = session.address
                if isinstance(address, RelayPath):
                    for datagram in session.datagrams(now):
                        self._send(datagram, address)
                else:
                    socket = session.socket
                    for datagram in session.datagrams(now):
                        out.append((datagram, address, socket))
        out = self._out
        self._out = []
        self.stats["tx_datagrams"] += len(out)
        return out

    def next_event(self) -> ev.Event | None:
        return self._events.popleft() if self._events else None

    # ================================================================== receiving

    def _on_data(self, data: bytes, address: Address, now: float) -> None:
        if len(data) < DATA_HEADER_SIZE + AEAD_TAG_SIZE:
            self.stats["dropped_malformed"] += 1
            return
        session = self.sessions.get(data[1:9])
        if session is None:
            self.stats["dropped_unknown_session"] += 1
            return
        if not session.receive(data, address, now):
            self.stats[f"dropped_{session.drop_reason}"] += 1
            return
        self._after_session(session, now)

    def _after_session(self, session: Session, now: float) -> None:
        """Collect what a session produced after input or a timer."""
        if session.events:
            for event in session.events:
                if (
                    isinstance(event, ev.MessageDelivered)
                    and self._message_peer.pop(event.handle, None) is None
                ):
                    continue  # already failed or cancelled
                self._events.append(event)
            session.events.clear()
        if session.rebound:
            session.rebound = False
            session.queue_control(ObservedAddress(session.address))
        if session.control_in:
            frames = session.control_in
            session.control_in = []
            for frame in frames:
                self._on_control(session, frame, now)
        self._mark(session)
        if session.closed:
            for datagram in session.datagrams(now):
                self._send(datagram, session.address, session.socket)
            self._drop_session(session, session.close_reason)

    def _on_control(self, session: Session, frame: object, now: float) -> None:
        if isinstance(frame, RelaySend):
            self._on_relay_send(session, frame, now)
        elif isinstance(frame, RelayRecv):
            self._receive_relayed(frame.packet, RelayPath(session.peer, frame.peer), now)
        elif isinstance(frame, ObservedAddress):
            previous = self._observed.get(session.peer)
            self._observed[session.peer] = frame.address
            self._events.append(ev.AddressObserved(reporter=session.peer_id, address=frame.address))
            if session.peer in self._introducer_peers and self.config.nat_check and (
                (self._nat_check is None and self.nat_report is None)
                or (previous is not None and previous != frame.address)
            ):
                self.start_nat_check(now)
        elif isinstance(frame, Register):
            if self.config.introducer and not isinstance(session.address, RelayPath):
                self._registry[session.peer] = (session, frame.local, frame.nat)
                # Answering only now tells the peer it is listed and can be introduced.
                session.queue_control(ObservedAddress(session.address))
        elif isinstance(frame, IntroRequest):
            self._on_intro_request(session, frame)
        elif isinstance(frame, Intro):
            if session.peer in self._introducer_peers:
                self._on_intro(frame, session.peer, now)
            else:
                self.stats["dropped_unsolicited_intro"] += 1
        elif isinstance(frame, IntroFailed) and session.peer in self._introducer_peers:
            # The peer may register later; requests repeat until the message deadline.
            state = self._peers.get(frame.target)
            if state is not None:
                state.unknown = True

    def _on_intro_request(self, session: Session, frame: IntroRequest) -> None:
        target = self._registry.get(frame.target) if self.config.introducer else None
        if target is None or target[0].closed or frame.target == session.peer:
            session.queue_control(IntroFailed(frame.request_id, frame.target))
            return
        target_session, target_local, target_nat = target
        mine = self._registry.get(session.peer)
        my_local, my_nat = (mine[1], mine[2]) if mine else ((), 0)
        token = self._random(8)
        session.queue_control(
            Intro(frame.request_id, frame.target, _addresses(target_session.address, target_local),
                  target_nat, token)
        )
        target_session.queue_control(
            Intro(0, session.peer, _addresses(session.address, my_local), my_nat, token)
        )
        self._mark(target_session)
        self.stats["introductions"] += 1

    def _on_intro(self, frame: Intro, introducer: bytes, now: float) -> None:
        if frame.peer == self._me:
            return
        state = self._peer(frame.peer)
        for address in frame.addresses:
            state.addresses.setdefault(address, "introducer")
        state.nat = NatType.from_code(frame.nat)
        state.relay_via = introducer
        state.token = frame.token
        # Earlier tokens stay valid: a punch in progress still carries one.
        self._punch_tokens[frame.token] = frame.peer
        if len(self._punch_tokens) > MAX_PUNCH_TOKENS:
            del self._punch_tokens[next(iter(self._punch_tokens))]
        if self._has_direct(state):
            return
        previous = state.plan
        plan = state.plan = choose_plan(self._nat, state.nat)
        self.stats[f"plan_{plan.strategy}"] += 1
        for address in frame.addresses:
            self._dial(address, now, expected=frame.peer)
        if self.config.relay and (state.session is None or state.session.closed) and (
            # Repeated introductions with the same plan must not push the fallback away.
            state.relay_at is None or previous != plan
        ):
            state.relay_at = now + plan.relay_after
        if plan.strategy == "birthday" and self.config.punching and frame.addresses:
            state.punch_target = frame.addresses[0]
            active = self._punches.active
            if active is not None and active.peer == frame.peer and (
                active.role != plan.punch_role
            ):
                self._end_punch(now)
            self._punches.request(frame.peer)
            self._run_punch(now)
        else:
            self._punches.forget(frame.peer)
            if self._punches.is_punching(frame.peer):
                self._end_punch(now)

    def _on_stun(self, data: bytes, address: Address, now: float, socket: int) -> None:
        if not stun.looks_like_stun(data):
            self.stats["dropped_malformed"] += 1
            return
        message = stun.decode(data)
        if message.method_class == stun.BINDING_REQUEST:
            if not self.config.stun_server or not self._allow(address, now):
                self.stats["dropped_rate_limited"] += 1
                return
            self._answer_stun(message, address, socket)
        elif message.method_class == stun.BINDING_SUCCESS:
            check = self._nat_check
            if check is not None and check.on_answer(message, now):
                self._after_nat_check(now)
                return
            query = self._stun.pop(message.transaction_id, None)
            if query is None:
                self.stats["dropped_unsolicited_stun"] += 1
                return
            self._events.append(
                ev.StunResult(
                    handle=query.handle, server=query.server, mapped=message.mapped,
                    rtt=now - query.first_sent,
                )
            )
        else:
            self.stats["dropped_stun_other"] += 1

    def _answer_stun(self, message: stun.StunMessage, address: Address, socket: int) -> None:
        """Answer a Binding request, from a changed address when asked (RFC 5780) and
        with the alternate named, as long as the answer is no larger than the request."""
        alternate = self._stun_alternate
        txid = message.transaction_id
        answer = stun.encode_binding_success(txid, address)
        place = alternate.place(socket) if alternate is not None else None
        if alternate is not None and place is not None:
            reply = (place[0] != bool(message.change & stun.CHANGE_IP),
                     place[1] != bool(message.change & stun.CHANGE_PORT))
            reply_socket, origin = alternate.sockets[reply], alternate.addresses[reply]
            rich = stun.encode_binding_success(txid, address, other=alternate.other, origin=origin)
            if len(rich) <= message.size:
                self._send(rich, address, reply_socket)
                self.stats["stun_answered"] += 1
                return
            if message.change:  # unpadded change requests would amplify: stay silent
                self.stats["dropped_stun_unpadded"] += 1
                return
        self._send(answer, address, socket)
        self.stats["stun_answered"] += 1

    def _on_init(
        self, data: bytes, address: Address, now: float, socket: int = 0, *, relayed: bool = False
    ) -> None:
        version, remote_sid, noise_message = decode_init(data, padded=not relayed)
        if version != PROTOCOL_VERSION:
            self.stats["dropped_version"] += 1
            return
        existing = self._responder_index.get((address, remote_sid))
        if existing is not None and existing in self._handshakes:
            self._send(self._handshakes[existing].datagram, address, socket)
            self.stats["handshakes_repeated"] += 1
            return
        if not self._allow(address, now):
            self.stats["dropped_rate_limited"] += 1
            return
        responders = len(self._responder_index)
        if responders >= MAX_PENDING_RESPONDER or len(self.sessions) >= self.config.max_sessions:
            self.stats["dropped_busy"] += 1
            return
        state = HandshakeState(
            "XX", False, PROLOGUE, self.identity.static_key, self._random(32)
        )
        state.read_message(noise_message)
        local_sid = self._new_sid()
        reply = encode_resp(remote_sid, local_sid, state.write_message(self._proof))
        if len(reply) > len(data) and not relayed:  # never amplify; a padded INIT cannot
            return
        handshake = PendingHandshake(
            local_sid=local_sid, state=state, initiator=False, address=address, created=now,
            remote_sid=remote_sid, datagram=reply, deadline=now + self.config.handshake_timeout,
            socket=socket,
        )
        self._handshakes[local_sid] = handshake
        self._responder_index[(address, remote_sid)] = local_sid
        self._send(reply, address, socket)
        self.stats["handshakes_answered"] += 1

    def _on_resp(self, data: bytes, address: Address, now: float) -> None:
        version, receiver_sid, sender_sid, noise_message = decode_resp(data)
        handshake = self._handshakes.get(receiver_sid)
        if handshake is None or not handshake.initiator or version != PROTOCOL_VERSION:
            self.stats["dropped_unknown_session"] += 1
            return
        proven = self._complete_read(handshake, noise_message)
        if proven is None:
            return
        peer, is_introducer = proven
        if peer == self._me or (handshake.expected_peer and peer != handshake.expected_peer):
            self.stats["dropped_wrong_peer"] += 1
            self._after_failed_dial(handshake, now)
            return
        final = encode_final(sender_sid, handshake.state.write_message(self._proof))
        send_key, recv_key = handshake.state.split()
        session = Session(
            local_sid=handshake.local_sid, remote_sid=sender_sid, peer=peer,
            peer_introducer=is_introducer, initiator=True, send_key=send_key,
            recv_key=recv_key, address=address, now=now, config=self.config,
            socket=handshake.socket,
        )
        if handshake.backoff == self.config.handshake_retry:  # INIT was never repeated
            session.rtt.update(now - handshake.created, 0.0)
        session.final_datagram = final
        session.final_deadline = now + max(session.rtt.pto(), self.config.handshake_retry)
        self._send(final, address, handshake.socket)
        if handshake.purpose == "introducer":
            self._introducer_peers.add(peer)
            intro = self._introducers.get(handshake.address)
            if intro is not None:
                intro.peer, intro.dialing, intro.backoff = peer, False, 1.0
        self._established(session, now)

    def _complete_read(
        self, handshake: PendingHandshake, noise_message: bytes
    ) -> tuple[bytes, bool] | None:
        """Read the peer's last handshake message and check its identity proof."""
        self._remove_handshake(handshake)
        try:
            payload = handshake.state.read_message(noise_message)
            return check_proof(payload, handshake.state.remote_static)
        except RemoteProtocolError:
            self.stats["dropped_handshake"] += 1
            return None

    def _on_final(self, data: bytes, address: Address, now: float) -> None:
        receiver_sid, noise_message = decode_final(data)
        handshake = self._handshakes.get(receiver_sid)
        if handshake is None or handshake.initiator:
            self.stats["dropped_unknown_session"] += 1
            return
        proven = self._complete_read(handshake, noise_message)
        if proven is None:
            return
        peer, is_introducer = proven
        if peer == self._me:
            return
        recv_key, send_key = handshake.state.split()
        session = Session(
            local_sid=handshake.local_sid, remote_sid=handshake.remote_sid, peer=peer,
            peer_introducer=is_introducer, initiator=False, send_key=send_key,
            recv_key=recv_key, address=address, now=now, config=self.config,
            socket=handshake.socket,
        )
        session.rtt.update(now - handshake.created, 0.0)  # RESP out to FINAL in
        session.queue_control(HandshakeDone(), reliable=False)
        self._established(session, now)

    # ================================================================== sessions and peers

    def _established(self, session: Session, now: float) -> None:
        self.sessions[session.local_sid] = session
        state = self._peer(session.peer)
        relayed = isinstance(session.address, RelayPath)
        if not relayed:
            state.addresses.setdefault(session.address, "session")
            state.relay_at = None
            if self._punches.is_punching(session.peer):
                self._end_punch(now)
            for token in [t for t, p in self._punch_tokens.items() if p == session.peer]:
                del self._punch_tokens[token]
        state.unknown = False
        old = state.session
        if old is None or old.closed or self._prefer(session, old):
            state.session = session
            if old is not None and not old.closed:
                old.wanted = False
        else:
            session.wanted = False
        if not relayed and not (self.config.introducer and not session.initiator):
            session.queue_control(ObservedAddress(session.address))
        if session.peer in self._introducer_peers and session.initiator:
            session.queue_control(Register(self._local_addresses, self._nat.code))
            for waiting in self._peers.values():
                if waiting.pending and waiting is not state:
                    waiting.intro_requested = -1e9
                    self._ensure_connecting(waiting, now)
        active = state.session
        if state.pending and active is not None:
            for handle, data in state.pending:
                active.send_message(handle, data)
            state.pending.clear()
            self._mark(active)
        self._mark(session)
        self._events.append(
            ev.PeerConnected(
                peer_id=session.peer_id, address=session.address, path=session.path,
                initiator=session.initiator, introducer=session.peer in self._introducer_peers,
            )
        )

    def _prefer(self, new: Session, old: Session) -> bool:
        """Whether ``new`` should replace ``old`` as the session used for sending."""
        new_direct = not isinstance(new.address, RelayPath)
        if new_direct != (not isinstance(old.address, RelayPath)):
            return new_direct
        new_starter = self._me if new.initiator else new.peer
        old_starter = self._me if old.initiator else old.peer
        if new_starter != old_starter:
            return new_starter < old_starter
        return True

    def _drop_session(self, session: Session, reason: str, *, notify: bool = True) -> None:
        self.sessions.pop(session.local_sid, None)
        self._dirty.pop(session, None)
        state = self._peers.get(session.peer)
        handles = session.pending_handles()
        if state is not None and state.session is session:
            state.session = None
            others = [s for s in self.sessions.values() if s.peer == session.peer and not s.closed]
            others.sort(key=lambda s: isinstance(s.address, RelayPath))
            replacement = others[0] if others else None
            if replacement is not None:
                replacement.wanted = True
                state.session = replacement
            elif notify:
                self._events.append(ev.PeerDisconnected(peer_id=session.peer_id, reason=reason))
        for handle in handles:
            self._fail_message(handle, "ECONNRESET", f"session ended: {reason}")
        if self._registry.get(session.peer, (None,))[0] is session:
            del self._registry[session.peer]
        self._observed.pop(session.peer, None)
        for intro in self._introducers.values():
            if intro.peer == session.peer and (state is None or state.session is None):
                intro.peer = None
                intro.next_attempt = 0.0
        if session.socket > 0:
            self._sweep_sockets()

    def _peer(self, peer: bytes) -> _Peer:
        state = self._peers.get(peer)
        if state is None:
            state = self._peers[peer] = _Peer(peer)
        return state

    def _connecting(self, state: _Peer) -> bool:
        return any(h.expected_peer == state.peer for h in self._handshakes.values())

    def _ensure_connecting(self, state: _Peer, now: float) -> None:
        for address in state.addresses:
            self._dial(address, now, expected=state.peer)
        if now < state.intro_requested + INTRO_RETRY:
            return
        for peer in self._introducer_peers:
            session = self._peers[peer].session if peer in self._peers else None
            if session is None or session.closed or peer == state.peer:
                continue
            session.queue_control(IntroRequest(self._next_request_id, state.peer))
            self._next_request_id += 1
            self._mark(session)
        state.intro_requested = now

    def _dial(self, address: Address, now: float, *, expected: bytes | None,
              purpose: str = "peer", socket: int = 0) -> None:
        for handshake in self._handshakes.values():
            if handshake.initiator and handshake.address == address and (
                handshake.expected_peer == expected and handshake.socket == socket
            ):
                return
        state = HandshakeState("XX", True, PROLOGUE, self.identity.static_key, self._random(32))
        local_sid = self._new_sid()
        relayed = isinstance(address, RelayPath)
        datagram = encode_init(local_sid, state.write_message(b""), pad=not relayed)
        self._handshakes[local_sid] = PendingHandshake(
            local_sid=local_sid, state=state, initiator=True, address=address, created=now,
            expected_peer=expected, datagram=datagram,
            next_retry=now + self.config.handshake_retry, backoff=self.config.handshake_retry,
            deadline=now + self.config.handshake_timeout, purpose=purpose, socket=socket,
        )
        self._send(datagram, address, socket)

    def _handshake_timed_out(self, handshake: PendingHandshake, now: float) -> None:
        self._remove_handshake(handshake)
        if handshake.socket > 0:
            self._sweep_sockets()
        self.stats["handshake_timeouts"] += 1
        self._after_failed_dial(handshake, now)

    def _after_failed_dial(self, handshake: PendingHandshake, now: float) -> None:
        if handshake.purpose == "introducer":
            intro = self._introducers.get(handshake.address)
            if intro is not None:
                intro.dialing = False
                intro.next_attempt = now + intro.backoff
                intro.backoff = min(intro.backoff * 2, INTRODUCER_BACKOFF_MAX)
            return
        if handshake.expected_peer is None:
            return
        state = self._peers.get(handshake.expected_peer)
        if state is None or not state.pending or self._connecting(state):
            return
        if not self._introducer_peers:
            self._fail_pending(state, "EHOSTUNREACH", "peer did not answer at any known address")

    def _remove_handshake(self, handshake: PendingHandshake) -> None:
        self._handshakes.pop(handshake.local_sid, None)
        if not handshake.initiator:
            self._responder_index.pop((handshake.address, handshake.remote_sid), None)

    def _service_introducers(self, now: float) -> None:
        for intro in self._introducers.values():
            if intro.peer is None and not intro.dialing and now >= intro.next_attempt:
                intro.dialing = True
                self._dial(intro.address, now, expected=None, purpose="introducer")

    # ================================================================== relaying

    def _send(self, datagram: bytes, address: Address, socket: int = 0) -> None:
        """Queue one datagram; one for a relayed path goes into a frame to the relay."""
        if isinstance(address, RelayPath):
            relay = self._peers.get(address.relay)
            session = relay.session if relay is not None else None
            if session is None or session.closed or len(datagram) > MAX_RELAYED_DATAGRAM:
                self.stats["dropped_relay_unavailable"] += 1
                return
            session.queue_control(RelaySend(address.peer, datagram), reliable=False)
            self._mark(session)
            return
        self._out.append((datagram, address, socket))

    def _receive_relayed(self, packet: bytes, path: RelayPath, now: float) -> None:
        """A Shoal datagram that came through a relay, from ``path.peer``."""
        self.stats["rx_relayed"] += 1
        kind = packet[0]
        try:
            if kind == PacketKind.DATA:
                self._on_data(packet, path, now)  # type: ignore[arg-type]
            elif kind == PacketKind.INIT:
                self._on_init(packet, path, now, relayed=True)  # type: ignore[arg-type]
            elif kind == PacketKind.RESP:
                self._on_resp(packet, path, now)  # type: ignore[arg-type]
            elif kind == PacketKind.FINAL:
                self._on_final(packet, path, now)  # type: ignore[arg-type]
            else:
                self.stats["dropped_malformed"] += 1
        except RemoteProtocolError:
            self.stats["dropped_malformed"] += 1

    def _on_relay_send(self, session: Session, frame: RelaySend, now: float) -> None:
        """Pass a peer's packet on to another connected peer, within the quotas."""
        source, target = session.peer, frame.peer
        state = self._peers.get(target)
        onward = state.session if state is not None else None
        if (
            not self.config.relay
            or onward is None
            or onward.closed
            or target == source
            or isinstance(onward.address, RelayPath)
            or isinstance(session.address, RelayPath)
        ):
            self.stats["dropped_relay_refused"] += 1
            return
        if not self._relay_quotas.admit(source, target, len(frame.packet), now):
            self.stats["dropped_relay_quota"] += 1
            return
        onward.queue_control(RelayRecv(source, frame.packet), reliable=False)
        self._mark(onward)
        self.stats["relayed_packets"] += 1
        self.stats["relayed_bytes"] += len(frame.packet)

    def _connected_direct(self, peer: bytes) -> bool:
        state = self._peers.get(peer)
        return state is not None and self._has_direct(state)

    def _has_direct(self, state: _Peer) -> bool:
        session = state.session
        return (
            session is not None and not session.closed
            and not isinstance(session.address, RelayPath)
        )

    def _dial_relayed(self, state: _Peer, now: float) -> None:
        relay = state.relay_via
        if relay is None or self._has_direct(state) or relay == state.peer:
            return
        session = state.session
        if session is not None and not session.closed:
            return
        if not self._connected_direct(relay):
            return
        self.stats["relay_dials"] += 1
        self._dial(RelayPath(relay, state.peer), now, expected=state.peer)  # type: ignore[arg-type]

    # ================================================================== hole punching

    def _on_punch(self, data: bytes, address: Address, now: float, socket: int) -> None:
        """A PUNCH got through a NAT: dial its sender back from the socket it reached."""
        peer = self._punch_tokens.get(decode_punch(data))
        if peer is None:
            self.stats["dropped_punch"] += 1
            return
        state = self._peers.get(peer)
        punching = any(
            h.expected_peer == peer and h.socket > 0 for h in self._handshakes.values()
        )
        if state is None or self._has_direct(state) or punching or not self._allow(address, now):
            self.stats["punches_ignored"] += 1
            return
        self.stats["punches_received"] += 1
        self._dial(address, now, expected=peer, socket=socket)

    def _run_punch(self, now: float) -> None:
        self._out.extend(self._punches.run(now, self._punch_plan))
        if self._punches.active is None and self._punches.pool_sockets:
            self._sweep_sockets()

    def _punch_plan(self, peer: bytes) -> tuple[str, Address, bytes] | None:
        state = self._peers.get(peer)
        plan = state.plan if state is not None else None
        if (
            state is None or plan is None or plan.punch_role is None
            or state.punch_target is None or self._has_direct(state)
        ):
            return None
        self.stats["punches_started"] += 1
        return plan.punch_role, state.punch_target, state.token

    def _end_punch(self, now: float) -> None:
        self._punches.end(now)
        self._sweep_sockets()

    def _sweep_sockets(self) -> None:
        """Close pool sockets that no punch, handshake or session uses any more."""
        if not self._punches.pool_sockets:
            return
        in_use = {s.socket for s in self.sessions.values()}
        in_use.update(h.socket for h in self._handshakes.values())
        self._punches.sweep(in_use)

    # ================================================================== NAT kind

    def _after_nat_check(self, now: float) -> None:
        check = self._nat_check
        if check is None:
            return
        for datagram, destination in check.datagrams():
            self._send(datagram, destination)
        if not check.done:
            return
        self._nat_check = None
        report = check.report
        assert report is not None
        self.nat_report = report
        changed = report.nat != self._nat
        self._nat = report.nat
        self._events.append(ev.NatDetected(report=report))
        if not changed:
            return
        for peer in self._introducer_peers:
            state = self._peers.get(peer)
            if state is not None and self._has_direct(state):
                assert state.session is not None
                state.session.queue_control(Register(self._local_addresses, self._nat.code))
                self._mark(state.session)
        # Peers still waiting, or only relayed, get a fresh introduction with our new kind.
        for state in self._peers.values():
            if state.peer in self._introducer_peers or self._has_direct(state):
                continue
            if state.pending or state.session is not None:
                state.intro_requested = -1e9
                self._ensure_connecting(state, now)

    # ================================================================== messages

    def _fail_message(self, handle: int, code: str, reason: str) -> None:
        peer = self._message_peer.pop(handle, None)
        if peer is None:
            return
        state = self._peers.get(peer)
        if state is not None:
            state.pending = [(h, d) for h, d in state.pending if h != handle]
            if state.session is not None:
                state.session.cancel_message(handle)
        self._events.append(ev.MessageFailed(handle=handle, peer_id=peer.hex(), code=code,
                                             reason=reason))

    def _fail_pending(self, state: _Peer, code: str, reason: str) -> None:
        for handle, _ in list(state.pending):
            self._fail_message(handle, code, reason)

    # ================================================================== helpers

    def _new_sid(self) -> bytes:
        while True:
            sid = self._random(8)
            if sid not in self.sessions and sid not in self._handshakes:
                return sid

    def _allow(self, address: Address, now: float) -> bool:
        """Per-source-IP token bucket for unauthenticated datagrams."""
        rate = self.config.max_handshakes_per_source
        burst = self.config.handshake_burst
        bucket = self._buckets.get(address[0])
        if bucket is None:
            if len(self._buckets) > 65536:
                self._buckets.clear()
            bucket = self._buckets[address[0]] = TokenBucket(burst, now)
        return bucket.take(1, rate, burst, now)

    def _mark(self, session: Session) -> None:
        self._dirty[session] = None

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("the node is closed")


def _addresses(observed: Address, local: tuple[Address, ...]) -> tuple[Address, ...]:
    """Candidates for reaching a peer: its observed address, then its usable LAN addresses."""
    out = [observed]
    for address in local:
        try:
            ip = ipaddress.ip_address(address[0])
        except ValueError:
            continue
        if ip.is_unspecified or ip.is_multicast or address in out:
            continue
        out.append(address)
    return tuple(out[:8])
