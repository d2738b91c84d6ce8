"""CPU time and resident memory of another process, read from /proc (Linux), and a
``shoal`` node started on a free loopback port for a bench to attack."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds ``pid`` has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_mib(pid: int) -> float:
    """``pid``'s resident set in MiB, to a tenth."""
    return round(rss_kib(pid) / 1024, 1)


def rss_kib(pid: int) -> int:
    """``pid``'s resident set in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


@contextlib.contextmanager
def node_process(command: str, workdir: str, host: str = "127.0.0.1",
                 **popen: object) -> Iterator[tuple[subprocess.Popen, tuple[str, int]]]:
    """``shoal COMMAND`` (``introducer`` or ``listen``) on a free UDP port of ``host``,
    with its identity in ``workdir``: the process and its address, stopped on exit."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind((host, 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "shoal.cli.main", command, "--listen", f"{host}:{port}",
         "--no-lan", "--json", "--identity", f"{workdir}/n.key"], **popen)  # type: ignore[call-overload]
    try:
        yield process, (host, port)
    finally:
        process.terminate()
        process.wait(timeout=10)


@contextlib.contextmanager
def running_node(command: str, host: str = "127.0.0.1",
                 ) -> Iterator[tuple[subprocess.Popen, tuple[str, int], str]]:
    """``node_process`` with an identity of its own, once it has said its peer id: the
    process, its address and its peer id. What it prints afterwards is read and dropped."""
    with tempfile.TemporaryDirectory() as workdir, node_process(
            command, workdir, host, stdout=subprocess.PIPE) as (node, target):
        assert node.stdout is not None
        peer_id = json.loads(node.stdout.readline())["peer_id"]
        threading.Thread(target=lambda: [None for _ in node.stdout], daemon=True).start()
        time.sleep(0.5)
        yield node, target, peer_id
