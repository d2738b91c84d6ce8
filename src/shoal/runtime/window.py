"""The native window: pywebview showing the app (``shoal[gui]``).

On QtWebEngine (PySide6) the window serves the pages itself through ``shoal://app``
(``qtscheme``); on other renderers it shows the app server's URL. pywebview's own JS
bridge is never used (it needs ``'unsafe-eval'`` and answers any page the window shows):
the page talks to Python over the app server's bridge only. The GUI loop owns the main
thread, so the app host runs on an asyncio loop in a second thread.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import itertools
import os
import secrets
import sys
import threading
from collections.abc import Callable
from importlib.machinery import PathFinder
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shoal.runtime.config import AppConfig, MenuItem
    from shoal.runtime.desktop import Desktop
    from shoal.runtime.launch import Launch

HOST_DELAY = 1.0
"""Seconds after the window opens by which the host starts even if the page is still
loading (see ``run_in_window``)."""
ADDRESS_WAIT = 5.0
"""Seconds a check of the window's address after a load waits for the GUI thread."""


def gui_unavailable(gui: str | None = None) -> str | None:
    """Why no native window (of kind ``gui``, if given) can open here, or None."""
    try:
        import webview  # noqa: F401
    except ImportError:
        return "the GUI extra is not installed (pip install 'shoal[gui]')"
    if sys.platform.startswith("linux"):
        # Looked up, not imported: pywebview imports whichever it picks.
        qt = _module_exists("PySide6.QtWebEngineWidgets")
        gtk = _module_exists("gi")
        offscreen = gui != "gtk" and os.environ.get("QT_QPA_PLATFORM") == "offscreen"
        if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY") or offscreen):
            return "there is no display (DISPLAY or WAYLAND_DISPLAY is not set)"
        if gui == "qt" and not qt:
            return "QtWebEngine is not installed (pip install 'shoal[gui]')"
        if gui == "gtk" and not gtk:
            return "WebKitGTK's Python bindings are not installed (pip install 'shoal[gtk]')"
        if gui == "gtk" and not _webkitgtk_installed():
            return "WebKitGTK is not installed (apt install libwebkit2gtk-4.1-0)"
        if not (qt or gtk):
            return "neither QtWebEngine (PySide6) nor WebKitGTK (PyGObject) is installed"
    return None


def _webkitgtk_installed() -> bool:
    import ctypes.util

    return ctypes.util.find_library("webkit2gtk-4.1") is not None


def choose_gui(gui: str | None = None) -> tuple[bool, str | None, str | None]:
    """``(a window can open, the webview to ask for, a line to show)``. Where Qt's X11
    plugin cannot load for want of system libraries (Qt would abort the process), the
    window falls back to WebKitGTK, or there is none; the line says why."""
    reason = gui_unavailable(gui)
    if reason is not None:
        return False, gui, reason
    if not sys.platform.startswith("linux") or gui == "gtk" or not _qt_on_x11():
        return True, gui, None
    if not _module_exists("PySide6.QtWebEngineWidgets"):
        return True, gui, None  # pywebview will pick GTK itself
    missing = qt_xcb_missing()
    if not missing:
        return True, gui, None
    why = (f"Qt cannot open a window on X11: {', '.join(missing)} not found "
           f"(apt install {' '.join(_debian_package(m) for m in missing)})")
    if gui is None and _module_exists("gi"):
        return True, "gtk", f"{why}; using WebKitGTK instead"
    return False, gui, why


def environment() -> dict[str, object]:
    """What decides whether and how an app window opens here (for ``shoal info``)."""
    import platform
    from importlib import metadata

    def version(distribution: str) -> str | None:
        try:
            return metadata.version(distribution)
        except metadata.PackageNotFoundError:
            return None

    webviews = {}
    if _module_exists("PySide6.QtWebEngineWidgets"):
        webviews["QtWebEngine"] = f"PySide6 {version('PySide6') or version('PySide6-Essentials')}"
    if _module_exists("gi"):
        webviews["WebKitGTK"] = f"PyGObject {version('PyGObject')}"
    can_open, gui, why = choose_gui(None)
    if gui is None:
        gui = "qt" if "QtWebEngine" in webviews else "gtk"
    return {
        "python": platform.python_version(),
        "platform": f"{platform.system()} {platform.release()} {platform.machine()}",
        "pywebview": version("pywebview"),
        "webviews": webviews,
        "display": os.environ.get("WAYLAND_DISPLAY") or os.environ.get("DISPLAY") or None,
        "qt_x11_missing": qt_xcb_missing() if _qt_on_x11() else [],
        "window": ("opens with " + {"gtk": "WebKitGTK", "qt": "QtWebEngine"}[gui]
                   if can_open else "does not open: " + (why or "")),
        "window_note": why if can_open else None,
    }


