"""``shoal check``: what the pages' policy will refuse, read from the app's files alone.

Nothing runs: HTML, JavaScript and CSS files are read as text and each thing the policy
refuses is a ``Finding`` with its file, line and fix. It finds what can be seen in the
files (inline event handlers, ``javascript:`` URLs, eval and ``new Function``, remote
resources and connections to hosts ``[csp]`` does not name); what a script builds at run
time is told when it happens (see ``refusals``).
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import SplitResult, urlsplit

from shoal.runtime.config import AppConfig
from shoal.runtime.pages import HIDDEN
from shoal.runtime.refusals import NEVER_EVAL, NEVER_HANDLER, NEVER_JAVASCRIPT_URL, fix_for

MAX_FILE_BYTES = 16 << 20
"""Larger files are not read (a data file, not code)."""
SKIPPED_FOLDERS = {"node_modules", "__pycache__"}
_EVAL = re.compile(r"(?<![\w.$])eval\s*\(|\bnew\s+Function\s*\(|"
                   r"\bset(?:Timeout|Interval)\s*\(\s*[\"'`]")
_CONNECT = re.compile(r"\b(?:fetch|WebSocket|EventSource)\s*\(\s*[\"'`]"
                      r"((?:https?|wss?):)?//([^\"'`\s]+)")
_CSS_URL = re.compile(r"(@import\s+)?url\(\s*[\"']?((?:https?:)?//[^\"')\s]+)", re.IGNORECASE)
_FONT = re.compile(r"\.(?:woff2?|ttf|otf|eot)(?:[?#]|$)", re.IGNORECASE)
_RESOURCE_ATTRIBUTES = {
    ("script", "src"): "script-src", ("link", "href"): "", ("img", "src"): "img-src",
    ("source", "src"): "media-src", ("video", "src"): "media-src",
    ("audio", "src"): "media-src", ("video", "poster"): "img-src",
    ("track", "src"): "media-src", ("iframe", "src"): "frame-src",
    ("input", "src"): "img-src",
}
_URL_ATTRIBUTES = {"href", "src", "action", "formaction", "data", "poster", "xlink:href"}


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing the policy will refuse: where, what, and how to fix it."""

    file: str
    line: int
    what: str
    fix: str

    def text(self) -> str:
        return f"{self.file}:{self.line}: {self.what}; {self.fix}"

    def fields(self) -> dict[str, str | int]:
        return asdict(self)


def check_app(config: AppConfig) -> list[Finding]:
    """Every finding in the files the app serves, by file and line."""
    findings: list[Finding] = []
    for path in _served_files(config.pages):
        relative = path.relative_to(config.pages).as_posix()
        suffix = path.suffix.lower()
        if suffix not in (".html", ".htm", ".js", ".mjs", ".css"):
            continue
        try:
            if path.stat().st_size > MAX_FILE_BYTES:
                continue
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        if suffix in (".html", ".htm"):
            findings += _HtmlCheck(config, relative).run(text)
        elif suffix == ".css":
            findings += _css_findings(config, relative, text)
        else:
            findings += _script_findings(config, relative, text)
    return findings


def _served_files(root: Path) -> list[Path]:
    found = []
    for directory, folders, names in os.walk(root):
        folders[:] = sorted(f for f in folders if not f.startswith(".")
                            and f not in SKIPPED_FOLDERS)
        found += [Path(directory) / n for n in sorted(names)
                  if not n.startswith(".") and n.casefold() not in HIDDEN]
    return found


def _script_findings(config: AppConfig, relative: str, text: str, first_line: int = 1,
                     ) -> list[Finding]:
    findings = []
    for number, line in enumerate(text.splitlines(), first_line):
        found = _EVAL.search(line)
        if found is not None:
            findings.append(Finding(relative, number, f"{found.group(0).strip()}... runs text "
                                    "as code", NEVER_EVAL))
        for connect in _CONNECT.finditer(line):
            scheme = (connect.group(1) or "https:").lower()
            url = f"{scheme}//{connect.group(2)}"
            if "${" not in url and not allowed(config, "connect-src", url):
                findings.append(Finding(relative, number, f"connects to {_origin(url)}",
                                        fix_for("connect-src", url)))
    return findings


def _css_findings(config: AppConfig, relative: str, text: str, first_line: int = 1,
                  ) -> list[Finding]:
    findings = []
    for number, line in enumerate(text.splitlines(), first_line):
        for found in _CSS_URL.finditer(line):
            url = found.group(2)
            url = url if not url.startswith("//") else "https:" + url
            directive = ("style-src" if found.group(1) else
                         "font-src" if _FONT.search(url) else "img-src")
            if not allowed(config, directive, url):
                findings.append(Finding(relative, number, f"loads {url} ({directive})",
                                        fix_for(directive, url)))
    return findings


