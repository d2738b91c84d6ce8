"""Relaying: passing end-to-end encrypted datagrams between two peers of this node.

A peer that cannot reach another directly sends its Shoal datagram in a RELAY_SEND frame
to a node both are connected to; that node passes it on in a RELAY_RECV frame naming
the sender. Relay frames are unreliable: the datagrams they carry belong to a connection
of their own between the two ends, with its own reliability, which the relay cannot
read or alter. ``RelayQuotas`` bounds what one peer may make this node relay.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from shoal.core.connection import Connection
from shoal.core.relay import RelayQuotas
from shoal.core.services.base import Service
from shoal.core.wire import MAX_RELAYED_DATAGRAM, Frame, FrameType, RelayPath, RelayRecv, RelaySend

if TYPE_CHECKING:
    from shoal.core.services.context import ServiceContext


class RelayService(Service):
    name = "relay"
    frame_types = (FrameType.RELAY_SEND, FrameType.RELAY_RECV)

    def attach(self, ctx: ServiceContext, services: Mapping[str, Any]) -> None:
        super().attach(ctx, services)
        self.quotas = RelayQuotas(ctx.config, self._connected_direct)

    def _connected_direct(self, peer: bytes) -> bool:
        connection = self.ctx.connection_to(peer)
        return connection is not None and not connection.path.relayed

    def send_via(self, path: RelayPath, datagram: bytes) -> bool:
        """Hand ``datagram`` to the relay named in ``path``; False if it cannot take it."""
        relay = self.ctx.connection_to(path.relay)
        if relay is None or relay.path.relayed or len(datagram) > MAX_RELAYED_DATAGRAM:
            self.ctx.stats["dropped_relay_unavailable"] += 1
            return False
        relay.queue_frame(RelaySend(path.peer, datagram), reliable=False)
        self.ctx.wake(relay)
        return True

    def on_frame(self, connection: Connection, frame: Frame, now: float) -> None:
        if isinstance(frame, RelaySend):
            self.forward(connection, frame, now)
        elif isinstance(frame, RelayRecv):
            self.ctx.transport.receive_relayed(frame.packet, RelayPath(connection.peer, frame.peer),
                                          now)

    def forward(self, connection: Connection, frame: RelaySend, now: float) -> None:
        """Pass a peer's packet on to another connected peer, within the quotas."""
        stats = self.ctx.stats
        source, target = connection.peer, frame.peer
        onward = self.ctx.connection_to(target)
        if (
            not self.config.relay
            or onward is None
            or target == source
            or onward.path.relayed
            or connection.path.relayed
        ):
            stats["dropped_relay_refused"] += 1
            return
        if not self.quotas.admit(source, target, len(frame.packet), now):
            stats["dropped_relay_quota"] += 1
            return
        onward.queue_frame(RelayRecv(source, frame.packet), reliable=False)
        self.ctx.wake(onward)
        stats["relayed_packets"] += 1
        stats["relayed_bytes"] += len(frame.packet)
