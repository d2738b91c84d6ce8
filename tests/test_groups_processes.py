"""Three members of one group, each a process of its own on loopback, post and edit one
shared document; one is killed (SIGKILL) in the middle and started again from its data
dir. In the end all three hold the same posts, each once, and the same document."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cli_helpers import free_port, running_introducer
from shoal.core.services.groups import HELLO_TOPIC

MEMBER = Path(__file__).with_name("group_member.py")
ROUNDS = int(os.environ.get("SHOAL_GROUP_PROCESS_ROUNDS", "24"))
"""Posts (and document edits) each member makes before the end; ``=200`` for a longer run."""
KILL_AFTER = ROUNDS // 3


class Member:
    """``group_member.py`` running: commands in, JSON lines out (read by a thread)."""

    def __init__(self, folder: Path, name: str, port: int, introducer: str, *extra: str) -> None:
        self.name = name
        self.process = subprocess.Popen(
            [sys.executable, str(MEMBER), "--identity", str(folder / f"{name}.key"),
             "--data-dir", str(folder / name), "--listen", f"127.0.0.1:{port}",
             "--introducer", introducer, *extra],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=(folder / f"{name}.err").open("a"), text=True,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
        self.lines: queue.Queue[dict | None] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        """Lines taken from ``lines`` while waiting for another kind."""
        threading.Thread(target=self._read, daemon=True).start()
        self.ready = self.next("ready", 30)

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(json.loads(line))
        self.lines.put(None)

    def next(self, kind: str, timeout: float) -> dict[str, Any]:
        """The next line of event ``kind`` (others are kept in ``seen``)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                event = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"{self.name}: no {kind!r} within {timeout} s") from None
            assert event is not None, f"{self.name} ended"
            if event["event"] == kind:
                return event
            self.seen.append(event)

    def tell(self, **command: Any) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def started(tmp_path: Path) -> Iterator[list[Member]]:
    """Every member process the test starts, stopped at the end whatever happened."""
    members: list[Member] = []
    try:
        yield members
    finally:
        for member in members:
            member.stop()


def _did(member: Member) -> list[dict[str, Any]]:
    """The ``did`` lines ``member`` printed so far (taken from its queue)."""
    while True:
        try:
            event = member.lines.get_nowait()
        except queue.Empty:
            break
        if event is not None:
            member.seen.append(event)
    return [e for e in member.seen if e["event"] == "did"]


def test_three_processes_one_killed_and_restarted_end_with_the_same_posts_and_document(
        tmp_path: Path, started: list[Member]) -> None:
    with running_introducer(tmp_path) as introducer:
        ports = {name: free_port() for name in ("alice", "bob", "carol")}

        def start(name: str, *extra: str) -> Member:
            member = Member(tmp_path, name, ports[name], introducer, *extra)
            started.append(member)
            return member

        alice = start("alice", "--create", "crew")
        invite = alice.ready["invite"]
        bob = start("bob", "--join", invite)
        carol = start("carol", "--join", invite)
        for member in (alice, bob, carol):
            member.tell(do="activity", label=member.name, count=ROUNDS, interval=0.1)
        deadline = time.monotonic() + 60
        while len(_did(carol)) < KILL_AFTER:
            assert time.monotonic() < deadline, "carol made too few posts"
            time.sleep(0.02)
        carol.process.send_signal(signal.SIGKILL)
        carol.process.wait(timeout=10)
        reported = {"carol": len(_did(carol))}
        assert KILL_AFTER <= reported["carol"] < ROUNDS, "not killed in the middle"

        # Back from its data dir alone (same key, folder and port), it goes on.
        carol = start("carol")
        carol.tell(do="activity", label="carol-again", count=ROUNDS // 2, interval=0.1)
        for member, label in ((alice, "alice"), (bob, "bob"), (carol, "carol-again")):
            assert member.next("done", 90)["label"] == label
            reported[label] = len(_did(member))

        # Well before the periodic reconciliation (30 s): carol's new run is met afresh.
        dumps = _settled((alice, bob, carol), timeout=15)

    # Everyone holds the same posts and document, whoever wrote what.
    first = dumps[0]
    for dump in dumps[1:]:
        assert sorted(p[0] for p in dump["stored"]) == sorted(p[0] for p in first["stored"])
        assert (dump["items"], dump["text"]) == (first["items"], first["text"])
    for dump in dumps:
        assert len(dump["feed"]) == len(set(dump["feed"])), "a post given twice"
        assert set(dump["feed"]) == {p[0] for p in dump["stored"] if p[1] != HELLO_TOPIC}

    # Each round's post is there once; none reported is missing. Carol's last round may
    # have been stored (and so be kept and spread) but not reported before the kill.
    chat = Counter(p[2] for p in first["stored"] if p[1] == "chat")
    assert set(chat.values()) == {1}, "a post written once is held twice"
    counts = Counter(text.rsplit("-", 1)[0] for text in chat)
    for label, number in reported.items():
        made = counts[label]
        assert made == number or (label == "carol" and made == number + 1), (label, made)
        assert {f"{label}-{i}" for i in range(made)} <= set(chat)
    # The document holds every reported edit, once, in each copy (carol's unreported
    # last round may have stopped between its post and its edit).
    items = first["items"]
    assert set(items) <= set(chat)
    assert set(chat) - set(items) <= {f"carol-{reported['carol']}"}, \
        "the document's edits and the posts differ"
    assert all(items[key] == int(key.rsplit("-", 1)[1]) for key in items)
    log = first["text"].split(";")[:-1]
    assert Counter(log) == Counter(list(items))


def _settled(members: tuple[Member, ...], timeout: float) -> list[dict[str, Any]]:
    """Dumps of every member once they agree (or the last ones, when ``timeout`` passed)."""
    deadline = time.monotonic() + timeout
    while True:
        dumps = []
        for member in members:
            member.tell(do="dump")
            dumps.append(member.next("dump", 20))
        same = all(sorted(p[0] for p in d["stored"]) == sorted(p[0] for p in dumps[0]["stored"])
                   and (d["items"], d["text"]) == (dumps[0]["items"], dumps[0]["text"])
                   for d in dumps)
        if same or time.monotonic() > deadline:
            return dumps
        time.sleep(0.5)
