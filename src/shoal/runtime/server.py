"""A small HTTP/1.1 and WebSocket server for the app's loopback connections.

HTTP parsing is ``h11``'s and WebSocket framing is the sans-IO protocol of
``websockets``; this module only joins them to an asyncio transport. It exists because
the app server needs a handful of routes, one WebSocket and fast file bodies, and a web
framework would cost the window process more memory and each bridge call more hops.

The owner gives ``LoopbackServer`` one synchronous ``handle(request)`` that returns a
``Response`` (a body, or a file, sent with ``sendfile`` where the loop can) or a
``WebSocketAccept`` whose session then receives every message of that WebSocket.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Protocol, cast
from urllib.parse import parse_qsl, unquote, urlsplit

import h11
from websockets.datastructures import Headers
from websockets.frames import CloseCode, Opcode
from websockets.http11 import Request as HandshakeRequest
from websockets.protocol import State
from websockets.server import ServerProtocol

MAX_REQUEST_HEAD = 16 << 10
MAX_REQUEST_BODY = 64 << 10
MAX_CONNECTIONS = 256
"""Open TCP connections at most; past that the one heard from longest ago that is not an
open WebSocket or sending a file is closed to make room (a page's own connections are
busy, an attacker's idle ones are not)."""
FILE_CHUNK = 1 << 20
UNSATISFIABLE = (-1, -1)
_REASONS = {200: "OK", 204: "No Content", 206: "Partial Content", 400: "Bad Request",
            403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
            413: "Payload Too Large", 416: "Range Not Satisfiable",
            500: "Internal Server Error", 503: "Service Unavailable"}


@dataclass(frozen=True, slots=True)
class Request:
    """One HTTP request; header names are lower case."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes = b""
    """What a POST carried (up to ``MAX_REQUEST_BODY``)."""
    target: str = ""
    """The request target as sent (path and query, undecoded)."""


@dataclass(slots=True)
class Response:
    """A response with ``body``, or with the bytes of ``file`` (ranges honoured): a path,
    or a file already open for reading, which the server closes once sent."""

    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    file: Path | BinaryIO | None = None

    @classmethod
    def text(cls, status: int, text: str) -> Response:
        return cls(status, text.encode(), {"Content-Type": "text/plain; charset=utf-8"})


class WebSocketSession(Protocol):
    """What receives the messages of one accepted WebSocket."""

    def message(self, data: bytes | str) -> None:
        """A whole message: ``str`` for a text message, ``bytes`` for a binary one."""

    def closed(self) -> None:
        """The WebSocket is gone; nothing more arrives."""


@dataclass(slots=True)
class WebSocketAccept:
    """Accept the request's WebSocket upgrade; ``session`` is made once it is open."""

    session: Callable[[WebSocket], WebSocketSession]
    max_message: int = 1 << 20
    subprotocols: Sequence[str] | None = None
    """Subprotocols this WebSocket speaks; the first the client offers of them is chosen."""


class WebSocket:
    """The server's end of one open WebSocket."""

    def __init__(self, connection: _Connection, protocol: ServerProtocol) -> None:
        self._connection = connection
        self._protocol = protocol

    @property
    def closed(self) -> bool:
        return self._protocol.state is not State.OPEN or self._connection.lost

    def send_text(self, text: str) -> None:
        if not self.closed:
            self._protocol.send_text(text.encode())
            self._connection.flush_websocket()

    def send_bytes(self, data: bytes | bytearray | memoryview) -> None:
        if not self.closed:
            self._protocol.send_binary(data)
            self._connection.flush_websocket()

    @property
    def writable(self) -> bool:
        """False while the socket's send buffer is over its high-water mark."""
        return not self._connection.write_paused

    async def drain(self) -> None:
        """Wait while the socket's send buffer is over its high-water mark."""
        await self._connection.drain()

    def pause_reading(self) -> None:
        self._connection.pause_reading()

    def resume_reading(self) -> None:
        self._connection.resume_reading()

    def close(self) -> None:
        if not self.closed:
            self._protocol.send_close()
            self._connection.flush_websocket()


Answer = Response | WebSocketAccept
Handle = Callable[[Request], "Answer | Awaitable[Answer]"]


class LoopbackServer:
    """Serves ``handle`` on an already bound, listening socket."""

    idle_timeout = 75.0
    """Seconds an HTTP connection may stay silent between requests (not a WebSocket)."""
    max_connections = MAX_CONNECTIONS

    def __init__(self, handle: Handle, *, headers: dict[str, str] | None = None,
                 post_paths: frozenset[str] = frozenset()) -> None:
        """``headers`` go on every response, the server's own errors included; a
        response's own header of the same name takes their place. ``post_paths``: the
        only paths a POST reaches ``handle`` at (with its body)."""
        self.handle = handle
        self.headers = headers if headers is not None else {}
        self.post_paths = post_paths
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()

    async def start(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Connection(self), sock=listener)

    def make_room(self, newcomer: _Connection) -> None:
        """Close connections over ``max_connections``: the quietest HTTP ones first, and
        the newcomer itself when every other one is busy."""
        excess = len(self._connections) - self.max_connections
        if excess <= 0:
            return
        idle = sorted((c for c in self._connections if c is not newcomer and c.evictable),
                      key=lambda c: c.heard)
        for connection in [*idle, newcomer][:excess]:
            connection.abort()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for connection in list(self._connections):
            connection.abort()
        if self._server is not None:
            await self._server.wait_closed()


class _Connection(asyncio.Protocol):
    """One TCP connection: HTTP requests in turn, until it becomes a WebSocket."""

    def __init__(self, server: LoopbackServer) -> None:
        self._server = server
        self._transport: asyncio.Transport | None = None
        self._http = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_HEAD)
        self._request: h11.Request | None = None
        self._body: list[bytes] = []
        self._body_size = 0
        self._busy = False
        """An answer is on its way: a file being sent, or one the owner still works out."""
        self._websocket: ServerProtocol | None = None
        self._session: WebSocketSession | None = None
        self._fragments: list[bytes] = []
        self._fragment_text = False
        self._writable: asyncio.Future[None] | None = None
        self._held_by_owner = False
        self._reading_paused = False
        self._peer_done = False
        self.heard = 0.0
        self.lost = False

    @property
    def evictable(self) -> bool:
        return self._websocket is None and not self._busy and not self.lost

    # ------------------------------------------------------------------ transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._server._connections.add(self)
        self.heard = asyncio.get_running_loop().time()
        self._server.make_room(self)
        self._watch_idle()

    def data_received(self, data: bytes) -> None:
        if self._websocket is not None:
            self._websocket_received(data)
            return
        self.heard = asyncio.get_running_loop().time()
        self._http.receive_data(data)
        self._next_requests()

    def _watch_idle(self) -> None:
        """Close an HTTP connection silent for ``idle_timeout`` while no answer is going
        out; a WebSocket stays open as long as its peer wants."""
        if self.lost or self._websocket is not None:
            return
        loop = asyncio.get_running_loop()
        quiet_until = self.heard + self._server.idle_timeout
        if loop.time() >= quiet_until and not self._busy:
            assert self._transport is not None
            self._transport.close()
            return
        loop.call_at(max(quiet_until, loop.time() + 0.05), self._watch_idle)

    def eof_received(self) -> bool:
        if self._websocket is not None:
            self._websocket.receive_eof()
            self.flush_websocket()
            return False
        # The peer is done sending; a file still on its way goes out first.
        self._peer_done = True
        return self._busy

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._server._connections.discard(self)
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        if self._session is not None:
            session, self._session = self._session, None
            session.closed()

    def pause_writing(self) -> None:
        self._writable = asyncio.get_running_loop().create_future()
        self._update_reading()

    def resume_writing(self) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        self._writable = None
        self._update_reading()
        if self._websocket is None:
            asyncio.get_running_loop().call_soon(self._next_requests)

    @property
    def write_paused(self) -> bool:
        return self._writable is not None and not self.lost

    async def drain(self) -> None:
        if self._writable is not None:
            await self._writable

    def pause_reading(self) -> None:
        """The owner of a WebSocket has enough to do: read nothing more for now."""
        self._held_by_owner = True
        self._update_reading()

    def resume_reading(self) -> None:
        self._held_by_owner = False
        self._update_reading()

    def _update_reading(self) -> None:
        """Read only while what is read can be answered: a peer that does not read what
        it is sent, or floods requests, waits in its own socket buffers, not in ours."""
        if self._transport is None or self.lost:
            return
        hold = (self._writable is not None or self._held_by_owner
                or (self._websocket is None and self._busy))
        if hold and not self._reading_paused:
            self._reading_paused = True
            self._transport.pause_reading()
        elif not hold and self._reading_paused:
            self._reading_paused = False
            self._transport.resume_reading()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def _write(self, data: bytes) -> None:
        assert self._transport is not None
        if data and not self.lost:
            self._transport.write(data)

    # ------------------------------------------------------------------ HTTP

    def _next_requests(self) -> None:
        while (not self._busy and self._websocket is None and not self.lost
               and self._writable is None):
            try:
                event = self._http.next_event()
            except h11.RemoteProtocolError:
                self._fail(400, "bad request\n")
                return
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            if isinstance(event, h11.Request):
                self._request, self._body_size, self._body = event, 0, []
            elif isinstance(event, h11.Data):
                self._body_size += len(event.data)
                if self._body_size > MAX_REQUEST_BODY:
                    self._fail(413, "request body too large\n")
                    return
                self._body.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                assert self._request is not None
                body, self._body = b"".join(self._body), []
                self._respond(self._request, body)
            elif isinstance(event, h11.ConnectionClosed):
                self.abort()
                return

    def _respond(self, raw: h11.Request, body: bytes) -> None:
        request = _request(raw, body)
        if request.method not in ("GET", "HEAD", "OPTIONS") and not (
                request.method == "POST" and request.path in self._server.post_paths):
            self._send(request, Response.text(405, "method not allowed\n"))
            return
        if "\x00" in request.path:
            self._send(request, Response.text(400, "bad request\n"))
            return
        try:
            answer = self._server.handle(request)
        except Exception:  # a bug behind one request must not take the server down
            answer = Response.text(500, "internal error\n")
        if inspect.isawaitable(answer):
            self._busy = True
            self._update_reading()
            asyncio.get_running_loop().create_task(self._answer_later(request, answer))
            return
        self._answer(request, answer)

    async def _answer_later(self, request: Request, pending: Awaitable[Answer]) -> None:
        try:
            answer = await pending
        except Exception:
            answer = Response.text(500, "internal error\n")
        self._busy = False
        if self.lost:
            return
        self._update_reading()
        self._answer(request, answer)
        if self._websocket is None:
            asyncio.get_running_loop().call_soon(self._next_requests)

    def _answer(self, request: Request, answer: Answer) -> None:
        if isinstance(answer, WebSocketAccept):
            self._upgrade(request, answer)
        else:
            self._send(request, answer)

    def _send(self, request: Request, response: Response) -> None:
        span = None
        if response.file is not None:
            response, span = _file_part(request, response)
        length = span[1] - span[0] if span is not None else len(response.body)
        headers = {**self._server.headers, **response.headers, "Content-Length": str(length)}
        self._write(self._http.send(h11.Response(
            status_code=response.status, reason=_REASONS.get(response.status, ""),
            headers=list(headers.items()))) or b"")
        if request.method == "HEAD" or length == 0:
            if response.file is not None:
                _close(response.file)
            self._end_of_response()
        elif span is not None and response.file is not None:
            self._busy = True
            self._update_reading()
            asyncio.get_running_loop().create_task(self._send_file(response.file, *span))
            return
        else:
            self._write(self._http.send(h11.Data(data=response.body)) or b"")
            self._end_of_response()

    async def _send_file(self, source: Path | BinaryIO, start: int, end: int) -> None:
        assert self._transport is not None
        loop = asyncio.get_running_loop()
        sent = 0
        try:
            with source if not isinstance(source, Path) else open(source, "rb") as file:
                try:  # zero-copy where the loop can (asyncio's own, on most systems)
                    sent = await loop.sendfile(self._transport, file, start, end - start)
                except NotImplementedError:
                    sent = await self._copy_file(file, start, end)
        except (OSError, RuntimeError):  # the peer left, or the transport closed under it
            pass
        if sent != end - start or self.lost:  # the file changed or the peer left
            self.abort()
            return
        self._http.send_with_data_passthrough(h11.Data(data=_Length(sent)))
        self._busy = False
        self._update_reading()
        self._end_of_response()

    async def _copy_file(self, file: BinaryIO, start: int, end: int) -> int:
        loop = asyncio.get_running_loop()
        file.seek(start)
        sent = 0
        while sent < end - start and not self.lost:
            chunk = await loop.run_in_executor(None, file.read, min(FILE_CHUNK, end - start - sent))
            if not chunk:
                break
            self._write(chunk)
            sent += len(chunk)
            await self.drain()
        return sent

    def _end_of_response(self) -> None:
        self._write(self._http.send(h11.EndOfMessage()) or b"")
        if self._http.our_state is h11.MUST_CLOSE or self._peer_done:
            assert self._transport is not None
            self._transport.close()
            return
        if self._http.our_state is h11.DONE and self._http.their_state is h11.DONE:
            self._http.start_next_cycle()
        asyncio.get_running_loop().call_soon(self._next_requests)

    def _fail(self, status: int, text: str) -> None:
        if self._http.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            body = text.encode()
            with contextlib.suppress(h11.LocalProtocolError):
                self._write(self._http.send(h11.Response(
                    status_code=status, reason=_REASONS.get(status, ""),
                    headers=[*self._server.headers.items(),
                             ("Content-Length", str(len(body))), ("Connection", "close"),
                             ("Content-Type", "text/plain; charset=utf-8")])) or b"")
                self._write(self._http.send(h11.Data(data=body)) or b"")
        assert self._transport is not None
        self._transport.close()

    # ------------------------------------------------------------------ WebSocket

    def _upgrade(self, request: Request, accept: WebSocketAccept) -> None:
        handshake = ServerProtocol(subprotocols=cast(Any, accept.subprotocols))
        reply = handshake.accept(HandshakeRequest(request.path, Headers(request.headers)))
        if reply.status_code != 101:
            self._send(request, Response(reply.status_code, bytes(reply.body),
                                         {"Content-Type": "text/plain; charset=utf-8"}))
            return
        self._write(reply.serialize())
        trailing, _ = self._http.trailing_data
        self._websocket = ServerProtocol(state=State.OPEN, max_size=accept.max_message)
        self._session = accept.session(WebSocket(self, self._websocket))
        if trailing:
            self._websocket_received(bytes(trailing))

    def _websocket_received(self, data: bytes) -> None:
        protocol = self._websocket
        assert protocol is not None
        protocol.receive_data(data)
        for frame in protocol.events_received():
            opcode = frame.opcode
            if opcode is Opcode.TEXT or opcode is Opcode.BINARY:
                if frame.fin:
                    self._deliver(protocol, frame.data, opcode is Opcode.TEXT)
                else:
                    self._fragments = [frame.data]
                    self._fragment_text = opcode is Opcode.TEXT
            elif opcode is Opcode.CONT:
                self._fragments.append(frame.data)
                if frame.fin:
                    whole, self._fragments = b"".join(self._fragments), []
                    self._deliver(protocol, whole, self._fragment_text)
        self.flush_websocket()

    def _deliver(self, protocol: ServerProtocol, data: bytes, text: bool) -> None:
        if self._session is None or protocol.state is not State.OPEN:
            return
        if not text:
            self._session.message(data)
            return
        try:
            decoded = data.decode()
        except UnicodeDecodeError:
            protocol.fail(CloseCode.INVALID_DATA, "a text message must be UTF-8")
            return
        self._session.message(decoded)

    def flush_websocket(self) -> None:
        assert self._websocket is not None and self._transport is not None
        for chunk in self._websocket.data_to_send():
            if chunk:
                self._write(chunk)
            else:  # the closing handshake is over: the server closes TCP first
                self._transport.close()


