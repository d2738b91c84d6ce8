"""The interface every protocol service implements to plug into the endpoint.

A service owns frame types (and, rarely, datagram kinds), reacts to its frames on a
connection, hears when connections come up and go down, and keeps timers in the endpoint's
deadline heap. Adding a protocol to Shoal means adding a service; the
endpoint itself only demultiplexes, handshakes and keeps the connection table.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from shoal.core.wire import Address, Frame

if TYPE_CHECKING:
    from shoal.core.config import CoreConfig
    from shoal.core.connection import Connection
    from shoal.core.endpoint import Endpoint


class Service:
    """Base class: override what the protocol needs; every hook defaults to nothing."""

    name = "service"
    frame_types: tuple[int, ...] = ()
    """Frame types this service handles (each owned by one service)."""
    packet_kinds: tuple[int, ...] = ()
    """First bytes of datagrams this service handles outside connections."""

    def __init__(self) -> None:
        self.endpoint: Endpoint = None  # type: ignore[assignment]

    def attach(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint

    @property
    def config(self) -> CoreConfig:
        return self.endpoint.config

    def set_timer(self, deadline: float | None, key: object = None) -> None:
        """Arm (or with None, disarm) this service's timer named ``key``."""
        self.endpoint.timers.set((self, key), deadline)

    def on_frame(self, connection: Connection, frame: Frame, now: float) -> None:
        """A frame of one of ``frame_types`` arrived on ``connection``."""

    def on_packet(self, data: bytes, address: Address, now: float, socket: int) -> None:
        """A datagram whose first byte is one of ``packet_kinds`` arrived."""

    def on_connection_created(self, connection: Connection) -> None:
        """A handshake completed: ``connection`` exists and may receive at once, whether
        it becomes the peer's connection or one that a crossed dial supersedes."""

    def on_connection_up(self, connection: Connection, now: float) -> None:
        """A connection was established (it is the peer's connection now)."""

    def on_connection_down(self, connection: Connection, reason: str, now: float) -> None:
        """A connection ended (closed, timed out, or superseded and drained)."""

    def on_path_changed(self, connection: Connection, now: float) -> None:
        """The connection moved to another path."""

    def on_path_failing(self, connection: Connection, now: float) -> None:
        """The connection's direct path went silent with packets in flight."""

    def on_timer(self, now: float, key: object = None) -> None:
        """This service's deadline named ``key`` passed."""

    def close(self, now: float) -> None:
        """The node is closing."""
