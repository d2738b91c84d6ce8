"""Credit-based flow control for messages, per channel and per connection (the way QUIC's
MAX_STREAM_DATA and MAX_DATA bound a stream and a connection).

Theory of operation
-------------------
A receiver holds every message from its first fragment until the application has read
it. It lets the sender begin a message only if the bytes of every message the sender
began (counted since the channel, or the connection, began) stay within a *limit* it
granted, so it never holds more than its window. Both sides start from the same implicit
limit (``INITIAL_CREDIT``), so a small first message never waits a round trip; the
receiver raises the limits with CHANNEL_WINDOW and MESSAGE_WINDOW frames when a connection
starts carrying messages, when a channel is accepted, and as the application reads (once
half a window is used), but only while the node as a whole holds less than its receive
budget. A sender out of credit says so once per limit with MESSAGES_BLOCKED, which is
also how the first message larger than the implicit limit gets its grant. A channel whose
application does not read therefore stops taking new messages while the other channels
(within the connection's window) and other peers go on. A peer that begins a message
beyond its credit broke the protocol: its connection is closed.
"""

from __future__ import annotations

INITIAL_CREDIT = 16 * 1024
"""Bytes of messages a sender may begin on a new channel, and on a new connection, before
any window frame: all that a connection can make its receiver hold unasked."""
MESSAGE_CHARGE = 256
"""Bytes each message counts as against the limits beyond its data (roughly what an unread
message costs its receiver), so empty or tiny messages cannot pile up without bound."""


def charge(size: int) -> int:
    """What a message of ``size`` bytes counts as against a sender's credit and a
    receiver's window."""
    return size + MESSAGE_CHARGE


class SendCredit:
    """The sender's side of one limit: how much it began, and how much it may."""

    __slots__ = ("limit", "used", "asked")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.asked = -1
        """The limit at which the sender last said it was blocked."""

    def fits(self, size: int) -> bool:
        """Whether a new message of ``size`` bytes may begin now."""
        return self.used + size <= self.limit

    def spend(self, size: int) -> None:
        self.used += size

    def ask(self) -> bool:
        """Whether to tell the receiver the sender is blocked (once per limit)."""
        if self.asked == self.limit:
            return False
        self.asked = self.limit
        return True

    def raise_to(self, limit: int) -> bool:
        """Take a granted limit; whether it gave more room."""
        if limit <= self.limit:
            return False
        self.limit = limit
        return True


class ReceiveWindow:
    """The receiver's side of one limit: bytes held (begun and not yet read), bytes
    read, and the limit granted so far."""

    __slots__ = ("window", "granted", "consumed", "held")

    def __init__(self, initial: int, window: int) -> None:
        self.window = window
        self.granted = initial
        self.consumed = 0
        self.held = 0

    def admits(self, size: int) -> bool:
        """Whether a sender keeping to the limits could begin a message of ``size`` now."""
        return self.held + size <= self.granted - self.consumed

    def begin(self, size: int) -> None:
        self.held += size

    def done(self, size: int) -> None:
        """A message of ``size`` was read (or dropped): it leaves the window."""
        self.held -= size
        self.consumed += size

    def grant(self) -> int | None:
        """A new limit to send, once half the window is used; else None."""
        if self.granted - self.consumed > self.window // 2:
            return None
        self.granted = self.consumed + self.window
        return self.granted
