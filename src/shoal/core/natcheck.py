"""NAT behaviour discovery (RFC 5780 style) as a sans-IO state machine.

Theory of operation
-------------------
The check runs in three phases over the node's own socket:

1. **Binding** to every server's primary address: are we answered at all (is UDP
   open), what public address does each server see, and does any server have an
   alternate address (OTHER-ADDRESS)?
2. **Filtering**, with the first server that has an alternate address, *before* any
   packet went to that alternate address: ask it to answer from its other IP and port
   (received: endpoint-independent filtering), and from its other port only (received:
   address-dependent; neither: address-and-port-dependent).
3. **Mapping**: Binding to the alternate port on the primary IP and to the alternate
   IP and port. The same public address from every destination is endpoint-independent
   mapping; a change with the port alone is address-and-port-dependent; a change only
   with the IP is address-dependent. Servers without alternates still count: two
   servers at different addresses that see different public ports reveal a mapping
   that varies, though not by what.

The outcome is a ``NatReport``.
"""

from __future__ import annotations

import ipaddress
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

from shoal.core import stun
from shoal.core.traversal import (
    ADDRESS_AND_PORT_DEPENDENT,
    ADDRESS_DEPENDENT,
    ENDPOINT_INDEPENDENT,
    UNKNOWN,
    NatType,
)
from shoal.core.wire import Address

BIND_RETRIES = (0.3, 0.8, 1.4)
BIND_TIMEOUT = 2.0
FILTER_RETRIES = (0.2, 0.4)
FILTER_WAIT_MIN = 0.7
"""Seconds to wait for a changed-address answer that may never come (scaled by RTT)."""


@dataclass(frozen=True, slots=True)
class ServerResult:
    """What one STUN server (or introducer) answered."""

    server: Address
    mapped: Address | None
    rtt: float | None


@dataclass(frozen=True, slots=True)
class NatReport:
    """The outcome of a NAT check."""

    nat: NatType
    public: tuple[Address, ...]
    """Every distinct public address the servers saw, the primary server's first."""
    udp: bool
    """Whether any server answered at all."""
    servers: tuple[ServerResult, ...]
    port_preserving: bool | None = None
    port_delta: int | None = None
    """Constant step between successive public ports, when the mapping varies that way."""
    alternate: bool = False
    """Whether a server offered an alternate address (needed to learn the filtering)."""

    @property
    def mapping(self) -> str:
        return self.nat.mapping

    @property
    def filtering(self) -> str:
        return self.nat.filtering

    def unknowns(self) -> dict[str, str]:
        """Why the mapping or filtering is ``unknown``, for each that is."""
        why: dict[str, str] = {}
        if not self.udp:
            reason = "no server answered"
            return {"mapping": reason, "filtering": reason}
        if self.nat.mapping == UNKNOWN:
            if self.nat.varies:
                why["mapping"] = ("servers saw different public ports, but no two of them "
                                  "share an IP, so whether the port depends on the "
                                  "destination's address or port is not known")
            else:
                why["mapping"] = ("only one destination answered; the mapping needs two "
                                  "(a server with an alternate address, or a second "
                                  "--introducer or --stun)")
        if self.nat.filtering == UNKNOWN:
            why["filtering"] = ("no server offered an alternate address to answer from "
                                "(an introducer started with --alternate, or a STUN server "
                                "with two addresses)" if not self.alternate else
                                "the check stopped before the filtering test")
        return why

    def summary(self) -> str:
        """One sentence on what the kinds mean for reaching this node."""
        nat = self.nat
        if not self.udp:
            return ("no server answered: check the addresses (a server that is down, a "
                    "closed port and a firewall that drops UDP all look alike from here); "
                    "until one answers, peers can reach this node only through the LAN")
        if nat.reachable:
            return "reachable directly: peers can start sessions with this node"
        if nat.hard:
            return ("the public port changes per destination: peers behind easy NATs connect "
                    "by birthday punching, peers behind hard NATs through a relay")
        if nat.mapping == ENDPOINT_INDEPENDENT:
            return "a cone NAT that filters: peers connect by simultaneous open"
        return "NAT behaviour not fully known: direct attempts first, then a relay"


@dataclass(slots=True)
class _Query:
    purpose: str
    destination: Address
    request: bytes
    first_sent: float
    retries: list[float]
    deadline: float
    change: int = 0
    mapped: Address | None = None
    rtt: float | None = None
    answered: bool = False


