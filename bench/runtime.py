"""Benchmark of the app runtime in a native window; prints one JSON object.

    python bench/runtime.py --json          (QT_QPA_PLATFORM=offscreen where there is no display)

- ``shoal run bench/runtime_app`` in a pywebview window: time from starting ``shoal run``
  to the page's first paint and to the answer of its first bridge call, and the memory
  (PSS) of the whole process tree half a second after that call;
- the same app with ``cross_origin_isolated = true`` (only there does the page get timers
  fine enough): bridge round trip p50/p99 of a small call (``invoke`` of an async no-op)
  and MB/s reading a 64 MiB file into the page; its paint and memory are reported too;
- the baselines, measured the same way in the same run, each a bare pywebview window of
  the same size whose page a plain file server serves: the same page without its script
  (no bridge, no policy: ``baseline_*``); that window again with its storage kept on disk
  as Shoal's window keeps the app's (``baseline_persistent_*``: pywebview's
  ``private_mode=False`` and a ``storage_path``, where ``baseline_*`` has pywebview's
  default, a private profile held in memory); and the same page making the same calls
  on pywebview's own bridge, a ``js_api`` object (``pywebview_bridge_*``; its timer is
  the browser's coarse one, 0.1 ms);
- the floor of any WebSocket bridge in this webview: a bare window whose page makes the
  same round trips to a WebSocket that echoes a fixed answer, with no work behind it.

Each figure is the median of ``--runs`` rounds (5 by default), each round measuring every
window once, Shoal's and the bare one in turns first; ``first_paint_minus_baseline_ms``
lists the rounds' paint differences.

Both windows use the same Qt binding, PySide6 (the one ``shoal[gui]`` installs): where
PyQt6 is installed as well, pywebview alone would otherwise pick it, a different build
of the engine, with different time and memory. The bare windows ask for Qt, as Shoal's
does: where PyGObject is installed, pywebview alone would try WebKitGTK first.
"""

from __future__ import annotations

import argparse
import compileall
import functools
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psutil

APP = Path(__file__).parent / "runtime_app"
BIG = 64 << 20
# The bare windows get the size the app's window has: pixels cost memory and paint time.
WINDOW_SIZE: list[str] = []
SETTLE = 1.0

BASELINE = r"""
import json, sys, time
import webview
url, started, width, height = sys.argv[1], float(sys.argv[2]), *map(int, sys.argv[3:5])
storage = sys.argv[5] if len(sys.argv) > 5 else None  # kept on disk there, if given
window = webview.create_window("Runtime bench", url, width=width, height=height)
def loaded():
    script = "(performance.getEntriesByType('paint')[0] || {}).startTime"
    for _ in range(200):
        start = window.evaluate_js(script)
        if start:
            break
        time.sleep(0.02)
    origin = window.evaluate_js("performance.timeOrigin")
    print(json.dumps({"first_paint_ms": origin + start - started * 1000}), flush=True)
window.events.loaded += loaded
webview.start(private_mode=storage is None, storage_path=storage, gui="qt")
"""


PYWEBVIEW_BRIDGE = r"""
import sys
from pathlib import Path
import webview
url, data, width, height = sys.argv[1], Path(sys.argv[2]), *map(int, sys.argv[3:5])
class Api:
    def write_file(self, name, text):
        (data / name).write_text(text)
    def noop(self):
        return 0
webview.create_window("Runtime bench", url, js_api=Api(), width=width, height=height)
webview.start(private_mode=True, gui="qt")
"""


def tree_pss_mb(pid: int) -> float:
    """Proportional memory of a process and all its descendants, in MB."""
    root = psutil.Process(pid)
    total = 0
    for process in [root, *root.children(recursive=True)]:
        try:
            info = process.memory_full_info()
            total += getattr(info, "pss", info.rss)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return round(total / 1e6, 1)


