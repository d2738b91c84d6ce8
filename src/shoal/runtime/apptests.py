"""``shoal test``: an app's own JS tests, run in a real browser engine against the app's
real bridge, one result at a time.

Test files are the app's ``*.test.js`` (outside hidden folders and ``node_modules``). Each
imports ``test`` and ``assert`` from ``"shoal:test"`` and whatever it tests from the app or
``"shoal:api"``. The host serves the app as ``shoal run --browser`` would (same policy,
same permissions, a temporary data folder unless one is given) plus a runner page, which
headless Chromium opens (``run_tests``) or the app's own native window shows
(``run_tests_in_window``); the runner imports every file, runs the tests in order and
hands each result to Python.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shoal.errors import ShoalError
from shoal.runtime.fsapi import BridgeError
from shoal.runtime.launch import Launch
from shoal.runtime.pages import (
    TEST_LIST_PATH,
    TEST_PAGE_PATH,
    TEST_RUNNER_PATH,
    asset,
    asset_path,
    page_html,
)

if TYPE_CHECKING:
    from shoal.runtime.bridge import Handler
    from shoal.runtime.system import WindowBackend

SKIPPED = {"node_modules", "__pycache__"}


def find_tests(folder: Path) -> list[str]:
    """The app's test files, as URL paths relative to the app, sorted."""
    found = []
    for directory, subfolders, names in os.walk(folder):
        subfolders[:] = [d for d in subfolders if not d.startswith(".") and d not in SKIPPED]
        found += [(Path(directory) / n).relative_to(folder).as_posix() for n in names
                  if n.endswith(".test.js") and not n.startswith(".")]
    return sorted(found)


def _chromium() -> str | None:
    """A Chromium to drive: the system's, else the one Playwright installed."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path is not None:
            return path
    return None


class TestRun:
    """One run of the app's test ``files``, a plugin of the app host: it serves the
    runner page, which imports them, and hears each result over the bridge; each goes
    to ``on_result``. Once the run is over, the window showing the page closes."""

    __test__ = False  # not a pytest test class, despite its name

    def __init__(self, files: tuple[str, ...],
                 on_result: Callable[[dict[str, Any]], None]) -> None:
        self.files = files
        self.on_result = on_result
        self.results: list[dict[str, Any]] = []
        self.close: Callable[[], None] = lambda: None
        self.finished = threading.Event()
        self._lock = threading.Lock()

    def report(self, result: dict[str, Any]) -> None:
        with self._lock:
            if self.finished.is_set():
                return
            self.results.append(result)
            self.on_result(result)

    def finish(self, problem: str | None = None) -> None:
        """The run is over (``problem``: why it did not end by itself)."""
        if problem is not None:
            self.report({"name": "(the run)", "file": "", "ok": False, "ms": 0,
                         "error": problem})
        with self._lock:
            if self.finished.is_set():
                return
            self.finished.set()
        self.close()

    def page(self, path: str) -> tuple[str, bytes] | None:
        """The runner page and its scripts."""
        script = "text/javascript; charset=utf-8"
        if path == TEST_PAGE_PATH:
            return "text/html; charset=utf-8", page_html(asset_path("test.html")).encode()
        if path == TEST_RUNNER_PATH:
            return script, asset("test-run.js").encode()
        if path == TEST_LIST_PATH:
            return script, f"export default {json.dumps(list(self.files))};\n".encode()
        return None

    def calls(self, window: WindowBackend) -> dict[str, Handler]:
        """The runner page's bridge calls; ``window`` closes once the run is over."""
        self.close = window.close

        async def report(result: Any) -> None:
            if not isinstance(result, dict) or not isinstance(result.get("name"), str):
                raise BridgeError("a test result is an object with a name", code="EINVAL")
            self.report({"name": result["name"], "file": str(result.get("file", "")),
                         "ok": result.get("ok") is True, "ms": result.get("ms", 0),
                         **{key: result[key] for key in ("error", "expected", "actual",
                                                         "stack") if key in result}})

        async def done() -> None:
            self.finish()

        return {"test.report": report, "test.done": done}


