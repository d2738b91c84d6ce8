"""``shoal build --standalone``: an app with its own Python, Shoal and webview, in one
folder and one compressed archive, started by a launcher named after the app.

PyInstaller does the bundling. The app's files go in as an archive would hold them (the
same filter), and the launcher runs ``shoal run`` on them, passing its own arguments on
(``./notes --browser``, ``./notes -- ARGS``). On Linux the webview is QtWebEngine, which
PyInstaller bundles whole; it is most of the size.
"""

from __future__ import annotations

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
import sys
from pathlib import Path

from shoal.cli.main import main

sys.argv = [sys.argv[0], "run", str(Path(sys._MEIPASS) / "app"), *sys.argv[1:]]
main()
'''
LEFT_OUT = ("playwright", "jedi", "numpy", "tkinter", "_tkinter", "IPython", "pytest",
            "hypothesis", "PIL", "PyQt5", "PyQt6", "gi", "shoal.lab", "shoal.sim",
            "shoal.runtime.apptests", "shoal.runtime.testing", "shoal.runtime.standalone")
"""Modules a bundled app never needs: test and build tools, the lab and the simulator,
and the webview bindings it does not use."""
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


def build_standalone(folder: Path, out_dir: Path) -> Standalone:
    """Bundle the app in ``folder`` into ``out_dir``."""
    config = load_config(folder)
    check_app_code(folder)
    try:
        import PyInstaller  # noqa: F401
    except ImportError:
        raise ArchiveError("standalone builds need PyInstaller: pip install 'shoal[bundle]'",
                           code="ENOSYS") from None
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
        launcher.write_text(LAUNCHER, encoding="utf-8")
        command = [
            sys.executable, "-m", "PyInstaller", "--noconfirm", "--onedir", "--name", name,
            "--distpath", str(out_dir), "--workpath", str(work / "build"),
            "--specpath", str(work), "--add-data", f"{staged}{os.pathsep}app",
            "--collect-data", "shoal", "--hidden-import", "webview",
            "--hidden-import", "webview.platforms.qt", "--log-level", "ERROR",
        ]
        for package in SHOAL_PACKAGES:
            command += ["--collect-submodules", package]
        for module in LEFT_OUT:
            command += ["--exclude-module", module]
        result = subprocess.run([*command, str(launcher)], capture_output=True, text=True,
                                check=False)
        if result.returncode != 0:
            last = (result.stderr.strip().splitlines() or ["no output"])[-1]
            raise ArchiveError(f"PyInstaller failed: {last}", code="EIO")
    bundle = out_dir / name
    _prune_qt(bundle)
    archive = out_dir / f"{name}-{config.version}-{sys.platform}-{platform.machine()}.tar.gz"
    with tarfile.open(archive, "w:gz", compresslevel=6) as tar:
        tar.add(bundle, arcname=name)
    return Standalone(bundle, bundle / name, archive, _size(bundle), archive.stat().st_size)


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


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())
