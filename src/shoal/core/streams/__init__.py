"""Reliable, ordered byte streams on a connection, with flow control (sans-IO).

``frames`` is the codec, ``state`` the two sides' state tables, ``send`` and ``recv`` the
two sides of one stream, ``manager`` a connection's streams. See each module's theory of
operation.
"""

from shoal.core.streams.frames import (
    DataBlocked,
    Datagram,
    MaxData,
    MaxStreamData,
    MaxStreams,
    ResetStream,
    StopSending,
    StreamDataBlocked,
    StreamFrame,
    StreamsBlocked,
    StreamsFrame,
)
from shoal.core.streams.manager import (
    Stream,
    StreamClosed,
    StreamConfig,
    StreamEvent,
    StreamManager,
    StreamOpened,
    StreamReadable,
    StreamReset,
    StreamsAvailable,
    StreamStopped,
    StreamWritable,
)
from shoal.core.streams.state import RecvState, SendState

__all__ = [
    "DataBlocked", "Datagram", "MaxData", "MaxStreamData", "MaxStreams", "RecvState",
    "ResetStream", "SendState", "StopSending", "Stream", "StreamClosed", "StreamConfig",
    "StreamDataBlocked", "StreamEvent", "StreamFrame", "StreamManager", "StreamOpened",
    "StreamReadable", "StreamReset", "StreamStopped", "StreamWritable", "StreamsAvailable",
    "StreamsBlocked", "StreamsFrame",
]
