"""The window on WebKitGTK (pywebview's ``gtk`` renderer): the same wall as on Qt.

pywebview gives every page in its GTK window a message handler, ``jsBridge``, through
which any script can call into pywebview (move the window, show message boxes, and
whatever else it exposes). Shoal's pages reach Python through the bridge alone, so the
handler is taken away before the page loads. Navigation away from the app is refused
before it happens, as on Qt, and the address goes to the system browser. WebRTC, which
the policy does not govern, stays switched off.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from shoal.runtime.pages import on_origin


def web_view(native: Any) -> Any:
    """The ``WebKit2.WebView`` in ``native``, pywebview's ``Gtk.Window``, or None."""
    from gi.repository import WebKit2

    return _find(native, WebKit2.WebView)


def guard_window(view: Any, origin: str, leave: Callable[[str], None]) -> None:
    """Apply the wall to ``view``, which shows the app at ``origin``."""
    from gi.repository import WebKit2

    view.get_user_content_manager().unregister_script_message_handler("jsBridge")
    view.connect("decide-policy", _keep_on(origin, leave, WebKit2))
    settings = view.get_settings()
    for name in ("enable-webrtc", "enable-media-stream"):  # off by default; kept so
        if settings.find_property(name) is not None:      # (WebRTC ignores the policy)
            settings.set_property(name, False)


def report_loads(view: Any, loaded: Callable[[str], None]) -> None:
    """Call ``loaded`` on GTK's thread with the address of each page ``view`` has
    finished loading."""
    from gi.repository import WebKit2

    def changed(view: Any, event: Any) -> None:
        if event == WebKit2.LoadEvent.FINISHED:
            loaded(view.get_uri() or "")

    view.connect("load-changed", changed)


def _find(widget: Any, kind: type) -> Any:
    if isinstance(widget, kind):
        return widget
    for child in widget.get_children() if hasattr(widget, "get_children") else ():
        found = _find(child, kind)
        if found is not None:
            return found
    return None


def _keep_on(origin: str, leave: Callable[[str], None], WebKit2: Any) -> Callable[..., bool]:
    navigations = (WebKit2.PolicyDecisionType.NAVIGATION_ACTION,
                   WebKit2.PolicyDecisionType.NEW_WINDOW_ACTION)

    def decide(view: Any, decision: Any, kind: Any) -> bool:
        if kind not in navigations:
            return False
        uri = decision.get_navigation_action().get_request().get_uri() or ""
        if on_origin(uri, origin) or uri == "about:blank":
            return False
        decision.ignore()
        leave(uri)
        return True

    return decide
