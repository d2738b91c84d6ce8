"""Content-addressed blobs: a BLAKE3 hash tree over 16 KiB chunks, proofs, and tickets.

Theory of operation
-------------------
A blob of ``size`` bytes is cut into chunks of ``CHUNK_SIZE`` bytes (the last may be
shorter; an empty blob is one empty chunk). Each chunk is a leaf of a binary tree whose
hash is BLAKE3, keyed for its role, of the chunk's index and its bytes. Parents hash the
concatenation of their two children. The tree is built level by level, pairing neighbours
and carrying an odd last node up unchanged, which gives the shape BLAKE3 and Bao use (a
left subtree is always the largest power of two of chunks that is smaller than the whole).
The *root hash* binds the top node to the blob's size, so neither a subtree nor a blob of
another length can pass for the blob.

A node is named by its level and index: node ``(level, i)`` covers chunks
``i * 2**level`` up to ``(i + 1) * 2**level`` (or the end). A *proof* for a node is the
list of its siblings' hashes on the way to the top; anyone who knows the root hash and the
size can check the node's bytes against it, whichever peer sent them. Transfers move
*pieces*, nodes of level ``PIECE_LEVEL`` (256 KiB), each checked as it arrives.

A ``HashTree`` keeps the nodes from a chosen level up (32 bytes per piece by default, not
per chunk), which is what a provider needs to prove any piece.

A ``Ticket`` names a blob (root hash and size) and up to ``MAX_PROVIDERS`` peers that
serve it, with their addresses; its text form is ``blob`` and lowercase base32.

Errors: a local caller's bad argument or bad ticket text raises ``TicketError`` or
``LocalProtocolError``; bytes that do not match the root raise ``VerificationError``, a
``RemoteProtocolError``, since they came from a peer. No I/O happens here.
"""

from __future__ import annotations

import base64
import ipaddress
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from blake3 import blake3

from shoal.core.wire import Address
from shoal.errors import LocalProtocolError, RemoteProtocolError

CHUNK_SIZE = 16 * 1024
"""Bytes per leaf (a BLAKE3 chunk group of 16 chunks)."""
PIECE_LEVEL = 4
"""Level of the nodes transfers move and prove: 16 chunks, 256 KiB."""
PIECE_SIZE = CHUNK_SIZE << PIECE_LEVEL
HASH_SIZE = 32
MAX_BLOB_SIZE = 1 << 40
"""Largest blob a ticket may name (1 TiB)."""
MAX_PROVIDERS = 16
MAX_ADDRESSES = 4
"""Addresses a ticket lists per provider."""
TICKET_PREFIX = "blob"
TICKET_VERSION = 1
MAX_TICKET_TEXT = 4096
MAX_NAME = 255

_LEAF_KEY = blake3(b"leaf", derive_key_context="shoal 2026-12 blob tree leaf").digest()
_PARENT_KEY = blake3(b"parent", derive_key_context="shoal 2026-12 blob tree parent").digest()
_ROOT_KEY = blake3(b"root", derive_key_context="shoal 2026-12 blob tree root").digest()


class TicketError(LocalProtocolError):
    """A ticket's text is not a valid ticket (typo, truncated, another kind of text)."""

    default_code = "EINVAL"


class VerificationError(RemoteProtocolError):
    """Bytes or a proof a peer sent do not match the blob's root hash."""

    default_code = "EBADMSG"


