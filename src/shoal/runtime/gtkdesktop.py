"""Desktop integration of a WebKitGTK window: context menus, the tray icon and dropped
files, as ``qtdesktop`` gives them on Qt.

GTK is not thread-safe: ``attach`` and ``show_tray`` run on GTK's thread (before a
window shows), and ``show_menu`` hands its work to that thread with ``GLib.idle_add``
(``Desktop.popup`` waits for the user's choice).
WebKitGTK's built-in context menu stays off, as pywebview leaves it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from shoal.runtime.desktop import Chosen, Desktop, Emit

if TYPE_CHECKING:
    from shoal.runtime.config import AppConfig, MenuItem


class GtkDesktop(Desktop):
    """One app's context menus, tray icon and file drops, on GTK's thread."""

    def __init__(self, config: AppConfig, emit: Emit) -> None:
        super().__init__(config, emit)
        self._last_press: Any = None  # the pointer event a page's menu answers
        self._popup: Any = None

    def attach(self, view: Any) -> None:
        """GTK's thread, before a window shows: its pointer events and file drops."""
        self.ready = True
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
                self.dropped(paths)

        def dropped(widget: Any, context: Any, x: int, y: int, time: int) -> bool:
            if drag["context"] is context:
                self.dropped(drag["paths"])
            else:
                drag.update(context=context, paths=[], dropping=True)
            return False  # WebKit's own handler gives the page its drop event

        view.connect("drag-data-received", received)
        view.connect("drag-drop", dropped)

    def _pressed(self, widget: Any, event: Any) -> bool:
        self._last_press = event.copy()
        return False

    def show_tray(self, focus: Callable[[], None]) -> str | None:
        """GTK's thread: the ``[tray]`` icon, if the app has one. Why it cannot be shown,
        or None."""
        tray = self.config.tray
        if tray is None or self.tray is not None:
            return None
        import gi

        gi.require_version("Gtk", "3.0")
        from gi.repository import Gtk

        icon = Gtk.StatusIcon.new_from_file(self.tray_icon_path)
        icon.set_tooltip_text(tray.tooltip)
        icon.set_title(self.config.name)

        def activated(_icon: Any) -> None:
            focus()
            self.tray_chosen(None)

        icon.connect("activate", activated)
        if tray.items:
            menu = _menu(tray.items, self.tray_chosen)
            self._keep.append(menu)
            icon.connect("popup-menu", lambda source, button, time: menu.popup(
                None, None, Gtk.StatusIcon.position_menu, source, button, time))
        self.tray = icon
        return None

    def show_menu(self, items: tuple[MenuItem, ...], chose: Chosen) -> None:
        from gi.repository import GLib

        def show() -> bool:
            menu = _menu(items, chose)
            # An item's "activate" comes after the menu's "deactivate": wait one turn
            # of the loop before calling the menu dismissed.
            menu.connect("deactivate", lambda _menu: GLib.idle_add(
                lambda: chose(None) and False))
            self._popup = menu  # alive while it shows
            menu.popup_at_pointer(self._last_press)
            return False

        GLib.idle_add(show)


def _menu(items: tuple[MenuItem, ...], chosen: Callable[[str], Any]) -> Any:
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
