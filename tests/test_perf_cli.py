"""``shoal perf`` against ``shoal listen`` on loopback, as a user runs them: by address
and by peer id through an introducer, both ways, over several streams; the listener's
limit; and bad targets refused in one line."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from cli_helpers import free_port, running_introducer, shoal

LOOPBACK = "127.0.0.1:0"


def _perf(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(shoal("perf", "--no-lan", "--listen", LOOPBACK, *args),
                          capture_output=True, text=True, timeout=120)


def _last(result: subprocess.CompletedProcess[str]) -> dict:
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_perf_moves_the_bytes_it_reports_both_ways_by_address_and_by_peer_id(
        tmp_path: Path) -> None:
    with running_introducer(tmp_path) as introducer:
        listener = subprocess.Popen(
            shoal("listen", "--no-lan", "--listen", LOOPBACK, "--json", "--introducer",
                  introducer, "--identity", str(tmp_path / "l.key"), "--perf-limit", "3MiB"),
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            assert listener.stdout is not None
            ready = json.loads(listener.stdout.readline())
            address, peer_id = ready["listen"], ready["peer_id"]

            sent = _perf("--to", address, "--bytes", "2MiB", "--streams", "2", "--json")
            assert sent.returncode == 0, sent.stderr
            run = _last(sent)
            assert {"event", "bytes", "seconds", "mbytes_per_s", "rtt_ms", "path"} <= set(run)
            assert run["event"] == "perf" and run["bytes"] == 2 * 1024 * 1024
            assert run["peer_id"] == peer_id and run["path"] == "direct"
            assert run["streams"] == 2 and run["reverse"] is False
            assert run["seconds"] > 0 and run["rtt_ms"] > 0 and run["idle_rtt_ms"] > 0
            assert run["mbytes_per_s"] == pytest.approx(
                run["bytes"] / run["seconds"] / 1e6, rel=0.02)

            received = _perf("--introducer", introducer, "--to", peer_id, "--bytes",
                             "1500000", "--reverse", "--json")
            assert received.returncode == 0, received.stderr
            run = _last(received)
            assert run["bytes"] == 1_500_000 and run["reverse"] is True

            human = _perf("--to", address, "--bytes", "64KiB")
            assert human.returncode == 0, human.stderr
            assert human.stdout.startswith("sent 64.0 KiB to ") and "MB/s" in human.stdout

            refused = _perf("--to", address, "--bytes", "4MiB", "--reverse", "--json")
            assert refused.returncode == 1
            error = _last(refused)
            assert error["event"] == "error" and error["code"] == "EPERM"
            assert str(3 * 1024 * 1024) in error["message"]
        finally:
            listener.terminate()
            listener.wait(timeout=10)


@pytest.mark.parametrize("target", ["nonsense", "127.0.0.1:99999", "ab" * 32,
                                    "127.0.0.1:{port}"])
def test_a_bad_peer_is_one_clear_line(target: str) -> None:
    result = _perf("--to", target.format(port=free_port()), "--timeout", "1",
                   "--bytes", "1KiB")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("shoal: error:"), lines
