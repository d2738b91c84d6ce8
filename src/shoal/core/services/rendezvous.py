"""Finding and reaching peers: introducers, introductions, NAT traversal plans, hole
punching and the relay fallback.

Theory of operation
-------------------
Peers are reached in this order: an established connection; addresses already known
(LAN discovery, earlier connections); an introduction through every connected
introducer, which tells both sides each other's addresses and NAT kinds so both start at
once. From the two NAT kinds each side derives the same ``traversal.Plan``: plain
dialing, a birthday punch, and a relayed connection through the introducer if no direct
one exists by the plan's deadline. A peer already connected (through a relay, say) is
not dialed again: its connection probes the new addresses as paths, and moves to a
direct one once the peer answers there.

The introducer side keeps a registry of the peers that sent REGISTER over a direct
connection, and answers INTRO_REQUEST with INTRO frames to both ends (rate limited per
requester). A PUNCH is answered only from an address whose IP the introduction named
for that peer, so a token cannot aim this node's packets anywhere else.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from shoal.core import events as ev
from shoal.core.connection import Connection
from shoal.core.handshake import endorsed_static
from shoal.core.relay import KeyedBuckets
from shoal.core.services.base import Service
from shoal.core.traversal import NatType, Plan, choose_plan
from shoal.core.wire import (
    Address,
    Frame,
    FrameType,
    Intro,
    IntroFailed,
    IntroRequest,
    ObservedAddress,
    PacketKind,
    Register,
    RelayPath,
    decode_punch,
)

if TYPE_CHECKING:
    from shoal.core.handshake import Dial
    from shoal.core.services.context import ServiceContext
    from shoal.core.services.interfaces import Messages, Nat

MAX_PUNCH_TOKENS = 4096
INTRO_RETRY = 2.0
UNKNOWN_ROUNDS = 2
"""Rounds of introduction requests (INTRO_RETRY apart) that every introducer answers with
"unknown" before messages to a peer with no other known address fail: the second round
covers a peer that registers just after the first."""
INTRODUCER_BACKOFF_MAX = 30.0
PUNCH_DIAL_TIMEOUT = 2.0
"""A dial answering a PUNCH sends INITs for this long at most (4 of them)."""
INTRODUCER_DIAL_TIMEOUT = 5.0
"""An introducer that has not answered by then counts as unreachable (and is tried again)."""
REPROBE_INTERVAL = 5.0
"""How often a relayed connection probes the peer's direct addresses again."""
INTRODUCTIONS_PER_SECOND = 10.0
MAX_DECLARED_ADDRESSES = 4
MAX_LAN_PEERS = 1024
"""Peers the LAN told of that this node keeps addresses for; past it, the oldest told of
(with nothing else to keep it: no connection, no message waiting) is forgotten."""
MAX_LAN_ADDRESSES = 4
"""Addresses the LAN may name for one peer (the newest are kept)."""


@dataclass(slots=True, eq=False)
class PeerState:
    """What this node knows about reaching one peer."""

    peer: bytes
    addresses: dict[Address, str] = field(default_factory=dict)
    intro_requested: float = -1e9
    unknown: bool = False
    """Every introducer asked said it does not know this peer."""
    unknown_to: set[bytes] = field(default_factory=set)
    """Introducers that answered "unknown" in this round of requests."""
    unknown_rounds: int = 0
    """Rounds in a row in which every connected introducer answered "unknown"."""
    unknown_round: float = -1e9
    """When the last of those rounds was asked (requests sent together are one round)."""
    nat: NatType = field(default_factory=NatType)
    plan: Plan | None = None
    relay_via: bytes | None = None
    """The introducer that introduced us, which can relay between us."""
    relay_at: float | None = None
    reprobe_at: float | None = None
    punch_target: Address | None = None
    token: bytes = b""
    static: bytes | None = None
    """The peer's X25519 static key, signed by the peer: INITs to it may be IK."""


@dataclass(slots=True, eq=False)
class _Introducer:
    address: Address
    peer: bytes | None = None
    dialing: bool = False
    next_attempt: float = 0.0
    backoff: float = 1.0
    failures: int = 0


