"""``shoal.toml``: an app's name, window, permissions, network and CSP, validated.

Every capability is denied unless the file grants it. Unknown keys and bad values raise
``ConfigError`` naming the file, the key and the reason, e.g.
``myapp/shoal.toml: permissions.fs.read[0]: must be a string``.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shoal.errors import ShoalError
from shoal.net import parse_address

CONFIG_NAME = "shoal.toml"
APP_CODE = "app.py"
IDENTITY_FILE = "identity.key"
"""Where an older Shoal kept the app's node identity, in its data folder (now moved to
``node_key_path``)."""
ARCHIVE_SUFFIX = ".shoal"
"""The name ending of a signed app archive (see ``archive``)."""
WEBVIEW_STORAGE = ".webview"
"""In the app's data folder: what the app's pages store in the native window."""
APP_ID = re.compile(r"[a-z0-9]+(?:[.-][a-z0-9]+)+")
"""An app id, matched whole (``fullmatch``): reverse-DNS like ``org.example.notes``."""
RESERVED_APP_IDS = frozenset({"origins.json", "grants.json", "publishers.json",
                              "install.json"})
"""Names of Shoal's own files beside the apps' folders, which no app may take as its id."""
VERSION = re.compile(r"[0-9]+(?:\.[0-9]+)*(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?")
"""A version, matched whole: ASCII dotted numbers, an optional ``-pre-release`` (older
than the release) and ``+build`` (ignored in comparisons), as in semver."""
CSP_DIRECTIVES = frozenset({
    "default-src", "script-src", "style-src", "img-src", "font-src", "media-src",
    "connect-src", "worker-src", "manifest-src", "frame-src",
})
CSP_KEYWORDS = frozenset({"'self'", "'none'", "'strict-dynamic'", "'report-sample'",
                          "'wasm-unsafe-eval'"})
"""Keyword sources an app may add; the rest ('unsafe-eval', 'unsafe-inline',
'unsafe-hashes', nonces, ...) would let injected code run."""
CODE_DIRECTIVES = frozenset({"default-src", "script-src", "style-src", "worker-src",
                             "frame-src"})
"""Directives that decide what runs or styles the page: no bare scheme (``data:``,
``blob:``, ``https:``, ...) may be added to these; name the hosts instead."""
NETWORK_SCHEMES = frozenset({"http:", "https:", "ws:", "wss:"})
_CSP_SOURCE = re.compile(r"^[\x21-\x2b\x2d-\x3a\x3c-\x7e]+$")  # visible ASCII but , ;
_CSP_HASH = re.compile(r"^'sha(?:256|384|512)-[A-Za-z0-9+/_-]+={0,2}'$", re.IGNORECASE)
_CSP_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*:$", re.IGNORECASE)
_CSP_ANY_HOST = re.compile(r"^(?:[a-z][a-z0-9+.-]*://)?\*(?:[:/].*)?$", re.IGNORECASE)
SIMPLE_PERMISSIONS = ("os", "network", "window", "dialog", "notification", "clipboard",
                      "shell", "dns")


RUNS_ANY_PROGRAM = frozenset({
    # shells and interpreters
    "sh", "bash", "dash", "zsh", "ksh", "mksh", "fish", "csh", "tcsh", "busybox", "python",
    "pypy", "perl", "ruby", "node", "nodejs", "deno", "bun", "lua", "luajit", "php", "tclsh",
    "wish", "rscript", "java", "osascript", "pwsh", "powershell", "cmd", "awk", "gawk",
    "mawk", "nawk", "sed", "expect",
    # programs that start others given on their command line or in their options
    "env", "xargs", "find", "git", "nohup", "nice", "ionice", "timeout", "setsid",
    "stdbuf", "strace", "ltrace", "gdb", "sudo", "su", "doas", "pkexec", "runuser",
    "chroot", "unshare", "nsenter", "flock", "watch", "script", "make", "ssh", "scp",
    "rsync", "tar", "zip", "vim", "vi", "nvim", "emacs", "ed", "ex", "docker", "podman",
    "systemd-run", "flatpak", "npm", "npx", "pip", "uv", "cargo", "go", "parallel",
    "xdg-open", "gio", "dbus-send", "gdbus", "busctl", "systemctl"})
"""Programs known to run any other program (``git -c alias.x=!cmd x``, ``find -exec``,
``env cmd``, an interpreter's ``-c``): declaring one grants as much as running anything,
so ``shoal.toml`` must say ``run_any_program = true`` too, and the user is told."""


def runs_any_program(command: str) -> bool:
    """Whether the declared ``command`` (a name or a path) is one of ``RUNS_ANY_PROGRAM``,
    versions (``python3.12``) and ``.exe`` included."""
    name = re.sub(r"(\.exe)?$", "", os.path.basename(command).lower())
    return name in RUNS_ANY_PROGRAM or re.sub(r"[0-9.]+$", "", name) in RUNS_ANY_PROGRAM


class ConfigError(ShoalError):
    """``shoal.toml`` is missing, malformed or asks for something invalid."""

    default_code = "EINVAL"


@dataclass(frozen=True, slots=True)
class WindowConfig:
    title: str
    width: int = 1024
    height: int = 768
    resizable: bool = True
    min_width: int = 200
    min_height: int = 150


@dataclass(frozen=True, slots=True)
class Permissions:
    """What the page may do; everything else is refused with ``EPERM``."""

    fs_read: tuple[str, ...] = ()
    """Folders readable besides the app's data dir (``~`` expands)."""
    fs_write: tuple[str, ...] = ()
    """Folders readable and writable besides the app's data dir."""
    os: bool = False
    network: bool = False
    window: bool = False
    dialog: bool = False
    notification: bool = False
    clipboard: bool = False
    shell: bool = False
    """Open links in the system browser (``shell.openExternal``, and in the window,
    navigations away from the app)."""
    dgram: tuple[tuple[str, int | None], ...] = ()
    """(host, port) pairs UDP may send to; port None means any port of that host."""
    invoke: tuple[str, ...] = ()
    """Python functions of ``app.py`` the page may call."""
    dns: bool = False
    """Look names up through the system resolver (``dns``)."""
    env: tuple[str, ...] = ()
    """Environment variables the page may read (``process.info().env``)."""
    commands: tuple[str, ...] = ()
    """Programs the page may run (``child_process``): names found on PATH, or paths."""
    run_any_program: bool = False
    """The app knows that some of ``commands`` can run any program (``RUNS_ANY_PROGRAM``);
    without it such a command is refused."""
    hotkeys: tuple[str, ...] = ()
    """Global key combinations the page is told of (``ctrl+alt+k``)."""

    def allows(self, capability: str) -> bool:
        return bool(getattr(self, capability, False))


@dataclass(frozen=True, slots=True)
class MenuItem:
    """One entry of an application menu: ``id`` reaches the page when it is chosen; an
    item without a label is a separator."""

    label: str = ""
    id: str = ""


MAX_MENU_ITEMS = 50


class MenuError(ValueError):
    """A list of menu items is malformed: ``place`` (``"[3]"``, or ``""`` for the list
    itself) says where, ``reason`` what is wrong."""

    def __init__(self, place: str, reason: str) -> None:
        super().__init__(f"{place}: {reason}" if place else reason)
        self.place = place
        self.reason = reason


def menu_items(raw: Any) -> tuple[MenuItem, ...]:
    """Menu items as ``shoal.toml`` and ``window.contextMenu`` give them: each
    ``{label, id}``, or ``"-"`` for a separator; 1 to 50 of them."""
    if not isinstance(raw, list) or not 0 < len(raw) <= MAX_MENU_ITEMS:
        raise MenuError("", f"must be a list of 1 to {MAX_MENU_ITEMS} items")
    entries = []
    for number, item in enumerate(raw):
        if item == "-":
            entries.append(MenuItem())
            continue
        if not isinstance(item, dict) or set(item) != {"label", "id"} \
                or not isinstance(item["label"], str) or not item["label"].strip() \
                or len(item["label"]) > 200 or not isinstance(item["id"], str) \
                or not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", item["id"]):
            raise MenuError(f"[{number}]", 'must be "-" or { label = "...", id = "..." } '
                            "(an id of letters, digits, '_', '.' or '-')")
        entries.append(MenuItem(item["label"], item["id"]))
    return tuple(entries)


TRAY_ICON_TYPES = frozenset({".png", ".svg", ".ico", ".xpm"})


@dataclass(frozen=True, slots=True)
class TrayConfig:
    """``[tray]``: an icon in the system tray, with a menu of its own."""

    icon: str
    """The icon's file, relative to the app folder."""
    tooltip: str
    items: tuple[MenuItem, ...] = ()


@dataclass(frozen=True, slots=True)
class NetworkConfig:
    introducers: tuple[tuple[str, int], ...] = ()
    lan: bool = True
    listen: str = "0.0.0.0:0"


@dataclass(frozen=True, slots=True)
class AppConfig:
    """A validated ``shoal.toml``."""

    root: Path
    name: str
    id: str
    version: str
    window: WindowConfig
    permissions: Permissions
    network: NetworkConfig = field(default_factory=NetworkConfig)
    csp: dict[str, tuple[str, ...]] = field(default_factory=dict)
    entry: str = "index.html"
    scheme: str | None = None
    """The app's deep-link scheme (``notes`` for ``notes://...`` links)."""
    menu: tuple[tuple[str, tuple[MenuItem, ...]], ...] = ()
    """The window's menus: (title, items), from ``[[menu]]``."""
    tray: TrayConfig | None = None
    has_code: bool = False
    """The app has an ``app.py`` (Python that runs with the user's rights)."""
    cross_origin_isolated: bool = False
    """Serve the pages with COOP and COEP (``SharedArrayBuffer``, precise timers); it
    delays the first paint, and cross-origin resources allowed in ``[csp]`` then need
    CORP headers of their own."""
    web_root: str = "."
    """``[app] root``: the folder of the app's web files, relative to its folder (a
    framework's build output, such as ``dist``)."""
    dev_url: str | None = None
    """``[dev] url``: a framework's dev server that ``shoal dev`` shows the pages of."""

    @property
    def pages(self) -> Path:
        """The folder the app's web files are served from."""
        return self.root if self.web_root == "." else self.root / self.web_root


def load_config(folder: Path) -> AppConfig:
    """Read and validate ``folder/shoal.toml``."""
    path = folder / CONFIG_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: not found (is {folder} a Shoal app?)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot be read: {exc}") from None
    return parse_config(text, folder)


def parse_config(text: str, folder: Path, files: Collection[str] | None = None) -> AppConfig:
    """Validate ``text`` as the ``shoal.toml`` of the app in ``folder``. ``files``: the
    app's files (paths inside it) when they are not on disk yet, as in an archive that is
    not unpacked."""
    where = str(folder / CONFIG_NAME)
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}: not valid TOML: {exc}") from None
    return _Reader(where, folder, files).app(raw)


