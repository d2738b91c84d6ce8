"""shoal build --standalone: the blank template bundled with its own Python, Shoal and
webview (QtWebEngine inside, or the system's WebKitGTK), run where neither Python nor
Shoal is on hand: its page works through the bridge in Chromium and in its own window on
a virtual display."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from window_helpers import wait_for_file

if TYPE_CHECKING:
    from playwright.sync_api import Browser


@pytest.fixture(scope="module", params=["qt", "gtk"])
def bundle(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> dict:
    root = tmp_path_factory.mktemp("standalone")
    shoal = [sys.executable, "-m", "shoal.cli.main"]
    subprocess.run([*shoal, "init", str(root / "hello")], check=True, capture_output=True)
    built = subprocess.run([*shoal, "build", str(root / "hello"), "--standalone", "--out",
                            str(root / "dist"), "--gui", request.param, "--json"],
                           capture_output=True, text=True, timeout=900)
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


def test_the_bundle_opens_its_window_and_its_page_reaches_the_bridge(
        bundle: dict, tmp_path: Path) -> None:
    env = {**bundle["env"], "QTWEBENGINE_DISABLE_SANDBOX": "1"}
    data = tmp_path / "data"
    process = subprocess.Popen(["xvfb-run", "--auto-servernum", str(bundle["unpacked"]),
                                "--json", "--data-dir", str(data)], stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True, env=env,
                               start_new_session=True)
    try:
        assert process.stdout is not None
        line = json.loads(process.stdout.readline())
        assert line == {"event": "ready", "mode": "window", "ms": line["ms"]}
        # The page called app.py (bundled Python), then wrote through the bridge.
        assert wait_for_file(data / "visits.txt") == "1"
    finally:
        os.killpg(process.pid, 15)
        process.wait(timeout=20)


def test_a_webkitgtk_bundle_is_small_and_says_where_its_bytes_go(bundle: dict) -> None:
    sizes = {"qt": (600 << 20, 250 << 20), "gtk": (40 << 20, 15_000_000)}[bundle["gui"]]
    assert bundle["folder_bytes"] < sizes[0] and bundle["archive_bytes"] <= sizes[1]
    # The breakdown accounts for every byte; the twenty largest files come first.
    assert sum(bundle["parts"].values()) == bundle["folder_bytes"]
    largest = [file["bytes"] for file in bundle["largest"]]
    assert len(largest) == 20 and largest == sorted(largest, reverse=True)
    folder = Path(bundle["folder"])
    assert all((folder / file["path"]).stat().st_size == file["bytes"]
               for file in bundle["largest"])
    if bundle["gui"] == "gtk":  # the system's GTK stack, not copies of it
        internal = folder / "_internal"
        assert not (internal / "gio_modules").exists()
        assert not [*internal.glob("libssl*"), *internal.glob("librsvg*"),
                    *internal.glob("libgtk*"), *internal.glob("PySide6")]
