"""``shoal check``: what an app's policy will refuse, found in its files without running
it, one line each with its fix; ``shoal build`` stops on it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SHOAL = [sys.executable, "-m", "shoal.cli.main"]
TOML = '[app]\nname = "Checked"\nid = "org.example.checked"\n'
PAGE = """<!doctype html>
<title>checked</title>
<link rel="stylesheet" href="https://cdn.example.com/site.css">
<script src="main.js"></script>
<script>document.title = "inline, in the page: allowed";</script>
<button onclick="go()">go</button>
<a href="javascript:go()">go</a>
<img src="https://images.example.org/a.png">
<img src="logo.png" style="width: 10px">
"""
SCRIPT = """const data = JSON.parse("{}");
const sum = eval("1 + 1");
const make = new Function("return 1");
fetch("https://api.example.com/items");
fetch("data.json");
const socket = new WebSocket("wss://live.example.com/feed");
"""
CSS = "@import url(https://fonts.example.net/font.css);\nbody { background: url(bg.png) }\n"


def _shoal(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SHOAL, *map(str, args)], capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL)


def _app(folder: Path, toml: str = TOML) -> Path:
    folder.mkdir()
    (folder / "shoal.toml").write_text(toml)
    (folder / "index.html").write_text(PAGE)
    (folder / "main.js").write_text(SCRIPT)
    (folder / "style.css").write_text(CSS)
    return folder


def test_check_lists_each_refusal_with_its_line_and_fix(tmp_path: Path) -> None:
    result = _shoal("check", _app(tmp_path / "app"), "--json")
    assert result.returncode == 1, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    found = [(e["file"], e["line"]) for e in events if e["event"] == "finding"]
    assert found == [("index.html", 3), ("index.html", 6), ("index.html", 7),
                     ("index.html", 8), ("main.js", 2), ("main.js", 3), ("main.js", 4),
                     ("main.js", 6), ("style.css", 1)]
    fixes = {(e["file"], e["line"]): e["fix"] for e in events if e["event"] == "finding"}
    assert fixes[("index.html", 3)] == \
        'to allow it add to shoal.toml: [csp] style-src = ["https://cdn.example.com"]'
    assert "addEventListener" in fixes[("index.html", 6)]
    assert "javascript: URLs never run" in fixes[("index.html", 7)]
    assert "JSON.parse" in fixes[("main.js", 2)]
    assert fixes[("main.js", 6)] == \
        'to allow it add to shoal.toml: [csp] connect-src = ["wss://live.example.com"]'
    assert events[-1] == {"event": "checked", "findings": 9}
    # As a person reads it: one line each.
    plain = _shoal("check", tmp_path / "app")
    assert plain.returncode == 1
    assert plain.stdout.splitlines()[0] == (
        'index.html:3: <link href="https://cdn.example.com/site.css"> (style-src); to allow '
        'it add to shoal.toml: [csp] style-src = ["https://cdn.example.com"]')


def test_the_lines_check_suggests_clear_what_they_allow(tmp_path: Path) -> None:
    allowed = TOML + ('[csp]\n'
                      'style-src = ["https://cdn.example.com", "https://fonts.example.net"]\n'
                      'img-src = ["https://images.example.org"]\n'
                      'connect-src = ["https://api.example.com", "wss://live.example.com"]\n')
    result = _shoal("check", _app(tmp_path / "app", allowed), "--json")
    left = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(e["file"], e["line"]) for e in left if e["event"] == "finding"] == [
        ("index.html", 6), ("index.html", 7), ("main.js", 2), ("main.js", 3)]


def test_a_clean_app_passes_and_build_stops_on_findings_unless_told(tmp_path: Path) -> None:
    clean = tmp_path / "clean"
    assert _shoal("init", clean).returncode == 0
    result = _shoal("check", clean)
    assert result.returncode == 0 and result.stdout == "nothing the policy refuses\n"
    app = _app(tmp_path / "app")
    key = tmp_path / "publisher.key"
    stopped = _shoal("build", app, "--out", tmp_path, "--identity", key)
    assert stopped.returncode != 0
    assert stopped.stderr.count("\n") == 1 and "--no-check" in stopped.stderr
    assert "main.js:2: eval(" in stopped.stdout
    assert not list(tmp_path.glob("*.shoal"))
    built = _shoal("build", app, "--out", tmp_path, "--identity", key, "--no-check")
    assert built.returncode == 0, built.stderr
    assert list(tmp_path.glob("*.shoal"))
