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
from importlib import resources
from pathlib import Path

from shoal.runtime.config import AppConfig

BRIDGE_PATH = "/_shoal/bridge"
FILE_PATH = "/_shoal/file"
API_PATH = "/_shoal/api.js"
TYPES_PATH = "/_shoal/shoal.d.ts"
IMPORT_MAP = '{"imports":{"shoal:api":"/_shoal/api.js"}}'
IMPORT_MAP_TAG = f'<script type="importmap">{IMPORT_MAP}</script>'
HIDDEN = {"shoal.toml", "app.py", "__pycache__"}


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
    return url == origin or url.startswith(origin + "/")


def app_file(config: AppConfig, relative: str) -> Path | None:
    """The file of the app at URL path ``relative``, or None when it is missing, hidden
    (dotfiles, ``shoal.toml``, ``app.py``) or resolves outside the app folder."""
    relative = relative.lstrip("/") or config.entry
    if any(p.startswith(".") or p in HIDDEN for p in Path(relative).parts):
        return None
    root = config.root
    target = Path(os.path.realpath(root / relative))
    if not str(target).startswith(str(root) + os.sep) or not target.is_file():
        return None
    return target


def content_type(path: Path) -> str:
    return mimetypes.guess_type(path.name)[0] or "application/octet-stream"


def page_html(path: Path, *, import_map: bool = True) -> str:
    """An HTML page as served: with the ``shoal:api`` import map unless it has its own
    (or ``import_map`` is false)."""
    html = path.read_text(encoding="utf-8", errors="replace")
    if not import_map or "importmap" in html:
        return html
    at = html.lower().find("<head>")
    if at >= 0:
        at += len("<head>")
        return html[:at] + IMPORT_MAP_TAG + html[at:]
    return IMPORT_MAP_TAG + html


@functools.cache
def asset(name: str) -> str:
    """One of the runtime's own files (``api.js``, ``shoal.d.ts``)."""
    return resources.files("shoal.runtime").joinpath("assets", name).read_text(encoding="utf-8")
