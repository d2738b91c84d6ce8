"""Global hotkeys: key combinations the app declared (``[permissions] hotkeys``), seen
whichever window has the focus, and handed to the page as ``hotkey`` events.

Keys are watched with pynput (the X server's RECORD extension on Linux; the session must
be X11 or XWayland), on a thread of pynput's own. A combination is modifiers and one key,
written ``ctrl+alt+k``, ``ctrl+shift+f5`` or ``super+space``; ctrl, alt or super must be
among the modifiers, so that no combination is a key pressed while typing (``shift+h``
would hear every capital H). What the app did not declare is never reported to it.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from typing import Any

MODIFIERS = ("ctrl", "alt", "shift", "super")
COMMAND_MODIFIERS = frozenset({"ctrl", "alt", "super"})
"""One of these must be held: typing uses none of them."""
NAMED_KEYS = {"space", "enter", "tab", "esc", "up", "down", "left", "right", "home", "end",
              "page_up", "page_down", "delete", "backspace", "insert",
              *(f"f{n}" for n in range(1, 13))}


def parse_combo(text: str) -> tuple[frozenset[str], str] | None:
    """``(modifiers, key)`` of a combination like ``ctrl+alt+k``; None if malformed or
    without ctrl, alt or super."""
    parts = text.lower().split("+")
    *mods, key = parts
    if not COMMAND_MODIFIERS & set(mods) or len(set(mods)) != len(mods) \
            or any(m not in MODIFIERS for m in mods):
        return None
    if not (re.fullmatch(r"[a-z0-9]", key) or key in NAMED_KEYS):
        return None
    return frozenset(mods), key


def canonical(text: str) -> str:
    """The one spelling of a combination: modifiers in a fixed order, then the key."""
    parsed = parse_combo(text)
    assert parsed is not None
    mods, key = parsed
    return "+".join([*(m for m in MODIFIERS if m in mods), key])


class Hotkeys:
    """Watches the app's declared combinations while the app runs."""

    def __init__(self, declared: tuple[str, ...], emit: Callable[[str, dict], None]) -> None:
        self.declared = {canonical(c): parse_combo(c) for c in declared}
        self._emit = emit
        self._listener: Any = None
        self._held: set[str] = set()
        self.unavailable: str | None = None
        """Why combinations cannot be watched here, if they cannot."""

    def calls(self) -> dict[str, Callable[..., Any]]:
        return {"hotkeys.list": self.list}

    async def list(self) -> dict[str, Any]:
        """The declared combinations, and whether this session can watch them."""
        return {"hotkeys": sorted(self.declared), "available": self.unavailable is None,
                "reason": self.unavailable}

    def start(self) -> None:
        if not self.declared:
            return
        loop = asyncio.get_running_loop()
        try:
            from pynput import keyboard
        except ImportError as exc:  # no X display, or pynput not installed
            self.unavailable = str(exc).splitlines()[0]
            return
        self._keyboard = keyboard

        def pressed(key: Any) -> None:
            name = self._name(key)
            if name in MODIFIERS:
                self._held.add(name)
                return
            for combo, (mods, wanted) in self.declared.items():  # type: ignore[misc]
                if name == wanted and mods == self._held:
                    loop.call_soon_threadsafe(self._emit, "hotkey", {"combo": combo})

        def released(key: Any) -> None:
            self._held.discard(self._name(key) or "")

        self._listener = keyboard.Listener(on_press=pressed, on_release=released)
        self._listener.daemon = True
        self._listener.start()

    def _name(self, key: Any) -> str | None:
        keyboard = self._keyboard
        if isinstance(key, keyboard.KeyCode):
            return key.char.lower() if key.char else None
        name = getattr(key, "name", "") or ""
        if name == "alt_gr":  # types characters (@, €, ...) on many layouts: not alt
            return None
        for modifier, prefixes in (("ctrl", ("ctrl",)), ("alt", ("alt",)),
                                   ("shift", ("shift",)), ("super", ("cmd", "super"))):
            if name.startswith(prefixes):
                return modifier
        return name if name in NAMED_KEYS else None

    def close(self) -> None:
        if self._listener is not None:
            self._listener.stop()
