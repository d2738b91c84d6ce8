"""The app's pages as served: the policy, the headers, which files, the import map.

Kept apart from the server, and free of any web framework, so that whatever serves the
pages (the app server, or the native window's own scheme) applies the same rules.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import mimetypes
import os
import re
from html import escape
from html.parser import HTMLParser
from importlib import resources
from pathlib import Path
from typing import BinaryIO

from shoal.runtime.beneath import regular_file
from shoal.runtime.config import IDENTITY_FILE, AppConfig

BRIDGE_PATH = "/_shoal/bridge"
FILE_PATH = "/_shoal/file"
API_PATH = "/_shoal/api.js"
TYPES_PATH = "/_shoal/shoal.d.ts"
DEV_PATH = "/_shoal/dev.js"
DEV_TAG = f'<script type="module" src="{DEV_PATH}"></script>'
"""Added to every page under ``shoal dev``: error overlay and reloads, in a module graph
of its own so that it runs even when the app's script cannot."""
TEST_MODULE_PATH = "/_shoal/test.js"
TEST_PAGE_PATH = "/_shoal/test.html"
TEST_RUNNER_PATH = "/_shoal/test-run.js"
TEST_LIST_PATH = "/_shoal/tests.js"
REPORT_PATH = "/_shoal/csp-report"
"""Where the browser reports what the policy refused (``report-uri``)."""
IMPORT_MAP = '{"imports":{"shoal:api":"/_shoal/api.js","shoal:test":"/_shoal/test.js"}}'
IMPORT_MAP_TAG = f'<script type="importmap">{IMPORT_MAP}</script>'
_HEAD = re.compile(r"<head(\s[^>]*)?>", re.IGNORECASE)
_DOCTYPE = re.compile(r"\ufeff?\s*<!doctype[^>]*>", re.IGNORECASE)
_CASE_SENSITIVE_KEYWORD = re.compile(r"'(sha256|sha384|sha512|nonce)-", re.IGNORECASE)
HIDDEN = {"shoal.toml", "app.py", "__pycache__", IDENTITY_FILE}
"""Never served, by name in any case: a node key an older Shoal left in a data folder
inside the app folder among them."""
INLINE_RECORD = ".shoal-inline.json"
"""In an app from an archive: the hashes of each page's inline code, as signed by
``shoal build`` (``{"pages": {"index.html": {"script-src": [...], ...}}}``)."""
_HASH_SOURCE = re.compile(r"^'sha256-[A-Za-z0-9+/]{43}='$")


def content_security_policy(port: int, extra: dict[str, tuple[str, ...]], *,
                            api_origin: str | None = None,
                            inline: dict[str, tuple[str, ...]] | None = None,
                            host: str = "127.0.0.1") -> str:
    """The page's policy: only the app's own files, the bridge and bulk reads on
    ``host:port``, and the ``shoal:api`` module: from ``api_origin`` when given, else
    through the import map, whose hash is then allowed as inline script. ``inline``: the
    hashes of one page's own inline code (``inline_hashes``). Refusals are reported to
    ``REPORT_PATH`` there."""
    api_source = _hash_source(IMPORT_MAP) if api_origin is None else api_origin
    policy: dict[str, list[str]] = {
        "default-src": ["'none'"],
        "script-src": ["'self'", api_source, "'report-sample'"],
        "style-src": ["'self'", "'report-sample'"],
        "img-src": ["'self'", "blob:"],
        "font-src": ["'self'"],
        "media-src": ["'self'", "blob:"],
        "connect-src": ["'self'", f"ws://{host}:{port}{BRIDGE_PATH}",
                        f"http://{host}:{port}{FILE_PATH}"],
        "worker-src": ["'self'"],
        "manifest-src": ["'self'"],
        "base-uri": ["'none'"],
        "form-action": ["'none'"],
        "frame-ancestors": ["'none'"],
        "object-src": ["'none'"],
    }
    for directive, sources in [*extra.items(), *(inline or {}).items()]:
        current = policy.setdefault(directive, [])
        if current == ["'none'"]:
            current.clear()
        current.extend(s for s in sources if s not in current)
    policy["report-uri"] = [f"http://{host}:{port}{REPORT_PATH}"]
    return "; ".join(f"{k} {' '.join(v)}" for k, v in policy.items())


def _hash_source(text: str) -> str:
    digest = hashlib.sha256(text.encode()).digest()
    return f"'sha256-{base64.b64encode(digest).decode()}'"


