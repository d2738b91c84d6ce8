"""Events the core hands to its driver. Small, frozen, keyword-only dataclasses."""

from __future__ import annotations

from dataclasses import dataclass, field

from shoal.core.natcheck import NatReport
from shoal.core.wire import Address


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerConnected:
    """A connection with ``peer_id`` is established (``initiator``: we started it)."""

    peer_id: str
    address: Address
    path: str
    initiator: bool
    introducer: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerReached:
    """A dial to ``address`` (``Endpoint.connect``) was answered by ``peer_id``, which
    is connected now: by the connection this dial made, or by the one held already (the
    same run of the peer's node answered), which now tries ``address`` as one more path."""

    peer_id: str
    address: Address


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerDisconnected:
    """The connection with ``peer_id`` ended: closed by either side, or the peer went silent."""

    peer_id: str
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageReceived:
    """A whole message from ``peer_id`` (a verified identity) on ``channel``.

    The message counts against the node's receive budgets (and its peer's credit) until
    the driver hands it to ``Endpoint.message_read`` once the application took it."""

    peer_id: str
    data: bytes
    path: str
    channel: str = ""
    receipt: object = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class PathChanged:
    """The connection with ``peer_id`` moved to another path (a relay to direct, say)."""

    peer_id: str
    address: object
    path: str


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageDelivered:
    """The receiver acknowledged every byte of message ``handle``."""

    handle: int
    peer_id: str
    path: str


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageFailed:
    """Message ``handle`` will not be delivered; ``code`` is a ShoalError code."""

    handle: int
    peer_id: str
    code: str
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class AddressObserved:
    """Peer ``reporter`` sees our packets coming from ``address`` (our public address)."""

    reporter: str
    address: Address


@dataclass(frozen=True, slots=True, kw_only=True)
class IntroducersUnreachable:
    """Every introducer failed to answer its last dial, and none is connected (dials go
    on, backing off)."""

    addresses: tuple[Address, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class StunResult:
    """A STUN server answered request ``handle``; ``mapped`` is None on timeout."""

    handle: int
    server: Address
    mapped: Address | None
    rtt: float | None


@dataclass(frozen=True, slots=True, kw_only=True)
class NatDetected:
    """A NAT check finished: ``report`` holds this node's NAT kind and public addresses."""

    report: NatReport


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceEvent:
    """Something a service reports on its own (see ``ServiceContext.event``): ``kind``
    names it within ``service``; ``peer_id`` is the peer it concerns, if one."""

    service: str
    kind: str
    peer_id: str | None = None
    data: object = None


Event = (
    PeerConnected | PeerReached | PeerDisconnected | PathChanged | MessageReceived
    | MessageDelivered | MessageFailed | AddressObserved | IntroducersUnreachable
    | StunResult | NatDetected | ServiceEvent
)
