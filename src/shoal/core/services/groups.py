"""The groups service: carries group posts between the nodes that hold a group's tag.

Theory of operation
-------------------
A node *carries* a tag: as a member of the group (it holds epoch keys and reads posts),
or for others (it stores and passes on envelopes it cannot read). On every connection the
two sides send TAGS, the tags they carry; the tags both carry are the connection's
*shared* tags.

Posts spread as in Plumtree (Leitão et al., 2007). For each tag a node pushes new posts
whole to a few *eager* peers (at most ``EAGER`` chosen by the node, plus those that push
to it) and announces their ids (IHAVE) to its other carriers, the *lazy* ones. A copy
that arrives twice has its sender moved to lazy (PRUNE), so the eager links shrink to a
tree; an id announced but not received within ``GRAFT_AFTER`` is asked for (GRAFT),
which makes that link eager again and repairs the tree.

Anti-entropy: when two carriers of a tag connect, and every ``SYNC_EVERY`` seconds with
one carrier per tag, they reconcile their stores' indexes of the tag
(``shoal.core.reconcile``) and each pushes what the other lacks. A member back from any
absence thus gets what it missed from whichever carrier it meets, author online or not;
a connection to another run of a peer (restarted before the old one ended) is such a
meeting too.
A post that reconciliation sent on a connection is not sent on it again (the last
``MAX_SYNCED`` ids are kept per connection), so a peer that claims to lack everything at
every sync does not get the whole group uploaded each time.
A post that came this way and is new here is announced to every carrier, not pushed (it
is likely old news to them).

Members find each other through the invite's hints, the carriers they meet (MEMBERS
lists the members a node knows of), the authors of posts, and, when the node runs a
``dht`` service, the providers of ``sha256("shoal/group-members/1" + group id)``. A
member dials members it knows of, in random order, until it is connected to (or
dialing) ``TARGET_PEERS`` carriers of each group. A member new to this node is an event
(``changed``) for the node to keep it, so that it is still known after a crash.

Every member posts a *hello* (topic ``shoal/member``): its member card (so the admin can
grant it later epoch keys), its name, and for the admin the group key's signature of its
peer id. Removing a member is a GRANT of a new epoch key to all the others
(``posts.GroupAdmin.remove``).

Messages travel in GROUP_FRAGMENT frames (``gossip``), at most ``WINDOW`` bytes unacknowledged
per connection; what waits beyond is queued here (posts by id, read from the store when
sent) up to ``MAX_QUEUE`` entries. Posts that fail to parse, verify or open are dropped
and counted (``groups_dropped_<reason>``). The store is injected (``Store``); the service
reads no clock (times come from the driver: ``ctx.wall``).
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from shoal.core.groups import gossip as g
from shoal.core.groups.posts import (
    GRANT,
    HEADER_BYTES,
    MAX_ENVELOPE_BYTES,
    Envelope,
    ForgedPostError,
    GroupAdmin,
    GroupKeys,
    MemberCard,
    Post,
    PostError,
    TamperedPostError,
    UnknownEpochError,
    envelope_author,
    grantees,
    group_tag,
    open_grant,
    open_post,
    parse_envelope,
    seal_post,
)
from shoal.core.groups.posts import (
    POST as POST_KIND,
)
from shoal.core.peers import restarted
from shoal.core.rangeindex import RangeIndex
from shoal.core.reconcile import Limits, Reconciler, State
from shoal.core.relay import TokenBucket
from shoal.core.services.base import Service
from shoal.core.wire import Address, Extension, Frame, decode_varint
from shoal.errors import LocalProtocolError, RemoteProtocolError, ShoalError
from shoal.identity import verify_signature

if TYPE_CHECKING:
    from shoal.core.connection import Connection
    from shoal.core.services.context import ServiceContext
    from shoal.core.services.interfaces import Providers, Rendezvous, Transport

EAGER = 2
"""Peers per tag a node pushes new posts to on its own choice."""
GRAFT_AFTER = 0.4
"""Seconds to wait for an announced post before asking its announcer."""
ANNOUNCE_AFTER = 0.05
"""Seconds ids wait to be announced, so that many go in one IHAVE."""
_ANNOUNCE = "announce"
SYNC_EVERY = 30.0
START_GAP = 5.0
"""Seconds a peer waits between reconciliations it starts of one tag."""
TICK = 2.0
TARGET_PEERS = 4
RETRY_AFTER = 20.0
DIAL_WAIT = 10.0
"""Seconds a dial to a member counts as under way."""
FIND_EVERY = 60.0
WINDOW = 128 * 1024
MAX_QUEUE = 20_000
"""Messages (a post counts as one, read from the store when sent) waiting per connection;
what comes beyond is dropped and counted (the next reconciliation brings it)."""
MAX_SYNCED = 20_000
"""Post ids per link that reconciliation sent and will not send again on that link (for
``RESEND_AFTER`` seconds)."""
RESEND_AFTER = 300.0
"""Seconds after which reconciliation may send a post again on a link: the peer may have
dropped it for its rate limits, and would otherwise never get it from this node."""
DEFAULTS: dict[str, float] = {
    "author_posts_per_second": 20.0,
    "author_bytes_per_second": 128 * 1024,
    "author_burst_seconds": 10.0,
    "peer_fragments_per_second": 2_000.0,
    "peer_bytes_per_second": 2 * 1024 * 1024,
    "peer_burst_seconds": 2.0,
}
"""Settings (``CoreConfig.services["groups"]``): the rates of posts new here one author
may have this node take per group, and of group traffic one connected peer may have it
process, each with a burst of so many seconds' worth."""
EXPIRE_EVERY = 600.0
AHEAD_MS = 2_000
"""How far ahead of this node's clock a post seen may push the date of its next one."""
MAX_TRACKED = 1024
"""Posts published here whose holders are tracked (``call_holders``)."""
MAX_PENDING = 10_000
"""Announced ids awaited at once."""
MAX_UNOPENED = 2_000
MAX_MEMBERS = 4_096
MAX_ADDRESSES = 4
"""Addresses kept per member."""
HELLO_TOPIC = "shoal/member"
MEMBERS_KEY_CONTEXT = b"shoal/group-members/1"
_ADMIN_CONTEXT = b"shoal/group-admin/v1\0"
_LIMITS = Limits(max_message_bytes=64 * 1024, max_ranges=1024)


