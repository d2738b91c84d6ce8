"""bench/streams.py on a few MiB: its JSON has every figure, and the bytes arrived whole
(the sender's and the receiver's hashes match). The rows that need neither npm nor
aioquic only."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench" / "streams.py"

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(sys.platform != "linux", reason="network namespaces are Linux's"),
]


@pytest.fixture(autouse=True)
def _require_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("the streams bench builds a network namespace and must run as root")


def _bench(*args: str) -> tuple[int, dict]:
    done = subprocess.run([sys.executable, str(BENCH), "--json", *args],
                          capture_output=True, text=True, timeout=240)
    assert done.stdout, done.stderr
    return done.returncode, json.loads(done.stdout)


def _namespaces() -> set[str]:
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in listed.splitlines() if line.startswith("shoal-bench-")}


def test_the_bench_moves_verified_bytes_and_reports_every_figure() -> None:
    before = _namespaces()
    code, result = _bench("--bytes", "4MiB", "--rows", "shoal_messages,tls_tcp")
    assert code == 0
    assert result["bytes"] == 4 << 20 and result["mtu"] == 1500 and result["loss_pct"] == 0
    assert set(result["rows"]) == {"shoal_messages", "tls_tcp"}
    for row in result["rows"].values():
        assert row["verified"] is True
        assert row["mbytes_per_s"] > 0 and row["seconds"] > 0
        assert row["sender_peak_rss_mib"] > 0 and row["receiver_peak_rss_mib"] > 0
    shoal = result["rows"]["shoal_messages"]
    assert shoal["sender_io"]["tx_bytes"] > 4 << 20
    assert shoal["receiver_io"]["rx_datagrams"] == shoal["receiver_stats"]["rx_datagrams"]
    assert result["ratios"]["row"] == "shoal_messages"
    assert result["ratios"]["shoal/tls_tcp"] > 0
    for row in result["rows"].values():  # the transfer's CPU: part of each side's whole
        cost = row["transfer_cpu_s_per_gib"]
        assert 0 < cost["send"] <= row["sender_cpu_s_per_gib"]
        assert 0 < cost["recv"] <= row["receiver_cpu_s_per_gib"]
        assert cost["total"] == pytest.approx(cost["send"] + cost["recv"], abs=0.02)
    assert _namespaces() == before  # its namespace is gone


def test_the_profile_tells_the_stream_service_apart(tmp_path: Path) -> None:
    code, result = _bench("--bytes", "16MiB", "--rows", "shoal_stream", "--profile",
                          "--profile-dir", str(tmp_path))
    assert code == 0 and result["rows"]["shoal_stream"]["verified"] is True
    profile = result["profile"]
    assert profile["tool"] in ("py-spy", "sampler")
    for role in ("send", "recv"):
        areas = profile[f"shoal_stream_{role}"]["by_area_pct"]
        assert sum(areas.values()) == pytest.approx(100, abs=1)
        assert areas.get("core: streams", 0) > 0


def test_the_bench_under_loss_still_delivers_every_byte() -> None:
    code, result = _bench("--bytes", "1MiB", "--rows", "shoal_messages", "--loss", "3")
    assert code == 0
    row = result["rows"]["shoal_messages"]
    assert result["loss_pct"] == 3 and row["verified"] is True
    assert row["udp_offload"] is False and row["sender_io"]["tx_gso_batches"] == 0
    # Lost datagrams were sent again: more went out than the bytes need.
    assert row["sender_stats"]["tx_datagrams"] > row["receiver_stats"]["rx_datagrams"]


def test_a_bad_argument_is_one_line() -> None:
    done = subprocess.run([sys.executable, str(BENCH), "--rows", "carrier_pigeon"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "unknown rows: carrier_pigeon" in done.stderr
    assert "Traceback" not in done.stderr
