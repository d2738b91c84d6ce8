"""Throughput runs between two nodes, as iperf3 does: ``shoal perf`` against ``shoal listen``.

A run opens streams on the channel ``shoal/perf/1``. Each stream starts with a request,
``"SP1" | direction u8 (0: the opener sends, 1: it asks the server to send) | bytes
u64``, big-endian. The server answers ``status u8 | bytes u64``: status 0 accepts (for
a run towards it, once it has read everything, with the bytes it read); status 1
refuses a request that would take the runs it serves one peer at once beyond its limit
(1 GiB unless told otherwise), which it names. The bytes themselves are
zeros: Shoal encrypts them like anything else.

``serve_perf`` is the server side (``shoal listen`` runs it unless told not to), and
``run_perf`` the client's.
"""

from __future__ import annotations

import asyncio
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from shoal.errors import DeliveryError, LocalProtocolError, ShoalError

if TYPE_CHECKING:
    from shoal.aio.node import Node
    from shoal.aio.streams import Stream

PERF_CHANNEL = "shoal/perf/1"
DEFAULT_LIMIT = 1 << 30
"""The most bytes a server moves for one request (either way) unless told otherwise."""
MAX_STREAMS = 64
"""The most streams one run opens."""
_REQUEST = struct.Struct("!3sBQ")
_ANSWER = struct.Struct("!BQ")
_MAGIC = b"SP1"
_CHUNK = bytes(65536)
_SEND, _RECEIVE = 0, 1
_OK, _REFUSED = 0, 1


@dataclass(frozen=True, slots=True)
class PerfResult:
    """What a run measured: ``bytes`` moved in ``seconds`` over ``streams`` streams;
    the connection's smoothed round-trip time before the run (``idle_rtt_ms``) and at
    its end, loaded (``rtt_ms``: queues on the way lengthen it), and its path then."""

    peer_id: str
    bytes: int
    seconds: float
    streams: int
    reverse: bool
    rtt_ms: float | None
    path: str | None
    idle_rtt_ms: float | None = None

    @property
    def mbytes_per_s(self) -> float:
        """10^6 bytes a second."""
        return self.bytes / self.seconds / 1e6 if self.seconds > 0 else 0.0


async def _send(stream: Stream, size: int) -> None:
    view = memoryview(_CHUNK)
    while size > 0:
        step = min(size, len(_CHUNK))
        await stream.write(view[:step])
        size -= step


async def _receive(stream: Stream, most: int | None = None) -> int:
    """Read ``stream`` to its end (or past ``most`` bytes, then ask for no more): how
    many bytes came."""
    count = 0
    while chunk := await stream.read(1 << 20):
        count += len(chunk)
        if most is not None and count > most:
            stream.stop(3)
            break
    return count


async def serve_perf(node: Node, *, limit: int = DEFAULT_LIMIT) -> None:
    """Answer perf runs on ``node`` until it (or the channel) closes: take what is sent,
    send what is asked, refusing what would make one peer's runs in progress move more
    than ``limit`` bytes (either way) together."""
    channel = node.channel(PERF_CHANNEL)
    tasks: set[asyncio.Task[None]] = set()
    taken: dict[str, int] = {}
    try:
        async for stream in channel.streams():
            task = asyncio.get_running_loop().create_task(_serve_one(stream, limit, taken))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
    finally:
        channel.close()
        for task in tasks:
            task.cancel()