def check_app_code(folder: Path) -> None:
    """Compile the app's ``app.py``, if any, so that a syntax error is reported in one
    line before a window opens (it is imported later, when the host starts)."""
    path = folder / APP_CODE
    try:
        source = path.read_bytes()
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read: {exc}") from None
    try:
        compile(source, str(path), "exec", dont_inherit=True)
    except (SyntaxError, ValueError) as exc:
        line = getattr(exc, "lineno", None)
        where = f"{path}:{line}" if line else str(path)
        raise ConfigError(f"{where}: {type(exc).__name__}: {getattr(exc, 'msg', exc)}") \
            from None


class _Reader:
    """Validates one file's tables, naming the offending key in every error."""

    def __init__(self, where: str, folder: Path, files: Collection[str] | None) -> None:
        self.where = where
        self.folder = folder
        self.files = files

    def has_file(self, relative: str) -> bool:
        """Whether the app holds a file at ``relative`` (a path inside it)."""
        if self.files is not None:
            return Path(relative).as_posix() in self.files
        return (self.folder / relative).is_file()

    def has_folder(self, relative: str) -> bool:
        """Whether the app holds a folder at ``relative`` (a path inside it, or ".")."""
        if self.files is not None:
            prefix = "" if relative == "." else f"{Path(relative).as_posix()}/"
            return any(name.startswith(prefix) for name in self.files)
        return (self.folder / relative).is_dir()

    def fail(self, key: str, reason: str) -> ConfigError:
        return ConfigError(f"{self.where}: {key}: {reason}")

    def table(self, raw: dict[str, Any], key: str, allowed: set[str],
              required: bool = False) -> dict[str, Any]:
        value = raw.get(key)
        if value is None:
            if required:
                raise self.fail(key, "missing table")
            return {}
        if not isinstance(value, dict):
            raise self.fail(key, "must be a table")
        for name in value:
            if name not in allowed:
                raise self.fail(f"{key}.{name}", "unknown key" + did_you_mean(name, allowed))
        return value

    def string(self, table: dict[str, Any], key: str, name: str, default: str | None = None,
               pattern: re.Pattern[str] | None = None, hint: str = "") -> str:
        value = table.get(name, default)
        if value is None:
            raise self.fail(f"{key}.{name}", "missing")
        if not isinstance(value, str) or not value.strip():
            raise self.fail(f"{key}.{name}", "must be a non-empty string")
        if pattern is not None and not pattern.fullmatch(value):
            raise self.fail(f"{key}.{name}", f"{value!r} is not valid{hint}")
        return value

    def boolean(self, table: dict[str, Any], key: str, name: str, default: bool) -> bool:
        value = table.get(name, default)
        if not isinstance(value, bool):
            raise self.fail(f"{key}.{name}", "must be true or false")
        return value

    def integer(self, table: dict[str, Any], key: str, name: str, default: int,
                low: int, high: int) -> int:
        value = table.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise self.fail(f"{key}.{name}", f"must be an integer from {low} to {high}")
        return value

    def strings(self, value: Any, key: str) -> tuple[str, ...]:
        if not isinstance(value, list):
            raise self.fail(key, "must be a list of strings")
        for index, item in enumerate(value):
            if not isinstance(item, str) or not item:
                raise self.fail(f"{key}[{index}]", "must be a non-empty string")
        return tuple(value)

    def folders(self, value: Any, key: str, *, write: bool) -> tuple[str, ...]:
        """Granted folders: never the whole file system, and never the whole home folder
        for writing (its dotfiles run code at the next login)."""
        folders = self.strings(value, key)
        home = Path(os.path.realpath(os.path.expanduser("~")))
        for index, folder in enumerate(folders):
            real = Path(os.path.realpath(os.path.expanduser(folder)))
            if real == Path(real.anchor):
                raise self.fail(f"{key}[{index}]", f"{folder!r} is the whole file system; "
                                "grant the folders the app needs")
            if write and real == home:
                raise self.fail(f"{key}[{index}]", f"{folder!r} is the whole home folder; "
                                "grant the folders the app writes to")
        return folders

    def app(self, raw: dict[str, Any]) -> AppConfig:
        folder = self.folder
        tables = ("app", "window", "permissions", "network", "csp", "menu", "tray", "dev")
        for name in raw:
            if name not in tables:
                raise self.fail(name, "unknown table" + did_you_mean(name, tables))
        app = self.table(raw, "app", {"name", "id", "version", "entry", "cross_origin_isolated",
                                      "scheme", "root"}, required=True)
        name = self.string(app, "app", "name")
        app_id = self.string(app, "app", "id", pattern=APP_ID,
                             hint=" (use reverse-DNS like org.example.notes)")
        if app_id in RESERVED_APP_IDS:
            raise self.fail("app.id", f"{app_id!r} is the name of a file of Shoal's own")
        version = self.string(app, "app", "version", default="0.1.0", pattern=VERSION,
                              hint=" (dotted numbers like 1.2.0, then -rc1 or +build "
                              "if need be)")
        entry = self.string(app, "app", "entry", default="index.html")
        if entry.startswith(("/", "\\")) or ".." in Path(entry).parts:
            raise self.fail("app.entry", "must be a path inside the app folder")
        web_root = self.string(app, "app", "root", default=".")
        if web_root.startswith(("/", "\\")) or ".." in Path(web_root).parts:
            raise self.fail("app.root", "must be a folder inside the app folder")
        web_root = Path(web_root).as_posix()
        pages = folder / web_root
        dev = self.table(raw, "dev", {"url"})
        dev_url = self.dev_url(dev["url"]) if "url" in dev else None
        # A framework's build folder may not be built yet; `shoal run` says so then.
        has_pages = self.has_folder(web_root)
        if has_pages and not self.has_file(f"{web_root}/{entry}"):
            raise self.fail("app.entry", f"{entry!r} is not a file in {pages}")
        if not has_pages and web_root == ".":
            raise self.fail("app.entry", f"{entry!r} is not a file in {folder}")
        scheme = app.get("scheme")
        if scheme is not None:
            from shoal.runtime.instance import RESERVED_SCHEMES

            if not isinstance(scheme, str) or not re.fullmatch(r"[a-z][a-z0-9+.-]{1,31}", scheme):
                raise self.fail("app.scheme", "must be a URL scheme: a lowercase letter, then "
                                "letters, digits, '+', '.' or '-' (2 to 32 in all)")
            if scheme in RESERVED_SCHEMES:
                raise self.fail("app.scheme", f"{scheme!r} belongs to the web, the system "
                                "or other programs")
        window = self.table(raw, "window", {"title", "width", "height", "resizable",
                                            "min_width", "min_height"})
        return AppConfig(
            root=folder.resolve(),
            name=name,
            id=app_id,
            version=version,
            entry=entry,
            cross_origin_isolated=self.boolean(app, "app", "cross_origin_isolated", False),
            scheme=scheme,
            has_code=self.has_file(APP_CODE),
            window=WindowConfig(
                title=self.string(window, "window", "title", default=name),
                width=self.integer(window, "window", "width", 1024, 100, 16384),
                height=self.integer(window, "window", "height", 768, 100, 16384),
                resizable=self.boolean(window, "window", "resizable", True),
                min_width=self.integer(window, "window", "min_width", 200, 50, 16384),
                min_height=self.integer(window, "window", "min_height", 150, 50, 16384),
            ),
            web_root=web_root,
            dev_url=dev_url,
            permissions=self.permissions(raw),
            network=self.network(raw),
            csp=self.csp(raw),
            menu=self.menu(raw.get("menu", [])),
            tray=self.tray(raw, name),
        )

    def dev_url(self, value: Any, key: str = "dev.url") -> str:
        """A dev server's URL: on this machine only (its pages get the app's API)."""
        try:
            return dev_server_url(value)
        except ValueError as exc:
            raise self.fail(key, str(exc)) from None

    def menu(self, raw: Any) -> tuple[tuple[str, tuple[MenuItem, ...]], ...]:
        """``[[menu]]`` tables: ``title`` and ``items``, each ``{label, id}`` or ``"-"``."""
        if not isinstance(raw, list) or len(raw) > 10:
            raise self.fail("menu", "must be up to 10 [[menu]] tables")
        menus = []
        for index, table in enumerate(raw):
            where = f"menu[{index}]"
            if not isinstance(table, dict) or set(table) - {"title", "items"}:
                raise self.fail(where, "must be a table with a title and items")
            title = self.string(table, where, "title")
            menus.append((title, self.items(table.get("items", []), f"{where}.items")))
        return tuple(menus)

    def items(self, raw: Any, where: str) -> tuple[MenuItem, ...]:
        try:
            return menu_items(raw)
        except MenuError as exc:
            raise self.fail(where + exc.place, exc.reason) from None

    def tray(self, raw: dict[str, Any], name: str) -> TrayConfig | None:
        """``[tray]``: an icon file of the app, a tooltip (the app's name unless given)
        and the icon's menu items."""
        if "tray" not in raw:
            return None
        table = self.table(raw, "tray", {"icon", "tooltip", "items"})
        icon = self.string(table, "tray", "icon")
        path = Path(icon)
        if path.is_absolute() or ".." in path.parts or not self.has_file(icon) \
                or path.suffix.lower() not in TRAY_ICON_TYPES:
            raise self.fail("tray.icon", "must be an image file in the app folder ("
                            + ", ".join(sorted(TRAY_ICON_TYPES)) + ")")
        items = self.items(table["items"], "tray.items") if "items" in table else ()
        return TrayConfig(icon=icon, items=items,
                          tooltip=self.string(table, "tray", "tooltip", default=name))

    def permissions(self, raw: dict[str, Any]) -> Permissions:
        allowed = {"fs", "dgram", "invoke", "env", "commands", "hotkeys", "run_any_program",
                   *SIMPLE_PERMISSIONS}
        table = self.table(raw, "permissions", allowed)
        fs = table.get("fs", {})
        if not isinstance(fs, dict):
            raise self.fail("permissions.fs", "must be a table with read and write lists")
        for name in fs:
            if name not in ("read", "write"):
                raise self.fail(f"permissions.fs.{name}", "unknown key (read or write)"
                                + did_you_mean(name, ("read", "write")))
        dgram = []
        for index, item in enumerate(self.strings(table.get("dgram", []), "permissions.dgram")):
            host, sep, port = item.rpartition(":")
            if not sep or not host:
                raise self.fail(f"permissions.dgram[{index}]", "must be HOST:PORT or HOST:*")
            if port == "*":
                dgram.append((host.strip("[]"), None))
                continue
            try:
                dgram.append(parse_address(item))
            except ShoalError as exc:
                raise self.fail(f"permissions.dgram[{index}]", exc.message) from None
        invoke = self.strings(table.get("invoke", []), "permissions.invoke")
        for index, function in enumerate(invoke):
            if not function.isidentifier():
                raise self.fail(f"permissions.invoke[{index}]", "must be a Python function name")
        env = self.strings(table.get("env", []), "permissions.env")
        for index, name in enumerate(env):
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                raise self.fail(f"permissions.env[{index}]", "must be a variable name")
        commands = self.strings(table.get("commands", []), "permissions.commands")
        for index, command in enumerate(commands):
            if not command or "\0" in command or (os.sep in command
                                                   and not os.path.isabs(command)):
                raise self.fail(f"permissions.commands[{index}]",
                                "must be a program name (found on PATH) or an absolute path")
        run_any = self.boolean(table, "permissions", "run_any_program", False)
        for index, command in enumerate(commands):
            if runs_any_program(command) and not run_any:
                raise self.fail(f"permissions.commands[{index}]",
                                f"{command!r} can run any other program; say so with "
                                "run_any_program = true in [permissions] (the user is told "
                                "the app can run anything), or declare the programs it "
                                "would run instead")
        hotkeys = self.strings(table.get("hotkeys", []), "permissions.hotkeys")
        if hotkeys:  # only then: the module brings asyncio, 30 ms before a window opens
            from shoal.runtime.hotkeys import canonical, parse_combo

            for index, combo in enumerate(hotkeys):
                if parse_combo(combo) is None:
                    raise self.fail(f"permissions.hotkeys[{index}]",
                                    "must be modifiers, ctrl, alt or super among them (shift "
                                    "alone would catch typing), and one key, like ctrl+alt+k "
                                    "or super+shift+f5")
            hotkeys = tuple(canonical(combo) for combo in hotkeys)
        flags = {name: self.boolean(table, "permissions", name, False)
                 for name in SIMPLE_PERMISSIONS}
        return Permissions(
            hotkeys=hotkeys,
            env=env,
            commands=commands,
            run_any_program=run_any,
            fs_read=self.folders(fs.get("read", []), "permissions.fs.read", write=False),
            fs_write=self.folders(fs.get("write", []), "permissions.fs.write", write=True),
            dgram=tuple(dgram),
            invoke=invoke,
            **flags,
        )

    def network(self, raw: dict[str, Any]) -> NetworkConfig:
        table = self.table(raw, "network", {"introducers", "lan", "listen"})
        introducers = []
        for index, item in enumerate(self.strings(table.get("introducers", []),
                                                  "network.introducers")):
            try:
                introducers.append(parse_address(item))
            except ShoalError as exc:
                raise self.fail(f"network.introducers[{index}]", exc.message) from None
        listen = self.string(table, "network", "listen", default="0.0.0.0:0")
        try:
            parse_address(listen, default_port=0)
        except ShoalError as exc:
            raise self.fail("network.listen", exc.message) from None
        return NetworkConfig(tuple(introducers), self.boolean(table, "network", "lan", True),
                             listen)

    def csp(self, raw: dict[str, Any]) -> dict[str, tuple[str, ...]]:
        table = self.table(raw, "csp", set(CSP_DIRECTIVES))
        out = {}
        for directive, value in table.items():
            sources = []
            for index, source in enumerate(self.strings(value, f"csp.{directive}")):
                reason = _weakening(directive, source)
                if reason is not None:
                    raise self.fail(f"csp.{directive}[{index}]",
                                    f"{source!r} {reason} and is not allowed")
                sources.append(source.lower() if source.startswith("'") and
                               not _CSP_HASH.match(source) else source)
            out[directive] = tuple(sources)
        return out