def stop(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def measure_shoal(env: dict[str, str], app: Path) -> dict[str, Any]:
    """One ``shoal run`` of ``app``: what its page reports, and the tree's memory."""
    with tempfile.TemporaryDirectory() as data:
        data_dir = Path(data)
        (data_dir / "big.bin").write_bytes(os.urandom(BIG))
        started = time.time()
        process = subprocess.Popen(
            [sys.executable, "-m", "shoal.cli.main", "run", "--json", str(app),
             "--data-dir", str(data_dir)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
            start_new_session=True,
        )
        return page_reports(process, data_dir, started)


def page_reports(process: subprocess.Popen, data_dir: Path, started: float) -> dict[str, Any]:
    """What a bench page wrote into ``data_dir`` (its first call writes ``painted.json``,
    its last ``bench.json``), with the tree's memory half a second after that first call;
    stops the process."""
    try:
        deadline = time.monotonic() + 120
        for name in ("painted.json", "bench.json"):
            report = data_dir / name
            while not report.exists() and time.monotonic() < deadline:
                if process.poll() is not None:
                    raise SystemExit(f"the window exited before its page wrote {name}")
                time.sleep(0.02)
            if name == "painted.json":
                time.sleep(0.5)
                memory = tree_pss_mb(process.pid)
        time.sleep(0.2)
        result = json.loads(report.read_text())
    finally:
        stop(process)
    return {**result,
            "first_paint_ms": round(result["first_paint_epoch_ms"] - started * 1000, 1),
            "first_call_ms": round(result["first_call_epoch_ms"] - started * 1000, 1),
            "memory_mb": memory}


def isolated_copy(folder: Path) -> Path:
    """The bench app with ``cross_origin_isolated = true``, for timers precise enough to
    time one round trip."""
    copy = folder / "isolated"
    shutil.copytree(APP, copy)
    toml = copy / "shoal.toml"
    toml.write_text(toml.read_text().replace("[app]\n", "[app]\ncross_origin_isolated = true\n"))
    return copy


BENCH_SCRIPT = '<script type="module" src="bench.js"></script>'


def bench_page(script: str | None) -> bytes:
    """The bench app's page with ``script`` in place of its own (none if None): the
    same page for the bare windows."""
    html = (APP / "index.html").read_text(encoding="utf-8")
    line = next((line for line in html.splitlines(keepends=True) if BENCH_SCRIPT in line), None)
    if line is None:
        raise SystemExit(f"{APP / 'index.html'} no longer loads bench.js as the bench expects")
    swapped = line.replace(BENCH_SCRIPT, f'<script type="module" src="{script}"></script>')
    return html.replace(line, swapped if script else "", 1).encode()


class _AppFolder(SimpleHTTPRequestHandler):
    """The bench app's folder, with ``/page.html`` served from memory, and no log."""

    def __init__(self, *args: Any, page: bytes, **kwargs: Any) -> None:
        self.page = page
        super().__init__(*args, **kwargs)

    def do_GET(self) -> None:
        if self.path != "/page.html":
            super().do_GET()
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(self.page)))
        self.end_headers()
        self.wfile.write(self.page)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def serve_app_folder(page: bytes) -> tuple[ThreadingHTTPServer, str]:
    """A plain file server of the bench app's folder, and the URL of ``page`` on it."""
    handler = functools.partial(_AppFolder, directory=str(APP), page=page)
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/page.html"


