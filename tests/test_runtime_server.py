"""The loopback HTTP/WebSocket server under the app server, spoken to byte by byte."""

from __future__ import annotations

import asyncio
import contextvars
import os
from collections.abc import AsyncIterator, Coroutine
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from shoal.net import bind_listener
from shoal.runtime.eager import start_eagerly
from shoal.runtime.server import (
    LoopbackServer,
    Request,
    Response,
    WebSocket,
    WebSocketAccept,
)


class Echo:
    """A WebSocket session that answers each message with itself, marked by kind."""

    def __init__(self, ws: WebSocket, closed: list[bool]) -> None:
        self.ws = ws
        self._closed = closed

    def message(self, data: bytes | str) -> None:
        if isinstance(data, str):
            self.ws.send_text("text:" + data)
        else:
            self.ws.send_bytes(b"bytes:" + data)

    def closed(self) -> None:
        self._closed.append(True)


class Served:
    def __init__(self, tmp: Path) -> None:
        self.big = tmp / "big.bin"
        self.big.write_bytes(os.urandom(5 << 20))
        self.closed: list[bool] = []
        self.seen: list[Request] = []
        self.port = 0

    def handle(self, request: Request) -> Response | WebSocketAccept:
        self.seen.append(request)
        if request.path == "/ws":
            return WebSocketAccept(lambda ws: Echo(ws, self.closed), max_message=1 << 16)
        if request.path == "/big":
            return Response(file=self.big, headers={"Content-Type": "application/octet-stream"})
        if request.path == "/gone":
            return Response(file=self.big.with_name("missing"))
        if request.path == "/boom":
            raise ValueError("a bug in a handler")
        return Response.text(200, f"{request.method} {request.path} {request.query}\n")


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    state = Served(tmp_path)
    server = LoopbackServer(state.handle)
    listener = bind_listener()
    state.port = listener.getsockname()[1]
    await server.start(listener)
    yield state
    await server.close()