class _HtmlCheck(HTMLParser):
    """Reads one HTML file for what its policy refuses."""

    def __init__(self, config: AppConfig, relative: str) -> None:
        super().__init__(convert_charrefs=True)
        self.config = config
        self.relative = relative
        self.findings: list[Finding] = []
        self._script_line: int | None = None
        self._style_line: int | None = None

    def run(self, text: str) -> list[Finding]:
        self.feed(text)
        self.close()
        return self.findings

    def _add(self, what: str, fix: str) -> None:
        self.findings.append(Finding(self.relative, self.getpos()[0], what, fix))

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        for name, value in values.items():
            if name.startswith("on") and len(name) > 2:
                self._add(f"<{tag} {name}=...> is an inline event handler", NEVER_HANDLER)
            elif name in _URL_ATTRIBUTES and re.match(r"\s*javascript:", value, re.I):
                self._add(f"<{tag} {name}=\"javascript:...\">", NEVER_JAVASCRIPT_URL)
        if tag == "base":
            self._add("<base> sets the page's base URL",
                      "nothing may allow base-uri: a base injected into the page would "
                      "take the app's relative scripts elsewhere")
        elif tag in ("object", "embed"):
            self._add(f"<{tag}> embeds a plugin",
                      "nothing may allow object-src: plugins run outside the policy")
        elif tag == "form" and values.get("action", "").strip():
            self._add("<form action=...> submits to a URL", "nothing may allow form-action: "
                      "handle the submit event in a .js file and send with fetch")
        self._resource(tag, values)
        if tag == "script" and "src" not in values:
            self._script_line = self.getpos()[0]
        elif tag == "style":
            self._style_line = self.getpos()[0]

    def _resource(self, tag: str, values: dict[str, str]) -> None:
        for (element, attribute), directive in _RESOURCE_ATTRIBUTES.items():
            if element != tag or attribute not in values:
                continue
            url = values[attribute].strip()
            if tag == "link":
                rel = values.get("rel", "").lower().split()
                directive = ("style-src" if "stylesheet" in rel else
                             "script-src" if "modulepreload" in rel else
                             "img-src" if "icon" in rel else "")
            if not directive:
                continue
            if tag == "iframe" and not url.startswith(("http:", "https:", "//")):
                if not allowed(self.config, "frame-src", "'self'"):
                    self._add("<iframe> shows a page in a frame",
                              fix_for("frame-src", url or "about:blank"))
                continue
            if url.startswith("//"):
                url = "https:" + url
            if url.lower().startswith(("http:", "https:", "data:")) \
                    and not allowed(self.config, directive, url):
                self._add(f"<{tag} {attribute}=\"{_short(url)}\"> ({directive})",
                          fix_for(directive, url))

    def handle_data(self, data: str) -> None:
        if self._script_line is not None:
            self.findings += _script_findings(self.config, self.relative, data,
                                              self._script_line)
        elif self._style_line is not None:
            self.findings += _css_findings(self.config, self.relative, data, self._style_line)

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._script_line = None
        elif tag == "style":
            self._style_line = None


def allowed(config: AppConfig, directive: str, url: str) -> bool:
    """Whether the app's ``[csp]`` allows ``url`` under ``directive`` (a URL of the app
    itself is allowed wherever ``'self'`` is, which is everywhere but ``frame-src``)."""
    sources = config.csp.get(directive, ())
    if url == "'self'":
        return "'self'" in sources
    lowered = url.lower()
    if lowered.startswith("data:"):
        return "data:" in (s.lower() for s in sources)
    parts = urlsplit(url)
    return any(_matches(source, parts) for source in sources if not source.startswith("'"))


def _matches(source: str, url: SplitResult) -> bool:
    scheme, separator, rest = source.partition("://")
    if not separator:
        scheme, rest = "", source
    host, slash, path = rest.partition("/")
    host, _, port = host.partition(":")
    if scheme and scheme.lower() != url.scheme.lower() and not (
            scheme.lower() == "http" and url.scheme == "https"):
        return False
    hostname = (url.hostname or "").lower()
    host = host.lower()
    if host.startswith("*."):
        if not hostname.endswith(host[1:]):
            return False
    elif host != hostname:
        return False
    if port and port != "*" and str(url.port or {"http": 80, "https": 443, "ws": 80,
                                                "wss": 443}.get(url.scheme, "")) != port:
        return False
    if slash and path:
        wanted = "/" + path
        return url.path.startswith(wanted) if wanted.endswith("/") else url.path == wanted
    return True


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _short(url: str) -> str:
    return url if len(url) <= 60 else url[:57] + "..."