async def _serve_one(stream: Stream, limit: int, taken: dict[str, int]) -> None:
    """One stream of a run; ``taken`` holds the bytes each peer's runs in progress
    asked for, which stay within ``limit`` together."""
    held = 0
    try:
        try:
            magic, direction, size = _REQUEST.unpack(await stream.readexactly(_REQUEST.size))
        except asyncio.IncompleteReadError:
            stream.reset(2)
            return
        if magic != _MAGIC or direction not in (_SEND, _RECEIVE):
            stream.reset(2)
            return
        peer = stream.peer_id
        if taken.get(peer, 0) + size > limit:
            stream.stop(3)  # read nothing of it
            await stream.write(_ANSWER.pack(_REFUSED, limit))
            await stream.close()
            return
        taken[peer] = taken.get(peer, 0) + size
        held = size
        if direction == _SEND:  # the peer sends: count what arrives, then say how much
            received = await _receive(stream, most=size)
            await stream.write(_ANSWER.pack(_OK, received))
        else:
            await stream.write(_ANSWER.pack(_OK, size))
            await _send(stream, size)
        await stream.close()
    except ShoalError:
        stream.reset(1)  # the peer went away or broke the exchange: nothing to tell
    finally:
        if held:
            taken[stream.peer_id] -= held
            if not taken[stream.peer_id]:
                del taken[stream.peer_id]


async def run_perf(node: Node, peer_id: str, size: int, *, streams: int = 1,
                   reverse: bool = False) -> PerfResult:
    """Move ``size`` bytes to ``peer_id`` (from it with ``reverse``) over ``streams``
    streams on the connection to it, which must be up (``Node.connect`` or
    ``Node.reach``); returns what was measured. ``ENOPROTOOPT`` if the peer answers no
    perf runs, ``EPERM`` if it refuses one this large."""
    if not 1 <= streams <= MAX_STREAMS:
        raise LocalProtocolError(f"a run uses 1 to {MAX_STREAMS} streams")
    if size < 0:
        raise LocalProtocolError("a run moves zero bytes or more")
    shares = [size // streams + (1 if n < size % streams else 0) for n in range(streams)]
    idle = _rtt_ms(node, peer_id)
    opened = [await node.open_stream(peer_id, PERF_CHANNEL, timeout=10) for _ in shares]
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        counts = await asyncio.gather(*(
            _one_run(stream, share, reverse) for stream, share in zip(opened, shares,
                                                                      strict=True)))
    except BaseException:
        for stream in opened:
            stream.reset(1)
        raise
    seconds = loop.time() - started
    moved = sum(counts)
    if moved != size:
        raise DeliveryError(f"the run moved {moved} bytes of {size}", code="EIO")
    peer = next((p for p in node.peers() if p.peer_id == peer_id), None)
    return PerfResult(peer_id=peer_id, bytes=moved, seconds=seconds, streams=streams,
                      reverse=reverse, rtt_ms=_rtt_ms(node, peer_id),
                      path=peer.path if peer is not None else None, idle_rtt_ms=idle)


def _rtt_ms(node: Node, peer_id: str) -> float | None:
    peer = next((p for p in node.peers() if p.peer_id == peer_id), None)
    return None if peer is None or peer.rtt is None else peer.rtt * 1000


async def _one_run(stream: Stream, size: int, reverse: bool) -> int:
    try:
        await stream.write(_REQUEST.pack(_MAGIC, _RECEIVE if reverse else _SEND, size))
        if reverse:
            counted = await _answer(stream)
            received = await _receive(stream)
            await stream.close()
            if received != counted:
                raise DeliveryError(f"the peer sent {received} bytes of {counted}",
                                    code="EIO")
            return received
        try:
            await _send(stream, size)
            await stream.close()
        except DeliveryError as exc:
            if exc.code != "EPIPE":
                raise
            await _answer(stream)  # the peer refused the run: its answer says why
            raise
        return await _answer(stream)
    except DeliveryError as exc:
        if exc.code == "ENOPROTOOPT":
            raise DeliveryError(f"{stream.peer_id} answers no perf runs (shoal listen "
                                "answers them)", code="ENOPROTOOPT") from None
        raise


async def _answer(stream: Stream) -> int:
    try:
        status, value = _ANSWER.unpack(await stream.readexactly(_ANSWER.size))
    except asyncio.IncompleteReadError:
        raise DeliveryError("the peer ended the run without an answer",
                            code="ECONNRESET") from None
    if status == _REFUSED:
        raise DeliveryError(f"the peer takes perf runs of at most {value} bytes at once",
                            code="EPERM")
    if status != _OK:
        raise DeliveryError(f"the peer answered the run with status {status}", code="EIO")
    return value