def _qt_on_x11() -> bool:
    platform = os.environ.get("QT_QPA_PLATFORM", "")
    if platform:
        return platform.startswith("xcb")
    wayland = os.environ.get("WAYLAND_DISPLAY") and \
        os.environ.get("XDG_SESSION_TYPE", "wayland") == "wayland"
    return bool(os.environ.get("DISPLAY")) and not wayland


XCB_CURSOR = "libxcb-cursor.so.0"
"""Loaded by Qt's X11 plugin at run time (so ``ldd`` does not list it): Qt aborts
without it."""


LINKER_CACHE = "/etc/ld.so.cache"
"""Rewritten by ``ldconfig`` whenever the system's libraries change."""


def qt_xcb_missing(plugin: Path | None = None) -> list[str]:
    """System libraries that Qt's X11 platform plugin (``plugin``, by default
    PySide6's) needs and the dynamic linker cannot find. For PySide6's own plugin the
    answer is remembered until the plugin or the linker's cache changes, so a window's
    start does not pay for ``ldd`` each time."""
    if plugin is not None:
        return _linker_misses(plugin)
    spec = importlib.util.find_spec("PySide6")
    where = spec.submodule_search_locations if spec is not None else None
    if not where:
        return []
    plugin = Path(next(iter(where))) / "Qt" / "plugins" / "platforms" / "libqxcb.so"
    try:
        key = (f"{plugin}:{plugin.stat().st_mtime_ns}:{os.stat(LINKER_CACHE).st_mtime_ns}:"
               f"{os.environ.get('LD_LIBRARY_PATH', '')}")
    except OSError:
        return _linker_misses(plugin)
    import json

    import platformdirs

    remembered = Path(platformdirs.user_cache_dir("shoal")) / "qt-x11.json"
    with contextlib.suppress(OSError, ValueError, TypeError):
        saved = json.loads(remembered.read_text())
        if saved["key"] == key:
            return list(saved["missing"])
    missing = _linker_misses(plugin)
    with contextlib.suppress(OSError):
        remembered.parent.mkdir(parents=True, exist_ok=True)
        remembered.write_text(json.dumps({"key": key, "missing": missing}))
    return missing


