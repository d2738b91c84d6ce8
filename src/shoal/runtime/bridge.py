"""The app server: the app's files under a strict CSP, and the page's bridge to Python.

Theory of operation
-------------------
One loopback server (``server.py``) on 127.0.0.1 serves the app folder and
``/_shoal/api.js``. Every response carries a Content-Security-Policy without ``'unsafe-eval'`` or
``'unsafe-inline'`` whose ``connect-src`` is the app's own files and the bridge; HTML
responses get an import map (``"shoal:api"`` -> ``/_shoal/api.js``), and their policy
allows by hash the import map and the inline code the page's file holds, nothing added
later. What the policy refuses, the browser reports to ``REPORT_PATH``.

The bridge is a WebSocket at ``/_shoal/bridge``. A request is refused (403, no side
effect) unless its ``Host`` is exactly this server's ``HOST:PORT`` (DNS rebinding; HOST is
``127.0.0.1``, or in a browser the app's own name, see ``origins``),
its ``Origin`` is exactly the app's origin (other pages in a browser), and it carries the
per-launch secret (other local processes). The secret travels only in the URL fragment
handed to the window, which is never sent over HTTP; ``api.js`` moves it to
``sessionStorage``. Every request except the WebSocket upgrade also needs the right
``Host``.

Messages: the page sends ``{"id", "call", "args"}`` as text, or, when an argument is
binary, a binary frame ``id u32 | header length u32 | header JSON | bytes`` where the
header's ``"binary"`` names the argument the bytes replace. Answers are
``{"id", "ok"}`` / ``{"id", "error": {"code", "message"}}``, or a binary frame
``id u32 | bytes`` for a binary result. Events are ``{"event", "data"}``.
"""

from __future__ import annotations

import asyncio
import collections
import hmac
import json
import secrets
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, BinaryIO
from urllib.parse import quote, urlencode

from shoal.errors import ShoalError
from shoal.net import bind_listener
from shoal.runtime.config import AppConfig
from shoal.runtime.devserver import DevServer, nonce, nonce_meta
from shoal.runtime.eager import start_eagerly
from shoal.runtime.fsapi import BridgeError, FramedBytes
from shoal.runtime.pages import (
    API_PATH,
    BRIDGE_PATH,
    DEV_PATH,
    FILE_PATH,
    LAUNCH_PATH,
    REPORT_PATH,
    TEST_MODULE_PATH,
    TYPES_PATH,
    app_file,
    asset,
    content_security_policy,
    content_type,
    inline_hashes,
    open_app_file,
    page_inline,
    page_text,
    security_headers,
)
from shoal.runtime.refusals import Refusal, Refusals
from shoal.runtime.scope import PageScope, current_page
from shoal.runtime.server import (
    LoopbackServer,
    Request,
    Response,
    WebSocket,
    WebSocketAccept,
)

if TYPE_CHECKING:
    from shoal.runtime.launch import HostPlugin

MAX_CALLS_IN_FLIGHT = 256
MAX_BULK_IN_FLIGHT = 4
"""Calls of one page with large results (file reads) running at once; each holds its
turn until its result has left the socket buffer, so a page that stops reading cannot
make the host hold more than this many results."""
CALLS_PER_TURN = 64
"""Messages of one page handled per turn of the event loop; the rest wait, unread, so
that one page flooding calls cannot starve other connections."""
MAX_CALL_ID = (1 << 32) - 1
FILE_ERROR_TYPE = "application/vnd.shoal.error+json"
"""Content type of a bulk read's answer when the call failed (EPERM, ENOENT, ...)."""
MAX_FRAME = 128 << 20
MAX_HELD_EVENTS = 50
REPORT_TYPES = ("application/csp-report", "application/reports+json")
_U32 = struct.Struct("!I")

Handler = Callable[..., Awaitable[Any]]


