"""Helpers for tests that run the ``shoal`` command as a user would."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def shoal(*args: str) -> list[str]:
    """The argv of ``shoal ARGS`` from this checkout."""
    return [sys.executable, "-m", "shoal.cli.main", *args]


def free_port() -> int:
    """A UDP port on loopback that nothing holds now."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def running_introducer(folder: Path) -> Iterator[str]:
    """``shoal introducer`` on loopback, its key in ``folder``, while the block runs:
    its HOST:PORT."""
    process = subprocess.Popen(
        shoal("introducer", "--listen", f"127.0.0.1:{free_port()}", "--json", "--no-lan",
              "--identity", str(folder / "introducer.key")),
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert process.stdout is not None
        yield json.loads(process.stdout.readline())["listen"]
    finally:
        process.terminate()
        process.wait(timeout=10)