def _linker_misses(plugin: Path) -> list[str]:
    import ctypes.util
    import shutil
    import subprocess

    if not plugin.exists() or shutil.which("ldd") is None:
        return []
    try:
        listing = subprocess.run(["ldd", str(plugin)], capture_output=True, text=True,
                                 timeout=10, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    missing = [line.split()[0] for line in listing.splitlines() if "not found" in line]
    if plugin.name == "libqxcb.so" and ctypes.util.find_library("xcb-cursor") is None:
        missing.append(XCB_CURSOR)
    return list(dict.fromkeys(missing))


def _debian_package(library: str) -> str:
    """``libxcb-icccm.so.4`` -> ``libxcb-icccm4``: Debian's name for the package."""
    name, _, version = library.partition(".so.")
    return f"{name}{version}" if version else name


@functools.cache
def _module_exists(name: str) -> bool:
    """Whether ``name`` (a top-level module, or a module of a top-level package) can be
    imported, found without running the package's code: importing PySide6 installs an
    import hook that slows every later import and keeps its source (see
    ``run_in_window``)."""
    package, _, module = name.rpartition(".")
    try:
        spec = importlib.util.find_spec(package or name)
    except (ImportError, ValueError):
        return False
    if spec is None or not package:
        return spec is not None
    where = spec.submodule_search_locations
    return where is not None and PathFinder.find_spec(module, list(where)) is not None


MAX_WINDOWS = 8
"""Windows one app may have open at once (a page cannot bury the desktop in them)."""


class PywebviewBackend:
    """Window calls from the page, carried out on the pywebview window."""

    def __init__(self) -> None:
        self.windows: dict[int, Any] = {}
        """The app's open windows by number, the first being 0."""
        self.opener: Callable[[str], None] | None = None
        """Opens another window on a path of the app (set once the first is up)."""
        self.desktop: Desktop | None = None
        """Context menus, tray and drops (QtWebEngine and WebKitGTK)."""

    @property
    def window(self) -> Any:
        """The app's first window."""
        return self.windows.get(0)

    @window.setter
    def window(self, first: Any) -> None:
        self.windows[0] = first

    def numbered(self, number: int) -> Any:
        """The app's window ``number`` (0: the first), or ``EINVAL`` once it is closed."""
        from shoal.runtime.fsapi import BridgeError

        shown = self.windows.get(number)
        if shown is None:
            raise BridgeError(f"the app has no window {number} (closed?)", code="EINVAL")
        return shown

    def set_title(self, title: str, window: int = 0) -> None:
        self.numbered(window).set_title(title)

    def set_size(self, width: int, height: int, window: int = 0) -> None:
        self.numbered(window).resize(width, height)

    def close(self, window: int = 0) -> None:
        self.numbered(window).destroy()

    def open_window(self, path: str) -> None:
        from shoal.runtime.fsapi import BridgeError

        if self.opener is None:
            raise BridgeError("this webview cannot open another window", code="ENOTSUP")
        self.opener(path)

    def context_menu(self, items: tuple[MenuItem, ...]) -> str | None:
        from shoal.runtime.fsapi import BridgeError

        if self.desktop is None:
            raise BridgeError("this webview has no native context menus", code="ENOTSUP")
        return self.desktop.popup(items)

    def focus(self) -> None:
        """Bring the window forward (a second launch of the app asked for it)."""
        self.window.restore()
        self.window.show()

    def open_dialog(self, kind: str, options: dict[str, Any]) -> list[str] | None:
        import webview

        if kind == "save":
            dialog = webview.FileDialog.SAVE
            chosen = self.window.create_file_dialog(
                dialog, save_filename=str(options.get("filename", "")))
        else:
            dialog = webview.FileDialog.FOLDER if options.get("directory") else (
                webview.FileDialog.OPEN)
            chosen = self.window.create_file_dialog(
                dialog, allow_multiple=bool(options.get("multiple")))
        if chosen is None:
            return None
        return [chosen] if isinstance(chosen, str) else list(chosen)

    def read_clipboard(self) -> str:
        from shoal.runtime.fsapi import BridgeError

        raise BridgeError("clipboard access is not available in this window", code="ENOTSUP")

    def write_clipboard(self, text: str) -> None:
        from shoal.runtime.fsapi import BridgeError

        raise BridgeError("clipboard access is not available in this window", code="ENOTSUP")


def keep_on_app(current: str, origin: str, load: Callable[[str], None],
                leave: Callable[[str], None]) -> None:
    """If the window has left the app (``current``, its address, is elsewhere: a script
    changed ``location``, say), hand that address to ``leave`` and ``load`` the app
    again."""
    from shoal.runtime.pages import on_origin

    if on_origin(current, origin):
        return
    leave(current)
    load(origin + "/")


def address_within(window: Any, timeout: float) -> str | None:
    """``window.get_current_url()`` ("" for no address), or None if the GUI thread has
    not answered within ``timeout``. The asking thread is a daemon: on some renderers the
    call waits on the GUI thread, and once that thread has closed the window the wait
    never ends; Python would wait for a thread of its own at exit."""
    answer: list[str] = []
    asking = threading.Thread(target=lambda: answer.append(window.get_current_url() or ""),
                              daemon=True)
    asking.start()
    asking.join(timeout)
    return answer[0] if answer else None


def opener_for(config: AppConfig) -> Callable[[str], None]:
    """What the window does with an address outside the app: with the ``shell``
    permission, open it in the system browser (off the calling GUI thread, within the
    shared rate limit); without it, nothing."""

    def leave(url: str) -> None:
        from shoal.runtime.system import EXTERNAL

        if config.permissions.shell and url.startswith(("http://", "https://")) \
                and EXTERNAL.take():
            import webbrowser

            threading.Thread(target=webbrowser.open, args=(url,), daemon=True).start()

    return leave


def run_in_window(folder: Path, launch: Launch, *, on_ready: Callable[[str], None],
                  gui: str | None = None) -> None:
    """Open the app, launched as ``launch`` says, in a native window; returns when its
    windows are closed (see ``WindowSession``). ``on_ready`` is told the first page's
    address once it has loaded."""
    WindowSession(folder, launch, on_ready=on_ready, gui=gui).run()


class WindowSession:
    """The app in native windows, from the opening of the first to the close of the last.

    The server's socket and secret exist before the window, so every address is known
    from the start. On QtWebEngine the window shows the app through its own
    ``shoal://app`` scheme, and the host (the bridge) starts once the page has loaded:
    its imports do not stand between the user and the first paint, and a page's first
    bridge call waits in the listen queue until the host answers. Other renderers load
    the app server's URL, and the host starts at once. Where ``launch.entry`` is a
    plugin's page (``shoal test``'s runner), the window shows it from the app server.

    The host's modules are imported after PySide6, whose import hook would keep the
    source of each of them in memory, were it not for ``spare_import_hook_memory``.
    Imported before it instead, they would make the page paint 45 ms later (measured
    with QtWebEngine): they would no longer overlap the page's own loading.

    Threads: the session is made and ``run`` on the main thread, which the GUI loop then
    holds. pywebview's events come on the main thread (``initialized``), the GUI thread
    (``before_show``, and each load where the GUI thread reports them) or a thread of
    pywebview's (other loads); the page's window calls come from the host's thread.
    ``origin``, ``url`` and ``renderer`` are written before the first window shows, and
    only read after.
    """

    def __init__(self, folder: Path, launch: Launch, *, on_ready: Callable[[str], None],
                 gui: str | None = None) -> None:
        import dataclasses

        from shoal.net import bind_listener
        from shoal.runtime.config import default_data_dir, load_config
        from shoal.runtime.origins import own_listener
        from shoal.runtime.qtscheme import (
            network_flags,
            register_scheme,
            spare_import_hook_memory,
        )

        if hasattr(os, "geteuid") and os.geteuid() == 0:
            # Chromium's sandbox refuses to run as root; QtWebEngine must be told.
            os.environ.setdefault("QTWEBENGINE_DISABLE_SANDBOX", "1")
        self.config = config = launch.config or load_config(folder)
        self.data_dir = launch.data_dir or default_data_dir(config.id)
        if gui in (None, "qt") and os.environ.get("QT_API", "pyside6") == "pyside6" \
                and _module_exists("PySide6.QtWebEngineWidgets"):
            # What shoal[gui] installs (pywebview would try GTK first), driven through
            # PySide6: the window's scheme handler is PySide6 code, and pywebview's qtpy
            # layer would prefer PyQt if present.
            gui = "qt"
            os.environ["QT_API"] = "pyside6"
        self.gui = gui
        # A dev server's pages come through the app server, as a plugin's do.
        serves_itself = gui == "qt" and os.environ.get("QT_API") == "pyside6" and \
            launch.entry == "/" and launch.dev_url is None
        # Where the pages' origin is http://127.0.0.1:PORT, the same port each launch
        # keeps what they stored within reach.
        self.listener = bind_listener(launch.port) if serves_itself else \
            own_listener(config.id, launch.port)
        self.port = self.listener.getsockname()[1]
        self.secret = secrets.token_urlsafe(32)
        self.server_url = f"http://127.0.0.1:{self.port}{launch.entry}#shoal={self.secret}"
        # Possible only before Qt's application object exists, so before pywebview picks
        # a renderer.
        self.own_scheme = serves_itself and register_scheme()
        if gui in (None, "qt"):  # read when QtWebEngine starts, so before any window
            # Chromium's own log (D-Bus, GPU fallbacks) and Qt's notes (the sandbox is
            # off) are not the app's: only fatal ones, unless the user asked for more.
            os.environ.setdefault("QT_LOGGING_RULES", "default.info=false")
            flags = network_flags(config, self.port)
            if "--log-level" not in os.environ.get("QTWEBENGINE_CHROMIUM_FLAGS", ""):
                flags.append("--log-level=3")
            os.environ["QTWEBENGINE_CHROMIUM_FLAGS"] = " ".join(
                [os.environ.get("QTWEBENGINE_CHROMIUM_FLAGS", ""), *flags]).strip()
        if self.own_scheme:
            spare_import_hook_memory()
        self.origin = f"http://127.0.0.1:{self.port}"
        """The pages' origin: the app server's, or ``shoal://app`` where the Qt window
        shows the app through its own scheme."""
        self.url = self.server_url
        """The first page's address, with the launch secret."""
        self.renderer: str | None = None
        """pywebview's renderer (``qtwebengine``, ``gtkwebkit2``, ...), once chosen."""
        self.loads_on_gui_thread = False
        """The GUI thread reports the first window's loads (pywebview's thread then
        does not)."""
        self.dev = launch.dev
        self.on_dev = launch.on_dev
        self.on_ready = on_ready
        self._announced = False
        self._announcing = threading.Lock()
        self.leave = opener_for(config)
        self.backend = PywebviewBackend()
        self.host = _HostThread(folder, dataclasses.replace(
            launch, config=config, data_dir=self.data_dir, on_dev=self._dev_event),
            window=self.backend, listener=self.listener, secret=self.secret)
        self._scheme_handlers: list[Any] = []
        """Each window's scheme handler, kept alive as long as the session."""
        self._numbers = itertools.count(1)  # the first window is 0
        self.window: Any = None
        """The first window, once ``run`` has made it."""

    def run(self) -> None:
        """Show the first window and hold the thread until every window is closed."""
        import webview

        from shoal.runtime.config import WEBVIEW_STORAGE
        from shoal.runtime.display import exit_when_display_dies

        window = self.window = self.backend.window = self._create(self.server_url)
        self.backend.opener = self.open_window
        self.host.on_failure = window.destroy
        window.events.initialized += self._initialized
        window.events.before_show += self._before_show
        window.events.loaded += self._loaded
        stop_on_signals = _close_windows_on_signals(lambda: [*webview.windows])
        exit_when_display_dies(EXIT_GRACE)
        try:
            # pywebview would hand new-window requests (target=_blank, window.open)
            # straight to the system browser, around the shell permission and its rate
            # limit: they load in the window instead, where the navigation guard hands
            # them to ``leave``.
            webview.settings["OPEN_EXTERNAL_LINKS_IN_BROWSER"] = False
            webview.settings["ALLOW_FILE_URLS"] = False
            # The webview's storage (localStorage, IndexedDB, cookies) lives in the app's
            # data folder: it lasts across launches, every window of the app shares it,
            # and no other app (all have the origin shoal://app) can see it. pywebview
            # gives GTK windows the application's menu only, not one of their own.
            webview.start(gui=self.gui, private_mode=False,
                          storage_path=str(self.data_dir / WEBVIEW_STORAGE),
                          menu=[] if self.gui == "qt" else _menus(self.config, self.host))
        finally:
            stop_on_signals()
            self.host.stop()
        if self.host.failure is not None:
            raise self.host.failure

    def open_window(self, path: str) -> None:
        """Another window on ``path``, on the same origin and bridge, guarded as the
        first (any thread)."""
        import webview

        from shoal.runtime.fsapi import BridgeError

        if len(webview.windows) >= MAX_WINDOWS:
            raise BridgeError(f"{MAX_WINDOWS} windows are open already", code="EAGAIN")
        number = next(self._numbers)
        extra = self.backend.windows[number] = self._create(self._url_of(path, number))
        extra.events.closed += functools.partial(self._forget, number)
        extra.events.before_show += functools.partial(self._guard, extra)

    def _forget(self, number: int) -> None:
        self.backend.windows.pop(number, None)

    def _create(self, url: str) -> Any:
        import webview

        shape = self.config.window
        return webview.create_window(
            shape.title, url, width=shape.width, height=shape.height,
            resizable=shape.resizable, min_size=(shape.min_width, shape.min_height),
            menu=_menus(self.config, self.host) if self.gui == "qt" else [])

    def _url_of(self, path: str, number: int = 0) -> str:
        """A page of the app as window ``number`` loads it, with the launch secret."""
        from shoal.runtime.qtscheme import ORIGIN

        which = f"&window={number}" if number else ""
        if self.origin == ORIGIN:
            return f"{ORIGIN}{path}#shoal={self.secret}&bridge=127.0.0.1:{self.port}{which}"
        return f"http://127.0.0.1:{self.port}{path}#shoal={self.secret}{which}"

    def _dev_event(self, kind: str, line: str) -> None:
        if self.on_dev is not None:
            self.on_dev(kind, line)
        if kind == "inspector":  # the app's node, in a window beside the app's
            self._inspector_panel(line)

    def _inspector_panel(self, url: str) -> None:
        """Any thread. The inspector is a page of its own origin, with its own token."""
        import webview

        panel = webview.create_window(f"{self.config.window.title} — inspector", url,
                                      width=960, height=720)
        panel.events.before_show += functools.partial(_without_channel, panel)

    def _initialized(self, renderer: str) -> None:
        """Main thread: pywebview has chosen its renderer; no window exists yet."""
        from shoal.runtime.qtscheme import ORIGIN

        self.renderer = renderer
        if renderer == "qtwebengine":
            _one_qt_profile()
        if self.own_scheme and renderer == "qtwebengine":
            self.origin = ORIGIN
            self.url = self.window.real_url = self._url_of("/")
        else:
            self.host.start(self.origin)

    def _guard(self, shown: Any) -> Any:
        """GUI thread, before window ``shown`` shows: guarded as its renderer needs.
        Its view, or None for a pywebview unlike this one."""
        from shoal.runtime.qtscheme import ORIGIN

        if self.renderer == "gtkwebkit2":
            return self._guard_gtk(shown.native)
        if self.origin == ORIGIN:
            return self._guard_qt(shown.native)
        return None

    def _guard_qt(self, native: Any) -> Any:
        """The app's scheme on the window's profile, the navigation guard, and no
        pywebview channel."""
        from shoal.runtime.qtscheme import SCHEME, keep_navigation_on_app, scheme_handler

        profile = getattr(native, "profile", None)
        view = getattr(native, "webview", None)
        if profile is None or view is None:
            return None
        if profile.urlSchemeHandler(SCHEME) is None:  # the windows share one profile
            self._scheme_handlers.append(scheme_handler(self.config, self.port,
                                                        dev=self.dev))
            profile.installUrlSchemeHandler(SCHEME, self._scheme_handlers[-1])
        keep_navigation_on_app(view.page(), self.leave)
        # pywebview's own bridge would be a second way into Python, outside the policy.
        view.page().setWebChannel(None)
        self._desktop("qt").attach(view)
        return view

    def _guard_gtk(self, native: Any) -> Any:
        """The wall and the desktop integration."""
        from shoal.runtime.gtkwindow import guard_window, web_view

        view = web_view(native)
        if view is None:
            return None
        guard_window(view, self.origin, self.leave)
        self._desktop("gtk").attach(view)
        return view

    def _desktop(self, kind: str) -> Desktop:
        """The app's desktop integration, made with its first window."""
        if self.backend.desktop is None:
            if kind == "qt":
                from shoal.runtime.qtdesktop import QtDesktop

                self.backend.desktop = QtDesktop(self.config, self.host.emit)
            else:
                from shoal.runtime.gtkdesktop import GtkDesktop

                self.backend.desktop = GtkDesktop(self.config, self.host.emit)
        return self.backend.desktop

    def _show_tray(self) -> None:
        desktop = self.backend.desktop
        why = desktop.show_tray(self.backend.focus) if desktop is not None else None
        if why is not None:
            print(f"shoal: {why}", file=sys.stderr)

    def _before_show(self) -> None:
        """GUI thread: the first page has its URL but has not asked for it yet."""
        from shoal.runtime.qtscheme import ORIGIN, report_loads_plainly

        window = self.window
        if self.renderer == "gtkwebkit2":
            import webview

            from shoal.runtime.gtkwindow import report_loads

            view = self._guard(window)
            if view is not None:
                report_loads(view, functools.partial(self._after_load, load=window.load_url))
                self.loads_on_gui_thread = True
                self._show_tray()
                # PyGObject takes Python's signal wake-up for its own loop: GLib's
                # watch closes the windows here instead.
                _close_on_gtk_signals(lambda: [*webview.windows])
        if self.origin != ORIGIN:
            return
        view = self._guard(window)
        if view is None:  # a pywebview unlike this one: use the server
            self.origin, self.url = f"http://127.0.0.1:{self.port}", self.server_url
            self.host.start(self.origin)
            window.native.load_url(self.server_url)
            return
        self._show_tray()
        handler = getattr(window.native, "on_load_finished", None)
        if handler is not None and report_loads_plainly(
                view.page(), handler, functools.partial(self._qt_page_loaded, view)):
            self.loads_on_gui_thread = True
        timer = threading.Timer(HOST_DELAY, self.host.start, args=(ORIGIN,))
        timer.daemon = True
        timer.start()

    def _qt_page_loaded(self, view: Any) -> None:
        """The GUI thread, after a load: nothing here waits on another thread.
        pywebview's load_url would serve a non-HTTP address from a server of its own."""
        self._after_load(view.url().toString(), load=self.window.native.load_url)
        self.window.events.loaded.set()  # for pywebview's calls that wait for a load

    def _loaded(self) -> None:
        """A thread of pywebview's, after each load, unless the GUI thread has it
        covered."""
        from shoal.runtime.qtscheme import ORIGIN

        if self.loads_on_gui_thread:
            return
        self.host.start(self.origin)  # before waiting on the GUI thread for the address
        window = self.window
        self._after_load(address_within(window, ADDRESS_WAIT),
                         load=window.native.load_url if self.origin == ORIGIN
                         else window.load_url)

    def _after_load(self, url: str | None, *, load: Callable[[str], None]) -> None:
        """After each load of the first window; ``url`` is None when its address is
        not known."""
        self.host.start(self.origin)
        with self._announcing:
            first, self._announced = not self._announced, True
        if first:
            self.on_ready(self.url)
        if url is not None:
            keep_on_app(url, self.origin, load, self.leave)


def _without_channel(panel: Any) -> None:
    """Before a Qt panel shows: no pywebview channel in its page."""
    view = getattr(panel.native, "webview", None)
    if view is not None and hasattr(view, "page"):
        view.page().setWebChannel(None)


def _one_qt_profile() -> None:
    """Have pywebview's Qt windows share one persistent profile. It makes one per window,
    all on the same storage folder, which Chromium does not support (a second one on the
    folder may fail to load its pages); one profile is also what makes the windows of an
    app share what their pages store."""
    import webview.platforms.qt as qt_platform

    made = qt_platform.QWebEngineProfile
    if getattr(made, "shared_by_shoal", False):
        return
    shared: list[Any] = []

    def profile(*name: str) -> Any:
        if not name:  # an off-the-record profile: each its own
            return made()
        if not shared:
            shared.append(made(*name))
        return shared[0]

    profile.shared_by_shoal = True  # type: ignore[attr-defined]
    qt_platform.QWebEngineProfile = profile


EXIT_GRACE = 5
"""Seconds the process may take to end once the app's windows are closed."""


def end_within_grace() -> None:
    """Bound the process's end once the windows are closed: the webview's own teardown,
    in the C++ destructors that run as the interpreter exits, can hang (seen with
    QtWebEngine after a SIGTERM to the process group took its helper processes first).
    SIGALRM's default action then ends the process; no Python code needs to run."""
    import signal

    if hasattr(signal, "alarm") and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        signal.alarm(EXIT_GRACE)


def _destroy_all(windows: list[Any]) -> None:
    """Close ``windows`` as their close buttons would."""
    for shown in windows:
        with contextlib.suppress(Exception):  # closing already
            shown.destroy()


def _close_on_gtk_signals(windows: Callable[[], list[Any]]) -> None:
    """On GTK's thread: close ``windows()`` on SIGTERM or SIGINT, through GLib's own
    signal watch (see ``_close_windows_on_signals``)."""
    import signal

    from gi.repository import GLib

    def close() -> bool:
        _destroy_all(windows())
        return GLib.SOURCE_CONTINUE

    for number in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_HIGH, number, close)


