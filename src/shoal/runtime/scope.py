"""``PageScope``: what one page's bridge connection holds, released when it closes.

A call that leaves something running after it returns (a watch, a subscription) ties it
to the page that asked, through ``current_page``, so that nothing a page started
outlives it, and caps what one page may hold.
"""

from __future__ import annotations

import contextvars
from collections.abc import Awaitable, Callable
from typing import Any

current_page: contextvars.ContextVar[PageScope | None] = contextvars.ContextVar(
    "shoal_current_page", default=None)


class PageScope:
    """Resources of one bridge connection; ``close`` releases every one of them."""

    def __init__(self, emit: Callable[[str, dict[str, Any]], None] | None = None,
                 drain: Callable[[], Awaitable[None]] | None = None) -> None:
        """``emit`` sends an event to this page only; ``drain`` waits while the page
        has more unread than its socket's high-water mark."""
        self.closed = False
        self._releases: dict[object, Callable[[], None]] = {}
        self._emit = emit
        self._drain = drain

    def emit(self, event: str, data: dict[str, Any]) -> None:
        """Send ``event`` to this page alone (nothing once it has closed)."""
        if self._emit is not None and not self.closed:
            self._emit(event, data)

    async def drain(self) -> None:
        """Wait until the page has read enough of what it was sent."""
        if self._drain is not None and not self.closed:
            await self._drain()

    def hold(self, key: object, release: Callable[[], None]) -> None:
        """Call ``release`` when the page goes, unless ``drop(key)`` came first."""
        if self.closed:
            release()
            return
        self._releases[key] = release

    def drop(self, key: object) -> None:
        self._releases.pop(key, None)

    def count(self, kind: type) -> int:
        """How many held keys are of ``kind``."""
        return sum(isinstance(key, kind) for key in self._releases)

    def close(self) -> None:
        self.closed = True
        releases, self._releases = self._releases, {}
        for release in releases.values():
            release()
