"""Context menus, the tray icon and dropped files, in a real Qt window on an X server of
the test's own, driven with the mouse and keyboard (xdotool); and each refused when the
app did not declare it."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from shoal.runtime.config import ConfigError, Permissions, load_config
from shoal.runtime.fsapi import BridgeError
from shoal.runtime.system import BrowserBackend, System
from window_helpers import (
    find_window,
    in_window,
    module_page,
    wait_for_file,
    write_app,
    xdotool,
)

PAGE = module_page(body='<p style="height:90vh">desktop</p>')


def _app(tmp_path: Path, toml: str, script: str, files: dict[str, bytes] | None = None) -> Path:
    return write_app(tmp_path / "app", toml,
                     {"index.html": PAGE, "app.js": script, **(files or {})})


def _lines(path: Path, count: int, seconds: float = 30) -> list[str]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) >= count:
            return lines
        time.sleep(0.1)
    raise AssertionError(f"{path} has {path.read_text() if path.exists() else 'nothing'!r}")


DOCS = Path(__file__).resolve().parents[1] / "docs" / "runtime.md"


def _context_menu_example() -> str:
    """The context-menu example of the docs, as printed."""
    blocks = re.findall(r"```js\n(.*?)```", DOCS.read_text(), re.S)
    (example,) = [block for block in blocks if "window.contextMenu(" in block]
    return example


@pytest.mark.parametrize("gui", ["qt", "gtk"])
def test_a_page_shows_a_native_context_menu_and_hears_the_choice(
        tmp_path: Path, display: str, gui: str) -> None:
    app = _app(tmp_path, '[app]\nname = "Context"\nid = "test.shoal.context"\n'
               "[permissions]\nwindow = true\n",
               _context_menu_example() + 'await fs.writeFile("ready.txt", "1");\n')
    data = tmp_path / "data"
    with in_window(app, data, display, gui) as env:
        wait_for_file(data / "ready.txt")
        window = find_window("Context", env)[0]
        xdotool(env, "mousemove", "--window", window, "300", "200", "click", "3",
                "sleep", "0.7", "key", "Down", "sleep", "0.2", "key", "Return")
        assert _lines(data / "chosen.txt", 1) == ["rename"]
        # The separator is skipped; Escape dismisses the menu: null.
        xdotool(env, "click", "3", "sleep", "0.7", "key", "Down", "sleep", "0.2", "key", "Down",
                "sleep", "0.2", "key", "Return")
        assert _lines(data / "chosen.txt", 2) == ["rename", "delete"]
        xdotool(env, "click", "3", "sleep", "0.7", "key", "Escape")
        assert _lines(data / "chosen.txt", 3) == ["rename", "delete", "null"]


EDIT_PAGE = ('<!doctype html><meta charset="utf-8"><script type="module" src="app.js"></script>'
             '<textarea id="box" rows="4">hello shoal</textarea>'
             '<p style="height:300px">plain text</p>')
EDIT_SCRIPT = """import { fs } from "shoal:api";
await fs.appendFile("loads.txt", "load\\n");
const box = document.querySelector("#box");
document.addEventListener("selectionchange", async () => {
  if (box.selectionEnd > box.selectionStart) {
    await fs.writeFile("selected.txt", `${box.selectionStart}-${box.selectionEnd}`);
  }
});
await fs.writeFile("ready.txt", "1");
"""


def test_the_built_in_context_menu_keeps_editing_and_nothing_else(
        tmp_path: Path, display: str) -> None:
    app = _app(tmp_path, '[app]\nname = "Edit"\nid = "test.shoal.edit"\n', EDIT_SCRIPT)
    (app / "index.html").write_text(EDIT_PAGE)
    data = tmp_path / "data"
    with in_window(app, data, display) as env:
        wait_for_file(data / "ready.txt")
        window = find_window("Edit", env)[0]
        # On plain text the standard menu would offer Reload first (Back and Forward
        # are disabled): here there is no menu, so Return reloads nothing.
        xdotool(env, "mousemove", "--window", window, "40", "200", "click", "3", "sleep", "0.7",
                "key", "Down", "sleep", "0.2", "key", "Return", "sleep", "1.5")
        assert _lines(data / "loads.txt", 1) == ["load"]
        # In the text box the editing actions are there: the last is "Select all".
        xdotool(env, "key", "Escape", "mousemove", "--window", window, "30", "30",
                "click", "1", "click", "3", "sleep", "0.7", "key", "Up", "sleep", "0.2",
                "key", "Return")
        assert wait_for_file(data / "selected.txt") == "0-11"
        assert _lines(data / "loads.txt", 1) == ["load"]


class _Backend(BrowserBackend):
    def __init__(self) -> None:
        self.shown: list[Any] = []

    def context_menu(self, items: Any) -> str | None:
        self.shown.append(items)
        return items[0].id


@pytest.mark.parametrize(("window", "items", "code"), [
    (False, [{"label": "A", "id": "a"}], "EPERM"),
    (True, [], "EINVAL"),
    (True, [{"label": "A", "id": "a b"}], "EINVAL"),
    (True, [{"label": "A", "id": "a", "run": "x"}], "EINVAL"),
    (True, "A", "EINVAL"),
    (True, [{"label": "A", "id": str(n)} for n in range(51)], "EINVAL"),
])
def test_a_context_menu_needs_the_window_permission_and_good_items(
        window: bool, items: Any, code: str) -> None:
    backend = _Backend()
    system = System(Permissions(window=window), "/tmp", backend, "http://127.0.0.1:1")
    with pytest.raises(BridgeError) as caught:
        asyncio.run(system.context_menu(items))
    assert caught.value.code == code and backend.shown == []


def test_a_context_menu_reaches_the_window_and_a_tab_has_none() -> None:
    backend = _Backend()
    system = System(Permissions(window=True), "/tmp", backend, "http://127.0.0.1:1")
    assert asyncio.run(system.context_menu([{"label": "A", "id": "a"}, "-"])) == "a"
    tab = System(Permissions(window=True), "/tmp", BrowserBackend(), "http://127.0.0.1:1")
    with pytest.raises(BridgeError) as caught:
        asyncio.run(tab.context_menu([{"label": "A", "id": "a"}]))
    assert caught.value.code == "ENOTSUP"


# --- the tray ---------------------------------------------------------------------------

class XembedTray:
    """A system tray of the test's own on an X server (the freedesktop.org XEmbed tray
    protocol): it owns the tray selection and docks each icon that asks."""

    def __init__(self, display_name: str) -> None:
        from Xlib import X, display
        from Xlib.protocol import event

        self._display = display.Display(display_name)
        screen = self._display.screen()
        self.window = screen.root.create_window(
            0, 0, 240, 40, 0, screen.root_depth, event_mask=X.SubstructureNotifyMask)
        self.window.map()
        selection = self._display.intern_atom("_NET_SYSTEM_TRAY_S0")
        self._opcode = self._display.intern_atom("_NET_SYSTEM_TRAY_OPCODE")
        self.window.set_selection_owner(selection, X.CurrentTime)
        announce = event.ClientMessage(
            window=screen.root, client_type=self._display.intern_atom("MANAGER"),
            data=(32, [X.CurrentTime, selection, self.window.id, 0, 0]))
        screen.root.send_event(announce, event_mask=X.StructureNotifyMask)
        self._display.flush()
        self.icons: list[int] = []
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        from Xlib import X

        while not self._stop:
            if not self._display.pending_events():
                time.sleep(0.02)
                continue
            happened = self._display.next_event()
            if happened.type == X.ClientMessage and happened.client_type == self._opcode \
                    and happened.data[1][1] == 0:  # SYSTEM_TRAY_REQUEST_DOCK
                icon = self._display.create_resource_object("window", happened.data[1][2])
                icon.reparent(self.window, 24 * len(self.icons), 0)
                icon.configure(width=22, height=22)
                icon.map()
                self._display.flush()
                self.icons.append(icon.id)

    def close(self) -> None:
        self._stop = True
        self._thread.join(timeout=5)
        self._display.close()


TRAY_SCRIPT = """import { fs, window } from "shoal:api";
window.on("tray", async ({ id }) => { await fs.appendFile("tray.txt", String(id) + "\\n"); });
await fs.writeFile("ready.txt", "1");
"""
TRAY_TOML = """[app]
name = "Tray"
id = "test.shoal.tray"

