"""Desktop integration of a WebKitGTK window: context menus, the tray icon and dropped
files, as ``qtdesktop`` gives them on Qt.

GTK is not thread-safe: ``attach`` and ``show_tray`` run on GTK's thread (before a
window shows), and ``popup`` hands its work to that thread with ``GLib.idle_add``.
WebKitGTK's built-in context menu stays off, as pywebview leaves it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shoal.runtime.config import AppConfig, MenuItem

Emit = Callable[[str, dict[str, Any]], None]


class GtkDesktop:
    """One app's context menus, tray icon and file drops, on GTK's thread."""

    def __init__(self, config: AppConfig, emit: Emit) -> None:
        self.config = config
        self.emit = emit
        self.drops = bool(config.permissions.fs_read or config.permissions.fs_write)
        self.tray: Any = None
        self._attached = False
        self._menu_open = threading.Lock()
        self._last_press: Any = None  # the pointer event a page's menu answers
        self._keep: list[Any] = []
        self._popup: Any = None

    def attach(self, view: Any) -> None:
        """GTK's thread, before a window shows: its pointer events and file drops."""
        self._attached = True
        view.connect("button-press-event", self._pressed)
        # WebKit asks for a drag's data as it moves (several types, one at a time), and
        # GTK says "leave" just before "drop": the paths are kept per drag.
        drag: dict[str, Any] = {"context": None, "paths": [], "dropping": False}

        def received(widget: Any, context: Any, x: int, y: int, data: Any, *rest: Any) -> None:
            paths = _paths(data.get_uris() or [])
            if paths:
                drag.update(context=context, paths=paths)
            if drag["dropping"] and drag["context"] is context:  # data came at the drop
                drag["dropping"] = False
                self._dropped(paths)

        def dropped(widget: Any, context: Any, x: int, y: int, time: int) -> bool:
            if drag["context"] is context:
                self._dropped(drag["paths"])
            else:
                drag.update(context=context, paths=[], dropping=True)
            return False  # WebKit's own handler gives the page its drop event

        view.connect("drag-data-received", received)
        view.connect("drag-drop", dropped)

    def _pressed(self, widget: Any, event: Any) -> bool:
        self._last_press = event.copy()
        return False

    def _dropped(self, paths: list[str]) -> None:
        if self.drops and paths:
            self.emit("window.drop", {"paths": paths})

    def show_tray(self, focus: Callable[[], None]) -> str | None:
        """GTK's thread: the ``[tray]`` icon, if the app has one. Why it cannot be shown,
        or None."""
        tray = self.config.tray
        if tray is None or self.tray is not None:
            return None
        import gi

        gi.require_version("Gtk", "3.0")
        from gi.repository import Gtk

        icon = Gtk.StatusIcon.new_from_file(str(Path(self.config.root, tray.icon)))
        icon.set_tooltip_text(tray.tooltip)
        icon.set_title(self.config.name)

        def activated(_icon: Any) -> None:
            focus()
            self.emit("window.tray", {"id": None})

        icon.connect("activate", activated)
        if tray.items:
            menu = _menu(tray.items, lambda ident: self.emit("window.tray", {"id": ident}))
            self._keep.append(menu)
            icon.connect("popup-menu", lambda source, button, time: menu.popup(
                None, None, Gtk.StatusIcon.position_menu, source, button, time))
        self.tray = icon
        return None

    def popup(self, items: tuple[MenuItem, ...], timeout: float | None = None) -> str | None:
        """Any thread but GTK's: show ``items`` as a menu at the pointer, and return the
        id chosen, or None if the menu was dismissed. One menu at a time."""
        from shoal.runtime.fsapi import BridgeError

        if not self._attached:
            raise BridgeError("the window is not open yet", code="EAGAIN")
        if not self._menu_open.acquire(blocking=False):
            raise BridgeError("a context menu is open already", code="EBUSY")
        try:
            done = threading.Event()
            choice: list[str | None] = []

            def show() -> bool:
                from gi.repository import GLib

                def chose(ident: str | None) -> None:
                    if not choice:
                        choice.append(ident)
                        done.set()

                menu = _menu(items, chose)
                # An item's "activate" comes after the menu's "deactivate": wait one
                # turn of the loop before calling the menu dismissed.
                menu.connect("deactivate", lambda _menu: GLib.idle_add(
                    lambda: chose(None) and False))
                self._popup = menu  # alive while it shows
                menu.popup_at_pointer(self._last_press)
                return False

            from gi.repository import GLib

            GLib.idle_add(show)
            done.wait(timeout)
            return choice[0] if choice else None
        finally:
            self._menu_open.release()


def _menu(items: tuple[MenuItem, ...], chosen: Callable[[str], None]) -> Any:
    from gi.repository import Gtk

    menu = Gtk.Menu()
    for item in items:
        if not item.label:
            menu.append(Gtk.SeparatorMenuItem())
            continue
        entry = Gtk.MenuItem(label=item.label)
        entry.connect("activate", lambda _entry, ident=item.id: chosen(ident))
        menu.append(entry)
    menu.show_all()
    return menu


def _paths(uris: list[str]) -> list[str]:
    from gi.repository import GLib

    paths = []
    for uri in uris:
        if uri.startswith("file://"):
            try:
                paths.append(GLib.filename_from_uri(uri)[0])
            except GLib.Error:
                continue
    return paths
