"""``network.channel`` and ``network.openStream``: the page's named channels and streams.

A page of an app with the ``network`` permission opens a named channel of its app's node
(``Node.channel``): messages to it, and streams peers open on it, reach the pages that
opened it. Each app runs a node of its own, so a page never hears another app's
channels. Names are 1 to 100 characters of ``A-Z a-z 0-9 . _ - : /``, starting with a
letter or digit; names starting with ``shoal/`` are Shoal's own protocols (files,
pairing, ...) and are refused (``EPERM``), as is ``""``, the default channel that
``network.send`` and ``network.on("message")`` use.

Streams go between page and host as bridge calls: the page pulls (``network.streamRead``
answers one chunk of at most ``STREAM_CHUNK`` bytes, as a binary frame) and pushes
(``network.streamWrite`` takes one chunk and answers once the node's stream buffer took
it). One read and one write per stream run at a time, so the host holds for a stream at
most its receive window and send buffer (``StreamConfig``: 1 MiB each by default) and a
chunk each way: a page that stops reading stops the peer through the stream's flow
control, and a page that writes faster than the peer reads waits.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from shoal.errors import ShoalError
from shoal.runtime.fsapi import BridgeError
from shoal.runtime.scope import PageScope, current_page

if TYPE_CHECKING:
    from shoal.aio.node import Channel, Node
    from shoal.aio.streams import Stream

CHANNEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,99}")
RESERVED_PREFIX = "shoal/"
"""Channels of Shoal's own protocols (``shoal/blobs/1``, ``shoal/pair/1``, ...)."""
STREAM_CHUNK = 256 << 10
"""Bytes of one ``streamRead`` answer or ``streamWrite`` argument, at most."""
MAX_PAGE_STREAMS = 32
"""Streams one page holds at once; a peer's stream past that is refused."""
MAX_PAGE_CHANNELS = 64
REFUSED_BUSY = 2
"""Code a peer's stream is stopped and reset with when no page can take it."""


def check_channel_name(name: Any) -> str:
    """``name`` if a page may use it, else ``BridgeError`` (``EPERM`` if reserved)."""
    if not isinstance(name, str) or not CHANNEL_NAME.fullmatch(name):
        raise BridgeError(
            f"not a channel name: {name!r} (1 to 100 of A-Z a-z 0-9 . _ - : /, "
            "starting with a letter or digit)", code="EINVAL")
    if name.startswith(RESERVED_PREFIX):
        raise BridgeError(f"channel {name!r}: names starting with {RESERVED_PREFIX!r} are "
                          "reserved for Shoal's own protocols", code="EPERM")
    return name


@dataclass
class _Shared:
    """One node channel and the pages that opened it (in order)."""

    channel: Channel
    pages: list[PageScope] = field(default_factory=list)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


@dataclass
class _PageStream:
    """A stream handed to one page."""

    stream: Stream
    page: PageScope
    reading: bool = False
    writing: bool = False
    read_done: bool = False
    write_done: bool = False
    in_hand: int = 0
    """Bytes of a chunk the host holds for this stream outside the node (a write
    waiting for room)."""


