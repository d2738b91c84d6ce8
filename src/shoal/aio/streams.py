"""Streams for ``shoal.Node``: a reliable, ordered byte stream to a peer, both ways.

A ``Stream`` is what ``Node.open_stream`` returns and ``Channel.streams()`` yields. It
reads like ``asyncio.StreamReader`` (``read``, ``readexactly``) and writes like a writer
that waits for room: ``write`` returns once its bytes are buffered, never holding more
than the stream's send buffer, so a peer that reads slowly slows the writer; ``drain``
waits until the peer acknowledged everything written; ``close`` sends the end and waits
for it to be acknowledged. The protocol work happens in the node's stream service
(``shoal.core.services.streams``); this class only waits for its events.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from shoal.errors import ClosedError, DeliveryError, ShoalError

if TYPE_CHECKING:
    from shoal.aio.node import Node

REFUSED = 1
"""The code of a stream the peer refused (it serves no streams on the channel)."""


class Stream:
    """A byte stream to ``peer_id`` on ``channel`` (see the module docstring)."""

    def __init__(self, node: Node, handle: int, peer_id: str, channel: str) -> None:
        self._node = node
        self.handle = handle
        self.peer_id = peer_id
        self.channel = channel
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._drained = asyncio.Event()
        self._error: ShoalError | None = None
        """Why writing (and waiting) fails: the peer stopped reading, or the connection
        ended."""
        self._read_error: ShoalError | None = None
        self._gone = False

    def __repr__(self) -> str:
        return f"<Stream {self.handle} to {self.peer_id[:12]} on {self.channel!r}>"

    def _call(self, op: str, *args: Any) -> Any:
        if self._gone:
            raise self._error or ClosedError("the stream is closed")
        return self._node.call("streams", op, self.handle, *args)

    # ------------------------------------------------------------------ writing

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        """Buffer ``data``, waiting for room as the peer reads and acknowledges."""
        if self._error is not None:
            raise self._error
        view = memoryview(data).cast("B") if not isinstance(data, bytes) else data
        while True:
            taken = self._call("write", view)
            if taken == len(view):
                return
            view = memoryview(view)[taken:]
            self._writable.clear()
            await self._wait(self._writable)

    async def drain(self) -> None:
        """Wait until the peer acknowledged every byte written (and the end, if closed)."""
        if self._error is not None:
            raise self._error
        if self._gone or self._call("drain"):
            return
        self._drained.clear()
        await self._wait(self._drained)

    async def close(self) -> None:
        """Send the end of the stream after the bytes written, and wait until the peer
        acknowledged all of it."""
        if self._gone:
            return
        self._call("close")
        await self.drain()

    def reset(self, code: int = 0) -> None:
        """Abandon writing at once: bytes not yet delivered may be lost."""
        if not self._gone:
            self._call("reset", code)

    # ------------------------------------------------------------------ reading

    async def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes (any that are ready if ``n`` is negative), waiting for at
        least one; b"" at the end of the stream. ``DeliveryError`` ``ECONNRESET`` if the
        peer abandoned it, or the connection ended."""
        if n == 0:
            return b""
        while True:
            if self._read_error is not None:
                raise self._read_error
            if self._gone:
                return b""
            try:
                data = self._call("read", n)
            except DeliveryError as exc:
                self._read_error = exc
                raise
            if data is None:
                return b""
            if data:
                return data
            self._readable.clear()
            await self._wait(self._readable, reading=True)

    async def readexactly(self, n: int) -> bytes:
        """Exactly ``n`` bytes; ``asyncio.IncompleteReadError`` if the stream ends first."""
        parts = bytearray()
        while len(parts) < n:
            chunk = await self.read(n - len(parts))
            if not chunk:
                raise asyncio.IncompleteReadError(bytes(parts), n)
            parts += chunk
        return bytes(parts)

    def stop(self, code: int = 0) -> None:
        """Read no more: the peer is asked to stop sending."""
        if not self._gone:
            self._call("stop", code)

    def __aiter__(self) -> Stream:
        return self

    async def __anext__(self) -> bytes:
        chunk = await self.read()
        if not chunk:
            raise StopAsyncIteration
        return chunk

    async def __aenter__(self) -> Stream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        if exc[0] is None:
            await self.close()
        else:
            self.reset()

    # ------------------------------------------------------------------ events

    async def _wait(self, event: asyncio.Event, *, reading: bool = False) -> None:
        error = self._read_error if reading else self._error
        if error is not None:
            raise error
        await event.wait()
        error = self._read_error if reading else self._error
        if error is not None and not (reading and self._readable.is_set()
                                      and self._read_error is None):
            raise error

    def _on_event(self, kind: str, data: Any) -> None:
        if kind == "readable":
            self._readable.set()
        elif kind == "writable":
            self._writable.set()
        elif kind == "drained":
            self._drained.set()
        elif kind == "reset":
            self._readable.set()  # the next read raises ECONNRESET
        elif kind == "stopped":
            code = data[1]
            self._error = DeliveryError(
                f"{self.peer_id} serves no streams on channel {self.channel!r}"
                if code == REFUSED else f"the peer stopped reading (code {code})",
                code="ENOPROTOOPT" if code == REFUSED else "EPIPE")
            self._wake_all()
        elif kind == "failed":
            error = DeliveryError(f"the connection to {self.peer_id} ended: {data[1]}",
                                  code="ECONNRESET")
            self._error = self._error or error
            self._read_error = self._read_error or error
            self._gone = True
            self._wake_all()
        elif kind == "closed":
            self._gone = True
            self._wake_all()

    def _wake_all(self) -> None:
        for event in (self._readable, self._writable, self._drained):
            event.set()