[tray]
icon = "icon.png"
tooltip = "Tray test"
items = [{ label = "Sync now", id = "sync" }, "-", { label = "Quit", id = "quit" }]
"""


def _png() -> bytes:
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body)))

    rows = b"".join(b"\x00" + b"\x20\x80\xe0\xff" * 16 for _ in range(16))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 16, 16, 8, 6, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


@pytest.mark.parametrize("gui", ["qt", "gtk"])
def test_the_tray_icon_docks_and_its_clicks_and_menu_reach_the_page(
        tmp_path: Path, display: str, gui: str) -> None:
    tray = XembedTray(display)
    try:
        app = _app(tmp_path, TRAY_TOML, TRAY_SCRIPT, {"icon.png": _png()})
        data = tmp_path / "data"
        with in_window(app, data, display, gui) as env:
            wait_for_file(data / "ready.txt")
            deadline = time.monotonic() + 20
            while not tray.icons and time.monotonic() < deadline:
                time.sleep(0.1)
            assert len(tray.icons) == 1
            icon = str(tray.icons[0])
            xdotool(env, "mousemove", "--window", icon, "10", "10", "click", "1")
            assert _lines(data / "tray.txt", 1) == ["null"]
            xdotool(env, "click", "3", "sleep", "0.7", "key", "Down", "sleep", "0.2",
                    "key", "Return")
            assert _lines(data / "tray.txt", 2) == ["null", "sync"]
    finally:
        tray.close()


@pytest.mark.parametrize(("tray", "where"), [
    ('icon = "missing.png"', "tray.icon"),
    ('icon = "../icon.png"', "tray.icon"),
    ('icon = "app.js"', "tray.icon"),
    ('icon = "icon.png"\nitems = ["-", { label = "x" }]', "tray.items[1]"),
    ('icon = "icon.png"\nmenu = []', "tray.menu"),
])
def test_a_bad_tray_is_one_line(tmp_path: Path, tray: str, where: str) -> None:
    app = _app(tmp_path, f'[app]\nname = "T"\nid = "test.shoal.t"\n[tray]\n{tray}\n', "",
               {"icon.png": _png()})
    with pytest.raises(ConfigError) as caught:
        load_config(app)
    assert f"{where}:" in str(caught.value) and "\n" not in str(caught.value)


# --- dropped files ----------------------------------------------------------------------

DRAG_SOURCE = """
import sys
from PySide6.QtCore import QMimeData, QUrl, Qt
from PySide6.QtGui import QDrag
from PySide6.QtWidgets import QApplication, QLabel

