"""What a service may do: the narrow door between a service and the endpoint.

Each service gets its own ``ServiceContext`` when it is attached. Through it the service
sends frames on connections, arms its timers in the endpoint's one deadline heap, emits
events, reads the node's settings and its own, and draws randomness; it never holds the
endpoint. Services that reach peers outside connections (rendezvous, the NAT check,
relaying) also use ``transport`` (see ``interfaces.Transport``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
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
    """One service's handle on the endpoint (see the module docstring).

    Besides the methods below: ``emit(event)`` hands a core event to the driver;
    ``wake(connection)`` has a connection flushed (a flow of it got data);
    ``connection_to(peer)`` is the connection that carries new traffic to ``peer``, if
    any, and ``connections_with(peer)`` every connection with it, draining ones too;
    ``random(count)`` draws from the driver's random source (replayable in simulation);
    ``new_handle()`` is a handle no other command of this node returned; ``stats`` are
    the node's counters (a service names its own, e.g. ``dropped_<reason>``).
    """

    __slots__ = ("_endpoint", "_service", "transport", "config", "emit", "wake", "connection_to",
                 "connections_with", "random", "new_handle", "stats")

    def __init__(self, endpoint: Endpoint, service: Service) -> None:
        self._endpoint = endpoint
        self._service = service
        self.transport: Transport = endpoint
        self.config: CoreConfig = endpoint.config
        """The node's settings (limits and timers every service shares)."""
        # The endpoint's own methods, bound: no extra call on the hot paths.
        self.emit: Callable[[ev.Event], None] = endpoint.emit
        self.wake: Callable[[Connection], None] = endpoint.mark
        self.connection_to: Callable[[bytes], Connection | None] = endpoint.connection_to
        self.connections_with: Callable[[bytes], list[Connection]] = \
            endpoint.connections_with
        self.random: Callable[[int], bytes] = endpoint.random
        self.new_handle: Callable[[], int] = endpoint.new_handle
        self.stats: Counter[str] = endpoint.stats

    # ---------------------------------------------------------------- reading

    @property
    def options(self) -> Mapping[str, Any]:
        """This service's own settings: ``CoreConfig.services[name]`` (empty if none)."""
        return self._endpoint.config.services.get(self._service.name, {})

    @property
    def now(self) -> float:
        """The driver's time as of the input or command being handled."""
        return self._endpoint.now

    @property
    def wall(self) -> float:
        """Wall-clock time (seconds since the Unix epoch) as of ``now``, as the driver
        reports it."""
        return self._endpoint.now + self._endpoint.wall_offset

    @property
    def identity(self) -> Identity:
        return self._endpoint.identity


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


    def close_connection(self, connection: Connection, code: int, reason: str) -> None:
        """Close ``connection`` (the peer is told) and let every service know."""
        self._endpoint.close_connection(connection, code, reason, self._endpoint.now)

    def set_timer(self, deadline: float | None, key: object = None) -> None:
        """Arm (or with None, disarm) this service's timer named ``key``."""
        self._endpoint.timers.set((self._service, key), deadline)

    def timer(self, key: object = None) -> float | None:
        """The deadline of this service's timer named ``key``, if armed."""
        return self._endpoint.timers.deadline((self._service, key))


    def event(self, kind: str, data: object = None, *, peer: bytes | None = None) -> None:
        """Emit a ``ServiceEvent`` of this service."""
        self._endpoint.emit(ev.ServiceEvent(service=self._service.name, kind=kind,
                                            peer_id=peer.hex() if peer else None, data=data))
