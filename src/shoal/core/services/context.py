"""What a service may do: the narrow door between a service and the endpoint.

Each service gets its own ``ServiceContext`` when it is attached. Through it the service
sends frames on connections, arms its timers in the endpoint's one deadline heap, emits
events, reads the node's settings and its own, and draws randomness; it never holds the
endpoint. Services that reach peers outside connections (rendezvous, the NAT check,
relaying) also use ``transport`` (see ``interfaces.Transport``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from shoal.core import events as ev
from shoal.core.wire import Frame

if TYPE_CHECKING:
    from shoal.core.config import CoreConfig
    from shoal.core.connection import Connection
    from shoal.core.endpoint import Endpoint
    from shoal.core.services.base import Service
    from shoal.core.services.interfaces import Transport
    from shoal.identity import Identity


class ServiceContext:
    """One service's handle on the endpoint (see the module docstring)."""

    __slots__ = ("_endpoint", "_service", "transport")

    def __init__(self, endpoint: Endpoint, service: Service) -> None:
        self._endpoint = endpoint
        self._service = service
        self.transport: Transport = endpoint

    # ---------------------------------------------------------------- reading

    @property
    def config(self) -> CoreConfig:
        """The node's settings (limits and timers every service shares)."""
        return self._endpoint.config

    @property
    def options(self) -> Mapping[str, Any]:
        """This service's own settings: ``CoreConfig.services[name]`` (empty if none)."""
        return self._endpoint.config.services.get(self._service.name, {})

    @property
    def now(self) -> float:
        """The driver's time as of the input or command being handled."""
        return self._endpoint.now

    @property
    def identity(self) -> Identity:
        return self._endpoint.identity

    @property
    def stats(self) -> Counter[str]:
        """The node's counters (a service names its own, e.g. ``dropped_<reason>``)."""
        return self._endpoint.stats

    def random(self, count: int) -> bytes:
        """``count`` bytes from the driver's random source (replayable in simulation)."""
        return self._endpoint.random(count)

    def new_handle(self) -> int:
        """A handle no other command of this node returned."""
        return self._endpoint.new_handle()

    def connection_to(self, peer: bytes) -> Connection | None:
        """The connection that carries new traffic to ``peer``, if any."""
        return self._endpoint.connection_to(peer)

    def connections_with(self, peer: bytes) -> list[Connection]:
        """Every connection with ``peer``, draining ones included."""
        return self._endpoint.connections_with(peer)

    # ---------------------------------------------------------------- acting

    def send(self, connection: Connection, frame: Frame | bytes, *, reliable: bool = True,
             notify: bool = False) -> None:
        """Queue ``frame`` on ``connection``. A reliable frame is sent within the
        connection's congestion window, and again until acknowledged; with ``notify``
        this service's ``on_frame_acked``/``on_frame_lost`` hear what became of it. An
        unreliable one goes once, ahead of the window."""
        connection.queue_frame(frame, reliable=reliable,
                               owner=self._service if notify else None)
        self._endpoint.mark(connection)

    def send_to(self, peer: bytes, frame: Frame | bytes, *, reliable: bool = True,
                notify: bool = False) -> bool:
        """``send`` on the peer's current connection; False if there is none."""
        connection = self._endpoint.connection_to(peer)
        if connection is None:
            return False
        self.send(connection, frame, reliable=reliable, notify=notify)
        return True

    def wake(self, connection: Connection) -> None:
        """``connection`` has something to send (a flow got data): flush it."""
        self._endpoint.mark(connection)

    def close_connection(self, connection: Connection, code: int, reason: str) -> None:
        """Close ``connection`` (the peer is told) and let every service know."""
        self._endpoint.close_connection(connection, code, reason, self._endpoint.now)

    def set_timer(self, deadline: float | None, key: object = None) -> None:
        """Arm (or with None, disarm) this service's timer named ``key``."""
        self._endpoint.timers.set((self._service, key), deadline)

    def timer(self, key: object = None) -> float | None:
        """The deadline of this service's timer named ``key``, if armed."""
        return self._endpoint.timers.deadline((self._service, key))

    def emit(self, event: ev.Event) -> None:
        """Hand ``event`` to the driver."""
        self._endpoint.emit(event)

    def event(self, kind: str, data: object = None, *, peer: bytes | None = None) -> None:
        """Emit a ``ServiceEvent`` of this service."""
        self._endpoint.emit(ev.ServiceEvent(service=self._service.name, kind=kind,
                                            peer_id=peer.hex() if peer else None, data=data))
