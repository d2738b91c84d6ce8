"""What services may ask of each other, as small protocols.

A service names the services it needs in ``requires``; the endpoint hands it those
services, bound by name, when it is attached (``Service.attach``). Each service reads the
others only through one of these interfaces, so any implementation with the same methods
(a test double, a replacement) plugs in the same way. ``Transport`` is what the endpoint
itself offers the services that reach peers (dials, raw datagrams, hole punching).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from shoal.core.wire import Address

if TYPE_CHECKING:
    from shoal.core.connection import Connection
    from shoal.core.handshake import Dial, Early
    from shoal.core.punching import PunchScheduler
    from shoal.core.traversal import NatType


class Messages(Protocol):
    """The message service, as the services that reach peers see it."""

    def pending_for(self, peer: bytes) -> bool:
        """Whether messages wait for a connection to ``peer``."""
        ...

    def waiting_peers(self) -> list[bytes]:
        """Peers that messages wait for a connection to."""
        ...

    def fail_pending(self, peer: bytes, code: str, reason: str) -> None:
        """Fail every message waiting for a connection to ``peer`` with ``code``."""
        ...


class Channels(Protocol):
    """The message service's channel numbers, as other services that name channels on a
    connection see them (datagrams)."""

    def outbound_number(self, connection: Connection, channel: str) -> int:
        """The number ``channel`` goes by from this node on ``connection`` (bound now
        if it was not); ``LocalProtocolError`` ENOPROTOOPT if the peer refused it."""
        ...

    def unanswered(self, connection: Connection, channel: str) -> bool:
        """Whether the peer has yet to answer the binding of ``channel``."""
        ...

    def inbound_name(self, connection: Connection, number: int) -> str | None:
        """The served channel the peer bound ``number`` to, if any."""
        ...


class EarlyData(Protocol):
    """Messages carried in a first contact (IK handshakes), as the handshakes see them."""

    def early_message(self, peer: bytes, wall: float) -> Early | None: ...
    def early_answered(self, peer: bytes, message_id: bytes, delivered: bool, path: str,
                       now: float) -> None: ...
    def early_unanswered(self, peer: bytes, message_id: bytes, now: float) -> None: ...
    def early_awaited(self, peer: bytes) -> bytes | None: ...
    def take_early(self, peer: bytes, early: Early, path: str, now: float,
                   wall: float, floor: float) -> bool: ...


class Rendezvous(Protocol):
    """Introducers and the peers this node knows how to reach."""

    introducers: dict
    introducer_peers: set[bytes]

    def reach(self, peer: bytes, now: float, *, fresh: bool = False) -> None:
        """Find a way to ``peer`` (known addresses, then introductions)."""
        ...

    def unknown(self, peer: bytes) -> bool:
        """Whether every introducer said it does not know ``peer``."""
        ...

    def forget(self, peer: bytes) -> None:
        """Drop what ``reach`` noted about ``peer``, unless something else needs it."""
        ...

    def nat_changed(self, now: float) -> None:
        """This node's NAT kind changed: tell the introducers."""
        ...

    def static_of(self, peer: bytes) -> bytes | None:
        """``peer``'s X25519 static key, if an introducer vouched for it."""
        ...

    def on_dial_failed(self, dial: Dial, now: float) -> None:
        """A handshake this node started ended unanswered or refused."""
        ...


class Nat(Protocol):
    """This node's NAT kind, and what changes it."""

    nat: NatType

    def address_reported(self, previous: Address | None, current: Address, now: float
                         ) -> None: ...


class Relay(Protocol):
    """Passing datagrams through a connected peer."""

    def send_via(self, path: object, datagram: bytes) -> bool: ...


class Transport(Protocol):
    """The endpoint's own means, for services that reach peers outside connections."""

    local_addresses: tuple[Address, ...]
    punches: PunchScheduler

    def dial(self, address: Address, now: float, *, expected: bytes | None,
             purpose: str = "peer", socket: int = 0, timeout: float | None = None) -> None:
        """Start a handshake with ``address`` (or probe it as a path of ``expected``'s
        connection)."""
        ...

    def dialing(self, peer: bytes, *, pool: bool = False) -> bool:
        """Whether a handshake with ``peer`` is in progress."""
        ...

    def send_datagram(self, datagram: bytes, address: Address, socket: int = 0) -> None:
        """Queue one datagram outside any connection."""
        ...

    def receive_relayed(self, packet: bytes, path: object, now: float) -> None:
        """A datagram that arrived through a relay."""
        ...

    def allow_unauthenticated(self, address: Address, now: float) -> bool:
        """Take a token from ``address``'s budget of unauthenticated work."""
        ...

    def run_punch(self, now: float) -> None: ...
    def end_punch(self, now: float) -> None: ...


class Providers(Protocol):
    """Find the peers that hold a key, and be found for the keys this node holds."""
    def provide(self, key: bytes, now: float) -> None: ...     # keep announcing until withdraw
    def withdraw(self, key: bytes) -> None: ...
    def find(self, key: bytes, now: float,
             on_found: Callable[[bytes, list[Address]], None]) -> None: ...
        # calls on_found(peer_static_key, addresses) for each provider found, as found
