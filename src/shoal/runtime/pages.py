"""The app's pages as served: the policy, the headers, which files, the import map.

Kept apart from the server, and free of any web framework, so that whatever serves the
pages (the app server, or the native window's own scheme) applies the same rules.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import mimetypes
import os
import re
from html import escape
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
IMPORT_MAP = '{"imports":{"shoal:api":"/_shoal/api.js","shoal:test":"/_shoal/test.js"}}'
IMPORT_MAP_TAG = f'<script type="importmap">{IMPORT_MAP}</script>'
_HEAD = re.compile(r"<head(\s[^>]*)?>", re.IGNORECASE)
_DOCTYPE = re.compile(r"\ufeff?\s*<!doctype[^>]*>", re.IGNORECASE)
_CASE_SENSITIVE_KEYWORD = re.compile(r"'(sha256|sha384|sha512|nonce)-", re.IGNORECASE)
HIDDEN = {"shoal.toml", "app.py", "__pycache__", IDENTITY_FILE}
"""Never served, by name in any case: a node key an older Shoal left in a data folder
inside the app folder among them."""


def content_security_policy(port: int, extra: dict[str, tuple[str, ...]], *,
                            api_origin: str | None = None) -> str:
    """The page's policy: only the app's own files, the bridge and bulk reads on
    ``port``, and the ``shoal:api`` module: from ``api_origin`` when given, else through
    the import map, whose hash is then the one inline script allowed."""
    if api_origin is None:
        digest = hashlib.sha256(IMPORT_MAP.encode()).digest()
        api_source = f"'sha256-{base64.b64encode(digest).decode()}'"
    else:
        api_source = api_origin
    policy: dict[str, list[str]] = {
        "default-src": ["'none'"],
        "script-src": ["'self'", api_source],
        "style-src": ["'self'"],
        "img-src": ["'self'", "blob:"],
        "font-src": ["'self'"],
        "media-src": ["'self'", "blob:"],
        "connect-src": [f"ws://127.0.0.1:{port}{BRIDGE_PATH}",
                        f"http://127.0.0.1:{port}{FILE_PATH}"],
        "worker-src": ["'self'"],
        "manifest-src": ["'self'"],
        "base-uri": ["'none'"],
        "form-action": ["'none'"],
        "frame-ancestors": ["'none'"],
        "object-src": ["'none'"],
    }
    for directive, sources in extra.items():
        current = policy.setdefault(directive, [])
        if current == ["'none'"]:
            current.clear()
        current.extend(s for s in sources if s not in current)
    return "; ".join(f"{k} {' '.join(v)}" for k, v in policy.items())


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
    root = config.root
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
    html = raw.decode("utf-8", errors="replace")
    added = DEV_TAG if dev else ""
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
@functools.cache
def asset(name: str) -> str:
    """One of the runtime's own files (``api.js``, ``shoal.d.ts``)."""
    return asset_path(name).read_text(encoding="utf-8")


def asset_path(name: str) -> Path:
    """Where one of the runtime's own files is."""
    return Path(str(resources.files("shoal.runtime").joinpath("assets", name)))
