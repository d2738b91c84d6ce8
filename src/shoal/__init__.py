"""Shoal: a runtime for local-first, peer-to-peer apps.

The network API lives here; ``shoal.sim`` runs the same protocol core in virtual time.
"""

from typing import TYPE_CHECKING

from shoal._lazy import lazy_exports
from shoal.errors import (
    ClosedError,
    DeliveryError,
    IdentityError,
    LocalProtocolError,
    RemoteProtocolError,
    ShoalError,
)

if TYPE_CHECKING:
    from shoal.aio.files import FetchError, FetchProgress, FetchResult
    from shoal.aio.groups import Group, GroupDocument, Member, Post
    from shoal.aio.node import (
        Channel,
        Datagram,
        Delivery,
        Message,
        Node,
        PeerInfo,
        Service,
        ServiceEvent,
        Stream,
        Subscription,
    )
    from shoal.core.blobs import Ticket, TicketError, VerificationError
    from shoal.core.config import CoreConfig
    from shoal.identity import Identity

_LAZY = {
    "Channel": "shoal.aio.node",
    "Datagram": "shoal.aio.node",
    "Subscription": "shoal.aio.node",
    "Delivery": "shoal.aio.node",
    "Message": "shoal.aio.node",
    "Node": "shoal.aio.node",
    "PeerInfo": "shoal.aio.node",
    "Service": "shoal.aio.node",
    "ServiceEvent": "shoal.aio.node",
    "Stream": "shoal.aio.node",
    "CoreConfig": "shoal.core.config",
    "FetchError": "shoal.aio.files",
    "FetchProgress": "shoal.aio.files",
    "FetchResult": "shoal.aio.files",
    "Group": "shoal.aio.groups",
    "GroupDocument": "shoal.aio.groups",
    "Member": "shoal.aio.groups",
    "Post": "shoal.aio.groups",
    "Ticket": "shoal.core.blobs",
    "TicketError": "shoal.core.blobs",
    "VerificationError": "shoal.core.blobs",
    "Identity": "shoal.identity",
}


# The network stack loads on first use.
__getattr__ = lazy_exports(globals(), _LAZY)

__version__ = "0.1.0"

__all__ = [
    "Channel",
    "ClosedError",
    "CoreConfig",
    "Datagram",
    "Delivery",
    "DeliveryError",
    "FetchError",
    "FetchProgress",
    "FetchResult",
    "Group",
    "GroupDocument",
    "Identity",
    "IdentityError",
    "LocalProtocolError",
    "Member",
    "Message",
    "Node",
    "PeerInfo",
    "Post",
    "RemoteProtocolError",
    "Service",
    "ServiceEvent",
    "ShoalError",
    "Stream",
    "Subscription",
    "Ticket",
    "TicketError",
    "VerificationError",
    "__version__",
]
