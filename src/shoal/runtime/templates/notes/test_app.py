"""Run with: python -m pytest test_app.py

Two copies of this app, each with its own identity, meet through an introducer on this
machine and edit one text: each sees what the other typed, and a Yjs update made
outside the page (here by pycrdt, which shares Yjs' update format) merges in too."""

import asyncio
import dataclasses
from pathlib import Path

import pycrdt

from shoal import Identity, Node
from shoal.runtime import AppHost, load_config
from shoal.runtime.testing import BridgeClient

APP = Path(__file__).parent


async def text_becomes(page: BridgeClient, group: str, wanted: str) -> None:
    for _ in range(300):
        if await page.call("groups.docText", group, "notes", "text") == wanted:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"the text never became {wanted!r}")


def test_two_copies_edit_one_text(tmp_path: Path) -> None:
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
                group = (await alice_page.call("groups.create", "plans"))["id"]
                invite = await alice_page.call("groups.invite", group)
                await bob_page.call("groups.join", invite)
                await alice_page.call("groups.docTextSplice", group, "notes", "text", 0, 0,
                                      "bread")
                await text_becomes(bob_page, group, "bread")
                await bob_page.call("groups.docTextSplice", group, "notes", "text", 5, 0,
                                    ", milk")
                await text_becomes(alice_page, group, "bread, milk")
                # An update from elsewhere (Yjs in a page, or pycrdt) in the shared format.
                outside = pycrdt.Doc()
                outside.apply_update(await bob_page.call("groups.docState", group, "notes"))
                words = outside.get("text", type=pycrdt.Text)
                before = outside.get_state()
                words += ", eggs"
                await bob_page.call("groups.docApply", group, "notes",
                                    outside.get_update(before))
                await text_becomes(alice_page, group, "bread, milk, eggs")

    asyncio.run(scenario())
