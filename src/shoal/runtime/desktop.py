"""What the desktop integration of a window does whatever the toolkit: which pages hear
what, one context menu at a time, and waiting for the user's choice off the GUI thread.

``qtdesktop`` and ``gtkdesktop`` supply the toolkit's side: attaching to a view, the tray
icon, and showing a menu on their GUI thread.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shoal.runtime.config import AppConfig, MenuItem

Emit = Callable[[str, dict[str, Any]], None]
Chosen = Callable[[str | None], bool]
"""Told the id chosen (None: dismissed); True the first time only."""


class Desktop:
    """One app's context menus, tray icon and file drops.

    ``emit(event, data)`` tells the app's pages (from any thread). Dropped files reach
    the pages as paths only if the app declared file access (``drops``).
    """

    def __init__(self, config: AppConfig, emit: Emit) -> None:
        self.config = config
        self.emit = emit
        self.drops = bool(config.permissions.fs_read or config.permissions.fs_write)
        self.tray: Any = None
        self.ready = False
        """A window is attached: menus can show."""
        self._menu_open = threading.Lock()
        self._keep: list[Any] = []  # toolkit objects that must live as long as the app

    @property
    def tray_icon_path(self) -> str:
        assert self.config.tray is not None
        return str(Path(self.config.root, self.config.tray.icon))

    def dropped(self, paths: list[str]) -> None:
        if self.drops and paths:
            self.emit("window.drop", {"paths": paths})

    def tray_chosen(self, ident: str | None) -> None:
        """The tray icon was clicked (``None``) or an item of its menu chosen."""
        self.emit("window.tray", {"id": ident})

    def popup(self, items: tuple[MenuItem, ...], timeout: float | None = None) -> str | None:
        """Any thread but the GUI's: show ``items`` as a menu at the pointer, and return
        the id chosen, or None if the menu was dismissed. One menu at a time."""
        from shoal.runtime.fsapi import BridgeError

        if not self.ready:
            raise BridgeError("the window is not open yet", code="EAGAIN")
        if not self._menu_open.acquire(blocking=False):
            raise BridgeError("a context menu is open already", code="EBUSY")
        try:
            done = threading.Event()
            choice: list[str | None] = []

            def chose(ident: str | None) -> bool:
                if choice:
                    return False
                choice.append(ident)
                done.set()
                return True

            self.show_menu(items, chose)
            done.wait(timeout)
            return choice[0] if choice else None
        finally:
            self._menu_open.release()

    def show_menu(self, items: tuple[MenuItem, ...], chose: Chosen) -> None:
        """Any thread: have the GUI thread show ``items`` at the pointer and tell
        ``chose`` the outcome."""
        raise NotImplementedError
