"""What ``shoal share`` and ``shoal fetch`` show while they run: a ``rich`` progress bar
(bytes, rate, time left, peers) on a terminal, or ``progress`` JSON lines, a few a
second at most."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import click

JSON_INTERVAL = 0.1
"""Seconds between two progress lines in JSON (the first and the last always go)."""


def size_text(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TiB"  # pragma: no cover


def output_path(given: Path | None, name: str, root: bytes) -> Path:
    """Where a fetch writes: ``-o PATH`` (a folder: the ticket's name inside it), else
    the ticket's name (or ``blob-ROOT``) in the current folder."""
    default = name or f"blob-{root.hex()[:16]}"
    if given is None:
        return Path(default)
    if given.is_dir():
        return given / default
    return given


class Meter:
    """Shows the progress of one transfer; ``update`` as bytes go, ``close`` at the end."""

    def __init__(self, as_json: bool, label: str, total: int | None) -> None:
        self.as_json = as_json
        self.total = total
        self._started = time.monotonic()
        self._last_line = 0.0
        self._bar: Any = None
        self._task: Any = None
        if not as_json and sys.stderr.isatty() and importlib.util.find_spec("rich"):
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            console = Console(stderr=True, no_color=bool(os.environ.get("NO_COLOR")))
            self._bar = Progress(TextColumn("{task.description}"), BarColumn(),
                                 DownloadColumn(binary_units=True), TransferSpeedColumn(),
                                 TimeRemainingColumn(), TextColumn("{task.fields[peers]}"),
                                 console=console, transient=False)
            self._bar.start()
            self._task = self._bar.add_task(label, total=total, peers="")

    def update(self, done: int, peers: int, **fields: Any) -> None:
        now = time.monotonic()
        if self._bar is not None:
            self._bar.update(self._task, completed=done,
                             peers=f"{peers} peer{'s' if peers != 1 else ''}")
            return
        final = self.total is not None and done >= self.total
        if not self.as_json or (self._last_line and now - self._last_line < JSON_INTERVAL
                                and not final):
            return
        self._last_line = now
        seconds = now - self._started
        line = {"event": "progress", "bytes": done, "peers": peers,
                "mbytes_per_s": round(done / seconds / 1e6, 2) if seconds > 0 else 0.0,
                **fields}
        if self.total is not None:
            line["size"] = self.total
        click.echo(json.dumps(line))
        sys.stdout.flush()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
