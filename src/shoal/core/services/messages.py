"""Acknowledged messages on named channels.

Theory of operation
-------------------
An application protocol has a name (``"chat/1"``); a node *serves* the names it wants
messages on. On each connection the sender numbers the channels it uses and binds a
number to its name with a CHANNEL frame; the receiver answers CHANNEL_ACCEPTED, or
CHANNEL_REFUSED if it does not serve that name, and every message of the channel then
fails at the sender with ``ENOPROTOOPT`` while the connection stays up. Channel 0 is the
default channel (name ``""``), bound and accepted without frames.

A message gets the next id of its channel and is split into MESSAGE fragments. The
sender takes fragments round-robin from every channel with data, so a small message is
never stuck behind a large one on another channel. A message is *delivered* (an event at
the sender) once every fragment was acknowledged and its channel accepted. The receiver
reassembles by (channel, id) and hands messages to the application in id order, each
once.

Memory. Partly received messages, and whole ones waiting for an earlier one, count
their bytes plus a fixed overhead per fragment and per message, against a per-connection
and a node-wide budget. The node's budget is shared: when it is spent, the connection holding
the most is closed to make room for one holding less. A message unfinished for
``reassembly_timeout`` closes the connection. Channels the peer binds count against the
same budgets. Whole messages, from their first fragment until the application reads
them, are bounded by flow control (``credit``): the sender begins a message only within
the room the receiver granted on its channel and on the connection.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from shoal.core import events as ev
from shoal.core.connection import CLOSE_BUSY, CLOSE_PROTOCOL_ERROR, Connection
from shoal.core.handshake import EARLY_WINDOW, MAX_EARLY, Early
from shoal.core.services.base import Service
from shoal.core.services.credit import INITIAL_CREDIT, ReceiveWindow, SendCredit, charge
from shoal.core.wire import (
    MAX_CHANNEL_NAME,
    Channel,
    ChannelAccepted,
    ChannelRefused,
    ChannelWindow,
    Frame,
    FrameType,
    MessagesBlocked,
    MessageWindow,
    decode_varint,
    encode_varint,
)
from shoal.errors import LocalProtocolError, RemoteProtocolError

if TYPE_CHECKING:
    from shoal.core.frames import Reader
    from shoal.core.services.context import ServiceContext
    from shoal.core.services.interfaces import Rendezvous

DEFAULT_CHANNEL = ""
_MESSAGE = int(FrameType.MESSAGE)
MAX_MESSAGE_WINDOW = 1 << 16
WHOLE_MESSAGE_ROOM = 64
"""Room left in a packet for an ACK and a fragment header when judging whether a message
fits in a packet of its own."""
FRAGMENT_OVERHEAD = 96
"""Bytes a stored fragment is counted as beyond its data (object and dict overhead)."""
MESSAGE_OVERHEAD = 384
"""Bytes a partly received message is counted as beyond its fragments."""
CHANNEL_COST = 1024
"""Bytes a channel the peer binds is counted as (its state and its name)."""
NO_CHANNEL = "ENOPROTOOPT"
NO_CREDIT = "ENOBUFS"
"""A message that timed out waiting for the peer's application to read (flow control)."""


class OutgoingMessage:
    __slots__ = ("handle", "channel", "message_id", "data", "next_offset", "acked",
                 "acked_bytes", "done")

    def __init__(self, handle: int, channel: _OutChannel, message_id: int, data: bytes) -> None:
        self.handle = handle
        self.channel = channel
        self.message_id = message_id
        self.data = data
        self.next_offset = 0
        self.acked: set[int] = set()
        self.acked_bytes = 0
        self.done = False


@dataclass(slots=True, eq=False)
class _OutChannel:
    name: str
    number: int
    accepted: bool | None
    queue: deque[OutgoingMessage] = field(default_factory=deque)
    next_id: int = 0
    held: list[OutgoingMessage] = field(default_factory=list)
    """Fully acknowledged messages waiting for the channel to be accepted."""
    prefix: bytes = b""
    credit: SendCredit = field(default_factory=lambda: SendCredit(INITIAL_CREDIT))
    blocked: bool = False
    """Out of credit: out of the round-robin until the peer grants more."""


@dataclass(slots=True, eq=False)
class _Reassembly:
    total: int
    started: float
    parts: dict[int, bytes] = field(default_factory=dict)
    received: int = 0
    """Bytes of the message received so far."""
    cost: int = 0
    """What they count against the budgets: ``_cost`` of each part, and MESSAGE_OVERHEAD."""


@dataclass(slots=True, eq=False)
class _InChannel:
    name: str | None
    """None until the sender's CHANNEL frame arrives."""
    number: int
    window: ReceiveWindow
    refused: bool = False
    told: bool = False
    """A refusal of the default channel was sent."""
    floor: int = 0
    incoming: dict[int, _Reassembly] = field(default_factory=dict)
    ready: dict[int, bytes] = field(default_factory=dict)
    """Whole messages waiting for an earlier id, or for the channel's name."""