def chunk_count(size: int) -> int:
    """Leaves of a blob of ``size`` bytes (at least one, for the empty blob)."""
    return max(1, -(-size // CHUNK_SIZE))


def piece_count(size: int) -> int:
    """Pieces of a blob of ``size`` bytes (at least one)."""
    return max(1, -(-size // PIECE_SIZE))


def piece_span(size: int, index: int) -> tuple[int, int]:
    """The byte offset and length of piece ``index``."""
    start = index * PIECE_SIZE
    return start, max(0, min(PIECE_SIZE, size - start))


def piece_level(size: int) -> int:
    """The level of a blob's pieces: ``PIECE_LEVEL``, or the top for a smaller blob
    (whose one piece is the whole)."""
    return min(PIECE_LEVEL, len(level_widths(size)) - 1)


def leaf_hash(index: int, data: bytes | memoryview) -> bytes:
    """The hash of chunk ``index``."""
    hasher = blake3(index.to_bytes(8, "little"), key=_LEAF_KEY)
    hasher.update(data)
    return hasher.digest()


def parent_hash(left: bytes, right: bytes) -> bytes:
    return blake3(left + right, key=_PARENT_KEY).digest()


def root_hash(size: int, top: bytes) -> bytes:
    """The root hash: the tree's top node bound to the blob's size."""
    return blake3(size.to_bytes(8, "little") + top, key=_ROOT_KEY).digest()


def _check_size(size: int) -> None:
    if not isinstance(size, int) or not 0 <= size <= MAX_BLOB_SIZE:
        raise LocalProtocolError(f"a blob is 0 to {MAX_BLOB_SIZE} bytes, not {size!r}")


def level_widths(size: int) -> list[int]:
    """Nodes per level, from the leaves (level 0) up to the single top node."""
    widths = [chunk_count(size)]
    while widths[-1] > 1:
        widths.append((widths[-1] + 1) // 2)
    return widths


def _pair_up(nodes: Sequence[bytes]) -> list[bytes]:
    """The next level up: neighbours paired, an odd last node carried up unchanged."""
    upper = [parent_hash(nodes[i], nodes[i + 1]) for i in range(0, len(nodes) - 1, 2)]
    if len(nodes) % 2:
        upper.append(nodes[-1])
    return upper


def _pair_up_packed(level: bytes) -> bytes:
    """``_pair_up`` on hashes stored end to end."""
    view = memoryview(level)
    pair = 2 * HASH_SIZE
    upper = bytearray()
    for start in range(0, len(level) - HASH_SIZE, pair):
        upper += blake3(view[start:start + pair], key=_PARENT_KEY).digest()
    if len(level) % pair:
        upper += view[-HASH_SIZE:]
    return bytes(upper)


def node_span(size: int, level: int, index: int) -> tuple[int, int]:
    """The byte offset and length node ``(level, index)`` covers."""
    start = (index << level) * CHUNK_SIZE
    return start, max(0, min(CHUNK_SIZE << level, size - start))


def subtree_hash(size: int, level: int, index: int, data: bytes | memoryview) -> bytes:
    """The hash of node ``(level, index)`` from the bytes it covers.

    Raises ``VerificationError`` if ``data`` is not exactly as long as the node."""
    widths = level_widths(size)
    if not 0 <= level < len(widths) or not 0 <= index < widths[level]:
        raise LocalProtocolError(f"no node ({level}, {index}) in a blob of {size} bytes")
    _, length = node_span(size, level, index)
    if len(data) != length:
        raise VerificationError(f"node ({level}, {index}) is {length} bytes, got {len(data)}")
    view = memoryview(data)
    first = index << level
    nodes = [leaf_hash(first + i, view[offset:offset + CHUNK_SIZE])
             for i, offset in enumerate(range(0, max(1, length), CHUNK_SIZE))]
    while len(nodes) > 1:
        nodes = _pair_up(nodes)
    return nodes[0]


def _proof_path(widths: list[int], level: int, index: int) -> list[tuple[int, int]]:
    """The (level, index) of every sibling on the way from a node to the top."""
    path = []
    for lv in range(level, len(widths) - 1):
        sibling = index ^ 1
        if sibling < widths[lv]:
            path.append((lv, sibling))
        index >>= 1
    return path


def verify_node(root: bytes, size: int, level: int, index: int, node: bytes,
                proof: bytes | memoryview) -> None:
    """Check that ``node`` is the hash of node ``(level, index)`` of the blob
    ``(root, size)`` using ``proof`` (its siblings' hashes, concatenated, bottom up).

    Raises ``VerificationError`` if it is not."""
    widths = level_widths(size)
    if not 0 <= level < len(widths) or not 0 <= index < widths[level]:
        raise VerificationError(f"no node ({level}, {index}) in a blob of {size} bytes")
    path = _proof_path(widths, level, index)
    if len(proof) != HASH_SIZE * len(path):
        raise VerificationError(f"a proof of node ({level}, {index}) is "
                                f"{HASH_SIZE * len(path)} bytes, got {len(proof)}")
    current = node
    view = memoryview(proof)
    for step, (_, sibling) in enumerate(path):
        other = bytes(view[step * HASH_SIZE:(step + 1) * HASH_SIZE])
        current = parent_hash(other, current) if sibling & 1 == 0 else \
            parent_hash(current, other)
    if root_hash(size, current) != root:
        raise VerificationError(f"node ({level}, {index}) does not match the root hash")


def verify_piece(root: bytes, size: int, index: int, data: bytes | memoryview,
                 proof: bytes | memoryview) -> bytes:
    """Check piece ``index``'s bytes against the root; returns the piece's node hash.

    Raises ``VerificationError`` if a byte of the data or the proof is wrong."""
    level = piece_level(size)
    if not 0 <= index < piece_count(size):
        raise VerificationError(f"no piece {index} in a blob of {size} bytes")
    node = subtree_hash(size, level, index, data)
    verify_node(root, size, level, index, node, proof)
    return node


class HashTree:
    """The nodes of a blob's tree from level ``base`` up: enough to prove any node of
    that level or above. Build it with ``HashTree.build`` (from the bytes) or from the
    base level's hashes."""

    def __init__(self, size: int, base_nodes: Sequence[bytes] | bytes | bytearray,
                 base: int = PIECE_LEVEL) -> None:
        """``base_nodes``: the hashes of level ``base``, as a sequence or concatenated."""
        _check_size(size)
        widths = level_widths(size)
        self.size = size
        self.base = min(base, len(widths) - 1)
        packed = bytes(base_nodes) if isinstance(base_nodes, bytes | bytearray) else \
            b"".join(base_nodes)
        if len(packed) != HASH_SIZE * widths[self.base]:
            raise LocalProtocolError(f"level {self.base} of a blob of {size} bytes has "
                                     f"{widths[self.base]} nodes, not "
                                     f"{len(packed) / HASH_SIZE:g}")
        self._widths = widths
        # Each level is its hashes end to end (32 bytes a node, not a Python object each:
        # a 1 TiB blob keeps 256 MiB).
        self._levels: list[bytes] = [packed]
        while len(self._levels[-1]) > HASH_SIZE:
            self._levels.append(_pair_up_packed(self._levels[-1]))
        self.root = root_hash(size, self._levels[-1])

    @classmethod
    def build(cls, size: int, pieces: Iterable[bytes | memoryview], base: int = PIECE_LEVEL
              ) -> HashTree:
        """The tree of a blob given as its consecutive nodes of level ``base`` (each
        ``CHUNK_SIZE << base`` bytes, the last one shorter)."""
        _check_size(size)
        level = min(base, len(level_widths(size)) - 1)
        nodes = [subtree_hash(size, level, index, data) for index, data in enumerate(pieces)]
        return cls(size, nodes, base)

    def node(self, level: int, index: int) -> bytes:
        """A stored node's hash."""
        start = index * HASH_SIZE
        return self._levels[level - self.base][start:start + HASH_SIZE]

    def proof(self, level: int, index: int) -> bytes:
        """The proof of node ``(level, index)`` (level at least ``base``)."""
        if level < self.base or not 0 <= index < self._widths[level]:
            raise LocalProtocolError(f"this tree cannot prove node ({level}, {index})")
        return b"".join(self.node(lv, i) for lv, i in _proof_path(self._widths, level, index))

    def piece_proof(self, index: int) -> bytes:
        return self.proof(piece_level(self.size), index)


def blob_root(data: bytes | memoryview) -> bytes:
    """The root hash of ``data`` held in memory."""
    size = len(data)
    view = memoryview(data)
    pieces = (view[offset:offset + PIECE_SIZE] for offset in range(0, max(1, size), PIECE_SIZE))
    return HashTree.build(size, pieces).root


def _safe_name(name: str) -> bool:
    """Whether ``name`` is one printable file name (no folder, no "." or "..")."""
    return name == "" or (name.isprintable() and "/" not in name and "\\" not in name
                          and name not in (".", "..") and "\0" not in name)


@dataclass(frozen=True, slots=True)
class Provider:
    """A peer that serves a blob, and where it may be reached."""

    peer_id: str
    addresses: tuple[Address, ...] = ()


@dataclass(frozen=True, slots=True)
class Ticket:
    """What a fetcher needs: the blob's root hash and size, and who provides it.
    ``str(ticket)`` is its text form; ``Ticket.parse`` reads it back."""

    root: bytes
    size: int
    providers: tuple[Provider, ...] = ()
    name: str = ""
    """The file's name as its provider called it (a hint: never a path)."""

    def __post_init__(self) -> None:
        if not isinstance(self.root, bytes) or len(self.root) != HASH_SIZE:
            raise TicketError("a ticket's root hash is 32 bytes")
        if not isinstance(self.size, int) or not 0 <= self.size <= MAX_BLOB_SIZE:
            raise TicketError(f"a ticket's size is 0 to {MAX_BLOB_SIZE} bytes (1 TiB)")
        if len(self.providers) > MAX_PROVIDERS:
            raise TicketError(f"a ticket names at most {MAX_PROVIDERS} providers")
        if not isinstance(self.name, str) or len(self.name.encode()) > MAX_NAME or \
                not _safe_name(self.name):
            raise TicketError("a ticket's file name is one plain name of at most "
                              f"{MAX_NAME} bytes")
        for provider in self.providers:
            if len(provider.addresses) > MAX_ADDRESSES:
                raise TicketError(f"a ticket lists at most {MAX_ADDRESSES} addresses a peer")

    def merge(self, *others: Ticket) -> Ticket:
        """This ticket with the providers of ``others`` (tickets of the same blob) added,
        up to ``MAX_PROVIDERS``."""
        providers = list(self.providers)
        for other in others:
            if (other.root, other.size) != (self.root, self.size):
                raise TicketError("these tickets are of different files")
            providers += [p for p in other.providers if p not in providers]
        return Ticket(self.root, self.size, tuple(providers[:MAX_PROVIDERS]), self.name)

    def __str__(self) -> str:
        return TICKET_PREFIX + base64.b32encode(self.to_bytes()).decode().rstrip("=").lower()

    def to_bytes(self) -> bytes:
        name = self.name.encode()
        out = bytearray(struct.pack("!B32sQB", TICKET_VERSION, self.root, self.size,
                                    len(name)))
        out += name
        out.append(len(self.providers))
        for provider in self.providers:
            out += bytes.fromhex(provider.peer_id)
            out.append(len(provider.addresses))
            for host, port in provider.addresses:
                packed = ipaddress.ip_address(host).packed
                out.append(len(packed))
                out += packed + port.to_bytes(2, "big")
        return bytes(out)

    @classmethod
    def parse(cls, text: str) -> Ticket:
        """Read a ticket's text form; raises ``TicketError`` saying what is wrong."""
        if not isinstance(text, str):
            raise TicketError("a ticket is text")
        text = text.strip()
        if len(text) > MAX_TICKET_TEXT:
            raise TicketError(f"not a ticket: longer than {MAX_TICKET_TEXT} characters")
        if not text.lower().startswith(TICKET_PREFIX):
            raise TicketError(f"not a ticket: it does not start with {TICKET_PREFIX!r}")
        body = text[len(TICKET_PREFIX):].upper()
        try:
            raw = base64.b32decode(body + "=" * (-len(body) % 8))
        except ValueError:
            raise TicketError("not a ticket: a character is not base32 (mistyped?)") from None
        return cls.from_bytes(raw)

    @classmethod
    def from_bytes(cls, raw: bytes) -> Ticket:
        try:
            version, root, size, name_length = struct.unpack_from("!B32sQB", raw)
            if version != TICKET_VERSION:
                raise TicketError(f"a ticket of version {version}: this Shoal reads "
                                  f"version {TICKET_VERSION}")
            offset = struct.calcsize("!B32sQB")
            name_bytes = raw[offset:offset + name_length]
            if len(name_bytes) != name_length:
                raise IndexError
            try:
                name = name_bytes.decode()
            except UnicodeDecodeError:
                raise TicketError("not a ticket: its file name is not UTF-8") from None
            offset += name_length
            count = raw[offset]
            offset += 1
            if count > MAX_PROVIDERS:
                raise TicketError(f"a ticket names at most {MAX_PROVIDERS} providers")
            providers = []
            for _ in range(count):
                peer = raw[offset:offset + 32]
                if len(peer) != 32:
                    raise IndexError
                addresses: list[Address] = []
                naddr = raw[offset + 32]
                if naddr > MAX_ADDRESSES:
                    raise TicketError(f"a ticket lists at most {MAX_ADDRESSES} addresses a peer")
                offset += 33
                for _ in range(naddr):
                    length = raw[offset]
                    if length not in (4, 16):
                        raise TicketError("not a ticket: an address is neither IPv4 nor IPv6")
                    packed = raw[offset + 1:offset + 1 + length]
                    port = raw[offset + 1 + length:offset + 3 + length]
                    if len(port) != 2:
                        raise IndexError
                    addresses.append((str(ipaddress.ip_address(packed)),
                                      int.from_bytes(port, "big")))
                    offset += 3 + length
                providers.append(Provider(peer.hex(), tuple(addresses)))
        except (struct.error, IndexError):
            raise TicketError("not a ticket: it is cut short (copied whole?)") from None
        if offset != len(raw):
            raise TicketError("not a ticket: it has bytes after its end")
        return cls(root, size, tuple(providers), name)
