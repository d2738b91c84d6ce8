"""The app runtime end to end in a real browser: Debian's chromium driven by Playwright,
loading an app served by ``shoal run --browser``."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page

from webapp_checks import WEBAPP as APP
from webapp_checks import assert_page_results


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    data_dir = tmp_path_factory.mktemp("webapp-data")
    # "The system browser" is a script that notes the URLs it was asked to open.
    opened = data_dir.parent / "opened.txt"
    recorder = data_dir.parent / "browser.sh"
    recorder.write_text(f'#!/bin/sh\necho "$1" >> {opened}\n')
    recorder.chmod(0o755)
    process = subprocess.Popen(
        [sys.executable, "-m", "shoal.cli.main", "run", "--browser", "--json", str(APP),
         "--data-dir", str(data_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "BROWSER": str(recorder)},
    )
    try:
        assert process.stdout is not None
        ready = json.loads(process.stdout.readline())
        assert ready["event"] == "ready" and ready["mode"] == "browser"
        yield {"url": ready["url"], "data_dir": data_dir, "opened": opened}
    finally:
        process.terminate()
        process.wait(timeout=10)


def _results(browser: Browser, url: str) -> tuple[dict, str]:
    page = browser.new_page()
    try:
        page.goto(url)
        page.wait_for_selector("body[data-ready=true]", state="attached", timeout=20000)
        return json.loads(page.get_attribute("body", "data-results") or "{}"), page.url
    finally:
        page.close()


def test_page_uses_the_api_under_a_strict_policy(served: dict, browser: Browser) -> None:
    results, url_after = _results(browser, served["url"])
    assert "#shoal=" not in url_after  # the secret left the address bar
    assert_page_results(results, served["data_dir"], served["url"].split("/#", 1)[0])


def test_bridge_without_the_secret_is_refused_in_the_page(served: dict, browser: Browser) -> None:
    page = browser.new_page()
    try:
        page.goto(served["url"])
        page.wait_for_selector("body[data-ready=true]", state="attached", timeout=20000)
        outcome = page.evaluate("""() => new Promise((resolve) => {
            const ws = new WebSocket(`ws://${location.host}/_shoal/bridge`);
            ws.onopen = () => resolve("open");
            ws.onerror = () => resolve("refused");
        })""")
        assert outcome == "refused"
    finally:
        page.close()


class _Foreign(BaseHTTPRequestHandler):
    """A page on another origin that knows the bridge's address and even its secret."""

    bridge = ""

    def do_GET(self) -> None:
        body = (
            "<!doctype html><script>"
            f"const ws = new WebSocket({json.dumps(self.bridge)});"
            "ws.onopen = () => document.title = 'open';"
            "ws.onerror = () => document.title = 'refused';"
            "</script>"
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_a_foreign_page_cannot_use_the_bridge_even_with_the_secret(served: dict,
                                                                   browser: Browser) -> None:
    origin, _, secret = served["url"].partition("/#shoal=")
    _Foreign.bridge = origin.replace("http://", "ws://") + f"/_shoal/bridge?secret={secret}"
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Foreign)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    page = browser.new_page()
    try:
        page.goto(f"http://127.0.0.1:{server.server_address[1]}/")
        page.wait_for_function("document.title !== ''", timeout=10000)
        assert page.title() == "refused"
    finally:
        page.close()
        server.shutdown()


def test_links_out_of_the_app_open_in_the_system_browser(served: dict, browser: Browser) -> None:
    page = browser.new_page()
    try:
        page.goto(served["url"])
        page.wait_for_selector("body[data-ready=true]", state="attached", timeout=20000)
        app_url = page.url
        page.click("#away")
        deadline = time.monotonic() + 10
        while not served["opened"].exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert served["opened"].read_text().split() == ["https://example.org/elsewhere"]
        assert page.url == app_url  # the page stayed on the app
    finally:
        page.close()


