"""Each app's own loopback origin in a browser, and which app last served each origin.

The browser keeps an origin's storage (local storage, IndexedDB, caches, cookies) across
launches, and a tab keeps its origin as long as it is open. ``shoal run --browser``
serves an app at ``http://NAME-TAG.localhost:PORT``: a host name of the app's own
(``app_host``; browsers resolve every name under ``localhost`` to this machine without
asking DNS) on a port of its own (``own_listener``), both the same at each launch, so
the app keeps what it stored, and a tab of one app left open never shares an origin
with the next app served on that port.

Where pages are served at ``http://127.0.0.1:PORT`` instead (an app host made without a
host name), the origin does pass from app to app: when a port that served another app,
or one whose past is unknown, serves this one, the server has the browser clear that
origin (``Clear-Site-Data``) before the first page of the launch runs (``claim``).
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import socket
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


PREFERRED_PORTS = (20000, 30000)
"""Where an app's own port is chosen, below Linux's ephemeral ports (32768 and up)."""
TAG_CHARS = 10
"""Base32 characters of an app's tag: 50 bits."""
NAME_CHARS = 40


def preferred_port(app_id: str) -> int:
    """The app's own port on 127.0.0.1, the same at each launch."""
    low, high = PREFERRED_PORTS
    return low + int.from_bytes(hashlib.sha256(app_id.encode()).digest()[:4], "big") % (
        high - low)


def own_listener(app_id: str, port: int = 0) -> socket.socket:
    """A socket listening on 127.0.0.1: on ``port`` when given (else ``ListenError``),
    else on the app's own port, or on any free one while that one is taken."""
    from shoal.net import ListenError, bind_listener

    if port == 0:
        try:
            return bind_listener(preferred_port(app_id))
        except ListenError:
            pass
    return bind_listener(port)


def app_host(name: str, app_id: str, publisher: str | None, data_dir: Path) -> str:
    """The host name of an app's pages in a browser: ``NAME-TAG.localhost``, the app's
    name in letters and digits, then a tag of its id, its publisher (None: an unsigned
    folder) and its data folder, so that another app, another publisher's app of that
    id, or another copy of the app with its own data folder has an origin of its own."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:NAME_CHARS].strip("-")
    seed = "\0".join((app_id, publisher or "", str(data_dir)))
    digest = hashlib.sha256(seed.encode()).digest()
    tag = base64.b32encode(digest[:8]).decode().lower()[:TAG_CHARS]
    return f"{slug or 'app'}-{tag}.localhost"