class Store(Protocol):
    """What the service asks of the post store (``shoal.groups.store.PostStore``)."""

    def add(self, envelope: Envelope, now_ms: int) -> bool: ...
    def has(self, post_id: bytes) -> bool: ...
    def get(self, post_id: bytes) -> bytes | None: ...
    def index(self, tag: bytes) -> RangeIndex: ...
    def expire(self, now_ms: int) -> int: ...


def members_key(group_id: bytes) -> bytes:
    """The DHT key a group's members provide (introducers never see the group id)."""
    return hashlib.sha256(MEMBERS_KEY_CONTEXT + group_id).digest()


def admin_proof(admin: GroupAdmin, peer: bytes) -> bytes:
    """The group key's signature saying ``peer`` is the group's admin."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.from_private_bytes(admin.seed).sign(_ADMIN_CONTEXT + peer)


def encode_hello(card: MemberCard, name: str, proof: bytes = b"") -> bytes:
    raw = name.encode()[:255]
    return card.encode() + bytes((len(raw),)) + raw + proof


def decode_hello(data: bytes, group_id: bytes) -> tuple[MemberCard, str, bool]:
    """A hello's card, name and whether its author is the admin (``RemoteProtocolError``)."""
    card = MemberCard.decode(data[:128])
    if len(data) < 129:
        raise RemoteProtocolError("hello too short")
    end = 129 + data[128]
    try:
        name = data[129:end].decode()
    except UnicodeDecodeError:
        raise RemoteProtocolError("hello name not UTF-8") from None
    proof = data[end:]
    admin = len(proof) == 64 and verify_signature(group_id, _ADMIN_CONTEXT + card.peer, proof)
    return card, name, admin


@dataclass(slots=True)
class Member:
    """A member this node knows of."""

    peer: bytes
    name: str = ""
    admin: bool = False
    card: MemberCard | None = None
    addresses: tuple[Address, ...] = ()
    tried: float = float("-inf")
    proven: bool = False
    """A post of its own opened here (or it was saved so): listed and saved as a member.
    Members only heard of (MEMBERS, invite hints, the DHT, a TAGS claim) are dial hints."""


@dataclass(slots=True)
class Carried:
    """One tag this node carries, and for a member, its group."""

    tag: bytes
    keys: GroupKeys | None = None
    admin: GroupAdmin | None = None
    name: str = ""
    eager: set[bytes] = field(default_factory=set)
    lazy: set[bytes] = field(default_factory=set)
    members: dict[bytes, Member] = field(default_factory=dict)
    heads: set[bytes] = field(default_factory=set)
    unopened: dict[bytes, int] = field(default_factory=dict)
    """Posts held for an epoch key not here yet: their ids and times (the envelopes stay
    in the store only, so that junk for an epoch nobody holds costs no memory)."""
    removed: bool = False
    """This node was removed from the group."""
    gone: dict[bytes, int] = field(default_factory=dict)
    """Removed members: peer -> the first epoch it was left out of (a post of it under
    that epoch or a later one means the admin let it back in)."""
    epoch: int = 0
    """The newest epoch seen (a removed node holds no key for it)."""
    last_ms: int = 0
    """The latest time of a post seen (a new post is dated after it)."""
    last_find: float = float("-inf")

    @property
    def member(self) -> bool:
        return self.keys is not None


class Quota:
    """Per key, at most ``count`` items and ``size`` bytes a second, with ``burst`` seconds'
    worth saved; past ``max_keys`` keys all are forgotten at once (full again)."""

    __slots__ = ("count", "size", "burst", "max_keys", "_buckets")

    def __init__(self, count: float, size: float, burst: float, max_keys: int = 65_536
                 ) -> None:
        self.count, self.size, self.burst, self.max_keys = count, size, burst, max_keys
        self._buckets: dict[bytes, tuple[TokenBucket, TokenBucket]] = {}

    def take(self, key: bytes, now: float, items: int, size: int) -> bool:
        """Take ``items`` and ``size`` bytes from ``key``'s buckets; False (nothing taken)
        if either lacks them."""
        pair = self._buckets.get(key)
        if pair is None:
            if len(self._buckets) >= self.max_keys:
                self._buckets.clear()
            pair = self._buckets[key] = (TokenBucket(self.count * self.burst, now),
                                         TokenBucket(self.size * self.burst, now))
        if not self.left(key, items, size, now):
            return False
        counted, sized = pair
        counted.tokens -= items
        sized.tokens -= size
        return True

    def left(self, key: bytes, items: int, size: int, now: float) -> bool:
        """Whether ``key``'s buckets (refilled to ``now``) hold ``items`` and ``size``."""
        pair = self._buckets.get(key)
        if pair is None:
            return True
        counted, sized = pair
        counted.take(0, self.count, self.count * self.burst, now)  # refill
        sized.take(0, self.size, self.size * self.burst, now)
        return counted.tokens >= items and sized.tokens >= size


