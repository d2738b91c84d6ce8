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


CHROMIUM = "/usr/bin/chromium"
"""Debian's Chromium: the browser the browser tests drive."""


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Chromium through Playwright, one per test module."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield instance
        instance.close()