def _close_windows_on_signals(windows: Callable[[], list[Any]]) -> Callable[[], None]:
    """Close the app's windows, as the user would, on SIGTERM or SIGINT (a logout, a
    service manager, Ctrl-C), so that the webview writes what its pages stored before
    the process ends; the GUI loop, which holds the main thread, would not see the
    signal otherwise. Returns what undoes it."""
    import signal
    import socket

    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    reader, writer = socket.socketpair()
    writer.setblocking(False)
    signals = (signal.SIGTERM, signal.SIGINT)
    previous = {number: signal.signal(number, lambda number, frame: None) for number in signals}
    previous_fd = signal.set_wakeup_fd(writer.fileno())

    def watch() -> None:
        with contextlib.suppress(OSError):
            while reader.recv(1):  # a signal's number; b"" once undone
                _destroy_all(windows())

    threading.Thread(target=watch, name="shoal-signals", daemon=True).start()

    def undo() -> None:
        signal.set_wakeup_fd(previous_fd)
        for number, handler in previous.items():
            signal.signal(number, handler)
        writer.close()
        with contextlib.suppress(OSError):
            reader.shutdown(socket.SHUT_RDWR)

    return undo


def _menus(config: AppConfig, host: _HostThread) -> list[Any]:
    """The window's menus from ``[[menu]]``: choosing an item tells the pages its id."""
    from webview.menu import Menu, MenuAction, MenuSeparator

    def chosen(ident: str) -> Callable[[], None]:
        return lambda: host.emit("window.menu", {"id": ident})

    return [Menu(title, [MenuAction(item.label, chosen(item.id)) if item.label
                         else MenuSeparator() for item in items])
            for title, items in config.menu]


