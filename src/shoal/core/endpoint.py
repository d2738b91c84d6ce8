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
which tells both sides each other's addresses so both start handshakes at once. When
two sessions with one peer exist, both sides prefer the one started by the smaller id.
"""

from __future__ import annotations

import heapq
import ipaddress
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from shoal.core import events as ev
from shoal.core import stun
from shoal.core.config import CoreConfig
from shoal.core.handshake import PROLOGUE, PendingHandshake, check_proof, make_proof
from shoal.core.noise import HandshakeState
from shoal.core.session import CLOSE_NORMAL, Session
from shoal.core.wire import (
    AEAD_TAG_SIZE,
    DATA_HEADER_SIZE,
    PROTOCOL_VERSION,
    Address,
    HandshakeDone,
    Intro,
    IntroFailed,
    IntroRequest,
    ObservedAddress,
    PacketKind,
    Register,
    decode_final,
    decode_init,
    decode_resp,
    encode_final,
    encode_init,
    encode_resp,
)
from shoal.errors import ClosedError, LocalProtocolError, RemoteProtocolError
from shoal.identity import Identity, peer_id_to_bytes

MAX_PENDING_RESPONDER = 1024
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


@dataclass(slots=True)
class _Introducer:
    address: Address
    peer: bytes | None = None
    dialing: bool = False
    next_attempt: float = 0.0
    backoff: float = 1.0


@dataclass(slots=True)
class _StunQuery:
    handle: int
    server: Address
    request: bytes
    first_sent: float
    retries: list[float]
    deadline: float


class _TokenBucket:
    __slots__ = ("tokens", "stamp")

    def __init__(self, tokens: float, stamp: float) -> None:
        self.tokens = tokens
        self.stamp = stamp


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
        self._deadlines: list[tuple[float, int]] = []
        self._stun: dict[bytes, _StunQuery] = {}
        self._buckets: dict[str, _TokenBucket] = {}
        self._events: deque[ev.Event] = deque()
        self._out: list[tuple[bytes, Address]] = []
        self._dirty: dict[Session, None] = {}  # ordered, so runs replay exactly
        self._next_request_id = 1
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
        heapq.heappush(self._deadlines, (now + self.config.message_timeout, handle))
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
        self._out.append((request, server))
        return handle

    def close(self, now: float) -> None:
        """Close every session (peers are told) and fail every undelivered message."""
        if self._closed:
            return
        for session in list(self.sessions.values()):
            if not session.closed:
                session.close(CLOSE_NORMAL, "node shutting down")
                self._out.extend((d, session.address) for d in session.datagrams(now))
            self._drop_session(session, "node shutting down", notify=False)
        for handle in list(self._message_peer):
            self._fail_message(handle, "ECLOSED", "node closed")
        self._handshakes.clear()
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

    def receive_datagram(self, data: bytes, address: Address, now: float) -> None:
        """Process one datagram. Never raises for anything the network sends."""
        if self._closed:
            return
        self.stats["rx_datagrams"] += 1
        if not data:
            self.stats["dropped_malformed"] += 1
            return
        kind = data[0]
        try:
            if kind == PacketKind.DATA:
                self._on_data(data, address, now)
            elif kind < 0x40:
                self._on_stun(data, address, now)
            elif kind == PacketKind.INIT:
                self._on_init(data, address, now)
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
                self._out.append((handshake.datagram, handshake.address))
        while self._deadlines and self._deadlines[0][0] <= now:
            _, handle = heapq.heappop(self._deadlines)
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
                self._out.append((query.request, query.server))
        self._service_introducers(now)
        for state in self._peers.values():
            if state.pending and now >= state.intro_requested + INTRO_RETRY:
                self._ensure_connecting(state, now)

    def get_timer(self) -> float | None:
        """The next absolute time ``handle_timer`` must run, or None."""
        if self._closed:
            return None
        candidates = [s.get_timer() for s in self.sessions.values()]
        for handshake in self._handshakes.values():
            candidates.append(handshake.deadline)
            if handshake.initiator:
                candidates.append(handshake.next_retry)
        if self._deadlines:
            candidates.append(self._deadlines[0][0])
        for query in self._stun.values():
            candidates.append(query.retries[0] if query.retries else query.deadline)
        for intro in self._introducers.values():
            if intro.peer is None and not intro.dialing:
                candidates.append(intro.next_attempt)
        waiting = [s.intro_requested for s in self._peers.values() if s.pending]
        if waiting:
            candidates.append(min(waiting) + INTRO_RETRY)
        return min(candidates) if candidates else None

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]:
        """Everything to put on the wire now, as (datagram, destination) pairs."""
        out = self._out
        self._out = []
        if self._dirty:
            dirty = self._dirty
            self._dirty = {}
            for session in dirty:
                address = session.address
                for datagram in session.datagrams(now):
                    out.append((datagram, address))
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
            self.stats["dropped_unauthenticated"] += 1
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
        if session.control_in:
            frames = session.control_in
            session.control_in = []
            for frame in frames:
                self._on_control(session, frame, now)
        self._mark(session)
        if session.closed:
            self._out.extend((d, session.address) for d in session.datagrams(now))
            self._drop_session(session, session.close_reason)

    def _on_control(self, session: Session, frame: object, now: float) -> None:
        if isinstance(frame, ObservedAddress):
            self._observed[session.peer] = frame.address
            self._events.append(ev.AddressObserved(reporter=session.peer_id, address=frame.address))
        elif isinstance(frame, Register):
            if self.config.introducer:
                self._registry[session.peer] = (session, frame.local)
                # Answering only now tells the peer it is listed and can be introduced.
                session.queue_control(ObservedAddress(session.address))
        elif isinstance(frame, IntroRequest):
            self._on_intro_request(session, frame)
        elif isinstance(frame, Intro):
            if session.peer in self._introducer_peers:
                self._on_intro(frame, now)
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
        target_session, target_local = target
        mine = self._registry.get(session.peer)
        my_local = mine[1] if mine else ()
        session.queue_control(
            Intro(frame.request_id, frame.target, _addresses(target_session.address, target_local))
        )
        target_session.queue_control(
            Intro(0, session.peer, _addresses(session.address, my_local))
        )
        self._mark(target_session)
        self.stats["introductions"] += 1

    def _on_intro(self, frame: Intro, now: float) -> None:
        if frame.peer == self._me:
            return
        state = self._peer(frame.peer)
        for address in frame.addresses:
            state.addresses.setdefault(address, "introducer")
        if state.session is not None and not state.session.closed:
            return
        for address in frame.addresses:
            self._dial(address, now, expected=frame.peer)

    def _on_stun(self, data: bytes, address: Address, now: float) -> None:
        if not stun.looks_like_stun(data):
            self.stats["dropped_malformed"] += 1
            return
        message = stun.decode(data)
        if message.method_class == stun.BINDING_REQUEST:
            if not self.config.stun_server or not self._allow(address, now):
                self.stats["dropped_rate_limited"] += 1
                return
            answer = stun.encode_binding_success(message.transaction_id, address)
            self._out.append((answer, address))
            self.stats["stun_answered"] += 1
        elif message.method_class == stun.BINDING_SUCCESS:
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

    def _on_init(self, data: bytes, address: Address, now: float) -> None:
        version, remote_sid, noise_message = decode_init(data)
        if version != PROTOCOL_VERSION:
            self.stats["dropped_version"] += 1
            return
        existing = self._responder_index.get((address, remote_sid))
        if existing is not None and existing in self._handshakes:
            self._out.append((self._handshakes[existing].datagram, address))
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
        if len(reply) > len(data):  # never amplify: cannot happen with a padded INIT
            return
        handshake = PendingHandshake(
            local_sid=local_sid, state=state, initiator=False, address=address, created=now,
            remote_sid=remote_sid, datagram=reply, deadline=now + self.config.handshake_timeout,
        )
        self._handshakes[local_sid] = handshake
        self._responder_index[(address, remote_sid)] = local_sid
        self._out.append((reply, address))
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
        )
        if handshake.backoff == self.config.handshake_retry:  # INIT was never repeated
            session.rtt.update(now - handshake.created, 0.0)
        session.final_datagram = final
        session.final_deadline = now + max(session.rtt.pto(), self.config.handshake_retry)
        self._out.append((final, address))
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
        )
        session.rtt.update(now - handshake.created, 0.0)  # RESP out to FINAL in
        session.queue_control(HandshakeDone(), reliable=False)
        self._established(session, now)

    # ================================================================== sessions and peers

    def _established(self, session: Session, now: float) -> None:
        self.sessions[session.local_sid] = session
        state = self._peer(session.peer)
        state.addresses.setdefault(session.address, "session")
        state.unknown = False
        old = state.session
        if old is None or old.closed or self._prefer(session, old):
            state.session = session
            if old is not None and not old.closed:
                old.wanted = False
        else:
            session.wanted = False
        if not (self.config.introducer and not session.initiator):
            session.queue_control(ObservedAddress(session.address))
        if session.peer in self._introducer_peers and session.initiator:
            session.queue_control(Register(self._local_addresses))
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
            replacement = next(
                (s for s in self.sessions.values() if s.peer == session.peer and not s.closed),
                None,
            )
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
              purpose: str = "peer") -> None:
        for handshake in self._handshakes.values():
            if handshake.initiator and handshake.address == address and (
                handshake.expected_peer == expected
            ):
                return
        state = HandshakeState("XX", True, PROLOGUE, self.identity.static_key, self._random(32))
        local_sid = self._new_sid()
        datagram = encode_init(local_sid, state.write_message(b""))
        self._handshakes[local_sid] = PendingHandshake(
            local_sid=local_sid, state=state, initiator=True, address=address, created=now,
            expected_peer=expected, datagram=datagram,
            next_retry=now + self.config.handshake_retry, backoff=self.config.handshake_retry,
            deadline=now + self.config.handshake_timeout, purpose=purpose,
        )
        self._out.append((datagram, address))

    def _handshake_timed_out(self, handshake: PendingHandshake, now: float) -> None:
        self._remove_handshake(handshake)
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
            bucket = self._buckets[address[0]] = _TokenBucket(burst, now)
        bucket.tokens = min(burst, bucket.tokens + (now - bucket.stamp) * rate)
        bucket.stamp = now
        if bucket.tokens < 1:
            return False
        bucket.tokens -= 1
        return True

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