class Source(QLabel):
    def mousePressEvent(self, event):
        data = QMimeData()
        data.setUrls([QUrl.fromLocalFile(path) for path in sys.argv[1:]])
        drag = QDrag(self)
        drag.setMimeData(data)
        drag.exec(Qt.CopyAction)

app = QApplication([])
source = Source("drag me")
source.setWindowTitle("DragSource")
source.resize(200, 100)
source.move(1000, 800)
source.show()
app.exec()
"""
DROP_SCRIPT = """import { fs, window } from "shoal:api";
document.addEventListener("dragover", (event) => event.preventDefault());
document.addEventListener("drop", async (event) => {
  event.preventDefault();
  await fs.appendFile("dom.txt", event.dataTransfer.files.length + "\\n");
});
window.on("drop", async ({ paths }) => {
  await fs.appendFile("drop.txt", paths.join("|") + "\\n");
});
await fs.writeFile("ready.txt", "1");
"""


def _drag_files_onto(window: str, paths: list[Path], env: dict[str, str]) -> None:
    source = subprocess.Popen([sys.executable, "-c", DRAG_SOURCE, *map(str, paths)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        origin = find_window("DragSource", env)[0]
        time.sleep(0.5)
        xdotool(env, "mousemove", "--window", origin, "50", "50", "mousedown", "1",
                "sleep", "0.3")
        for step in range(1, 11):  # glide, so that each side sees the drag move
            xdotool(env, "mousemove", "--window", window, str(30 * step), str(20 * step),
                    "sleep", "0.1")
        xdotool(env, "sleep", "0.3", "mouseup", "1")
    finally:
        time.sleep(1)
        source.terminate()
        source.wait(timeout=10)


@pytest.mark.parametrize(("gui", "declared"), [("qt", True), ("qt", False), ("gtk", True),
                                               ("gtk", False)])
def test_dropped_files_reach_the_page_with_their_paths_only_with_file_access(
        tmp_path: Path, display: str, gui: str, declared: bool) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    notes = [shared / "a note.txt", shared / "b.txt"]
    for note in notes:
        note.write_text("hello")
    access = f'[permissions]\nfs.read = ["{shared}"]\n' if declared else ""
    app = _app(tmp_path, f'[app]\nname = "Drops"\nid = "test.shoal.drops"\n{access}',
               DROP_SCRIPT)
    data = tmp_path / "data"
    with in_window(app, data, display, gui) as env:
        wait_for_file(data / "ready.txt")
        _drag_files_onto(find_window("Drops", env)[0], notes, env)
        # The page's own drop event fires too (on Qt with File objects, not paths;
        # WebKitGTK gives none for files dragged from another toolkit's window).
        assert _lines(data / "dom.txt", 1) == ["2" if gui == "qt" else "0"]
        time.sleep(0.5)
        if declared:
            assert _lines(data / "drop.txt", 1) == ["|".join(map(str, notes))]
        else:
            assert not (data / "drop.txt").exists()


class _SlowDialog(BrowserBackend):
    def open_dialog(self, kind: str, options: dict[str, Any]) -> list[str] | None:
        time.sleep(0.5)  # the user takes a while to choose
        return ["/tmp/chosen"]


def test_an_open_dialog_does_not_hold_up_the_apps_other_calls() -> None:
    system = System(Permissions(dialog=True, window=True), "/tmp", _SlowDialog(),
                    "http://127.0.0.1:1")

    async def both() -> tuple[float, list[str] | None]:
        started = time.monotonic()
        dialog = asyncio.create_task(system.dialog_open({}))
        await asyncio.sleep(0.05)  # the dialog is open now
        await system.set_title("meanwhile")  # another call of the page, while it is open
        took = time.monotonic() - started
        return took, await dialog

    took, chosen = asyncio.run(both())
    assert chosen == ["/tmp/chosen"] and took < 0.2
