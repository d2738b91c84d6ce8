"""Web apps as their authors publish them on npm, run by Shoal with nothing added but a
``shoal.toml``: they work, and what the policy refuses is told once per kind with a fix.

The packages come from the npm registry on the first run and are kept in pytest's
cache folder (``.pytest_cache``), so later runs read them from disk.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page

SHOAL = [sys.executable, "-m", "shoal.cli.main"]
REVEAL = ("reveal.js", "5.2.1")
CREATE_VITE = "create-vite@9.3.0"
VITE_APP_TOML = '[app]\nname = "Vite app"\nid = "org.example.vite"\nroot = "dist"\n'


@pytest.fixture(scope="session")
def npm_cache(request: pytest.FixtureRequest) -> Path:
    return Path(request.config.cache.mkdir("npm-apps"))


def npm_package(cache: Path, name: str, version: str) -> Path:
    """The files of ``name@version`` as published (fetched once, then from ``cache``)."""
    target = cache / f"{name}-{version}"
    if (target / "package.json").exists():
        return target
    download = cache / "download"
    download.mkdir(exist_ok=True)
    packed = subprocess.run(["npm", "pack", f"{name}@{version}", "--json", "--silent",
                             "--pack-destination", str(download)],
                            capture_output=True, text=True, check=True, timeout=300)
    tarball = download / json.loads(packed.stdout)[0]["filename"]
    unpacking = cache / f".{name}-{version}.partial"
    shutil.rmtree(unpacking, ignore_errors=True)
    with tarfile.open(tarball) as archive:
        archive.extractall(unpacking, filter="data")
    (unpacking / "package").rename(target)
    shutil.rmtree(unpacking)
    return target


@pytest.fixture(scope="session")
def vite_app(npm_cache: Path) -> Path:
    """A create-vite react-ts project as its template makes it, installed and built (once;
    later runs find it in the cache), with a ``shoal.toml`` naming ``dist``."""
    project = npm_cache / f"vite-react-ts-{CREATE_VITE.split('@')[1]}"
    if not (project / ".built").exists():
        shutil.rmtree(project, ignore_errors=True)
        subprocess.run(["npm", "exec", "--yes", CREATE_VITE, "--", project.name, "--template",
                        "react-ts", "--no-interactive"], cwd=npm_cache, check=True,
                       capture_output=True, timeout=300)
        for step in (["npm", "install", "--no-audit", "--no-fund"], ["npm", "run", "build"]):
            subprocess.run(step, cwd=project, check=True, capture_output=True, timeout=600)
        (project / ".built").touch()
    (project / "shoal.toml").write_text(VITE_APP_TOML)
    return project


class Running:
    """``shoal run --browser --json`` (or ``dev``) on an app: its URL, and every event it
    printed, read as they come."""

    def __init__(self, command: str, app: Path, data_dir: Path, *options: str) -> None:
        self.process = subprocess.Popen(
            [*SHOAL, command, "--browser", "--json", str(app), "--data-dir", str(data_dir),
             *options],
            stdout=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
        assert self.process.stdout is not None
        ready = json.loads(self.process.stdout.readline())
        assert ready["event"] == "ready", ready
        self.url: str = ready["url"]
        self.events: list[dict] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.events.append(json.loads(line))

    def refusals(self) -> list[dict]:
        return [e for e in self.events if e["event"] == "refused"]

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)
        self._reader.join(timeout=5)


@pytest.fixture
def shoal_app(tmp_path: Path) -> Iterator[Callable[..., Running]]:
    """Starts ``shoal COMMAND --browser APP [OPTIONS]``; each is stopped after the test."""
    started: list[Running] = []

    def start(command: str, app: Path, *options: str) -> Running:
        started.append(Running(command, app, tmp_path / "data", *options))
        return started[-1]

    yield start
    for run in started:
        run.stop()


@contextlib.contextmanager
def opened(browser: Browser, url: str) -> Iterator[Page]:
    """A browser tab on ``url``, closed afterwards."""
    page = browser.new_page()
    try:
        page.goto(url)
        yield page
    finally:
        page.close()


def test_reveal_js_demo_shows_its_slides_and_moves_on_a_key_press(
        tmp_path: Path, npm_cache: Path, browser: Browser,
        shoal_app: Callable[..., Running]) -> None:
    """reveal.js's own demo.html starts from an inline script and styles its slides with
    style attributes: both run, as hashes of the page's own code."""
    app = tmp_path / "reveal"
    shutil.copytree(npm_package(npm_cache, *REVEAL), app)
    (app / "shoal.toml").write_text('[app]\nname = "Reveal demo"\nid = "org.example.reveal"\n'
                                    'entry = "demo.html"\n')
    run = shoal_app("run", app)
    with opened(browser, run.url) as page:
        page.wait_for_selector(".reveal.ready", state="attached", timeout=15000)
        shown = page.locator(".slides > section.present")
        assert "The HTML Presentation Framework" in (shown.text_content() or "")
        page.keyboard.press("ArrowRight")
        page.wait_for_url("**#/1", timeout=5000)
        assert "The HTML Presentation Framework" not in (shown.text_content() or "")
        # A style attribute of demo.html applies (an auto-animated box's size).
        box = page.locator('[data-id="box1"]').first
        assert box.evaluate("e => getComputedStyle(e).width") == "50px"
    refused = {(r["directive"], r["blocked"] if "://" not in r["blocked"]
                else r["blocked"].split("/")[2]) for r in run.refusals()}
    # Refused, and told: pictures and a video from the web (no [csp] line names their
    # host), demo.html's onclick attributes (never run), and the stylesheet the
    # highlight plugin writes at run time (added after load).
    assert refused == {("img-src", "static.slid.es"), ("media-src", "static.slid.es"),
                       ("script-src-attr", "inline"), ("style-src-elem", "inline")}
    fixes = {r["directive"]: r for r in run.refusals()}
    assert fixes["img-src"]["fix"] == \
        'to allow it add to shoal.toml: [csp] img-src = ["https://static.slid.es"]'
    assert fixes["style-src-elem"]["where"].startswith("plugin/highlight/highlight.js:")
    assert "addEventListener" in fixes["script-src-attr"]["fix"]


