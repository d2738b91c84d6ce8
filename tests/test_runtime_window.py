"""Real windows: the app in pywebview (Qt offscreen, WebKitGTK under Xvfb), its page
calling the bridge."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from webapp_checks import WEBAPP as APP
from webapp_checks import assert_page_results


@pytest.mark.parametrize("gui", ["qt", "gtk", "default"])
def test_app_in_a_native_window_reaches_the_bridge(tmp_path: Path, gui: str) -> None:
    opened = tmp_path.parent / f"{tmp_path.name}-opened.txt"
    recorder = tmp_path.parent / f"{tmp_path.name}-browser.sh"
    recorder.write_text(f'#!/bin/sh\necho "$1" >> {opened}\n')
    recorder.chmod(0o755)
    (tmp_path / "leave.txt").write_text("navigate away once")
    process = _in_window("run", APP, tmp_path, stdout=subprocess.PIPE, gui=gui,
                         env={"BROWSER": str(recorder)})
    try:
        assert process.stdout is not None
        ready = json.loads(process.stdout.readline() or "{}")
        assert ready.get("event") == "ready" and ready.get("mode") == "window", ready
        report = tmp_path / "results.json"
        deadline = time.monotonic() + 30
        while not report.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        results = json.loads(report.read_text())
        # The page's script ran in the window, under the policy, through the bridge.
        # Qt shows it through the window's own scheme (the bridge and bulk reads are the
        # app server's); WebKitGTK loads it from the app server.
        if gui in ("qt", "default"):  # the default is Qt, here under Xvfb (X11)
            origin = "shoal://app"
        else:
            origin = results["origin"]["ok"]
            assert re.fullmatch(r"http://127\.0\.0\.1:\d+", origin), origin
        assert_page_results(results, tmp_path, origin)
        # The page then sent the window elsewhere: that address went to the system
        # browser, and the navigation never happened: the same page was still there.
        stayed = tmp_path / "stayed.txt"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (opened.exists() and stayed.exists()):
            time.sleep(0.1)
        assert opened.read_text().split() == ["http://127.0.0.1:65534/elsewhere"]
        assert stayed.read_text().startswith(f"{origin}/")
        assert not (tmp_path / "returned.txt").exists()  # never loaded again
        # pywebview runs its JS API and QWebChannel's script in every page it loads. The
        # Qt window stops that; WebKitGTK's still gets pywebview's object, without the
        # message handler it would call (see the gtkBridge check).
        injected = json.loads((tmp_path / "globals.json").read_text())
        pywebview_object = "object" if gui == "gtk" else "undefined"
        assert injected == {"pywebview": pywebview_object, "QWebChannel": "undefined"}
    finally:
        _stop(process)


def test_app_code_failing_in_the_window_is_one_clear_line(tmp_path: Path) -> None:
    app = tmp_path / "app"
    app.mkdir()
    (app / "shoal.toml").write_text('[app]\nname = "Broken"\nid = "test.shoal.broken"\n')
    (app / "index.html").write_text("<!doctype html><title>broken</title><p>hello</p>")
    (app / "app.py").write_text("raise RuntimeError('no database')\n")
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    result = subprocess.run(
        [sys.executable, "-m", "shoal.cli.main", "run", str(app), "--data-dir",
         str(tmp_path / "data")],
        capture_output=True, text=True, env=env, timeout=60, start_new_session=True)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("shoal: error")]
    assert len(errors) == 1 and "failed to load: RuntimeError: no database" in errors[0]


def test_window_survives_many_window_calls(tmp_path: Path) -> None:
    """Every window call is a Qt signal in pywebview; some Qt bindings abort Python after
    a few thousand (PySide6 6.12.0, which shoal[gui] excludes)."""
    app = _script_app(tmp_path / "app", "titles", "[permissions]\nwindow = true\n",
                      'import { fs, window } from "shoal:api";\n'
                      "for (let i = 1; i <= 10000; i++) await window.setTitle(`title ${i}`);\n"
                      'await fs.writeFile("done.txt", document.title);\n')
    data = tmp_path / "data"
    process = _in_window("run", app, data, stdout=subprocess.DEVNULL)
    try:
        _wait_for(data / "done.txt", process)
        assert process.poll() is None, process.stderr.read() if process.stderr else ""
        assert (data / "done.txt").read_text() == "title 10000"
    finally:
        _stop(process)


def _wait_for(path: Path, process: subprocess.Popen, seconds: float = 60) -> None:
    """Until ``path`` exists, ``process`` ends or ``seconds`` pass."""
    deadline = time.monotonic() + seconds
    while not path.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)


def _script_app(folder: Path, name: str, toml: str, script: str) -> Path:
    """An app in ``folder`` whose page runs ``script``; ``toml`` follows ``[app]``."""
    folder.mkdir()
    (folder / "shoal.toml").write_text(
        f'[app]\nname = "{name}"\nid = "test.shoal.{name}"\n{toml}')
    (folder / "index.html").write_text(f'<!doctype html><title>{name}</title>'
                                       '<script type="module" src="main.js"></script>')
    (folder / "main.js").write_text(script)
    return folder


def _in_window(command: str, app: Path, data: Path, *, stdout: int, gui: str = "qt",
               env: dict[str, str] | None = None) -> subprocess.Popen:
    """``shoal run`` or ``shoal dev`` of ``app`` in a window (Qt offscreen, WebKitGTK
    under Xvfb, or ``default``: no ``--gui``, under Xvfb), with JSON events on
    ``stdout``; stop it with ``_stop``."""
    choice = [] if gui == "default" else ["--gui", gui]
    argv = [sys.executable, "-m", "shoal.cli.main", command, "--json", *choice, str(app),
            "--data-dir", str(data)]
    env = {**os.environ, **(env or {})}
    env.pop("QT_QPA_PLATFORM", None)
    if gui == "qt":
        env["QT_QPA_PLATFORM"] = "offscreen"
    else:  # WebKitGTK needs a display: a virtual one
        argv = ["xvfb-run", "--auto-servernum", *argv]
        if os.geteuid() == 0:  # its sandbox cannot run as root
            env["WEBKIT_DISABLE_SANDBOX_THIS_IS_DANGEROUS"] = "1"
    # A session of its own, so the browser processes it starts go down with it.
    return subprocess.Popen(argv, stdout=stdout, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)


def _stop(process: subprocess.Popen) -> None:
    """End ``shoal run`` and the browser processes Qt started in its session."""
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def test_dev_reloads_the_page_in_the_window(tmp_path: Path) -> None:
    """``shoal dev``: a changed file reloads the window's page, which reaches the bridge
    again (the window hears of each load itself, not through pywebview's scripts)."""
    app = _script_app(tmp_path / "app", "reload", "",
                      'import { fs } from "shoal:api";\n'
                      'const before = await fs.readFile("loads.txt", "utf8").catch(() => "0");\n'
                      'await fs.writeFile("loads.txt", String(Number(before) + 1));\n')
    data = tmp_path / "data"
    loads = data / "loads.txt"
    process = _in_window("dev", app, data, stdout=subprocess.PIPE)

    def wait_for_loads(count: str) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and process.poll() is None:
            if loads.exists() and loads.read_text() == count:
                return
            time.sleep(0.1)
        raise AssertionError(f"loads: {loads.read_text() if loads.exists() else None}")

    try:
        assert process.stdout is not None
        ready = json.loads(process.stdout.readline() or "{}")
        assert ready.get("event") == "ready" and ready.get("mode") == "window", ready
        wait_for_loads("1")
        (app / "index.html").write_text(
            (app / "index.html").read_text().replace("<title>reload", "<title>reloaded"))
        wait_for_loads("2")
    finally:
        _stop(process)


def test_webrtc_in_the_window_reaches_nothing_the_app_did_not_declare(tmp_path: Path) -> None:
    """A page asks WebRTC to reach a STUN server (UDP) and a TURN server (TCP) of its
    choosing, from the page itself, a fresh iframe (where no page script could remove
    RTCPeerConnection first) and an srcdoc iframe. Neither server hears a thing."""
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    tcp = socket.socket()
    tcp.bind(("127.0.0.1", 0))
    tcp.listen()
    servers = {"iceServers": [
        {"urls": f"stun:127.0.0.1:{udp.getsockname()[1]}"},
        {"urls": f"turn:127.0.0.1:{tcp.getsockname()[1]}?transport=tcp",
         "username": "page-data", "credential": "x"},
        {"urls": f"turn:127.0.0.1:{udp.getsockname()[1]}", "username": "u", "credential": "x"},
    ]}
    app = _script_app(tmp_path / "app", "webrtc", "", (
        'import { fs } from "shoal:api";\n'
        f"const servers = {json.dumps(servers)};\n"
        "async function attempt(realm) {\n"
        "  try {\n"
        "    const peer = new realm.RTCPeerConnection(servers);\n"
        '    peer.createDataChannel("out");\n'
        "    await peer.setLocalDescription(await peer.createOffer());\n"
        '    return "made";\n'
        '  } catch (error) { return String(error); }\n'
        "}\n"
        "const results = [await attempt(window)];\n"
        "for (const srcdoc of [null, '<p>x</p>']) {\n"
        '  const frame = document.createElement("iframe");\n'
        "  if (srcdoc) frame.srcdoc = srcdoc;\n"
        "  document.body.append(frame);\n"
        "  await new Promise((resolve) => setTimeout(resolve, 300));\n"
        "  results.push(await attempt(frame.contentWindow));\n"
        "}\n"
        "await new Promise((resolve) => setTimeout(resolve, 4000));\n"
        'await fs.writeFile("done.json", JSON.stringify(results));\n'))
    data = tmp_path / "data"
    process = _in_window("run", app, data, stdout=subprocess.DEVNULL)
    try:
        _wait_for(data / "done.json", process)
        assert (data / "done.json").exists(), process.stderr.read() if process.stderr else ""
        results = json.loads((data / "done.json").read_text())
        assert results == ["made", "made", "made"]  # the attempts themselves ran
        udp.setblocking(False)
        tcp.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            raise AssertionError(f"a datagram reached the STUN server: {udp.recvfrom(2048)}")
        with contextlib.suppress(BlockingIOError):
            raise AssertionError(f"a connection reached the TURN server: {tcp.accept()}")
    finally:
        _stop(process)
        udp.close()
        tcp.close()


@pytest.mark.parametrize("gui", ["qt", "gtk"])
def test_new_windows_leave_only_with_the_shell_permission(tmp_path: Path, gui: str) -> None:
    """A page without ``shell`` tries every way out to the system browser that does not
    pass through api.js: a target=_blank link whose click api.js never sees, and the
    original window.open of a fresh iframe. Nothing reaches the browser."""
    opened = tmp_path / "opened.txt"
    recorder = tmp_path / "browser.sh"
    recorder.write_text(f'#!/bin/sh\necho "$1" >> {opened}\n')
    recorder.chmod(0o755)
    app = _script_app(tmp_path / "app", "popups", "", (
        'import { fs } from "shoal:api";\n'
        'const link = document.createElement("a");\n'
        'link.href = "https://example.org/leaked?by=link"; link.target = "_blank";\n'
        "link.addEventListener(\"click\", (event) => event.stopPropagation());\n"
        "document.body.append(link);\n"
        "link.click();\n"
        'const frame = document.createElement("iframe");\n'
        "document.body.append(frame);\n"
        'frame.contentWindow.open("https://example.org/leaked?by=open", "_blank");\n'
        "await new Promise((resolve) => setTimeout(resolve, 2000));\n"
        'await fs.writeFile("done.txt", "tried");\n'))
    data = tmp_path / "data"
    process = _in_window("run", app, data, stdout=subprocess.DEVNULL, gui=gui,
                         env={"BROWSER": str(recorder)})
    try:
        _wait_for(data / "done.txt", process)
        assert (data / "done.txt").exists(), process.stderr.read() if process.stderr else ""
        time.sleep(1)
        assert not opened.exists(), opened.read_text()
    finally:
        _stop(process)


BEFORE_THE_WINDOW = """
import json, sys
import webview

def start(*args, **kwargs):  # the moment the window would open: what is loaded by then
    print(json.dumps(sorted(sys.modules)))
    sys.stdout.flush()
    raise SystemExit(0)

webview.start = start
sys.argv = ["shoal", "run", "--json", *sys.argv[1:]]
from shoal.cli.main import main
main()
"""


def test_nothing_the_window_can_wait_for_is_loaded_before_it_opens(tmp_path: Path) -> None:
    # The app host (asyncio, its server, the bridge) starts beside the window, and
    # cryptography only with a node: loaded before the window, they delay the first paint.
    made = subprocess.run(
        [sys.executable, "-c", BEFORE_THE_WINDOW, str(APP), "--data-dir", str(tmp_path),
         "--gui", "qt"], capture_output=True, text=True, timeout=60,
        env={**os.environ, "QT_QPA_PLATFORM": "offscreen", "SHOAL_NO_LAN": "1"})
    loaded = set(json.loads(made.stdout.splitlines()[-1]))
    assert "shoal.runtime.window" in loaded  # the start of the window was reached
    assert not loaded & {"asyncio", "cryptography", "shoal.runtime.server",
                         "shoal.runtime.bridge", "shoal.runtime.host", "shoal.runtime.archive",
                         "websockets", "h11"}
