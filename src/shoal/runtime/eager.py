"""``start_eagerly``: a task whose first step runs at once, where the caller is.

The bridge answers most calls without waiting on anything; run eagerly, such a call is
answered within the callback that received it, a turn of the event loop sooner.
"""

from __future__ import annotations

import asyncio
import contextvars
import sys
from collections.abc import Coroutine
from typing import Any


def start_eagerly(loop: asyncio.AbstractEventLoop,
                  coroutine: Coroutine[Any, Any, None]) -> asyncio.Task[None] | None:
    """Run ``coroutine`` as a task whose first step runs now, so that a call that need
    not wait is answered without a turn of the loop. Returns None when it has finished
    there, else its task (also when that step raised). Meant for callbacks: from inside
    a task it starts a plain task."""
    if sys.version_info >= (3, 12):
        task = asyncio.Task(coroutine, loop=loop, eager_start=True)
        returned = task.done() and not task.cancelled() and task.exception() is None
        return None if returned else task
    if asyncio.current_task(loop) is not None:
        return loop.create_task(coroutine)
    # Python 3.11 (security fixes only, so its asyncio internals stay as they are): the
    # task exists first; its coroutine's first step then runs now as that task, in its
    # context, and the task itself starts from what that step waits on.
    context = contextvars.copy_context()
    rest = _AfterFirstStep(coroutine)
    task = loop.create_task(rest, context=context)
    asyncio.tasks._enter_task(loop, task)  # type: ignore[attr-defined]
    try:
        context.run(rest.first_step)
    finally:
        asyncio.tasks._leave_task(loop, task)  # type: ignore[attr-defined]
    return None if rest.returned else task


class _AfterFirstStep(Coroutine[Any, Any, None]):
    """A coroutine seen from after its first step: the task driving this object is first
    handed what that step waits on, then everything goes to the coroutine itself."""

    def __init__(self, coroutine: Coroutine[Any, Any, None]) -> None:
        self._coroutine = coroutine
        self._first: tuple[str, Any] = ("pending", None)
        self.returned = False

    def first_step(self) -> None:
        try:
            self._first = ("waits", self._coroutine.send(None))
        except StopIteration as stop:
            self._first, self.returned = ("returned", stop.value), True
        except BaseException as exc:  # the task raises it as its own
            self._first = ("raised", exc)

    def send(self, value: Any) -> Any:
        kind, first = self._first
        if kind == "pending":
            return self._coroutine.send(value)
        self._first = ("pending", None)
        if kind == "waits":
            return first
        if kind == "returned":
            raise StopIteration(first)
        raise first

    def throw(self, *exc: Any) -> Any:
        self._first = ("pending", None)
        return self._coroutine.throw(*exc)

    def close(self) -> None:
        self._coroutine.close()

    def __await__(self) -> Any:
        return self._coroutine.__await__()
