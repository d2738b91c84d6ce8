"""The stream service: byte streams between peers, on the connection they already share.

Theory of operation
-------------------
Each connection that carries streams gets a ``ConnectionStreams``: the connection's
``StreamManager`` (ids, limits, flow control, reassembly; see ``shoal.core.streams``) and
the flow that fills the connection's packets from it, next to the messages' flow, under
the same congestion window. The stream frames (0x40-0x49) are read in place as packets
arrive; what they change is settled once the packet is taken in, as ``ServiceEvent``s of
this service, each naming a stream by its *handle*:

- ``accepted`` (data: ``(handle, channel)``): a peer opened a stream on a channel this
  node serves streams on;
- ``readable``: bytes, or the end, can be read; ``writable``: a writer that found the
  buffer full may write again; ``drained``: everything written (and the end, once
  closed) was acknowledged;
- ``reset`` / ``stopped`` (data: ``(handle, code)``): the peer abandoned its side, or
  will not read this side any more; ``failed`` (data: ``(handle, reason)``): the
  connection ended under the stream; ``closed``: both sides are done, the handle is gone.

A stream's first bytes name its channel: ``varint length | UTF-8 name``. A node serves
streams on the channels it asks for (``serve``); a stream on any other channel is stopped
and reset at once with ``REFUSED``, which the opener hears as ``ENOPROTOOPT``. The
application reaches the service with ``Node.call("streams", op, ...)``; ``shoal.Node``
wraps that in asyncio streams (``Node.open_stream``, ``Channel.streams``).

Bad input: a peer that breaks a stream rule (flow control, final size, stream limits,
ids) has its connection closed with a protocol error; one that names no channel, or a
name longer than ``MAX_CHANNEL_NAME``, only loses that stream (counted).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from typing import TYPE_CHECKING, Any

from shoal.core.services.base import Service
from shoal.core.streams import frames as stream_frames
from shoal.core.streams.flow import write_frames
from shoal.core.streams.frames import StreamsFrame
from shoal.core.streams.manager import (
    Stream,
    StreamClosed,
    StreamConfig,
    StreamManager,
    StreamOpened,
    StreamReadable,
    StreamReset,
    StreamsAvailable,
    StreamStopped,
    StreamWritable,
)
from shoal.core.streams.state import RecvState
from shoal.core.wire import MAX_CHANNEL_NAME, FrameType, decode_varint, encode_varint
from shoal.errors import DeliveryError, LocalProtocolError, RemoteProtocolError

if TYPE_CHECKING:
    from shoal.core.connection import Connection
    from shoal.core.frames import Reader

REFUSED = 1
"""Error code of a stream on a channel the receiver does not serve."""
INVALID_HEADER = 2
"""Error code of a stream whose first bytes name no channel."""
_RECEIVING = (RecvState.RECV, RecvState.SIZE_KNOWN)
_OWNED = tuple(code for code in stream_frames.DECODERS if code != FrameType.DATAGRAM)


class Handle:
    """What the service keeps for one stream the application can reach."""

    __slots__ = ("number", "owner", "stream", "channel", "head", "announced", "drain",
                 "leftover")

    def __init__(self, number: int, owner: ConnectionStreams, stream: Stream,
                 channel: str | None) -> None:
        self.number = number
        self.owner = owner
        self.stream = stream
        self.channel = channel
        self.head = bytearray()
        """The first bytes of a peer's stream, until they name its channel."""
        self.announced = channel is not None
        self.drain = False
        """The application waits for everything written to be acknowledged."""
        self.leftover = b""
        """Bytes read along with the channel's name, for the application's first read."""


