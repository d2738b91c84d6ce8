"""Which app last served each loopback origin, so that no app inherits another's.

An app served for a browser lives at ``http://127.0.0.1:PORT``, and the browser keeps
that origin's storage (local storage, IndexedDB, caches, cookies) across launches. When
a port that served another app, or one whose past is unknown, serves this one, the
server has the browser clear that origin (``Clear-Site-Data``) before the first page of
the launch runs. The same app on the same port keeps its storage.
"""

from __future__ import annotations

import os
from pathlib import Path

from shoal.runtime.statefile import read_record, write_record

LEDGER_NAME = "origins.json"
MAX_ENTRIES = 4096


def ledger_path() -> Path:
    base = os.environ.get("SHOAL_DATA_DIR")
    if base:
        return Path(base) / LEDGER_NAME
    import platformdirs

    return Path(platformdirs.user_state_dir("shoal")) / LEDGER_NAME


def claim(origin: str, app_id: str, path: Path | None = None) -> bool:
    """Record that ``app_id`` now serves ``origin``; True when the browser's storage for
    it must be cleared first (another app, or nothing known, served it before)."""
    path = path or ledger_path()
    entries = read_record(path)
    previous = entries.pop(origin, None)
    entries[origin] = app_id  # most recent last; the oldest go first when full
    while len(entries) > MAX_ENTRIES:
        entries.pop(next(iter(entries)))
    write_record(path, entries)
    return previous != app_id