def measure_baseline(env: dict[str, str], storage: Path | None = None) -> dict[str, float]:
    """The bare window; with ``storage``, one that keeps what its page stores there."""
    server, url = serve_app_folder(bench_page(None))
    started = time.time()
    kept = [str(storage)] if storage is not None else []
    process = subprocess.Popen(
        [sys.executable, "-c", BASELINE, url, str(started), *WINDOW_SIZE, *kept],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
        start_new_session=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line:
            raise SystemExit("the bare window exited before its page painted")
        result = json.loads(line)
        time.sleep(0.5)  # the same settling as the Shoal run gets after its first paint
        memory = tree_pss_mb(process.pid)
    finally:
        stop(process)
        server.shutdown()
    return {"first_paint_ms": round(result["first_paint_ms"], 1), "memory_mb": memory}


def measure_pywebview_bridge(env: dict[str, str]) -> dict[str, Any]:
    """The bench page's calls on pywebview's own bridge, in a bare pywebview window."""
    server, url = serve_app_folder(bench_page("pywebview.js"))
    with tempfile.TemporaryDirectory() as data:
        started = time.time()
        process = subprocess.Popen(
            [sys.executable, "-c", PYWEBVIEW_BRIDGE, url, data, *WINDOW_SIZE],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
            start_new_session=True)
        try:
            return page_reports(process, Path(data), started)
        finally:
            server.shutdown()


FLOOR_PAGE = b"""<!doctype html><html><head><meta charset="utf-8"><title>Floor</title>
<script type="module" src="/floor.js"></script></head><body><h1>Floor</h1></body></html>"""

FLOOR_SCRIPT = b"""
const ws = new WebSocket(`ws://${location.host}/echo`);
await new Promise((resolve) => { ws.onopen = resolve; });
let answer;
ws.onmessage = (event) => answer(event.data);
const call = () => new Promise((resolve) => {
  answer = resolve;
  ws.send(JSON.stringify({ id: 1, call: "invoke", args: ["noop", []] }));
});
for (let i = 0; i < 200; i++) await call();
const samples = [];
for (let i = 0; i < 2000; i++) {
  const start = performance.now();
  await call();
  samples.push(performance.now() - start);
}
samples.sort((a, b) => a - b);
await fetch("/result", { method: "POST", body: JSON.stringify({
  p50: samples[1000], p99: samples[1980], isolated: crossOriginIsolated }) });
"""


def measure_floor(env: dict[str, str]) -> dict[str, float]:
    """Round trips from a bare window's page to a WebSocket echo (see the module doc)."""
    import asyncio

    from aiohttp import WSMsgType, web

    isolation = {"Cross-Origin-Opener-Policy": "same-origin",
                 "Cross-Origin-Embedder-Policy": "require-corp"}
    results: list[dict[str, float]] = []
    ready = threading.Event()
    loop = asyncio.new_event_loop()

    async def page(request: web.Request) -> web.Response:
        return web.Response(body=FLOOR_PAGE, content_type="text/html", headers=isolation)

    async def script(request: web.Request) -> web.Response:
        return web.Response(body=FLOOR_SCRIPT, content_type="text/javascript",
                            headers=isolation)

    async def echo(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(compress=False)
        await ws.prepare(request)
        async for message in ws:
            if message.type == WSMsgType.TEXT:
                await ws.send_str('{"id":1,"ok":0}')
        return ws

    async def result(request: web.Request) -> web.Response:
        results.append(json.loads(await request.read()))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/", page)
    app.router.add_get("/floor.js", script)
    app.router.add_get("/echo", echo)
    app.router.add_post("/result", result)
    runner = web.AppRunner(app, access_log=None)
    ports: list[int] = []

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        loop.run_until_complete(site.start())
        ports.append(runner.addresses[0][1])
        ready.set()
        loop.run_forever()

    threading.Thread(target=serve, daemon=True).start()
    ready.wait()
    process = subprocess.Popen(
        [sys.executable, "-c", BASELINE, f"http://127.0.0.1:{ports[0]}/", str(time.time()),
         *WINDOW_SIZE],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not results and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop(process)
        loop.call_soon_threadsafe(loop.stop)
    if not results or not results[0]["isolated"]:
        raise SystemExit("the floor page did not report (or was not cross-origin isolated)")
    return {"p50": round(results[0]["p50"], 3), "p99": round(results[0]["p99"], 3)}


def one_round(env: dict[str, str], scratch: Path, shoal_first: bool) -> dict[str, float]:
    """Every measurement once, each after a pause for the last one's processes to go."""
    settle = functools.partial(time.sleep, SETTLE)
    if shoal_first:
        settle()
        shoal = measure_shoal(env, APP)
    settle()
    baseline = measure_baseline(env)
    settle()
    persistent = measure_baseline(env, scratch / "storage")
    if not shoal_first:
        settle()
        shoal = measure_shoal(env, APP)
    settle()
    on_pywebview = measure_pywebview_bridge(env)
    settle()
    isolated = measure_shoal(env, isolated_copy(scratch))
    settle()
    if shoal["isolated"] or not isolated["isolated"]:
        raise SystemExit("the bench app's cross-origin isolation is not what it asked for")
    floor = measure_floor(env)
    return {
        "first_paint_ms": shoal["first_paint_ms"],
        "first_call_ms": shoal["first_call_ms"],
        "memory_mb": shoal["memory_mb"],
        "round_trip_p50_ms": isolated["round_trip_p50_ms"],
        "round_trip_p99_ms": isolated["round_trip_p99_ms"],
        "read_64mib_mb_per_s": isolated["read_mb_per_s"],
        "isolated_first_paint_ms": isolated["first_paint_ms"],
        "isolated_memory_mb": isolated["memory_mb"],
        "baseline_first_paint_ms": baseline["first_paint_ms"],
        "baseline_memory_mb": baseline["memory_mb"],
        "baseline_persistent_first_paint_ms": persistent["first_paint_ms"],
        "baseline_persistent_memory_mb": persistent["memory_mb"],
        "pywebview_bridge_first_paint_ms": on_pywebview["first_paint_ms"],
        "pywebview_bridge_first_call_ms": on_pywebview["first_call_ms"],
        "pywebview_bridge_memory_mb": on_pywebview["memory_mb"],
        "pywebview_bridge_round_trip_p50_ms": on_pywebview["round_trip_p50_ms"],
        "pywebview_bridge_round_trip_p99_ms": on_pywebview["round_trip_p99_ms"],
        "websocket_floor_p50_ms": floor["p50"],
        "websocket_floor_p99_ms": floor["p99"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="(output is always JSON)")
    parser.add_argument("--runs", type=int, default=5,
                        help="rounds of every measurement; the figures are their medians")
    runs = max(1, parser.parse_args().runs)
    env = {**os.environ}
    if sys.platform.startswith("linux") and not (env.get("DISPLAY") or env.get("WAYLAND_DISPLAY")):
        env.setdefault("QT_QPA_PLATFORM", "offscreen")
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        env.setdefault("QTWEBENGINE_DISABLE_SANDBOX", "1")
    env["QT_API"] = "pyside6"
    # pip compiles an installed package's bytecode, as it did pywebview's; an editable
    # checkout under PYTHONDONTWRITEBYTECODE has none and would compile Shoal every run.
    import shoal
    from shoal.runtime.config import load_config

    compileall.compile_dir(Path(shoal.__file__).parent, quiet=1)
    window = load_config(APP).window
    WINDOW_SIZE[:] = [str(window.width), str(window.height)]
    rounds = []
    for index in range(runs):
        with tempfile.TemporaryDirectory() as scratch:
            rounds.append(one_round(env, Path(scratch), shoal_first=index % 2 == 1))
    report: dict[str, object] = {"window": env.get("QT_QPA_PLATFORM", "native"), "runs": runs}
    for key in rounds[0]:
        report[key] = round(statistics.median(r[key] for r in rounds), 3)
    # The paint difference run by run, since both windows share each round's conditions.
    report["first_paint_minus_baseline_ms"] = sorted(
        round(r["first_paint_ms"] - r["baseline_first_paint_ms"], 1) for r in rounds)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