class _HostThread:
    """The app host on its own asyncio loop and thread, started at most once."""

    def __init__(self, folder: Path, launch: Launch, **host_options: Any) -> None:
        self.folder = folder
        self.launch = launch
        self.options = host_options
        self.failure: BaseException | None = None
        self.on_failure: Callable[[], None] = lambda: None
        self._thread = threading.Thread(target=self._serve, name="shoal-app", daemon=True)
        self._lock = threading.Lock()
        self._closed = False
        self._loop: Any = None
        self._loop_ready = threading.Event()
        self._host: Any = None

    def start(self, page_origin: str) -> None:
        with self._lock:
            if self._thread.ident is None and not self._closed:
                self.options["page_origin"] = page_origin
                self._thread.start()

    def emit(self, event: str, data: dict[str, Any]) -> None:
        """Send an event to the app's pages, from any thread."""
        host, loop = self._host, self._loop
        if host is not None and host.server is not None and loop is not None:
            loop.call_soon_threadsafe(host.server.emit, event, data)

    def stop(self) -> None:
        with self._lock:
            self._closed = True
        if self._thread.ident is None:
            return
        if self._loop_ready.wait(timeout=10) and self._thread.is_alive():
            with contextlib.suppress(RuntimeError):  # it closed its loop meanwhile
                self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def _serve(self) -> None:
        import asyncio

        # Not uvloop, even where installed: in the window it saves no measurable time
        # per bridge call (the webview's own WebSocket path dominates) and costs 2 MB.
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        self._loop_ready.set()
        try:
            from shoal.runtime.host import AppHost

            host = self._host = AppHost(self.folder, self.launch, **self.options)
            loop.run_until_complete(host.start())
        except BaseException as exc:  # re-raised on the main thread once the window is gone
            self.failure = exc
            self.on_failure()
            loop.close()
            return
        loop.run_forever()
        loop.run_until_complete(host.close())
        loop.close()
