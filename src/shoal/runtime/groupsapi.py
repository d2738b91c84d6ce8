"""``groups.*`` calls: the page's groups, their posts and their shared documents.

Every call needs the ``network`` permission. A group is named by its id (hex). Posts
reach the page as ``groups.post`` events and document updates as ``groups.update``
events, each carrying the id the page gave its subscription or watch; both end with the
page that started them. A document's updates are Yjs/Yrs updates (one format), so a page
running Yjs stays in step by applying what it hears and sending what it edits.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shoal.runtime.fsapi import BridgeError
from shoal.runtime.scope import current_page

if TYPE_CHECKING:
    from shoal.aio.node import Node

MAX_HELD = 256
"""Subscriptions and document watches one page may hold at once."""
MAX_NAME_BYTES = 255


@dataclass(frozen=True)
class _Held:
    """A page's subscription or watch, by the id the page gave it."""

    kind: str
    page_id: str


class Groups:
    """``groups.create``, ``join``, ``list``, ``invite``, ``members``, ``publish``,
    ``subscribe``, and a document's ``docState``, ``docApply`` and ``docWatch``."""

    def __init__(self, node: Node | None, allowed: bool,
                 emit: Callable[[str, dict], None]) -> None:
        self.node = node
        self.allowed = allowed
        self._emit = emit
        self._tasks: dict[_Held, asyncio.Task[None]] = {}
        self._watchers: dict[tuple[str, str], set[str]] = {}
        """Page watch ids by document."""
        self._watching: dict[_Held, tuple[str, str]] = {}
        self._pumps: dict[tuple[str, str], asyncio.Task[None]] = {}

    def calls(self) -> dict[str, Callable[..., Any]]:
        return {"groups.create": self.create, "groups.join": self.join,
                "groups.list": self.list, "groups.invite": self.invite,
                "groups.members": self.members, "groups.publish": self.publish,
                "groups.subscribe": self.subscribe, "groups.unsubscribe": self.unsubscribe,
                "groups.docState": self.doc_state, "groups.docApply": self.doc_apply,
                "groups.docWatch": self.doc_watch, "groups.docUnwatch": self.doc_unwatch,
                "groups.docText": self.doc_text, "groups.docTextSplice": self.doc_text_splice}

    def _require(self) -> Node:
        if not self.allowed:
            raise BridgeError("this app did not declare the 'network' permission", code="EPERM")
        if self.node is None:
            raise BridgeError("the network is not running", code="ENOTCONN")
        return self.node

    def _group(self, group_id: Any) -> Any:
        node = self._require()
        if not isinstance(group_id, str):
            raise BridgeError("a group id is a string", code="EINVAL")
        for group in node.groups():
            if group.id == group_id:
                return group
        raise BridgeError(f"this node is in no group {group_id[:16]!r}", code="ENOENT")

    @staticmethod
    def _info(group: Any) -> dict[str, Any]:
        return {"id": group.id, "name": group.name, "isAdmin": group.is_admin}

    async def create(self, name: Any) -> dict[str, Any]:
        node = self._require()
        if not isinstance(name, str) or not name or len(name.encode()) > MAX_NAME_BYTES:
            raise BridgeError(f"a group name is 1 to {MAX_NAME_BYTES} bytes of text",
                              code="EINVAL")
        return self._info(await node.create_group(name))

    async def join(self, invite: Any) -> dict[str, Any]:
        node = self._require()
        if not isinstance(invite, str):
            raise BridgeError("an invite is a string", code="EINVAL")
        return self._info(await node.join(invite))

    async def list(self) -> list[dict[str, Any]]:
        return [self._info(group) for group in self._require().groups()]

    async def invite(self, group_id: str) -> str:
        return self._group(group_id).invite()

    async def members(self, group_id: str) -> list[dict[str, Any]]:
        return [{"peerId": m.peer_id, "online": m.online, "path": m.path, "admin": m.admin,
                 "name": m.name} for m in self._group(group_id).members()]

    async def publish(self, group_id: str, data: Any, topic: Any = "") -> dict[str, Any]:
        group = self._group(group_id)
        payload = data.encode() if isinstance(data, str) else data
        if not isinstance(payload, bytes | bytearray):
            raise BridgeError("data must be a string or a Uint8Array", code="EINVAL")
        if not isinstance(topic, str):
            raise BridgeError("a topic is a string", code="EINVAL")
        post = await group.publish(bytes(payload), topic=topic)
        return {"id": post.id, "time": post.time}

    def _admit(self, held: _Held) -> Any:
        """The page asking to hold ``held``, once it may."""
        page = current_page.get()
        if held in self._tasks or held in self._watching:
            raise BridgeError(f"{held.kind} {held.page_id!r} is running already",
                              code="EEXIST")
        if page is not None and page.count(_Held) >= MAX_HELD:
            raise BridgeError(f"a page holds at most {MAX_HELD} subscriptions and watches",
                              code="EMFILE")
        return page

    def _start(self, held: _Held, work: Callable[[], Any]) -> None:
        """Run ``work`` for the page until it or the page ends it."""
        page = self._admit(held)
        task = asyncio.get_running_loop().create_task(work())
        self._tasks[held] = task

        def finished(_: asyncio.Task[None]) -> None:
            if self._tasks.get(held) is task:
                del self._tasks[held]

        task.add_done_callback(finished)
        if page is not None:
            page.hold(held, lambda: self._stop(held))

    def _stop(self, held: _Held) -> None:
        task = self._tasks.pop(held, None)
        if task is not None:
            task.cancel()
        page = current_page.get()
        if page is not None:
            page.drop(held)

    async def subscribe(self, group_id: str, topic: Any, sub_id: Any) -> None:
        """Send the group's posts (of ``topic``, or all if null) as ``groups.post``
        events: those held first, then new ones."""
        group = self._group(group_id)
        if topic is not None and not isinstance(topic, str):
            raise BridgeError("a topic is a string or null", code="EINVAL")
        held = _Held("subscription", _page_id(sub_id))

        async def forward() -> None:
            feed = group.subscribe(topic)
            try:
                async for post in feed:
                    self._emit("groups.post", {
                        "sub": held.page_id, "group": group.id, "id": post.id,
                        "author": post.author, "topic": post.topic, "time": post.time,
                        "parents": list(post.parents),
                        "data": base64.b64encode(post.data).decode()})
            finally:
                close = getattr(feed, "close", None)
                if close is not None:  # the group stops queueing posts for it
                    close()

        self._start(held, forward)

    async def unsubscribe(self, sub_id: Any) -> None:
        self._stop(_Held("subscription", _page_id(sub_id)))

    def _document(self, group_id: str, name: Any) -> tuple[tuple[str, str], Any]:
        group = self._group(group_id)
        if not isinstance(name, str) or not name:
            raise BridgeError("a document name is a non-empty string", code="EINVAL")
        return (group.id, name), group.document(name)  # one object per name

    async def doc_state(self, group_id: str, name: str) -> bytes:
        """The document's whole state, as one update."""
        return self._document(group_id, name)[1].state()

    async def doc_apply(self, group_id: str, name: str, update: Any, watch_id: Any = None) -> None:
        """Merge a page's update into the document (it goes to the other members), and to
        this app's other watchers of it (``watch_id``: the watch of the page that sent it,
        which needs no echo)."""
        key, document = self._document(group_id, name)
        if not isinstance(update, bytes | bytearray):
            raise BridgeError("an update is a Uint8Array", code="EINVAL")
        try:
            document.apply(bytes(update))
        except BridgeError:
            raise
        except Exception as exc:  # pycrdt refuses what is not an update
            raise BridgeError(f"not a document update: {exc}", code="EINVAL") from None
        self._tell_watchers(key, bytes(update), watch_id)

    async def doc_text(self, group_id: str, name: str, key: Any = "text") -> str:
        """The text of the document's ``Y.Text`` called ``key``."""
        return str(_text_of(self._document(group_id, name)[1], key))

    async def doc_text_splice(self, group_id: str, name: str, key: Any, index: Any,
                              remove: Any, insert: Any, watch_id: Any = None) -> None:
        """Edit the document's ``Y.Text`` ``key``: at ``index`` (in characters), remove
        ``remove`` characters and insert the string ``insert``, for a page that edits plain
        text and runs no Yjs of its own."""
        key_, document = self._document(group_id, name)
        text = _text_of(document, key)
        current = str(text)
        if (not isinstance(index, int) or not isinstance(remove, int)
                or not isinstance(insert, str) or isinstance(index, bool)
                or not 0 <= index <= len(current) or not 0 <= remove <= len(current) - index):
            raise BridgeError("a splice is an index and a count within the text, and a string",
                              code="EINVAL")
        before = document.doc.get_state()
        start, end = _offset(text, current, index), _offset(text, current, index + remove)
        if end > start:
            del text[start:end]
        if insert:
            text.insert(start, insert)
        self._tell_watchers(key_, document.doc.get_update(before), watch_id)

    def _tell_watchers(self, key: tuple[str, str], update: bytes, watch_id: Any) -> None:
        """Send ``update`` to this app's watchers of the document but the page's own."""
        sender = _page_id(watch_id) if watch_id is not None else None
        text = base64.b64encode(update).decode()
        for other in self._watchers.get(key, set()) - {sender}:
            self._emit("groups.update", {"watch": other, "data": text})

    async def doc_watch(self, group_id: str, name: str, watch_id: Any) -> None:
        """Send the document's state, then every update it takes, as ``groups.update``
        events. One reader per document hands each update to all its watchers."""
        key, document = self._document(group_id, name)
        held = _Held("watch", _page_id(watch_id))
        page = self._admit(held)
        self._emit("groups.update", {"watch": held.page_id,
                                     "data": base64.b64encode(document.state()).decode()})
        self._watchers.setdefault(key, set()).add(held.page_id)
        self._watching[held] = key
        if key not in self._pumps:
            self._pumps[key] = asyncio.get_running_loop().create_task(
                self._pump(key, document))
        if page is not None:
            page.hold(held, lambda: self._unwatch(held))

    async def _pump(self, key: tuple[str, str], document: Any) -> None:
        async for update in document.updates():
            self._tell_watchers(key, update, None)

    def _unwatch(self, held: _Held) -> None:
        key = self._watching.pop(held, None)
        if key is None:
            return
        watchers = self._watchers.get(key, set())
        watchers.discard(held.page_id)
        if not watchers:
            self._watchers.pop(key, None)
            pump = self._pumps.pop(key, None)
            if pump is not None:
                pump.cancel()
        page = current_page.get()
        if page is not None:
            page.drop(held)

    async def doc_unwatch(self, watch_id: Any) -> None:
        self._unwatch(_Held("watch", _page_id(watch_id)))

    def close(self) -> None:
        for task in [*self._tasks.values(), *self._pumps.values()]:
            task.cancel()
        self._tasks.clear()
        self._pumps.clear()
        self._watchers.clear()
        self._watching.clear()


def _page_id(value: Any) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= 64:
        raise BridgeError("a subscription or watch id is a string of 1 to 64 characters",
                          code="EINVAL")
    return value


def _text_of(document: Any, key: Any) -> Any:
    import pycrdt

    if not isinstance(key, str) or not key:
        raise BridgeError("a text's key is a non-empty string", code="EINVAL")
    try:
        return document.doc.get(key, type=pycrdt.Text)
    except Exception as exc:  # the key holds another type (a map, an array)
        raise BridgeError(f"{key!r} is not a text in this document: {exc}",
                          code="EINVAL") from None


def _offset(text: Any, current: str, index: int) -> int:
    """Character ``index`` of ``current`` as an offset in ``text``, in the unit its
    ``pycrdt`` counts in (UTF-8 bytes, UTF-16 units or characters: the one whose length
    of ``current`` is the text's length; they differ only past ASCII)."""
    size = len(text)
    prefix = current[:index]
    if size == len(current.encode()):
        return len(prefix.encode())
    if size == len(current.encode("utf-16-le")) // 2:
        return len(prefix.encode("utf-16-le")) // 2
    return index
