"""The page's groups calls on one app's node: refused without the network permission,
arguments checked, subscriptions and document watches that end with their page or on
request, and a document edited in one window reaching the app's other windows."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
from pathlib import Path

import pycrdt
import pytest

from shoal.runtime import AppHost, load_config
from shoal.runtime.config import node_key_path
from shoal.runtime.fsapi import BridgeError
from shoal.runtime.scaffold import create_app
from shoal.runtime.testing import BridgeClient


def _app(tmp_path: Path, template: str) -> tuple[Path, object]:
    folder = tmp_path / template
    create_app(folder, template=template)
    config = load_config(folder)
    if template == "chat":
        config = dataclasses.replace(config, network=dataclasses.replace(
            config.network, lan=False, listen="127.0.0.1:0"))
    return folder, config


async def _code(call: object) -> str:
    with pytest.raises(BridgeError) as refused:
        await call  # type: ignore[misc]
    return refused.value.code


async def _event(page: BridgeClient, name: str, key: str, value: str) -> dict:
    while True:
        event, data = await asyncio.wait_for(page.events.get(), 10)
        if event == name and data[key] == value:
            return data


async def _quiet(page: BridgeClient, name: str, seconds: float = 0.5) -> list[dict]:
    """The ``name`` events the page gets within ``seconds``."""
    heard = []
    try:
        while True:
            event, data = await asyncio.wait_for(page.events.get(), seconds)
            if event == name:
                heard.append(data)
    except TimeoutError:
        return heard


def test_an_app_without_the_network_permission_has_no_groups(tmp_path: Path) -> None:
    folder, config = _app(tmp_path, "blank")

    async def main() -> None:
        async with AppHost(folder, data_dir=tmp_path / "d", config=config) as host, \
                BridgeClient(host) as page:
            assert await _code(page.call("groups.create", "team")) == "EPERM"
            assert await _code(page.call("groups.list")) == "EPERM"

    asyncio.run(main())


def test_calls_check_their_arguments_and_subscriptions_end(tmp_path: Path) -> None:
    folder, config = _app(tmp_path, "chat")

    async def main() -> None:
        async with AppHost(folder, data_dir=tmp_path / "d", config=config) as host, \
                BridgeClient(host) as page:
            assert await _code(page.call("groups.create", "")) == "EINVAL"
            assert await _code(page.call("groups.join", "shoal-group:AQ")) == "EINVAL"
            assert await _code(page.call("groups.invite", "ab" * 32)) == "ENOENT"
            group = (await page.call("groups.create", "team"))["id"]
            assert [g["id"] for g in await page.call("groups.list")] == [group]
            # Its keys are kept beside the node's key, where the page's fs never reaches.
            key = node_key_path(tmp_path / "d")
            assert (key.parent / f"{key.stem}.groups" / "groups.json").is_file()
            assert not [p for p in (tmp_path / "d").rglob("groups*")]
            assert await _code(page.call("groups.publish", group, 5, "")) == "EINVAL"
            await page.call("groups.subscribe", group, "", "s1")
            assert await _code(page.call("groups.subscribe", group, "", "s1")) == "EEXIST"
            await page.call("groups.publish", group, "one", "")
            post = await _event(page, "groups.post", "sub", "s1")
            assert base64.b64decode(post["data"]) == b"one"
            await page.call("groups.unsubscribe", "s1")
            await page.call("groups.subscribe", group, "", "s2")
            await page.call("groups.publish", group, "two", "")
            heard = await _quiet(page, "groups.post")
            assert {e["sub"] for e in heard} == {"s2"}
            assert [base64.b64decode(e["data"]) for e in heard] == [b"one", b"two"]
            # A splice is checked against the text as it is.
            text = ("groups.docTextSplice", group, "notes", "text")
            assert await _code(page.call(*text, 1, 0, "x")) == "EINVAL"
            assert await _code(page.call("groups.docApply", group, "notes", b"junk")) == "EINVAL"

    asyncio.run(main())


def test_a_document_edited_in_one_window_reaches_the_others(tmp_path: Path) -> None:
    folder, config = _app(tmp_path, "chat")

    async def main() -> None:
        async with AppHost(folder, data_dir=tmp_path / "d", config=config) as host, \
                BridgeClient(host) as first, BridgeClient(host) as second:
            group = (await first.call("groups.create", "team"))["id"]
            await first.call("groups.docWatch", group, "notes", "w1")
            await second.call("groups.docWatch", group, "notes", "w2")
            await _event(second, "groups.update", "watch", "w2")  # the state, empty
            await first.call("groups.docTextSplice", group, "notes", "text", 0, 0, "héllo",
                             "w1")
            update = await _event(second, "groups.update", "watch", "w2")
            mirror = pycrdt.Doc()
            mirror.apply_update(base64.b64decode(update["data"]))
            assert str(mirror.get("text", type=pycrdt.Text)) == "héllo"
            await second.call("groups.docTextSplice", group, "notes", "text", 5, 0, " 😀", "w2")
            assert await first.call("groups.docText", group, "notes", "text") == "héllo 😀"
            await second.call("groups.docUnwatch", "w2")
            await _quiet(second, "groups.update")  # what came before
            await first.call("groups.docTextSplice", group, "notes", "text", 0, 1, "H", "w1")
            heard = await _quiet(second, "groups.update")  # every page hears every event
            assert {e["watch"] for e in heard} == {"w1"}

    asyncio.run(main())
