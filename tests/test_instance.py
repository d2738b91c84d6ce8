"""One running copy per app and data folder: a second launch hands its deep link and
arguments to the first and exits; deep links are registered by shoal install."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser

SHOAL = [sys.executable, "-m", "shoal.cli.main"]
SCRIPT = """import { app } from "shoal:api";
const seen = { first: await app.launch(), later: [] };
const show = () => { document.querySelector("#out").textContent = JSON.stringify(seen); };
app.on("open", (launch) => { seen.later.push(launch); show(); });
show();
document.body.dataset.ready = "true";
"""


def _app(tmp_path: Path, scheme: str | None = "notes") -> Path:
    folder = tmp_path / "app"
    folder.mkdir()
    (folder / "index.html").write_text('<!doctype html><html><head><meta charset="utf-8">'
                                       '<script type="module" src="app.js"></script></head>'
                                       '<body><pre id="out"></pre></body></html>')
    (folder / "app.js").write_text(SCRIPT)
    line = f'scheme = "{scheme}"\n' if scheme else ""
    (folder / "shoal.toml").write_text(
        f'[app]\nname = "Notes"\nid = "org.example.notes"\n{line}')
    return folder


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "SHOAL_NO_LAN": "1", "XDG_RUNTIME_DIR": str(tmp_path / "run"),
            "XDG_DATA_HOME": str(tmp_path / "data"), "XDG_STATE_HOME": str(tmp_path / "state"),
            "XDG_CONFIG_HOME": str(tmp_path / "config")}


def _start(folder: Path, env: dict[str, str], *args: str) -> tuple[subprocess.Popen, dict]:
    process = subprocess.Popen([*SHOAL, "run", str(folder), "--browser", "--json", *args],
                               stdout=subprocess.PIPE, text=True, env=env)
    assert process.stdout is not None
    event = json.loads(process.stdout.readline())
    while event["event"] == "notice":
        event = json.loads(process.stdout.readline())
    return process, event


def test_a_second_launch_hands_its_link_to_the_first(tmp_path: Path, env: dict[str, str],
                                                      browser: Browser) -> None:
    folder = _app(tmp_path)
    first, ready = _start(folder, env, "--url", "notes://first", "--", "a")
    try:
        assert ready["event"] == "ready"
        page = browser.new_page()
        page.goto(ready["url"])
        page.wait_for_selector("body[data-ready=true]", state="attached", timeout=20000)
        seen = json.loads(page.text_content("#out") or "{}")
        assert seen["first"] == {"url": "notes://first", "argv": ["a"]}
        started = time.monotonic()
        second = subprocess.run(
            [*SHOAL, "run", str(folder), "--browser", "--json", "--url", "notes://second/x",
             "--", "b"], capture_output=True, text=True, env=env, timeout=30)
        assert second.returncode == 0, second.stderr
        handed = json.loads(second.stdout)
        assert handed["event"] == "handed-over" and handed["link"] == ready["url"]
        assert time.monotonic() - started < 10
        page.wait_for_function("document.querySelector('#out').textContent.includes('second')")
        seen = json.loads(page.text_content("#out") or "{}")
        assert seen["later"] == [{"url": "notes://second/x", "argv": ["b"]}]
        # A link of another scheme is refused before anything is handed over.
        wrong = subprocess.run([*SHOAL, "run", str(folder), "--url", "https://example.org"],
                               capture_output=True, text=True, env=env, timeout=30)
        assert wrong.returncode == 2 and "not a notes: link" in wrong.stderr
        # Another data folder is another copy, which starts on its own.
        other, other_ready = _start(folder, env, "--data-dir", str(tmp_path / "other"))
        assert other_ready["event"] == "ready"
        other.terminate()
        other.wait(timeout=10)
    finally:
        first.terminate()
        first.wait(timeout=10)


def test_a_browser_launch_again_prints_the_link_and_localhost_reaches_the_app(
        tmp_path: Path, env: dict[str, str], browser: Browser) -> None:
    import urllib.error
    import urllib.request

    folder = _app(tmp_path)
    first, ready = _start(folder, env)
    try:
        again = subprocess.run([*SHOAL, "run", str(folder), "--browser"], capture_output=True,
                               text=True, env=env, timeout=30)
        assert again.returncode == 0, again.stderr
        assert again.stdout.strip().endswith(f"open {ready['url']} in a browser")
        origin, _, fragment = ready["url"].partition("/#")
        port = origin.rsplit(":", 1)[1]
        assert re.fullmatch(r"http://notes-[a-z2-7]{10}\.localhost:\d+", origin), origin

        class Keep(urllib.request.HTTPRedirectHandler):
            def redirect_request(self, *args: object) -> None:
                return None

        for other in ("localhost", "127.0.0.1"):  # the same server by another name
            with pytest.raises(urllib.error.HTTPError) as answer:
                urllib.request.build_opener(Keep).open(f"http://{other}:{port}/app.js?v=1")
            assert answer.value.code == 307
            assert answer.value.headers["Location"] == f"{origin}/app.js?v=1"
        by_name = f"http://localhost:{port}/#{fragment}"
        page = browser.new_page()
        page.goto(by_name)
        page.wait_for_selector("body[data-ready=true]", state="attached", timeout=20000)
        assert page.url.startswith(origin)
    finally:
        first.terminate()
        first.wait(timeout=10)


def test_a_copy_that_died_does_not_block_the_next(tmp_path: Path, env: dict[str, str]) -> None:
    folder = _app(tmp_path)
    first, ready = _start(folder, env)
    assert ready["event"] == "ready"
    first.send_signal(signal.SIGKILL)  # leaves its socket behind
    first.wait(timeout=10)
    assert list((tmp_path / "run" / "shoal").glob("*.sock"))
    again, ready = _start(folder, env)
    try:
        assert ready["event"] == "ready"
    finally:
        again.terminate()
        again.wait(timeout=10)


def test_install_registers_the_apps_links(tmp_path: Path, env: dict[str, str]) -> None:
    folder = _app(tmp_path)
    built = subprocess.run([*SHOAL, "build", str(folder), "--identity", str(tmp_path / "k"),
                            "--json"], capture_output=True, text=True, env=env, timeout=30)
    archive = json.loads(built.stdout)["path"]
    installed = subprocess.run([*SHOAL, "install", archive, "--yes", "--json"],
                               capture_output=True, text=True, env=env, timeout=30)
    entry = Path(json.loads(installed.stdout)["desktop_entry"])
    text = entry.read_text()
    assert "MimeType=x-scheme-handler/notes;" in text and text.count(" --url %u") == 1
    handlers = (tmp_path / "config" / "mimeapps.list").read_text()
    assert f"x-scheme-handler/notes={entry.name}" in handlers.splitlines()
    assert subprocess.run([*SHOAL, "uninstall", "org.example.notes"], env=env,
                          capture_output=True, timeout=30).returncode == 0
    assert "x-scheme-handler/notes" not in (tmp_path / "config" / "mimeapps.list").read_text()


@pytest.mark.parametrize(("scheme", "why"), [
    ("http", "belongs to the web"), ("No Spaces", "must be a URL scheme"),
    # links meant for the system or other programs: a login callback, a call, a torrent
    *((taken, "the system or other programs")
      for taken in ("ssh", "tel", "sms", "magnet", "git", "mailto", "file", "https"))])
def test_a_bad_scheme_is_one_line(tmp_path: Path, env: dict[str, str], scheme: str,
                                  why: str) -> None:
    folder = _app(tmp_path, scheme)
    result = subprocess.run([*SHOAL, "run", str(folder), "--browser"], capture_output=True,
                            text=True, env=env, timeout=30)
    assert result.returncode == 2 and "app.scheme" in result.stderr and why in result.stderr


def test_a_link_for_an_app_without_a_scheme_is_refused(tmp_path: Path,
                                                       env: dict[str, str]) -> None:
    folder = _app(tmp_path, None)
    result = subprocess.run([*SHOAL, "run", str(folder), "--url", "notes://x"],
                            capture_output=True, text=True, env=env, timeout=30)
    assert result.returncode == 2 and "declares no deep-link scheme" in result.stderr


def _install(folder: Path, env: dict[str, str], key: Path, *args: str,
             ) -> subprocess.CompletedProcess[str]:
    built = subprocess.run([*SHOAL, "build", str(folder), "--identity", str(key), "--json",
                            "--out", str(folder.parent)], capture_output=True, text=True,
                           env=env, timeout=30)
    assert built.returncode == 0, built.stderr
    return subprocess.run([*SHOAL, "install", json.loads(built.stdout)["path"], "--json",
                           *args], capture_output=True, text=True, env=env, timeout=30,
                          stdin=subprocess.DEVNULL)


def test_an_app_does_not_take_the_links_of_another_program(tmp_path: Path,
                                                           env: dict[str, str]) -> None:
    """notes: links belong to another program already: installing an app with that
    scheme is refused, and the user's handler stays."""
    handlers = tmp_path / "config" / "mimeapps.list"
    handlers.parent.mkdir()
    mine = "[Default Applications]\nx-scheme-handler/notes=othernotes.desktop\n"
    handlers.write_text(mine)
    result = _install(_app(tmp_path), env, tmp_path / "k", "--yes")
    assert result.returncode == 1 and "othernotes.desktop" in result.stdout, result.stdout
    assert json.loads(result.stdout)["code"] == "EEXIST"
    assert handlers.read_text() == mine
    assert not list((tmp_path / "data").rglob("*.desktop"))


