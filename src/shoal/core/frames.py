"""Which code reads each frame type of a DATA packet: the connection's frame registry.

The connection reads its own frames (ACK, PING, CLOSE, path validation); every other
type belongs to one service, which registers it (``Service.frame_types``). A type is read
in one of two ways: decoded into a frame object, handed to its service's ``on_frame``
once the whole packet was taken in; or, for the bulk of the traffic, by a *reader* the
service supplies (``Service.frame_reader``), which parses the bytes in place as the
packet is read. Every reader of untrusted bytes raises only ``RemoteProtocolError``,
which closes that connection with a protocol error.

Extension types (0xc0-0xff) that no service reads are skipped, as the wire format
promises; other unknown types are a protocol error.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from shoal.core.wire import DECODERS, EXTENSION_FIRST, Extension, take_blob_at
from shoal.errors import LocalProtocolError

if TYPE_CHECKING:
    from shoal.core.connection import Connection
    from shoal.core.services.base import Service

Reader = Callable[["Connection", bytes, int, float], int]
"""``reader(connection, payload, pos, now) -> next_pos``: ``pos`` is just past the type
byte."""
Decoder = Callable[[bytes, int], tuple[Any, int]]


def queue_reader(service: Service | None, decode: Decoder) -> Reader:
    """A reader that decodes a frame for ``service``'s ``on_frame`` (None: nobody's,
    counted and dropped)."""

    def read(connection: Connection, payload: bytes, pos: int, now: float) -> int:
        frame, pos = decode(payload, pos)
        connection.frames_in.append((service, frame))
        return pos

    return read


def extension_decoder(code: int) -> Decoder:
    def decode(payload: bytes, pos: int) -> tuple[Extension, int]:
        body, pos = take_blob_at(payload, pos)
        return Extension(code, bytes(body)), pos

    return decode


class FrameRegistry:
    """Frame type -> reader, shared by every connection of one endpoint."""

    def __init__(self, transport: Mapping[int, Reader]) -> None:
        self.readers: dict[int, Reader] = dict(transport)
        self.owners: dict[int, str] = dict.fromkeys(transport, "connection")
        for code, decode in DECODERS.items():
            self.readers.setdefault(code, queue_reader(None, decode))

    def register(self, service: Service) -> None:
        """Route ``service.frame_types`` to ``service``; all or none."""
        readers: dict[int, Reader] = {}
        for code in service.frame_types:
            owner = self.owners.get(code)
            if owner is not None or code in readers:
                raise LocalProtocolError(f"frame type 0x{code:02x} is already owned by "
                                         f"{owner or service.name}")
            reader = service.frame_reader(code)
            if reader is None:
                decode = service.frame_decoders.get(code) or DECODERS.get(code) or (
                    extension_decoder(code) if code >= EXTENSION_FIRST else None)
                if decode is None:
                    raise LocalProtocolError(f"frame type 0x{code:02x} has no codec")
                reader = queue_reader(service, decode)
            readers[code] = reader
        self.readers.update(readers)
        self.owners.update(dict.fromkeys(readers, service.name))
