"""The window's menus from [[menu]] in shoal.toml, chosen with the mouse and keyboard on an
X server of the test's own: the page hears the item's id."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from window_helpers import (
    find_window,
    in_window,
    module_page,
    wait_for_file,
    write_app,
    xdotool,
)

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


@pytest.mark.parametrize("gui", ["qt", "gtk"])
def test_a_menu_item_reaches_the_page(tmp_path: Path, display: str, gui: str) -> None:
    app = write_app(tmp_path / "app", TOML,
                    {"index.html": module_page(body="<p>menus</p>"), "app.js": SCRIPT})
    data = tmp_path / "data"
    with in_window(app, data, display, gui) as env:
        wait_for_file(data / "ready.txt")
        window = find_window("Menus", env)[0]
        # Open "File" at the menu bar's left end, then take its first item by keyboard.
        xdotool(env, "mousemove", "--window", window, "20", "10", "click", "1",
                "sleep", "0.5", "key", "Down", "sleep", "0.2", "key", "Return")
        assert wait_for_file(data / "menu.txt") == "hello\n"


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


@pytest.mark.parametrize("gui", ["qt", "gtk"])
def test_a_page_of_the_app_opens_in_a_second_window_with_the_bridge(
        tmp_path: Path, display: str, gui: str) -> None:
    app = write_app(tmp_path / "app", '[app]\nname = "Windows"\nid = "test.shoal.windows"\n'
                    "[permissions]\nwindow = true\n", {
                        "index.html": module_page(body="<p>one</p>"),
                        "app.js": 'import { fs, window as shown } from "shoal:api";\n'
                                  'await fs.writeFile("first.txt", location.origin);\n'
                                  'window.open("second.html?from=first");\n'
                                  'setTimeout(() => shown.setTitle("First"), 1500);\n',
                        "second.html": module_page("second.js", "<p>2</p>"),
                        "second.js": 'import { fs, window as shown } from "shoal:api";\n'
                                     'await shown.setTitle("Second");\n'
                                     'await fs.writeFile("second.txt", location.origin + " "'
                                     ' + location.search);\n'})
    data = tmp_path / "data"
    with in_window(app, data, display, gui) as env:
        origin = wait_for_file(data / "first.txt")
        # The second page reached the bridge from a window of its own, on the same origin.
        assert wait_for_file(data / "second.txt") == f"{origin} ?from=first"
        # Each window's calls act on the window its page is in: once the first page has
        # named its window too, both names are there.
        assert len(find_window("First", env)) == 1
        assert len(find_window("Second", env)) == 1


STORAGE_SCRIPT = """import { fs } from "shoal:api";
const seen = localStorage.getItem("visits") ?? "0";
localStorage.setItem("visits", String(Number(seen) + 1));
await fs.writeFile("seen.txt", seen);
"""


@pytest.mark.parametrize("gui", ["qt", "gtk"])
def test_what_a_page_stores_lasts_across_launches_and_stays_with_its_app(
        tmp_path: Path, display: str, gui: str) -> None:
    def launch(app: Path, data: Path) -> str:
        (data / "seen.txt").unlink(missing_ok=True)
        with in_window(app, data, display, gui):
            seen = wait_for_file(data / "seen.txt")
            time.sleep(1)  # WebKitGTK writes storage a moment after the page sets it
            return seen

    apps = []
    for name in ("one", "two"):
        app = write_app(tmp_path / name, f'[app]\nname = "{name}"\nid = "test.shoal.{name}"\n',
                        {"index.html": module_page(), "app.js": STORAGE_SCRIPT})
        apps.append((app, tmp_path / f"{name}-data"))
    assert launch(*apps[0]) == "0"
    assert launch(*apps[0]) == "1"  # kept across launches
    assert launch(*apps[1]) == "0"  # another app (same origin on Qt) sees none of it
