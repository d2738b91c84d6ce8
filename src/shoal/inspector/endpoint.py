"""The inspector's local endpoint: the page, its script and the node's snapshots."""

from __future__ import annotations

import contextlib
import hmac
import json
import os
import secrets
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shoal.net import bind_listener
from shoal.runtime.server import LoopbackServer, Request, Response, WebSocketAccept

if TYPE_CHECKING:
    from shoal.aio.node import Node

SNAPSHOT_PATH = "/snapshot"
ASSETS = {"/": ("inspector.html", "text/html; charset=utf-8"),
          "/inspector.js": ("inspector.js", "text/javascript; charset=utf-8"),
          "/inspector.css": ("inspector.css", "text/css; charset=utf-8")}
POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
          "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


def _registry() -> Path:
    import platformdirs

    return Path(platformdirs.user_state_dir("shoal")) / "inspect"


class Inspector:
    """Serves ``node``'s inspector on 127.0.0.1 until ``close``."""

    def __init__(self, node: Node, *, port: int = 0) -> None:
        self.node = node
        self.token = secrets.token_urlsafe(24)
        self.port = port
        self.refused = 0
        """Requests refused for a wrong Host or token."""
        self._server = LoopbackServer(self._handle, headers={
            "Content-Security-Policy": POLICY, "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer", "Cache-Control": "no-store"})
        self._entry: Path | None = None

    @property
    def url(self) -> str:
        """The page, with the token in the fragment (which browsers never send)."""
        return f"http://127.0.0.1:{self.port}/#token={self.token}"

    async def start(self) -> Inspector:
        listener = bind_listener(self.port)
        self.port = listener.getsockname()[1]
        await self._server.start(listener)
        self._entry = self._register()
        return self

    async def close(self) -> None:
        if self._entry is not None:
            self._entry.unlink(missing_ok=True)
        await self._server.close()

    async def __aenter__(self) -> Inspector:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _register(self) -> Path | None:
        """Note the endpoint where ``shoal inspect`` looks: a file only this user reads."""
        folder = _registry()
        entry = folder / f"{os.getpid()}-{self.port}.json"
        body = json.dumps({"pid": os.getpid(), "peer_id": self.node.peer_id, "url": self.url})
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(entry, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(body)
        except OSError:
            return None
        return entry

    def _handle(self, request: Request) -> Response | WebSocketAccept:
        if request.headers.get("host") != f"127.0.0.1:{self.port}":
            self.refused += 1
            return Response.text(403, "forbidden: wrong Host\n")
        if request.method != "GET":
            return Response.text(405, "method not allowed\n")
        if request.path == SNAPSHOT_PATH:
            offered = request.headers.get("authorization", "").removeprefix("Bearer ")
            if not hmac.compare_digest(offered.encode(), self.token.encode()):
                self.refused += 1
                return Response.text(403, "forbidden\n")
            body = json.dumps(self.node.snapshot()).encode()
            return Response(body=body, headers={"Content-Type": "application/json"})
        found = ASSETS.get(request.path)
        if found is None:
            return Response.text(404, "not found\n")
        name, kind = found
        data = resources.files("shoal.inspector").joinpath("assets", name).read_bytes()
        return Response(body=data, headers={"Content-Type": kind})


def running_inspectors() -> list[dict[str, Any]]:
    """The inspectors of this user's running nodes (stale entries are removed)."""
    found = []
    folder = _registry()
    for entry in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            body = json.loads(entry.read_text(encoding="utf-8"))
            os.kill(int(body["pid"]), 0)
        except (OSError, ValueError, KeyError, TypeError):
            with contextlib.suppress(OSError):
                entry.unlink()
            continue
        found.append(body)
    return found
