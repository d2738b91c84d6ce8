"""The page's dns, process and child_process modules in Chromium: what an app declared
works, everything else is refused, and process.exit ends the app with its code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><script type="module" src="app.js"></script></head>
<body><pre id="out"></pre><button id="quit">quit</button></body></html>
"""

SCRIPT = """import { dns, process, child_process } from "shoal:api";

async function attempt(what) {
  try { return { ok: await what() }; } catch (error) { return { code: error.code }; }
}

const out = {};
out.lookup = await attempt(() => dns.lookup("localhost", { family: 4 }));
out.resolve = await attempt(() => dns.resolve("localhost"));
out.info = await attempt(() => process.info());
out.spawn = await attempt(async () => {
  const child = await child_process.spawn("cat");
  let text = "";
  child.on("stdout", (data) => { text += new TextDecoder().decode(data); });
  await child.write("through cat, ");
  await child.write(new TextEncoder().encode("and bytes too"));
  await child.end();
  return { exit: await child.exited, text };
});
out.exec = await attempt(() => child_process.exec("echo", ["a", "b; touch pwned"]));
out.shell = await attempt(() => child_process.exec("sh", ["-c", "id"]));
out.outside = await attempt(() => child_process.exec("echo", [], { cwd: "../.." }));
out.kill = await attempt(async () => {
  const sleeper = await child_process.spawn("sleep", ["30"]);
  await sleeper.kill();
  return await sleeper.exited;
});
document.querySelector("#out").textContent = JSON.stringify(out);
document.querySelector("#quit").onclick = () => process.exit(3);
document.body.dataset.ready = "true";
"""

GRANTS = """dns = true
env = ["SHOAL_VISIBLE"]
commands = ["cat", "echo", "sleep"]
"""


def _app(folder: Path, permissions: str) -> Path:
    folder.mkdir()
    (folder / "index.html").write_text(PAGE)
    (folder / "app.js").write_text(SCRIPT)
    (folder / "shoal.toml").write_text(
        f'[app]\nname = "procs"\nid = "org.example.procs"\n\n[permissions]\n{permissions}')
    return folder


def _open(folder: Path, data: Path, browser: Browser) -> tuple[subprocess.Popen, dict, object]:
    process = subprocess.Popen(
        [sys.executable, "-m", "shoal.cli.main", "run", "--browser", "--json", str(folder),
         "--data-dir", str(data), "--", "alpha", "beta gamma"],
        stdout=subprocess.PIPE, text=True,
        env={**os.environ, "SHOAL_VISIBLE": "yes", "SHOAL_HIDDEN": "no"})
    assert process.stdout is not None
    ready = json.loads(process.stdout.readline())
    page = browser.new_page()
    page.goto(ready["url"])
    page.wait_for_selector("body[data-ready=true]", state="attached", timeout=20000)
    return process, json.loads(page.text_content("#out") or "{}"), page


def test_declared_dns_process_and_programs_work(tmp_path: Path, browser: Browser) -> None:
    data = tmp_path / "data"
    data.mkdir()
    process, out, page = _open(_app(tmp_path / "app", GRANTS), data, browser)
    try:
        assert out["lookup"]["ok"] == {"address": "127.0.0.1", "family": 4}
        assert "127.0.0.1" in out["resolve"]["ok"]
        info = out["info"]["ok"]
        assert info["argv"] == ["alpha", "beta gamma"]
        assert info["env"] == {"SHOAL_VISIBLE": "yes"}  # only what shoal.toml names
        assert info["platform"] == "linux" and info["pid"] > 0
        assert out["spawn"]["ok"] == {"exit": {"code": 0, "signal": None},
                                      "text": "through cat, and bytes too"}
        assert out["exec"]["ok"] == {"code": 0, "signal": None, "stdout": "a b; touch pwned\n",
                                     "stderr": ""}
        assert not (data / "pwned").exists()  # arguments never meet a shell
        assert out["shell"] == {"code": "EPERM"}
        assert out["outside"] == {"code": "EINVAL"}
        assert out["kill"]["ok"] == {"code": None, "signal": "SIGTERM"}
        page.click("#quit")  # type: ignore[attr-defined]
        assert process.wait(timeout=15) == 3
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=10)


def test_undeclared_modules_are_refused(tmp_path: Path, browser: Browser) -> None:
    data = tmp_path / "data"
    data.mkdir()
    process, out, _page = _open(_app(tmp_path / "app", ""), data, browser)
    try:
        assert out["lookup"] == out["resolve"] == {"code": "EPERM"}
        assert out["info"]["ok"]["env"] == {}
        for name in ("spawn", "exec", "shell", "kill"):
            assert out[name] == {"code": "EPERM"}, name
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.mark.parametrize(("line", "error"), [
    ('commands = ["../bin/sh"]', "permissions.commands[0]"),
    ('env = ["A B"]', "permissions.env[0]"),
    ("dns = 1", "permissions.dns"),
])
def test_bad_grants_are_one_line(tmp_path: Path, line: str, error: str) -> None:
    folder = _app(tmp_path / "app", line + "\n")
    result = subprocess.run([sys.executable, "-m", "shoal.cli.main", "run", "--browser",
                             str(folder)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and error in result.stderr
