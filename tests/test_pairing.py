"""Pairing by a short code: through the CLI as two people would run it, through the JS
API of two app copies, and as the attacks: an introducer that puts itself in between,
and a stranger guessing codes."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

import shoal
from cli_helpers import running_introducer
from shoal.pairing import PairingError, PairingRelay, pair, parse_code, slot_of

LOOPBACK = "127.0.0.1:0"


def _shoal(*args: str) -> list[str]:
    return [sys.executable, "-m", "shoal.cli.main", *args]


@pytest.fixture
def introducer(tmp_path) -> Iterator[str]:
    """A running ``shoal introducer`` on loopback: its HOST:PORT."""
    with running_introducer(tmp_path) as address:
        yield address


def _pair_process(tmp_path: Path, introducer: str, name: str, *code: str
                  ) -> subprocess.Popen[str]:
    key = tmp_path / f"{name}.key"
    subprocess.run(_shoal("id", "--identity", str(key)), capture_output=True, check=True)
    return subprocess.Popen(
        _shoal("pair", *code, "--introducer", introducer, "--identity", str(key), "--json",
               "--no-lan", "--listen", LOOPBACK, "--timeout", "60"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _peer_id(tmp_path: Path, name: str) -> str:
    return subprocess.run(_shoal("id", "--identity", str(tmp_path / f"{name}.key")),
                          capture_output=True, text=True, check=True).stdout.strip()


def _code_of(process: subprocess.Popen[str]) -> str:
    assert process.stdout is not None
    event = json.loads(process.stdout.readline())
    assert event["event"] == "code", event
    return event["code"]


def _last_event(process: subprocess.Popen[str]) -> tuple[int, dict[str, Any], str]:
    stdout, stderr = process.communicate(timeout=60)
    return process.returncode, json.loads(stdout.strip().splitlines()[-1]), stderr


def test_two_people_pair_by_a_code_and_learn_each_others_peer_id(tmp_path,
                                                                 introducer: str) -> None:
    alice = _pair_process(tmp_path, introducer, "alice")
    code = _code_of(alice)
    parse_code(code)  # a nameplate and two words
    bob = _pair_process(tmp_path, introducer, "bob", code.replace("-", " ").upper())
    for process, other in ((bob, "alice"), (alice, "bob")):
        status, event, stderr = _last_event(process)
        assert status == 0, stderr
        assert event == {"event": "paired", "peer_id": _peer_id(tmp_path, other),
                         "me": event["me"]}
    # Human output: the code to say aloud, the command for the other side, whole ids.
    carol = subprocess.Popen(
        _shoal("pair", "--introducer", introducer, "--identity", str(tmp_path / "c.key"),
               "--no-lan", "--listen", LOOPBACK, "--timeout", "60"),
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert carol.stdout is not None
    line = carol.stdout.readline()
    assert line.startswith("pairing code: ")
    code = line.split(": ", 1)[1].strip()
    assert f"run: shoal pair {code} --introducer {introducer}" in carol.stdout.readline()
    dave = _pair_process(tmp_path, introducer, "dave", code)
    assert _last_event(dave)[0] == 0
    stdout, _ = carol.communicate(timeout=60)
    assert stdout.strip().endswith(f"paired with {_peer_id(tmp_path, 'dave')}")


def test_a_wrong_code_fails_both_sides_cleanly_and_the_code_is_spent(tmp_path,
                                                                     introducer: str) -> None:
    alice = _pair_process(tmp_path, introducer, "alice")
    code = _code_of(alice)
    nameplate, _ = parse_code(code)
    wrong = f"{nameplate}-{'zebra' if 'zebra' not in code else 'otter'}-yak"
    started = time.monotonic()
    guess = _pair_process(tmp_path, introducer, "mallory", wrong)
    for process in (guess, alice):
        status, event, stderr = _last_event(process)
        assert status == 1 and event["event"] == "error" and event["code"] == "EACCES"
        assert "did not match" in event["message"] and "Traceback" not in stderr
    assert time.monotonic() - started < 20
    # One try per code: the right code now finds nobody.
    late = _pair_process(tmp_path, introducer, "bob", code)
    status, event, _ = _last_event(late)
    assert status == 1 and event["code"] == "ENOENT"


def test_pairing_needs_an_introducer_and_a_code_that_looks_like_one(tmp_path) -> None:
    for args, code in ((["pair"], "EINVAL"), (["pair", "amber-otter", "--introducer",
                                                "127.0.0.1:9"], "EINVAL")):
        result = subprocess.run(_shoal(*args, "--identity", str(tmp_path / "k")),
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 2 and result.stderr.strip().endswith(f"({code})")
        assert len(result.stderr.strip().splitlines()) == 1


def _node(**kwargs: Any) -> shoal.Node:
    return shoal.Node(shoal.Identity.generate(), listen=LOOPBACK, lan_discovery=False, **kwargs)


class InBetween(PairingRelay):
    """An introducer that puts itself in between: to each side it hands a PAKE message
    of its own (made with a guessed code) and its own peer id as the other side's, and
    answers their confirmations with what its keys allow."""

    guess = "1-amber-otter"

    def __init__(self, node: Any) -> None:
        super().__init__(node)
        self.opened: dict[str, str] = {}
        self.keys: dict[str, bytes] = {}

    def _handle(self, sender: str, body: dict[str, Any]) -> None:
        import hashlib
        import hmac

        from spake2 import SPAKE2_Symmetric

        if body["op"] == "open":
            self.opened[sender] = body["msg"]
            self._reply(sender, op="opened")
        elif body["op"] == "join":
            for victim, message in (*self.opened.items(), (sender, body["msg"])):
                spake = SPAKE2_Symmetric(self.guess.encode(), idSymmetric=b"shoal pairing v1")
                mine = spake.start()
                self.keys[victim] = spake.finish(base64.b64decode(message))
                self._reply(victim, op="peer", peer=self.node.peer_id,
                            msg=base64.b64encode(mine).decode())
        elif body["op"] == "confirm":
            mac = hmac.new(self.keys.get(sender, b""), b"shoal pairing confirm v1"
                           + bytes.fromhex(self.node.peer_id) + bytes.fromhex(sender),
                           hashlib.sha256).hexdigest()
            self._reply(sender, op="confirm", mac=mac)


@contextlib.asynccontextmanager
async def _two_sides(relay_class: type[PairingRelay]) -> AsyncIterator[tuple[Any, ...]]:
    """An introducer running ``relay_class``, and two nodes that reached it."""
    async with _node(introducer=True) as introducer:
        relay = relay_class(introducer).start()
        where = [f"127.0.0.1:{introducer.address[1]}"]
        async with _node(introducers=where) as alice, _node(introducers=where) as bob:
            await alice.wait_for_introducers()
            await bob.wait_for_introducers()
            yield relay, alice, bob
        await relay.close()


async def _open(node: shoal.Node) -> tuple[asyncio.Task[str], str]:
    """``node`` opens a pairing: the task that waits, and the code to tell."""
    told = asyncio.get_running_loop().create_future()
    waiting = asyncio.create_task(pair(node, on_code=told.set_result, timeout=20))
    return waiting, await told


async def test_an_introducer_in_between_pairs_nobody() -> None:
    async with _two_sides(InBetween) as (relay, alice, bob):
        waiting, code = await _open(alice)
        with pytest.raises(PairingError) as joined:
            await pair(bob, code, timeout=20)
        with pytest.raises(PairingError) as opened:
            await waiting
        assert joined.value.code == opened.value.code == "EACCES"
        assert len(relay.keys) == 2  # it did try both


async def test_a_relay_never_sees_a_code_and_keeps_one_try_per_nameplate() -> None:
    async with _two_sides(PairingRelay) as (relay, alice, bob):
        for junk in (b"", b"{", b"[]", b'{"op": 1}', b'{"op": "join", "slot": 5}',
                     b'{"op": "open", "slot": "' + b"ab" * 16 + b'", "msg": []}',
                     b'{"op": "peer", "peer": "x"}', b"x" * 600, b"\xff\xfe"):
            await bob.send(relay.node.peer_id, junk, channel="shoal/pair/1", timeout=5)
        waiting, code = await _open(alice)
        nameplate, _ = parse_code(code)
        assert list(relay.slots) == [slot_of(nameplate)]
        assert code.encode() not in repr(relay.slots).encode()
        assert await pair(bob, code, timeout=20) == alice.peer_id
        assert await waiting == bob.peer_id
        assert relay.slots == {}
        with pytest.raises(PairingError) as again:
            await pair(bob, code, timeout=20)
        assert again.value.code == "ENOENT"


async def test_two_app_copies_pair_through_the_js_api(tmp_path: Path) -> None:
    import dataclasses

    from shoal.runtime import AppHost, load_config
    from shoal.runtime.scaffold import create_app
    from shoal.runtime.testing import BridgeClient

    app = tmp_path / "chat"
    create_app(app, template="chat")
    async with _node(introducer=True) as introducer:
        relay = PairingRelay(introducer).start()
        config = load_config(app)
        network = dataclasses.replace(config.network, lan=False, listen=LOOPBACK,
                                      introducers=(introducer.address,))
        config = dataclasses.replace(config, network=network)
        async with AppHost(app, data_dir=tmp_path / "a", config=config) as alice, \
                AppHost(app, data_dir=tmp_path / "b", config=config) as bob, \
                BridgeClient(alice) as alice_page, BridgeClient(bob) as bob_page:
            assert alice.node is not None and bob.node is not None
            await alice.node.wait_for_introducers()
            await bob.node.wait_for_introducers()
            opening = asyncio.create_task(alice_page.call("network.pair", None, {}))
            while True:
                event, data = await asyncio.wait_for(alice_page.events.get(), 20)
                if event == "network.pair-code":
                    break
            joined = await bob_page.call("network.pair", data["code"], {})
            assert joined == {"peerId": alice.node.peer_id}
            assert await opening == {"peerId": bob.node.peer_id}
        await relay.close()


def test_on_a_terminal_the_code_comes_with_its_qr_code(tmp_path, introducer: str) -> None:
    import os
    import pty
    import select

    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        _shoal("pair", "--introducer", introducer, "--identity", str(tmp_path / "a.key"),
               "--no-lan", "--listen", LOOPBACK, "--timeout", "30"),
        stdin=terminal, stdout=terminal, stderr=terminal)
    os.close(terminal)
    output = b""
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if b"pairing code: " in output:  # the QR code follows at once: 2 s more
                deadline = min(deadline, time.monotonic() + 2)
            if select.select([controller], [], [], 0.2)[0]:
                output += os.read(controller, 65536)
    finally:
        process.terminate()
        process.wait(timeout=10)
        os.close(controller)
    text = output.decode(errors="replace")
    assert "pairing code: " in text
    code = text.split("pairing code: ", 1)[1].split()[0]
    parse_code(code)
    qr = [line for line in text.splitlines() if "▀" in line or "▄" in line]
    assert len(qr) >= 10  # a QR code's rows, two to a line
