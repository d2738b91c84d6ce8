"""Groups on ``shoal.Node``: ``Node.create_group``, ``Node.join`` and ``shoal.Group``.

The node's groups service (``shoal.core.services.groups``) carries posts; this module
keeps what a member must not lose in the node's data dir: ``groups.json`` (each group's
name, epoch keys, the admin's group key, the members known, those removed and the newest
epoch; and the tags carried for others; readable by the user only)
and the posts in ``groups.sqlite3`` (``shoal.groups.store.PostStore``). A node without a
data dir keeps both in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections import deque
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shoal.core.groups import posts as core
from shoal.core.groups.posts import GroupAdmin, GroupKeys, Invite, MemberCard, group_tag
from shoal.core.services.groups import HELLO_TOPIC, GroupService
from shoal.core.services.groups import Member as CoreMember
from shoal.errors import ClosedError, LocalProtocolError, ShoalError
from shoal.net import format_address, parse_address

if TYPE_CHECKING:
    from shoal.aio.node import Node
    from shoal.groups.documents import SharedDocument
    from shoal.groups.store import PostStore

__all__ = ["Group", "GroupDocument", "Groups", "Member", "Post"]

GROUPS_FILE = "groups.json"


@dataclass(frozen=True, slots=True)
class Post:
    """A post of a group, opened."""

    id: str
    author: str
    data: bytes
    topic: str
    parents: tuple[str, ...]
    time: float

    @classmethod
    def of(cls, post: core.Post) -> Post:
        return cls(post.id.hex(), post.author, post.data, post.topic,
                   tuple(p.hex() for p in post.parents), post.time)


@dataclass(frozen=True, slots=True)
class Member:
    """A member of a group as this node knows it."""

    peer_id: str
    online: bool
    path: str | None
    admin: bool
    name: str


class _Feed:
    """Posts of one group for one reader: stored ones first, then live, each once."""

    def __init__(self, group: Group, topic: str | None) -> None:
        self._group = group
        self._topic = topic
        self._queue: asyncio.Queue[core.Post | None] = asyncio.Queue()
        self._seen: set[bytes] = set()
        self._stored = deque(group._stored_posts())
        group._feeds.append(self)

    def _wants(self, post: core.Post) -> bool:
        return post.topic != HELLO_TOPIC and (self._topic is None or post.topic == self._topic)

    def __aiter__(self) -> _Feed:
        return self

    async def __anext__(self) -> Post:
        while True:
            if self._stored:
                post: core.Post | None = self._stored.popleft()
            else:
                post = await self._queue.get()
                if post is None:
                    self._queue.put_nowait(None)
                    raise StopAsyncIteration
            assert post is not None
            if post.id in self._seen or not self._wants(post):
                continue
            self._seen.add(post.id)
            return Post.of(post)

    def close(self) -> None:
        if self in self._group._feeds:
            self._group._feeds.remove(self)
        self._queue.put_nowait(None)


class GroupDocument:
    """A ``pycrdt.Doc`` shared by a group: local edits go out as posts, others' come in."""

    def __init__(self, group: Group, name: str) -> None:
        from shoal.groups.documents import SharedDocument

        self.group = group
        self.name = name
        self._shared: SharedDocument = SharedDocument(name)
        self.doc = self._shared.doc
        self._updates: asyncio.Queue[bytes | None] = asyncio.Queue()
        """Updates for ``updates``; a None ends them (left there for other readers)."""
        self._closed = False
        self._flushing = False
        for post in group._stored_posts():
            if post.topic == self._shared.topic:
                self._take(post, live=False)
        self._watch = self.doc.observe(self._on_edit)

    def _on_edit(self, _: object) -> None:
        if not self._shared._applying and not self._flushing:
            self._flushing = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flushing = False
        if self._closed:
            return
        update = self._shared.take_update()
        if update is None:
            return
        post = self.group._publish(update.data, self._shared.topic,
                                   update.parents)
        self._shared.published(bytes.fromhex(post.id), update)

    def _take(self, post: core.Post, *, live: bool = True) -> None:
        try:
            self._shared.apply_post(post)
        except ShoalError:
            return
        if live:
            self._updates.put_nowait(post.data)

    def state(self) -> bytes:
        """The whole document as one update."""
        return self._shared.state()

    def apply(self, update: bytes) -> None:
        """Merge an update made elsewhere (a page's Yjs, say); it is published as a post."""
        self.doc.apply_update(update)

    async def updates(self) -> AsyncIterator[bytes]:
        """Updates merged from other members' posts, as they come, until the document
        closes (the node left the group, or closed)."""
        while True:
            update = await self._updates.get()
            if update is None:
                self._updates.put_nowait(None)
                return
            yield update

    def close(self) -> None:
        """Stop following the group: edits are no longer published, ``updates`` ends."""
        if self._closed:
            return
        self._closed = True
        self._updates.put_nowait(None)
        self.doc.unobserve(self._watch)
        self._shared.close()
        self.group._documents.pop(self.name, None)


