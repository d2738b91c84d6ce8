"""The NAT matrix: every pair of NAT kinds, driven through the ``shoal`` CLI in a ``NatLab``.

One lab holds two sites of each kind (so a kind can meet itself) and one "shared" site
with two hosts behind one NAT. An introducer (with an alternate address for NAT tests)
runs on the lab's internet. A trial forgets every NAT mapping, starts ``shoal listen``
on the receiver, waits until it has registered and learned its NAT kind, then runs
``shoal send`` on the sender and records the outcome.
"""

from __future__ import annotations

import contextlib
import json
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from shoal.lab.netlab import Host, NatLab

PAIR_KINDS = ("public", "full-cone", "port-restricted", "symmetric", "double")
EXPECTED_NAT = {
    "public": ("endpoint-independent", "endpoint-independent"),
    "full-cone": ("endpoint-independent", "endpoint-independent"),
    "port-restricted": ("endpoint-independent", "address-and-port-dependent"),
    "symmetric": ("address-and-port-dependent", "address-and-port-dependent"),
    "double": ("endpoint-independent", "address-and-port-dependent"),
    "shared": ("endpoint-independent", "address-and-port-dependent"),
}
"""RFC 4787 (mapping, filtering) that ``shoal doctor`` must report in each kind of site."""


def all_pairs() -> list[tuple[str, str]]:
    """Every ordered (sender, receiver) pair of kinds, plus two hosts behind one NAT."""
    return [(a, b) for a in PAIR_KINDS for b in PAIR_KINDS] + [("shared", "shared")]


def expected_path(sender: str, receiver: str) -> str:
    """Direct for every pair except two NATs that both map per destination."""
    return "relay" if sender == receiver == "symmetric" else "direct"


def strategy_class(sender: str, receiver: str) -> str:
    """How the pair is expected to connect: direct, cone, birthday, relay or lan."""
    kinds = {sender, receiver}
    if kinds == {"shared"}:
        return "lan"
    if "public" in kinds or "full-cone" in kinds:
        return "direct"
    if kinds == {"symmetric"}:
        return "relay"
    if "symmetric" in kinds:
        return "birthday"
    return "cone"


@dataclass(slots=True)
class Trial:
    sender: str
    receiver: str
    delivered: bool
    path: str | None
    ms: float | None
    received_path: str | None
    error: str | None = None


class Matrix:
    """A running lab plus introducer; ``run(sender_kind, receiver_kind)`` is one trial."""

    def __init__(self, workdir: Path, *, delay: float = 0.0, loss: float = 0.0,
                 seed: int = 0, timeout: float = 30.0) -> None:
        self.workdir = workdir
        self.timeout = timeout
        sites = [(f"{kind}-{n}", kind) for kind in PAIR_KINDS for n in (1, 2)]
        sites.append(("shared", "shared"))
        self.lab = NatLab(sites, delay=delay, loss=loss, seed=seed)
        self.env = {"SHOAL_NO_LAN": "1", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}

    def __enter__(self) -> Matrix:
        self.lab.__enter__()
        try:
            # Its event log goes to a file: an unread pipe would fill and stall it.
            log = self.workdir / "introducer.log"
            with log.open("w") as sink:
                self.lab.spawn(
                    self.lab.server,
                    self._shoal("introducer", "--listen", self.lab.introducer_address,
                                "--alternate", self.lab.alternate_address,
                                "--identity", str(self.workdir / "introducer.key")),
                    stdout=sink, text=True, env=self.env,
                )
            deadline = time.monotonic() + 20
            while '"ready"' not in log.read_text():
                if time.monotonic() > deadline:
                    raise RuntimeError(f"introducer did not start: {log.read_text()!r}")
                time.sleep(0.05)
        except BaseException:
            self.lab.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.lab.close()

    def hosts(self, sender: str, receiver: str) -> tuple[Host, Host]:
        if sender == receiver == "shared":
            return self.lab.host("shared", 0), self.lab.host("shared", 1)
        if sender == receiver:
            return self.lab.host(f"{sender}-1"), self.lab.host(f"{receiver}-2")
        return self.lab.host(f"{sender}-1"), self.lab.host(f"{receiver}-1")

    def doctor(self, site: str, index: int = 0) -> dict:
        """``shoal doctor --json`` run in one site's host."""
        host = self.lab.host(site, index)
        result = subprocess.run(
            self.lab.command(host, self._shoal(
                "doctor", "--introducer", self.lab.introducer_address,
                "--identity", str(self.workdir / f"{host.netns}.key"))),
            capture_output=True, text=True, env=self.env, timeout=60, check=False,
        )
        return json.loads(result.stdout.strip().splitlines()[-1])

    @contextlib.contextmanager
    def listening(self, target: Host) -> Iterator[tuple[str | None, EventReader]]:
        """``shoal listen`` on ``target``, once registered and done with its NAT check:
        its peer id (None if it never became ready) and its events."""
        listener = self.lab.spawn(
            target,
            self._shoal("listen", "--introducer", self.lab.introducer_address,
                        "--identity", str(self.workdir / f"{target.netns}.key")),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=self.env,
        )
        try:
            assert listener.stdout is not None
            events = EventReader(listener.stdout)
            peer_id = None
            deadline = time.monotonic() + 30
            while (event := events.next(deadline)) is not None:
                if event["event"] == "ready":
                    peer_id = event["peer_id"]
                elif event["event"] == "nat":
                    break
            yield peer_id, events
        finally:
            self.lab.stop(listener, timeout=10)

    def run(self, sender: str, receiver: str, text: str = "across the NATs") -> Trial:
        self.lab.flush_conntrack()
        source, target = self.hosts(sender, receiver)
        with self.listening(target) as (peer_id, events):
            if peer_id is None:
                return Trial(sender, receiver, False, None, None, None, "listener not ready")
            sent = subprocess.run(
                self.lab.command(source, self._shoal(
                    "send", "--introducer", self.lab.introducer_address,
                    "--timeout", str(self.timeout), "--to", peer_id, text,
                    "--identity", str(self.workdir / f"{source.netns}.key"))),
                capture_output=True, text=True, env=self.env, timeout=self.timeout + 30,
                check=False,
            )
            outcome = json.loads((sent.stdout.strip().splitlines() or ["{}"])[-1])
            if outcome.get("event") != "delivered":
                return Trial(sender, receiver, False, None, None, None,
                             outcome.get("message") or sent.stderr[-300:])
            message = events.next(time.monotonic() + 10) or {}
            ok = message.get("event") == "message" and message.get("data") == text
            return Trial(sender, receiver, ok, outcome["path"], outcome["ms"],
                         message.get("path"))

    def _shoal(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "shoal.cli.main", *args, "--json"]


class EventReader:
    """JSON lines from a process's stdout, read by a thread so waits can time out."""

    def __init__(self, stream: IO[str]) -> None:
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            self._lines.put(line)
        self._lines.put(None)

    def next(self, deadline: float) -> dict | None:
        """The next event, or None at end of output or at ``deadline``."""
        try:
            line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            return None
        return None if line is None else json.loads(line)
