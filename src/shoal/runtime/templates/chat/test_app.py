"""Run with: python -m pytest test_app.py

Two copies of this app, each with its own identity, meet through an introducer on this
machine and send each other a message through the page's network API."""

import asyncio
import base64
import dataclasses
from pathlib import Path

from shoal import Identity, Node
from shoal.runtime import AppHost, load_config
from shoal.runtime.testing import BridgeClient

APP = Path(__file__).parent


def test_two_copies_message_each_other(tmp_path: Path) -> None:
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
                bob_id = await bob_page.call("network.id")
                assert bob_id != await alice_page.call("network.id")
                sent = await alice_page.call("network.send", bob_id, "hello bob")
                assert sent["path"] in ("direct", "relay")
                while True:
                    event, data = await asyncio.wait_for(bob_page.events.get(), 30)
                    if event == "network.message":
                        break
                assert base64.b64decode(data["data"]) == b"hello bob"
                assert data["from"] == await alice_page.call("network.id")

    asyncio.run(scenario())
