"""The app wall attacked from pages in a real browser (Debian's chromium through
Playwright): service workers, an origin another app used, and a foreign page that sends
the app's tab a launch fragment of its own."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from playwright.sync_api import Browser

from shoal.net import bind_listener


def _app(folder: Path, app_id: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "shoal.toml").write_text(f'[app]\nname = "{app_id}"\nid = "test.shoal.{app_id}"\n')
    (folder / "index.html").write_text(f"<!doctype html><title>{app_id}</title><p>{app_id}")
    (folder / "sw.js").write_text(
        "self.addEventListener('fetch', (event) => event.respondWith(new Response("
        "'<p>served by a worker', {headers: {'Content-Type': 'text/html'}})));\n")
    return folder


@contextlib.contextmanager
def _served(folder: Path, data: Path, port: int = 0) -> Iterator[str]:
    """``shoal run --browser`` of ``folder``; yields the launch URL."""
    process = subprocess.Popen(
        [sys.executable, "-m", "shoal.cli.main", "run", "--browser", "--json", str(folder),
         "--data-dir", str(data), "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    try:
        assert process.stdout is not None
        ready = json.loads(process.stdout.readline() or "{}")
        assert ready.get("event") == "ready", process.stderr.read() if process.stderr else ""
        yield ready["url"]
    finally:
        process.terminate()
        process.wait(timeout=10)


def _free_port() -> int:
    listener = bind_listener()
    port = listener.getsockname()[1]
    listener.close()
    return port


def test_a_service_worker_cannot_be_registered(tmp_path: Path, browser: Browser) -> None:
    context = browser.new_context()
    with _served(_app(tmp_path / "app", "worker"), tmp_path / "data") as url:
        page = context.new_page()
        page.goto(url)
        outcome = page.evaluate("""() => navigator.serviceWorker.register("/sw.js")
            .then(() => "registered", (error) => error.name)""")
        assert outcome != "registered"
        page.reload()
        assert "served by a worker" not in page.content()
        assert page.evaluate("navigator.serviceWorker.getRegistrations()") == []
    context.close()


def test_an_origin_is_never_handed_from_one_app_to_another(tmp_path: Path,
                                                           browser: Browser) -> None:
    """Two apps launched in turn on one port, in one browser: the second finds nothing
    of what the first left in the origin's storage; the same app relaunched keeps it."""
    port = _free_port()
    context = browser.new_context()
    first, second = _app(tmp_path / "first", "first"), _app(tmp_path / "second", "second")
    read = "() => localStorage.getItem('left') || ''"

    def visit(folder: Path, script: str) -> str:
        with _served(folder, tmp_path / folder.name, port) as url:
            page = context.new_page()
            page.goto(url)
            value = page.evaluate(script)
            page.close()
            return value

    visit(first, "() => { localStorage.setItem('left', 'by the first app'); return ''; }")
    assert visit(first, read) == "by the first app"  # the same app keeps its storage
    assert visit(second, read) == ""  # another app finds it empty
    context.close()


def test_a_tab_left_open_cannot_read_what_the_next_app_on_its_port_stores(
        tmp_path: Path, browser: Browser) -> None:
    """App A's tab stays open while app B is served on the same port: A's script reads
    nothing B stores, and cannot fetch B's pages; each app has an origin of its own, the
    same at each launch."""
    port = _free_port()
    context = browser.new_context()
    first, second = _app(tmp_path / "first", "first"), _app(tmp_path / "second", "second")
    with _served(first, tmp_path / "first-data", port) as url:
        stale = context.new_page()
        stale.goto(url)
        first_origin = stale.evaluate("location.origin")
    with _served(second, tmp_path / "second-data", port) as url:
        page = context.new_page()
        page.goto(url)
        page.evaluate("() => localStorage.setItem('secret', 'of the second app')")
        assert stale.evaluate("() => localStorage.getItem('secret')") is None
        assert page.evaluate("location.origin") != first_origin
        fetched = stale.evaluate("""() => fetch("/").then((r) => r.text())
            .catch((error) => error.name)""")
        assert "second" not in fetched
    with _served(first, tmp_path / "first-data", port) as url:  # A again: the same origin
        stale.goto(url)
        assert stale.evaluate("location.origin") == first_origin
    context.close()


def test_a_foreign_fragment_cannot_replace_the_launch_secret(tmp_path: Path,
                                                             browser: Browser) -> None:
    context = browser.new_context()
    data = tmp_path / "data"
    call = """() => import("/_shoal/api.js")
        .then((api) => api.fs.dataDir()).catch((error) => error.code)"""
    with _served(_app(tmp_path / "app", "fragment"), data) as url:
        origin = url.split("/#", 1)[0]
        page = context.new_page()
        page.goto(url)
        assert page.evaluate(call) == str(data.resolve())
        # What a foreign page can do to the tab: send it to the app with its own fragment.
        page.goto(f"{origin}/?again#shoal=BOGUS")
        assert page.evaluate(call) == str(data.resolve())
        page.reload()  # and the secret the tab keeps is still the real one
        assert page.evaluate("() => sessionStorage.getItem('shoal.secret')") != "BOGUS"
        page.close()
    context.close()
