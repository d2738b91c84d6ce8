"""The window's own URL scheme on QtWebEngine: the app's pages at ``shoal://app/``.

QtWebEngine asks a handler on its GUI thread for every page, script and style sheet,
so the window shows the app without waiting for the app server, which starts once the
page has loaded and carries the bridge and bulk file reads (``fs.readFile`` fetches
them cross-origin, which the server allows for this origin alone). Pages get the same
policy and headers as pages from the server.

``import ... from "shoal:api"`` needs no import map here: Chromium reads ``shoal:api``
as ``shoal://api/``, which this handler answers with the API module. QtWebEngine
lowercases the values of the headers a scheme handler sets, which would break a hash
an app adds to the policy in ``[csp]``: such directives go into the header widened and
into the page's ``<meta>`` element exact (``pages.lowercase_safe``).

A browser sends no report of what a ``<meta>`` policy refuses, and the window has no
console in sight: ``hear_refusals`` has a script of Shoal's own, in a world of its own
beside the page's, print each ``securitypolicyviolation`` to the page's console, where
the window reads it and tells the app host (the header's policy reports nowhere, so
nothing is told twice).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from shoal.runtime.config import AppConfig, csp_hosts
from shoal.runtime.pages import (
    API_PATH,
    DEV_PATH,
    LAUNCH_PATH,
    TYPES_PATH,
    app_file,
    asset,
    content_security_policy,
    content_type,
    lowercase_safe,
    on_origin,
    open_app_file,
    page_inline,
    page_text,
    security_headers,
)

SCHEME = b"shoal"
ORIGIN = "shoal://app"
API_ORIGIN = "shoal://api"
REFUSAL_MARK = "\x01shoal-refused "
"""How a console line of the refusal watcher starts; a JSON ``csp-report`` object
follows."""
REFUSAL_WATCHER = """
document.addEventListener("securitypolicyviolation", (event) => {
  console.debug(MARK + JSON.stringify({
    "effective-directive": event.effectiveDirective, "blocked-uri": event.blockedURI,
    "script-sample": event.sample, "source-file": event.sourceFile,
    "line-number": event.lineNumber, "document-uri": event.documentURI,
  }));
}, true);
""".replace("MARK", json.dumps(REFUSAL_MARK))


def register_scheme() -> bool:
    """Declare ``shoal:`` to QtWebEngine. Must run before Qt's application object exists;
    False where QtWebEngine is not installed."""
    try:
        from PySide6.QtWebEngineCore import QWebEngineUrlScheme
    except ImportError:
        return False
    if QWebEngineUrlScheme.schemeByName(SCHEME).name() == SCHEME:
        return True
    scheme = QWebEngineUrlScheme(SCHEME)
    scheme.setSyntax(QWebEngineUrlScheme.Syntax.Host)
    flag = QWebEngineUrlScheme.Flag
    # Secure: the page is a secure context. CorsEnabled: module scripts load from it.
    scheme.setFlags(flag.SecureScheme | flag.CorsEnabled | flag.FetchApiAllowed)
    QWebEngineUrlScheme.registerScheme(scheme)
    return True


def network_flags(config: AppConfig, bridge_port: int) -> list[str]:
    """Chromium switches that keep the window's network to what the app declared.

    A page's ``RTCPeerConnection`` ignores the policy's ``connect-src``: it would reach
    any address over UDP (STUN) or TCP (TURN). WebRTC may use UDP only through a proxy
    here, and every connection the policy does not name goes to a "proxy" that is the
    app server itself, which refuses it (no ``CONNECT``, and a foreign ``Host``). The
    bridge and the hosts in ``[csp]`` are reached directly. ``<-loopback>`` comes first:
    Chromium otherwise reaches every loopback address directly."""
    bypass = ["<-loopback>", f"127.0.0.1:{bridge_port}", *csp_hosts(config.csp)]
    return ["--force-webrtc-ip-handling-policy=disable_non_proxied_udp",
            f"--proxy-server=http://127.0.0.1:{bridge_port}",
            f"--proxy-bypass-list={';'.join(bypass)}"]


def spare_import_hook_memory() -> None:
    """Keep PySide6's import hook from holding the source of every later module.

    Importing PySide6 replaces ``__import__`` with a hook that asks, of each module
    imported after it, whether its source names PySide6 (only such a module may switch
    on PySide's ``__feature__`` options). It reads the source through ``linecache``,
    where the text then stays: pywebview's Qt modules, asyncio and the app host's held
    6-7 MB of the window process that way (measured with QtWebEngine). Here the same
    question is answered from the file, read and let go. Nothing changes where PySide6
    has no such hook.
    """
    import sys

    feature = sys.modules.get("shibokensupport.feature")
    if feature is not None and callable(getattr(feature, "_mod_uses_pyside", None)):
        feature._mod_uses_pyside = _source_names_pyside


def _source_names_pyside(module: Any) -> bool:
    path = getattr(module, "__file__", None)
    if not isinstance(path, str) or not path.endswith(".py"):
        return False  # the hook's own answer where a module has no source
    try:
        with open(path, "rb") as source:
            return b"PySide6" in source.read()
    except OSError:
        return False


class Answer(NamedTuple):
    """What the handler replies: a body (bytes, or a file Qt reads itself)."""

    kind: str
    body: bytes = b""
    file: Path | None = None
    cross_origin: bool = False
    """Loaded by the app's pages from another origin (the API module)."""
    policy: str | None = None
    """A page's own policy header, when its inline code widens the common one."""


def answer(config: AppConfig, *, host: str, path: str, method: bytes,
           policy: str | None = None, dev: bool = False,
           bridge_port: int | None = None) -> Answer | None:
    """The answer to one request to ``shoal://``, or None for "not found". ``policy``:
    what pages must also carry in a ``<meta>`` element (see ``lowercase_safe``).
    ``bridge_port``: given, a page whose file holds inline code gets a policy of its own
    that allows it by hash."""
    if method != b"GET":
        return None
    if host == "api" and path in ("", "/"):
        return Answer("text/javascript", asset("api.js").encode(), cross_origin=True)
    if host != "app":
        return None
    if path == API_PATH:  # the same module instance as "shoal:api", not a second one
        return Answer("text/javascript", b'export * from "shoal:api";\n')
    if path == TYPES_PATH:
        return Answer("text/plain", asset("shoal.d.ts").encode())
    if path == LAUNCH_PATH:
        return Answer("text/javascript", asset("launch.js").encode())
    if path == DEV_PATH and dev:
        return Answer("text/javascript", asset("dev.js").encode())
    target = app_file(config, path)
    opened = open_app_file(target) if target is not None else None
    if target is None or opened is None:  # a FIFO or a device is not a page file
        return None
    with opened:
        kind = content_type(target)
        if kind == "text/html":  # read as UTF-8, so served so (Chromium's default differs)
            html = opened.read().decode("utf-8", errors="replace")
            inline = page_inline(config.pages, target, html) if bridge_port is not None \
                else {}
            header = None
            if inline:
                assert bridge_port is not None
                header, policy = lowercase_safe(content_security_policy(
                    bridge_port, config.csp, api_origin=API_ORIGIN, inline=inline,
                    report=False))
            page = page_text(html, import_map=False, policy=policy, dev=dev)
            return Answer("text/html; charset=utf-8", page.encode(), policy=header)
    return Answer(kind, file=target)


def scheme_handler(config: AppConfig, bridge_port: int, *, dev: bool = False) -> Any:
    """A ``QWebEngineUrlSchemeHandler`` serving ``config``'s app (needs PySide6)."""
    from PySide6.QtCore import QBuffer, QByteArray, QFile, QIODevice
    from PySide6.QtWebEngineCore import QWebEngineUrlRequestJob, QWebEngineUrlSchemeHandler

    policy, exact = lowercase_safe(
        content_security_policy(bridge_port, config.csp, api_origin=API_ORIGIN, report=False))

    def header_map(headers: dict[str, str]) -> dict[Any, list[Any]]:
        # PySide6 takes a QMultiMap<QByteArray, QByteArray> as a dict of lists.
        return {QByteArray(k.encode()): [QByteArray(v.encode())] for k, v in headers.items()}

    headers = security_headers(policy, isolated=config.cross_origin_isolated)
    common = header_map(headers)
    shared = header_map({**headers,
                         "Cross-Origin-Resource-Policy": "cross-origin",
                         "Access-Control-Allow-Origin": ORIGIN})
    read_only = QIODevice.OpenModeFlag.ReadOnly

    class AppSchemeHandler(QWebEngineUrlSchemeHandler):
        def requestStarted(self, job: QWebEngineUrlRequestJob) -> None:
            url = job.requestUrl()
            try:
                reply = answer(config, host=url.host(), path=url.path(),
                               method=bytes(job.requestMethod().data()), policy=exact,
                               dev=dev, bridge_port=bridge_port)
            except OSError:  # unreadable file: fail this request, not the window
                job.fail(QWebEngineUrlRequestJob.Error.RequestFailed)
                return
            if reply is None:
                job.fail(QWebEngineUrlRequestJob.Error.UrlNotFound)
                return
            if reply.file is not None:
                device: Any = QFile(str(reply.file), job)
                if not device.open(read_only):
                    job.fail(QWebEngineUrlRequestJob.Error.RequestFailed)
                    return
            else:
                device = QBuffer(job)
                device.setData(QByteArray(reply.body))
                device.open(read_only)
            if reply.policy is not None:
                own = header_map({**headers, "Content-Security-Policy": reply.policy})
                job.setAdditionalResponseHeaders(own)
            else:
                job.setAdditionalResponseHeaders(shared if reply.cross_origin else common)
            job.reply(QByteArray(reply.kind.encode()), device)

    return AppSchemeHandler()


def keep_navigation_on_app(page: Any, leave: Callable[[str], None],
                           origin: str = ORIGIN) -> None:
    """Keep a ``QWebEnginePage`` on the app: a top-level navigation anywhere but
    ``origin`` (``shoal://app/``, or the app server's) is refused before it starts (the
    page stays as it is), and ``leave`` gets the address, to open it in the system
    browser."""

    def navigation_requested(request: Any) -> None:
        url = request.url().toString()
        if not request.isMainFrame() or on_origin(url, origin):
            return
        request.reject()
        leave(url)

    page.navigationRequested.connect(navigation_requested)


def report_loads_plainly(page: Any, pywebview_handler: Callable[[bool], None],
                         loaded: Callable[[], object]) -> bool:
    """Call ``loaded`` when a load of ``page`` finishes, in place of pywebview's handler,
    which would run pywebview's JS API and QWebChannel's script in the page, outside its
    policy (and to no use: the page has no channel). False, with nothing changed, where
    that handler is not connected."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # PySide6 warns when not connected
        if not page.loadFinished.disconnect(pywebview_handler):
            return False
    page.loadFinished.connect(lambda ok: loaded())
    return True


def hear_refusals(page_class: Any, told: Callable[[dict[str, Any]], None]) -> None:
    """Hand ``told`` each refusal a page of ``page_class`` (a ``QWebEnginePage`` class)
    hears of, as a ``csp-report`` object, once ``watch_refusals`` watches the page. Call
    before the first page of the class exists (Qt looks for a Python override of a
    page's console once per page)."""
    from PySide6.QtWebEngineCore import QWebEnginePage

    def console(page: Any, level: Any, message: str, line: int, source: str) -> None:
        if not message.startswith(REFUSAL_MARK):
            QWebEnginePage.javaScriptConsoleMessage(page, level, message, line, source)
            return
        try:
            report = json.loads(message[len(REFUSAL_MARK):])
        except ValueError:
            return
        if isinstance(report, dict):
            told(report)

    page_class.javaScriptConsoleMessage = console


def watch_refusals(page: Any) -> None:
    """Have ``page`` print what its policy refuses to its console (``hear_refusals``),
    from a script in a world of Shoal's own: the page's scripts can neither see nor
    remove it, and the policy does not apply to it."""
    from PySide6.QtWebEngineCore import QWebEngineScript

    script = QWebEngineScript()
    script.setName("shoal-refusals")
    script.setSourceCode(REFUSAL_WATCHER)
    script.setInjectionPoint(QWebEngineScript.InjectionPoint.DocumentCreation)
    script.setWorldId(QWebEngineScript.ScriptWorldId.ApplicationWorld)
    script.setRunsOnSubFrames(True)
    page.scripts().insert(script)