class ConnectionStreams:
    """One connection's streams: its manager, the flow (over the manager) that the
    connection's packet scheduler fills, and the handles of its streams. A packet's
    record is the list of frames the manager put in it."""

    __slots__ = ("service", "connection", "manager", "handles", "queued")

    def __init__(self, service: StreamService, connection: Connection,
                 config: StreamConfig) -> None:
        self.service = service
        self.connection = connection
        self.manager = StreamManager(initiator=connection.initiator, config=config)
        self.handles: dict[int, Handle] = {}
        """By stream id."""
        self.queued = False

    # The connection's packet scheduler sees this object as a flow.

    def has_data(self) -> bool:
        return self.manager.wants_send

    def fill(self, parts: list[bytes | memoryview], budget: int,
             ) -> tuple[int, list[StreamsFrame] | None]:
        frames = self.manager.fill(budget)  # nothing, cheaply, when it has nothing
        if not frames:
            return budget, None
        return budget - write_frames(parts, frames), frames

    def on_acked(self, record: list[StreamsFrame]) -> None:
        on_acked = self.manager.on_acked
        for frame in record:
            on_acked(frame)
        if not self.queued:
            self.touch()

    def on_lost(self, record: list[StreamsFrame]) -> None:
        on_lost = self.manager.on_lost
        for frame in record:
            on_lost(frame)

    def touch(self) -> None:
        """Settle this connection's stream events once the current input is taken in."""
        if not self.queued:
            self.queued = True
            self.connection.unsettled.append(self)

    def settle(self) -> None:
        self.queued = False
        self.service.settle(self)