class AppServer:
    """Serves one app on 127.0.0.1 and answers its bridge calls with ``calls``."""

    def __init__(self, config: AppConfig, calls: dict[str, Handler], *,
                 port: int = 0, listener: socket.socket | None = None,
                 secret: str | None = None,
                 readable: Callable[[str], BinaryIO] | None = None,
                 page_origin: str | None = None, dev: bool = False,
                 plugins: tuple[HostPlugin, ...] = (),
                 on_refusal: Callable[[Refusal], None] | None = None,
                 dev_server: DevServer | None = None, host: str | None = None) -> None:
        """``readable`` opens a page path for reading (raising ``BridgeError``): bulk
        reads are served over HTTP at ``FILE_PATH``, which moves large files much faster
        than WebSocket frames do. ``page_origin``: the pages' origin when something else
        serves them (the native window's ``shoal://app``); only pages of that origin may
        then open the bridge. ``plugins``: what the launch adds; their pages are
        served under ``/_shoal/``. ``on_refusal``: told each kind of thing the pages'
        policy refused, once. ``dev_server``: serve the pages of this framework dev
        server instead of the app's files. ``host``: the host name of the pages' origin
        (``origins.app_host``; default ``127.0.0.1``), the only ``Host`` answered."""
        self.config = config
        self.plugins = plugins
        self.calls = calls
        self.readable = readable
        self.dev = dev
        self.secret = secret or secrets.token_urlsafe(32)
        self._listener = listener
        self._requested_port = port
        self.host = host or "127.0.0.1"
        self.port = 0
        self._server = LoopbackServer(self._handle, post_paths=frozenset({REPORT_PATH}))
        self.on_refusal = on_refusal
        self.dev_server = dev_server
        self._refusals: Refusals | None = None
        self._held: list[str] = []
        self._sessions: set[_BridgeSession] = set()
        self._page_origin = page_origin
        self._clear_storage = False
        self.refused = 0
        """Requests refused for a wrong Host, Origin or secret (for tests and logs)."""

    @property
    def origin(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def page_origin(self) -> str:
        """The Origin the bridge accepts."""
        return self._page_origin or self.origin

    @property
    def url(self) -> str:
        """What the window opens: the entry page, with the secret in the fragment."""
        return f"{self.origin}/#shoal={self.secret}"

    async def start(self) -> None:
        listener = self._listener or bind_listener(self._requested_port)
        self.port = listener.getsockname()[1]
        self._server.headers = security_headers(
            content_security_policy(self.port, self.config.csp, host=self.host),
            isolated=self.config.cross_origin_isolated)
        if self._page_origin is None:  # the browser keeps this origin's storage
            from shoal.runtime.origins import claim

            self._clear_storage = claim(self.origin, self.config.id)
        self._refusals = Refusals(self.page_origin, self.config.entry)
        await self._server.start(listener)

    async def close(self) -> None:
        for session in list(self._sessions):
            session.close()
        await self._server.close()
        if self.dev_server is not None:
            await self.dev_server.close()

    async def drain(self) -> None:
        """Wait while any page's socket holds more unsent data than its high-water mark."""
        for session in list(self._sessions):
            await session.ws.drain()

    def emit(self, event: str, data: dict[str, Any]) -> None:
        """Send an event to every connected page."""
        text = json.dumps({"event": event, "data": data})
        for session in list(self._sessions):
            session.ws.send_text(text)

    def emit_or_hold(self, event: str, data: dict[str, Any]) -> None:
        """Send an event to every connected page, or, while none is, to the next page that
        connects (what a page caused before its bridge was open, such as a refusal while
        it loaded)."""
        if self._sessions:
            self.emit(event, data)
        elif len(self._held) < MAX_HELD_EVENTS:
            self._held.append(json.dumps({"event": event, "data": data}))

    # ------------------------------------------------------------------ HTTP

    def _handle(self, request: Request) -> Response | WebSocketAccept | Awaitable[Response]:
        if request.headers.get("host") != f"{self.host}:{self.port}":
            if request.headers.get("host") in (f"localhost:{self.port}",
                                               f"127.0.0.1:{self.port}") and \
                    request.method == "GET" and request.path != BRIDGE_PATH:
                # The same server by another name: to the one origin its pages have (the
                # fragment with the launch secret goes along).
                query = f"?{urlencode(request.query)}" if request.query else ""
                return Response(307, b"", {"Location": f"{self.origin}{quote(request.path)}"
                                                       f"{query}"})
            self.refused += 1
            return Response.text(403, "forbidden: wrong Host\n")
        if "service-worker" in request.headers:
            # Browsers mark the fetch of a service worker's script so; refused, no worker
            # can stand between the app's pages and this server, or outlive the app.
            self.refused += 1
            return Response.text(403, "forbidden: service workers are not allowed\n")
        if request.path == BRIDGE_PATH and request.method == "GET":
            return self._bridge(request)
        if request.path == REPORT_PATH:
            return self._refused(request)
        if request.path == FILE_PATH:
            response = (self._file_preflight(request) if request.method == "OPTIONS"
                        else self._read_file(request))
            if self.page_origin != self.origin:
                response.headers["Access-Control-Allow-Origin"] = self.page_origin
                response.headers["Vary"] = "Origin"
        elif request.method == "OPTIONS":
            response = Response.text(405, "method not allowed\n")
        elif request.path == API_PATH:
            response = _script(asset("api.js"))
        elif request.path == LAUNCH_PATH:
            response = _script(asset("launch.js"))
        elif request.path == DEV_PATH and self.dev:
            response = _script(asset("dev.js"))
        elif request.path == TEST_MODULE_PATH:
            response = _script(asset("test.js"))
        elif request.path.startswith("/_shoal/") and (
                page := self._plugin_page(request.path)) is not None:
            response = page
        elif request.path == TYPES_PATH:
            response = Response(body=asset("shoal.d.ts").encode(),
                                headers={"Content-Type": "text/plain; charset=utf-8"})
        elif self.dev_server is not None and not request.path.startswith("/_shoal/"):
            if request.headers.get("upgrade", "").lower() == "websocket":
                return self.dev_server.relay(request)
            return self._from_dev_server(request)
        else:
            response = self._file(request)
        return response

    def _plugin_page(self, path: str) -> Response | None:
        for plugin in self.plugins:
            found = plugin.page(path)
            if found is not None:
                kind, body = found
                return Response(body=body, headers={"Content-Type": kind})
        return None

    async def _from_dev_server(self, request: Request) -> Response:
        """The dev server's answer; a page gets what the app's own pages get, and a
        nonce for the styles the dev server's client adds."""
        assert self.dev_server is not None
        status, headers, body = await self.dev_server.fetch(request)
        if not headers.get("Content-Type", "").startswith("text/html") or not body:
            return Response(status, body, headers)
        html = body.decode("utf-8", errors="replace")
        page_nonce = nonce()
        inline = inline_hashes(html)
        inline["style-src"] = (*inline.get("style-src", ()), f"'nonce-{page_nonce}'")
        policy = content_security_policy(self.port, self.config.csp, inline=inline,
                                         host=self.host)
        page = page_text(html, dev=self.dev, head=nonce_meta(page_nonce))
        return Response(status, page.encode(), {
            "Content-Type": "text/html; charset=utf-8",
            **security_headers(policy, isolated=self.config.cross_origin_isolated)})

    def _file(self, request: Request) -> Response:
        target = app_file(self.config, request.path)
        opened = open_app_file(target) if target is not None else None
        if target is None or opened is None:
            if request.path == "/favicon.ico":  # asked for by every browser: no icon
                return Response(204)
            return Response.text(404, "not found\n")
        kind = content_type(target)
        if kind == "text/html":
            headers = {"Content-Type": "text/html; charset=utf-8"}
            if self._clear_storage and request.headers.get("sec-fetch-dest") == "document":
                # Until this launch's page holds the bridge: what another app left in
                # this origin's storage is gone before the page runs.
                headers["Clear-Site-Data"] = '"cache", "storage"'
            with opened:
                html = opened.read().decode("utf-8", errors="replace")
            policy = content_security_policy(
                self.port, self.config.csp, inline=page_inline(self.config.pages, target, html),
                host=self.host)
            headers.update(security_headers(policy, isolated=self.config.cross_origin_isolated))
            return Response(body=page_text(html, dev=self.dev).encode(), headers=headers)
        return Response(file=opened, headers={"Content-Type": kind})

    def _refused(self, request: Request) -> Response:
        """A report of what the policy refused, sent by the browser: told once per kind."""
        if request.method != "POST":
            return Response.text(405, "method not allowed\n")
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind not in REPORT_TYPES:
            # What a browser sends no page can send without a CORS preflight, which
            # fails here: other sites' pages cannot write in the developer's terminal.
            self.refused += 1
            return Response.text(415, "not a report\n")
        assert self._refusals is not None
        self._tell(self._refusals.read(request.body))
        return Response(204)

    def told_refusal(self, report: dict[str, Any]) -> None:
        """A refusal the window heard of itself (a ``csp-report`` object): told once per
        kind, as a browser's report is."""
        assert self._refusals is not None, "start the server first"
        self._tell(self._refusals.told(report))

    def _tell(self, refusal: Refusal | None) -> None:
        if refusal is not None and self.on_refusal is not None:
            self.on_refusal(refusal)

    def _file_preflight(self, request: Request) -> Response:
        """CORS preflight of a bulk read by a page the window serves itself."""
        if self.page_origin == self.origin or request.headers.get("origin") != self.page_origin:
            self.refused += 1
            return Response.text(403, "forbidden\n")
        return Response(204, headers={
            "Access-Control-Allow-Methods": "GET",
            "Access-Control-Allow-Headers": "X-Shoal-Secret",
            "Access-Control-Max-Age": "600",
        })

    def _read_file(self, request: Request) -> Response:
        """A file for ``fs.readFile``: same checks as the bridge, the secret in a header
        (a foreign page cannot send one without a CORS preflight, which fails here)."""
        offered = request.headers.get("x-shoal-secret", "")
        origin = request.headers.get("origin")
        site = request.headers.get("sec-fetch-site")
        # A page served by the window's own scheme reads cross-site, with its Origin.
        sites = ("same-origin",) if self.page_origin == self.origin else ("cross-site",)
        if (origin not in (None, self.page_origin) or site not in (None, *sites)
                or not hmac.compare_digest(offered.encode(), self.secret.encode())):
            self.refused += 1
            return Response.text(403, "forbidden\n")
        path = request.query.get("path", "")
        try:
            if self.readable is None:
                raise BridgeError("file reads are not available", code="ENOSYS")
            opened = self.readable(path)
        except ShoalError as exc:
            # The call failed, not the request: 200, so that the browser does not log a
            # failed load for what the page handles itself (a file not there yet, say).
            body = json.dumps({"code": exc.code, "message": exc.message}).encode()
            return Response(200, body, {"Content-Type": FILE_ERROR_TYPE})
        return Response(file=opened, headers={"Content-Type": "application/octet-stream"})

    # ------------------------------------------------------------------ bridge

    def _bridge(self, request: Request) -> Response | WebSocketAccept:
        offered = request.query.get("secret", "")
        if request.headers.get("origin") != self.page_origin or not hmac.compare_digest(
            offered.encode(), self.secret.encode()
        ):
            self.refused += 1
            return Response.text(403, "forbidden\n")
        return WebSocketAccept(self._open_session, max_message=MAX_FRAME)

    def _open_session(self, ws: WebSocket) -> _BridgeSession:
        self._clear_storage = False
        session = _BridgeSession(self.calls, ws, forget=self._sessions.discard)
        self._sessions.add(session)
        held, self._held = self._held, []
        for text in held:
            ws.send_text(text)
        return session


def _script(text: str) -> Response:
    """A JavaScript module of Shoal's own."""
    return Response(body=text.encode(), headers={"Content-Type": "text/javascript; charset=utf-8"})


class _BridgeSession:
    """One page's bridge WebSocket: each message is a call, answered by its own task.

    Within a turn of the event loop the first ``CALLS_PER_TURN`` calls start at once;
    later ones queue, and reading stops until the queue has been worked off in later
    turns. Reading also stops while ``MAX_CALLS_IN_FLIGHT`` calls are running, and (in
    the server) while the page does not read its answers."""

    def __init__(self, calls: dict[str, Handler], ws: WebSocket, *,
                 forget: Callable[[_BridgeSession], None]) -> None:
        """``forget`` is called with this session once it has closed."""
        self.calls = calls
        self.ws = ws
        self.scope = PageScope(emit=lambda event, data: _send_json(
            ws, {"event": event, "data": data}), drain=ws.drain)
        self._forget = forget
        self._in_flight: set[asyncio.Task[None]] = set()
        self._loop = asyncio.get_running_loop()
        self._queued: collections.deque[bytes | str] = collections.deque()
        self._started_this_turn = 0
        self._worker: asyncio.Task[None] | None = None
        self._bulk = asyncio.Semaphore(MAX_BULK_IN_FLIGHT)
        self._room = asyncio.Event()
        """Set when a call in flight ends: the queue's worker waits on it at the cap."""

    def message(self, data: bytes | str) -> None:
        if self._queued or self._started_this_turn >= CALLS_PER_TURN or self._must_wait:
            self._queued.append(data)
            self._update_reading()
            if self._worker is None:
                self._worker = self._loop.create_task(self._work_off_queue())
            return
        if not self._started_this_turn:
            self._loop.call_soon(self._new_turn)
        self._start(data)

    def _new_turn(self) -> None:
        self._started_this_turn = 0

    async def _work_off_queue(self) -> None:
        """Start queued calls, ``CALLS_PER_TURN`` per turn, while the page reads its
        answers."""
        try:
            while self._queued and not self.scope.closed:
                await self.ws.drain()
                while self._full:
                    self._room.clear()
                    await self._room.wait()
                await asyncio.sleep(0)
                for _ in range(min(CALLS_PER_TURN, len(self._queued))):
                    self._start(self._queued.popleft())
                    if self._must_wait:
                        break
        finally:
            self._worker = None
            self._started_this_turn = 0
            self._update_reading()

    @property
    def _full(self) -> bool:
        """``MAX_CALLS_IN_FLIGHT`` calls are running."""
        return len(self._in_flight) >= MAX_CALLS_IN_FLIGHT

    @property
    def _must_wait(self) -> bool:
        """No call may start now: the page is not reading its answers, or it is full."""
        return not self.ws.writable or self._full

    def _start(self, data: bytes | str) -> None:
        self._started_this_turn += 1
        parsed = _parse_text(data) if isinstance(data, str) else _parse_binary(data)
        token = current_page.set(self.scope)
        try:
            task = start_eagerly(self._loop, self._answer(parsed))
        finally:
            current_page.reset(token)
        if task is None:  # answered already: most calls never wait
            return
        self._in_flight.add(task)
        task.add_done_callback(self._finished)
        self._update_reading()

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        self._room.set()
        self._update_reading()

    def _update_reading(self) -> None:
        if self._queued or self._full:
            self.ws.pause_reading()
        else:
            self.ws.resume_reading()

    def closed(self) -> None:
        self.close()

    def close(self) -> None:
        self._forget(self)
        self._queued.clear()
        if self._worker is not None:
            self._worker.cancel()
        self.scope.close()
        self.ws.close()
        for task in list(self._in_flight):
            task.cancel()

    async def _answer(self, parsed: tuple[int, str, list[Any]] | BridgeError) -> None:
        ws = self.ws
        if isinstance(parsed, BridgeError):
            _send_json(ws, {"id": 0, "error": {"code": parsed.code, "message": parsed.message}})
            return
        call_id, name, args = parsed
        handler = self.calls.get(name)
        if handler is not None and getattr(handler, "bulk", False):
            async with self._bulk:
                await self._run(call_id, name, handler, args)
        else:
            await self._run(call_id, name, handler, args)

    async def _run(self, call_id: int, name: str, handler: Handler | None,
                   args: list[Any]) -> None:
        ws = self.ws
        try:
            if handler is None:
                raise BridgeError(f"no such call: {name}", code="ENOSYS")
            try:
                result = await handler(*args)
            except TypeError as exc:
                if "argument" not in str(exc):
                    raise
                raise BridgeError(f"{name}: wrong arguments", code="EINVAL") from None
        except ShoalError as exc:
            _send_json(ws, {"id": call_id, "error": {"code": exc.code, "message": exc.message}})
            return
        except Exception as exc:  # a bug behind one call: the page hears of it, the host lives
            self._loop.call_exception_handler({
                "message": f"bridge call {name} failed", "exception": exc})
            _send_json(ws, {"id": call_id, "error": {"code": "EIO",
                                                      "message": f"{name}: internal error"}})
            return
        if isinstance(result, FramedBytes):
            _U32.pack_into(result, 0, call_id)
            ws.send_bytes(result)
        elif isinstance(result, bytes | bytearray):
            ws.send_bytes(_U32.pack(call_id) + bytes(result))
        else:
            _send_json(ws, {"id": call_id, "ok": result})
            return
        del result
        await ws.drain()


def _send_json(ws: WebSocket, payload: dict[str, Any]) -> None:
    ws.send_text(json.dumps(payload))


def _parse_text(text: str) -> tuple[int, str, list[Any]] | BridgeError:
    try:
        request = json.loads(text)
    except ValueError:
        return BridgeError("a bridge message must be JSON", code="EINVAL")
    return _request(request)


def _parse_binary(data: bytes) -> tuple[int, str, list[Any]] | BridgeError:
    if len(data) < 8:
        return BridgeError("truncated binary bridge message", code="EINVAL")
    (header_size,) = _U32.unpack_from(data, 4)
    if 8 + header_size > len(data):
        return BridgeError("truncated binary bridge message", code="EINVAL")
    try:
        request = json.loads(data[8 : 8 + header_size])
    except ValueError:
        return BridgeError("a bridge header must be JSON", code="EINVAL")
    parsed = _request(request)
    if isinstance(parsed, BridgeError):
        return parsed
    index = request.get("binary")
    if not isinstance(index, int) or not 0 <= index < len(parsed[2]):
        return BridgeError("binary argument index out of range", code="EINVAL")
    parsed[2][index] = bytes(data[8 + header_size :])
    return parsed


def _request(request: Any) -> tuple[int, str, list[Any]] | BridgeError:
    if not isinstance(request, dict):
        return BridgeError("a bridge message must be an object", code="EINVAL")
    call_id, name, args = request.get("id"), request.get("call"), request.get("args", [])
    if not isinstance(call_id, int) or not isinstance(name, str) or not isinstance(args, list):
        return BridgeError("a bridge message needs id, call and args", code="EINVAL")
    if isinstance(call_id, bool) or not 0 <= call_id <= MAX_CALL_ID:
        return BridgeError(f"a call id must be an integer from 0 to {MAX_CALL_ID}",
                           code="EINVAL")
    return call_id, name, args
