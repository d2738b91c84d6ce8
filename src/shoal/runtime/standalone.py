"""``shoal build --standalone``: an app with its own Python, Shoal and webview, in one
folder and one compressed archive, started by a launcher named after the app.

PyInstaller does the bundling. The app's files go in as an archive would hold them (the
same filter), and the launcher runs ``shoal run`` on them, passing its own arguments on
(``./notes --browser``, ``./notes -- ARGS``). On Linux the webview is either the
system's WebKitGTK, which the bundle links to as Tauri's apps do (the user's machine needs
``libwebkit2gtk-4.1``), or QtWebEngine, which PyInstaller bundles whole and which is then
most of the size.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from shoal.runtime.archive import ArchiveError, app_files, app_slug
from shoal.runtime.config import check_app_code, load_config

LAUNCHER = '''"""Starts the app bundled beside this launcher, with Shoal's own run command."""
import os
import sys
from pathlib import Path

# PyInstaller's GTK hooks point GIO, GdkPixbuf, GTK and Pango at copies inside the
# bundle; it uses the system's, which come with its WebKitGTK.
for name in GTK_VARIABLES:
    if os.environ.get(name, "").startswith(sys._MEIPASS):
        del os.environ[name]
if "XDG_DATA_DIRS" in os.environ:
    os.environ["XDG_DATA_DIRS"] = os.pathsep.join(
        d for d in os.environ["XDG_DATA_DIRS"].split(os.pathsep)
        if not d.startswith(sys._MEIPASS))

from shoal.cli.main import main