async def exchange(port: int, raw: bytes) -> bytes:
    """Send ``raw`` and read until the server closes or goes quiet."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    chunks = []
    try:
        while chunk := await asyncio.wait_for(reader.read(1 << 20), 0.5):
            chunks.append(chunk)
    except TimeoutError:
        pass
    writer.close()
    return b"".join(chunks)


def get(path: str, extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: h\r\n{extra}\r\n".encode()


async def test_pipelined_requests_are_answered_in_order(served: Served) -> None:
    ranged = get("/big", "Range: bytes=0-9\r\n")
    reply = await exchange(served.port, get("/a?x=1") + get("/b%20c") + ranged)
    assert reply.count(b"HTTP/1.1 200 OK") == 2 and b"HTTP/1.1 206" in reply
    assert reply.index(b"GET /a {'x': '1'}") < reply.index(b"GET /b c {}")
    assert reply.endswith(served.big.read_bytes()[:10])


async def test_file_ranges(served: Served) -> None:
    data = served.big.read_bytes()
    size = len(data)
    cases = {
        "bytes=10-19": (206, data[10:20], f"bytes 10-19/{size}"),
        f"bytes={size - 5}-": (206, data[-5:], f"bytes {size - 5}-{size - 1}/{size}"),
        "bytes=-7": (206, data[-7:], f"bytes {size - 7}-{size - 1}/{size}"),
        f"bytes={size}-": (416, b"", f"bytes */{size}"),
        "bytes=0-1,4-5": (200, data, None),  # several ranges: the whole file
    }
    for header, (status, body, content_range) in cases.items():
        ask = get("/big", f"Range: {header}\r\nConnection: close\r\n")
        reply = await exchange(served.port, ask)
        head, _, got = reply.partition(b"\r\n\r\n")
        assert head.startswith(f"HTTP/1.1 {status}".encode()), header
        assert got == body, header
        if content_range:
            assert f"content-range: {content_range}".encode() in head.lower()


async def no_sendfile(*args: object, **kwargs: object) -> int:
    raise NotImplementedError  # as on uvloop


async def test_files_are_copied_where_the_loop_has_no_sendfile(
        served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(type(asyncio.get_running_loop()), "sendfile", no_sendfile)
    data = served.big.read_bytes()
    reply = await exchange(served.port, get("/big", "Connection: close\r\n")
                           + get("/big", "Range: bytes=3-70000\r\n"))
    assert reply.partition(b"\r\n\r\n")[2] == data
    reply = await exchange(served.port, get("/big", "Range: bytes=3-70000\r\n"))
    assert reply.partition(b"\r\n\r\n")[2] == data[3:70001]


@pytest.mark.parametrize("sendfile", [True, False])
async def test_a_file_goes_out_whole_after_the_client_stops_sending(
        served: Served, monkeypatch: pytest.MonkeyPatch, sendfile: bool) -> None:
    if not sendfile:
        monkeypatch.setattr(type(asyncio.get_running_loop()), "sendfile", no_sendfile)
    reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    writer.write(get("/big"))
    writer.write_eof()  # half-close: the answer must still come, then the connection ends
    reply = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert reply.partition(b"\r\n\r\n")[2] == served.big.read_bytes()


async def test_a_silent_http_connection_is_closed_and_a_websocket_is_not(
        served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(LoopbackServer, "idle_timeout", 0.3)
    reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    writer.write(b"GET / HTTP/1.1\r\nHost: h\r\n")  # and then nothing
    assert await asyncio.wait_for(reader.read(), 3) == b""  # closed without an answer
    writer.close()
    async with connect(f"ws://127.0.0.1:{served.port}/ws", proxy=None,
                       ping_interval=None) as ws:
        await asyncio.sleep(0.8)
        await ws.send("still here")
        assert await ws.recv() == "text:still here"


async def test_head_and_methods(served: Served) -> None:
    head = b"HEAD /big HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
    reply = await exchange(served.port, head)
    assert reply.startswith(b"HTTP/1.1 200") and reply.endswith(b"\r\n\r\n")
    assert f"content-length: {5 << 20}".encode() in reply.lower()
    post = b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nhi"
    reply = await exchange(served.port, post)
    assert reply.startswith(b"HTTP/1.1 405")
    assert all(r.method != "POST" for r in served.seen)  # never reached the handler


async def test_bad_input_gets_an_http_error(served: Served) -> None:
    assert (await exchange(served.port, b"NONSENSE\r\n\r\n")).startswith(b"HTTP/1.1 400")
    huge = b"GET / HTTP/1.1\r\nHost: h\r\nX: " + b"a" * (64 << 10)  # a head without end
    assert (await exchange(served.port, huge)).startswith(b"HTTP/1.1 400")
    body = b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 100000\r\n\r\n" + b"a" * 100000
    assert (await exchange(served.port, body)).startswith(b"HTTP/1.1 413")
    assert (await exchange(served.port, get("/boom"))).startswith(b"HTTP/1.1 500")
    assert (await exchange(served.port, get("/gone"))).startswith(b"HTTP/1.1 404")
    # ... and the server still serves.
    assert b"GET /ok" in await exchange(served.port, get("/ok"))


async def test_websocket_messages_fragments_and_close(served: Served) -> None:
    async with connect(f"ws://127.0.0.1:{served.port}/ws", proxy=None) as ws:
        await ws.send("hello")
        assert await ws.recv() == "text:hello"
        await ws.send(b"\x00\x01")
        assert await ws.recv() == b"bytes:\x00\x01"
        await ws.send(["frag", "mented"])  # one message in three frames
        assert await ws.recv() == "text:fragmented"
        await ws.send(b"x" * (1 << 17))  # over max_message: the server closes with 1009
        with pytest.raises(Exception) as info:
            await asyncio.wait_for(ws.recv(), 2)
        assert "1009" in str(info.value)
    for _ in range(50):
        if served.closed:
            break
        await asyncio.sleep(0.02)
    assert served.closed == [True]


UPGRADE = ("Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
           "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n")


def client_frame(opcode: int, payload: bytes) -> bytes:
    """One masked, final frame as a browser sends it (payloads under 126 bytes)."""
    mask = b"\x01\x02\x03\x04"
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked


def server_frames(data: bytes) -> list[tuple[int, bool, bytes]]:
    """(opcode, fin, payload) of each unmasked frame in ``data``."""
    frames = []
    while data:
        length, at = data[1] & 0x7F, 2
        if length == 126:
            length, at = int.from_bytes(data[2:4]), 4
        elif length == 127:
            length, at = int.from_bytes(data[2:10]), 10
        frames.append((data[0] & 0x0F, bool(data[0] & 0x80), data[at:at + length]))
        data = data[at + length:]
    return frames


async def websocket_exchange(port: int, *frames: bytes) -> list[tuple[int, bool, bytes]]:
    reply = await exchange(port, get("/ws", UPGRADE) + b"".join(frames))
    head, _, rest = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101")
    assert b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in head  # the RFC 6455 example's answer
    return server_frames(rest)


async def test_websocket_ping_bad_text_and_the_peers_close(served: Served) -> None:
    frames = await websocket_exchange(served.port, client_frame(0x9, b"are you there"),
                                      client_frame(0x1, b"ok"))
    assert frames == [(0xA, True, b"are you there"), (0x1, True, b"text:ok")]
    # Text that is not UTF-8 fails the connection with 1007, and nothing is delivered.
    frames = await websocket_exchange(served.port, client_frame(0x1, b"\xff\xfe"),
                                      client_frame(0x1, b"after"))
    assert [(op, payload[:2]) for op, _, payload in frames] == [(0x8, (1007).to_bytes(2))]
    # The peer's close is answered with its code, and then the server ends TCP.
    reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    writer.write(get("/ws", UPGRADE) + client_frame(0x8, (1000).to_bytes(2)))
    reply = await asyncio.wait_for(reader.read(), 3)  # to the server's end of the stream
    writer.close()
    assert server_frames(reply.partition(b"\r\n\r\n")[2]) == [(0x8, True, (1000).to_bytes(2))]


async def test_large_and_empty_binary_messages_arrive_whole(tmp_path: Path) -> None:
    sessions: list[WebSocket] = []

    class Keep:
        def __init__(self, ws: WebSocket) -> None:
            sessions.append(ws)

        def message(self, data: bytes | str) -> None:
            pass

        def closed(self) -> None:
            pass

    server = LoopbackServer(lambda request: WebSocketAccept(Keep))
    listener = bind_listener()
    await server.start(listener)
    try:
        async with connect(f"ws://127.0.0.1:{listener.getsockname()[1]}/", proxy=None,
                           max_size=None) as ws:
            for _ in range(100):
                if sessions:
                    break
                await asyncio.sleep(0.01)
            data = os.urandom((3 << 20) + 5)
            sessions[0].send_bytes(bytearray(data))
            sessions[0].send_bytes(b"")
            assert await ws.recv() == data
            assert await ws.recv() == b""
    finally:
        await server.close()


async def test_websocket_handshake_is_checked(served: Served) -> None:
    reply = await exchange(served.port, get("/ws", "Connection: Upgrade\r\nUpgrade: websocket\r\n"))
    assert reply.startswith(b"HTTP/1.1 400")  # no key, no version
    with pytest.raises(InvalidStatus):
        async with connect(f"ws://127.0.0.1:{served.port}/plain", proxy=None):
            pass


async def start_from_callback(coroutine: Coroutine[Any, Any, None]) -> asyncio.Task[None] | None:
    """``start_eagerly`` as the bridge calls it: from a plain callback of the loop."""
    loop = asyncio.get_running_loop()
    started: asyncio.Future[asyncio.Task[None] | None] = loop.create_future()
    loop.call_soon(lambda: started.set_result(start_eagerly(loop, coroutine)))
    return await started


async def test_calls_start_eagerly_as_tasks() -> None:
    log: list[str] = []
    name: contextvars.ContextVar[str] = contextvars.ContextVar("name", default="unset")

    async def at_once() -> None:
        log.append(f"at once, in a task: {asyncio.current_task() is not None}")
        name.set("at once")

    async def waits(future: asyncio.Future[int]) -> None:
        name.set("waits")
        try:
            async with asyncio.timeout(5):  # needs a current task from the first step on
                log.append(f"got {await future}")
                await asyncio.sleep(0)
                await asyncio.to_thread(lambda: None)
            log.append(f"after, as {name.get()}")
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            log.append("cancelled")
            raise

    assert await start_from_callback(at_once()) is None  # answered in that same turn
    assert log == ["at once, in a task: True"] and name.get() == "unset"
    future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = await start_from_callback(waits(future))
    assert task is not None and log == ["at once, in a task: True"]
    future.set_result(7)
    for _ in range(50):
        await asyncio.sleep(0.01)
        if len(log) == 3:
            break
    assert log[1:] == ["got 7", "after, as waits"] and name.get() == "unset"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert log[-1] == "cancelled"


async def test_an_eager_call_cancelled_or_failing_at_once() -> None:
    log: list[str] = []

    async def waits_forever() -> None:
        try:
            await asyncio.get_running_loop().create_future()
        except asyncio.CancelledError:
            log.append("cancelled")
            raise

    async def fails() -> None:
        raise ValueError("at once")

    task = await start_from_callback(waits_forever())
    assert task is not None
    task.cancel()  # before the task has taken a step of its own
    with pytest.raises(asyncio.CancelledError):
        await task
    assert log == ["cancelled"]
    for failing in (await start_from_callback(fails()),
                    start_eagerly(asyncio.get_running_loop(), fails())):  # inside a task
        assert failing is not None
        with pytest.raises(ValueError, match="at once"):
            await failing
