"""The window's menus from [[menu]] in shoal.toml, chosen with the mouse and keyboard on an
X server of the test's own: the page hears the item's id."""

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

import pytest

SCRIPT = """import { fs, window } from "shoal:api";
window.on("menu", async ({ id }) => { await fs.appendFile("menu.txt", id + "\\n"); });
await fs.writeFile("ready.txt", "1");
"""
TOML = """[app]
name = "Menus"
id = "test.shoal.menus"

[[menu]]
title = "File"
items = [{ label = "Say hello", id = "hello" }, "-", { label = "Export", id = "export" }]
"""


@contextlib.contextmanager
def _in_window(app: Path, data: Path, display: str) -> Iterator[dict[str, str]]:
    """``shoal run APP`` in a Qt window on ``display``, once it says it is ready: the
    environment (for xdotool) while it runs, stopped afterwards with its session."""
    env = {**os.environ, "DISPLAY": display, "SHOAL_NO_LAN": "1"}
    env.pop("QT_QPA_PLATFORM", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "shoal.cli.main", "run", "--json", "--gui", "qt", str(app),
         "--data-dir", str(data)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        text=True, env=env, start_new_session=True)
    try:
        assert process.stdout is not None
        assert json.loads(process.stdout.readline())["event"] == "ready"
        yield env
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=20)


def _wait_for(path: Path, seconds: float = 30) -> str:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if path.exists() and path.read_text():
            return path.read_text()
        time.sleep(0.1)
    raise AssertionError(f"{path} never came")


def test_a_menu_item_reaches_the_page(tmp_path: Path, display: str) -> None:
    app = tmp_path / "app"
    app.mkdir()
    (app / "shoal.toml").write_text(TOML)
    (app / "index.html").write_text('<!doctype html><meta charset="utf-8">'
                                    '<script type="module" src="app.js"></script><p>menus</p>')
    (app / "app.js").write_text(SCRIPT)
    data = tmp_path / "data"
    with _in_window(app, data, display) as env:
        _wait_for(data / "ready.txt")
        window = subprocess.run(["xdotool", "search", "--sync", "--onlyvisible", "--name",
                                 "^Menus$"], capture_output=True, text=True, env=env,
                                timeout=30).stdout.split()[0]
        # Open "File" at the menu bar's left end, then take its first item by keyboard.
        subprocess.run(["xdotool", "mousemove", "--window", window, "20", "10", "click", "1",
                        "sleep", "0.5", "key", "Down", "sleep", "0.2", "key", "Return"],
                       env=env, check=True, timeout=30)
        assert _wait_for(data / "menu.txt") == "hello\n"


@pytest.mark.parametrize(("menu", "where"), [
    ('[[menu]]\ntitle = "File"\nitems = []\n', "menu[0].items"),
    ('[[menu]]\ntitle = "File"\nitems = [{ label = "x", id = "a b" }]\n', "menu[0].items[0]"),
])
def test_a_bad_menu_is_one_line(tmp_path: Path, menu: str, where: str) -> None:
    app = tmp_path / "app"
    app.mkdir()
    (app / "shoal.toml").write_text('[app]\nname = "M"\nid = "test.shoal.m"\n' + menu)
    (app / "index.html").write_text("<!doctype html><p>m</p>")
    result = subprocess.run([sys.executable, "-m", "shoal.cli.main", "run", "--browser",
                             str(app)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and where in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_page_of_the_app_opens_in_a_second_window_with_the_bridge(
        tmp_path: Path, display: str) -> None:
    app = tmp_path / "app"
    app.mkdir()
    (app / "shoal.toml").write_text('[app]\nname = "Windows"\nid = "test.shoal.windows"\n'
                                    "[permissions]\nwindow = true\n")
    (app / "index.html").write_text('<!doctype html><meta charset="utf-8">'
                                    '<script type="module" src="app.js"></script><p>one</p>')
    (app / "app.js").write_text('import { fs } from "shoal:api";\n'
                                'await fs.writeFile("first.txt", location.origin);\n'
                                'window.open("second.html?from=first");\n')
    (app / "second.html").write_text('<!doctype html><meta charset="utf-8">'
                                     '<script type="module" src="second.js"></script><p>2</p>')
    (app / "second.js").write_text('import { fs } from "shoal:api";\n'
                                   'await fs.writeFile("second.txt", location.origin + " "'
                                   ' + location.search);\n')
    data = tmp_path / "data"
    with _in_window(app, data, display) as env:
        origin = _wait_for(data / "first.txt")
        # The second page reached the bridge from a window of its own, on the same origin.
        assert _wait_for(data / "second.txt") == f"{origin} ?from=first"
        windows = subprocess.run(["xdotool", "search", "--sync", "--onlyvisible", "--name",
                                  "^Windows$"], capture_output=True, text=True, env=env,
                                 timeout=30).stdout.split()
        assert len(windows) == 2
