"""``shoal test``: an app's own JS tests, run in a real browser engine against the app's
real bridge, one result at a time.

Test files are the app's ``*.test.js`` (outside hidden folders and ``node_modules``). Each
imports ``test`` and ``assert`` from ``"shoal:test"`` and whatever it tests from the app or
``"shoal:api"``. The host serves the app as ``shoal run --browser`` would (same policy,
same permissions, a temporary data folder unless one is given) plus a runner page, which
headless Chromium opens; the runner imports every file, runs the tests in order and hands
each result to Python.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shoal.errors import ShoalError
from shoal.runtime.pages import TEST_PAGE_PATH

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

    results: list[dict[str, Any]] = []
    finished = asyncio.Event()

    async def report(result: dict[str, Any]) -> None:
        results.append(result)
        on_result(result)

    with tempfile.TemporaryDirectory(prefix="shoal-test-") as scratch:
        async with AppHost(folder, data_dir=data_dir or Path(scratch), tests=tuple(files)) \
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
                await page.expose_function("shoalTestReport", report)
                await page.expose_function("shoalTestDone", finished.set)
                page.on("pageerror", lambda error: on_problem(f"page error: {error}"))
                page.on("console", lambda message: on_problem(f"console: {message.text}")
                        if message.type == "error" else None)
                await page.goto(f"{host.server.origin}{TEST_PAGE_PATH}"
                                f"#shoal={host.server.secret}")
                try:
                    await asyncio.wait_for(finished.wait(), timeout)
                except TimeoutError:
                    await report({"name": "(the run)", "file": "", "ok": False, "ms": 0,
                                  "error": f"the tests did not finish within {timeout:g} s"})
            finally:
                await browser.close()
    return results