class Channels:
    """``network.channel*`` and ``network.stream*`` calls over one ``shoal.Node``."""

    def __init__(self, node: Node | None, allowed: bool) -> None:
        self.node = node
        self.allowed = allowed
        self._shared: dict[str, _Shared] = {}
        self._streams: dict[int, _PageStream] = {}
        self._ids = itertools.count(1)

    def calls(self) -> dict[str, Callable[..., Any]]:
        return {
            "network.channel": self.open_channel,
            "network.channelSend": self.send,
            "network.channelClose": self.close_channel,
            "network.openStream": self.open_stream,
            "network.streamRead": self.read,
            "network.streamWrite": self.write,
            "network.streamClose": self.end,
            "network.streamReset": self.reset,
            "network.streamStop": self.stop,
            "network.streamRelease": self.release,
            "network.streamInfo": self.info,
        }

    def _require(self) -> tuple[Node, PageScope]:
        if not self.allowed:
            raise BridgeError("this app did not declare the 'network' permission", code="EPERM")
        if self.node is None:
            raise BridgeError("the network is not running", code="ENOTCONN")
        page = current_page.get()
        if page is None:
            raise BridgeError("channels belong to a page", code="EINVAL")
        return self.node, page

    # ------------------------------------------------------------------ channels

    async def open_channel(self, name: str) -> None:
        """Serve channel ``name`` for this page: its messages and streams come as
        ``network.channel.message`` and ``network.stream`` events."""
        node, page = self._require()
        check_channel_name(name)
        shared = self._shared.get(name)
        if shared is not None and page in shared.pages:
            raise BridgeError(f"channel {name!r} is already open", code="EBUSY")
        if page.count(_ChannelKey) >= MAX_PAGE_CHANNELS:
            raise BridgeError("too many open channels", code="EMFILE")
        if shared is None:
            shared = self._shared[name] = _Shared(node.channel(name))
            loop = asyncio.get_running_loop()
            shared.tasks = [loop.create_task(self._forward_messages(name, shared)),
                            loop.create_task(self._forward_streams(name, shared))]
        shared.pages.append(page)
        page.hold(_ChannelKey(name), lambda: self._leave(name, page))

    def _leave(self, name: str, page: PageScope) -> None:
        shared = self._shared.get(name)
        if shared is None or page not in shared.pages:
            return
        shared.pages.remove(page)
        if not shared.pages:
            del self._shared[name]
            shared.channel.close()
            for task in shared.tasks:
                task.cancel()

    async def close_channel(self, name: str) -> None:
        _, page = self._require()
        page.drop(_ChannelKey(name))
        self._leave(name, page)

    async def send(self, name: str, peer_id: str, data: bytes | str,
                   options: dict | None = None) -> dict[str, Any]:
        """Send on channel ``name`` (open in this page); see ``Node.send``."""
        node, page = self._require()
        shared = self._shared.get(name)
        if shared is None or page not in shared.pages:
            raise BridgeError(f"channel {name!r} is not open", code="EBADF")
        payload = data.encode() if isinstance(data, str) else data
        if not isinstance(payload, bytes | bytearray) or not isinstance(peer_id, str):
            raise BridgeError("send(peerId, data): data must be a string or a Uint8Array",
                              code="EINVAL")
        timeout = (options or {}).get("timeout", 30)
        if not isinstance(timeout, int | float) or timeout <= 0:
            raise BridgeError("timeout must be a positive number of seconds", code="EINVAL")
        delivery = await node.send(peer_id, bytes(payload), timeout=float(timeout),
                                   channel=name)
        return {"path": delivery.path, "ms": round(delivery.seconds * 1000, 2)}

    async def _forward_messages(self, name: str, shared: _Shared) -> None:
        """Each message to every page of the channel; the next is taken (and the sender
        granted room) only once the pages read the last."""
        async for message in shared.channel:
            data = {"channel": name, "from": message.sender, "path": message.path,
                    "data": base64.b64encode(message.data).decode()}
            for page in list(shared.pages):
                page.emit("network.channel.message", data)
            for page in list(shared.pages):
                await page.drain()

    async def _forward_streams(self, name: str, shared: _Shared) -> None:
        """Each stream to the first page of the channel that may hold one more."""
        async for stream in shared.channel.streams():
            page = next((p for p in shared.pages
                         if p.count(_StreamKey) < MAX_PAGE_STREAMS), None)
            if page is None:
                stream.stop(REFUSED_BUSY)
                stream.reset(REFUSED_BUSY)
                continue
            stream_id = self._add(stream, page)
            page.emit("network.stream", {"channel": name, "id": stream_id,
                                         "peerId": stream.peer_id})

    # ------------------------------------------------------------------ streams

    async def open_stream(self, peer_id: str, name: str,
                          options: dict | None = None) -> dict[str, Any]:
        """A stream to ``peer_id`` on channel ``name``; see ``Node.open_stream``."""
        node, page = self._require()
        check_channel_name(name)
        if not isinstance(peer_id, str):
            raise BridgeError("a peer id is a string", code="EINVAL")
        if page.count(_StreamKey) >= MAX_PAGE_STREAMS:
            raise BridgeError(f"a page holds at most {MAX_PAGE_STREAMS} streams",
                              code="EMFILE")
        timeout = (options or {}).get("timeout", 30)
        if not isinstance(timeout, int | float) or timeout <= 0:
            raise BridgeError("timeout must be a positive number of seconds", code="EINVAL")
        stream = await node.open_stream(peer_id, name, timeout=float(timeout))
        if page.closed:
            stream.stop(0)
            stream.reset(0)
            raise BridgeError("the page closed", code="ECONNRESET")
        return {"id": self._add(stream, page), "peerId": peer_id, "channel": name}

    def _add(self, stream: Stream, page: PageScope) -> int:
        stream_id = next(self._ids)
        self._streams[stream_id] = _PageStream(stream, page)
        page.hold(_StreamKey(stream_id), lambda: self._abandon(stream_id))
        return stream_id

    def _own(self, stream_id: Any) -> _PageStream:
        _, page = self._require()
        held = self._streams.get(stream_id) if isinstance(stream_id, int) else None
        if held is None or held.page is not page:
            raise BridgeError(f"no open stream {stream_id!r}", code="EBADF")
        return held

    def _abandon(self, stream_id: int) -> None:
        """The page let go of the stream: stop both ways, forget it."""
        held = self._streams.pop(stream_id, None)
        if held is None:
            return
        with contextlib.suppress(ShoalError):
            if not held.read_done:
                held.stream.stop(0)
            if not held.write_done:
                held.stream.reset(0)

    def _settle(self, stream_id: int, held: _PageStream) -> None:
        if held.read_done and held.write_done:
            self._streams.pop(stream_id, None)
            held.page.drop(_StreamKey(stream_id))

    async def read(self, stream_id: int) -> bytes:
        """The next chunk (at most ``STREAM_CHUNK`` bytes); empty at the end."""
        held = self._own(stream_id)
        if held.reading:
            raise BridgeError("a read of this stream is already waiting", code="EBUSY")
        if held.read_done:
            return b""
        held.reading = True
        try:
            data = await held.stream.read(STREAM_CHUNK)
        except ShoalError:
            held.read_done = True
            self._settle(stream_id, held)
            raise
        finally:
            held.reading = False
        if not data:
            held.read_done = True
            self._settle(stream_id, held)
        return data

    async def write(self, stream_id: int, data: bytes | str) -> None:
        """Hand one chunk to the stream; answers once the node's buffer took all of it."""
        held = self._own(stream_id)
        payload = data.encode() if isinstance(data, str) else data
        if not isinstance(payload, bytes | bytearray):
            raise BridgeError("data must be a string or a Uint8Array", code="EINVAL")
        if len(payload) > STREAM_CHUNK:
            raise BridgeError(f"a stream write takes at most {STREAM_CHUNK} bytes",
                              code="EMSGSIZE")
        if held.writing:
            raise BridgeError("a write of this stream is already waiting", code="EBUSY")
        if held.write_done:
            raise BridgeError("the stream was closed for writing", code="EPIPE")
        held.writing, held.in_hand = True, len(payload)
        try:
            await held.stream.write(payload)
        except ShoalError:
            held.write_done = True
            self._settle(stream_id, held)
            raise
        finally:
            held.writing, held.in_hand = False, 0

    async def end(self, stream_id: int) -> None:
        """End writing; answers once the peer acknowledged every byte."""
        held = self._own(stream_id)
        if held.write_done:
            return
        held.write_done = True
        try:
            await held.stream.close()
        finally:
            self._settle(stream_id, held)

    async def reset(self, stream_id: int) -> None:
        """Abandon writing at once."""
        held = self._own(stream_id)
        if not held.write_done:
            held.write_done = True
            held.stream.reset(0)
            self._settle(stream_id, held)

    async def stop(self, stream_id: int) -> None:
        """Read no more: the peer is asked to stop sending."""
        held = self._own(stream_id)
        if not held.read_done:
            held.read_done = True
            held.stream.stop(0)
            self._settle(stream_id, held)

    async def release(self, stream_id: int) -> None:
        """Let go of the stream both ways."""
        held = self._own(stream_id)
        held.page.drop(_StreamKey(stream_id))
        self._abandon(stream_id)

    async def info(self, stream_id: int) -> dict[str, int]:
        """What the host holds for the stream: ``readable`` bytes received and not yet
        read by the page, ``buffered`` bytes written and not yet acknowledged, and
        ``inHand`` bytes of a write waiting for room."""
        held = self._own(stream_id)
        return {**self._held_bytes(held), "inHand": held.in_hand}

    def _held_bytes(self, held: _PageStream) -> dict[str, int]:
        assert self.node is not None
        try:
            found = self.node.call("streams", "info", held.stream.handle)
        except ShoalError:  # gone from the node: it holds nothing for it
            return {"readable": 0, "buffered": 0}
        return {"readable": found["readable"], "buffered": found["buffered"]}

    def held_bytes(self) -> int:
        """Bytes the host holds for all pages' streams (for tests and the inspector)."""
        return sum(sum(self._held_bytes(h).values()) + h.in_hand
                   for h in self._streams.values())

    def close(self) -> None:
        for stream_id in list(self._streams):
            self._abandon(stream_id)
        for name in list(self._shared):
            shared = self._shared.pop(name)
            shared.channel.close()
            for task in shared.tasks:
                task.cancel()


@dataclass(frozen=True)
class _ChannelKey:
    name: str


@dataclass(frozen=True)
class _StreamKey:
    stream_id: int