class _Length:
    """Stands for a body written past h11, so that h11 still counts its bytes."""

    def __init__(self, size: int) -> None:
        self._size = size

    def __len__(self) -> int:
        return self._size


def _request(raw: h11.Request, body: bytes) -> Request:
    target = urlsplit(raw.target.decode("latin-1"))
    headers: dict[str, str] = {}
    for name, value in raw.headers:
        key = name.decode("latin-1")
        text = value.decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    return Request(method=raw.method.decode("latin-1"), path=unquote(target.path),
                   query=dict(parse_qsl(target.query)), headers=headers, body=body,
                   target=raw.target.decode("latin-1"))


def _file_part(request: Request, response: Response) -> tuple[Response, tuple[int, int] | None]:
    """The response to send for ``response.file``, and the bytes ``[start, end)`` of the
    file that follow it (None when none do)."""
    assert response.file is not None
    try:
        if isinstance(response.file, Path):
            size = os.stat(response.file).st_size
        else:
            size = os.fstat(response.file.fileno()).st_size
    except OSError:
        _close(response.file)
        return Response(404, b"not found\n", {**response.headers,
                                              "Content-Type": "text/plain; charset=utf-8"}), None
    headers = {**response.headers, "Accept-Ranges": "bytes"}
    span = _range(request.headers.get("range"), size)
    if span is None:
        return Response(response.status, headers=headers, file=response.file), (0, size)
    if span == UNSATISFIABLE:
        _close(response.file)
        return Response(416, headers={**headers, "Content-Range": f"bytes */{size}"}), None
    headers["Content-Range"] = f"bytes {span[0]}-{span[1] - 1}/{size}"
    return Response(206, headers=headers, file=response.file), span


def _close(file: Path | BinaryIO) -> None:
    if not isinstance(file, Path):
        file.close()


def _range(header: str | None, size: int) -> tuple[int, int] | None:
    """The byte span ``[start, end)`` one ``Range`` header asks for: None for the whole
    file (no header, or one this server does not serve), or ``UNSATISFIABLE``."""
    if not header or not header.startswith("bytes=") or "," in header:
        return None
    first, _, last = header[6:].strip().partition("-")
    try:
        if not first:
            suffix = int(last)
            return (max(size - suffix, 0), size) if suffix > 0 and size else UNSATISFIABLE
        start = int(first)
        end = int(last) + 1 if last else size
    except ValueError:
        return None
    if start >= size or end <= start:
        return UNSATISFIABLE
    return start, min(end, size)

