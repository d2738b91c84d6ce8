"""Flow-control credit for stream bytes, for one stream or a whole connection.

The receiver grants an absolute *limit* (MAX_STREAM_DATA, MAX_DATA): the sender may send
bytes below it. Granting more as the application reads, never beyond what it read plus
one window, bounds what the receiver holds; a sender with nothing granted waits, which is
how a slow reader slows its writer.
"""

from __future__ import annotations

from shoal.errors import RemoteProtocolError


class SendLimit:
    """The sending side of one limit: bytes sent (new ones, not retransmissions) and the
    limit the peer granted."""

    __slots__ = ("limit", "used", "reported")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.reported = -1
        """The limit at which the sender last said it was blocked."""

    def available(self) -> int:
        return self.limit - self.used

    def raise_to(self, limit: int) -> bool:
        """Take a granted limit (a lower one is stale and ignored); whether it gave room."""
        if limit <= self.limit:
            return False
        self.limit = limit
        return True

    def blocked_report(self) -> int | None:
        """The limit to name in a *_BLOCKED frame, once per limit, while no room is left."""
        if self.used < self.limit or self.reported == self.limit:
            return None
        self.reported = self.limit
        return self.limit


class RecvLimit:
    """The receiving side of one limit: the highest byte the peer sent, the bytes the
    application consumed, and the limit granted."""

    __slots__ = ("window", "granted", "received", "consumed", "pending", "pieces")

    def __init__(self, initial: int, window: int) -> None:
        self.window = window
        self.granted = initial
        self.received = 0
        self.consumed = 0
        self.pending = False
        """A raised limit waits to be sent (or sent again, after a loss)."""
        self.pieces = 0
        """Out-of-order pieces held (counted on a connection's limit)."""
        self.consume(0)

    def receive(self, size: int, what: str) -> None:
        """The peer sent ``size`` more new bytes; beyond the limit is a protocol error."""
        if self.received + size > self.granted:
            raise RemoteProtocolError(f"{what} beyond the flow-control limit",
                                      code="EFLOWCONTROL")
        self.received += size

    def consume(self, size: int) -> None:
        """The application took ``size`` bytes: grant more once half the window is used."""
        self.consumed += size
        if self.granted - self.consumed <= self.window // 2:
            self.granted = self.consumed + self.window
            self.pending = True