sys.argv = [sys.argv[0], "run", *GUI, str(Path(sys._MEIPASS) / "app"), *sys.argv[1:]]
main()
'''
GTK_VARIABLES = ("GIO_MODULE_DIR", "GDK_PIXBUF_MODULE_FILE", "GTK_DATA_PREFIX",
                 "GTK_EXE_PREFIX", "GTK_PATH", "PANGO_LIBDIR", "PANGO_SYSCONFDIR")
"""What PyInstaller's GTK hooks set to folders inside the bundle."""
LEFT_OUT = ("playwright", "jedi", "numpy", "tkinter", "_tkinter", "IPython", "pytest",
            "hypothesis", "PIL", "PyQt5", "PyQt6", "uvloop", "shoal.lab", "shoal.sim",
            "shoal.runtime.apptests", "shoal.runtime.testing", "shoal.runtime.standalone",
            "rich", "pygments", "markdown_it", "mdurl", "setuptools", "pkg_resources",
            "distutils", "_distutils_hack", "pip", "werkzeug", "jinja2", "trio", "pyparsing",
            "pydoc", "pydoc_data", "doctest", "lib2to3", "readline", "curses", "_curses",
            "sqlite3", "_sqlite3", "xmlrpc", "pdb", "aiohttp", "pydantic", "pydantic_core",
            "_codecs_jp", "_codecs_kr", "_codecs_cn", "_codecs_hk", "_codecs_tw",
            "_codecs_iso2022", "_multibytecodec")
"""Modules a bundled app never needs: test and build tools, the lab and the simulator,
the HTTP client that only ``shoal dev`` with a framework's dev server uses,
uvloop (13 MB; an app's host runs on asyncio's own loop), the terminal's rich output
(a spinner the launcher never shows), and what only packaging tools and other web
frameworks import, and the legacy East Asian text codecs (Shift JIS, Big5 and the
like: a page's text is UTF-8)."""
NETWORK_FEATURES = ("blake3", "shoal.aio.files", "shoal.core.blobs", "shoal.core.fetchplan",
                    "shoal.groups", "shoal.core.groups", "shoal.core.reconcile",
                    "shoal.core.rangeindex", "pycrdt")
"""What rides on Shoal's network (file transfer, groups): bundled only with apps that have
the ``network`` permission, since without it neither the page nor ``app.py`` has a node."""
LEFT_OUT_WITH = {"qt": ("gi",),
                 "gtk": ("PySide6", "shiboken6", "qtpy", "webview.platforms.qt")}
"""The webview bindings a bundle of each webview does not use."""
UNUSED_METADATA = {"qt": ("setuptools-*.dist-info", "pygobject-*.dist-info"),
                   "gtk": ("setuptools-*.dist-info", "pyside6*.dist-info",
                           "shiboken6*.dist-info")}
"""Package metadata PyInstaller's hooks copy in for packages the bundle leaves out."""
SHOAL_PACKAGES = ("shoal.aio", "shoal.core", "shoal.runtime", "shoal.inspector",
                  "shoal.cli")


@dataclass(frozen=True, slots=True)
class Standalone:
    folder: Path
    """The app's folder: the launcher and everything it needs."""
    launcher: Path
    archive: Path
    """The folder, compressed (``.tar.gz``)."""
    folder_bytes: int
    archive_bytes: int
    gui: str
    """The webview: ``qt`` (inside) or ``gtk`` (the system's)."""
    parts: dict[str, int]
    """Where the folder's bytes go: by package or kind, largest first."""
    largest: tuple[tuple[str, int], ...]
    """The twenty largest files: path in the folder, bytes."""


def _webkitgtk() -> str | None:
    """The system's WebKitGTK library, if it and its Python bindings are installed."""
    if importlib.util.find_spec("gi") is None:
        return None
    return _library_path(WEBKITGTK)


def build_standalone(folder: Path, out_dir: Path, gui: str | None = None) -> Standalone:
    """Bundle the app in ``folder`` into ``out_dir``: with QtWebEngine inside
    (``gui="qt"``), or for the system's WebKitGTK (``"gtk"``). By default the system's
    WebKitGTK where it is installed (a bundle a fifth the size), else QtWebEngine."""
    webkit = _webkitgtk() if gui != "qt" and sys.platform.startswith("linux") else None
    gui = gui or ("gtk" if webkit else "qt")
    config = load_config(folder)
    check_app_code(folder)
    try:
        import PyInstaller  # noqa: F401
    except ImportError:
        raise ArchiveError("standalone builds need PyInstaller: pip install 'shoal[bundle]'",
                           code="ENOSYS") from None
    if gui == "gtk" and webkit is None:
        raise ArchiveError("a WebKitGTK bundle is built where WebKitGTK and its Python "
                           "bindings are installed (apt install gir1.2-webkit2-4.1; "
                           "pip install 'shoal[gtk]')", code="ENOSYS")
    name = app_slug(config)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="shoal-standalone-") as scratch:
        work = Path(scratch)
        staged = work / "app"
        for relative, path in app_files(folder):
            target = staged / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
        launcher = work / "launcher.py"
        launcher.write_text(LAUNCHER.replace("*GUI", f'"--gui", "{gui}"')
                            .replace("GTK_VARIABLES", repr(GTK_VARIABLES)), encoding="utf-8")
        command = [
            sys.executable, "-m", "PyInstaller", "--noconfirm", "--onedir", "--name", name,
            "--distpath", str(out_dir), "--workpath", str(work / "build"),
            "--specpath", str(work), "--add-data", f"{staged}{os.pathsep}app",
            "--collect-data", "shoal", "--hidden-import", "webview",
            "--hidden-import", f"webview.platforms.{gui}", "--log-level", "ERROR",
            "--strip",  # symbol tables: a third of Python's own library
        ]
        for package in SHOAL_PACKAGES:
            command += ["--collect-submodules", package]
        unused = () if config.permissions.network else NETWORK_FEATURES
        for module in (*LEFT_OUT, *LEFT_OUT_WITH[gui], *unused):
            command += ["--exclude-module", module]
        result = subprocess.run([*command, str(launcher)], capture_output=True, text=True,
                                check=False)
        if result.returncode != 0:
            last = (result.stderr.strip().splitlines() or ["no output"])[-1]
            raise ArchiveError(f"PyInstaller failed: {last}", code="EIO")
    bundle = out_dir / name
    for unused in UNUSED_METADATA[gui]:
        for info in (bundle / "_internal").glob(unused):
            shutil.rmtree(info)
    if webkit is None:
        _prune_qt(bundle)
    else:
        _prune_gtk(bundle, webkit)
    archive = out_dir / f"{name}-{config.version}-{sys.platform}-{platform.machine()}.tar.gz"
    with tarfile.open(archive, "w:gz", compresslevel=9) as tar:
        tar.add(bundle, arcname=name)
    files = sorted(((path.relative_to(bundle).as_posix(), path.stat().st_size)
                    for path in bundle.rglob("*") if path.is_file() and not path.is_symlink()),
                   key=lambda item: -item[1])
    parts: dict[str, int] = {}
    for path, size in files:
        parts[_part(path, name)] = parts.get(_part(path, name), 0) + size
    return Standalone(bundle, bundle / name, archive, sum(size for _, size in files),
                      archive.stat().st_size, gui,
                      dict(sorted(parts.items(), key=lambda item: -item[1])),
                      tuple(files[:20]))


def _part(path: str, launcher: str) -> str:
    """What a file of the bundle (``path`` in it) belongs to, for the size breakdown."""
    if path == launcher:
        return "launcher (with every Python module, compressed)"
    inside = path.removeprefix("_internal/")
    first, slash, _ = inside.partition("/")
    if first.startswith("libpython") or first == "base_library.zip" or \
            first.startswith("python3"):
        return "Python"
    if slash:
        return first.split("-")[0] if first.endswith(".dist-info") else first
    return "libraries" if first.startswith("lib") else "extension modules"


def _prune_qt(bundle: Path) -> None:
    """Drop what PyInstaller collected of Qt that a web view in a widget never loads:
    every translation but English, the QML modules, and each Qt library outside what the
    bundled Qt modules, plugins and ``QtWebEngineProcess`` load (found with ``ldd``)."""
    pyside = bundle / "_internal" / "PySide6"
    qt = pyside / "Qt"
    if not qt.is_dir() or shutil.which("ldd") is None:
        return
    keep = {"en-US.pak", "qt_en.qm", "qtbase_en.qm"}
    for path in (qt / "translations").rglob("*"):
        if path.is_file() and path.name not in keep:
            path.unlink()
    shutil.rmtree(qt / "qml", ignore_errors=True)
    shutil.rmtree(qt / "plugins" / "qmltooling", ignore_errors=True)
    loaders = [*pyside.glob("*.so"), *(qt / "libexec").glob("QtWebEngineProcess"),
               *(qt / "plugins").rglob("*.so")]
    search = {**os.environ, "LD_LIBRARY_PATH": f"{qt / 'lib'}:{bundle / '_internal'}"}
    needed: set[str] = set()
    for path in loaders:
        linked = subprocess.run(["ldd", str(path)], capture_output=True, text=True,
                                env=search, check=False).stdout
        needed |= set(re.findall(r"libQt6\w+\.so\.6", linked))
    for library in (qt / "lib").glob("libQt6*.so*"):
        found = re.match(r"libQt6\w+\.so\.6", library.name)
        if found is not None and found.group(0) not in needed:
            library.unlink()


WEBKITGTK = "libwebkit2gtk-4.1.so.0"
"""The library a WebKitGTK bundle finds on the user's system, as Tauri's apps do."""
WITH_WEBKITGTK = ("libssl.so.3", "libcrypto.so.3")
"""Libraries WebKitGTK does not link but its packages bring (OpenSSL 3, for libsoup's
Kerberos): a WebKitGTK bundle leaves them to the system too (5 MB)."""


def _prune_gtk(bundle: Path, webkit: str) -> None:
    """Leave the GTK stack to the system, which has it whole and of one version wherever
    its WebKitGTK (``webkit``, its library) is installed: drop every library WebKitGTK
    links (found with ``ldd``) or comes with (``WITH_WEBKITGTK``); GIO's modules,
    GdkPixbuf's loaders and GTK's shared data (the launcher has GTK find the system's
    instead); then every library nothing left in the bundle links (those the dropped
    modules and loaders brought: GnuTLS, SVG, TIFF)."""
    internal = bundle / "_internal"
    if shutil.which("ldd") is None:
        return
    system = {*_linked(Path(webkit)), *WITH_WEBKITGTK}
    for library in internal.glob("*.so*"):
        if library.name in system:
            library.unlink()
    for data in ("gio_modules", "lib/gdk-pixbuf", "share", "etc"):
        shutil.rmtree(internal / data, ignore_errors=True)
    python = set(internal.glob("libpython*.so*"))  # the launcher loads it itself
    roots = [bundle / bundle.name, *python,
             *(p for p in internal.rglob("*.so*") if p.parent != internal or ".cpython-" in
               p.name or "abi3" in p.name)]
    needed: set[str] = set()
    for root in roots:
        needed |= {name for name, found in _linked(root, internal).items()
                   if found.startswith(str(internal))}
    for library in internal.glob("lib*.so*"):
        if library.name not in needed and library not in python:
            library.unlink()


def _linked(binary: Path, search: Path | None = None) -> dict[str, str]:
    """The libraries ``binary`` links, directly or not: soname to the file the dynamic
    linker finds ("" for none), looking in ``search`` first."""
    env = {**os.environ, "LD_LIBRARY_PATH": str(search)} if search else None
    listing = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, env=env,
                             check=False).stdout
    found = {}
    for line in listing.splitlines():
        name, arrow, where = line.strip().partition(" => ")
        if arrow:
            found[name] = where.split(" (", 1)[0].strip() if "not found" not in where else ""
    return found


def _library_path(name: str) -> str | None:
    """Where the dynamic linker finds ``name`` (a soname), or None."""
    listing = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True,
                             check=False).stdout
    for line in listing.splitlines():
        if line.strip().startswith(name + " ") and "=>" in line:
            return line.split("=>", 1)[1].strip()
    return None


