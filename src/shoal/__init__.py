"""Shoal: a runtime for local-first, peer-to-peer apps.

The network API lives here; ``shoal.sim`` runs the same protocol core in virtual time.
"""

from shoal.aio.node import Delivery, Message, Node, PeerInfo
from shoal.core.config import CoreConfig
from shoal.errors import (
    ClosedError,
    DeliveryError,
    IdentityError,
    LocalProtocolError,
    RemoteProtocolError,
    ShoalError,
)
from shoal.identity import Identity

__version__ = "0.1.0"

__all__ = [
    "ClosedError",
    "CoreConfig",
    "Delivery",
    "DeliveryError",
    "Identity",
    "IdentityError",
    "LocalProtocolError",
    "Message",
    "Node",
    "PeerInfo",
    "RemoteProtocolError",
    "ShoalError",
    "__version__",
]
