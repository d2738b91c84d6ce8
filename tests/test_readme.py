"""The README's "Try it" block runs exactly as printed, in a network namespace of its own
(its commands keep LAN discovery on, and mDNS must not reach the host's interfaces)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.netns

README = Path(__file__).resolve().parent.parent / "README.md"


def _try_it_block() -> str:
    section = README.read_text().split("## Try it", 1)[1]
    return re.search(r"```sh\n(.*?)```", section, re.S).group(1)  # type: ignore[union-attr]


def test_the_try_it_block_runs_as_printed(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.fail("this test builds a network namespace and must run as root")
    shoal = shutil.which("shoal", path=str(Path(sys.executable).parent))
    assert shoal, "the shoal command is installed next to this Python"
    namespace = f"readme{os.getpid() % 100000}"
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/sbin:/usr/bin:/sbin:/bin",
           "HOME": str(tmp_path)}
    # A LAN of one host: loopback, and a veth pair (both ends inside) for multicast.
    setup = [["ip", "netns", "add", namespace],
             ["ip", "-n", namespace, "link", "set", "lo", "up"],
             ["ip", "-n", namespace, "link", "add", "lan0", "type", "veth", "peer", "name",
              "lan1"],
             ["ip", "-n", namespace, "addr", "add", "10.78.0.1/24", "dev", "lan0"],
             ["ip", "-n", namespace, "link", "set", "lan0", "up"],
             ["ip", "-n", namespace, "link", "set", "lan1", "up"],
             ["ip", "-n", namespace, "route", "add", "224.0.0.0/4", "dev", "lan0"]]
    try:
        for command in setup:
            subprocess.run(command, check=True, capture_output=True)
        script = _try_it_block() + "\nstatus=$?\nkill $(jobs -p) 2>/dev/null\nwait\nexit $status\n"
        result = subprocess.run(["ip", "netns", "exec", namespace, "bash", "-c", script],
                                cwd=tmp_path, env=env, capture_output=True, text=True,
                                timeout=120)
    finally:
        subprocess.run(["ip", "netns", "del", namespace], check=False, capture_output=True)
    events = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    events = [e for e in events if "event" in e]  # shoal doctor prints one report object
    assert "Traceback" not in result.stderr, result.stderr
    delivered = [e for e in events if e["event"] == "delivered"]
    assert delivered and delivered[0]["path"] == "direct", result.stdout + result.stderr
    received = [e for e in events if e["event"] == "message"]
    assert [e["data"] for e in received] == ["hello"]
    # The doctor's report: the one object that is not an event (a background node's line
    # may come after it).
    (report,) = [json.loads(line) for line in result.stdout.splitlines()
                 if line.startswith("{") and '"event"' not in line]
    assert report["udp"] is True and report["servers"][0]["server"] == "127.0.0.1:7000"
    assert result.returncode == 0, result.stderr
