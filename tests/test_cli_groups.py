"""``shoal group``, ``publish`` and ``subscribe`` as a user runs them: two members, each
with its own key and data folder, meeting through an introducer on loopback."""

from __future__ import annotations

import base64
import json
import queue
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cli_helpers import free_port, running_introducer, shoal


def _run(*args: str, stdin: bytes | None = None, timeout: float = 90
         ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(shoal(*args), capture_output=True, timeout=timeout, text=stdin is None,
                          input=stdin)


def _member(tmp_path: Path, name: str) -> tuple[str, ...]:
    """The options that make ``name`` a member of its own: key and data folder."""
    return ("--identity", str(tmp_path / f"{name}.key"), "--data-dir", str(tmp_path / name))


def _one_error_line(result: subprocess.CompletedProcess[str], code: str) -> str:
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    lines = [line for line in lines if not line.startswith("shoal: created identity")]
    assert len(lines) == 1 and lines[0].endswith(f"({code})"), result.stderr
    return lines[0]


@pytest.fixture
def introducer(tmp_path) -> Iterator[str]:
    with running_introducer(tmp_path) as address:
        yield address


class _Subscriber:
    """``shoal subscribe ... --json`` running, its ready line read; its lines are read
    by a thread of their own, so that waiting for one can time out."""

    def __init__(self, *args: str) -> None:
        self.process = subprocess.Popen(shoal("subscribe", "--json", "--no-lan", *args),
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        ready = self._next(30)
        assert json.loads(ready)["event"] == "ready", ready

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)
        self.lines.put("")

    def _next(self, timeout: float) -> str:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"nothing printed within {timeout} s") from None
        if not line:
            assert self.process.stderr is not None
            raise AssertionError(f"the subscriber ended: {self.process.stderr.read()}")
        return line

    def posts(self, count: int, timeout: float = 60) -> list[dict]:
        """The next ``count`` posts it prints."""
        found: list[dict] = []
        deadline = time.monotonic() + timeout
        while len(found) < count:
            event = json.loads(self._next(max(0.0, deadline - time.monotonic())))
            if event["event"] == "post":
                found.append(event)
        return found

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


def test_create_join_publish_and_subscribe(tmp_path, introducer: str) -> None:
    alice, bob = _member(tmp_path, "alice"), _member(tmp_path, "bob")
    network = ("--introducer", introducer, "--no-lan")
    alice_at = ("--listen", f"127.0.0.1:{free_port()}")
    created = _run("group", "create", "picnic", "--json", *alice, *network, *alice_at)
    assert created.returncode == 0, created.stderr
    made = json.loads(created.stdout.splitlines()[-1])
    assert made["event"] == "created" and made["name"] == "picnic"
    assert made["invite"].startswith("shoal-group:")

    invite = _run("group", "invite", "picnic", *alice, *alice_at, "--no-lan")
    assert invite.returncode == 0, invite.stderr
    assert invite.stdout.startswith("shoal-group:") and len(invite.stdout.splitlines()) == 1
    joined = _run("group", "join", made["invite"], "--json", *bob, *network)
    assert joined.returncode == 0, joined.stderr
    assert json.loads(joined.stdout.splitlines()[-1])["id"] == made["id"]
    listed = _run("group", "list", "--json", *bob)
    groups = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [(g["id"], g["name"], g["admin"]) for g in groups] == [(made["id"], "picnic", False)]

    reader = _Subscriber("picnic", *bob, *network, "--listen", "127.0.0.1:0")
    try:
        # GROUP may be the start of the group's id as well as its name.
        sent = _run("publish", made["id"][:10], "bring plates", "--topic", "food", "--json",
                    *alice, *network, *alice_at)
        assert sent.returncode == 0, sent.stderr
        events = [json.loads(line) for line in sent.stdout.splitlines()]
        assert [e["event"] for e in events] == ["published", "reached"]
        assert events[1]["peers"] and events[0]["id"] == events[1]["id"]
        binary = bytes([0xFF, 0x00, 0x80])
        raw = _run("publish", "picnic", "-", *alice, *network, *alice_at, stdin=binary)
        assert raw.returncode == 0, raw.stderr
        text, data = reader.posts(2)
    finally:
        reader.stop()
    assert {k: text[k] for k in ("id", "topic", "data")} == {
        "id": events[0]["id"], "topic": "food", "data": "bring plates"}
    assert text["author"] == made["peer_id"] and abs(text["time"] - time.time()) < 120
    assert data["encoding"] == "base64" and base64.b64decode(data["data"]) == binary


def test_a_member_who_was_away_gets_the_posts_missed(tmp_path, introducer: str) -> None:
    alice, bob = _member(tmp_path, "alice"), _member(tmp_path, "bob")
    network = ("--introducer", introducer, "--no-lan")
    alice_at = ("--listen", f"127.0.0.1:{free_port()}")  # where the invite says she is
    made = json.loads(_run("group", "create", "log", "--json", *alice, *network, *alice_at
                           ).stdout.splitlines()[-1])
    assert _run("group", "join", made["invite"], *bob, *network).returncode == 0
    # No one else is online: the post stays with its author, who says so.
    alone = _run("publish", "log", "while you were away", "--timeout", "2", *alice, *network,
                 *alice_at)
    assert alone.returncode == 1
    assert "kept here" in _one_error_line(alone, "ETIMEDOUT")
    keeper = _Subscriber("log", *alice, *network, *alice_at)
    try:
        reader = _Subscriber("log", *bob, *network, "--listen", "127.0.0.1:0")
        try:
            (missed,) = reader.posts(1)
        finally:
            reader.stop()
    finally:
        keeper.stop()
    assert missed["data"] == "while you were away" and missed["author"] == made["peer_id"]


def test_a_bad_invite_or_group_is_one_line(tmp_path) -> None:
    member = _member(tmp_path, "carol")
    for invite in ("hello", "shoal-group:AQID"):
        result = _run("group", "join", invite, *member, "--no-lan")
        assert result.returncode == 2
        assert "invite" in _one_error_line(result, "EINVAL")
    assert not (tmp_path / "carol").exists() and not (tmp_path / "carol.key").exists()
    result = _run("publish", "nowhere", "hi", *member, "--no-lan", "--listen", "127.0.0.1:0")
    assert result.returncode == 1
    assert "no group" in _one_error_line(result, "ENOENT")


def test_without_a_data_dir_groups_live_beside_the_identity(tmp_path) -> None:
    for name in ("dana", "erin"):
        made = _run("group", "create", f"{name}-only", "--identity", str(tmp_path / f"{name}.key"),
                    "--no-lan", "--listen", "127.0.0.1:0")
        assert made.returncode == 0, made.stderr
        assert (tmp_path / f"{name}.groups" / "groups.json").is_file()
    listed = _run("group", "list", "--json", "--identity", str(tmp_path / "erin.key"))
    assert [json.loads(line)["name"] for line in listed.stdout.splitlines()] == ["erin-only"]
