"""shoal build --standalone: the blank template bundled with its own Python, Shoal and
webview, run where neither Python nor Shoal is on hand: its page works through the
bridge in Chromium, and its window opens on a virtual display."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("standalone")
    shoal = [sys.executable, "-m", "shoal.cli.main"]
    subprocess.run([*shoal, "init", str(root / "hello")], check=True, capture_output=True)
    built = subprocess.run([*shoal, "build", str(root / "hello"), "--standalone", "--out",
                            str(root / "dist"), "--json"], capture_output=True, text=True,
                           timeout=900)
    assert built.returncode == 0, built.stderr
    made = json.loads(built.stdout)
    # Unpacked from its archive into a clean folder, as a user would.
    clean = root / "elsewhere"
    with tarfile.open(made["archive"]) as archive:
        archive.extractall(clean, filter="tar")
    made["unpacked"] = clean / "hello" / "hello"
    # No Python, no Shoal: nothing from this environment but a PATH to system tools.
    made["env"] = {"PATH": "/usr/bin:/bin", "HOME": str(root / "home"), "SHOAL_NO_LAN": "1",
                   "XDG_RUNTIME_DIR": str(root / "run")}
    return made


def test_the_bundle_serves_its_page_and_bridge(bundle: dict, browser: Browser) -> None:
    assert bundle["archive_bytes"] < bundle["folder_bytes"]
    process = subprocess.Popen([str(bundle["unpacked"]), "--browser", "--json"],
                               stdout=subprocess.PIPE, text=True, env=bundle["env"],
                               cwd=bundle["env"]["HOME"] if os.path.isdir(bundle["env"]["HOME"])
                               else None)
    try:
        assert process.stdout is not None
        ready = json.loads(process.stdout.readline())
        assert ready["event"] == "ready", ready
        page = browser.new_page()
        page.goto(ready["url"])
        page.wait_for_selector("body[data-ready=true]", state="attached", timeout=30000)
        assert page.text_content("#greeting") == "Hello, world!"  # app.py, bundled Python
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_the_bundle_opens_its_window(bundle: dict) -> None:
    env = {**bundle["env"], "QTWEBENGINE_DISABLE_SANDBOX": "1"}
    process = subprocess.Popen(["xvfb-run", "--auto-servernum", str(bundle["unpacked"]),
                                "--json"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                               text=True, env=env, start_new_session=True)
    try:
        assert process.stdout is not None
        line = json.loads(process.stdout.readline())
        assert line == {"event": "ready", "mode": "window", "ms": line["ms"]}
    finally:
        os.killpg(process.pid, 15)
        process.wait(timeout=20)