def inline_hashes(html: str) -> dict[str, tuple[str, ...]]:
    """What the policy must add so that a page's own inline code runs, and nothing else
    inline: the hash of each inline ``<script>`` (under ``script-src``), and of each
    ``<style>`` element and ``style`` attribute (under ``style-src``, with
    ``'unsafe-hashes'`` when there are attributes). Event-handler attributes and
    ``javascript:`` URLs are never added: they stay refused."""
    collector = _InlineCode()
    # The browser hashes the text as parsed, after line ends became "\n".
    collector.feed(html.replace("\r\n", "\n").replace("\r", "\n"))
    collector.close()
    out: dict[str, tuple[str, ...]] = {}
    if collector.scripts:
        out["script-src"] = tuple(dict.fromkeys(map(_hash_source, collector.scripts)))
    styles = [_hash_source(text) for text in collector.styles]
    if collector.style_attributes:
        styles += ["'unsafe-hashes'", *map(_hash_source, collector.style_attributes)]
    if styles:
        out["style-src"] = tuple(dict.fromkeys(styles))
    return out


def inline_record(pages: dict[str, str]) -> bytes:
    """``INLINE_RECORD`` for an archive whose HTML files are ``pages`` (path -> text)."""
    record = {path: {k: list(v) for k, v in inline_hashes(html).items()}
              for path, html in sorted(pages.items())}
    return json.dumps({"pages": record}, indent=1, sort_keys=True).encode()


def page_inline(root: Path, page: Path, html: str) -> dict[str, tuple[str, ...]]:
    """The hashes of the inline code of ``page`` (a file under ``root`` whose text is
    ``html``): those signed in the app's ``INLINE_RECORD`` when it came from an archive,
    else computed from ``html``."""
    root = Path(os.path.realpath(root))
    try:
        stamp = (root / INLINE_RECORD).stat().st_mtime_ns
    except OSError:
        return inline_hashes(html)
    recorded = _read_inline_record(root, stamp)
    return recorded.get(page.relative_to(root).as_posix(), {})


@functools.lru_cache(maxsize=8)
def _read_inline_record(root: Path, stamp: int) -> dict[str, dict[str, tuple[str, ...]]]:
    """The record's pages, each with only what a record may hold: hashes, and
    ``'unsafe-hashes'`` for style attributes (anything else is dropped)."""
    try:
        pages = json.loads((root / INLINE_RECORD).read_bytes())["pages"]
        assert isinstance(pages, dict)
    except (OSError, ValueError, KeyError, TypeError, AssertionError):
        return {}
    allowed = {"script-src": _HASH_SOURCE.pattern, "style-src": r"^'unsafe-hashes'$|"
               + _HASH_SOURCE.pattern}
    out: dict[str, dict[str, tuple[str, ...]]] = {}
    for path, directives in pages.items():
        if not isinstance(directives, dict):
            continue
        out[path] = {d: tuple(s for s in sources if isinstance(s, str)
                              and re.match(allowed[d], s))
                     for d, sources in directives.items()
                     if d in allowed and isinstance(sources, list)}
    return out