def dev_server_url(value: Any) -> str:
    """``value`` as a dev server's origin (``http://127.0.0.1:5173``), or ValueError:
    an http URL of this machine (``localhost``, ``127.0.0.1`` or ``[::1]``) with a port.
    Another machine's pages would get the app's API."""
    from urllib.parse import urlsplit

    reason = ("must be http://localhost:PORT, http://127.0.0.1:PORT or http://[::1]:PORT "
              "(a dev server on this machine)")
    if not isinstance(value, str):
        raise ValueError(reason)
    try:
        parts = urlsplit(value.strip())
        port = parts.port
    except ValueError:
        raise ValueError(reason) from None
    if parts.scheme != "http" or parts.hostname not in ("localhost", "127.0.0.1", "::1") \
            or port is None or parts.username or parts.password or parts.path.strip("/") \
            or parts.query or parts.fragment:
        raise ValueError(reason)
    return f"http://{parts.netloc}"


def did_you_mean(name: str, choices: Any) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices``, or nothing."""
    import difflib

    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _weakening(directive: str, source: str) -> str | None:
    """Why ``source`` may not be added to ``directive``, or None. Read as a browser reads
    it: keywords and schemes in any case, and any ASCII whitespace or control character
    would split it into several sources, so it may hold none."""
    if not _CSP_SOURCE.match(source):
        return "holds whitespace, a control character, ',' or ';'"
    lowered = source.lower()
    if source.startswith("'"):
        if lowered in CSP_KEYWORDS or _CSP_HASH.match(source):
            return None
        return "would let injected code run"
    if _CSP_ANY_HOST.match(source) or lowered in NETWORK_SCHEMES:
        return "allows any host (name the hosts)"
    if _CSP_SCHEME.match(source) and directive in CODE_DIRECTIVES:
        return f"allows any {lowered} source in {directive}"
    return None


def csp_hosts(csp: dict[str, tuple[str, ...]]) -> list[str]:
    """The network hosts an app's ``[csp]`` names (``images.example``,
    ``*.example.com``, with ``:port`` when given): what its pages may reach."""
    hosts = []
    for sources in csp.values():
        for source in sources:
            if source.startswith("'") or _CSP_SCHEME.match(source):
                continue
            rest = source.split("://", 1)[-1]
            host = rest.split("/", 1)[0]
            if host and host not in hosts:
                hosts.append(host)
    return hosts


def default_data_dir(app_id: str) -> Path:
    """Where an app's own files live: ``$SHOAL_DATA_DIR/<id>`` or the user data dir."""
    base = os.environ.get("SHOAL_DATA_DIR")
    if base:
        return Path(base) / app_id
    import platformdirs

    return Path(platformdirs.user_data_dir("shoal")) / "apps" / app_id


def node_key_path(data_dir: Path) -> Path:
    """The node identity of the app whose data folder is ``data_dir``: in the user's
    private keys folder (``shoal.identity.keys_dir``), named after the data folder, where
    nothing the app declares reaches it (neither the page's ``fs``, nor a program started
    in the data folder, nor ``shoal build`` of an app folder holding its data). A key an
    older Shoal kept in the data folder is moved there. The node keeps its groups beside
    it (``NAME.groups``), as every node does beside its identity file."""
    import hashlib

    from shoal.identity import keys_dir, move_key

    name = hashlib.sha256(os.fsencode(os.path.realpath(data_dir))).hexdigest()[:32]
    target = keys_dir() / "nodes" / f"{name}.key"
    move_key(data_dir / IDENTITY_FILE, target)
    return target
