"""Global hotkeys on an X server of the test's own: what the app declared reaches its
page from keys pressed anywhere on the display; nothing else does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from playwright.sync_api import Browser

SCRIPT = """import { hotkeys } from "shoal:api";
const seen = { info: await hotkeys.list(), declared: 0, undeclared: 0 };
const show = () => { document.querySelector("#out").textContent = JSON.stringify(seen); };
hotkeys.on("Alt+Ctrl+K", () => { seen.declared += 1; show(); });
hotkeys.on("ctrl+j", () => { seen.undeclared += 1; show(); });
show();
document.body.dataset.ready = "true";
"""
PRESS = ["xdotool", "key", "--delay", "100", "ctrl+alt+k", "ctrl+j", "k", "ctrl+alt+k"]
"""Keys pressed on the display as a person would (XTEST), from another client."""


def _app(folder: Path, hotkeys: str) -> Path:
    folder.mkdir()
    (folder / "index.html").write_text('<!doctype html><html><head><meta charset="utf-8">'
                                       '<script type="module" src="app.js"></script></head>'
                                       '<body><pre id="out"></pre></body></html>')
    (folder / "app.js").write_text(SCRIPT)
    (folder / "shoal.toml").write_text('[app]\nname = "Keys"\nid = "test.shoal.keys"\n'
                                       f"[permissions]\nhotkeys = {hotkeys}\n")
    return folder


def test_declared_hotkeys_reach_the_page(tmp_path: Path, display: str,
                                         browser: Browser) -> None:
    env = {**os.environ, "DISPLAY": display, "SHOAL_NO_LAN": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "shoal.cli.main", "run", str(_app(tmp_path / "app",
                                                                   '["ctrl+alt+k"]')),
         "--browser", "--json", "--data-dir", str(tmp_path / "data")],
        stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert process.stdout is not None
        ready = json.loads(process.stdout.readline())
        page = browser.new_page()
        page.goto(ready["url"])
        page.wait_for_selector("body[data-ready=true]", state="attached", timeout=20000)
        seen = json.loads(page.text_content("#out") or "{}")
        assert seen["info"] == {"hotkeys": ["ctrl+alt+k"], "available": True, "reason": None}
        subprocess.run(PRESS, env=env, check=True, timeout=30)
        deadline = time.monotonic() + 10
        while seen["declared"] < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
            seen = json.loads(page.text_content("#out") or "{}")
        time.sleep(0.3)
        seen = json.loads(page.text_content("#out") or "{}")
        assert (seen["declared"], seen["undeclared"]) == (2, 0)
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_a_malformed_hotkey_is_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "shoal.cli.main", "run", "--browser",
         str(_app(tmp_path / "app", '["ctrl+alt"]'))], capture_output=True, text=True,
        timeout=30)
    assert result.returncode == 2 and "permissions.hotkeys[0]" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_hotkey_that_typing_presses_is_refused() -> None:
    """An app that declared every shift+letter would hear what the user types in any
    window (a password's capitals): a combination needs ctrl, alt or super."""
    from shoal.runtime.hotkeys import parse_combo

    typing = [f"shift+{c}" for c in "abcdefghijklmnopqrstuvwxyz0123456789"]
    typing += ["shift+space", "shift+enter", "h", "space"]
    assert [combo for combo in typing if parse_combo(combo) is not None] == []
    for combo in ("ctrl+h", "alt+shift+h", "super+space", "ctrl+shift+f5"):
        assert parse_combo(combo) is not None, combo
