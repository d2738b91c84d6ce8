"""``shoal init``: a new app folder from one of the bundled templates."""

from __future__ import annotations

import re
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

from shoal.runtime.config import ConfigError

TEMPLATES = ("blank", "chat", "notes", "vite")
"""``chat``: a group chat; ``notes``: a text edited together by a group; ``vite``: a Vite
project, whose dev server ``shoal dev`` shows and whose ``dist`` ``shoal run`` serves."""


def create_app(folder: Path, *, template: str = "blank", name: str | None = None) -> list[Path]:
    """Write the template into ``folder`` (which must not exist or be empty)."""
    if template not in TEMPLATES:
        raise ConfigError(f"unknown template {template!r} (one of {', '.join(TEMPLATES)})")
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise ConfigError(f"{folder} already exists and is not an empty folder", code="EEXIST")
    title = name or folder.resolve().name
    slug = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-") or "app"
    values = {"{{name}}": title.replace('"', "'"), "{{id}}": f"local.shoal.{slug}",
              "{{slug}}": slug}
    source = resources.files("shoal.runtime").joinpath("templates", template)
    folder.mkdir(parents=True, exist_ok=True)
    return _copy(source, folder, values)


def _copy(source: Traversable, folder: Path, values: dict[str, str]) -> list[Path]:
    """The template's files (and folders) written into ``folder``, placeholders filled."""
    written = []
    for entry in sorted(source.iterdir(), key=lambda e: e.name):
        if entry.name == "__pycache__":  # compiled beside an installed Shoal, not the app's
            continue
        target = folder / entry.name
        if entry.is_dir():
            target.mkdir(exist_ok=True)
            written += _copy(entry, target, values)
            continue
        text = entry.read_text(encoding="utf-8")
        for key, value in values.items():
            text = text.replace(key, value)
        target.write_text(text, encoding="utf-8")
        written.append(target)
    return written
