"""Running an app in a real Qt window on an X server of the test's own, and reading what
its page wrote."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path


def shoal_env(display: str | None) -> dict[str, str]:
    """The environment for a Shoal process of a test: no LAN discovery, and with
    ``display`` a real X server (not Qt's offscreen platform)."""
    env = {**os.environ, "SHOAL_NO_LAN": "1"}
    if display is not None:
        env["DISPLAY"] = display
        env.pop("QT_QPA_PLATFORM", None)
    return env


def module_page(script: str = "app.js", body: str = "") -> str:
    """An HTML page that runs ``script`` as a module."""
    return (f'<!doctype html><meta charset="utf-8"><script type="module" src="{script}">'
            f"</script>{body}")


def write_app(folder: Path, toml: str, files: dict[str, str | bytes]) -> Path:
    """An app folder: ``toml`` as its shoal.toml, and ``files`` by name."""
    folder.mkdir()
    (folder / "shoal.toml").write_text(toml)
    for name, content in files.items():
        if isinstance(content, bytes):
            (folder / name).write_bytes(content)
        else:
            (folder / name).write_text(content)
    return folder


@contextlib.contextmanager
def in_window(app: Path, data: Path, display: str, gui: str = "qt"
              ) -> Iterator[dict[str, str]]:
    """``shoal run APP`` in a window (``gui``: ``qt`` or ``gtk``) on ``display``, once it
    says it is ready: the environment (for xdotool) while it runs, stopped afterwards with
    its session."""
    env = shoal_env(display)
    process = subprocess.Popen(
        [sys.executable, "-m", "shoal.cli.main", "run", "--json", "--gui", gui, str(app),
         "--data-dir", str(data)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        text=True, env=env, start_new_session=True)
    try:
        assert process.stdout is not None
        assert json.loads(process.stdout.readline())["event"] == "ready"
        yield env
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=20)


def wait_for_file(path: Path, seconds: float = 30) -> str:
    """The text of ``path`` once it exists and is not empty."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if path.exists() and path.read_text():
            return path.read_text()
        time.sleep(0.1)
    raise AssertionError(f"{path} never came")


def find_window(name: str, env: dict[str, str]) -> list[str]:
    """The ids of the visible X windows called exactly ``name``."""
    return subprocess.run(["xdotool", "search", "--sync", "--onlyvisible", "--name",
                           f"^{name}$"], capture_output=True, text=True, env=env,
                          timeout=30).stdout.split()


def xdotool(env: dict[str, str], *steps: str) -> None:
    subprocess.run(["xdotool", *steps], env=env, check=True, timeout=30)
