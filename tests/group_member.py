"""A group member in a process of its own, driven by JSON lines on stdin, for the tests
that kill and restart members (``tests/test_groups_processes.py``).

Run as ``python group_member.py --identity K --data-dir D --listen ADDR [--introducer A]
[--create NAME | --join INVITE]``; without ``--create`` or ``--join`` it takes up the
group its data dir holds. It prints ``{"event": "ready", "peer_id", "invite"}``, then
answers each command:

- ``{"do": "activity", "label": L, "count": N, "interval": S}``: N rounds, each a post
  ``L-i`` on topic ``chat`` and an edit of the shared document ``board`` (the map
  ``items`` gets ``L-i: i``, the text ``log`` gets ``L-i;`` at its end); a ``did`` line
  after each round (both are stored and sent by then), ``done`` at the end.
- ``{"do": "dump"}``: a ``dump`` line: the ids of the posts the group's feed gave, in
  order; every post in the store (id, topic, and data of chat posts); the document.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import threading
from typing import Any

import pycrdt

import shoal
from shoal.core.services.groups import HELLO_TOPIC


def say(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


async def activity(group: shoal.Group, board: shoal.GroupDocument, label: str, count: int,
                   interval: float) -> None:
    items = board.doc.get("items", type=pycrdt.Map)
    text = board.doc.get("log", type=pycrdt.Text)
    for index in range(count):
        key = f"{label}-{index}"
        post = await group.publish(key.encode(), topic="chat")
        with board.doc.transaction():
            items[key] = index
            text.insert(len(text), f"{key};")
        await asyncio.sleep(0)  # the document's edit goes out as a post
        say(event="did", label=label, index=index, post=post.id)
        await asyncio.sleep(interval)
    say(event="done", label=label)


def dump(group: shoal.Group, board: shoal.GroupDocument, feed: list[str]) -> dict[str, Any]:
    stored = []
    manager = group._groups
    for raw in manager.store.envelopes(group._tag):
        post = manager.open(group, raw)
        if post is not None:
            stored.append([post.id.hex(), post.topic,
                           post.data.decode() if post.topic == "chat" else None])
    return {"event": "dump", "feed": feed, "stored": stored,
            "items": board.doc.get("items", type=pycrdt.Map).to_py(),
            "text": str(board.doc.get("log", type=pycrdt.Text))}


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--identity", required=True)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--listen", required=True)
    parser.add_argument("--introducer", action="append", default=[])
    parser.add_argument("--create")
    parser.add_argument("--join")
    args = parser.parse_args()
    node = shoal.Node(shoal.Identity.load_or_create(args.identity), listen=args.listen,
                      introducers=args.introducer, lan_discovery=False,
                      data_dir=args.data_dir)
    async with node:
        if args.create:
            group = await node.create_group(args.create)
        elif args.join:
            group = await node.join(args.join)
        else:
            [group] = node.groups()
        board = group.document("board")
        feed: list[str] = []

        async def read() -> None:
            async for post in group.subscribe():
                if post.topic != HELLO_TOPIC:
                    feed.append(post.id)

        loop = asyncio.get_running_loop()
        commands: asyncio.Queue[str] = asyncio.Queue()

        def pump() -> None:
            for line in sys.stdin:
                loop.call_soon_threadsafe(commands.put_nowait, line)
            loop.call_soon_threadsafe(commands.put_nowait, "")

        tasks = {asyncio.create_task(read())}
        threading.Thread(target=pump, daemon=True).start()
        say(event="ready", peer_id=node.peer_id, invite=group.invite())
        while line := await commands.get():
            command = json.loads(line)
            if command["do"] == "activity":
                tasks.add(asyncio.create_task(activity(
                    group, board, command["label"], command["count"], command["interval"])))
            elif command["do"] == "dump":
                say(**dump(group, board, feed))
        for task in tasks:
            task.cancel()


if __name__ == "__main__":
    asyncio.run(main())