def test_dev_reloads_the_page_when_a_file_changes(tmp_path: Path, browser: Browser) -> None:
    app = tmp_path / "app"
    app.mkdir()
    for source in APP.iterdir():
        (app / source.name).write_bytes(source.read_bytes())
    process = subprocess.Popen(
        [sys.executable, "-m", "shoal.cli.main", "dev", "--browser", "--json", str(app),
         "--data-dir", str(tmp_path / "data")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    page = browser.new_page()
    try:
        assert process.stdout is not None
        ready = json.loads(process.stdout.readline())
        assert ready["dev"] is True
        page.goto(ready["url"])
        page.wait_for_selector("body[data-ready=true]", state="attached", timeout=20000)
        with page.expect_event("load", timeout=10000):
            (app / "index.html").write_text(
                (app / "index.html").read_text().replace("away</a>", "away</a><i>v2</i>"))
        page.wait_for_selector("i", state="attached", timeout=10000)
        assert page.text_content("i") == "v2"
        # The reloaded page reached the bridge again (its secret is in sessionStorage).
        page.wait_for_selector("body[data-ready=true]", state="attached", timeout=20000)
        results = json.loads(page.get_attribute("body", "data-results") or "{}")
        assert results["invokeAdd"] == {"ok": 5}
    finally:
        page.close()
        process.terminate()
        process.wait(timeout=10)


@contextlib.contextmanager
def _two_apps(tmp_path: Path, browser: Browser, template: str) -> Iterator[list[Page]]:
    """Two copies of ``template`` (alice's and bob's) through an introducer on loopback,
    each served for the browser: their pages, loaded."""
    shoal = [sys.executable, "-m", "shoal.cli.main"]
    env = {**os.environ, "SHOAL_NO_LAN": "1"}
    introducer = subprocess.Popen(
        [*shoal, "introducer", "--listen", "127.0.0.1:0", "--json", "--no-lan",
         "--identity", str(tmp_path / "introducer.key")],
        stdout=subprocess.PIPE, text=True, env=env,
    )
    processes = [introducer]
    pages: list[Page] = []
    try:
        assert introducer.stdout is not None
        address = json.loads(introducer.stdout.readline())["listen"]
        urls = []
        for name in ("alice", "bob"):
            folder = tmp_path / name
            subprocess.run([*shoal, "init", str(folder), "--template", template], check=True,
                           capture_output=True)
            config = folder / "shoal.toml"
            config.write_text(config.read_text()
                              .replace("lan = true", 'lan = false\nlisten = "127.0.0.1:0"'))
            app = subprocess.Popen(
                [*shoal, "run", "--browser", "--json", str(folder), "--introducer", address,
                 "--data-dir", str(tmp_path / f"{name}-data")],
                stdout=subprocess.PIPE, text=True, env=env,
            )
            processes.append(app)
            assert app.stdout is not None
            ready = json.loads(app.stdout.readline())  # no hint first: it has an introducer
            assert ready["event"] == "ready", ready
            urls.append(ready["url"])
        for url in urls:
            page = browser.new_page()
            page.goto(url)
            page.wait_for_selector("body[data-ready=true]", state="attached", timeout=20000)
            pages.append(page)
        yield pages
    finally:
        for page in pages:
            page.close()
        for process in processes:
            process.terminate()
            process.wait(timeout=10)


def _invite_from(page: Page) -> str:
    page.click("#show-invite")
    page.wait_for_selector("#invite-box:not([hidden])", timeout=10000)
    invite = page.input_value("#invite-out")
    assert invite.startswith("shoal-group:")
    return invite


def test_two_chat_apps_share_a_group(tmp_path: Path, browser: Browser) -> None:
    """The chat template, twice: one creates a group and posts, the other joins with the
    invite pasted, sees that post in the history with who wrote it, and answers live
    (the JS groups API)."""
    with _two_apps(tmp_path, browser, "chat") as (alice, bob):
        alice.fill("#group-name", "picnic")
        alice.click("#create button")
        alice.wait_for_selector("#text:not([disabled])", timeout=20000)
        alice.fill("#text", "bring plates")
        alice.click("#compose button")
        alice.wait_for_selector("#log li", timeout=20000)
        assert (alice.text_content("#log li") or "").endswith(" me: bring plates")
        bob.fill("#invite-in", _invite_from(alice))
        bob.click("#join button")
        # What was posted before bob joined, with who wrote it.
        bob.wait_for_selector("#log li", timeout=30000)
        line = bob.text_content("#log li") or ""
        assert line.endswith(": bring plates") and " me: " not in line, line
        assert re.fullmatch("[0-9a-f]{64}", bob.get_attribute("#log li", "title") or "")
        bob.fill("#text", "and cups")
        bob.click("#compose button")
        alice.wait_for_selector("#log li:nth-child(2)", timeout=30000)
        assert (alice.text_content("#log li:nth-child(2)") or "").endswith(": and cups")


def _notes_become(page: Page, wanted: str, timeout: float = 30) -> None:
    """Wait until the page's notes read ``wanted`` (polled: the policy forbids the eval
    that wait_for_function needs)."""
    deadline = time.monotonic() + timeout
    while (shown := page.input_value("#notes")) != wanted:
        assert time.monotonic() < deadline, f"the notes read {shown!r}, not {wanted!r}"
        page.wait_for_timeout(100)


def test_two_notes_apps_edit_one_text(tmp_path: Path, browser: Browser) -> None:
    """The notes template, twice: what is typed in one window shows in the other, both
    ways, as one group document."""
    with _two_apps(tmp_path, browser, "notes") as (alice, bob):
        alice.fill("#group-name", "plans")
        alice.click("#create button")
        alice.wait_for_selector("#notes:not([disabled])", timeout=20000)
        alice.type("#notes", "bread")
        bob.fill("#invite-in", _invite_from(alice))
        bob.click("#join button")
        _notes_become(bob, "bread")
        bob.click("#notes")
        bob.keyboard.press("End")
        bob.keyboard.type(", milk")
        _notes_become(alice, "bread, milk")


@pytest.mark.parametrize("template", ["blank", "chat", "notes"])
def test_a_template_loads_without_errors_and_says_how_to_open_it_without_its_link(
        tmp_path: Path, browser: Browser, template: str) -> None:
    shoal = [sys.executable, "-m", "shoal.cli.main"]
    folder = tmp_path / "app"
    subprocess.run([*shoal, "init", str(folder), "--template", template], check=True,
                   capture_output=True)
    process = subprocess.Popen(
        [*shoal, "run", "--browser", "--json", str(folder), "--data-dir", str(tmp_path / "d")],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "SHOAL_NO_LAN": "1"})
    context = browser.new_context()
    try:
        assert process.stdout is not None
        first = json.loads(process.stdout.readline())
        if template in ("chat", "notes"):  # a network app: no introducer, no LAN here
            assert first["event"] == "notice" and "--introducer" in first["reason"], first
            first = json.loads(process.stdout.readline())
        url = first["url"]
        page = context.new_page()
        failures: list[str] = []
        page.on("response", lambda r: failures.append(f"{r.status} {r.url}")
                if r.status >= 400 else None)
        page.on("console", lambda m: failures.append(m.text) if m.type == "error" else None)
        page.goto(url)
        page.wait_for_load_state("networkidle")
        assert failures == []
        # A bookmark of the app's address, without its launch link, in another tab.
        stranger = browser.new_page()
        stranger.goto(url.split("#", 1)[0])
        stranger.wait_for_selector("#shoal-no-launch", timeout=10000)
        assert "shoal run" in (stranger.text_content("#shoal-no-launch") or "")
        stranger.close()
    finally:
        context.close()
        process.terminate()
        process.wait(timeout=10)


def test_dev_shows_errors_keeps_watching_and_reloads_python(tmp_path: Path,
                                                            browser: Browser) -> None:
    """``shoal dev``: a syntax error in the page's script is shown over the page and in
    the terminal, and once fixed the page reloads and works; a new ``app.py`` answers
    the next call; a broken ``shoal.toml`` is reported and watching goes on."""
    import queue

    app = tmp_path / "app"
    app.mkdir()
    toml = '[app]\nname = "Dev"\nid = "test.shoal.dev"\n[permissions]\ninvoke = ["answer"]\n'
    (app / "shoal.toml").write_text(toml)
    (app / "index.html").write_text('<!doctype html><title>dev</title>'
                                    '<script type="module" src="app.js"></script><p>dev')
    script = ('import { invoke } from "shoal:api";\n'
              'document.body.dataset.answer = await invoke("answer");\n')
    (app / "app.js").write_text(script)
    python = "from shoal.runtime import expose\n\n@expose\ndef answer():\n    return {!r}\n"
    (app / "app.py").write_text(python.format("one"))
    process = subprocess.Popen(
        [sys.executable, "-m", "shoal.cli.main", "dev", "--browser", "--json", str(app),
         "--data-dir", str(tmp_path / "data")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[dict] = queue.Queue()
    assert process.stdout is not None
    threading.Thread(target=lambda: [lines.put(json.loads(line)) for line in process.stdout],
                     daemon=True).start()

    def next_dev_line(kind: str, holding: str = "") -> str:
        while True:
            event = lines.get(timeout=20)
            if event.get("event") == "dev" and event["kind"] == kind \
                    and holding in event["message"]:
                return event["message"]

    page = browser.new_page()
    try:
        ready = lines.get(timeout=20)
        page.goto(ready["url"])
        page.wait_for_selector("body[data-answer=one]", state="attached", timeout=20000)
        with page.expect_event("load", timeout=10000):
            (app / "app.js").write_text(script.replace("await invoke", "await invoke("))
        page.wait_for_selector("#shoal-dev-overlay", timeout=10000)
        assert "SyntaxError" in (page.text_content("#shoal-dev-overlay") or "")
        assert next_dev_line("error", "SyntaxError").startswith("page: ")
        with page.expect_event("load", timeout=10000):
            (app / "app.js").write_text(script)
        page.wait_for_selector("body[data-answer=one]", state="attached", timeout=20000)
        assert page.query_selector("#shoal-dev-overlay") is None
        with page.expect_event("load", timeout=10000):
            (app / "app.py").write_text(python.format("two"))
        page.wait_for_selector("body[data-answer=two]", state="attached", timeout=20000)
        assert next_dev_line("reload", "app.py") == "reloaded (app.py changed)"
        (app / "shoal.toml").write_text("[app\n")
        line = next_dev_line("error")
        assert line == f"{app / 'shoal.toml'}: not valid TOML: " + line.split("TOML: ", 1)[1]
        page.wait_for_selector("#shoal-dev-overlay", timeout=10000)
        shown = page.text_content("#shoal-dev-overlay") or ""
        assert "shoal.toml: not valid TOML" in shown and shown.count("shoal.toml") == 1
        (app / "shoal.toml").write_text(toml)
        (app / "app.py").write_text("def broken(:\n")
        line = next_dev_line("error", "app.py")
        assert line.startswith(f"{app / 'app.py'}: failed to load: SyntaxError")
        assert line.count("app.py:") == 1  # the file is named once
    finally:
        page.close()
        process.terminate()
        process.wait(timeout=10)