@dataclass(slots=True)
class NatCheck:
    """Runs the phases above; the endpoint routes STUN answers to ``on_answer``."""

    servers: tuple[Address, ...]
    local: tuple[Address, ...]
    random_bytes: Callable[[int], bytes]
    started: float
    queries: dict[bytes, _Query] = field(default_factory=dict)
    out: list[tuple[bytes, Address]] = field(default_factory=list)
    phase: str = "bind"
    phase_deadline: float = 0.0
    alternate_server: Address | None = None
    other: Address | None = None
    report: NatReport | None = None

    def __post_init__(self) -> None:
        for server in self.servers:
            self._query("bind", server, self.started)
        self.phase_deadline = self.started + BIND_TIMEOUT

    @property
    def done(self) -> bool:
        return self.report is not None

    # ------------------------------------------------------------------ driving

    def on_answer(self, message: stun.StunMessage, now: float) -> bool:
        """Take a Binding answer; False when it is not one of ours."""
        query = self.queries.get(message.transaction_id)
        if query is None:
            return False
        if not query.answered:
            query.answered = True
            query.mapped = message.mapped
            query.rtt = now - query.first_sent
            if query.purpose == "bind" and message.other and self.other is None:
                self.alternate_server, self.other = query.destination, message.other
        self._advance(now)
        return True

    def handle_timer(self, now: float) -> None:
        for query in self.queries.values():
            if not query.answered and query.retries and now >= query.retries[0]:
                query.retries.pop(0)
                self.out.append((query.request, query.destination))
        self._advance(now)

    def get_timer(self) -> float | None:
        if self.done:
            return None
        times = [self.phase_deadline]
        times += [q.retries[0] for q in self.queries.values() if not q.answered and q.retries]
        return min(times)

    def datagrams(self) -> list[tuple[bytes, Address]]:
        out, self.out = self.out, []
        return out

    # ------------------------------------------------------------------ phases

    def _advance(self, now: float) -> None:
        if self.done:
            return
        pending = [q for q in self.queries.values() if q.purpose == self.phase and not q.answered]
        if pending and now < self.phase_deadline:
            return
        if self.phase == "bind":
            if self.other is not None and self.alternate_server is not None:
                self.phase = "filter"
                server = self.alternate_server
                rtt = self._rtt(server)
                both = stun.CHANGE_IP | stun.CHANGE_PORT
                self._query("filter", server, now, change=both, retries=FILTER_RETRIES)
                self._query("filter", server, now, change=stun.CHANGE_PORT,
                            retries=FILTER_RETRIES)
                self.phase_deadline = now + max(FILTER_WAIT_MIN, 4 * (rtt or 0.0) + 0.3)
                return
            self._finish()
        elif self.phase == "filter":
            self.phase = "map"
            assert self.alternate_server is not None and self.other is not None
            self._query("map", (self.alternate_server[0], self.other[1]), now)
            self._query("map", self.other, now)
            self.phase_deadline = now + BIND_TIMEOUT
        else:
            self._finish()

    def _query(self, purpose: str, destination: Address, now: float, *, change: int = 0,
               retries: tuple[float, ...] = BIND_RETRIES) -> None:
        txid = self.random_bytes(12)
        request = stun.encode_binding_request(
            txid, change=change, pad_to=stun.PADDED_REQUEST_SIZE
        )
        self.queries[txid] = _Query(
            purpose, destination, request, now, [now + r for r in retries], now + BIND_TIMEOUT,
            change,
        )
        self.out.append((request, destination))

    def _rtt(self, server: Address) -> float | None:
        for query in self.queries.values():
            if query.destination == server and query.rtt is not None:
                return query.rtt
        return None

    # ------------------------------------------------------------------ verdict

    def _finish(self) -> None:
        binds = [q for q in self.queries.values() if q.purpose in ("bind", "map")]
        seen = [(q.destination, q.mapped) for q in binds if q.mapped is not None]
        servers = tuple(
            ServerResult(q.destination, q.mapped, q.rtt)
            for q in self.queries.values()
            if q.purpose == "bind"
        )
        public = tuple(dict.fromkeys(m for _, m in seen))
        local_ips = {a[0] for a in self.local}
        local_ports = {a[1] for a in self.local}
        is_public = bool(seen) and all(m[0] in local_ips or _loopback(m[0]) for _, m in seen)
        mapping, varies = _mapping(seen)
        filtering = UNKNOWN
        answered = {q.change for q in self.queries.values() if q.purpose == "filter" and q.answered}
        if self.other is not None and self.phase != "bind":
            if stun.CHANGE_IP | stun.CHANGE_PORT in answered:
                filtering = ENDPOINT_INDEPENDENT
            elif stun.CHANGE_PORT in answered:
                filtering = ADDRESS_DEPENDENT
            else:
                filtering = ADDRESS_AND_PORT_DEPENDENT
        preserving = (seen[0][1][1] in local_ports) if seen and local_ports else None
        self.report = NatReport(
            nat=NatType(mapping=mapping, filtering=filtering, public=is_public, varies=varies),
            public=public,
            udp=bool(seen),
            servers=servers,
            port_preserving=preserving,
            port_delta=_port_delta([m for _, m in seen]) if varies or mapping not in (
                UNKNOWN, ENDPOINT_INDEPENDENT) else None,
            alternate=self.other is not None,
        )


def _mapping(seen: list[tuple[Address, Address]]) -> tuple[str, bool]:
    """(RFC 4787 mapping behaviour, whether the mapping varies) from (destination, mapped)."""
    destinations = {d for d, _ in seen}
    if len(destinations) < 2:
        return UNKNOWN, False
    if len({m for _, m in seen}) == 1:
        return ENDPOINT_INDEPENDENT, False
    same_ip_differs = same_ip_agrees = False
    for i, (dest_a, mapped_a) in enumerate(seen):
        for dest_b, mapped_b in seen[i + 1 :]:
            if _same_ip(dest_a, dest_b) and dest_a != dest_b:
                if mapped_a == mapped_b:
                    same_ip_agrees = True
                else:
                    same_ip_differs = True
    if same_ip_differs:
        return ADDRESS_AND_PORT_DEPENDENT, False
    if same_ip_agrees:
        return ADDRESS_DEPENDENT, False
    return UNKNOWN, True


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _same_ip(a: Address, b: Address) -> bool:
    try:
        return ipaddress.ip_address(a[0]) == ipaddress.ip_address(b[0])
    except ValueError:
        return a[0] == b[0]


def _port_delta(mapped: list[Address]) -> int | None:
    ports = [m[1] for m in mapped]
    if len(ports) < 3:
        return None
    steps = {b - a for a, b in itertools.pairwise(ports)}
    if len(steps) == 1:
        step = steps.pop()
        if 0 < abs(step) <= 16:
            return step
    return None
