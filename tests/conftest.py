from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser

# Tests that do not build their own network namespaces must never multicast on the host.
os.environ["SHOAL_NO_LAN"] = "1"
# Which app served which loopback origin is kept in the user's state dir: not the real one.
os.environ["XDG_STATE_HOME"] = tempfile.mkdtemp(prefix="shoal-state-")
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="shoal-cache-")
# Node keys of the tests' apps go to a keys folder of the tests' own.
os.environ["SHOAL_KEYS_DIR"] = tempfile.mkdtemp(prefix="shoal-keys-")


CHROMIUM = "/usr/bin/chromium"
"""Debian's Chromium: the browser the browser tests drive."""


@pytest.fixture
def display() -> Iterator[str]:
    """An X server of the test's own (Xvfb): its display name, for DISPLAY."""
    import subprocess
    import time
    from pathlib import Path

    number = next(n for n in range(90, 200) if not Path(f"/tmp/.X11-unix/X{n}").exists())
    server = subprocess.Popen(["Xvfb", f":{number}", "-screen", "0", "1280x1024x24"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not Path(f"/tmp/.X11-unix/X{number}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield f":{number}"
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Chromium through Playwright, one per test module."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield instance
        instance.close()
