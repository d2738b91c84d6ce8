"""The app server: the app's files under a strict CSP, and the page's bridge to Python.

Theory of operation
-------------------
One aiohttp server on 127.0.0.1 serves the app folder and ``/_shoal/api.js``. Every
response carries a Content-Security-Policy without ``'unsafe-eval'`` or
``'unsafe-inline'`` whose ``connect-src`` is the bridge alone; HTML responses get an
import map (``"shoal:api"`` -> ``/_shoal/api.js``) whose hash is the only inline script
the policy admits.

The bridge is a WebSocket at ``/_shoal/bridge``. A request is refused (403, no side
effect) unless its ``Host`` is exactly this server's ``127.0.0.1:PORT`` (DNS rebinding),
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
import contextlib
import hmac
import json
import secrets
import socket
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web

from shoal.errors import ShoalError
from shoal.runtime.config import AppConfig
from shoal.runtime.fsapi import BridgeError, FramedBytes
from shoal.runtime.pages import (
    API_PATH,
    BRIDGE_PATH,
    FILE_PATH,
    TYPES_PATH,
    app_file,
    asset,
    content_security_policy,
    content_type,
    page_html,
    security_headers,
)
from shoal.runtime.window import bind_listener

MAX_CALLS_IN_FLIGHT = 256
MAX_FRAME = 128 << 20
_U32 = struct.Struct("!I")

Handler = Callable[..., Awaitable[Any]]


class AppServer:
    """Serves one app on 127.0.0.1 and answers its bridge calls with ``calls``."""

    def __init__(self, config: AppConfig, calls: dict[str, Handler], *,
                 port: int = 0, listener: socket.socket | None = None,
                 secret: str | None = None,
                 readable: Callable[[str], Path] | None = None,
                 page_origin: str | None = None) -> None:
        """``readable`` resolves a page path for reading (raising ``BridgeError``): bulk
        reads are served over HTTP at ``FILE_PATH``, which moves large files much faster
        than WebSocket frames do. ``page_origin``: the pages' origin when something else
        serves them (the native window's ``shoal://app``); only pages of that origin may
        then open the bridge."""
        self.config = config
        self.calls = calls
        self.readable = readable
        self.secret = secret or secrets.token_urlsafe(32)
        self._listener = listener
        self._requested_port = port
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._sockets: set[web.WebSocketResponse] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._headers: dict[str, str] = {}
        self._page_origin = page_origin
        self.refused = 0
        """Requests refused for a wrong Host, Origin or secret (for tests and logs)."""

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def page_origin(self) -> str:
        """The Origin the bridge accepts."""
        return self._page_origin or self.origin

    @property
    def url(self) -> str:
        """What the window opens: the entry page, with the secret in the fragment."""
        return f"{self.origin}/#shoal={self.secret}"

    async def start(self) -> None:
        app = web.Application(middlewares=[self._guard], client_max_size=MAX_FRAME)
        app.router.add_get(BRIDGE_PATH, self._bridge)
        app.router.add_get(API_PATH, self._api_module)
        app.router.add_get(FILE_PATH, self._read_file)
        app.router.add_route("OPTIONS", FILE_PATH, self._file_preflight)
        app.router.add_get(TYPES_PATH, self._api_types)
        app.router.add_get("/{path:.*}", self._file)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        listener = self._listener or bind_listener(self._requested_port)
        self.port = listener.getsockname()[1]
        await web.SockSite(self._runner, listener).start()
        self._headers = security_headers(content_security_policy(self.port, self.config.csp))

    async def close(self) -> None:
        for ws in list(self._sockets):
            await ws.close()
        for task in list(self._tasks):
            task.cancel()
        if self._runner is not None:
            await self._runner.cleanup()

    def emit(self, event: str, data: dict[str, Any]) -> None:
        """Send an event to every connected page."""
        text = json.dumps({"event": event, "data": data})
        for ws in list(self._sockets):
            if not ws.closed:
                task = asyncio.get_running_loop().create_task(ws.send_str(text))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------ HTTP

    @web.middleware
    async def _guard(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.headers.get("Host") != f"127.0.0.1:{self.port}":
            self.refused += 1
            return web.Response(status=403, text="forbidden: wrong Host\n")
        response = await handler(request)
        response.headers.update(self._headers)
        if request.path == FILE_PATH and self.page_origin != self.origin:
            response.headers["Access-Control-Allow-Origin"] = self.page_origin
            response.headers["Vary"] = "Origin"
        return response

    async def _api_module(self, request: web.Request) -> web.StreamResponse:
        return web.Response(text=asset("api.js"), content_type="text/javascript")

    async def _api_types(self, request: web.Request) -> web.StreamResponse:
        return web.Response(text=asset("shoal.d.ts"), content_type="text/plain")

    async def _file(self, request: web.Request) -> web.StreamResponse:
        target = app_file(self.config, request.match_info["path"])
        if target is None:
            raise web.HTTPNotFound()
        kind = content_type(target)
        if kind == "text/html":
            return web.Response(text=page_html(target), content_type="text/html")
        return web.FileResponse(target, headers={"Content-Type": kind})

    async def _file_preflight(self, request: web.Request) -> web.StreamResponse:
        """CORS preflight of a bulk read by a page the window serves itself."""
        if self.page_origin == self.origin or request.headers.get("Origin") != self.page_origin:
            self.refused += 1
            return web.Response(status=403, text="forbidden\n")
        return web.Response(status=204, headers={
            "Access-Control-Allow-Methods": "GET",
            "Access-Control-Allow-Headers": "X-Shoal-Secret",
            "Access-Control-Max-Age": "600",
        })

    async def _read_file(self, request: web.Request) -> web.StreamResponse:
        """A file for ``fs.readFile``: same checks as the bridge, the secret in a header
        (a foreign page cannot send one without a CORS preflight, which fails here)."""
        offered = request.headers.get("X-Shoal-Secret", "")
        origin = request.headers.get("Origin")
        site = request.headers.get("Sec-Fetch-Site")
        # A page served by the window's own scheme reads cross-site, with its Origin.
        sites = ("same-origin",) if self.page_origin == self.origin else ("cross-site",)
        if (origin not in (None, self.page_origin) or site not in (None, *sites)
                or not hmac.compare_digest(offered.encode(), self.secret.encode())):
            self.refused += 1
            return web.Response(status=403, text="forbidden\n")
        try:
            if self.readable is None:
                raise BridgeError("file reads are not available", code="ENOSYS")
            real = self.readable(request.query.get("path", ""))
            if real.is_dir():
                raise BridgeError(f"is a directory: {request.query.get('path')}", code="EISDIR")
            if not real.is_file():
                raise BridgeError(f"no such file: {request.query.get('path')}", code="ENOENT")
        except ShoalError as exc:
            status = {"EPERM": 403, "ENOENT": 404}.get(exc.code, 400)
            return web.json_response({"code": exc.code, "message": exc.message}, status=status)
        return web.FileResponse(real, headers={"Content-Type": "application/octet-stream"})

    # ------------------------------------------------------------------ bridge

    async def _bridge(self, request: web.Request) -> web.StreamResponse:
        offered = request.query.get("secret", "")
        if request.headers.get("Origin") != self.page_origin or not hmac.compare_digest(
            offered.encode(), self.secret.encode()
        ):
            self.refused += 1
            return web.Response(status=403, text="forbidden\n")
        # No permessage-deflate: it would cost more CPU than it saves on a loopback link.
        ws = web.WebSocketResponse(max_msg_size=MAX_FRAME, heartbeat=30, compress=False)
        await ws.prepare(request)
        self._sockets.add(ws)
        in_flight: set[asyncio.Task[Any]] = set()
        loop = asyncio.get_running_loop()

        def finished(task: asyncio.Task[Any]) -> None:
            in_flight.discard(task)
            self._tasks.discard(task)

        try:
            async for message in ws:
                if message.type == WSMsgType.TEXT:
                    parsed = _parse_text(message.data)
                elif message.type == WSMsgType.BINARY:
                    parsed = _parse_binary(message.data)
                else:
                    continue
                if len(in_flight) >= MAX_CALLS_IN_FLIGHT:  # a page flooding calls waits
                    await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
                task = loop.create_task(self._answer(ws, parsed))
                in_flight.add(task)
                self._tasks.add(task)
                task.add_done_callback(finished)
        finally:
            self._sockets.discard(ws)
        return ws

    async def _answer(self, ws: web.WebSocketResponse,
                      parsed: tuple[int, str, list[Any]] | BridgeError) -> None:
        if isinstance(parsed, BridgeError):
            await _send_json(ws, {"id": 0, "error": {"code": parsed.code,
                                                      "message": parsed.message}})
            return
        call_id, name, args = parsed
        handler = self.calls.get(name)
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
            await _send_json(ws, {"id": call_id, "error": {"code": exc.code,
                                                            "message": exc.message}})
            return
        if isinstance(result, FramedBytes):
            _U32.pack_into(result, 0, call_id)
            with contextlib.suppress(ConnectionError):
                await ws.send_bytes(result)
            return
        if isinstance(result, bytes | bytearray):
            with contextlib.suppress(ConnectionError):
                await ws.send_bytes(_U32.pack(call_id) + bytes(result))
            return
        await _send_json(ws, {"id": call_id, "ok": result})


async def _send_json(ws: web.WebSocketResponse, payload: dict[str, Any]) -> None:
    if not ws.closed:
        with contextlib.suppress(ConnectionError):
            await ws.send_str(json.dumps(payload))


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
    return call_id, name, args
