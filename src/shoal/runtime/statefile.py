"""Small JSON records in the user's state dir (which app served an origin, what the user
granted an app): read whole, written whole, and never seen half-written."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from pathlib import Path
from typing import Any


def read_record(path: Path) -> dict[str, Any]:
    """The JSON object at ``path``; empty when it is missing or unreadable."""
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return body if isinstance(body, dict) else {}


def write_record(path: Path, body: dict[str, Any]) -> None:
    """Replace the record at ``path`` in one step; a record that cannot be written is
    left as it was (these records save work or questions, they guard nothing)."""
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}")
        temporary.write_text(json.dumps(body), encoding="utf-8")
        os.replace(temporary, path)
