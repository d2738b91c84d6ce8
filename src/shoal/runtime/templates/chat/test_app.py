"""Run with: python -m pytest test_app.py

Two copies of this app, each with its own identity, meet through an introducer on this
machine: one creates a group and posts before the other has joined; the other joins with
the invite, finds that post in the group's history, and answers."""

import asyncio
import base64
import dataclasses
from pathlib import Path

from shoal import Identity, Node
from shoal.runtime import AppHost, load_config
from shoal.runtime.testing import BridgeClient

APP = Path(__file__).parent


async def next_post(page: BridgeClient, sub: str) -> dict:
    while True:
        event, data = await asyncio.wait_for(page.events.get(), 30)
        if event == "groups.post" and data["sub"] == sub:
            return data


def test_a_member_who_joins_late_reads_the_history_and_answers(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with Node(Identity.generate(), listen="127.0.0.1:0", introducer=True,
                        lan_discovery=False) as introducer:
            config = load_config(APP)
            network = dataclasses.replace(config.network, lan=False, listen="127.0.0.1:0",
                                          introducers=(introducer.address,))
            config = dataclasses.replace(config, network=network)
            async with AppHost(APP, data_dir=tmp_path / "alice", config=config) as alice, \
                    AppHost(APP, data_dir=tmp_path / "bob", config=config) as bob, \
                    BridgeClient(alice) as alice_page, BridgeClient(bob) as bob_page:
                group = await alice_page.call("groups.create", "lunch")
                await alice_page.call("groups.publish", group["id"], "noon?", "")
                invite = await alice_page.call("groups.invite", group["id"])
                joined = await bob_page.call("groups.join", invite)
                assert joined["id"] == group["id"] and not joined["isAdmin"]
                await bob_page.call("groups.subscribe", group["id"], "", "bob-1")
                first = await next_post(bob_page, "bob-1")
                assert base64.b64decode(first["data"]) == b"noon?"
                assert first["author"] == await alice_page.call("network.id")
                await alice_page.call("groups.subscribe", group["id"], "", "alice-1")
                await bob_page.call("groups.publish", group["id"], "yes", "")
                while True:
                    post = await next_post(alice_page, "alice-1")
                    if base64.b64decode(post["data"]) == b"yes":
                        break
                assert post["author"] == await bob_page.call("network.id")

    asyncio.run(scenario())
