"""Files shared and fetched by content: ``Node.share``, ``Node.fetch`` and their kin.

A shared file is hashed once into a BLAKE3 tree (``shoal.core.blobs``) and served by its
root hash. A fetch asks every provider of its ticket for pieces at once
(``shoal.core.fetchplan``), checks each piece against the root as it arrives, and writes
it into ``NAME.part``; the pieces held are recorded in ``NAME.part.state``, so a fetch
run again after either side was killed takes only what is missing. The file gets its
final name only once every piece of ``NAME.part`` hashes to the root again.

The protocol runs on the channel ``shoal/blobs/1`` through a ``BlobTransport``: today
acknowledged channel messages (one piece of 256 KiB per message, under the channel's
flow control); the same requests and answers can move onto a stream.

Messages (integers big-endian)::

    REQUEST    0x01  request id (4)  root (32)  piece (8)
    PIECE      0x02  request id (4)  piece (8)  proof hashes (1)  proof  data
    REFUSED    0x03  request id (4)  reason (1): 1 not shared here, 2 busy
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import secrets
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, Protocol

from shoal.core.blobs import (
    HASH_SIZE,
    HashTree,
    Provider,
    Ticket,
    VerificationError,
    piece_count,
    piece_level,
    piece_span,
    subtree_hash,
    verify_piece,
)
from shoal.core.fetchplan import Bitmap, FetchPlan, PeerState
from shoal.errors import (
    ClosedError,
    LocalProtocolError,
    RemoteProtocolError,
    ShoalError,
    os_error_code,
)

if TYPE_CHECKING:
    from shoal.aio.node import Node
    from shoal.core.wire import Address

__all__ = ["BlobTransport", "ChannelTransport", "FetchError", "FetchProgress",
           "FetchResult", "FileService", "SharedFile"]

CHANNEL = "shoal/blobs/1"
REQUEST, PIECE, REFUSED = 1, 2, 3
NOT_SHARED, BUSY = 1, 2
SERVE_PER_PEER = 8
"""Pieces one peer may have this node read and send at once; more are refused as busy."""
SERVE_TOTAL = 32
"""Pieces being sent to all peers at once (so at most 8 MiB held for sending)."""
REFUSE_PER_PEER = 64
"""Refusals one peer may have waiting for its acknowledgement; requests beyond them are
dropped unanswered (a peer that asks without reading cannot make this node queue more)."""
STATE_MAGIC = b"SHOALPT1"
STATE_HEADER = struct.Struct("!8s32sQ")
_REQUEST = struct.Struct("!BI32sQ")
_PIECE = struct.Struct("!BIQB")
_REFUSED = struct.Struct("!BIB")


class FetchError(ShoalError):
    """A fetch could not finish (no provider left, the target exists...). What was
    fetched stays in ``NAME.part`` and a later fetch resumes it."""

    default_code = "EHOSTUNREACH"


# ---------------------------------------------------------------------- transport


class BlobTransport(Protocol):
    """How the blob protocol reaches peers: acknowledged messages to and from them."""

    def send(self, peer_id: str, data: bytes) -> asyncio.Future[object]:
        """Send ``data``; the future resolves when the peer acknowledged it, or fails
        with ``DeliveryError``."""
        ...

    async def receive(self) -> tuple[str, bytes]:
        """The next (sender, data); raises ``ClosedError`` once closed."""
        ...

    def close(self) -> None: ...


class ChannelTransport:
    """``BlobTransport`` on a node's channel ``shoal/blobs/1``."""

    def __init__(self, node: Node) -> None:
        self._node = node
        self._channel = node.channel(CHANNEL)

    def send(self, peer_id: str, data: bytes) -> asyncio.Future[object]:
        return self._channel.send_nowait(peer_id, data)  # type: ignore[return-value]

    async def receive(self) -> tuple[str, bytes]:
        message = await self._channel.receive()
        return message.sender, message.data

    def close(self) -> None:
        self._channel.close()


# ---------------------------------------------------------------------- messages


def encode_request(request_id: int, root: bytes, piece: int) -> bytes:
    return _REQUEST.pack(REQUEST, request_id, root, piece)