class RendezvousService(Service):
    name = "rendezvous"
    frame_types = (FrameType.OBSERVED_ADDRESS, FrameType.REGISTER, FrameType.INTRO_REQUEST,
                   FrameType.INTRO, FrameType.INTRO_FAILED)
    packet_kinds = (PacketKind.PUNCH,)
    requires = ("messages", "nat")

    def __init__(self) -> None:
        super().__init__()
        self.peers: dict[bytes, PeerState] = {}
        self.introducers: dict[Address, _Introducer] = {}
        self.introducer_peers: set[bytes] = set()
        self.registry: dict[bytes, tuple[Connection, tuple[Address, ...], int]] = {}
        self.observed: dict[bytes, Address] = {}
        self._punch_tokens: dict[bytes, bytes] = {}
        self._intro_buckets = KeyedBuckets(INTRODUCTIONS_PER_SECOND,
                                           2 * INTRODUCTIONS_PER_SECOND)
        self._next_request_id = 1
        self._lan_peers: dict[bytes, None] = {}
        """Peers with addresses from the LAN, the one told of longest ago first."""

    def attach(self, ctx: ServiceContext, services: Mapping[str, Any]) -> None:
        super().attach(ctx, services)
        self.messages: Messages = services["messages"]
        self.nat_service: Nat = services["nat"]
        self.transport = ctx.transport

    def peer(self, peer: bytes) -> PeerState:
        state = self.peers.get(peer)
        if state is None:
            state = self.peers[peer] = PeerState(peer)
        return state

    # ---------------------------------------------------------------- commands

    def add_introducer(self, address: Address, now: float) -> None:
        if address not in self.introducers:
            self.introducers[address] = _Introducer(address)
        self._service_introducers(now)

    def add_address(self, peer: bytes, address: Address, source: str, now: float) -> None:
        state = self.peer(peer)
        state.addresses[address] = source
        if source == "lan":
            self._told_by_lan(state, address)
        connection = self.ctx.connection_to(peer)
        if connection is not None:
            connection.probe_path(address, 0, now)
            self.ctx.wake(connection)
        elif self.messages.pending_for(peer) and not self.transport.dialing(peer):
            # One dial at a time: however many addresses are named, the INITs stay few.
            self.transport.dial(address, now, expected=peer)

    def _told_by_lan(self, state: PeerState, address: Address) -> None:
        """Keep what the LAN says within ``MAX_LAN_ADDRESSES`` and ``MAX_LAN_PEERS``:
        anyone on the LAN can announce anything."""
        lan = [a for a, source in state.addresses.items() if source == "lan" and a != address]
        for old in lan[: max(0, len(lan) - MAX_LAN_ADDRESSES + 1)]:
            del state.addresses[old]
        self._lan_peers.pop(state.peer, None)
        self._lan_peers[state.peer] = None
        while len(self._lan_peers) > MAX_LAN_PEERS:
            oldest = next(iter(self._lan_peers))
            del self._lan_peers[oldest]
            held = self.peers.get(oldest)
            if held is None:
                continue
            for old in [a for a, source in held.addresses.items() if source == "lan"]:
                del held.addresses[old]
            if not held.addresses and self.ctx.connection_to(oldest) is None and (
                not self.messages.pending_for(oldest)
            ):
                self.set_timer(None, oldest)
                del self.peers[oldest]

    def reach(self, peer: bytes, now: float, *, fresh: bool = False) -> None:
        """Start reaching ``peer``: dial what is known and ask the introducers."""
        state = self.peer(peer)
        if fresh:
            state.intro_requested = -1e9
        connection = self.ctx.connection_to(peer)
        if connection is None:
            for address in state.addresses:
                self.transport.dial(address, now, expected=peer)
        if now >= state.intro_requested + INTRO_RETRY:
            if now > state.intro_requested + 2 * INTRO_RETRY:  # not the next round in a row
                state.unknown_rounds = 0
                state.unknown_to.clear()
            for introducer in self.introducer_peers:
                link = self.ctx.connection_to(introducer)
                if link is None or introducer == peer:
                    continue
                link.queue_frame(IntroRequest(self._next_request_id, peer))
                self._next_request_id += 1
                self.ctx.wake(link)
            state.intro_requested = now
        if connection is None and not self.transport.dialing(peer):
            self._no_introducer_answers()
        self._arm(state)

    def forget(self, peer: bytes) -> None:
        """Drop what ``reach`` noted about ``peer`` if nothing else needs it (no
        connection, no message waiting, no address from the app or the LAN): a service
        that sought a peer in vain leaves no state behind."""
        state = self.peers.get(peer)
        if state is None or self.ctx.connection_to(peer) is not None or (
            self.messages.pending_for(peer)
        ) or any(source in ("app", "lan") for source in state.addresses.values()):
            return
        self.set_timer(None, peer)
        del self.peers[peer]

    def unknown(self, peer: bytes) -> bool:
        """Every introducer asked said it does not know ``peer``, and it is not connected."""
        state = self.peers.get(peer)
        return state is not None and state.unknown and self.ctx.connection_to(peer) is None

    # ---------------------------------------------------------------- introducers

    def _service_introducers(self, now: float) -> None:
        soonest = None
        for intro in self.introducers.values():
            if intro.peer is not None or intro.dialing:
                continue
            if now >= intro.next_attempt:
                intro.dialing = True
                self.transport.dial(intro.address, now, expected=None, purpose="introducer",
                                   timeout=INTRODUCER_DIAL_TIMEOUT)
            elif soonest is None or intro.next_attempt < soonest:
                soonest = intro.next_attempt
        self.set_timer(soonest)

    def on_dial_failed(self, dial: Dial, now: float) -> None:
        if dial.purpose == "introducer":
            intro = self.introducers.get(dial.address)
            if intro is not None:
                intro.dialing = False
                intro.failures += 1
                intro.next_attempt = now + intro.backoff
                intro.backoff = min(intro.backoff * 2, INTRODUCER_BACKOFF_MAX)
                self._service_introducers(now)
                if self.introducers_unreachable():
                    self.ctx.emit(ev.IntroducersUnreachable(
                        addresses=tuple(i.address for i in self.introducers.values())))
                    self._no_introducer_answers()
            return
        peer = dial.expected_peer
        if peer is None or not self.messages.pending_for(peer):
            return
        if self.transport.dialing(peer):
            return
        if not self.introducer_peers:
            self.messages.fail_pending(peer, "EHOSTUNREACH",
                                                "peer did not answer at any known address")

    def introducers_unreachable(self) -> bool:
        """Every introducer failed to answer its last dial, and none is connected."""
        introducers = self.introducers.values()
        return bool(introducers) and all(i.peer is None and i.failures for i in introducers)

    def _no_introducer_answers(self) -> None:
        """Every introducer has failed to answer and none is connected: messages waiting
        for an introduction fail now, with a reason of their own, rather than at their
        deadline as if the peer were offline."""
        if not self.introducers_unreachable():
            return
        names = ", ".join(f"{i.address[0]}:{i.address[1]}" for i in self.introducers.values())
        for peer in list(self.messages.waiting_peers()):
            if self.ctx.connection_to(peer) is None and not self.transport.dialing(peer):
                self.messages.fail_pending(peer, "ENETUNREACH",
                                               f"no introducer answered ({names})")

    def on_timer(self, now: float, key: object = None) -> None:
        if key is None:
            self._service_introducers(now)
            return
        state = self.peers.get(key)  # type: ignore[arg-type]
        if state is None:
            return
        if self.messages.pending_for(state.peer) and now >= state.intro_requested + INTRO_RETRY:
            self.reach(state.peer, now)
        if state.relay_at is not None and now >= state.relay_at:
            state.relay_at = None
            self._dial_relayed(state, now)
        if state.reprobe_at is not None and now >= state.reprobe_at:
            state.reprobe_at = None
            connection = self.ctx.connection_to(state.peer)
            if connection is not None and connection.path.relayed:
                for address in list(state.addresses)[:MAX_DECLARED_ADDRESSES]:
                    connection.probe_path(address, 0, now)
                self.ctx.wake(connection)
                state.reprobe_at = now + REPROBE_INTERVAL
        self._arm(state)

    def _arm(self, state: PeerState) -> None:
        times = []
        if self.messages.pending_for(state.peer):
            times.append(state.intro_requested + INTRO_RETRY)
        if state.relay_at is not None:
            times.append(state.relay_at)
        if state.reprobe_at is not None:
            times.append(state.reprobe_at)
        self.set_timer(min(times) if times else None, state.peer)

    # ---------------------------------------------------------------- connections

    def on_connection_up(self, connection: Connection, now: float) -> None:
        if self.config.introducer and not connection.initiator and (
            connection.peer not in self.peers
        ):
            return  # a peer registering here: its registry entry is all this node keeps
        state = self.peer(connection.peer)
        state.unknown = False
        state.unknown_rounds = 0
        relayed = connection.path.relayed
        if connection.purpose == "introducer":
            self.introducer_peers.add(connection.peer)
            intro = self.introducers.get(connection.dialed)
            if intro is not None:
                intro.peer, intro.dialing, intro.backoff = connection.peer, False, 1.0
                intro.failures = 0
        if not relayed:
            state.addresses.setdefault(connection.address, "connection")
            self._direct(state, now)
        else:
            state.reprobe_at = now + REPROBE_INTERVAL
        if not relayed and not (self.config.introducer and not connection.initiator):
            connection.queue_frame(ObservedAddress(connection.address))
        if connection.peer in self.introducer_peers and connection.initiator:
            nat = self.nat_service.nat
            connection.queue_frame(Register(self.transport.local_addresses, nat.code))
            for waiting in self.messages.waiting_peers():
                if waiting != connection.peer:
                    self.reach(waiting, now, fresh=True)
        self._arm(state)

    def _direct(self, state: PeerState, now: float) -> None:
        """``state``'s peer is now reached directly: stop the fallbacks."""
        state.relay_at = None
        state.reprobe_at = None
        punches = self.transport.punches
        if punches.is_punching(state.peer):
            self.transport.end_punch(now)
        for token in [t for t, p in self._punch_tokens.items() if p == state.peer]:
            del self._punch_tokens[token]

    def on_path_changed(self, connection: Connection, now: float) -> None:
        state = self.peer(connection.peer)
        if connection.path.relayed:
            # Fell back to a relay: keep trying the direct addresses, as for a relayed dial.
            state.reprobe_at = now + REPROBE_INTERVAL
            self._arm(state)
            return
        state.addresses.setdefault(connection.address, "connection")
        self._direct(state, now)
        self._arm(state)
        connection.queue_frame(ObservedAddress(connection.address))
        # A superseded connection still finishing what it carries (the loser of a crossed
        # dial, with a stream opened before the dials were decided) follows to the direct
        # path instead of staying held to the relay's rate.
        for other in self.ctx.connections_with(connection.peer):
            if other is not connection and other.path.relayed and not other.closed:
                other.probe_path(connection.address, connection.path.socket, now)
                self.ctx.wake(other)

    def relays_for(self, peer: bytes) -> list[bytes]:
        """Up to two connected introducers that may relay to ``peer`` (the one its
        connection came through first)."""
        if peer in self.introducer_peers:
            return []
        state = self.peers.get(peer)
        relays = [state.relay_via] if state is not None and state.relay_via else []
        relays += [p for p in self.introducer_peers if p not in relays]
        out = []
        for relay in relays[:2]:
            link = self.ctx.connection_to(relay)
            if relay != peer and link is not None and not link.path.relayed:
                out.append(relay)
        return out

    def on_path_failing(self, connection: Connection, now: float) -> None:
        """A direct path went silent: offer the relays this node shares with the peer as
        other paths of the connection (each is validated before it carries anything)."""
        for relay in self.relays_for(connection.peer):
            self.ctx.stats["relay_fallbacks"] += 1
            connection.probe_path(RelayPath(relay, connection.peer), 0, now)
        self.ctx.wake(connection)

    def on_connection_down(self, connection: Connection, reason: str, now: float) -> None:
        peer = connection.peer
        if self.registry.get(peer, (None,))[0] is connection:
            del self.registry[peer]
        if self.ctx.connection_to(peer) is not None:
            return
        self.observed.pop(peer, None)
        for intro in self.introducers.values():
            if intro.peer == peer:
                intro.peer = None
                intro.next_attempt = 0.0
                self.introducer_peers.discard(peer)
        self._service_introducers(now)
        state = self.peers.get(peer)
        if state is not None:
            self._arm(state)
            # What the connection itself taught is forgotten with it, so the table only
            # holds peers with work pending or addresses the app or the LAN gave.
            if not self.messages.pending_for(peer) and not any(
                source in ("app", "lan") for source in state.addresses.values()
            ):
                self.set_timer(None, peer)
                del self.peers[peer]

    # ---------------------------------------------------------------- frames

    def on_frame(self, connection: Connection, frame: Frame, now: float) -> None:
        if isinstance(frame, ObservedAddress):
            previous = self.observed.get(connection.peer)
            self.observed[connection.peer] = frame.address
            self.ctx.emit(ev.AddressObserved(reporter=connection.peer_id,
                                                  address=frame.address))
            if connection.peer in self.introducer_peers:
                self.nat_service.address_reported(previous, frame.address, now)
        elif isinstance(frame, Register):
            if self.config.introducer and not connection.path.relayed:
                local = frame.local[:MAX_DECLARED_ADDRESSES]
                self.registry[connection.peer] = (connection, local, frame.nat)
                # Answering only now tells the peer it is listed and can be introduced.
                connection.queue_frame(ObservedAddress(connection.address))
        elif isinstance(frame, IntroRequest):
            self._on_intro_request(connection, frame, now)
        elif isinstance(frame, Intro):
            if connection.peer in self.introducer_peers:
                self._on_intro(frame, connection.peer, now)
            else:
                self.ctx.stats["dropped_unsolicited_intro"] += 1
        elif isinstance(frame, IntroFailed) and connection.peer in self.introducer_peers:
            state = self.peers.get(frame.target)
            if state is not None:
                state.unknown = True
                self._answered_unknown(state, connection.peer)

    def _answered_unknown(self, state: PeerState, introducer: bytes) -> None:
        """An introducer does not know ``state.peer``. Once every connected introducer has
        said so for UNKNOWN_ROUNDS rounds and nothing else (the LAN, the app) gave an
        address, messages to it fail now with EHOSTUNREACH rather than at their deadline;
        until then requests repeat, as the peer may register in between."""
        state.unknown_to.add(introducer)
        connected = {peer for peer in self.introducer_peers
                     if self.ctx.connection_to(peer) is not None}
        if not connected <= state.unknown_to or state.unknown_round == state.intro_requested:
            return
        state.unknown_to.clear()
        state.unknown_round = state.intro_requested
        state.unknown_rounds += 1
        if (state.unknown_rounds >= UNKNOWN_ROUNDS and not state.addresses
                and self.ctx.connection_to(state.peer) is None
                and not self.transport.dialing(state.peer)):
            state.unknown_rounds = 0
            self.messages.fail_pending(
                state.peer, "EHOSTUNREACH",
                f"no introducer knows this peer (asked {len(connected)}), and no other "
                "address of it is known")

    def _on_intro_request(self, connection: Connection, frame: IntroRequest, now: float) -> None:
        if not self._intro_buckets.take(connection.peer, now):
            self.ctx.stats["dropped_intro_rate"] += 1
            return
        target = self.registry.get(frame.target) if self.config.introducer else None
        if target is None or target[0].closed or frame.target == connection.peer:
            connection.queue_frame(IntroFailed(frame.request_id, frame.target))
            return
        target_connection, target_local, target_nat = target
        mine = self.registry.get(connection.peer)
        my_local, my_nat = (mine[1], mine[2]) if mine else ((), 0)
        token = self.ctx.random(8)
        connection.queue_frame(
            Intro(frame.request_id, frame.target,
                  _addresses(target_connection.address, target_local, connection.address),
                  target_nat, token, target_connection.peer_endorsement)
        )
        target_connection.queue_frame(
            Intro(0, connection.peer,
                  _addresses(connection.address, my_local, target_connection.address),
                  my_nat, token, connection.peer_endorsement)
        )
        self.ctx.wake(target_connection)
        self.ctx.stats["introductions"] += 1

    def static_of(self, peer: bytes) -> bytes | None:
        """``peer``'s static key, signed by it, if an introduction handed it on."""
        state = self.peers.get(peer)
        return state.static if state is not None else None

    def _on_intro(self, frame: Intro, introducer: bytes, now: float) -> None:
        if frame.peer == self.ctx.identity.public_key:
            return
        state = self.peer(frame.peer)
        for address in frame.addresses:
            state.addresses.setdefault(address, "introducer")
        state.nat = NatType.from_code(frame.nat)
        state.relay_via = introducer
        state.token = frame.token
        static = endorsed_static(frame.static, frame.peer) if frame.static else None
        if static is not None:
            state.static = static
        # Earlier tokens stay valid: a punch in progress still carries one.
        self._punch_tokens[frame.token] = frame.peer
        if len(self._punch_tokens) > MAX_PUNCH_TOKENS:
            del self._punch_tokens[next(iter(self._punch_tokens))]
        connection = self.ctx.connection_to(frame.peer)
        if connection is not None and not connection.path.relayed:
            return
        previous = state.plan
        plan = state.plan = choose_plan(self.nat_service.nat, state.nat)
        self.ctx.stats[f"plan_{plan.strategy}"] += 1
        for address in frame.addresses:
            if connection is not None:
                connection.probe_path(address, 0, now)
            else:
                self.transport.dial(address, now, expected=frame.peer)
        if connection is not None:
            self.ctx.wake(connection)
        if self.config.relay and connection is None and (
            # Repeated introductions with the same plan must not push the fallback away.
            state.relay_at is None or previous != plan
        ):
            state.relay_at = now + plan.relay_after
        punches = self.transport.punches
        if plan.strategy == "birthday" and self.config.punching and frame.addresses:
            state.punch_target = frame.addresses[0]
            active = punches.active
            if active is not None and active.peer == frame.peer and (
                active.role != plan.punch_role
            ):
                self.transport.end_punch(now)
            punches.request(frame.peer)
            self.transport.run_punch(now)
        else:
            punches.forget(frame.peer)
            if punches.is_punching(frame.peer):
                self.transport.end_punch(now)
        self._arm(state)

    def punch_plan(self, peer: bytes) -> tuple[str, Address, bytes] | None:
        state = self.peers.get(peer)
        plan = state.plan if state is not None else None
        connection = self.ctx.connection_to(peer)
        if (
            state is None or plan is None or plan.punch_role is None
            or state.punch_target is None
            or (connection is not None and not connection.path.relayed)
        ):
            return None
        self.ctx.stats["punches_started"] += 1
        return plan.punch_role, state.punch_target, state.token

    def on_packet(self, data: bytes, address: Address, now: float, socket: int) -> None:
        """A PUNCH got through a NAT: answer its sender from the socket it reached."""
        peer = self._punch_tokens.get(decode_punch(data))
        if peer is None:
            self.ctx.stats["dropped_punch"] += 1
            return
        state = self.peers.get(peer)
        if state is None or not any(a[0] == address[0] for a in state.addresses):
            self.ctx.stats["dropped_punch"] += 1
            return
        connection = self.ctx.connection_to(peer)
        if connection is not None:
            if connection.path.relayed:
                connection.probe_path(address, socket, now)
                self.ctx.wake(connection)
            else:
                self.ctx.stats["punches_ignored"] += 1
            return
        transport = self.transport
        if transport.dialing(peer, pool=True) or not transport.allow_unauthenticated(address,
                                                                                     now):
            self.ctx.stats["punches_ignored"] += 1
            return
        self.ctx.stats["punches_received"] += 1
        # A 9-byte PUNCH buys at most a few INITs: the dial it starts gives up early.
        self.transport.dial(address, now, expected=peer, socket=socket, timeout=PUNCH_DIAL_TIMEOUT)

    def _dial_relayed(self, state: PeerState, now: float) -> None:
        relay = state.relay_via
        if relay is None or relay == state.peer or self.ctx.connection_to(state.peer) is not None:
            return
        link = self.ctx.connection_to(relay)
        if link is None or link.path.relayed:
            return
        self.ctx.stats["relay_dials"] += 1
        self.transport.dial(RelayPath(relay, state.peer), now, expected=state.peer)  # type: ignore[arg-type]

    def nat_changed(self, now: float) -> None:
        for peer in self.introducer_peers:
            connection = self.ctx.connection_to(peer)
            if connection is not None and not connection.path.relayed:
                connection.queue_frame(Register(self.transport.local_addresses,
                                                self.nat_service.nat.code))
                self.ctx.wake(connection)
        # Peers still waiting, or only relayed, get a fresh introduction with our new kind.
        for state in list(self.peers.values()):
            if state.peer in self.introducer_peers:
                continue
            connection = self.ctx.connection_to(state.peer)
            relayed = connection is not None and connection.path.relayed
            if relayed or (connection is None and self.messages.pending_for(state.peer)):
                self.reach(state.peer, now, fresh=True)


def _addresses(observed: Address, local: tuple[Address, ...],
               other: Address) -> tuple[Address, ...]:
    """Candidates for reaching a peer from a node ``other`` observed: the peer's observed
    address, then, only when both sit behind the same public IP (one NAT, one LAN), its
    private LAN addresses. Nobody is told to dial an address the peer merely claims."""
    out = [observed]
    if observed[0] != other[0]:
        return tuple(out)
    for address in local:
        try:
            ip = ipaddress.ip_address(address[0])
        except ValueError:
            continue
        if not ip.is_private or ip.is_unspecified or ip.is_multicast or address in out:
            continue
        out.append(address)
    return tuple(out[: 1 + MAX_DECLARED_ADDRESSES])
