"""``BridgeClient``: call an app's bridge from Python, as its page would (for tests)."""

from __future__ import annotations

import asyncio
import itertools
import json
import struct
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from shoal.runtime.bridge import BRIDGE_PATH
from shoal.runtime.fsapi import BridgeError
from shoal.runtime.host import AppHost


class BridgeClient:
    """A WebSocket to ``host``'s bridge with the right secret and Origin."""

    def __init__(self, host: AppHost) -> None:
        self.host = host
        self._ws: ClientConnection | None = None
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self.events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.stray: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        """Replies to no call of this client: the errors junk messages get (id 0)."""
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> BridgeClient:
        server = self.host.server
        assert server is not None
        self._ws = await connect(
            f"ws://127.0.0.1:{server.port}{BRIDGE_PATH}?secret={server.secret}",
            origin=server.page_origin,  # type: ignore[arg-type]
            max_size=None, compression=None, proxy=None,
        )
        self._reader = asyncio.get_running_loop().create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._reader is not None:
            self._reader.cancel()
        if self._ws is not None:
            await self._ws.close()

    async def call(self, name: str, *args: Any) -> Any:
        """One bridge call; raises ``BridgeError`` with the page-visible code on failure."""
        assert self._ws is not None
        call_id = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[call_id] = future
        binary = next((i for i, a in enumerate(args) if isinstance(a, bytes | bytearray)), None)
        if binary is None:
            await self._ws.send(json.dumps({"id": call_id, "call": name, "args": list(args)}))
        else:
            plain = [None if i == binary else a for i, a in enumerate(args)]
            header = json.dumps({"id": call_id, "call": name, "args": plain,
                                 "binary": binary}).encode()
            await self._ws.send(struct.pack("!II", call_id, len(header)) + header
                                + bytes(args[binary]))
        return await future

    @property
    def websocket(self) -> ClientConnection:
        """The underlying connection (for tests that must stop reading, say)."""
        assert self._ws is not None, "use BridgeClient in an async with block"
        return self._ws

    async def send_raw(self, message: str | bytes) -> None:
        """One WebSocket message as given, for a test of what the bridge does with junk."""
        assert self._ws is not None, "use BridgeClient in an async with block"
        await self._ws.send(message)

    async def _read(self) -> None:
        assert self._ws is not None
        async for message in self._ws:
            if isinstance(message, bytes):
                (call_id,) = struct.unpack_from("!I", message)
                future = self._pending.pop(call_id, None)
                if future is not None and not future.done():
                    future.set_result(message[4:])
            else:
                payload = json.loads(message)
                if "event" in payload:
                    self.events.put_nowait((payload["event"], payload["data"]))
                    continue
                future = self._pending.pop(payload["id"], None)
                if future is None or future.done():
                    self.stray.put_nowait(payload)
                    continue
                if "error" in payload:
                    error = payload["error"]
                    future.set_exception(BridgeError(error["message"], code=error["code"]))
                else:
                    future.set_result(payload["ok"])