class MessageFlow:
    """The message service's state on one connection."""

    def __init__(self, service: MessageService, connection: Connection) -> None:
        self.service = service
        self.connection = connection
        default = _OutChannel(DEFAULT_CHANNEL, 0, True, prefix=b"\x10\x00")
        self.out: dict[str, _OutChannel] = {DEFAULT_CHANNEL: default}
        self.out_by_number: dict[int, _OutChannel] = {0: default}
        self.next_number = 1
        self.active: deque[_OutChannel] = deque()
        self.retransmit: deque[tuple[OutgoingMessage, int, int]] = deque()
        self.window = self._window(service.config.connection_receive_window)
        self.credit = SendCredit(INITIAL_CREDIT)
        default = self.inbound_channel(0, DEFAULT_CHANNEL)
        default.refused = not service.serves(DEFAULT_CHANNEL)
        self.inbound: dict[int, _InChannel] = {0: default}
        self.stored = 0
        self.unfinished: dict[int, OutgoingMessage] = {}
        """Messages partly or wholly sent but not yet delivered, by handle."""
        self.hold = False
        """Send nothing new (another connection with the peer is draining first)."""
        self.settling: list[OutgoingMessage] = []
        """Default-channel messages acknowledged in the packet being handled."""
        self.refused: set[str] = set()
        """Channels the peer refused on this connection (until a message asks again)."""

    # ---------------------------------------------------------------- sending

    def bound(self, channel: str) -> _OutChannel:
        """The channel named ``channel`` as this node sends on it, numbered and bound
        now (a CHANNEL frame queued) if it was not."""
        out = self.out.get(channel)
        if out is None:
            number = self.next_number
            self.next_number += 1
            out = _OutChannel(channel, number, None, prefix=b"\x10" + encode_varint(number))
            self.out[channel] = out
            self.out_by_number[number] = out
            self.connection.queue_frame(Channel(number, channel))
        return out

    def send(self, handle: int, channel: str, data: bytes) -> None:
        self.refused.discard(channel)  # a message asks again
        out = self.bound(channel)
        out.queue.append(OutgoingMessage(handle, out, out.next_id, data))
        out.next_id += 1
        if len(out.queue) == 1 and not out.blocked:
            self.active.append(out)

    def has_data(self) -> bool:
        return bool(self.active or self.retransmit)

    def undelivered(self) -> list[OutgoingMessage]:
        """Every message not yet delivered, in the order it was sent."""
        found = {m.handle: m for m in self.unfinished.values() if not m.done}
        for out in self.out.values():
            found.update((m.handle, m) for m in out.queue if not m.done)
            found.update((m.handle, m) for m in out.held)
        return [found[h] for h in sorted(found)]

    def untouched(self) -> list[OutgoingMessage]:
        """Queued messages of which nothing was sent yet (safe to move elsewhere)."""
        return [m for out in self.out.values() for m in out.queue if m.next_offset == 0]

    def cancel(self, handle: int) -> None:
        for out in self.out.values():
            for message in out.queue:
                if message.handle == handle:
                    message.done = True
                    if message.next_offset == 0:
                        out.queue.remove(message)
                        if not out.queue and out in self.active:
                            self.active.remove(out)
                    return
            for message in out.held:
                if message.handle == handle:
                    message.done = True
                    out.held.remove(message)
                    return
        message = self.unfinished.pop(handle, None)
        if message is not None:
            message.done = True

    def fill(self, parts: list[bytes], budget: int) -> tuple[int, object]:
        items: list[tuple[OutgoingMessage, int, int]] = []
        retransmit = self.retransmit
        while retransmit and budget > 24:
            message, offset, length = retransmit[0]
            if message.done or offset in message.acked:
                retransmit.popleft()
                continue
            frame = _fragment(message, offset, length)
            if len(frame) > budget:
                break
            retransmit.popleft()
            parts.append(frame)
            items.append((message, offset, length))
            budget -= len(frame)
        if self.hold:
            return budget, items or None
        active = self.active
        whole_limit = self.connection.max_payload - WHOLE_MESSAGE_ROOM
        waiting = 0  # channels in a row whose next message waits for credit
        while active and budget > 24 and waiting < len(active):
            out = active[0]
            message = out.queue[0]
            if message.done and message.next_offset == 0:
                out.queue.popleft()
                if not out.queue:
                    active.popleft()
                continue
            total = len(message.data)
            offset = message.next_offset
            cost = charge(total)
            if offset == 0 and not (out.credit.fits(cost) and self.credit.fits(cost)):
                if not out.credit.fits(cost):
                    active.popleft()  # back when the peer grants the channel more
                    out.blocked = True
                    asking = out.credit.ask()
                else:
                    active.rotate(-1)  # a message already begun may still go on
                    waiting += 1
                    asking = self.credit.ask()
                if asking:
                    self.connection.queue_frame(MessagesBlocked(out.number))
                continue
            length = min(total - offset, budget - 24)
            if (length <= 0 and total > 0) or (
                # A message that fits a packet of its own is not split across two: the
                # receiver then takes it whole, with no reassembly.
                offset == 0 and length < total and total <= whole_limit
            ):
                break
            frame = _fragment(message, offset, length)
            parts.append(frame)
            items.append((message, offset, length))
            budget -= len(frame)
            if offset == 0:
                self.unfinished[message.handle] = message
                out.credit.spend(cost)
                self.credit.spend(cost)
            waiting = 0
            message.next_offset = offset + length
            active.rotate(-1)
            if message.next_offset >= total:
                out.queue.popleft()
                if not out.queue:
                    active.remove(out)
        return budget, items or None

    def on_acked(self, record: list[tuple[OutgoingMessage, int, int]]) -> None:  # type: ignore[override]
        for message, offset, length in record:
            if offset in message.acked:
                continue
            message.acked.add(offset)
            message.acked_bytes += length
            if message.done or message.acked_bytes < len(message.data) or (
                message.next_offset < len(message.data)
            ):
                continue
            channel = message.channel
            self.unfinished.pop(message.handle, None)
            if channel.accepted and channel.number == 0:
                # The ACK's packet may refuse the channel: settled once it is read.
                if not self.settling:
                    self.connection.unsettled.append(self)
                self.settling.append(message)
            elif channel.accepted:
                message.done = True
                self.service.delivered(message.handle, self.connection)
            elif channel.accepted is None:
                channel.held.append(message)

    def settle(self) -> None:
        """The frames of a packet were all handled: report what its ACKs delivered."""
        settling, self.settling = self.settling, []
        for message in settling:
            if not message.done:
                message.done = True
                self.service.delivered(message.handle, self.connection)

    def on_lost(self, record: list[tuple[OutgoingMessage, int, int]]) -> None:  # type: ignore[override]
        retransmit = self.retransmit
        for item in record:
            message, offset, _ = item
            if not message.done and offset not in message.acked:
                retransmit.append(item)

    def on_channel_answer(self, number: int, accepted: bool) -> None:
        out = self.out_by_number.get(number)
        # The default channel is accepted from the start, but may be refused.
        if out is None or out.accepted is False or (accepted and out.accepted):
            return
        if accepted:
            out.accepted = True
            held, out.held = out.held, []
            for message in held:
                if not message.done:
                    message.done = True
                    self.service.delivered(message.handle, self.connection)
            return
        out.accepted = False
        del self.out[out.name]
        self.refused.add(out.name)
        failed = [*out.queue, *out.held, *(m for m in self.settling if m.channel is out)]
        failed.extend(m for m in self.unfinished.values() if m.channel is out)
        out.queue.clear()
        out.held.clear()
        if out in self.active:
            self.active.remove(out)
        for message in {id(m): m for m in failed}.values():
            self.unfinished.pop(message.handle, None)
            if not message.done:
                message.done = True
                self.service.failed(message.handle, NO_CHANNEL,
                                    f"the peer does not serve channel {out.name!r}")

    def on_channel_window(self, number: int, limit: int) -> None:
        out = self.out_by_number.get(number)
        if out is not None and out.credit.raise_to(limit) and out.blocked:
            out.blocked = False
            if out.queue:
                self.active.append(out)
                self.service.ctx.wake(self.connection)

    def on_message_window(self, limit: int) -> None:
        if self.credit.raise_to(limit):
            self.service.ctx.wake(self.connection)

    def waits_for_credit(self, handle: int) -> bool:
        """Whether message ``handle`` is queued, unbegun, for want of the peer's credit."""
        for out in self.out.values():
            if any(m.handle == handle and m.next_offset == 0 and (
                out.blocked or not self.credit.fits(charge(len(m.data)))) for m in out.queue
            ):
                return True
        return False

    # ---------------------------------------------------------------- receiving

    def _window(self, size: int) -> ReceiveWindow:
        # Never less than the largest message: else that one could never be sent.
        return ReceiveWindow(INITIAL_CREDIT,
                             max(size, charge(self.service.config.max_message_size)))

    def inbound_channel(self, number: int, name: str | None) -> _InChannel:
        return _InChannel(name, number, self._window(self.service.config.channel_receive_window))

    def _begin(self, channel: _InChannel, total: int) -> None:
        """A message of ``total`` bytes begins: the peer must have had the credit."""
        cost = charge(total)
        if not (channel.window.admits(cost) and self.window.admits(cost)):
            raise RemoteProtocolError("message begun beyond the credit granted")
        channel.window.begin(cost)
        self.window.begin(cost)

    def _done(self, channel: _InChannel, cost: int) -> None:
        """Messages counting ``cost`` in all were read or dropped: room for more."""
        channel.window.done(cost)
        self.window.done(cost)

    def read(self, channel: _InChannel, size: int) -> None:
        """The application took a message of ``size`` bytes on this flow's ``channel``."""
        self._done(channel, charge(size))
        if not self.connection.closed and self.inbound.get(channel.number) is channel:
            self.offer_credit(channel)

    def offer_credit(self, channel: _InChannel | None) -> None:
        """Grant the peer more room on ``channel`` and on the connection, if it used half
        of it and the node is under its receive budget."""
        service = self.service
        if service.unread + service.stored >= service.config.max_receive_total:
            service.starved[self] = None
            return
        connection = self.connection
        if channel is not None and channel.name is not None and not channel.refused and (
            (limit := channel.window.grant()) is not None
        ):
            connection.queue_frame(ChannelWindow(channel.number, limit))
            service.ctx.wake(connection)
        if (limit := self.window.grant()) is not None:
            connection.queue_frame(MessageWindow(limit))
            service.ctx.wake(connection)

    def on_fragment(self, number: int, message_id: int, total: int, offset: int,
                    data: bytes) -> None:
        channel = self.inbound.get(number) or self._bind(number)
        if channel.refused:
            if number == 0 and not channel.told:
                channel.told = True
                self.connection.queue_frame(ChannelRefused(0))
            return
        if message_id < channel.floor or message_id in channel.ready:
            return
        if message_id >= channel.floor + MAX_MESSAGE_WINDOW:
            raise RemoteProtocolError("message id too far ahead")
        service = self.service
        if total > service.config.max_message_size:
            raise RemoteProtocolError("message larger than this node accepts")
        entry = channel.incoming.get(message_id)
        if entry is None and offset == 0 and len(data) == total:
            self._begin(channel, total)
            self._complete(channel, message_id, data)
            return
        if entry is None:
            self._begin(channel, total)
            self._store(MESSAGE_OVERHEAD)
            # The connection has just taken this packet in: its receive time is now.
            started = self.connection.last_received
            entry = channel.incoming[message_id] = _Reassembly(total, started,
                                                                cost=MESSAGE_OVERHEAD)
            service.watch_reassembly(self.connection, entry.started)
        elif entry.total != total:
            raise RemoteProtocolError("message fragments disagree on length")
        if offset in entry.parts:
            return
        cost = _cost(data)
        self._store(cost)
        entry.parts[offset] = data
        entry.received += len(data)
        entry.cost += cost
        if entry.received < entry.total:
            return
        whole = b"".join(entry.parts[k] for k in sorted(entry.parts))
        del channel.incoming[message_id]
        self._release(entry.cost)
        service.ctx.stats["messages_reassembled"] += 1
        if len(whole) != entry.total:
            raise RemoteProtocolError("message fragments overlap")
        self._complete(channel, message_id, whole)

    def _store(self, cost: int) -> None:
        service = self.service
        if self.stored + cost > service.config.max_reassembly_bytes:
            raise RemoteProtocolError("peer exceeded the reassembly budget")
        while service.stored + cost > service.config.max_reassembly_total:
            service.ctx.stats["reassembly_node_budget"] += 1
            heaviest = max(service.holding, key=lambda flow: flow.stored)
            if heaviest.stored <= self.stored + cost:
                raise RemoteProtocolError("the node's reassembly budget is spent")
            # The node's budget is shared: the connection holding the most makes room.
            service.ctx.close_connection(
                heaviest.connection, CLOSE_PROTOCOL_ERROR,
                "held more of the node's reassembly budget than any other")
        self.stored += cost
        service.stored += cost
        service.holding.add(self)

    def _release(self, cost: int) -> None:
        self.stored -= cost
        self.service.stored -= cost
        if not self.stored:
            self.service.holding.discard(self)

    def _complete(self, channel: _InChannel, message_id: int, data: bytes) -> None:
        if message_id == channel.floor and channel.name is not None:
            self.service.received(self, channel, data)
            channel.floor += 1
            self._drain(channel)
            return
        self._store(_cost(data))
        channel.ready[message_id] = data

    def _drain(self, channel: _InChannel) -> None:
        ready = channel.ready
        while channel.floor in ready:
            data = ready.pop(channel.floor)
            self._release(_cost(data))
            self.service.received(self, channel, data)
            channel.floor += 1

    def on_channel(self, frame: Channel) -> None:
        channel = self.inbound.get(frame.number) or self._bind(frame.number)
        if channel.name is not None or channel.refused:
            return
        if frame.number == 0 or not self.service.serves(frame.name):
            channel.refused = True
            self._release(sum(_cost(d) for d in channel.ready.values())
                          + sum(r.cost for r in channel.incoming.values()))
            self._done(channel, sum(charge(len(d)) for d in channel.ready.values())
                       + sum(charge(r.total) for r in channel.incoming.values()))
            channel.ready.clear()
            channel.incoming.clear()
            self.service.ctx.stats["channels_refused"] += 1
            self.connection.queue_frame(ChannelRefused(frame.number))
            return
        channel.name = frame.name
        self.connection.queue_frame(ChannelAccepted(frame.number))
        self.offer_credit(channel)
        self._drain(channel)

    def _bind(self, number: int) -> _InChannel:
        """Start keeping the peer's channel ``number``, counted against the budgets."""
        if len(self.inbound) > self.service.config.max_channels_per_connection:
            raise RemoteProtocolError("too many channels")
        self._store(CHANNEL_COST)
        channel = self.inbound[number] = self.inbound_channel(number, None)
        return channel

    def oldest_unfinished(self) -> float | None:
        starts = [r.started for c in self.inbound.values() for r in c.incoming.values()]
        return min(starts) if starts else None

    def drop(self) -> None:
        """The connection is gone: give back what it stored."""
        self.service.stored -= self.stored
        self.stored = 0
        self.service.holding.discard(self)
        self.service.starved.pop(self, None)
        self.inbound.clear()


