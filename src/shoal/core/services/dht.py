"""A Kademlia-style DHT: finding the peers that provide a key.

Theory of operation
-------------------
Each node has an id, ``sha256(b"shoal/dht-node/1" + public key)``; keys are 32 bytes in
the same space, and distance is XOR. A node keeps a routing table of k-buckets
(``shoal.core.dht.table``) holding the peers that asked it something or answered it,
with the address it saw them at, and answers FIND_NODE with the k contacts it knows
nearest a target. A lookup asks the nearest candidates it knows, ``alpha`` at a time,
learns nearer ones from each answer, and ends when the k nearest that are left have
all answered. Candidates are reached over the connection to them if there is one, else
by dialing the address the answer named and, failing that, through the introducers
(``Rendezvous.reach``).

A node answers and stores from the start but sends nothing unasked until it is first
used (``provide``, a lookup, ``join``): it then joins, asking its connected peers and
introducers what they know, looking itself up and then a random id in each far bucket
that is empty, and again a minute later and every 15 minutes for quiet buckets.

``provide(key)`` looks up the k nodes nearest ``key`` and sends each ADD_PROVIDER; it
repeats every ``republish`` seconds until ``withdraw``. A node storing a record keeps
the provider's address as its own connection saw it, never one the provider names, so
a record cannot aim lookups at a third party; records expire after ``record_ttl``.
``find(key)`` is a lookup whose answers (GET_PROVIDERS -> PROVIDERS and NODES) also name
providers, each handed to the caller once, as found.

Identities are free to make, so none of this trusts ids to be scarce; it bounds what
each costs instead: k contacts a bucket, long-lived ones kept over newcomers (a newcomer
only takes the place of a contact that fails to answer); contacts named in answers are
asked, never added to the table until they answer themselves; at most ``k`` of them are
taken from one answer and a lookup holds at most ``8 * k`` candidates; requests from
one peer are rate limited; and the record store caps records per provider, per key and
in all (when full, the provider holding the most loses its oldest).

Settings (``CoreConfig.services["dht"]``): ``k`` (20), ``alpha`` (3), ``record_ttl``
(1800 s), ``republish`` (ttl / 2), ``request_timeout`` (5 s), ``max_records_per_peer``
(256), ``max_providers_per_key`` (64), ``max_records`` (65,536), ``requests_per_second``
(50 from one peer, twice that in a burst). ``CoreConfig.dht = False`` leaves the
service out.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from itertools import islice
from typing import TYPE_CHECKING, Any

from shoal.core.connection import Connection
from shoal.core.dht import wire as dw
from shoal.core.dht.table import RecordStore, RoutingTable, key_id, node_id
from shoal.core.relay import KeyedBuckets
from shoal.core.services.base import Service
from shoal.core.wire import Address, Extension, Frame
from shoal.errors import LocalProtocolError, RemoteProtocolError

if TYPE_CHECKING:
    from shoal.core.services.context import ServiceContext
    from shoal.core.services.interfaces import Rendezvous

KEY_SIZE = 32
MAX_LOOKUPS = 32
"""Lookups running at once; more wait their turn."""
MAX_WAITING_LOOKUPS = 1024
INTRODUCE_AFTER = 1.5
"""A candidate not connected this long after its address was dialed is sought through
the introducers."""
EXPIRE_INTERVAL = 60.0
REFRESH_INTERVAL = 900.0
"""How often a node looks itself up again, to keep its neighbourhood known."""
MAX_REFRESHED_BUCKETS = 12
MAX_REMEMBERED = 65536
"""Connected and probed peers remembered (past it, the oldest are forgotten)."""
FIRST_REFRESH = 60.0
"""The first time comes sooner: nodes that joined about when this one did are known by
then."""

DEFAULTS: dict[str, float] = {
    "k": 20, "alpha": 3, "record_ttl": 1800.0, "republish": 0.0, "request_timeout": 5.0,
    "max_records_per_peer": 256, "max_providers_per_key": 64, "max_records": 65536,
    "requests_per_second": 50.0,
}

Found = Callable[[bytes, list[Address]], None]


@dataclass(slots=True, frozen=True)
class LookupResult:
    """How a lookup went: ``rounds`` of requests one after another (the deepest chain
    of answers that led to a node asked), ``found_round`` the round whose answer named
    the first provider (0: none, or known locally), ``messages`` requests sent, and the
    providers found (peer keys)."""

    target: bytes
    rounds: int
    found_round: int
    messages: int
    providers: tuple[bytes, ...]
    closest: tuple[bytes, ...]
    """The nearest nodes that answered, nearest first (at most k)."""


@dataclass(slots=True, eq=False)
class _Candidate:
    peer: bytes
    distance: int
    addresses: tuple[Address, ...]
    round: int
    state: str = "new"
    """new -> asked -> answered | failed (see ``_CANDIDATE_STATES``)."""


_CANDIDATE_STATES = {"new": ("asked",), "asked": ("answered", "failed"),
                     "answered": (), "failed": ()}


@dataclass(slots=True, eq=False)
class _Lookup:
    target: bytes
    providers_wanted: bool
    on_found: Found | None
    on_done: Callable[[LookupResult], None] | None
    candidates: dict[bytes, _Candidate] = field(default_factory=dict)
    in_flight: int = 0
    messages: int = 0
    found: dict[bytes, None] = field(default_factory=dict)
    found_round: int = 0
    done: bool = False


@dataclass(slots=True, eq=False)
class _Request:
    request_id: int
    peer: bytes
    lookup: _Lookup | None
    deadline: float
    frame: Extension
    parts: set[int] = field(default_factory=set)
    entries: int = 0
    providers: int = 0


@dataclass(slots=True, eq=False)
class _Pending:
    """Requests waiting for a connection to a peer being dialed."""

    started: float
    frames: list[Extension] = field(default_factory=list)
    introduced: bool = False


def _move(candidate: _Candidate, state: str) -> None:
    if state not in _CANDIDATE_STATES[candidate.state]:
        raise AssertionError(f"candidate {candidate.state} -> {state}")
    candidate.state = state


class DhtService(Service):
    """The "dht" service (see the module docstring); it implements
    ``interfaces.Providers``."""

    name = "dht"
    frame_types = dw.FRAME_TYPES
    requires = ("rendezvous",)

    def __init__(self) -> None:
        super().__init__()
        self.providing: dict[bytes, float] = {}
        """Keys this node provides, and when each is announced next."""
        self.lookups: list[_Lookup] = []
        self.waiting: deque[_Lookup] = deque()
        self.requests: dict[int, _Request] = {}
        self.pending: dict[bytes, _Pending] = {}
        self._next_request = 1
        self._probed: set[bytes] = set()
        self._joined = False
        self._starting = False
        self._connected: dict[bytes, None] = {}
        """Peers with a connection, the longest connected first (seeds for ``join``)."""
        self._silent: dict[bytes, None] = {}
        """Peers that left a request unanswered (not seeds again until they answer)."""
        self.results: deque[LookupResult] = deque(maxlen=64)
        """The latest lookups' outcomes, for diagnostics and tests."""

    def attach(self, ctx: ServiceContext, services: Mapping[str, Any]) -> None:
        super().attach(ctx, services)
        self.rendezvous: Rendezvous = services["rendezvous"]
        options = dict(DEFAULTS)
        unknown = set(ctx.options) - set(DEFAULTS)
        if unknown:
            raise LocalProtocolError(f"unknown dht settings: {', '.join(sorted(unknown))}",
                                     code="EINVAL")
        options.update(ctx.options)
        self.k = int(options["k"])
        self.alpha = int(options["alpha"])
        self.ttl = float(options["record_ttl"])
        self.republish = float(options["republish"]) or self.ttl / 2
        self.request_timeout = float(options["request_timeout"])
        if self.k < 1 or self.alpha < 1 or self.ttl <= 0 or self.republish <= 0:
            raise LocalProtocolError("dht settings k, alpha, record_ttl and republish must be "
                                     "positive", code="EINVAL")
        self.me = ctx.identity.public_key
        self.my_key = node_id(self.me).to_bytes(KEY_SIZE, "big")
        self.table = RoutingTable(self.me, self.k)
        self.store = RecordStore(per_peer=int(options["max_records_per_peer"]),
                                 per_key=int(options["max_providers_per_key"]),
                                 total=int(options["max_records"]))
        rate = float(options["requests_per_second"])
        self._rate = KeyedBuckets(rate, 2 * rate)

    # ---------------------------------------------------------------- Providers

    def provide(self, key: bytes, now: float, *,
                on_done: Callable[[LookupResult], None] | None = None) -> None:
        """Announce this node as a provider of ``key`` now and every ``republish``
        seconds until ``withdraw``; ``on_done`` hears when the first announcement went."""
        _check_key(key)
        self.join(now)
        self.providing[key] = now + self.republish
        self._announce(key, now, on_done)
        self._arm_republish()

    def withdraw(self, key: bytes) -> None:
        """Stop announcing ``key`` (records elsewhere expire on their own)."""
        self.providing.pop(key, None)
        self._arm_republish()

    def find(self, key: bytes, now: float, on_found: Found, *,
             on_done: Callable[[LookupResult], None] | None = None) -> None:
        """Look up the providers of ``key``: ``on_found(peer, addresses)`` for each, as
        found (other nodes: this one knows what it provides), and ``on_done`` once the lookup
        ends."""
        _check_key(key)
        self.join(now)
        self._start(_Lookup(key, True, on_found, on_done), now)

    def find_node(self, target: bytes, now: float, *,
                  on_done: Callable[[LookupResult], None] | None = None) -> None:
        """Look up the k nodes nearest ``target``."""
        _check_key(target)
        self.join(now)
        self._start(_Lookup(target, False, None, on_done), now)

    def join(self, now: float) -> None:
        """Take part in the DHT, once: ask every connected peer (the introducers among
        them) what it knows, look this node up, and keep its buckets fresh from then on.
        Until then (the first ``provide`` or lookup) the node answers and stores but
        sends nothing unasked."""
        if self._joined:
            return
        self._joined = True
        self.set_timer(now + FIRST_REFRESH, "refresh")
        for peer in list(islice(self._connected, 2 * self.k)):
            connection = self.ctx.connection_to(peer)
            if connection is not None:
                self._probe(connection, now)
        self._refresh(now)

    def call(self, now: float, *args: Any, **kwargs: Any) -> Any:
        """``call(now, "provide" | "withdraw" | "find" | "find_node" | "join" | "stats", ...)``."""
        operation, *rest = args or ("",)
        method = {"provide": self.provide, "find": self.find, "find_node": self.find_node}
        if operation in method:
            return method[operation](rest[0], now, *rest[1:], **kwargs)
        if operation == "join":
            return self.join(now)
        if operation == "withdraw":
            return self.withdraw(rest[0])
        if operation == "stats":
            return {"contacts": len(self.table), "records": self.store.count,
                    "providing": len(self.providing), "lookups": len(self.lookups),
                    "waiting": len(self.waiting), "requests": len(self.requests)}
        raise LocalProtocolError(f"the dht service has no call {operation!r}", code="EINVAL")

    # ---------------------------------------------------------------- lookups

    def _announce(self, key: bytes, now: float,
                  on_done: Callable[[LookupResult], None] | None) -> None:
        def announced(result: LookupResult) -> None:
            if key in self.providing:
                for peer in result.closest:
                    if self.ctx.send_to(peer, dw.encode_add_provider(key)):
                        self.ctx.stats["dht_announced"] += 1
            if on_done is not None:
                on_done(result)

        self._start(_Lookup(key, False, None, announced), now)

    def _start(self, lookup: _Lookup, now: float) -> None:
        if len(self.lookups) >= MAX_LOOKUPS:
            if len(self.waiting) >= MAX_WAITING_LOOKUPS:
                raise LocalProtocolError("too many DHT lookups waiting", code="EBUSY")
            self.waiting.append(lookup)
            return
        self.lookups.append(lookup)
        target = key_id(lookup.target)
        if lookup.providers_wanted:
            for peer, record in self.store.providers(lookup.target, now):
                self._found(lookup, peer, list(record.addresses), 0)
        seeds = [(c.peer, c.addresses) for c in self.table.closest(target, self.k)]
        if len(seeds) < self.k:  # bootstrap: the introducers and any connected peer
            seeds += [(p, ()) for p in self.rendezvous.introducer_peers]
            seeds += [(p, ()) for p in islice(self._connected, 2 * self.k)
                      if p not in self._silent]
        for peer, addresses in seeds:
            self._candidate(lookup, peer, addresses, 1)
        self._advance(lookup, now)

    def _candidate(self, lookup: _Lookup, peer: bytes, addresses: tuple[Address, ...],
                   round_: int) -> None:
        if peer == self.me:
            return
        held = lookup.candidates.get(peer)
        if held is not None:
            held.round = min(held.round, round_)
            return
        distance = node_id(peer) ^ key_id(lookup.target)
        lookup.candidates[peer] = _Candidate(peer, distance, addresses, round_)
        if len(lookup.candidates) > 8 * self.k:
            farthest = max((c for c in lookup.candidates.values() if c.state == "new"),
                           key=lambda c: c.distance, default=None)
            if farthest is not None:
                del lookup.candidates[farthest.peer]

    def _advance(self, lookup: _Lookup, now: float) -> None:
        if lookup.done:
            return
        nearest = sorted((c for c in lookup.candidates.values() if c.state != "failed"),
                         key=lambda c: c.distance)[: self.k]
        for candidate in nearest:
            if lookup.in_flight >= self.alpha:
                break
            if candidate.state == "new":
                self._ask(lookup, candidate, now)
        if lookup.in_flight == 0 and all(c.state == "answered" for c in nearest):
            self._finish(lookup, now)

    def _ask(self, lookup: _Lookup, candidate: _Candidate, now: float) -> None:
        _move(candidate, "asked")
        kind = dw.GET_PROVIDERS if lookup.providers_wanted else dw.FIND_NODE
        frame = self._request(kind, candidate.peer, lookup, lookup.target, now)
        lookup.in_flight += 1
        lookup.messages += 1
        self.ctx.stats["dht_requests_sent"] += 1
        self._send(candidate.peer, candidate.addresses, frame, now)
        self._arm_requests()

    def _request(self, kind: int, peer: bytes, lookup: _Lookup | None, target: bytes,
                 now: float) -> Extension:
        """A new request's frame, awaited from ``peer`` until it times out (the caller
        sends it and arms the timer)."""
        request_id = self._next_request
        self._next_request += 1
        frame = dw.encode_request(kind, request_id, target)
        self.requests[request_id] = _Request(request_id, peer, lookup,
                                             now + self.request_timeout, frame)
        return frame

    def _send(self, peer: bytes, addresses: tuple[Address, ...], frame: Extension,
              now: float) -> None:
        """Send a request to ``peer``, dialing it first if it is not connected."""
        if self.ctx.send_to(peer, frame):
            return
        pending = self.pending.get(peer)
        if pending is None:
            pending = self.pending[peer] = _Pending(now)
            for address in addresses[: dw.MAX_ENTRY_ADDRESSES]:
                self.ctx.transport.dial(address, now, expected=peer)
            if not addresses:
                pending.introduced = True
                self.rendezvous.reach(peer, now)
        pending.frames.append(frame)

    def _finish(self, lookup: _Lookup, now: float) -> None:
        lookup.done = True
        self.lookups.remove(lookup)
        answered = sorted((c for c in lookup.candidates.values() if c.state == "answered"),
                          key=lambda c: c.distance)[: self.k]
        rounds = max((c.round for c in answered), default=0)
        result = LookupResult(lookup.target, rounds, lookup.found_round, lookup.messages,
                              tuple(lookup.found), tuple(c.peer for c in answered))
        self.results.append(result)
        self.ctx.stats["dht_lookups"] += 1
        for request in [r for r in self.requests.values() if r.lookup is lookup]:
            request.lookup = None
        if lookup.on_done is not None:
            lookup.on_done(result)
        if self._starting:
            return  # the loop below, further up the stack, starts the next ones
        self._starting = True
        try:
            while self.waiting and len(self.lookups) < MAX_LOOKUPS:
                self._start(self.waiting.popleft(), now)
        finally:
            self._starting = False

    def _found(self, lookup: _Lookup, peer: bytes, addresses: list[Address],
               round_: int) -> None:
        if peer in lookup.found or len(lookup.found) >= self.store.per_key:
            return
        lookup.found[peer] = None
        if len(lookup.found) == 1:
            lookup.found_round = round_
        if lookup.on_found is not None:
            lookup.on_found(peer, addresses)

    # ---------------------------------------------------------------- frames

    def on_frame(self, connection: Connection, frame: Frame, now: float) -> None:
        if not isinstance(frame, Extension):
            return
        try:
            parsed = dw.decode(frame)
        except RemoteProtocolError:
            self.ctx.stats["dht_malformed"] += 1
            raise
        peer = connection.peer
        if isinstance(parsed, dw.Answer):
            self._on_answer(connection, parsed, now)
            return
        if not self._rate.take(peer, now):
            self.ctx.stats["dht_dropped_rate"] += 1
            return
        self._seen(connection, now)
        if isinstance(parsed, dw.AddProvider):
            refused = self.store.add(parsed.key, peer, _observed(connection), now + self.ttl)
            if self.ctx.timer("expire") is None:
                self.set_timer(now + EXPIRE_INTERVAL, "expire")
            outcome = f"refused_{refused}" if refused else "stored"
            self.ctx.stats[f"dht_records_{outcome}"] += 1
            return
        target = key_id(parsed.target)
        contacts = [c.wire for c in self.table.closest(target, self.k, exclude=peer)]
        sections: list[tuple[int, list[bytes]]] = []
        if parsed.kind == dw.GET_PROVIDERS:
            providers = [r.wire for _, r in self.store.providers(parsed.target, now)[: self.k]]
            if parsed.target in self.providing:
                providers.insert(0, dw.encode_entry(self.me))
            sections.append((dw.PROVIDERS, providers))
        sections.append((dw.NODES, contacts))
        for answer in dw.encode_answers(parsed.request_id, sections):
            self.ctx.send(connection, answer)
        self.ctx.stats["dht_requests_answered"] += 1

    def _seen(self, connection: Connection, now: float) -> None:
        empty = not self.table
        self._silent.pop(connection.peer, None)
        self.table.seen(connection.peer, _observed(connection), now)
        self._probed.add(connection.peer)
        if empty and self._joined and self.table:
            self._refresh(now)  # joined with nobody to ask: now there is someone

    def _on_answer(self, connection: Connection, answer: dw.Answer, now: float) -> None:
        request = self.requests.get(answer.request_id)
        if request is None or request.peer != connection.peer or answer.part in request.parts:
            self.ctx.stats["dht_dropped_unasked"] += 1
            return
        request.parts.add(answer.part)
        complete = len(request.parts) >= answer.parts
        if complete:
            del self.requests[answer.request_id]
        self._seen(connection, now)
        lookup = request.lookup
        if lookup is not None and not lookup.done:
            asked = lookup.candidates.get(connection.peer)
            round_ = asked.round if asked is not None else 1
            for entry in answer.entries:
                if answer.kind == dw.PROVIDERS:
                    if request.providers >= self.k:
                        continue
                    request.providers += 1
                    if entry.peer == self.me:
                        continue
                    addresses = entry.addresses if entry.peer != connection.peer else (
                        _observed(connection))
                    self._found(lookup, entry.peer, list(addresses), round_)
                elif request.entries < self.k:
                    request.entries += 1
                    self._candidate(lookup, entry.peer, entry.addresses, round_ + 1)
            if complete:
                lookup.in_flight -= 1
                if asked is not None:
                    _move(asked, "answered")
                self._advance(lookup, now)

    # ---------------------------------------------------------------- connections

    def on_connection_up(self, connection: Connection, now: float) -> None:
        peer = connection.peer
        self._connected[peer] = None
        if len(self._connected) > MAX_REMEMBERED:
            del self._connected[next(iter(self._connected))]
        pending = self.pending.pop(peer, None)
        if pending is not None:
            for frame in pending.frames:
                self.ctx.send(connection, frame)
            return
        if self._joined and peer not in self._probed and (
                connection.initiator or peer in self.rendezvous.introducer_peers):
            self._probe(connection, now)

    def on_connection_down(self, connection: Connection, reason: str, now: float) -> None:
        if self.ctx.connection_to(connection.peer) is None:
            self._connected.pop(connection.peer, None)

    def _probe(self, connection: Connection, now: float) -> None:
        """Ask a peer this node dialed (or an introducer) whether it runs the DHT, and
        what it knows near us: its answer adds it to the table."""
        peer = connection.peer
        self._probed.add(peer)
        if len(self._probed) > MAX_REMEMBERED:
            self._probed.clear()
        self.ctx.send(connection, self._request(dw.FIND_NODE, peer, None, self.my_key, now))
        self._arm_requests()

    # ---------------------------------------------------------------- timers

    def _arm_requests(self) -> None:
        times = [r.deadline for r in self.requests.values()]
        times += [p.started + INTRODUCE_AFTER for p in self.pending.values() if not p.introduced]
        self.set_timer(min(times, default=None), "requests")

    def _arm_republish(self) -> None:
        self.set_timer(min(self.providing.values(), default=None), "republish")

    def on_timer(self, now: float, key: object = None) -> None:
        if key == "requests":
            self._expire_requests(now)
        elif key == "republish":
            for provided, due in list(self.providing.items()):
                if due <= now:
                    self.providing[provided] = now + self.republish
                    self._announce(provided, now, None)
            self._arm_republish()
        elif key == "expire":
            self.ctx.stats["dht_records_expired"] += self.store.expire(now)
            self.set_timer(now + EXPIRE_INTERVAL if self.store.count else None, "expire")
        elif key == "refresh":
            self._refresh(now)
            self.set_timer(now + REFRESH_INTERVAL, "refresh")

    def _refresh(self, now: float) -> None:
        """Look this node up, then a random id in each bucket from the one of its
        nearest contact outwards that is empty or was quiet for REFRESH_INTERVAL (as
        Kademlia does): every part of the id space then has contacts to route by."""

        def buckets(_result: LookupResult) -> None:
            table = self.table
            nearest = table.closest(table.me, 1)
            first = table.bucket_of(nearest[0].id) if nearest else 255
            stale = [i for i in range(255, first - 1, -1)
                     if not table.buckets[i]
                     or table.buckets[i][-1].seen < self.ctx.now - REFRESH_INTERVAL]
            for index in stale[:MAX_REFRESHED_BUCKETS]:
                below = int.from_bytes(self.ctx.random(KEY_SIZE), "big") & ((1 << index) - 1)
                target = table.me ^ ((1 << index) | below)
                self._start(_Lookup(target.to_bytes(KEY_SIZE, "big"), False, None, None),
                            self.ctx.now)

        self._start(_Lookup(self.my_key, False, None, buckets), now)

    def _expire_requests(self, now: float) -> None:
        for peer, pending in self.pending.items():
            if not pending.introduced and now >= pending.started + INTRODUCE_AFTER:
                pending.introduced = True
                self.rendezvous.reach(peer, now)
        touched: list[_Lookup] = []
        for request in [r for r in self.requests.values() if r.deadline <= now]:
            del self.requests[request.request_id]
            self.ctx.stats["dht_timeouts"] += 1
            self.table.failed(request.peer)
            self._silent[request.peer] = None
            if len(self._silent) > MAX_REMEMBERED:
                del self._silent[next(iter(self._silent))]
            pending = self.pending.get(request.peer)
            if pending is not None and request.frame in pending.frames:
                pending.frames.remove(request.frame)
                if not pending.frames:
                    del self.pending[request.peer]
                    if pending.introduced:
                        self.rendezvous.forget(request.peer)
            lookup = request.lookup
            if lookup is not None and not lookup.done:
                lookup.in_flight -= 1
                candidate = lookup.candidates.get(request.peer)
                if candidate is not None and candidate.state == "asked":
                    _move(candidate, "failed")
                touched.append(lookup)
        for lookup in touched:
            self._advance(lookup, now)
        self._arm_requests()

    def close(self, now: float) -> None:
        """The node is closing: every lookup ends with what it found so far."""
        self._starting = True  # start none of the waiting ones
        for lookup in [*self.lookups, *self.waiting]:
            if lookup not in self.lookups:
                self.lookups.append(lookup)
            self._finish(lookup, now)
        self.waiting.clear()
        self.requests.clear()
        self.pending.clear()


def _observed(connection: Connection) -> tuple[Address, ...]:
    """Where this node sees ``connection``'s peer (nothing for a relayed one)."""
    return () if connection.path.relayed else (connection.address,)


def _check_key(key: bytes) -> None:
    if not isinstance(key, bytes) or len(key) != KEY_SIZE:
        raise LocalProtocolError("a DHT key is 32 bytes", code="EINVAL")