def run_tests_in_window(folder: Path, *, on_result: Callable[[dict[str, Any]], None],
                        gui: str | None = None, data_dir: Path | None = None,
                        timeout: float = 300.0) -> list[dict[str, Any]]:
    """Run the app's tests in its own native window (QtWebEngine or WebKitGTK), on this
    thread, which the GUI loop takes until the run is over. Returns every result."""
    from shoal.runtime.window import choose_gui, run_in_window

    files = find_tests(folder)
    if not files:
        raise ShoalError(f"{folder}: no test files (*.test.js)", code="ENOENT")
    can_open, gui, why = choose_gui(gui)
    if not can_open:
        raise ShoalError(f"cannot open a window for the tests: {why}", code="ENOTSUP")
    run = TestRun(tuple(files), on_result)
    timer = threading.Timer(timeout, run.finish,
                            args=(f"the tests did not finish within {timeout:g} s",))
    timer.daemon = True
    with tempfile.TemporaryDirectory(prefix="shoal-test-") as scratch:
        timer.start()
        try:
            run_in_window(folder, Launch(data_dir=data_dir or Path(scratch),
                                         entry=TEST_PAGE_PATH, plugins=(run,)),
                          on_ready=lambda url: None, gui=gui)
        finally:
            timer.cancel()
    if not run.finished.is_set():
        run.finish("the window was closed before the tests finished")
    return run.results


async def run_tests(folder: Path, *, on_result: Callable[[dict[str, Any]], None],
                    on_problem: Callable[[str], None], data_dir: Path | None = None,
                    timeout: float = 300.0) -> list[dict[str, Any]]:
    """Run the app's tests; each result goes to ``on_result`` as it comes, and page
    errors outside any test to ``on_problem``. Returns every result."""
    files = find_tests(folder)
    if not files:
        raise ShoalError(f"{folder}: no test files (*.test.js)", code="ENOENT")
    try:
        from playwright.async_api import Error as PlaywrightError
        from playwright.async_api import async_playwright
    except ImportError:
        raise ShoalError("shoal test drives Chromium through Playwright: "
                         "pip install 'shoal[test]'", code="ENOSYS") from None
    from shoal.runtime.host import AppHost

    run = TestRun(tuple(files), on_result)
    finished = asyncio.Event()

    with tempfile.TemporaryDirectory(prefix="shoal-test-") as scratch:
        async with AppHost(folder, data_dir=data_dir or Path(scratch), plugins=(run,)) \
                as host, async_playwright() as playwright:
            assert host.server is not None
            try:
                browser = await playwright.chromium.launch(
                    executable_path=_chromium(),
                    args=["--no-sandbox"] if hasattr(os, "geteuid") and os.geteuid() == 0
                    else [])
            except PlaywrightError as exc:
                first = str(exc).strip().splitlines()[0]
                raise ShoalError(f"cannot start Chromium for the tests: {first}",
                                 code="ENOENT") from None
            try:
                page = await browser.new_page()
                await page.expose_function("shoalTestReport", run.report)
                await page.expose_function("shoalTestDone", finished.set)
                page.on("pageerror", lambda error: on_problem(f"page error: {error}"))
                page.on("console", lambda message: on_problem(f"console: {message.text}")
                        if message.type == "error" else None)
                await page.goto(f"{host.server.origin}{TEST_PAGE_PATH}"
                                f"#shoal={host.server.secret}")
                try:
                    await asyncio.wait_for(finished.wait(), timeout)
                except TimeoutError:
                    run.report({"name": "(the run)", "file": "", "ok": False, "ms": 0,
                                "error": f"the tests did not finish within {timeout:g} s"})
            finally:
                await browser.close()
    return run.results