def test_shoal_dev_tells_each_kind_of_refusal_once_in_the_terminal_and_over_the_page(
        tmp_path: Path, browser: Browser, shoal_app: Callable[..., Running]) -> None:
    app = tmp_path / "refused"
    app.mkdir()
    (app / "shoal.toml").write_text('[app]\nname = "Refused"\nid = "org.example.refused"\n')
    (app / "index.html").write_text(
        '<!doctype html><title>r</title><script type="module" src="main.js"></script>\n')
    (app / "main.js").write_text(
        "for (const n of [1, 2, 3]) {\n"
        "  const s = document.createElement('script');\n"
        "  s.textContent = `globalThis.n = ${n}`;\n"
        "  document.head.append(s);\n"
        "}\n"
        "try { eval('1 + 1'); } catch {}\n"
        "fetch('https://api.example.com/items').catch(() => {});\n"
        "fetch('https://api.example.com/other').catch(() => {});\n")
    run = shoal_app("dev", app)
    with opened(browser, run.url) as page:
        overlay = page.locator("#shoal-dev-overlay")
        deadline = time.monotonic() + 20
        shown = ""
        # The page's overlay and the terminal's lines come by separate ways: wait for both.
        while (shown.count("refused by") < 3 or len(run.refusals()) < 3) and \
                time.monotonic() < deadline:
            time.sleep(0.1)
            shown = (overlay.text_content() or "") if overlay.count() else ""
    told = sorted((r["directive"], r["blocked"], r["where"]) for r in run.refusals())
    # The two fetches are one kind: whichever report the browser sent first is told.
    assert told[0] in {("connect-src", "https://api.example.com/items", "main.js:7"),
                       ("connect-src", "https://api.example.com/other", "main.js:8")}
    assert told[1:] == [("script-src", "eval", "main.js:6"),
                        ("script-src-elem", "inline", "main.js:4")]
    lines = {r["directive"]: r for r in run.refusals()}
    assert lines["connect-src"]["fix"] == \
        'to allow it add to shoal.toml: [csp] connect-src = ["https://api.example.com"]'
    assert lines["script-src-elem"]["sample"] == "globalThis.n = 1"
    assert "JSON.parse" in lines["script-src"]["fix"]
    assert "main.js:6: refused by script-src: eval '1 + 1'" in shown
    assert '[csp] connect-src = ["https://api.example.com"]' in shown


