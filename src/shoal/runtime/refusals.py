"""What the page's policy refused, told to the developer once per kind.

The policy names ``REPORT_PATH`` as its ``report-uri``: the browser posts each refusal
there as JSON (``{"csp-report": {...}}``). ``Refusals`` reads a report, keeps one per
kind (the directive, what was blocked, and the file that asked), and says for each the
``shoal.toml`` line that would allow it, or why nothing may.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlsplit

from shoal.runtime.config import CODE_DIRECTIVES, CSP_DIRECTIVES

MAX_KINDS = 200
"""Kinds told at most in one run; a page that keeps inventing new ones is not heard."""
SAMPLE_CHARS = 40

NEVER_EVAL = ("eval, new Function and string timers never run: text injected into the "
              "page could become code; parse data with JSON.parse and ship code as .js files")
NEVER_HANDLER = ("inline event handlers (onclick=...) never run: an injected one would "
                 "run too; add the listener with addEventListener in a .js file")
NEVER_JAVASCRIPT_URL = ("javascript: URLs never run: an injected one would run too; "
                        "listen for the click in a .js file")
ADDED_LATER = ("inline {what} run only when an HTML file of the app holds them (their "
               "hashes are allowed); this one was added later: {instead}, or, if its text "
               "never changes, add the hash the browser's console shows to shoal.toml: "
               "[csp] {directive} = [\"'sha256-...'\"]")
NEVER_ADDED_SCRIPT = ADDED_LATER.format(what="scripts", instead="move it into a .js file",
                                        directive="script-src")
NEVER_ADDED_STYLE = ADDED_LATER.format(what="styles", directive="style-src",
                                       instead="set element.style or a class from a script")


@dataclass(frozen=True, slots=True)
class Refusal:
    """One refusal by the page's policy, as the developer is told it."""

    directive: str
    """The directive that refused (``script-src-elem``, ``connect-src``, ...)."""
    blocked: str
    """The URL refused, or ``inline``, ``eval``, ``wasm-eval``, ``data``, ``blob``."""
    sample: str
    """The start of the inline code refused (empty for a URL)."""
    where: str
    """The file and line that asked for it (``index.html:12``), as far as known."""
    fix: str
    """The ``shoal.toml`` line that would allow it, or why nothing may."""

    def line(self) -> str:
        what = self.blocked if not self.sample else f"{self.blocked} {self.sample!r}"
        where = f"{self.where}: " if self.where else ""
        return f"{where}refused by {self.directive}: {what}; {self.fix}"

    def fields(self) -> dict[str, str]:
        return asdict(self)


class Refusals:
    """The refusals of one run, each kind told once."""

    def __init__(self, origin: str, entry: str = "index.html") -> None:
        """``origin``: the pages' origin, left out of the file names told; ``entry``:
        the page at ``/``."""
        self.origin = origin
        self.entry = entry
        self._seen: set[tuple[str, str, str]] = set()

    def read(self, body: bytes) -> Refusal | None:
        """The refusal a report tells of, when it is of a kind not told yet; None for a
        known kind, a malformed report, or past ``MAX_KINDS``."""
        try:
            report = json.loads(body)
        except ValueError:
            return None
        if isinstance(report, list):  # the Reporting API's shape, should a browser use it
            report = report[0].get("body") if report and isinstance(report[0], dict) else None
        elif isinstance(report, dict):
            report = report.get("csp-report")
        return self.told(report)

    def told(self, report: Any) -> Refusal | None:
        """As ``read``, for a ``csp-report`` object already parsed (from a
        ``securitypolicyviolation`` event, say)."""
        if not isinstance(report, dict):
            return None
        refusal = refusal_of(report, self.origin, self.entry)
        if refusal is None:
            return None
        kind = (refusal.directive, _kind(refusal), refusal.where.rsplit(":", 1)[0])
        if kind in self._seen or len(self._seen) >= MAX_KINDS:
            return None
        self._seen.add(kind)
        return refusal


def refusal_of(report: dict[str, Any], origin: str, entry: str = "index.html",
               ) -> Refusal | None:
    """A ``csp-report`` object read as a ``Refusal`` (None when it names no directive)."""
    directive = _text(report.get("effective-directive") or report.get("effectiveDirective")
                      or report.get("violated-directive")).split(" ")[0]
    if not directive:
        return None
    blocked = _text(report.get("blocked-uri") or report.get("blockedURL")) or "inline"
    sample = _text(report.get("script-sample") or report.get("sample"))[:SAMPLE_CHARS]
    source = _text(report.get("source-file") or report.get("sourceFile")
                   or report.get("document-uri") or report.get("documentURL"))
    line = report.get("line-number") or report.get("lineNumber")
    where = _relative(source, origin)
    if source.split("#", 1)[0] == origin + "/":
        where = entry
    elif source and "://" not in source:  # the browser keeps only the scheme of a
        where = "(a file of the app)"     # URL that is not http(s) (shoal://app/...)
    if where and isinstance(line, int) and line > 0:
        where = f"{where}:{line}"
    blocked = _relative(blocked, origin) if "://" in blocked else blocked
    return Refusal(directive, blocked, sample, where, fix_for(directive, blocked, sample))


def fix_for(directive: str, blocked: str, sample: str = "") -> str:
    """What would allow ``blocked`` under ``directive``: a ``shoal.toml`` line, or why
    nothing may."""
    base = directive.removesuffix("-elem").removesuffix("-attr")
    if blocked == "eval":
        return NEVER_EVAL
    if blocked == "wasm-eval":
        return ("to compile WebAssembly add to shoal.toml: "
                "[csp] script-src = [\"'wasm-unsafe-eval'\"]")
    if blocked == "inline":
        if sample.lstrip().lower().startswith("javascript:"):
            return NEVER_JAVASCRIPT_URL
        if directive == "script-src-attr":
            return NEVER_HANDLER
        return NEVER_ADDED_STYLE if base == "style-src" else NEVER_ADDED_SCRIPT
    if base not in CSP_DIRECTIVES:
        return f"nothing may allow {directive}: Shoal keeps it closed for every app"
    scheme = blocked.split(":", 1)[0].lower()
    if scheme in ("data", "blob", "filesystem"):
        if base in CODE_DIRECTIVES:
            return (f"{scheme}: URLs never load in {base} (they would let made-up text "
                    "run or style the page): ship the file with the app")
        return f'to allow it add to shoal.toml: [csp] {base} = ["{scheme}:"]'
    parts = urlsplit(blocked)
    if parts.scheme in ("http", "https", "ws", "wss") and parts.hostname:
        host = f"{parts.scheme}://{parts.netloc}"
        return f'to allow it add to shoal.toml: [csp] {base} = ["{host}"]'
    if "://" not in blocked:  # a file of the app itself
        return f"to allow it add to shoal.toml: [csp] {base} = [\"'self'\"]"
    return f"nothing in shoal.toml allows {blocked!r} under {base}"


def _kind(refusal: Refusal) -> str:
    """What makes two refusals of one directive the same kind: the origin of a URL, or
    the sort of inline code."""
    if "://" in refusal.blocked:
        parts = urlsplit(refusal.blocked)
        return f"{parts.scheme}://{parts.netloc}"
    if refusal.sample.lstrip().lower().startswith("javascript:"):
        return "javascript:"
    return refusal.blocked


def _relative(url: str, origin: str) -> str:
    """``url`` without the pages' origin (``index.html`` for ``ORIGIN/index.html``)."""
    if url.startswith(origin + "/"):
        return url[len(origin) + 1:].split("#", 1)[0] or "/"
    return url


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""