class Group:
    """A group this node is a member of (``Node.create_group``, ``Node.join``)."""

    def __init__(self, groups: Groups, group_id: bytes, name: str) -> None:
        self._groups = groups
        self._id = group_id
        self._tag = group_tag(group_id)
        self.name = name
        self._feeds: list[_Feed] = []
        self._documents: dict[str, GroupDocument] = {}
        self._left = False

    @property
    def id(self) -> str:
        """The group id: the hex of the group's public key."""
        return self._id.hex()

    @property
    def tag(self) -> str:
        """The tag the group's posts carry (hex): what a node that carries them for the
        members without reading them needs (``Node.carry``)."""
        return self._tag.hex()

    @property
    def is_admin(self) -> bool:
        return self._groups.service.carried[self._tag].admin is not None

    def __repr__(self) -> str:
        return f"Group(name={self.name!r}, id={self.id[:16]}...)"

    def _stored_posts(self) -> Iterator[core.Post]:
        """The posts of the store this member can read, oldest first."""
        for raw in self._groups.store.envelopes(self._tag):
            post = self._groups.open(self, raw)
            if post is not None:
                yield post

    def _close_readers(self) -> None:
        """End every feed and document of the group."""
        for feed in list(self._feeds):
            feed.close()
        for document in list(self._documents.values()):
            document.close()

    def _check(self) -> None:
        if self._left:
            raise ClosedError("this node left the group")
        if self._groups.closed:
            raise ClosedError("the node is closed")

    def invite(self) -> str:
        """An invite: the group id, its current key and hints of where members are
        (give it as you would the key itself)."""
        self._check()
        carried = self._groups.service.carried[self._tag]
        assert carried.keys is not None
        node = self._groups.node
        hints = []
        with contextlib.suppress(ShoalError):
            hints.append(f"{node.peer_id}@{format_address(node.address)}")
        for member, path in self._groups.node.call("groups", "members", self._id):
            if len(hints) >= core.MAX_HINTS:
                break
            if path is not None:
                connection = node.endpoint.connection_to(member.peer)
                address = connection.address if connection is not None and path == "direct" \
                    else None
                hints.append(member.peer.hex() + (f"@{format_address(address)}"
                                                  if isinstance(address, tuple) else ""))
        epoch = carried.keys.epoch
        return Invite(self._id, epoch, carried.keys.epochs[epoch], self.name,
                      tuple(hints)).encode()

    def _publish(self, data: bytes, topic: str, parents: tuple[bytes, ...] | None) -> Post:
        self._check()
        post = self._groups.node.call("groups", "publish", self._id, bytes(data), topic,
                                      parents)
        return Post.of(post)

    async def publish(self, data: bytes, topic: str = "") -> Post:
        """Post ``data`` on ``topic`` to every member (stored here first, so members that
        are offline get it when any carrier meets them)."""
        if topic == HELLO_TOPIC:
            raise LocalProtocolError(f"topic {HELLO_TOPIC!r} is reserved", code="EINVAL")
        return self._publish(data, topic, None)

    def subscribe(self, topic: str | None = None) -> AsyncIterator[Post]:
        """Posts (of ``topic``, or all): those stored first, oldest first, then new ones
        as they come; each once."""
        self._check()
        return _Feed(self, topic)

    def members(self) -> list[Member]:
        """The members this node knows of, itself first."""
        self._check()
        carried = self._groups.service.carried[self._tag]
        node = self._groups.node
        out = [Member(node.peer_id, True, "self", carried.admin is not None,
                      self._groups.my_name)]
        for member, path in node.call("groups", "members", self._id):
            out.append(Member(member.peer.hex(), path is not None, path, member.admin,
                              member.name))
        return out

    def document(self, name: str) -> GroupDocument:
        """The shared document ``name`` of this group (one object per name)."""
        self._check()
        document = self._documents.get(name)
        if document is None:
            document = self._documents[name] = GroupDocument(self, name)
        return document

    async def remove(self, peer_id: str) -> None:
        """Remove a member (admin only): the others get a new key it does not have."""
        self._check()
        try:
            peer = bytes.fromhex(peer_id)
        except ValueError:
            raise LocalProtocolError("not a peer id", code="EINVAL") from None
        self._groups.node.call("groups", "remove", self._id, peer)
        self._groups.save()

    async def leave(self) -> None:
        """Stop being a member here: forget the keys (posts stay in the store until
        they expire)."""
        if self._left:
            return
        self._groups.node.call("groups", "drop", self._tag)
        self._left = True
        self._close_readers()
        self._groups.groups.pop(self._id, None)
        self._groups.save()

    def _on_post(self, post: core.Post) -> None:
        for feed in self._feeds:
            feed._queue.put_nowait(post)
        if post.topic.startswith("doc:"):
            document = self._documents.get(post.topic[4:])
            if document is not None:
                document._take(post)