def test_a_vite_react_app_runs_built_from_its_dist_folder(
        vite_app: Path, browser: Browser, shoal_app: Callable[..., Running]) -> None:
    run = shoal_app("run", vite_app)
    with opened(browser, run.url) as page:
        page.get_by_role("button", name="Count is 0").click()
        page.get_by_role("button", name="Count is 1").wait_for(timeout=5000)
        # Its stylesheet applies (a build's CSS file, from dist/assets).
        assert page.locator("h1").evaluate("e => getComputedStyle(e).fontSize") != "32px"
    assert run.refusals() == []


def test_a_vite_react_app_in_shoal_dev_through_vites_dev_server_reloads_hot(
        vite_app: Path, browser: Browser, shoal_app: Callable[..., Running]) -> None:
    """Vite's own dev server behind shoal dev: the page has the JS API (and its checks),
    Vite's styles apply, and an edit to a component is swapped in while the page keeps
    its state (hot module reload, not a page load)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # Vite itself (not through npx, whose child would outlive a terminate).
    vite = subprocess.Popen(["node", "node_modules/vite/bin/vite.js", "--host", "127.0.0.1",
                             "--port", str(port), "--strictPort", "--clearScreen", "false"],
                            cwd=vite_app, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, stdin=subprocess.DEVNULL)
    component = vite_app / "src" / "App.tsx"
    original = component.read_text()
    try:
        assert vite.stdout is not None
        said = [vite.stdout.readline()]
        while "ready in" not in said[-1]:
            assert said[-1], "".join(said)  # Vite stopped before it was ready
            said.append(vite.stdout.readline())
        run = shoal_app("dev", vite_app, "--url", f"http://127.0.0.1:{port}")
        with opened(browser, run.url) as page:
            page.get_by_role("button", name="Count is 0").click()
            page.get_by_role("button", name="Count is 1").wait_for(timeout=5000)
            api = page.evaluate("""async () => {
                const { fs, os } = await import("shoal:api");
                await fs.writeFile("note.txt", "from the dev server's page");
                const denied = await os.platform().then(() => "allowed", (e) => e.code);
                return [await fs.readFile("note.txt", "utf8"), denied];
            }""")
            assert api == ["from the dev server's page", "EPERM"]
            padding = page.locator("button.counter").evaluate(
                "e => getComputedStyle(e).paddingTop")
            assert padding != "0px"  # App.css, added by Vite's client as a <style>
            page.evaluate("window.loadedOnce = true")
            component.write_text(original.replace("Get started", "Reloaded hot"))
            page.locator("h1", has_text="Reloaded hot").wait_for(timeout=10000)
            assert page.evaluate("window.loadedOnce") is True  # the same page, not reloaded
            page.get_by_role("button", name="Count is 1").wait_for(timeout=1000)  # kept
        assert run.refusals() == []
    finally:
        component.write_text(original)
        vite.terminate()
        vite.wait(timeout=10)


def test_the_vite_template_builds_into_an_archive_of_its_dist_folder_that_runs(
        tmp_path: Path, browser: Browser, shoal_app: Callable[..., Running]) -> None:
    app = tmp_path / "web"
    assert subprocess.run([*SHOAL, "init", str(app), "--template", "vite"],
                          capture_output=True, timeout=60).returncode == 0
    unbuilt = subprocess.run([*SHOAL, "run", str(app), "--browser"], capture_output=True,
                             text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert unbuilt.returncode != 0 and "build the app first" in unbuilt.stderr
    for step in (["npm", "install", "--no-audit", "--no-fund"], ["npm", "run", "build"]):
        subprocess.run(step, cwd=app, check=True, capture_output=True, timeout=300)
    built = subprocess.run([*SHOAL, "build", str(app), "--out", str(tmp_path), "--identity",
                            str(tmp_path / "publisher.key"), "--json"],
                           capture_output=True, text=True, timeout=60)
    assert built.returncode == 0, built.stderr
    names = zipfile.ZipFile(json.loads(built.stdout.splitlines()[-1])["path"]).namelist()
    assert {n for n in names if not n.startswith("app/dist/assets/")} == {
        "shoal-archive.json", "shoal-archive.sig", "app/shoal.toml", "app/app.py",
        "app/dist/index.html", "app/dist/.shoal-inline.json"}  # no sources, no node_modules
    run = shoal_app("run", app)
    with opened(browser, run.url) as page:
        page.wait_for_selector("body[data-ready=true]", state="attached", timeout=10000)
        assert page.text_content("#greeting") == "Hello, world!"
        assert page.text_content("#visits") == "Opened 1 time(s)."
    assert run.refusals() == []
