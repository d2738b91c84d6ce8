"""The interface every protocol service implements to plug into the endpoint.

A service owns frame types (and, rarely, datagram kinds), reacts to its frames on a
connection, hears when connections come up and go down, and keeps timers in the endpoint's
deadline heap. It acts only through its ``ServiceContext`` (``self.ctx``) and reaches
other services only by naming them in ``requires``: ``attach`` hands it those services,
which it reads through the small protocols of ``interfaces``. Built-in services and the
ones an application adds (``Endpoint(services=...)``, ``shoal.Node(services=...)``) plug in
the same way; the endpoint itself only demultiplexes, handshakes and keeps the
connection table.

Writing one: subclass ``Service``, give it a unique ``name``, list the frame types it
reads in ``frame_types`` (extension types 0xc0-0xff need no codec; others need a
decoder in ``frame_decoders``), override the hooks it needs, and ``call`` for what the
application asks of it (``Node.call(name, ...)``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from shoal.core.wire import Address, Frame
from shoal.errors import LocalProtocolError

if TYPE_CHECKING:
    from shoal.core.config import CoreConfig
    from shoal.core.connection import Connection
    from shoal.core.frames import Reader
    from shoal.core.services.context import ServiceContext


class Service:
    """Base class: override what the protocol needs; every hook defaults to nothing."""

    name = "service"
    requires: tuple[str, ...] = ()
    """Names of the services this one uses; ``attach`` hands them over."""
    frame_types: tuple[int, ...] = ()
    """Frame types this service reads (each owned by one service)."""
    frame_decoders: Mapping[int, Callable[[bytes, int], tuple[Any, int]]] = {}
    """Decoders for owned frame types outside the extension range that the wire module
    has no codec for: ``decode(payload, pos_after_type) -> (frame, next_pos)``, raising
    only ``RemoteProtocolError``."""
    packet_kinds: tuple[int, ...] = ()
    """First bytes of datagrams this service handles outside connections."""

    ctx: ServiceContext

    def frame_reader(self, code: int) -> Reader | None:
        """A reader that parses frames of type ``code`` in place as packets are read
        (see ``frames``), for the bulk of a service's traffic; None (the default) has
        them decoded and handed to ``on_frame``."""
        return None

    config: CoreConfig
    """The node's settings (``ctx.config``), from ``attach`` on."""

    def attach(self, ctx: ServiceContext, services: Mapping[str, Any]) -> None:
        """Plugged in: keep ``ctx``; ``services`` holds each service named in
        ``requires``, by name."""
        self.ctx = ctx
        self.config = ctx.config

    def set_timer(self, deadline: float | None, key: object = None) -> None:
        """Arm (or with None, disarm) this service's timer named ``key``."""
        self.ctx.set_timer(deadline, key)

    def call(self, now: float, *args: Any, **kwargs: Any) -> Any:
        """A request from the application (``Node.call``); by default there are none."""
        raise LocalProtocolError(f"service {self.name!r} takes no calls", code="EINVAL")

    def on_frame(self, connection: Connection, frame: Frame, now: float) -> None:
        """A frame of one of ``frame_types`` arrived on ``connection``."""

    def on_frame_acked(self, connection: Connection, frame: bytes) -> None:
        """A frame sent with ``ctx.send(..., notify=True)`` was acknowledged (once)."""

    def on_frame_lost(self, connection: Connection, frame: bytes) -> None:
        """A frame sent with ``notify=True`` was lost (or its packet is probed again);
        it is sent again."""

    def on_packet(self, data: bytes, address: Address, now: float, socket: int) -> None:
        """A datagram whose first byte is one of ``packet_kinds`` arrived."""

    def on_connection_created(self, connection: Connection) -> None:
        """A handshake completed: ``connection`` exists and may receive at once, whether
        it becomes the peer's connection or one that a crossed dial supersedes."""

    def on_connection_up(self, connection: Connection, now: float) -> None:
        """A connection was established (it is the peer's connection now)."""

    def on_connection_down(self, connection: Connection, reason: str, now: float) -> None:
        """A connection ended (closed, timed out, or superseded and drained)."""

    def on_connection_replaced(self, old: Connection, new: Connection, *, hold: bool) -> None:
        """``new`` carries the peer's traffic instead of ``old`` (a crossed dial, or the
        peer reconnected): move what ``old`` has not begun to send. With ``hold``,
        ``old`` drains first and ``new`` should send nothing new until ``old`` has
        delivered what it carries (``on_connection_draining`` says when), so order is
        kept; without, ``old`` may never have reached the peer."""

    def on_connection_draining(self, connection: Connection) -> None:
        """``connection`` was superseded and drains: after each of its packets, until it
        closes once idle."""

    def holds(self, connection: Connection) -> bool:
        """Whether this service has work on ``connection`` that cannot move to another
        connection with the peer (an open stream): a superseded connection stays open,
        and is kept alive, until no service holds it. Asked after each of its packets
        while it drains."""
        return False

    def awaits(self, connection: Connection) -> bool:
        """Whether this service waits for more from the peer on ``connection`` (a message
        arriving in parts, a stream not yet ended). Asked once the peer has been silent
        for a while after sending it frames: if one does, a PING shows the peer this
        node's current address, in case it moved."""
        return False

    def on_path_changed(self, connection: Connection, now: float) -> None:
        """The connection moved to another path (a relay to a direct one, say); what it
        carries goes on, on the new path."""

    def on_path_failing(self, connection: Connection, now: float) -> None:
        """The connection's direct path went silent with packets in flight."""

    def on_timer(self, now: float, key: object = None) -> None:
        """This service's deadline named ``key`` passed."""

    def close(self, now: float) -> None:
        """The node is closing."""
