"""A framework's dev server (Vite, say) behind the app server, under ``shoal dev``.

The app server passes every request that is not its own (``/_shoal/``) to the dev
server and answers with what it says, so the pages keep the app's origin, its bridge and
its policy. HTML pages get what Shoal adds to the app's own pages, and a policy allowing
their inline code by hash; styles the dev server's client adds at run time carry the
page's nonce, which it finds in ``<meta property="csp-nonce">`` (Vite reads it there).
A WebSocket (the dev server's hot module reload) is relayed both ways.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from typing import TYPE_CHECKING

from shoal.runtime.server import Request, WebSocket, WebSocketAccept

if TYPE_CHECKING:
    import aiohttp
    from websockets.asyncio.client import ClientConnection

PASSED_HEADERS = ("accept", "accept-language", "if-none-match", "if-modified-since")
KEPT_HEADERS = ("content-type", "etag", "last-modified", "location")
MAX_BODY = 64 << 20
TIMEOUT = 60.0


class DevServer:
    """Fetches what the pages ask for from the dev server at ``url``."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self._session: aiohttp.ClientSession | None = None

    async def fetch(self, request: Request) -> tuple[int, dict[str, str], bytes]:
        """The dev server's answer to ``request``: status, the headers kept, the body."""
        import aiohttp  # only under shoal dev with a dev server: 60 ms, and not bundled

        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=TIMEOUT), auto_decompress=True)
        headers = {k: v for k, v in request.headers.items() if k in PASSED_HEADERS}
        try:
            async with self._session.request(
                    request.method, self.url + (request.target or request.path),
                    headers=headers, allow_redirects=False) as answer:
                body = bytearray()
                async for chunk in answer.content.iter_any():
                    body += chunk
                    if len(body) > MAX_BODY:
                        return 502, {}, b"the dev server's answer is too large\n"
                kept = {k: v for k, v in answer.headers.items() if k.lower() in KEPT_HEADERS}
                return answer.status, kept, bytes(body)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            message = (f"the dev server at {self.url} does not answer ({exc.__class__.__name__}"
                       "): start it (npm run dev), or check [dev] url / --url\n")
            return 502, {"Content-Type": "text/plain; charset=utf-8"}, message.encode()

    def relay(self, request: Request) -> WebSocketAccept:
        """Accept the page's WebSocket and relay it to the same address on the dev server."""
        offered = [p.strip() for p in request.headers.get("sec-websocket-protocol", "")
                   .split(",") if p.strip()]
        target = "ws" + self.url[4:] + (request.target or request.path)
        return WebSocketAccept(lambda ws: _Relay(ws, target, offered, self.url),
                               subprotocols=offered[:1] or None)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def nonce() -> str:
    """A fresh nonce for one page's run-time styles."""
    return secrets.token_urlsafe(18)


def nonce_meta(value: str) -> str:
    return f'<meta property="csp-nonce" nonce="{value}">'


class _Relay:
    """One page's WebSocket, joined to one WebSocket to the dev server."""

    def __init__(self, ws: WebSocket, target: str, protocols: list[str], origin: str) -> None:
        self.ws = ws
        self._outgoing: asyncio.Queue[str | bytes | None] = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(
            self._run(target, protocols, origin))

    def message(self, data: bytes | str) -> None:
        self._outgoing.put_nowait(data)

    def closed(self) -> None:
        self._outgoing.put_nowait(None)

    async def _run(self, target: str, protocols: list[str], origin: str) -> None:
        try:
            from websockets.asyncio.client import connect  # with a dev server only

            async with connect(target, subprotocols=protocols or None,  # type: ignore[arg-type]
                               origin=origin, max_size=None) as upstream:  # type: ignore[arg-type]
                sending = asyncio.get_running_loop().create_task(self._send(upstream))
                try:
                    async for message in upstream:
                        if isinstance(message, str):
                            self.ws.send_text(message)
                        else:
                            self.ws.send_bytes(message)
                finally:
                    sending.cancel()
        except Exception:  # the dev server went away or refused: the page's client retries
            pass
        self.ws.close()

    async def _send(self, upstream: ClientConnection) -> None:
        while (message := await self._outgoing.get()) is not None:
            await upstream.send(message)
        with contextlib.suppress(Exception):
            await upstream.close()