class _InlineCode(HTMLParser):
    """Collects the text of inline ``<script>`` and ``<style>`` elements and the values
    of ``style`` attributes."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.scripts: list[str] = []
        self.styles: list[str] = []
        self.style_attributes: list[str] = []
        self._open: list[str] | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name == "style" and value is not None:
                self.style_attributes.append(value)
        if tag == "script" and not any(name == "src" for name, _ in attrs):
            self._open, self._text = self.scripts, []
        elif tag == "style":
            self._open, self._text = self.styles, []

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:  # <script/> is no element of its own in HTML
            if name == "style" and value is not None:
                self.style_attributes.append(value)

    def handle_data(self, data: str) -> None:
        if self._open is not None:
            self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if self._open is not None and tag in ("script", "style"):
            self._open.append("".join(self._text))
            self._open = None


def security_headers(csp: str, *, isolated: bool = False) -> dict[str, str]:
    """Headers every response to the page carries; ``isolated`` adds COOP and COEP."""
    headers = {
        "Content-Security-Policy": csp,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cross-Origin-Resource-Policy": "same-origin",
        "X-Frame-Options": "DENY",
        "Cache-Control": "no-store",
    }
    if isolated:
        headers["Cross-Origin-Opener-Policy"] = "same-origin"
        headers["Cross-Origin-Embedder-Policy"] = "require-corp"
    return headers


def on_origin(url: str, origin: str) -> bool:
    """Whether ``url`` is a page of ``origin`` (the app's), so the window may show it."""
    return url == origin or url.startswith((origin + "/", origin + "?", origin + "#"))


def app_file(config: AppConfig, relative: str) -> Path | None:
    """The file of the app at URL path ``relative``, or None when it is missing, hidden
    (dotfiles, ``shoal.toml``, ``app.py``) or resolves outside the app folder. Hidden
    names are looked for in the URL and in the file it resolves to (an app's own link
    to ``shoal.toml`` is hidden too), without regard to case."""
    relative = relative.lstrip("/") or config.entry
    if "\x00" in relative or _hidden(Path(relative).parts):
        return None
    root = Path(os.path.realpath(config.pages))
    target = Path(os.path.realpath(root / relative))
    if not str(target).startswith(str(root) + os.sep) or not target.is_file():
        return None
    if _hidden(target.relative_to(root).parts):
        return None
    return target


def open_app_file(target: Path) -> BinaryIO | None:
    """``target`` (an ``app_file``) open for reading, or None unless it is still a
    regular file: one swapped since for a link, a FIFO or a device is neither followed
    nor waited on."""
    try:
        descriptor = os.open(target, os.O_RDONLY | _NONBLOCK | _NOFOLLOW | _CLOEXEC)
    except OSError:
        return None
    try:
        regular_file(descriptor, str(target))
    except OSError:
        os.close(descriptor)
        return None
    return os.fdopen(descriptor, "rb")


_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def _hidden(parts: tuple[str, ...]) -> bool:
    return any(p.startswith(".") or p.casefold() in HIDDEN for p in parts)


def content_type(path: Path) -> str:
    return mimetypes.guess_type(path.name)[0] or "application/octet-stream"


def page_html(path: Path | BinaryIO, *, import_map: bool = True, policy: str | None = None,
              dev: bool = False) -> str:
    """An HTML page (a file, or one open already) as served: with the ``shoal:api``
    import map at the start of its head unless it has its own (or ``import_map`` is
    false), ``DEV_TAG`` after it when ``dev``, and ``policy``, if given, in a ``<meta>``
    element before everything else the page holds."""
    raw = path.read_bytes() if isinstance(path, Path) else path.read()
    return page_text(raw.decode("utf-8", errors="replace"),
                     import_map=import_map, policy=policy, dev=dev)


def page_text(html: str, *, import_map: bool = True, policy: str | None = None,
              dev: bool = False, head: str = "") -> str:
    """``page_html`` of a page's text; ``head``: more markup for the start of its head."""
    added = (DEV_TAG if dev else "") + head
    if import_map and "importmap" not in html:
        added = IMPORT_MAP_TAG + added
    if added:
        found = _HEAD.search(html)
        html = _insert(html, found.end() if found else _document_start(html), added)
    if policy is not None:
        meta = f'<meta http-equiv="Content-Security-Policy" content="{escape(policy)}">'
        html = _insert(html, _document_start(html), meta)
    return html


def _document_start(html: str) -> int:
    """Where a page's content starts: after its doctype (an element before that would
    put the page in quirks mode)."""
    doctype = _DOCTYPE.match(html)
    return doctype.end() if doctype else 0


def _insert(html: str, at: int, markup: str) -> str:
    return html[:at] + markup + html[at:]


def lowercase_safe(policy: str) -> tuple[str, str | None]:
    """``policy`` for a header whose value will be lowercased (QtWebEngine does that to
    headers from a scheme handler): the header's policy, which means the same or more
    in lower case, and the directives it had to widen, exact, for the page's ``<meta>``
    element (None if none). A page enforces both, which together are ``policy``.

    Widened: a hash source becomes ``'unsafe-inline'``, and a URL source whose path has
    capitals (paths match case-sensitively) becomes its scheme and host."""
    header, exact = [], []
    for directive in policy.split("; "):
        name, *sources = directive.split(" ")
        widened = [_lowercase_safe_source(source) for source in sources]
        if widened != sources:
            exact.append(directive)
        header.append(" ".join([name, *dict.fromkeys(widened)]))
    return "; ".join(header), "; ".join(exact) or None


def _lowercase_safe_source(source: str) -> str:
    if _CASE_SENSITIVE_KEYWORD.match(source):  # all of them: next to a hash that stays,
        return "'unsafe-inline'"               # 'unsafe-inline' would be ignored
    scheme, separator, rest = source.partition("://")
    if not separator:
        scheme, rest = "", source
    host, _, path = rest.partition("/")
    if path == path.lower():  # scheme and host do not care about case
        return source
    return f"{scheme}{separator}{host}"


@functools.cache
def asset(name: str) -> str:
    """One of the runtime's own files (``api.js``, ``shoal.d.ts``)."""
    return asset_path(name).read_text(encoding="utf-8")


def asset_path(name: str) -> Path:
    """Where one of the runtime's own files is."""
    return Path(str(resources.files("shoal.runtime").joinpath("assets", name)))