class StreamService(Service):
    """Streams on every connection (see the module docstring)."""

    name = "streams"
    frame_types = _OWNED
    frame_decoders = {code: stream_frames.DECODERS[code] for code in _OWNED}

    def __init__(self, config: StreamConfig | None = None) -> None:
        self.stream_config = config
        self.served: set[str] = set()
        self.handles: dict[int, Handle] = {}
        self._calls: dict[str, Callable[..., Any]] = {
            "open": self.open, "write": self.write, "read": self.read,
            "close": self.close_stream, "reset": self.reset_stream, "stop": self.stop_stream,
            "drain": self.want_drain,
            "info": self.info, "serve": self.serve, "unserve": self.unserve,
        }

    @property
    def _config(self) -> StreamConfig:
        if self.stream_config is None:
            options = self.ctx.options
            known = {f.name for f in fields(StreamConfig)}
            self.stream_config = StreamConfig(**{k: v for k, v in options.items()
                                                 if k in known})
        return self.stream_config

    def streams_of(self, connection: Connection) -> ConnectionStreams:
        """The connection's streams, made when first needed."""
        state = connection.state.get(self.name)
        if state is None:
            state = connection.state[self.name] = ConnectionStreams(self, connection,
                                                                    self._config)
            connection.add_flow(state)
            self.ctx.wake(connection)
        return state

    # ---------------------------------------------------------------- frames in

    def frame_reader(self, code: int) -> Reader | None:
        decode = stream_frames.DECODERS[code]

        def read(connection: Connection, payload: bytes, pos: int, now: float) -> int:
            frame, pos = decode(payload, pos)
            state = connection.state.get("streams") or self.streams_of(connection)
            manager = state.manager
            manager.receive(frame)
            if manager.events:
                state.touch()
            if manager.wants_send:
                self.ctx.wake(connection)
            return pos

        return read

    def settle(self, state: ConnectionStreams) -> None:
        """Turn the manager's events into the application's."""
        manager = state.manager
        peer = state.connection.peer
        for event in manager.pop_events():
            kind = type(event)
            if kind is StreamOpened:
                self._opened(state, manager.streams[event.stream_id])
                continue
            if kind is StreamsAvailable:
                self.ctx.event("available", peer=peer)
                continue
            handle = state.handles.get(event.stream_id)  # type: ignore[union-attr]
            if handle is None:
                continue
            if kind is StreamReadable:
                if not handle.announced:
                    self._read_head(handle)
                else:
                    self.ctx.event("readable", handle.number, peer=peer)
            elif kind is StreamWritable:
                self.ctx.event("writable", handle.number, peer=peer)
            elif kind is StreamReset and handle.announced:
                self.ctx.event("reset", (handle.number, event.error_code),  # type: ignore[union-attr]
                               peer=peer)
            elif kind is StreamReset:
                # Abandoned before it named its channel: no application will ever read
                # it, so this side ends it, or it would hold one of the peer's streams.
                handle.stream.read()
                handle.stream.reset(event.error_code)  # type: ignore[union-attr]
                handle.owner.touch()
            elif kind is StreamStopped:
                self.ctx.event("stopped", (handle.number, event.error_code), peer=peer)  # type: ignore[union-attr]
            elif kind is StreamClosed:
                self._forget(handle)
                if handle.announced:
                    self.ctx.event("closed", handle.number, peer=peer)
        for handle in state.handles.values():
            if handle.drain and self._drained(handle):
                handle.drain = False
                self.ctx.event("drained", handle.number, peer=peer)
        if manager.wants_send:
            self.ctx.wake(state.connection)

    def _opened(self, state: ConnectionStreams, stream: Stream) -> None:
        handle = Handle(self.ctx.new_handle(), state, stream, None)
        state.handles[stream.stream_id] = handle
        self.handles[handle.number] = handle

    def _read_head(self, handle: Handle) -> None:
        """Read a peer's stream's first bytes until they name its channel."""
        stream = handle.stream
        handle.head += stream.read(MAX_CHANNEL_NAME + 2 - len(handle.head))
        stream.notify_readable = True  # until the name is complete, every arrival counts
        try:
            size, pos = decode_varint(bytes(handle.head), 0)
        except RemoteProtocolError:
            if stream.recv.at_eof:
                self._refuse(handle, INVALID_HEADER)
            return
        if size > MAX_CHANNEL_NAME:
            self._refuse(handle, INVALID_HEADER)
            return
        if len(handle.head) < pos + size:
            if stream.recv.at_eof:
                self._refuse(handle, INVALID_HEADER)
            return
        try:
            channel = bytes(handle.head[pos : pos + size]).decode()
        except UnicodeDecodeError:
            self._refuse(handle, INVALID_HEADER)
            return
        if channel not in self.served:
            self._refuse(handle, REFUSED)
            return
        handle.leftover = bytes(handle.head[pos + size :])
        handle.head = bytearray()
        handle.channel = channel
        handle.announced = True
        self.ctx.event("accepted", (handle.number, channel), peer=handle.owner.connection.peer)
        if handle.leftover or stream.recv.readable or stream.recv.at_eof:
            self.ctx.event("readable", handle.number, peer=handle.owner.connection.peer)

    def _refuse(self, handle: Handle, code: int) -> None:
        self.ctx.stats["streams_refused" if code == REFUSED else "streams_invalid"] += 1
        handle.stream.stop(code)
        handle.stream.reset(code)
        self.ctx.wake(handle.owner.connection)

    def _forget(self, handle: Handle) -> None:
        handle.owner.handles.pop(handle.stream.stream_id, None)
        self.handles.pop(handle.number, None)

    @staticmethod
    def _drained(handle: Handle) -> bool:
        send = handle.stream.send
        return send.buffered == 0 and (not send.fin_wanted or send.fin_acked)

    def holds(self, connection: Connection) -> bool:
        """A stream lives on the connection it was opened on (its ids and windows are
        that connection's): a superseded connection stays while it has open streams;
        new ones open on the peer's current connection."""
        state = connection.state.get(self.name)
        return bool(state is not None and state.handles)

    def awaits(self, connection: Connection) -> bool:
        """A stream on ``connection`` has not received its end yet."""
        state = connection.state.get(self.name)
        return state is not None and any(
            handle.stream.recv.state in _RECEIVING for handle in state.handles.values())

    def on_connection_down(self, connection: Connection, reason: str, now: float) -> None:
        state = connection.state.get(self.name)
        if state is None:
            return
        for handle in list(state.handles.values()):
            self._forget(handle)
            if handle.announced:
                self.ctx.event("failed", (handle.number, reason), peer=connection.peer)
        state.handles.clear()

    # ---------------------------------------------------------------- the application

    def call(self, now: float, op: str, *args: Any, **kwargs: Any) -> Any:
        """``op`` is one of: open, write, read, close, reset, stop, drain, info, serve,
        unserve (see each method)."""
        method = self._calls.get(op)
        if method is None:
            raise LocalProtocolError(f"the stream service has no operation {op!r}")
        return method(*args, **kwargs)

    def serve(self, channel: str) -> None:
        """Accept peers' streams on ``channel``."""
        self.served.add(channel)

    def unserve(self, channel: str) -> None:
        self.served.discard(channel)

    def open(self, peer_id: str, channel: str = "") -> int:
        """Open a stream to ``peer_id`` on ``channel``, on the connection to it; returns
        the stream's handle. ``EHOSTUNREACH`` without a connection, ``EAGAIN`` when the
        peer allows no more streams now (an ``available`` event follows)."""
        raw = channel.encode()
        if len(raw) > MAX_CHANNEL_NAME:
            raise LocalProtocolError("a channel name is at most 255 bytes of UTF-8")
        try:
            peer = bytes.fromhex(peer_id)
        except ValueError:
            raise LocalProtocolError(f"not a peer id: {peer_id!r}") from None
        connection = self.ctx.connection_to(peer)
        if connection is None:
            raise DeliveryError(f"no connection to {peer_id}", code="EHOSTUNREACH")
        state = self.streams_of(connection)
        stream = state.manager.open()
        stream.write(encode_varint(len(raw)) + raw)
        handle = Handle(self.ctx.new_handle(), state, stream, channel)
        state.handles[stream.stream_id] = handle
        self.handles[handle.number] = handle
        self.ctx.wake(connection)
        return handle.number

    def _handle(self, number: int) -> Handle:
        handle = self.handles.get(number)
        if handle is None:
            raise LocalProtocolError(f"no stream with handle {number}", code="EBADF")
        return handle

    def write(self, number: int, data: bytes | bytearray | memoryview) -> int:
        """Buffer what fits of ``data``; returns the bytes taken (0: wait for
        ``writable``)."""
        handle = self._handle(number)
        taken = handle.stream.write(data)
        if taken:
            self.ctx.wake(handle.owner.connection)
        return taken

    def read(self, number: int, size: int = -1) -> bytes | None:
        """Up to ``size`` bytes (all ready if negative): b"" if none is ready yet (wait
        for ``readable``), None at the end. ``ECONNRESET`` if the peer reset it."""
        handle = self._handle(number)
        if handle.leftover:
            data = handle.leftover if size < 0 else handle.leftover[:size]
            handle.leftover = handle.leftover[len(data) :]
            return data
        stream = handle.stream
        recv = stream.recv
        if recv.reset_code is not None:
            stream.read()  # the application heard of it
            self._wake_for(handle)
            raise DeliveryError(f"the peer reset the stream (code {recv.reset_code})",
                                code="ECONNRESET")
        data = stream.read(size)
        self._wake_for(handle)
        if not data and recv.at_eof:
            return None
        return data

    def _wake_for(self, handle: Handle) -> None:
        if handle.owner.manager.wants_send:
            self.ctx.wake(handle.owner.connection)
        if handle.stream.done:
            handle.owner.touch()

    def close_stream(self, number: int) -> None:
        """No more bytes: the end follows the last one written."""
        handle = self._handle(number)
        handle.stream.close()
        self.ctx.wake(handle.owner.connection)

    def reset_stream(self, number: int, code: int = 0) -> None:
        """Abandon the sending side: what was written and not yet read may be lost."""
        handle = self._handle(number)
        handle.stream.reset(code)
        self.ctx.wake(handle.owner.connection)

    def stop_stream(self, number: int, code: int = 0) -> None:
        """Read no more: the peer is asked to stop sending."""
        handle = self._handle(number)
        handle.stream.stop(code)
        self.ctx.wake(handle.owner.connection)

    def want_drain(self, number: int) -> bool:
        """Whether everything written (and the end, once closed) was acknowledged; if
        not, a ``drained`` event follows when it is."""
        handle = self._handle(number)
        if self._drained(handle):
            return True
        handle.drain = True
        return False

    def info(self, number: int) -> dict[str, Any]:
        """The stream's id, channel, buffered bytes and sides' states."""
        handle = self._handle(number)
        stream = handle.stream
        return {"stream_id": stream.stream_id, "channel": handle.channel,
                "peer_id": handle.owner.connection.peer_id,
                "send": stream.send.state.value, "recv": stream.recv.state.value,
                "buffered": stream.send.buffered, "writable": stream.send.writable,
                "readable": len(handle.leftover) + stream.recv.readable}