def _tag_bytes(tag: str) -> bytes:
    try:
        raw = bytes.fromhex(tag)
    except (ValueError, TypeError):
        raw = b""
    if len(raw) != 32:
        raise LocalProtocolError("a group tag is 64 hex digits", code="EINVAL")
    return raw


def _saved_members(members: Iterable[CoreMember]) -> list[dict[str, Any]]:
    """Proven members, then up to ``MAX_HINTS`` others with addresses, kept as dial hints
    (``"hint": true``) only: a peer that made members up gets none of them listed."""
    proven = [m for m in members if m.proven]
    hints = [m for m in members if not m.proven and m.addresses][:core.MAX_HINTS]
    return [{"peer": m.peer.hex(), "name": m.name, "admin": m.admin,
             "card": m.card.encode().hex() if m.card else None,
             "addresses": [format_address(a) for a in m.addresses],
             **({} if m.proven else {"hint": True})} for m in proven + hints]


class Groups:
    """A node's groups: its service, its store and what it keeps on disk."""

    def __init__(self, node: Node, service: GroupService, data_dir: Path | None) -> None:
        from shoal.groups.store import PostStore

        self.node = node
        self.service = service
        self.data_dir = data_dir
        self.my_name = ""
        self.store: PostStore = (PostStore.in_data_dir(data_dir) if data_dir is not None
                                 else PostStore(":memory:"))
        service.store = self.store
        self.groups: dict[bytes, Group] = {}
        self.closed = False

    @property
    def _file(self) -> Path | None:
        return self.data_dir / GROUPS_FILE if self.data_dir is not None else None

    def load(self) -> None:
        """Take up the groups saved in the data dir."""
        path = self._file
        if path is None or not path.exists():
            return
        try:
            saved = json.loads(path.read_text())
            for entry in saved["groups"]:
                group_id = bytes.fromhex(entry["id"])
                keys = GroupKeys(group_id, {int(k): bytes.fromhex(v)
                                            for k, v in entry["epochs"].items()})
                admin = None
                if entry.get("admin"):
                    admin = GroupAdmin(bytes.fromhex(entry["admin"]), keys, entry["name"])
                members = []
                for m in entry.get("members", []):
                    card = MemberCard.decode(bytes.fromhex(m["card"])) if m.get("card") \
                        else None
                    members.append(CoreMember(bytes.fromhex(m["peer"]), m.get("name", ""),
                                              bool(m.get("admin")), card,
                                              tuple(parse_address(a)
                                                    for a in m.get("addresses", [])),
                                              proven=not m.get("hint")))
                gone = {bytes.fromhex(k): int(v) for k, v in entry.get("removed", {}).items()}
                self._add(keys, entry["name"], admin, members, hello=False, gone=gone,
                          epoch=int(entry.get("epoch", 0)))
            for tag in saved.get("carried", []):
                self.node.call("groups", "carry", _tag_bytes(tag))
        except (OSError, ValueError, KeyError, TypeError, ShoalError) as exc:
            raise ShoalError(f"{path}: unreadable groups file ({exc})", code="EIO") from None

    def save(self) -> None:
        path = self._file
        if path is None:
            return
        entries = []
        for group_id in self.groups:
            carried = self.service.carried.get(group_tag(group_id))
            if carried is None or carried.keys is None:
                continue
            entries.append({
                "id": group_id.hex(), "name": carried.name,
                "epochs": {str(k): v.hex() for k, v in carried.keys.epochs.items()},
                "admin": carried.admin.seed.hex() if carried.admin is not None else None,
                "members": _saved_members(carried.members.values()),
                "removed": {peer.hex(): epoch for peer, epoch in carried.gone.items()},
                "epoch": carried.epoch,
            })
        carried = [tag.hex() for tag, entry in self.service.carried.items()
                   if entry.keys is None]
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(".tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump({"groups": entries, "carried": carried}, out)
        os.replace(temporary, path)

    def _add(self, keys: GroupKeys, name: str, admin: GroupAdmin | None,
             members: list[CoreMember], *, hello: bool, gone: dict[bytes, int] | None = None,
             epoch: int = 0) -> Group:
        self.node.call("groups", "join", keys, group_name=name, admin=admin, members=members,
                       hello=hello, my_name=self.my_name, gone=gone or {}, epoch=epoch)
        group = self.groups[keys.group_id] = Group(self, keys.group_id, name)
        return group

    def create(self, name: str) -> Group:
        admin = GroupAdmin.create(name, self.node.endpoint.random)
        group = self._add(admin.keys, name, admin, [], hello=True)
        self.save()
        return group

    def join(self, invite: str) -> Group:
        try:
            parsed = Invite.decode(invite)
        except ShoalError as exc:
            raise LocalProtocolError(exc.message, code="EINVAL") from None
        existing = self.groups.get(parsed.group_id)
        if existing is not None:
            return existing
        members = []
        for hint in parsed.hints:
            peer_hex, _, address = hint.partition("@")
            try:
                peer = bytes.fromhex(peer_hex)
                addresses = (parse_address(address),) if address else ()
            except (ValueError, ShoalError):
                continue
            if len(peer) == 32:
                members.append(CoreMember(peer, addresses=addresses))
        group = self._add(parsed.keys(), parsed.name, None, members, hello=True)
        self.save()
        return group

    def carry(self, tag: str) -> None:
        self.node.call("groups", "carry", _tag_bytes(tag))
        self.save()

    def open(self, group: Group, raw: bytes) -> core.Post | None:
        return self.node.call("groups", "open", group._id, raw)

    def on_event(self, kind: str, data: Any) -> None:
        if kind == "post":
            group_id, post = data
            group = self.groups.get(group_id)
            if group is not None:
                group._on_post(post)
        elif kind in ("changed", "removed"):
            self.save()

    def close(self) -> None:
        # The members met since the last save (their addresses too): a member back after
        # an absence dials them, whoever else is gone by then.
        with contextlib.suppress(OSError):
            self.save()
        self.closed = True
        for group in self.groups.values():
            group._close_readers()
        self.store.close()
