"""Desktop integration of a Qt window: context menus, the tray icon and dropped files.

Everything here touches Qt widgets, so it runs on the GUI thread: ``attach`` and
``show_tray`` are called there (before a window shows), and ``show_menu`` hands its work
to the GUI thread through a signal (``Desktop.popup`` waits for the user's choice).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from shoal.runtime.desktop import Chosen, Desktop, Emit

if TYPE_CHECKING:
    from shoal.runtime.config import AppConfig, MenuItem

EDIT_ACTIONS = ("Undo", "Redo", "Cut", "Copy", "Paste", "PasteAndMatchStyle", "SelectAll")
"""The page actions the built-in context menu keeps: editing only. Navigation, "view
source" and "save page" would take the page off the app or show its code."""


class QtDesktop(Desktop):
    """One app's context menus, tray icon and file drops, on the Qt GUI thread."""

    def __init__(self, config: AppConfig, emit: Emit) -> None:
        super().__init__(config, emit)
        self._invoker: Any = None

    def attach(self, view: Any) -> None:
        """GUI thread, before a window shows: its context menu and its file drops."""
        from PySide6.QtCore import Qt

        if self._invoker is None:
            self._invoker = _invoker()
            self.ready = True
        view.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        view.customContextMenuRequested.connect(lambda at: _edit_menu(view, at))
        watcher = _drop_watcher_class()(self.dropped)
        self._keep.append(watcher)
        view.installEventFilter(watcher)  # it also watches the page's widget, once made

    def show_tray(self, focus: Callable[[], None]) -> str | None:
        """GUI thread: the ``[tray]`` icon, if the app has one. Why it cannot be shown
        (no tray on this desktop), or None."""
        tray = self.config.tray
        if tray is None or self.tray is not None:
            return None
        from PySide6.QtGui import QIcon
        from PySide6.QtWidgets import QMenu, QSystemTrayIcon

        if not QSystemTrayIcon.isSystemTrayAvailable():
            return "this desktop has no system tray; the [tray] icon is not shown"
        icon = QSystemTrayIcon(QIcon(self.tray_icon_path))
        icon.setToolTip(tray.tooltip)
        if tray.items:
            menu = QMenu()
            _fill(menu, tray.items, self.tray_chosen)
            icon.setContextMenu(menu)
            self._keep.append(menu)

        def activated(reason: Any) -> None:
            if reason in (QSystemTrayIcon.ActivationReason.Trigger,
                          QSystemTrayIcon.ActivationReason.DoubleClick):
                focus()
                self.tray_chosen(None)

        icon.activated.connect(activated)
        icon.show()
        self.tray = icon
        return None

    def show_menu(self, items: tuple[MenuItem, ...], chose: Chosen) -> None:
        def show() -> None:
            from PySide6.QtCore import QTimer
            from PySide6.QtGui import QCursor
            from PySide6.QtWidgets import QMenu

            menu = QMenu()

            def settle(ident: str | None) -> None:
                if chose(ident):
                    menu.deleteLater()

            _fill(menu, items, settle)
            # An item's ``triggered`` comes after the menu hides: wait one turn of the
            # loop before calling it dismissed.
            menu.aboutToHide.connect(lambda: QTimer.singleShot(0, lambda: settle(None)))
            menu.popup(QCursor.pos())

        self._invoker.run.emit(show)


def _fill(menu: Any, items: tuple[MenuItem, ...], chosen: Callable[[str], Any]) -> None:
    for item in items:
        if not item.label:
            menu.addSeparator()
            continue
        action = menu.addAction(item.label)
        action.triggered.connect(lambda _checked=False, ident=item.id: chosen(ident))


def _edit_menu(view: Any, at: Any) -> None:
    """The built-in context menu, with its editing actions only (none: no menu)."""
    from PySide6.QtWebEngineCore import QWebEnginePage

    menu = view.createStandardContextMenu()
    keep = {view.page().action(getattr(QWebEnginePage.WebAction, name)) for name in EDIT_ACTIONS}
    for action in menu.actions():
        if action not in keep and not action.isSeparator():
            menu.removeAction(action)
    while menu.actions() and menu.actions()[0].isSeparator():
        menu.removeAction(menu.actions()[0])
    if any(not action.isSeparator() for action in menu.actions()):
        menu.popup(view.mapToGlobal(at))
    else:
        menu.deleteLater()


def _invoker() -> Any:
    """A GUI-thread object whose ``run`` signal calls the function it carries there."""
    from PySide6.QtCore import QObject, Signal, Slot

    class Invoker(QObject):
        run = Signal(object)

        @Slot(object)
        def call(self, function: Callable[[], None]) -> None:
            function()

    invoker = Invoker()
    invoker.run.connect(invoker.call)  # queued: ``call`` runs where ``invoker`` lives
    return invoker


@functools.cache
def _drop_watcher_class() -> type:
    from PySide6.QtCore import QEvent, QObject

    class DropWatcher(QObject):
        """Sees file drops on a view (the page still gets its own drop event)."""

        def __init__(self, dropped: Callable[[list[str]], None]) -> None:
            super().__init__()
            self.dropped = dropped

        def eventFilter(self, watched: Any, event: Any) -> bool:
            # The view makes the widget that shows the page (and takes the drops) once
            # the page starts loading.
            if event.type() == QEvent.Type.ChildAdded and event.child().isWidgetType():
                event.child().installEventFilter(self)
            elif event.type() == QEvent.Type.Drop:
                data = event.mimeData()
                if data is not None and data.hasUrls():
                    self.dropped([url.toLocalFile() for url in data.urls()
                                  if url.isLocalFile()])
            return False

    return DropWatcher
