"""The handshake engine: Noise XX and IK handshakes, cookies, versions and early data.

Theory of operation
-------------------
``Handshakes`` turns handshake datagrams (INIT, INIT_IK, RESP, FINAL, FINAL_IK, COOKIE,
VERSION) into established ``Connection`` objects, which it returns to the endpoint; it
never decides what a connection is for (see ``peers``).

Initiator: ``dial`` sends an INIT (padded to 1200 bytes) and retransmits it with backoff
until ``handshake_timeout``; a RESP that proves the expected peer completes it, and the
FINAL it sends back goes again with the connection's first packets until the peer
confirms. When the peer's X25519 static key is known (an introducer vouched for it), the
INIT is an INIT_IK carrying the first message waiting for the peer (*early data*); the
RESP says whether it was taken.

Responder: keeps no state per INIT. Its session id and Noise seed derive from a
rotating secret and the INIT itself (``handshake.ResponderSecrets``), so a FINAL is
checked against what the INIT must have been, and a FINAL replayed after its connection
was made is refused. Unauthenticated input is rate limited per source (``admission``),
and beyond ``handshake_rate`` INITs a second the node answers with cookies only. An early
message is delivered at most once, and only within ``EARLY_WINDOW`` of its stamp.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from shoal.core.admission import prefix_of
from shoal.core.config import CoreConfig
from shoal.core.connection import CLOSE_BUSY, Connection
from shoal.core.handshake import (
    INCARNATION_SIZE,
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
from shoal.core.noise import HandshakeState
from shoal.core.relay import TokenBucket
from shoal.core.timers import TimerHeap
from shoal.core.wire import (
    SUPPORTED_VERSIONS,
    Address,
    HandshakeDone,
    PacketKind,
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
from shoal.errors import RemoteProtocolError
from shoal.identity import Identity

if TYPE_CHECKING:
    from shoal.core.services.interfaces import EarlyData, Rendezvous


class Host(Protocol):
    """What the handshakes need of the endpoint that holds them."""

    connections: dict[bytes, Connection]
    wall_offset: float
    early_from: float

    def send_datagram(self, datagram: bytes, address: Address, socket: int = 0) -> None: ...
    def allow_unauthenticated(self, address: Address, now: float) -> bool: ...
    def connection_to(self, peer: bytes) -> Connection | None: ...
    def make_room(self, prefix: str, now: float) -> bool: ...
    def flush_connection(self, connection: Connection, now: float) -> None: ...
    def sweep_sockets(self) -> None: ...
    def reached(self, connection: Connection, address: Address, socket: int,
                now: float) -> None: ...


class Handshakes:
    """Every handshake of one node in progress (see the module docstring)."""

    def __init__(self, identity: Identity, config: CoreConfig, *,
                 random_bytes: Callable[[int], bytes], host: Host, timers: TimerHeap,
                 stats: Counter[str], readers: dict, early: EarlyData,
                 rendezvous: Rendezvous) -> None:
        self.identity = identity
        self.config = config
        self.random = random_bytes
        self.host = host
        self.timers = timers
        self.stats = stats
        self.readers = readers
        self.early = early
        self.rendezvous = rendezvous
        self._me = identity.public_key
        self.dials: dict[bytes, Dial] = {}
        self._secrets = ResponderSecrets(random_bytes, 0.0)
        self.incarnation = self._secrets.derive(b"incarnation")[:INCARNATION_SIZE]
        """Random, new each time the node starts; in every proof it sends (see
        ``handshake``): a peer that sees it change knows this node restarted."""
        self.timers.set(self, self._secrets.next_rotation())
        self._work: TokenBucket | None = None
        self._proofs: dict[int, bytes] = {}

    # ---------------------------------------------------------------- input

    def receive(self, data: bytes, address: Address, now: float, socket: int = 0, *,
                relayed: bool = False) -> Connection | None:
        """Handle one handshake datagram; the connection it established, if one. Raises
        only ``RemoteProtocolError`` (for a malformed datagram)."""
        kind = data[0]
        if kind == PacketKind.INIT or kind == PacketKind.INIT_IK:
            self._on_init(data, address, now, socket, relayed=relayed,
                          early=kind == PacketKind.INIT_IK)
        elif kind == PacketKind.RESP:
            return self._on_resp(data, address, now)
        elif kind == PacketKind.FINAL or kind == PacketKind.FINAL_IK:
            return self._on_final(data, address, now, socket)
        elif kind == PacketKind.COOKIE:
            self._on_cookie(data, address, now)
        elif kind == PacketKind.VERSION:
            self._on_version(data, address, now)
        else:
            self.stats["dropped_malformed"] += 1
        return None

    def on_timer(self, now: float) -> None:
        """The responder secret's rotation is due."""
        self._secrets.rotate(now)
        self.timers.set(self, self._secrets.next_rotation())

    # ---------------------------------------------------------------- dials

    def dialing(self, peer: bytes, *, pool: bool = False) -> bool:
        """Whether a handshake with ``peer`` is in progress (from a pool socket, with ``pool``)."""
        return any(d.expected_peer == peer and (not pool or d.socket > 0)
                   for d in self.dials.values())

    def dial(self, address: Address, now: float, *, expected: bytes | None,
             purpose: str = "peer", socket: int = 0, timeout: float | None = None) -> None:
        """Start a handshake with ``address`` (unless one with it is in progress)."""
        for dial in self.dials.values():
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
                early = self.early.early_message(expected, now + self.host.wall_offset)
        payload = b""
        if early is not None and static is not None:
            payload = encode_early_payload(self._proof(SUPPORTED_VERSIONS[0]), early,
                                           encode_hello(SUPPORTED_VERSIONS, 0))
            _, message = early_initiator_state(self.identity, seed, static, payload)
        else:
            _, message = initiator_state(self.identity, seed)
        retry = self.config.handshake_retry
        dial = Dial(local_sid=self.new_sid(), seed=seed, init_message=message,
                    address=address, created=now, expected_peer=expected,
                    next_retry=now + retry, backoff=retry,
                    deadline=now + (timeout or self.config.handshake_timeout), purpose=purpose,
                    socket=socket, early=early, responder_static=static or b"",
                    payload=payload)
        dial.datagram = dial.encode()
        self.dials[dial.local_sid] = dial
        self.timers.set(dial, dial.next_retry)
        self.host.send_datagram(dial.datagram, address, socket)

    def connected(self, connection: Connection, now: float) -> None:
        """``connection`` became its peer's: the other dials to the peer end, their
        addresses probed as paths, except one whose answer an early message awaits."""
        peer = connection.peer
        awaited = self.early.early_awaited(peer)
        asking = False
        for dial in [d for d in self.dials.values() if d.expected_peer == peer]:
            if not asking and dial.early is not None and dial.early.message_id == awaited:
                # Its answer says whether the peer has the early message: ask again on
                # the path that works (the INIT may never have got through).
                asking = True
                self._ask_again(dial, connection.address, connection.path.socket)
                continue
            self.remove_dial(dial)
            if dial.address != connection.address:
                connection.probe_path(dial.address, dial.socket, now)

    def new_sid(self) -> bytes:
        while True:
            sid = self.random(8)
            if sid not in self.host.connections and sid not in self.dials:
                return sid

    def clear(self) -> None:
        for dial in list(self.dials.values()):
            self.remove_dial(dial)
        self.timers.set(self, None)

    # ---------------------------------------------------------------- the engine

    def _proof(self, version: int) -> bytes:
        proof = self._proofs.get(version)
        if proof is None:
            proof = self._proofs[version] = make_proof(self.identity, self.config.introducer,
                                                       version, 0, self.incarnation)
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
            if self.host.allow_unauthenticated(address, now):
                self.host.send_datagram(encode_version(init.sender_sid, SUPPORTED_VERSIONS),
                                   address, socket)
            return
        # Relayed INITs too: the relay is authenticated, the source it names is not.
        if not self.host.allow_unauthenticated(address, now):
            self.stats["dropped_rate_limited"] += 1
            return
        if not self._work_allowed(now):
            if not self._secrets.cookie_valid(address, init.cookie):
                self.stats["cookies_sent"] += 1
                cookie = self._secrets.cookie(address)
                self.host.send_datagram(encode_cookie(init.sender_sid, cookie), address, socket)
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
        self.host.send_datagram(reply, address, socket)
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
        taken = self.early.take_early(proof.peer, early, path_kind(address), now,
                                         now + self.host.wall_offset, self.host.early_from)
        return state, version, taken

    def _on_cookie(self, data: bytes, address: Address, now: float) -> None:
        receiver_sid, cookie = decode_cookie(data)
        dial = self.dials.get(receiver_sid)
        if dial is None or dial.address != address or dial.cookie == cookie:
            self.stats["dropped_unsolicited_cookie"] += 1
            return
        dial.cookie = cookie
        dial.datagram = dial.encode()
        self.host.send_datagram(dial.datagram, dial.address, dial.socket)
        self.stats["cookies_echoed"] += 1

    def _on_version(self, data: bytes, address: Address, now: float) -> None:
        receiver_sid, versions = decode_version(data)
        dial = self.dials.get(receiver_sid)
        if dial is None or dial.address != address:
            self.stats["dropped_unsolicited_version"] += 1
            return
        if not set(versions) & set(SUPPORTED_VERSIONS):
            self.stats["dials_version_mismatch"] += 1
            self.remove_dial(dial, now)
            self.rendezvous.on_dial_failed(dial, now)

    def _on_resp(self, data: bytes, address: Address, now: float) -> Connection | None:
        version, receiver_sid, sender_sid, noise_message = decode_resp(data)
        dial = self.dials.get(receiver_sid)
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
            self.remove_dial(dial, now)
            self.rendezvous.on_dial_failed(dial, now)
            return
        if dial.early is not None:
            end = proof_length(payload)
            taken = len(payload) > end and payload[end] == 1
            # Connected another way meanwhile: this answer was all the dial was for.
            answered_only = self.host.connection_to(proof.peer) is not None
            if answered_only:
                self.remove_dial(dial)
            self.early.early_answered(proof.peer, dial.early.message_id, taken,
                                         path_kind(address), now)
            if answered_only:
                return
        current = self.host.connection_to(proof.peer)
        if dial.purpose == "peer" and current is not None and current.confirmed and (
            proof.incarnation and current.peer_incarnation == proof.incarnation
        ):
            # The run of the peer's node that holds our connection answered: the address
            # is another path of that connection, not a reason for a second one (which
            # the peer would take for a restart). No FINAL: the responder keeps nothing.
            self.remove_dial(dial)
            self.stats["dials_to_a_held_peer"] += 1
            self.host.reached(current, address, dial.socket, now)
            return None
        if len(self.host.connections) >= self.config.session_limit:
            self.stats["dropped_busy"] += 1
            return
        self.remove_dial(dial)
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
            peer_endorsement=proof.endorsement, readers=self.readers,
        )
        connection.purpose, connection.dialed = dial.purpose, dial.address
        connection.peer_incarnation = proof.incarnation
        if not dial.retransmitted:
            connection.rtt.update(now - dial.created, 0.0)
        connection.final_datagram = final
        connection.final_deadline = now + max(connection.rtt.pto(), self.config.handshake_retry)
        self.host.send_datagram(final, address, dial.socket)
        return connection

    def _on_final(self, data: bytes, address: Address, now: float, socket: int
                  ) -> Connection | None:
        receiver_sid, sender_sid, first, noise_message = decode_final(data)
        if receiver_sid in self.host.connections:
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
        full = len(self.host.connections) >= self.config.session_limit \
            and not self.host.make_room(prefix_of(address), now)
        recv_key, send_key = state.split()
        connection = Connection(
            local_sid=local_sid, remote_sid=sender_sid, peer=proof.peer,
            peer_introducer=proof.introducer, initiator=False, send_key=send_key,
            recv_key=recv_key, address=address, now=now, config=self.config,
            random_bytes=self.random, socket=socket, version=version,
            capabilities=proof.capabilities,
            peer_endorsement=proof.endorsement, readers=self.readers,
        )
        if full:
            # Say so, authenticated, rather than leave the initiator waiting; the
            # connection is never stored.
            self.stats["refused_busy"] += 1
            connection.close(CLOSE_BUSY, "this node holds all the connections it can")
            self.host.flush_connection(connection, now)
            return
        self._secrets.use(local_sid, epoch, now)
        self.timers.set(self, self._secrets.next_rotation())  # it may have rotated
        connection.peer_incarnation = proof.incarnation
        connection.queue_frame(HandshakeDone(), reliable=False)
        return connection

    def on_dial_timer(self, dial: Dial, now: float) -> None:
        if dial.local_sid not in self.dials:
            return
        if now >= dial.deadline:
            self.remove_dial(dial, now)
            if dial.socket > 0:
                self.host.sweep_sockets()
            self.stats["handshake_timeouts"] += 1
            self.rendezvous.on_dial_failed(dial, now)
            return
        dial.retransmitted = True
        dial.backoff = min(dial.backoff * 2, 2.0)
        dial.next_retry = now + dial.backoff
        self.timers.set(dial, min(dial.next_retry, dial.deadline))
        self.host.send_datagram(dial.datagram, dial.address, dial.socket)

    def _ask_again(self, dial: Dial, address: Address, socket: int) -> None:
        """Send ``dial``'s INIT to ``address`` from now on."""
        if (dial.address, dial.socket) != (address, socket):
            # A cookie is bound to the address it came from.
            dial.address, dial.socket, dial.cookie = address, socket, b""
            dial.datagram = dial.encode()
        dial.retransmitted = True
        self.host.send_datagram(dial.datagram, address, socket)

    def remove_dial(self, dial: Dial, now: float | None = None) -> None:
        """Forget ``dial``; given ``now``, it ended unanswered (see ``early_unanswered``)."""
        self.dials.pop(dial.local_sid, None)
        self.timers.set(dial, None)
        early, peer = dial.early, dial.expected_peer
        if now is None or early is None or peer is None:
            return
        if any(d.early is not None and d.early.message_id == early.message_id
               for d in self.dials.values()):
            return  # another INIT with the same message may still be answered
        self.early.early_unanswered(peer, early.message_id, now)
