"""STUN and the NAT check as a service: a STUN client and server (RFC 8489, RFC 5780
behaviour tests) and the orchestration of ``natcheck.NatCheck``.

STUN datagrams (first byte 0x00-0x3f) never enter a connection. Requests are rate
limited per source IP with a bucket of their own, so STUN traffic from a network cannot
lock that network's nodes out of their handshakes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shoal.core import events as ev
from shoal.core import stun
from shoal.core.admission import prefix_of, source_of
from shoal.core.natcheck import NatCheck, NatReport
from shoal.core.relay import KeyedBuckets
from shoal.core.services.base import Service
from shoal.core.traversal import NatType
from shoal.core.wire import Address, RelayPath
from shoal.errors import LocalProtocolError

if TYPE_CHECKING:
    from shoal.core.services.context import ServiceContext
    from shoal.core.services.interfaces import Rendezvous

STUN_RETRIES = (0.5, 1.0)
UNPADDED_PER_SECOND = 1.0
UNPADDED_BURST = 4.0


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


class NatService(Service):
    name = "nat"
    requires = ("rendezvous",)
    packet_kinds = tuple(range(0x40))

    def __init__(self) -> None:
        super().__init__()
        self.check: NatCheck | None = None
        self.report: NatReport | None = None
        self.nat = NatType()
        self.alternate: _StunAlternate | None = None
        self._queries: dict[bytes, _StunQuery] = {}
        self._unpadded = KeyedBuckets(UNPADDED_PER_SECOND, UNPADDED_BURST)

    def attach(self, ctx: ServiceContext, services: Mapping[str, Any]) -> None:
        super().attach(ctx, services)
        self.rendezvous: Rendezvous = services["rendezvous"]
        self.transport = ctx.transport
        rate = self.config.max_stun_per_source
        self._buckets = KeyedBuckets(rate, 2 * rate)

    # ---------------------------------------------------------------- commands

    def request(self, server: Address, handle: int, now: float) -> None:
        txid = self.ctx.random(12)
        # Padded, so that the answer is no larger than the question; the last retry is
        # plain, for a server that does not know PADDING.
        request = stun.encode_binding_request(txid, pad_to=stun.PLAIN_PADDED_SIZE)
        self._queries[txid] = _StunQuery(
            handle, server, request, now, [now + t for t in STUN_RETRIES],
            now + self.config.stun_timeout,
        )
        self.transport.send_datagram(request, server)
        self._arm()

    def start_check(self, now: float, servers: Iterable[Address] = ()) -> None:
        every = [*self.rendezvous.introducers, *self.config.stun_servers, *servers]
        targets = tuple(dict.fromkeys(a for a in every if not isinstance(a, RelayPath)))
        if not targets:
            return
        self.check = NatCheck(targets, self.transport.local_addresses, self.ctx.random, now)
        self._after_check(now)

    def set_alternate(self, primary: Address, other: Address, *, port_socket: int,
                      ip_socket: int, both_socket: int) -> None:
        if max(port_socket, ip_socket, both_socket) >= 0:
            raise LocalProtocolError("alternate STUN sockets use negative ids")
        (ip1, port1), (ip2, port2) = primary, other
        self.alternate = _StunAlternate(
            other,
            {(False, False): 0, (False, True): port_socket, (True, False): ip_socket,
             (True, True): both_socket},
            {(False, False): primary, (False, True): (ip1, port2), (True, False): (ip2, port1),
             (True, True): other},
        )

    def address_reported(self, previous: Address | None, current: Address, now: float) -> None:
        """An introducer told us our public address; check the NAT on the first report
        and whenever it changes."""
        if self.config.nat_check and (
            (self.check is None and self.report is None)
            or (previous is not None and previous != current)
        ):
            self.start_check(now)

    # ---------------------------------------------------------------- input

    def on_packet(self, data: bytes, address: Address, now: float, socket: int) -> None:
        stats = self.ctx.stats
        if not stun.looks_like_stun(data):
            stats["dropped_malformed"] += 1
            return
        message = stun.decode(data)
        if message.method_class == stun.BINDING_REQUEST:
            if not self.config.stun_server or not self._buckets.take(source_of(address), now):
                stats["dropped_rate_limited"] += 1
                return
            self._answer(message, address, socket, now)
        elif message.method_class == stun.BINDING_SUCCESS:
            check = self.check
            if check is not None and check.on_answer(message, now):
                self._after_check(now)
                return
            query = self._queries.pop(message.transaction_id, None)
            if query is None:
                stats["dropped_unsolicited_stun"] += 1
                return
            self.ctx.emit(ev.StunResult(handle=query.handle, server=query.server,
                                             mapped=message.mapped,
                                             rtt=now - query.first_sent))
            self._arm()
        else:
            stats["dropped_stun_other"] += 1


    def _answer(self, message: stun.StunMessage, address: Address, socket: int,
                now: float) -> None:
        """Answer a Binding request, from a changed address when asked (RFC 5780) and
        with the alternate named, as long as the answer is no larger than the request;
        an answer larger than an unpadded request only within a budget per network."""
        stats = self.ctx.stats
        alternate = self.alternate
        txid = message.transaction_id
        place = alternate.place(socket) if alternate is not None else None
        if alternate is not None and place is not None:
            reply = (place[0] != bool(message.change & stun.CHANGE_IP),
                     place[1] != bool(message.change & stun.CHANGE_PORT))
            reply_socket, origin = alternate.sockets[reply], alternate.addresses[reply]
            rich = stun.encode_binding_success(txid, address, other=alternate.other,
                                               origin=origin)
            if len(rich) <= message.size:
                self.transport.send_datagram(rich, address, reply_socket)
                stats["stun_answered"] += 1
                return
            if message.change:  # unpadded change requests would amplify: stay silent
                stats["dropped_stun_unpadded"] += 1
                return
        plain = stun.encode_binding_success(txid, address)
        # A plain 20-byte request (standard clients send no PADDING) gets its larger
        # answer only within a small budget per source network: that is all a spoofed
        # source can reflect at a victim's network.
        if len(plain) > message.size and not self._unpadded.take(prefix_of(address), now):
            stats["dropped_stun_unpadded"] += 1
            return
        self.transport.send_datagram(plain, address, socket)
        stats["stun_answered"] += 1

    # ---------------------------------------------------------------- timers

    def _arm(self) -> None:
        times = [q.retries[0] if q.retries else q.deadline for q in self._queries.values()]
        if self.check is not None and (deadline := self.check.get_timer()) is not None:
            times.append(deadline)
        self.set_timer(min(times) if times else None)

    def on_timer(self, now: float, key: object = None) -> None:
        for txid, query in list(self._queries.items()):
            if now >= query.deadline:
                del self._queries[txid]
                self.ctx.emit(ev.StunResult(handle=query.handle, server=query.server,
                                                 mapped=None, rtt=None))
            elif query.retries and now >= query.retries[0]:
                query.retries.pop(0)
                if not query.retries:
                    query.request = stun.encode_binding_request(txid)
                self.transport.send_datagram(query.request, query.server)
        if self.check is not None:
            self.check.handle_timer(now)
            self._after_check(now)
        self._arm()

    def _after_check(self, now: float) -> None:
        check = self.check
        if check is None:
            return
        for datagram, destination in check.datagrams():
            self.transport.send_datagram(datagram, destination)
        if check.done:
            self.check = None
            report = check.report
            assert report is not None
            self.report = report
            changed = report.nat != self.nat
            self.nat = report.nat
            self.ctx.emit(ev.NatDetected(report=report))
            if changed:
                self.rendezvous.nat_changed(now)
        self._arm()
