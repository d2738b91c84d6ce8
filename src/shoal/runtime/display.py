"""Ending promptly when the X display goes away under a window.

When its X server dies, the webview's toolkit ends the process from its own I/O error
handler; the C++ teardown that then runs can hang for good (seen with QtWebEngine), in
a state where SIGTERM no longer reaches Python. A daemon thread that notices the display
gone gives that teardown a grace period, then ends the process itself.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import threading
import time

POLL = 1.0
"""Seconds between looks at the display."""


def local_display_socket(display: str | None) -> str | None:
    """The Unix socket of a local X display such as ``:0`` or ``unix:1.0``, or None for
    a remote or unknown one (nothing to watch)."""
    found = re.fullmatch(r"(?:unix)?:(\d+)(?:\.\d+)?", display or "")
    return f"/tmp/.X11-unix/X{found.group(1)}" if found else None


def display_alive(path: str) -> bool:
    """Whether an X server accepts connections at ``path`` (its abstract socket, which
    Xorg and Xvfb also listen on, or the file)."""
    for address in ("\0" + path, path):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe, \
                contextlib.suppress(OSError):
            probe.connect(address)
            return True
    return False


def exit_when_display_dies(grace: float, display: str | None = None) -> None:
    """Watch the X display (``$DISPLAY`` by default) from a daemon thread: once it stops
    answering, end the process ``grace`` seconds later (status 1) if it has not ended by
    itself. Nothing is watched on Wayland or a remote display."""
    path = local_display_socket(display if display is not None else
                                os.environ.get("DISPLAY"))
    if path is None or os.environ.get("WAYLAND_DISPLAY") or not display_alive(path):
        return

    def watch() -> None:
        while display_alive(path):
            time.sleep(POLL)
        time.sleep(grace)
        os._exit(1)

    threading.Thread(target=watch, name="shoal-display-watch", daemon=True).start()