def test_an_update_that_adds_a_scheme_is_asked_about(tmp_path: Path,
                                                     env: dict[str, str]) -> None:
    folder = _app(tmp_path, None)
    assert _install(folder, env, tmp_path / "k", "--yes").returncode == 0
    toml = folder / "shoal.toml"
    toml.write_text(toml.read_text().replace('name = "Notes"', 'name = "Notes"\n'
                                             'version = "0.2.0"\nscheme = "notes"'))
    result = _install(folder, env, tmp_path / "k")
    assert result.returncode == 1
    asked = json.loads(result.stdout.splitlines()[0])
    assert asked["event"] == "asks"
    assert "open notes: links from anywhere on this computer (it becomes their handler)" \
        in asked["capabilities"]
    assert not (tmp_path / "config" / "mimeapps.list").exists()


def test_another_user_cannot_stop_apps_starting(tmp_path: Path, env: dict[str, str]) -> None:
    """With no XDG_RUNTIME_DIR, user nobody makes the folder a temp-dir fallback would
    use before the app does: the app starts all the same, its socket in a folder of its
    user's own."""
    temp = tmp_path / "tmp"
    squatted = temp / f"shoal-{os.getuid()}"
    squatted.mkdir(parents=True)
    os.chown(squatted, 65534, 65534)
    os.chmod(temp, 0o1777)
    cache = Path(tempfile.mkdtemp(prefix="c"))  # a short path, as a home's cache dir is
    env = {**env, "TMPDIR": str(temp), "XDG_CACHE_HOME": str(cache)}
    del env["XDG_RUNTIME_DIR"]
    process, ready = _start(_app(tmp_path), env)
    try:
        assert ready["event"] == "ready", ready
        sockets = list(cache.rglob("*.sock"))
        assert len(sockets) == 1
        folder = sockets[0].parent.lstat()
        assert folder.st_uid == os.getuid() and folder.st_mode & 0o777 == 0o700
    finally:
        process.terminate()
        process.wait(timeout=10)
        shutil.rmtree(cache)
    assert list(squatted.iterdir()) == []