def quotas(options: Mapping[str, Any]) -> tuple[Quota, Quota]:
    """The per-author and per-peer quotas of ``CoreConfig.services["groups"]``."""
    unknown = set(options) - set(DEFAULTS)
    if unknown:
        raise LocalProtocolError(f"unknown groups settings: {', '.join(sorted(unknown))}",
                                 code="EINVAL")
    try:
        values = {name: float(options.get(name, default)) for name, default in DEFAULTS.items()}
    except (TypeError, ValueError):
        raise LocalProtocolError("groups settings must be numbers", code="EINVAL") from None
    if min(values.values()) <= 0:
        raise LocalProtocolError("groups settings must be positive", code="EINVAL")
    burst = values["author_burst_seconds"]
    if values["author_bytes_per_second"] * burst < MAX_ENVELOPE_BYTES:
        raise LocalProtocolError("groups: author_bytes_per_second * author_burst_seconds "
                                 f"must be at least a post's largest size, {MAX_ENVELOPE_BYTES}",
                                 code="EINVAL")
    peer_burst = values["peer_burst_seconds"]
    if values["peer_bytes_per_second"] * peer_burst < g.MAX_MESSAGE or \
            values["peer_fragments_per_second"] * peer_burst < g.MAX_MESSAGE / g.FRAGMENT_DATA:
        raise LocalProtocolError("groups: a peer's burst must hold a message of the largest "
                                 f"size, {g.MAX_MESSAGE} bytes", code="EINVAL")
    return (Quota(values["author_posts_per_second"], values["author_bytes_per_second"], burst),
            Quota(values["peer_fragments_per_second"], values["peer_bytes_per_second"],
                  values["peer_burst_seconds"], max_keys=4_096))


class Link:
    """What the service keeps per connected peer."""

    __slots__ = ("connection", "peer", "tags", "member_tags", "queue", "in_flight", "carrying",
                 "next_id", "sessions", "last_sync", "started", "synced")

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.peer: bytes = connection.peer
        self.tags: set[bytes] = set()
        self.member_tags: set[bytes] = set()
        self.queue: deque[bytes | tuple[int, bytes]] = deque()
        """Messages to send: bytes, or ``(mode, post id)`` read from the store when sent."""
        self.in_flight = 0
        self.carrying: dict[int, tuple[bytes, int]] = {}
        """Posts published here and sent whole, by message id: (post id, fragments not
        yet acknowledged)."""
        self.next_id = 0
        """The next message's id on ``connection`` (ids start at 0 on each)."""
        self.sessions: dict[tuple[bytes, bool], Reconciler] = {}
        """Reconciliations by (tag, whether we started it)."""
        self.last_sync: dict[bytes, float] = {}
        self.started: dict[bytes, float] = {}
        """When the peer last started a reconciliation, by tag."""
        self.synced: dict[bytes, float] = {}
        """Ids of the posts reconciliation sent on this link (the last ``MAX_SYNCED``), and
        when: a peer that claims to lack them again is not sent them again for
        ``RESEND_AFTER`` seconds."""

    def move_to(self, connection: Connection) -> None:
        """Send on ``connection`` from now on (what went on the old one drains there)."""
        if connection is not self.connection:
            self.connection, self.in_flight, self.next_id = connection, 0, 0
            self.carrying = {}