MAX_EARLY_SEEN = 65536
"""Early messages remembered at once; past that, INITs carry none (they go the usual
way), so a replay can never find its message forgotten."""


class MessageService(Service):
    """Messages for the application, on named channels, across every connection."""

    name = "messages"
    requires = ("rendezvous",)
    frame_types = (FrameType.MESSAGE, FrameType.CHANNEL, FrameType.CHANNEL_ACCEPTED,
                   FrameType.CHANNEL_REFUSED,
                   FrameType.CHANNEL_WINDOW, FrameType.MESSAGE_WINDOW,
                   FrameType.MESSAGES_BLOCKED)

    def __init__(self) -> None:
        super().__init__()
        self.served: set[str] = {DEFAULT_CHANNEL}
        self.stored = 0
        self.holding: set[MessageFlow] = set()
        """Flows storing parts of messages; the heaviest yields when the node is full."""
        self.unread = 0
        """Bytes of messages handed to the applications and not yet read."""
        self.starved: dict[MessageFlow, None] = {}
        """Flows denied credit while the node was over its receive budget."""
        self._handles: dict[int, bytes] = {}
        self._pending: dict[bytes, list[tuple[int, str, bytes]]] = {}
        self._deadlines: deque[tuple[float, int]] = deque()
        self._early: dict[bytes, tuple[int, Early]] = {}
        """Per peer: the message INITs carry to it, while their answer is awaited."""
        self._early_seen: dict[bytes, float] = {}
        """peer + message id -> until when: early messages delivered (never twice)."""

    # ---------------------------------------------------------------- commands

    def attach(self, ctx: ServiceContext, services: Mapping[str, Any]) -> None:
        super().attach(ctx, services)
        self.rendezvous: Rendezvous = services["rendezvous"]
        if ctx.config.introducer:
            # An introducer's application reads no messages: it serves no channel
            # unless asked to, so nothing piles up for a reader that never comes.
            self.served.discard(DEFAULT_CHANNEL)

    def serve(self, channel: str) -> None:
        _check_name(channel)
        self.served.add(channel)

    def unserve(self, channel: str) -> None:
        if channel != DEFAULT_CHANNEL:
            self.served.discard(channel)

    def serves(self, channel: str) -> bool:
        return channel in self.served

    def send(self, peer: bytes, data: bytes, channel: str, now: float) -> int:
        if channel:
            _check_name(channel)
        config = self.config
        if len(data) > config.max_message_size:
            raise LocalProtocolError(
                f"message of {len(data)} bytes exceeds the limit of {config.max_message_size}",
                code="EMSGSIZE",
            )
        handle = self.ctx.new_handle()
        self._handles[handle] = peer
        deadlines = self._deadlines
        deadlines.append((now + config.message_timeout, handle))
        if len(deadlines) > 2 * len(self._handles) + 1024:
            live = self._handles
            self._deadlines = deque(d for d in deadlines if d[1] in live)
            self._arm()
        elif len(deadlines) == 1:  # every message has the same timeout: only a new head
            self._arm()
        connection = self.ctx.connection_to(peer)
        if connection is not None:
            self.flow(connection).send(handle, channel, data)
            self.ctx.wake(connection)
        else:
            self._pending.setdefault(peer, []).append((handle, channel, data))
            self.rendezvous.reach(peer, now)
        return handle

    def cancel(self, handle: int, reason: str) -> None:
        self.failed(handle, "ECANCELED", reason)

    def outbound_number(self, connection: Connection, channel: str) -> int:
        """The number ``channel`` goes by from this node on ``connection``, bound now if
        it was not; ``ENOPROTOOPT`` if the peer refused it there."""
        flow = self.flow(connection)
        if channel in flow.refused:
            raise LocalProtocolError(f"the peer does not serve channel {channel!r}",
                                     code=NO_CHANNEL)
        return flow.bound(channel).number

    def unanswered(self, connection: Connection, channel: str) -> bool:
        """Whether the peer has yet to answer this node's binding of ``channel`` on
        ``connection``."""
        flow = connection.state.get(self.name)
        out = flow.out.get(channel) if isinstance(flow, MessageFlow) else None
        return out is not None and out.accepted is None

    def inbound_name(self, connection: Connection, number: int) -> str | None:
        """The name the peer bound ``number`` to on ``connection``, if it did and this
        node serves it (else None)."""
        flow = connection.state.get(self.name)
        if not isinstance(flow, MessageFlow):
            return DEFAULT_CHANNEL if number == 0 and self.serves(DEFAULT_CHANNEL) else None
        channel = flow.inbound.get(number)
        if channel is None or channel.refused:
            return None
        return channel.name

    def pending_for(self, peer: bytes) -> bool:
        return bool(self._pending.get(peer))

    def waiting_peers(self) -> list[bytes]:
        return [peer for peer, queued in self._pending.items() if queued]

    def fail_pending(self, peer: bytes, code: str, reason: str) -> None:
        for handle, _, _ in list(self._pending.get(peer, ())):
            self.failed(handle, code, reason)

    # ---------------------------------------------------------------- outcomes

    def delivered(self, handle: int, connection: Connection) -> None:
        self._delivered(handle, connection.peer_id, connection.path_kind)

    def _delivered(self, handle: int, peer_id: str, path: str) -> None:
        if self._handles.pop(handle, None) is None:
            return  # already failed or cancelled
        self.ctx.emit(ev.MessageDelivered(handle=handle, peer_id=peer_id, path=path))

    def failed(self, handle: int, code: str, reason: str) -> None:
        peer = self._handles.pop(handle, None)
        if peer is None:
            return
        self._unqueue(peer, handle)
        for candidate in self.ctx.connections_with(peer):
            flow = candidate.state.get(self.name)
            if isinstance(flow, MessageFlow):
                flow.cancel(handle)
        self.ctx.emit(ev.MessageFailed(handle=handle, peer_id=peer.hex(), code=code,
                                            reason=reason))

    def _unqueue(self, peer: bytes, handle: int) -> None:
        """Take ``handle`` out of the messages waiting for a connection to ``peer``."""
        queued = self._pending.get(peer)
        if queued:
            self._pending[peer] = [q for q in queued if q[0] != handle]

    def received(self, flow: MessageFlow, channel: _InChannel, data: bytes) -> None:
        connection = flow.connection
        self.unread += len(data)
        self.ctx.emit(ev.MessageReceived(
            peer_id=connection.peer_id, data=data, path=connection.path_kind,
            channel=channel.name or "", receipt=(flow, channel, len(data))))

    def read(self, receipt: object) -> None:
        """The application took the message ``receipt`` came with (once per message)."""
        if not isinstance(receipt, tuple):
            return  # an early message: it held no credit
        flow, channel, size = receipt
        self.unread -= size
        flow.read(channel, size)
        if self.starved and self.unread + self.stored < self.config.max_receive_total:
            starved, self.starved = self.starved, {}
            for waiting in starved:
                if not waiting.connection.closed:
                    for held in list(waiting.inbound.values()):
                        waiting.offer_credit(held)

    # ---------------------------------------------------------------- service hooks

    def flow(self, connection: Connection) -> MessageFlow:
        """The connection's message flow, made when first needed (most connections of
        an introducer never carry a message)."""
        flow = connection.state.get(self.name)
        if flow is None:
            flow = connection.state[self.name] = MessageFlow(self, connection)
            connection.add_flow(flow)
            flow.offer_credit(flow.inbound[0])  # the windows beyond the implicit ones
        return flow

    def frame_reader(self, code: int) -> Reader | None:
        return self._read_fragments if code == FrameType.MESSAGE else None

    def _read_fragments(self, connection: Connection, payload: bytes, pos: int,
                        now: float) -> int:
        """MESSAGE frames, parsed in place without a frame object (they are most of the
        traffic), this one and any that follow it in the packet."""
        flow = connection.state.get("messages") or self.flow(connection)
        end = len(payload)
        while True:
            channel, pos = decode_varint(payload, pos)
            message_id, pos = decode_varint(payload, pos)
            total, pos = decode_varint(payload, pos)
            offset, pos = decode_varint(payload, pos)
            size, pos = decode_varint(payload, pos)
            if pos + size > end or offset + size > total or (size == 0 and total):
                raise RemoteProtocolError("message fragment beyond its bounds")
            flow.on_fragment(channel, message_id, total, offset, payload[pos : pos + size])
            pos += size
            if pos >= end or payload[pos] != _MESSAGE:
                return pos
            pos += 1

    # ---------------------------------------------------------------- early messages

    def early_message(self, peer: bytes, wall: float) -> Early | None:
        """What an INIT_IK to ``peer`` carries: the first message waiting for it, if it
        is small enough; the same one in every INIT until one is answered."""
        current = self._early.get(peer)
        if current is not None:
            return current[1]
        queued = self._pending.get(peer)
        if not queued:
            return None
        handle, channel, data = queued[0]
        early = Early(b"", wall, channel, data)
        if early.size > MAX_EARLY:
            return None
        early = early._replace(message_id=self.ctx.random(8))
        self._early[peer] = (handle, early)
        return early

    def early_answered(self, peer: bytes, message_id: bytes, delivered: bool, path: str,
                       now: float) -> None:
        """The peer answered an INIT_IK: it delivered the early message, or it did not
        take it (it goes the usual way, first of its peer's queue)."""
        handle = self._settle_early(peer, message_id)
        if handle is None:
            return
        if delivered:
            self._unqueue(peer, handle)
            self._delivered(handle, peer.hex(), path)
        self._release_pending(peer, now)

    def early_unanswered(self, peer: bytes, message_id: bytes, now: float) -> None:
        """No INIT that carried the early message was answered: whether it arrived is
        unknown, so it fails rather than risk arriving twice."""
        handle = self._settle_early(peer, message_id)
        if handle is None:
            return
        self.failed(handle, "ETIMEDOUT", "the peer did not answer the first contact")
        self._release_pending(peer, now)

    def _settle_early(self, peer: bytes, message_id: bytes) -> int | None:
        """Stop awaiting the early message ``message_id`` to ``peer``: its handle, or
        None if that is not the one awaited."""
        entry = self._early.get(peer)
        if entry is None or entry[1].message_id != message_id:
            return None
        del self._early[peer]
        return entry[0]

    def early_awaited(self, peer: bytes) -> bytes | None:
        """The id of the early message to ``peer`` whose answer is awaited, if any."""
        entry = self._early.get(peer)
        return entry[1].message_id if entry is not None else None

    def take_early(self, peer: bytes, early: Early, path: str, now: float,
                   wall: float, floor: float) -> bool:
        """An INIT_IK from ``peer`` carries ``early``: deliver it unless it was delivered
        already. Whether the peer may count it delivered."""
        seen = self._early_seen
        while seen:
            oldest = next(iter(seen))
            if seen[oldest] > now:
                break
            del seen[oldest]
        key = peer + early.message_id
        if key in seen:
            return True
        if (early.channel not in self.served or abs(wall - early.sent_at) > EARLY_WINDOW
                or early.sent_at < floor
                or len(seen) >= MAX_EARLY_SEEN or early.size > MAX_EARLY):
            return False
        seen[key] = now + 2 * EARLY_WINDOW  # every entry lives as long: oldest first
        self.ctx.stats["early_messages_delivered"] += 1
        self.ctx.emit(ev.MessageReceived(peer_id=peer.hex(), data=early.data, path=path,
                                              channel=early.channel))
        return True

    def _release_pending(self, peer: bytes, now: float) -> None:
        connection = self.ctx.connection_to(peer)
        if connection is not None:
            self.on_connection_up(connection, now)

    def on_connection_up(self, connection: Connection, now: float) -> None:
        if connection.peer in self._early:
            return  # held until the early message's answer: order is kept
        queued = self._pending.pop(connection.peer, None)
        if queued:
            flow = self.flow(connection)
            for handle, channel, data in queued:
                flow.send(handle, channel, data)
            self.ctx.wake(connection)

    def on_connection_replaced(self, old: Connection, new: Connection, *, hold: bool) -> None:
        """Move what ``old`` has not started sending to ``new`` (``old`` drains the rest);
        with ``hold``, ``new`` sends nothing new until then, so order is kept."""
        flow = old.state.get(self.name)
        if not isinstance(flow, MessageFlow):
            return
        target = self.flow(new)
        for message in flow.untouched():
            out = message.channel
            out.queue.remove(message)
            # Nothing of it was sent: its id is free again, so the ids ``old`` still
            # sends on the channel (should messages come back to it) leave no gap.
            out.next_id = min(out.next_id, message.message_id)
            target.send(message.handle, out.name, message.data)
        for out in flow.out.values():
            if not out.queue and out in flow.active:
                flow.active.remove(out)
        target.hold = hold and bool(flow.undelivered())

    def on_connection_down(self, connection: Connection, reason: str, now: float) -> None:
        flow = connection.state.get(self.name)
        if not isinstance(flow, MessageFlow):
            return
        flow.drop()
        self.set_timer(None, connection)
        successor = self.ctx.connection_to(connection.peer)
        undelivered = flow.undelivered()
        if successor is not None:
            # The peer keeps another connection (a crossed dial, a reconnection): what
            # this one had not delivered goes there.
            target = self.flow(successor)
            target.hold = False
            for message in undelivered:
                message.done = True
                target.send(message.handle, message.channel.name, message.data)
            self.ctx.wake(successor)
            return
        # A peer that is full refuses the connection it has just authenticated.
        code = "ECONNREFUSED" if connection.close_code == CLOSE_BUSY else "ECONNRESET"
        for message in undelivered:
            self.failed(message.handle, code, f"connection ended: {reason}")

    def on_frame(self, connection: Connection, frame: Frame, now: float) -> None:
        flow = self.flow(connection)
        if isinstance(frame, Channel):
            flow.on_channel(frame)
        elif isinstance(frame, ChannelAccepted):
            flow.on_channel_answer(frame.number, True)
        elif isinstance(frame, ChannelRefused):
            flow.on_channel_answer(frame.number, False)
        elif isinstance(frame, ChannelWindow):
            flow.on_channel_window(frame.number, frame.limit)
        elif isinstance(frame, MessageWindow):
            flow.on_message_window(frame.limit)
        elif isinstance(frame, MessagesBlocked):
            flow.offer_credit(flow.inbound.get(frame.number))

    def awaits(self, connection: Connection) -> bool:
        """A message is arriving in parts."""
        flow = connection.state.get(self.name)
        return isinstance(flow, MessageFlow) and flow.oldest_unfinished() is not None

    def on_connection_draining(self, connection: Connection) -> None:
        """``connection`` is superseded: once it has delivered every message it carried,
        its successor may send again (order per channel is then kept)."""
        successor = self.ctx.connection_to(connection.peer)
        flow = connection.state.get(self.name)
        target = successor.state.get(self.name) if successor is not None else None
        if successor is None or not isinstance(target, MessageFlow) or not target.hold:
            return
        if not isinstance(flow, MessageFlow) or not flow.undelivered():
            target.hold = False
            self.ctx.wake(successor)

    def _arm(self) -> None:
        deadlines = self._deadlines
        while deadlines and deadlines[0][1] not in self._handles:
            deadlines.popleft()
        self.set_timer(deadlines[0][0] if deadlines else None)

    def on_timer(self, now: float, key: object = None) -> None:
        if isinstance(key, Connection):
            self._check_reassembly(key, now)
            return
        deadlines = self._deadlines
        while deadlines and (deadlines[0][0] <= now or deadlines[0][1] not in self._handles):
            _, handle = deadlines.popleft()
            peer = self._handles.get(handle)
            if peer is None:
                continue
            connection = self.ctx.connection_to(peer)
            flow = connection.state.get(self.name) if connection is not None else None
            if self.rendezvous.unknown(peer):
                self.failed(handle, "EHOSTUNREACH", "no introducer knows this peer")
            elif isinstance(flow, MessageFlow) and flow.waits_for_credit(handle):
                self.failed(handle, NO_CREDIT, "the peer's application did not read its "
                            "earlier messages in time")
            else:
                self.failed(handle, "ETIMEDOUT", "not acknowledged in time")
        self._arm()

    def watch_reassembly(self, connection: Connection, started: float) -> None:
        """A message began arriving in parts: make sure a deadline covers it."""
        if self.ctx.timer(connection) is None:
            self.set_timer(started + self.config.reassembly_timeout, connection)

    def _check_reassembly(self, connection: Connection, now: float) -> None:
        flow = connection.state.get(self.name)
        if not isinstance(flow, MessageFlow) or connection.closed:
            return
        oldest = flow.oldest_unfinished()
        if oldest is None:
            return
        deadline = oldest + self.config.reassembly_timeout
        # The same expression as the deadline armed, so a timer firing at it always acts.
        if now >= deadline:
            self.ctx.stats["reassembly_timeouts"] += 1
            self.ctx.close_connection(connection, CLOSE_PROTOCOL_ERROR,
                                      "a message stayed unfinished too long")
        else:
            self.set_timer(deadline, connection)

    def close(self, now: float) -> None:
        for handle in list(self._handles):
            self.failed(handle, "ECLOSED", "node closed")


def _cost(data: bytes) -> int:
    """What a stored part counts against the reassembly budgets."""
    return len(data) + FRAGMENT_OVERHEAD


def _check_name(channel: str) -> None:
    if not isinstance(channel, str) or len(channel.encode()) > MAX_CHANNEL_NAME:
        raise LocalProtocolError(f"a channel name is a string of at most {MAX_CHANNEL_NAME} "
                                 "bytes")


def _fragment(message: OutgoingMessage, offset: int, length: int) -> bytes:
    data = message.data[offset : offset + length]
    return b"".join((message.channel.prefix, encode_varint(message.message_id),
                     encode_varint(len(message.data)), encode_varint(offset),
                     encode_varint(length), data))