def encode_piece(request_id: int, piece: int, proof: bytes, data: bytes | memoryview) -> bytes:
    return b"".join((_PIECE.pack(PIECE, request_id, piece, len(proof) // HASH_SIZE),
                     proof, data))


def encode_refused(request_id: int, reason: int) -> bytes:
    return _REFUSED.pack(REFUSED, request_id, reason)


class Request(NamedTuple):
    request_id: int
    piece: int
    root: bytes


@dataclass(frozen=True, slots=True)
class _Answer:
    kind: int
    request_id: int
    piece: int = 0
    proof: bytes = b""
    data: memoryview = field(default_factory=lambda: memoryview(b""))
    reason: int = 0


def decode(data: bytes) -> Request | _Answer:
    """A request or an answer; raises only ``RemoteProtocolError``."""
    if not data:
        raise RemoteProtocolError("an empty blob message")
    kind = data[0]
    try:
        if kind == REQUEST:
            if len(data) != _REQUEST.size:
                raise RemoteProtocolError("a blob request of the wrong length")
            _, request_id, root, piece = _REQUEST.unpack(data)
            return Request(request_id, piece, root)
        if kind == PIECE:
            _, request_id, piece, hashes = _PIECE.unpack_from(data)
            start = _PIECE.size + hashes * HASH_SIZE
            if len(data) < start:
                raise RemoteProtocolError("a piece cut short in its proof")
            view = memoryview(data)
            return _Answer(PIECE, request_id, piece, bytes(view[_PIECE.size:start]),
                           view[start:])
        if kind == REFUSED:
            _, request_id, reason = _REFUSED.unpack(data)
            return _Answer(REFUSED, request_id, reason=reason)
    except struct.error:
        raise RemoteProtocolError("a blob message cut short") from None
    raise RemoteProtocolError(f"an unknown blob message kind {kind}")


# ---------------------------------------------------------------------- sharing


@dataclass(slots=True)
class SharedFile:
    """A file this node serves."""

    path: Path
    ticket: Ticket
    tree: HashTree = field(repr=False)
    served: int = 0
    """Pieces sent."""
    served_bytes: int = 0
    peers: set[str] = field(default_factory=set)
    """Peers it was sent to."""
    _fd: int = field(default=-1, repr=False)

    @property
    def root(self) -> bytes:
        return self.ticket.root

    @property
    def size(self) -> int:
        return self.ticket.size


@dataclass(frozen=True, slots=True)
class FetchProgress:
    """Where a fetch is, given to its ``progress`` callback after each verified piece."""

    bytes: int
    """Verified bytes held (including those from an earlier, interrupted fetch)."""
    size: int
    peers: int
    """Providers still asked."""
    resumed: int
    """Bytes that were held already when this fetch started."""
    corrupt: int
    """Pieces that failed verification so far (their providers were dropped)."""


@dataclass(frozen=True, slots=True)
class FetchResult:
    """What ``Node.fetch`` did."""

    path: Path
    size: int
    fetched: int
    """Pieces fetched and verified by this call."""
    fetched_bytes: int
    resumed: int
    """Pieces held from an earlier fetch."""
    requested: int
    """Requests sent (more than ``fetched`` after failures)."""
    seconds: float
    providers: dict[str, dict[str, object]]
    """Per provider: pieces, corrupt, state, reason."""


class FileService:
    """The shares and fetches of one node (``Node.share`` and ``Node.fetch`` use it)."""

    def __init__(self, node: Node, transport: BlobTransport | None = None) -> None:
        self._node = node
        self._transport = transport or ChannelTransport(node)
        self._shares: dict[bytes, SharedFile] = {}
        self._serving: dict[str, int] = {}
        self._refusing: dict[str, int] = {}
        self._serving_total = 0
        self._fetches: dict[tuple[str, int], asyncio.Queue[tuple[str, _Answer | None]]] = {}
        # Ids start anywhere, so that answers meant for an earlier run of a node with the
        # same identity (delivered to this one after a restart) match nothing.
        self._next_request = secrets.randbits(32)
        self.stats: dict[str, int] = {"malformed": 0, "unasked": 0, "busy": 0,
                                      "not_shared": 0, "unanswered": 0, "served": 0,
                                      "corrupt": 0}
        """Messages dropped (malformed, answers to nothing asked), requests refused (and
        dropped unanswered), pieces served, and pieces received that failed verification."""
        self._running: set[_Fetch] = set()
        loop = asyncio.get_running_loop()
        self._events = node.subscribe()
        self._tasks = [loop.create_task(self._dispatch()), loop.create_task(self._watch())]

    # ------------------------------------------------------------------ sharing

    async def share(self, path: str | os.PathLike[str]) -> Ticket:
        """Hash the file at ``path`` and serve it; returns its ticket."""
        target = Path(path)
        try:
            fd = os.open(target, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO must not block
        except OSError as exc:
            raise LocalProtocolError(f"{target}: cannot read ({exc.strerror})",
                                     code=os_error_code(exc)) from None
        try:
            info = os.fstat(fd)
            if not _is_regular(info.st_mode):
                raise LocalProtocolError(f"{target}: not a regular file", code="EISDIR")
            size = info.st_size
            nodes = bytearray()
            level = piece_level(size)
            for index in range(piece_count(size)):
                offset, length = piece_span(size, index)
                data = os.pread(fd, length, offset)
                nodes += subtree_hash(size, level, index, data)
                if index % 64 == 63:
                    await asyncio.sleep(0)
            tree = HashTree(size, nodes)
        except OSError as exc:
            os.close(fd)
            raise LocalProtocolError(f"{target}: cannot read ({exc.strerror})",
                                     code=os_error_code(exc)) from None
        except BaseException:
            os.close(fd)
            raise
        name = target.name if len(target.name.encode()) <= 255 else ""
        ticket = Ticket(tree.root, size, (Provider(self._node.peer_id,
                                                   tuple(self._addresses())),), name=name)
        old = self._shares.pop(tree.root, None)
        if old is not None:
            os.close(old._fd)
        self._shares[tree.root] = SharedFile(target.resolve(), ticket, tree, _fd=fd)
        return ticket

    def _addresses(self) -> list[Address]:
        from shoal.net import local_addresses

        seen: list[Address] = []
        candidates = [*self._node.public_addresses().values()]
        try:
            candidates += local_addresses(self._node.address)
        except (OSError, ImportError, ValueError):  # no interface list: the peer id will do
            candidates.append(self._node.address)
        for address in candidates:
            if address not in seen and len(seen) < 4:
                seen.append(address)
        return seen

    def unshare(self, ticket: Ticket | str | bytes) -> bool:
        """Stop serving a blob (given by ticket, its text or its root); whether it was."""
        root = _root_of(ticket)
        shared = self._shares.pop(root, None)
        if shared is None:
            return False
        os.close(shared._fd)
        return True

    def files(self) -> list[SharedFile]:
        return list(self._shares.values())

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        self._events.close()
        for shared in self._shares.values():
            os.close(shared._fd)
        self._shares.clear()
        with contextlib.suppress(ShoalError):
            self._transport.close()
        for queue in self._fetches.values():
            queue.put_nowait(("", None))

    # ------------------------------------------------------------------ dispatch

    async def _watch(self) -> None:
        """A provider's connection that ends re-plans the fetches that use it."""
        from shoal.core.events import PeerDisconnected

        async for event in self._events:
            if isinstance(event, PeerDisconnected):
                for running in self._running:
                    running.lost(event.peer_id)

    async def _dispatch(self) -> None:
        while True:
            try:
                sender, data = await self._transport.receive()
            except ClosedError:
                for queue in self._fetches.values():
                    queue.put_nowait(("", None))
                return
            try:
                message = decode(data)
            except RemoteProtocolError:
                self.stats["malformed"] += 1
                continue
            if isinstance(message, Request):
                self._serve(sender, message.request_id, message.root, message.piece)
                continue
            queue = self._fetches.get((sender, message.request_id))
            if queue is None:
                self.stats["unasked"] += 1
                continue
            queue.put_nowait((sender, message))

    def _serve(self, peer_id: str, request_id: int, root: bytes, piece: int) -> None:
        shared = self._shares.get(root)
        if shared is None or not 0 <= piece < piece_count(shared.size):
            self.stats["not_shared"] += 1
            self._refuse(peer_id, request_id, NOT_SHARED)
            return
        if self._serving.get(peer_id, 0) >= SERVE_PER_PEER or \
                self._serving_total >= SERVE_TOTAL:
            self.stats["busy"] += 1
            self._refuse(peer_id, request_id, BUSY)
            return
        offset, length = piece_span(shared.size, piece)
        try:
            data = os.pread(shared._fd, length, offset)
            if subtree_hash(shared.size, shared.tree.base, piece, data) != \
                    shared.tree.node(shared.tree.base, piece):
                raise VerificationError("changed")
        except (OSError, VerificationError):
            # The file changed since it was shared: serve it no more.
            self.unshare(root)
            self._refuse(peer_id, request_id, NOT_SHARED)
            return
        shared.served += 1
        shared.served_bytes += length
        shared.peers.add(peer_id)
        self.stats["served"] += 1
        self._serving[peer_id] = self._serving.get(peer_id, 0) + 1
        self._serving_total += 1
        future = self._reply(peer_id, encode_piece(request_id, piece,
                                                   shared.tree.piece_proof(piece), data))

        def sent(_: object) -> None:
            self._serving_total -= 1
            left = self._serving[peer_id] - 1
            if left:
                self._serving[peer_id] = left
            else:
                del self._serving[peer_id]

        if future is None:
            sent(None)
        else:
            future.add_done_callback(sent)

    def _refuse(self, peer_id: str, request_id: int, reason: int) -> None:
        """Refuse a request, unless the peer has too many refusals unacknowledged."""
        if self._refusing.get(peer_id, 0) >= REFUSE_PER_PEER:
            self.stats["unanswered"] += 1
            return
        future = self._reply(peer_id, encode_refused(request_id, reason))
        if future is None:
            return
        self._refusing[peer_id] = self._refusing.get(peer_id, 0) + 1

        def sent(_: object) -> None:
            left = self._refusing[peer_id] - 1
            if left:
                self._refusing[peer_id] = left
            else:
                del self._refusing[peer_id]

        future.add_done_callback(sent)

    def _reply(self, peer_id: str, data: bytes) -> asyncio.Future[object] | None:
        try:
            future = self._transport.send(peer_id, data)
        except ShoalError:
            return None
        future.add_done_callback(_consume)
        return future

    # ------------------------------------------------------------------ fetching

    async def fetch(self, ticket: Ticket | str, path: str | os.PathLike[str], *,
                    progress: Callable[[FetchProgress], object] | None = None,
                    per_peer: int = 4, request_timeout: float = 30.0) -> FetchResult:
        """Fetch the blob of ``ticket`` into ``path``; see ``Node.fetch``."""
        if isinstance(ticket, str):
            ticket = Ticket.parse(ticket)
        if not isinstance(ticket, Ticket):
            raise LocalProtocolError("fetch takes a Ticket or a ticket's text")
        target = Path(path)
        if target.is_dir():
            raise LocalProtocolError(f"{target}: is a folder", code="EISDIR")
        if not target.parent.is_dir():
            raise LocalProtocolError(f"{target.parent}: no such folder", code="ENOENT")
        if target.exists():
            raise FetchError(f"{target}: exists already", code="EEXIST")
        providers = [p for p in ticket.providers if p.peer_id != self._node.peer_id]
        if not providers:
            raise FetchError("the ticket names no provider but this node", code="EINVAL")
        for provider in providers:
            for address in provider.addresses:
                with contextlib.suppress(ShoalError):
                    self._node.add_peer_address(provider.peer_id, address)
        _check_room(target, ticket.size)
        partial = _Partial.open(target, ticket)
        try:
            return await _Fetch(self, ticket, partial, providers, progress, per_peer,
                                request_timeout).run()
        except FetchError:
            if not len(partial.have):  # nothing to resume: leave no files behind
                partial.discard()
            raise
        finally:
            partial.close()

    def _request_id(self) -> int:
        self._next_request = self._next_request % 0xFFFFFFFF + 1
        return self._next_request


def _check_room(target: Path, size: int) -> None:
    """Refuse at once a fetch whose file cannot fit where it goes (what an earlier
    fetch of it holds there counts as room)."""
    try:
        info = os.statvfs(target.parent)
    except OSError:  # no figures here: the writes will say
        return
    try:
        held = os.stat(_part_path(target)).st_blocks * 512
    except OSError:
        held = 0
    free = info.f_bavail * info.f_frsize
    if size > free + held:
        raise FetchError(f"{target}: {size} bytes do not fit in the {free} bytes free "
                         "there", code="ENOSPC")


def _consume(future: asyncio.Future[object]) -> None:
    if not future.cancelled():
        future.exception()


def _is_regular(mode: int) -> bool:
    import stat

    return stat.S_ISREG(mode)


def _root_of(ticket: Ticket | str | bytes) -> bytes:
    if isinstance(ticket, Ticket):
        return ticket.root
    if isinstance(ticket, bytes) and len(ticket) == HASH_SIZE:
        return ticket
    if isinstance(ticket, str):
        return Ticket.parse(ticket).root
    raise LocalProtocolError("give a Ticket, a ticket's text or a 32-byte root hash")


class _Partial:
    """``NAME.part`` and ``NAME.part.state``: the bytes and which pieces are verified.

    The state file holds a header (magic, root, size), the bitmap, then each verified
    piece's hash, so the whole file is checked once more before it gets its name."""

    def __init__(self, target: Path, ticket: Ticket, fd: int, state_fd: int,
                 have: Bitmap, hashes: bytearray) -> None:
        self.target = target
        self.part = _part_path(target)
        self.state = _state_path(target)
        self.ticket = ticket
        self._fd = fd
        self._state_fd = state_fd
        self.have = have
        self.hashes = hashes

    @classmethod
    def open(cls, target: Path, ticket: Ticket) -> _Partial:
        pieces = piece_count(ticket.size)
        part, state = _part_path(target), _state_path(target)
        have, hashes = Bitmap(pieces), bytearray(pieces * HASH_SIZE)
        try:
            resumed = cls._read_state(state, ticket, pieces) if part.exists() else None
            if resumed is not None:
                have, hashes = resumed
            # Never through a link: the partial files are where the target's folder is.
            fd = os.open(part, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
            if not _is_regular(os.fstat(fd).st_mode):
                os.close(fd)
                raise FetchError(f"{part}: not a regular file", code="EEXIST")
            if os.fstat(fd).st_size != ticket.size:
                os.ftruncate(fd, ticket.size)
            state_fd = os.open(state, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
            try:
                fcntl.flock(state_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                os.close(state_fd)
                raise FetchError(f"{target}: another fetch is writing it", code="EBUSY"
                                 ) from None
        except OSError as exc:
            raise FetchError(f"{part}: cannot write ({exc.strerror})",
                             code=os_error_code(exc)) from None
        partial = cls(target, ticket, fd, state_fd, have, hashes)
        if resumed is None:
            partial._write_state()
        return partial

    @staticmethod
    def _read_state(state: Path, ticket: Ticket, pieces: int
                    ) -> tuple[Bitmap, bytearray] | None:
        """The pieces held by an earlier fetch of the same blob, or None."""
        try:
            fd = os.open(state, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            return None
        with os.fdopen(fd, "rb") as handle:
            raw = handle.read()
        bitmap_size = (pieces + 7) // 8
        if len(raw) != STATE_HEADER.size + bitmap_size + pieces * HASH_SIZE:
            return None
        magic, root, size = STATE_HEADER.unpack_from(raw)
        if magic != STATE_MAGIC or root != ticket.root or size != ticket.size:
            return None
        start = STATE_HEADER.size
        have = Bitmap(pieces, raw[start:start + bitmap_size])
        base = start + bitmap_size
        return have, bytearray(raw[base:])

    def _write_state(self) -> None:
        body = bytes(self.hashes)
        data = STATE_HEADER.pack(STATE_MAGIC, self.ticket.root, self.ticket.size) + \
            self.have.to_bytes() + body
        os.ftruncate(self._state_fd, len(data))
        os.pwrite(self._state_fd, data, 0)

    def write(self, piece: int, data: bytes | memoryview, node: bytes) -> None:
        """Store a verified piece: its bytes first, then its hash, then its bit, so
        a kill at any point leaves no bit set for a piece not written whole."""
        offset, _ = piece_span(self.ticket.size, piece)
        os.pwrite(self._fd, data, offset)
        bitmap_size = (self.have.count + 7) // 8
        os.pwrite(self._state_fd, node,
                  STATE_HEADER.size + bitmap_size + piece * HASH_SIZE)
        self.hashes[piece * HASH_SIZE:(piece + 1) * HASH_SIZE] = node
        self.have.add(piece)
        byte, value = self.have.byte_of(piece)
        os.pwrite(self._state_fd, bytes((value,)), STATE_HEADER.size + byte)

    def forget(self, piece: int) -> None:
        self.have.discard(piece)
        byte, value = self.have.byte_of(piece)
        os.pwrite(self._state_fd, bytes((value,)), STATE_HEADER.size + byte)

    def recheck(self) -> list[int]:
        """Hash every piece of the partial file again: the pieces that changed since
        they were verified (none, when the root matches)."""
        size = self.ticket.size
        level = piece_level(size)
        bad, nodes = [], bytearray()
        for index in range(self.have.count):
            offset, length = piece_span(size, index)
            node = subtree_hash(size, level, index, os.pread(self._fd, length, offset))
            nodes += node
            if node != self.hashes[index * HASH_SIZE:(index + 1) * HASH_SIZE]:
                bad.append(index)
        if not bad and HashTree(size, nodes).root != self.ticket.root:
            bad = list(range(self.have.count))  # pragma: no cover - hashes all matched
        return bad

    def finish(self) -> None:
        """Give the verified file its name; never replaces an existing file."""
        os.fsync(self._fd)
        try:
            os.link(self.part, self.target)
        except FileExistsError:
            raise FetchError(f"{self.target}: exists already; the fetched file is "
                             f"{self.part}", code="EEXIST") from None
        except OSError:  # no hard links here: a rename that checked first
            if self.target.exists():
                raise FetchError(f"{self.target}: exists already", code="EEXIST") from None
            os.rename(self.part, self.target)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.part)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.state)

    def discard(self) -> None:
        """Remove ``NAME.part`` and its state (they hold nothing worth resuming)."""
        for path in (self.part, self.state):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def close(self) -> None:
        for fd in (self._fd, self._state_fd):
            with contextlib.suppress(OSError):
                os.close(fd)


def _part_path(target: Path) -> Path:
    return target.with_name(target.name + ".part")


def _state_path(target: Path) -> Path:
    return target.with_name(target.name + ".part.state")


class _Fetch:
    """One running fetch: sends requests as the plan says and takes the answers."""

    def __init__(self, service: FileService, ticket: Ticket, partial: _Partial,
                 providers: list[Provider], progress: Callable[[FetchProgress], object] | None,
                 per_peer: int, request_timeout: float) -> None:
        self.service = service
        self.ticket = ticket
        self.partial = partial
        self.progress = progress
        self.plan = FetchPlan(partial.have.count, partial.have, per_peer=per_peer,
                              request_timeout=request_timeout)
        for provider in providers:
            self.plan.add_peer(provider.peer_id)
        self.queue: asyncio.Queue[tuple[str, _Answer | None]] = asyncio.Queue()
        self.asked: dict[tuple[str, int], int] = {}
        self.resumed = len(partial.have)
        size = ticket.size
        self.held = self.resumed_bytes = sum(
            piece_span(size, i)[1] for i in range(partial.have.count) if i in partial.have)
        self.fetched = 0
        self.corrupt = 0
        self.loop = asyncio.get_running_loop()

    def _report(self) -> None:
        if self.progress is not None:
            self.progress(FetchProgress(self.held, self.ticket.size,
                                        self.plan.active_peers(), self.resumed_bytes,
                                        self.corrupt))

    async def run(self) -> FetchResult:
        started = self.loop.time()
        self._report()
        self.service._running.add(self)
        try:
            while True:
                await self._until_done()
                bad = self.partial.recheck()
                if not bad:
                    break
                for piece in bad:  # changed on disk after it was verified: fetch again
                    self.held -= piece_span(self.ticket.size, piece)[1]
                    self.partial.forget(piece)
                    self.plan.lost(piece)
            self.partial.finish()
        finally:
            self.service._running.discard(self)
            for key in self.asked:
                self.service._fetches.pop(key, None)
        providers = {peer_id: {"pieces": p.pieces, "corrupt": p.corrupt,
                               "state": p.state.value, "reason": p.reason}
                     for peer_id, p in self.plan.peers.items()}
        return FetchResult(self.partial.target, self.ticket.size, self.fetched,
                           self.held - self.resumed_bytes, self.resumed,
                           self.plan.requested, self.loop.time() - started, providers)

    async def _until_done(self) -> None:
        while not self.plan.done:
            for peer_id, piece in self.plan.requests(self.loop.time()):
                self._ask(peer_id, piece)
            if self.plan.stuck:  # after requests(), which drops a provider that timed out
                reasons = sorted({p.reason for p in self.plan.peers.values()})
                held = len(self.plan.have)
                raise FetchError(f"no provider left ({'; '.join(reasons)})" + (
                    f"; {held} of {self.plan.have.count} pieces are kept for a later "
                    "fetch" if held else ""))
            deadline = self.plan.next_deadline()
            timeout = None if deadline is None else max(0.0, deadline - self.loop.time())
            try:
                sender, answer = await asyncio.wait_for(self.queue.get(), timeout)
            except TimeoutError:
                continue
            self._take(sender, answer)
            while not self.queue.empty():
                self._take(*self.queue.get_nowait())

    def lost(self, peer_id: str) -> None:
        if peer_id in self.plan.peers:
            self.plan.lost_peer(peer_id, self.loop.time())
            self.queue.put_nowait((peer_id, _Answer(0, 0)))  # wake the loop

    def _ask(self, peer_id: str, piece: int) -> None:
        request_id = self.service._request_id()
        key = (peer_id, request_id)
        self.asked[key] = piece
        self.service._fetches[key] = self.queue
        try:
            future = self.service._transport.send(
                peer_id, encode_request(request_id, self.ticket.root, piece))
        except ShoalError as exc:
            self._failed(key, exc)
            return
        future.add_done_callback(lambda f: self._delivered(key, f))

    def _delivered(self, key: tuple[str, int], future: asyncio.Future[object]) -> None:
        if future.cancelled():
            return
        exc = future.exception()
        if exc is not None:
            self._failed(key, exc)

    def _failed(self, key: tuple[str, int], exc: BaseException) -> None:
        piece = self.asked.pop(key, None)
        self.service._fetches.pop(key, None)
        if piece is None:
            return
        peer_id = key[0]
        code = getattr(exc, "code", "")
        if code == "ENOPROTOOPT":
            self.plan.refused(peer_id, "does not serve blobs")
        else:
            self.plan.failed(peer_id, piece, self.loop.time(), f"unreachable ({code})")
        self.queue.put_nowait((peer_id, _Answer(0, 0)))  # wake the loop

    def _take(self, sender: str, answer: _Answer | None) -> None:
        if answer is None:
            raise ClosedError("the node is closed")
        if answer.kind == 0:
            return
        key = (sender, answer.request_id)
        piece = self.asked.pop(key, None)
        self.service._fetches.pop(key, None)
        if piece is None or self.plan.peers[sender].state is PeerState.DROPPED:
            return
        if answer.kind == REFUSED:
            if answer.reason == BUSY:
                self.plan.failed(sender, piece, self.loop.time(), "busy")
            else:
                self.plan.refused(sender, "does not have the file")
            return
        if answer.piece != piece:  # not what was asked: ask again, and check what came
            self.plan.failed(sender, piece, self.loop.time(), "answered another piece")
            piece = answer.piece
        if not self.plan.wanted(piece):
            return
        try:
            node = verify_piece(self.ticket.root, self.ticket.size, piece, answer.data,
                                answer.proof)
        except VerificationError:
            self.corrupt += 1
            self.service.stats["corrupt"] += 1
            self.plan.corrupt(sender, piece)
            return
        try:
            self.partial.write(piece, answer.data, node)
        except OSError as exc:
            raise FetchError(f"{self.partial.part}: cannot write ({exc.strerror})",
                             code=os_error_code(exc)) from None
        self.plan.verified(sender, piece, self.loop.time())
        self.fetched += 1
        self.held += len(answer.data)
        self._report()