class GroupService(Service):
    """See the module docstring."""

    name = "groups"
    requires = ("rendezvous",)
    frame_types = (g.GROUP_FRAGMENT,)

    def __init__(self, store: Store | None = None, providers: Providers | None = None
                 ) -> None:
        self.store: Store = store  # type: ignore[assignment]
        """Set before any group is carried (the node opens it on first use)."""
        self.providers = providers
        self.carried: dict[bytes, Carried] = {}
        self.links: dict[bytes, Link] = {}
        self._announcing: dict[bytes, dict[bytes, list[bytes]]] = {}
        """Ids to announce (IHAVE), by peer and tag, sent together after ``ANNOUNCE_AFTER``."""
        self._pending: dict[bytes, tuple[float, bytes, list[bytes]]] = {}
        """Announced ids awaited: id -> (deadline, tag, announcers)."""
        self.holders: dict[bytes, set[bytes]] = {}
        """The peers known to hold each of the last ``MAX_TRACKED`` posts published here:
        they acknowledged every fragment of it, sent it, or announced it."""
        self._inbound: dict[Connection, g.Reassembly] = {}
        """Messages being put together, by the connection they arrive on."""
        self._expired = float("-inf")
        self.copies = 0
        """Whole posts received (gossip and sync), for measuring redundancy."""
        self.sent_posts = 0

    def attach(self, ctx: ServiceContext, services: Mapping[str, Any]) -> None:
        super().attach(ctx, services)
        self.rendezvous: Rendezvous = services["rendezvous"]
        self.transport: Transport = ctx.transport
        self.authors, self.peers = quotas(ctx.options)
        self.sending, _ = quotas(ctx.options)
        """Per link and author: what reconciliation sends keeps to the authors' quota (the
        rest goes with the next one), so that the peer does not drop it for rate."""

    # ------------------------------------------------------------------ calls

    def call(self, now: float, op: str, *args: Any, **kwargs: Any) -> Any:
        handler = getattr(self, f"call_{op}", None)
        if handler is None:
            raise LocalProtocolError(f"groups: no call {op!r}", code="EINVAL")
        return handler(now, *args, **kwargs)

    def call_join(self, now: float, keys: GroupKeys, *, group_name: str = "",
                  admin: GroupAdmin | None = None, members: Iterable[Member] = (),
                  hello: bool = False, my_name: str = "", gone: Mapping[bytes, int] = {},
                  epoch: int = 0) -> Carried:
        """Carry a group as a member; with ``hello``, post this node's hello. ``gone`` and
        ``epoch`` are the removed members and newest epoch saved (``Carried``)."""
        carried = self.carried.get(keys.tag)
        if carried is None:
            carried = self.carried[keys.tag] = Carried(keys.tag)
        carried.keys, carried.admin, carried.name = keys, admin, group_name
        carried.gone.update(gone)
        carried.epoch = max(carried.epoch, epoch, keys.epoch)
        me = self.ctx.identity.public_key
        carried.removed = me in carried.gone
        for member in members:
            if member.peer != me and member.peer not in carried.gone:
                carried.members.setdefault(member.peer, member)
        if admin is not None:
            admin.add_member(MemberCard.of(self.ctx.identity))
        if hello:
            proof = admin_proof(admin, me) if admin is not None else b""
            self.call_publish(now, keys.group_id, encode_hello(
                MemberCard.of(self.ctx.identity), my_name, proof), HELLO_TOPIC)
        if self.providers is not None:
            self.providers.provide(members_key(keys.group_id), now)
        self._announce_tags()
        self._meet_all(carried, now)
        self._keep_peers(now)
        self._arm(now)
        return carried

    def _meet_all(self, carried: Carried, now: float) -> None:
        for link in list(self.links.values()):
            if carried.tag in link.tags:
                self._meet(link, carried, now)

    def call_carry(self, now: float, tag: bytes) -> None:
        """Carry ``tag``'s posts for others (without reading them)."""
        carried = self.carried.setdefault(tag, Carried(tag))
        self._announce_tags()
        self._meet_all(carried, now)
        self._arm(now)

    def call_drop(self, now: float, tag: bytes) -> None:
        """Stop carrying ``tag`` (leave its group)."""
        carried = self.carried.pop(tag, None)
        if carried is not None and carried.keys is not None and self.providers is not None:
            self.providers.withdraw(members_key(carried.keys.group_id))
        for link in self.links.values():
            for key in [k for k in link.sessions if k[0] == tag]:
                del link.sessions[key]
        self._announce_tags()

    def _group(self, group_id: bytes) -> Carried:
        carried = self.carried.get(group_tag(group_id))
        if carried is None or carried.keys is None:
            raise LocalProtocolError("not a member of this group", code="ENOENT")
        return carried

    def call_publish(self, now: float, group_id: bytes, data: bytes, topic: str = "",
                     parents: Iterable[bytes] | None = None) -> Post:
        """Seal, store and spread a post; the opened post."""
        carried = self._group(group_id)
        assert carried.keys is not None
        if carried.removed:
            raise LocalProtocolError("this node was removed from the group", code="EPERM")
        chosen = tuple(sorted(carried.heads))[-32:] if parents is None else tuple(parents)
        # Later than every post seen, so that time order is also causal order.
        carried.last_ms = max(self._now_ms(), carried.last_ms + 1)
        envelope = seal_post(self.ctx.identity, carried.keys, data=data, topic=topic,
                             parents=chosen, time_ms=carried.last_ms,
                             random_bytes=self.ctx.random)
        post = open_post(envelope, carried.keys)
        try:
            self.store.add(envelope, self._now_ms())
        except ShoalError as exc:
            raise LocalProtocolError(f"the store refused the post: {exc.message}",
                                     code=exc.code) from None
        self._opened(carried, post, envelope)
        self.holders[envelope.id] = set()
        while len(self.holders) > MAX_TRACKED:
            del self.holders[next(iter(self.holders))]
        self._spread(carried, envelope, None)
        return post

    def call_holders(self, now: float, post_id: bytes) -> list[bytes]:
        """The peers known to hold post ``post_id`` (one published here lately)."""
        return sorted(self.holders.get(post_id, ()))

    def _held(self, post_id: bytes, peer: bytes) -> None:
        holders = self.holders.get(post_id)
        if holders is not None:
            holders.add(peer)

    def call_remove(self, now: float, group_id: bytes, peer: bytes) -> int:
        """Remove ``peer`` (admin only): a new epoch for the others; the new epoch."""
        carried = self._group(group_id)
        if carried.admin is None:
            raise LocalProtocolError("only the group's admin removes members", code="EPERM")
        for member in carried.members.values():
            if member.card is not None:
                carried.admin.add_member(member.card)
        envelope = carried.admin.remove(peer, self._now_ms(), self.ctx.random)
        carried.members.pop(peer, None)
        assert carried.keys is not None
        carried.keys.epochs.update(carried.admin.keys.epochs)
        carried.epoch = max(carried.epoch, envelope.epoch)
        carried.gone[peer] = envelope.epoch
        self.store.add(envelope, self._now_ms())
        self._spread(carried, envelope, None)
        self.ctx.event("changed", group_id)
        return carried.keys.epoch

    def call_members(self, now: float, group_id: bytes) -> list[tuple[Member, str | None]]:
        """Proven members, each with the path of the connection to it (None: offline)."""
        carried = self._group(group_id)
        out = []
        for member in carried.members.values():
            if not member.proven:
                continue
            connection = self.ctx.connection_to(member.peer)
            out.append((member, connection.path_kind if connection is not None else None))
        return out

    def call_open(self, now: float, group_id: bytes, raw: bytes) -> Post | None:
        """Open a stored envelope of the group; None if it is no readable post."""
        carried = self._group(group_id)
        assert carried.keys is not None
        try:
            envelope = parse_envelope(raw)
            if envelope.kind != POST_KIND:
                return None
            return open_post(envelope, carried.keys)
        except PostError:
            return None

    def call_add_hint(self, now: float, group_id: bytes, peer: bytes,
                      addresses: tuple[Address, ...] = ()) -> None:
        carried = self._group(group_id)
        if peer != self.ctx.identity.public_key and peer not in carried.gone:
            self._learned(carried.members.setdefault(peer, Member(peer)), addresses)
        self._keep_peers(now)

    # ------------------------------------------------------------------ connections

    def on_connection_up(self, connection: Connection, now: float) -> None:
        link = self.links.get(connection.peer)
        if link is None:
            link = self.links[connection.peer] = Link(connection)
        else:
            link.move_to(connection)
        self._send(link, g.Message(g.TAGS, tags=self._tag_list()))

    def on_connection_replaced(self, old: Connection, new: Connection, *, hold: bool) -> None:
        link = self.links.get(old.peer)
        if link is None or link.connection is not old:
            return
        if restarted(old, new):
            # Another run of the peer's node (it crashed, say, and came back before this
            # side noticed): what the link knew of the earlier run (its tags, sessions,
            # place in the gossip tree) is void. Met afresh, the peer is reconciled with
            # at once and gets what it missed, as on a first meeting.
            self._unlink(link)
            self.links[new.peer] = Link(new)
            return
        link.move_to(new)
        self._pump(link)

    def on_connection_down(self, connection: Connection, reason: str, now: float) -> None:
        self._inbound.pop(connection, None)
        link = self.links.get(connection.peer)
        if link is None or link.connection is not connection:
            return
        self._unlink(link)
        self.ctx.event("members", None, peer=link.peer)

    def _unlink(self, link: Link) -> None:
        """Forget ``link``: its peer is no longer connected (to this run of it)."""
        del self.links[link.peer]
        self._announcing.pop(link.peer, None)
        for carried in self.carried.values():
            carried.eager.discard(link.peer)
            carried.lazy.discard(link.peer)

    def on_frame_acked(self, connection: Connection, frame: bytes) -> None:
        link = self.links.get(connection.peer)
        if link is not None and link.connection is connection:
            link.in_flight = max(0, link.in_flight - len(frame))
            if link.carrying:
                self._fragment_acked(link, frame)
            self._pump(link)

    def _fragment_acked(self, link: Link, frame: bytes) -> None:
        """A fragment of a post published here reached the peer: once all have, the peer
        holds the post. ``frame`` is our own encoding: type u8, length varint, body."""
        _, start = decode_varint(frame, 1)
        message_id, _ = decode_varint(frame, start)
        entry = link.carrying.get(message_id)
        if entry is None:
            return
        post_id, left = entry
        if left > 1:
            link.carrying[message_id] = (post_id, left - 1)
            return
        del link.carrying[message_id]
        self._held(post_id, link.peer)

    def on_frame(self, connection: Connection, frame: Frame, now: float) -> None:
        assert isinstance(frame, Extension)
        if self.store is None:
            return
        link = self.links.get(connection.peer)
        if link is None:
            link = self.links[connection.peer] = Link(connection)
        reassembly = self._inbound.get(connection)
        if reassembly is None:
            reassembly = self._inbound[connection] = g.Reassembly()
        data = reassembly.take(frame.body)
        if data is None:
            return
        if not self._peer_allows(link, data, now):
            return
        message = g.decode(data)
        handler = _HANDLERS[message.kind]
        handler(self, link, message, now)

    def _peer_allows(self, link: Link, data: bytes, now: float) -> bool:
        """Whether ``link``'s peer is within its quota of group traffic, charged the
        fragments and bytes of message ``data``. Over it, the message is dropped and
        counted (what it brought comes again with the next reconciliation), unless it
        is TAGS or PRUNE, which only change what this node sends."""
        fragments = max(1, -(-len(data) // g.FRAGMENT_DATA))
        kind = data[0] if data else -1
        if self.peers.take(link.peer, now, fragments, len(data)) or kind in (g.TAGS, g.PRUNE):
            return True
        self.ctx.stats["groups_dropped_peer_rate"] += 1
        return False

    def _author_spent(self, raw: bytes, now: float) -> bool:
        """Whether the author the envelope ``raw`` names has no quota left: then it is
        dropped before its signature is checked (only checked posts take from the quota,
        so a forger naming someone else cannot spend it)."""
        if len(raw) < HEADER_BYTES or self.authors.left(
                raw[2:34] + envelope_author(raw), 1, len(raw), now):
            return False
        self.ctx.stats["groups_dropped_rate"] += 1
        self._pending.pop(hashlib.sha256(raw).digest(), None)
        return True

    def _author_allows(self, envelope: Envelope, now: float) -> bool:
        """Whether the envelope's author is within its quota of posts new to this node in
        the group (gossip and reconciliation alike); over it, the post is neither kept nor
        passed on now, and comes again with a later reconciliation."""
        if self.authors.take(envelope.tag + envelope.author, now, 1, len(envelope.raw)):
            return True
        self.ctx.stats["groups_dropped_rate"] += 1
        self._pending.pop(envelope.id, None)
        return False

    def _sync_allows(self, link: Link, tag: bytes, post_id: bytes, now: float) -> bool:
        """Whether reconciliation may send ``post_id`` on ``link`` now, within its
        author's quota on that link; if not it waits for a later reconciliation."""
        raw = self.store.get(post_id)
        if raw is None:
            return False
        if self.sending.take(link.peer + tag + envelope_author(raw), now, 1, len(raw)):
            return True
        self.ctx.stats["groups_sync_deferred"] += 1
        return False

    # ------------------------------------------------------------------ sending

    def _send(self, link: Link, message: g.Message | tuple[int, bytes]) -> None:
        if len(link.queue) >= MAX_QUEUE:
            self.ctx.stats["groups_dropped_queue_full"] += 1
            return
        link.queue.append(g.encode(message) if isinstance(message, g.Message) else message)
        self._pump(link)

    def _pump(self, link: Link) -> None:
        while link.queue and link.in_flight < WINDOW:
            item = link.queue.popleft()
            if isinstance(item, tuple):
                mode, post_id = item
                raw = self.store.get(post_id)
                if raw is None:
                    continue
                data = g.encode(g.Message(g.POST, mode=mode, data=raw))
                self.sent_posts += 1
                self.ctx.stats["groups_posts_sent_" + ("sync" if mode else "gossip")] += 1
            else:
                data = item
            bodies = g.fragments(link.next_id, data)
            if isinstance(item, tuple) and item[1] in self.holders:
                link.carrying[link.next_id] = (item[1], len(bodies))
            for body in bodies:
                frame = Extension(g.GROUP_FRAGMENT, body)
                link.in_flight += len(body) + 4
                self.ctx.send(link.connection, frame, notify=True)
            link.next_id += 1

    def _tag_list(self) -> tuple[tuple[bytes, int], ...]:
        return tuple((tag, int(c.member)) for tag, c in self.carried.items())[:g.MAX_TAGS]

    def _announce_tags(self) -> None:
        message = g.Message(g.TAGS, tags=self._tag_list())
        for link in self.links.values():
            self._send(link, message)

    # ------------------------------------------------------------------ receiving

    def _on_tags(self, link: Link, message: g.Message, now: float) -> None:
        link.tags = {tag for tag, _ in message.tags}
        link.member_tags = {tag for tag, flags in message.tags if flags & 1}
        for tag, carried in self.carried.items():
            if tag not in link.tags:
                carried.eager.discard(link.peer)
                carried.lazy.discard(link.peer)
            else:
                self._meet(link, carried, now)
        self.ctx.event("members", None, peer=link.peer)

    def _meet(self, link: Link, carried: Carried, now: float) -> None:
        """``link``'s peer carries ``carried``'s tag too: gossip with it, and reconcile
        (the side with the lower peer id starts)."""
        if link.peer not in carried.eager and link.peer not in carried.lazy:
            (carried.eager if len(carried.eager) < EAGER else carried.lazy).add(link.peer)
            if self.ctx.identity.public_key < link.peer:
                self._start_sync(link, carried.tag, now)
            if carried.member and carried.tag in link.member_tags:
                if link.peer not in carried.members and link.peer not in carried.gone \
                        and len(carried.members) < MAX_MEMBERS:
                    carried.members[link.peer] = Member(link.peer)
                    self._met(carried)
                self._send(link, self._members_message(carried))

    def _met(self, carried: Carried) -> None:
        """Members new to this node: "changed", so that the node keeps them (a member
        restarted after a crash dials them, whoever else is gone)."""
        if carried.keys is not None:
            self.ctx.event("changed", carried.keys.group_id)

    def _on_members(self, link: Link, message: g.Message, now: float) -> None:
        carried = self.carried.get(message.tag)
        if carried is None or not carried.member or message.tag not in link.member_tags:
            return
        me = self.ctx.identity.public_key
        known = len(carried.members)
        for peer, addresses in message.members:
            if peer == me or peer in carried.gone or (peer not in carried.members and
                                                      len(carried.members) >= MAX_MEMBERS):
                continue
            self._learned(carried.members.setdefault(peer, Member(peer)), addresses)
        if len(carried.members) > known:
            self._met(carried)
        self._keep_peers(now)

    def _members_message(self, carried: Carried) -> g.Message:
        """MEMBERS: the members known, with the address of those connected."""
        entries = []
        for peer in list(carried.members)[:g.MAX_IDS]:
            connection = self.ctx.connection_to(peer)
            address = connection.address if connection is not None and \
                not connection.path.relayed else None
            entries.append((peer, (address,) if address else ()))
        return g.Message(g.MEMBERS, tag=carried.tag, members=tuple(entries))

    def _on_post(self, link: Link, message: g.Message, now: float) -> None:
        self.copies += 1
        post_id = hashlib.sha256(message.data).digest()  # the envelope's id
        if self.store.has(post_id):
            self._duplicate(link, message)  # held already: no need to check it again
            return
        if self._author_spent(message.data, now):
            return
        try:
            envelope = parse_envelope(message.data)
        except ForgedPostError:
            self.ctx.stats["groups_dropped_forged"] += 1
            return
        except PostError:
            self.ctx.stats["groups_dropped_malformed"] += 1
            return
        carried = self.carried.get(envelope.tag)
        if carried is None:
            self.ctx.stats["groups_dropped_not_carried"] += 1
            return
        if not self._author_allows(envelope, now):
            return
        self._pending.pop(post_id, None)
        self._held(post_id, link.peer)
        opened = None
        if carried.keys is not None and envelope.kind == POST_KIND:
            # A member checks what it can read before keeping or passing it on.
            try:
                opened = self._open(carried, envelope)
            except PostError:
                return
        try:
            added = self.store.add(envelope, self._now_ms())
        except ShoalError:
            self.ctx.stats["groups_dropped_refused"] += 1
            return
        if not added:
            self._duplicate(link, message)
            return
        if message.mode == g.GOSSIP:
            carried.lazy.discard(link.peer)
            carried.eager.add(link.peer)
        if opened is not None:
            self._opened(carried, opened, envelope)
        elif carried.member and not self._take(carried, envelope):
            return
        self._spread(carried, envelope, link.peer, push=message.mode == g.GOSSIP)

    def _duplicate(self, link: Link, message: g.Message) -> None:
        """A post held already came again: a pushed one makes its link lazy (PRUNE)."""
        self.ctx.stats["groups_duplicates"] += 1
        if message.mode != g.GOSSIP:
            return
        tag = message.data[2:34]  # the envelope's tag, after its version and kind
        carried = self.carried.get(tag)
        if carried is not None:
            carried.eager.discard(link.peer)
            carried.lazy.add(link.peer)
            self._send(link, g.Message(g.PRUNE, tag=tag))

    def _take(self, carried: Carried, envelope: Envelope) -> bool:
        """Open a new envelope of a member's group; False if it was dropped."""
        assert carried.keys is not None
        if envelope.kind == GRANT:
            return self._take_grant(carried, envelope)
        try:
            post = self._open(carried, envelope)
        except PostError:
            return False
        if post is not None:
            self._opened(carried, post, envelope)
        elif len(carried.unopened) < MAX_UNOPENED:
            carried.unopened[envelope.id] = envelope.time_ms
        return True

    def _open(self, carried: Carried, envelope: Envelope) -> Post | None:
        """A post of a member's group, opened; None if its epoch key is not here yet.
        ``PostError`` (counted as a drop) if it does not decrypt or is malformed."""
        assert carried.keys is not None
        try:
            return open_post(envelope, carried.keys)
        except UnknownEpochError:
            return None
        except TamperedPostError:
            self.ctx.stats["groups_dropped_tampered"] += 1
            raise
        except PostError:
            self.ctx.stats["groups_dropped_malformed"] += 1
            raise

    def _take_grant(self, carried: Carried, envelope: Envelope) -> bool:
        assert carried.keys is not None
        if envelope.author != carried.keys.group_id:
            self.ctx.stats["groups_dropped_forged"] += 1
            return False
        if envelope.epoch in carried.keys.epochs:
            return True
        try:
            mine = open_grant(envelope, self.ctx.identity, carried.keys)
            granted = set(grantees(envelope))
        except PostError:
            self.ctx.stats["groups_dropped_malformed"] += 1
            return False
        if envelope.epoch > carried.epoch:
            # The members known before this epoch whom it leaves out were removed.
            carried.epoch = envelope.epoch
            for peer in [p for p in carried.members if p not in granted]:
                del carried.members[peer]
                carried.gone.setdefault(peer, envelope.epoch)
        if not mine:
            if envelope.epoch >= carried.epoch:
                carried.removed = True
                carried.gone.setdefault(self.ctx.identity.public_key, envelope.epoch)
                self.ctx.event("removed", carried.keys.group_id)
            return True
        self.ctx.event("changed", carried.keys.group_id)
        waiting, carried.unopened = carried.unopened, {}
        for _, post_id in sorted((t, i) for i, t in waiting.items()):
            raw = self.store.get(post_id)
            if raw is not None:  # not pushed out of the store meanwhile
                self._take(carried, parse_envelope(raw))
        return True

    def _opened(self, carried: Carried, post: Post, envelope: Envelope) -> None:
        assert carried.keys is not None
        # Dated after what was seen, but not led ahead of this node's clock by a post
        # dated in the future (peers whose clocks lag would refuse what is posted next).
        carried.last_ms = max(carried.last_ms, min(post.time_ms, self._now_ms() + AHEAD_MS))
        if post.topic != HELLO_TOPIC:
            carried.heads.difference_update(post.parents)
            carried.heads.add(post.id)
            if len(carried.heads) > 64:
                carried.heads = set(sorted(carried.heads)[-32:])
        author = envelope.author
        me = self.ctx.identity.public_key
        out_from = carried.gone.get(author)
        if out_from is not None and envelope.epoch >= out_from and author != me:
            del carried.gone[author]  # let back in by the admin
            out_from = None
        if author != me and out_from is None:
            self._admit(carried, author)
        if post.topic == HELLO_TOPIC:
            try:
                card, name, admin = decode_hello(post.data, carried.keys.group_id)
            except RemoteProtocolError:
                self.ctx.stats["groups_dropped_malformed"] += 1
                return
            if card.peer == author and author != me:
                member = carried.members.get(author)
                if member is not None:
                    member.card, member.name, member.admin = card, name, admin
                    if carried.admin is not None:
                        carried.admin.add_member(card)
                        self.ctx.event("changed", carried.keys.group_id)
            return
        self.ctx.event("post", (carried.keys.group_id, post))

    def _admit(self, carried: Carried, author: bytes) -> None:
        """Keep ``author``, proven a member by a post that opened: when the table is full,
        in place of a member only heard of (in MEMBERS, which anyone claiming the tag can
        send) who is not proven and not connected."""
        known = carried.members.get(author)
        if known is not None:
            known.proven = True
            return
        if len(carried.members) >= MAX_MEMBERS:
            unproven = next((peer for peer, member in carried.members.items()
                             if not member.proven and peer not in self.links), None)
            if unproven is None:
                return
            del carried.members[unproven]
        carried.members[author] = Member(author, proven=True)

    def _spread(self, carried: Carried, envelope: Envelope, source: bytes | None, *,
                push: bool = True) -> None:
        """Push a new envelope to the eager peers and announce it to the lazy ones (with
        ``push`` false, announce it to all: a post that came by anti-entropy is more
        likely old news to the others)."""
        post_id = envelope.id
        if push:
            for peer in list(carried.eager):
                link = self.links.get(peer)
                if peer != source and link is not None:
                    self._send(link, (g.GOSSIP, post_id))
        for peer in list(carried.lazy) if push else [*carried.eager, *carried.lazy]:
            if peer != source and peer in self.links:
                batch = self._announcing.setdefault(peer, {}).setdefault(carried.tag, [])
                batch.append(post_id)
                if len(batch) >= g.MAX_IDS:
                    self._flush_announcements(peer)
        if self._announcing and self.ctx.timer(_ANNOUNCE) is None:
            self.set_timer(self.ctx.now + ANNOUNCE_AFTER, _ANNOUNCE)

    def _flush_announcements(self, only: bytes | None = None) -> None:
        peers = [only] if only is not None else list(self._announcing)
        for peer in peers:
            batches = self._announcing.pop(peer, {})
            link = self.links.get(peer)
            if link is None:
                continue
            for tag, ids in batches.items():
                self._send(link, g.Message(g.IHAVE, tag=tag, ids=tuple(ids)))
                self.ctx.stats["groups_ihave_sent"] += 1

    def _on_ihave(self, link: Link, message: g.Message, now: float) -> None:
        if message.tag not in self.carried:
            return
        for post_id in message.ids:
            if self.store.has(post_id):
                self._held(post_id, link.peer)
                continue
            entry = self._pending.get(post_id)
            if entry is None:
                if len(self._pending) >= MAX_PENDING:
                    self.ctx.stats["groups_dropped_ihave"] += 1
                    continue
                self._pending[post_id] = (now + GRAFT_AFTER, message.tag, [link.peer])
            elif link.peer not in entry[2] and len(entry[2]) < 8:
                entry[2].append(link.peer)
        self._arm(now)

    def _on_graft(self, link: Link, message: g.Message, now: float) -> None:
        carried = self.carried.get(message.tag)
        if carried is None:
            return
        carried.lazy.discard(link.peer)
        carried.eager.add(link.peer)
        for post_id in message.ids:
            self._send(link, (g.GOSSIP, post_id))

    def _on_prune(self, link: Link, message: g.Message, now: float) -> None:
        carried = self.carried.get(message.tag)
        if carried is not None and link.peer in carried.eager:
            carried.eager.discard(link.peer)
            carried.lazy.add(link.peer)

    # ------------------------------------------------------------------ anti-entropy

    def _start_sync(self, link: Link, tag: bytes, now: float) -> None:
        session = link.sessions[(tag, True)] = Reconciler(self.store.index(tag), _LIMITS)
        link.last_sync[tag] = now
        self._send(link, g.Message(g.RECONCILE, tag=tag, mode=g.START,
                                   data=session.initiate()))

    def _on_reconcile(self, link: Link, message: g.Message, now: float) -> None:
        tag = message.tag
        if tag not in self.carried:
            return
        ours = message.mode == g.REPLY
        key = (tag, ours)
        session = link.sessions.get(key)
        if message.mode == g.START:
            if now - link.started.get(tag, float("-inf")) < START_GAP:
                self.ctx.stats["groups_dropped_sync_too_often"] += 1
                return
            link.started[tag] = now
            session = link.sessions[key] = Reconciler(self.store.index(tag), _LIMITS)
        if session is None or session.state not in (State.READY, State.WAITING):
            return  # a session that ended (the tag dropped, or a restart): ignore
        try:
            reply = session.receive(message.data)
        except RemoteProtocolError:
            # The session ends; the connection and its gossip go on.
            self.ctx.stats["groups_dropped_sync_broken"] += 1
            del link.sessions[key]
            return
        for post_id in session.take_have():
            if now - link.synced.get(post_id, -RESEND_AFTER) < RESEND_AFTER:
                self.ctx.stats["groups_sync_sent_already"] += 1
                continue
            if not self._sync_allows(link, tag, post_id, now):
                continue
            if len(link.queue) < MAX_QUEUE:
                link.synced.pop(post_id, None)
                link.synced[post_id] = now
                if len(link.synced) > MAX_SYNCED:
                    del link.synced[next(iter(link.synced))]
            self._send(link, (g.SYNC, post_id))
        session.take_need()
        if reply is not None:
            self._send(link, g.Message(g.RECONCILE, tag=tag,
                                       mode=g.CONTINUE if ours else g.REPLY, data=reply))
        else:
            del link.sessions[key]

    # ------------------------------------------------------------------ timers

    def _arm(self, now: float) -> None:
        deadline = now + TICK
        if self._pending:
            deadline = min(deadline, min(entry[0] for entry in self._pending.values()))
        current = self.ctx.timer()
        if current is None or deadline < current:
            self.set_timer(deadline)

    def on_timer(self, now: float, key: object = None) -> None:
        if key == _ANNOUNCE:
            self._flush_announcements()
            return
        for post_id, (deadline, tag, announcers) in list(self._pending.items()):
            if deadline > now:
                continue
            if self.store.has(post_id) or tag not in self.carried:
                del self._pending[post_id]
                continue
            while announcers and announcers[0] not in self.links:
                announcers.pop(0)
            if not announcers:
                del self._pending[post_id]
                continue
            peer = announcers.pop(0)
            announcers.append(peer)
            self._pending[post_id] = (now + GRAFT_AFTER * 2, tag, announcers)
            carried = self.carried[tag]
            carried.lazy.discard(peer)
            carried.eager.add(peer)
            self._send(self.links[peer], g.Message(g.GRAFT, tag=tag, ids=(post_id,)))
        for tag, carried in self.carried.items():
            shared = [link for link in self.links.values() if tag in link.tags]
            if not carried.eager and carried.lazy:  # cut off from the tree: rejoin it
                carried.eager.add(min(carried.lazy, key=lambda p: self.ctx.random(4)))
                carried.lazy.difference_update(carried.eager)
            if shared:
                link = min(shared, key=lambda li: li.last_sync.get(tag, float("-inf")))
                if now - link.last_sync.get(tag, float("-inf")) >= SYNC_EVERY:
                    self._start_sync(link, tag, now)
        if self.store is not None and now - self._expired >= EXPIRE_EVERY:
            self._expired = now
            self.store.expire(self._now_ms())
        self._keep_peers(now)
        self.set_timer(None)
        if self.carried:
            self._arm(now)

    @staticmethod
    def _learned(member: Member, addresses: Iterable[Address]) -> None:
        """New addresses of ``member``: keep them, and dial them at the next chance."""
        known = tuple(dict.fromkeys((*member.addresses, *addresses)))[-MAX_ADDRESSES:]
        if known != member.addresses:
            member.addresses = known
            member.tried = float("-inf")

    def _keep_peers(self, now: float) -> None:
        """Dial known members of groups with fewer than ``TARGET_PEERS`` carriers."""
        for carried in self.carried.values():
            if carried.keys is None:
                continue
            connected = sum(1 for link in self.links.values() if carried.tag in link.tags)
            # Dials still under way count too, so that news of members does not add more.
            connected += sum(1 for member in carried.members.values()
                             if now - member.tried < DIAL_WAIT and member.peer not in self.links)
            if connected >= TARGET_PEERS:
                continue
            # In random order, so that the members everyone heard of first are not
            # everyone's first choice.
            candidates = [member for member in carried.members.values()
                          if member.peer not in self.links and now - member.tried >= RETRY_AFTER]
            candidates.sort(key=lambda _: self.ctx.random(4))
            for member in candidates:
                if connected >= TARGET_PEERS:
                    break
                member.tried = now
                connected += 1
                if member.addresses:
                    for address in member.addresses:
                        self.transport.dial(address, now, expected=member.peer)
                else:
                    self.rendezvous.reach(member.peer, now)
            if self.providers is not None and connected < TARGET_PEERS and \
                    now - carried.last_find >= FIND_EVERY:
                carried.last_find = now
                self.providers.find(members_key(carried.keys.group_id), now,
                                    self._found_callback(carried.tag))

    def _found_callback(self, tag: bytes) -> Callable[[bytes, list[Address]], None]:
        def found(peer: bytes, addresses: list[Address]) -> None:
            carried = self.carried.get(tag)
            if carried is None or peer == self.ctx.identity.public_key or \
                    peer in carried.gone or len(carried.members) >= MAX_MEMBERS:
                return
            member = carried.members.setdefault(peer, Member(peer))
            self._learned(member, addresses)

        return found

    def _now_ms(self) -> int:
        return max(0, int(self.ctx.wall * 1000))

    def close(self, now: float) -> None:
        if self.providers is not None:
            for carried in self.carried.values():
                if carried.keys is not None:
                    self.providers.withdraw(members_key(carried.keys.group_id))


_HANDLERS: dict[int, Callable[[GroupService, Link, g.Message, float], None]] = {
    g.TAGS: GroupService._on_tags,
    g.POST: GroupService._on_post,
    g.IHAVE: GroupService._on_ihave,
    g.GRAFT: GroupService._on_graft,
    g.PRUNE: GroupService._on_prune,
    g.RECONCILE: GroupService._on_reconcile,
    g.MEMBERS: GroupService._on_members,
}
