"""Two nodes find each other over mDNS with no introducer, on a LAN this test builds:
two network namespaces joined by a bridge in a third. Nothing touches the host's own
interfaces; everything is removed afterwards, also when the test fails."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

pytestmark = pytest.mark.netns


def _ip(*args: str, check: bool = True) -> None:
    subprocess.run(["ip", *args], check=check, capture_output=True)


def _in(ns: str, *args: str) -> None:
    subprocess.run(["ip", "netns", "exec", ns, *args], check=True, capture_output=True)


@pytest.fixture
def lan() -> Iterator[tuple[str, str]]:
    if os.geteuid() != 0:
        pytest.fail("this test builds network namespaces and must run as root")
    tag = f"s{os.getpid() % 100000}"
    bridge_ns, ns_a, ns_b = f"{tag}br", f"{tag}a", f"{tag}b"
    try:
        for ns in (bridge_ns, ns_a, ns_b):
            _ip("netns", "add", ns)
            _in(ns, "ip", "link", "set", "lo", "up")
        _in(bridge_ns, "sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=0")
        _in(bridge_ns, "ip", "link", "add", "br0", "type", "bridge")
        _in(bridge_ns, "ip", "link", "set", "br0", "up")
        for index, ns in enumerate((ns_a, ns_b), start=1):
            outer, inner = f"{tag}p{index}", f"{tag}h{index}"
            _ip("link", "add", outer, "netns", bridge_ns, "type", "veth", "peer", "name", inner,
                "netns", ns)
            _in(bridge_ns, "ip", "link", "set", outer, "master", "br0")
            _in(bridge_ns, "ip", "link", "set", outer, "up")
            _in(ns, "ip", "addr", "add", f"10.77.0.{index}/24", "dev", inner)
            _in(ns, "ip", "link", "set", inner, "up")
            _in(ns, "ip", "route", "add", "224.0.0.0/4", "dev", inner)
        yield ns_a, ns_b
    finally:
        for ns in (ns_a, ns_b, bridge_ns):
            _ip("netns", "del", ns, check=False)


def test_two_nodes_find_each_other_over_mdns(lan: tuple[str, str], tmp_path) -> None:
    ns_a, ns_b = lan
    env = {k: v for k, v in os.environ.items() if k != "SHOAL_NO_LAN"}
    shoal = [sys.executable, "-m", "shoal.cli.main"]
    listener = subprocess.Popen(
        ["ip", "netns", "exec", ns_a, *shoal, "listen", "--json",
         "--identity", str(tmp_path / "a.key")],
        stdout=subprocess.PIPE, text=True, env=env,
    )
    try:
        assert listener.stdout is not None
        ready = json.loads(listener.stdout.readline())
        sent = subprocess.run(
            ["ip", "netns", "exec", ns_b, *shoal, "send", "--json", "--timeout", "20",
             "--identity", str(tmp_path / "b.key"), "--to", ready["peer_id"], "over the LAN"],
            capture_output=True, text=True, env=env, timeout=60,
        )
        assert sent.returncode == 0, sent.stdout + sent.stderr
        assert json.loads(sent.stdout.splitlines()[-1])["event"] == "delivered"
        message = json.loads(listener.stdout.readline())
        assert message["data"] == "over the LAN" and message["path"] == "direct"
        # An introducer that never answers is said, though the LAN delivered anyway.
        silent = "10.77.0.9:7000"
        sent = subprocess.run(
            ["ip", "netns", "exec", ns_b, *shoal, "send", "--json", "--timeout", "20",
             "--identity", str(tmp_path / "b.key"), "--to", ready["peer_id"],
             "--introducer", silent, "again"], capture_output=True, text=True, env=env,
            timeout=60)
        events = [json.loads(line) for line in sent.stdout.splitlines()]
        assert [e["event"] for e in events] == ["delivered", "warning"], sent.stdout
        assert events[1]["introducer"] == silent
    finally:
        listener.terminate()
        listener.wait(timeout=10)
