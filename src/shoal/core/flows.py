"""Flows: what fills a connection's packets, and hears what became of what it sent.

A connection carries any number of flows (the messages of its channels, and whatever
else services add: one per stream, say). Before each packet the connection's
``FlowScheduler`` lets the flows that have data write frames into it, round-robin, one
flow first per packet in turn, so a large transfer never holds a small one back; all of
it within the connection's congestion window. A flow returns, with the frames, a
*record* of what it put in the packet (any object); once the packet is acknowledged the
flow gets the record back in ``on_acked``, and if the packet is declared lost (or a
probe timeout resends it) in ``on_lost``, and sends what it must again.

Reliable control frames of every service travel in the connection's ``ControlFlow``,
ahead of the other flows and under the same window: lost ones are sent again, and a
service that asked to (``ServiceContext.send(..., notify=True)``) hears which were
acknowledged or lost.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from shoal.core.connection import Connection

MIN_FILL = 24
"""Below this many bytes left in a packet, no flow is asked for more."""


class Flow(Protocol):
    """The per-connection part of a service that sends (see the module docstring)."""

    def has_data(self) -> bool:
        """Whether ``fill`` would write something now."""
        ...

    def fill(self, parts: list[bytes], budget: int) -> tuple[int, object]:
        """Append encoded frames of at most ``budget`` bytes in all to ``parts``; return
        the budget left and a record of what was written (None if nothing was)."""
        ...

    def on_acked(self, record: object) -> None:
        """The packet that carried ``record`` was acknowledged."""
        ...

    def on_lost(self, record: object) -> None:
        """The packet that carried ``record`` was lost (or is being probed again)."""
        ...


class FrameOwner(Protocol):
    """Who hears what became of a reliable control frame (a service)."""

    def on_frame_acked(self, connection: Connection, frame: bytes) -> None: ...
    def on_frame_lost(self, connection: Connection, frame: bytes) -> None: ...


class FlowScheduler:
    """A connection's flows, filled round-robin among those with data."""

    __slots__ = ("flows", "_turn")

    def __init__(self) -> None:
        self.flows: list[Flow] = []
        self._turn = 0

    def add(self, flow: Flow) -> None:
        if flow not in self.flows:
            self.flows.append(flow)

    def remove(self, flow: Flow) -> None:
        if flow in self.flows:
            self.flows.remove(flow)

    def has_data(self) -> bool:
        return any(flow.has_data() for flow in self.flows)

    def fill(self, parts: list[bytes], budget: int, sent: list) -> int:
        """Let the flows with data fill one packet, starting with the one whose turn it
        is; append (flow, record) to ``sent`` for each that wrote something."""
        flows = self.flows
        count = len(flows)
        if count == 1:  # the common case, kept cheap
            flow = flows[0]
            if flow.has_data():
                budget, record = flow.fill(parts, budget)
                if record is not None:
                    sent.append((flow, record))
            return budget
        turn = self._turn
        self._turn = (turn + 1) % count if count else 0
        for i in range(count):
            if budget < MIN_FILL:
                break
            flow = flows[(turn + i) % count]
            if flow.has_data():
                budget, record = flow.fill(parts, budget)
                if record is not None:
                    sent.append((flow, record))
        return budget


class _Control:
    __slots__ = ("raw", "owner", "acked", "queued")

    def __init__(self, raw: bytes, owner: FrameOwner | None) -> None:
        self.raw = raw
        self.owner = owner
        self.acked = False
        self.queued = True


class ControlFlow:
    """Reliable control frames of every service on one connection, sent again until
    acknowledged (see the module docstring)."""

    __slots__ = ("connection", "queue")

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.queue: deque[_Control] = deque()

    def push(self, raw: bytes, owner: FrameOwner | None = None) -> None:
        self.queue.append(_Control(raw, owner))

    def has_data(self) -> bool:
        return bool(self.queue)

    def fill(self, parts: list[bytes], budget: int) -> tuple[int, object]:
        queue = self.queue
        record: list[_Control] = []
        while queue and len(queue[0].raw) <= budget:
            control = queue.popleft()
            control.queued = False
            if control.acked:
                continue
            parts.append(control.raw)
            budget -= len(control.raw)
            record.append(control)
        return budget, record or None

    def on_acked(self, record: list[_Control]) -> None:  # type: ignore[override]
        for control in record:
            if not control.acked:
                control.acked = True
                if control.owner is not None:
                    control.owner.on_frame_acked(self.connection, control.raw)

    def on_lost(self, record: list[_Control]) -> None:  # type: ignore[override]
        for control in reversed(record):  # ahead of what waits, in their order
            if not control.acked and not control.queued:
                control.queued = True
                self.queue.appendleft(control)
                if control.owner is not None:
                    control.owner.on_frame_lost(self.connection, control.raw)

    def clear(self) -> None:
        self.queue.clear()

    def __len__(self) -> int:
        return len(self.queue)
