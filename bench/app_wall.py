"""Resource exhaustion against a running app: memory, descriptors and CPU of the
``shoal run --browser`` process while a local client attacks it. Prints JSON.

    python bench/app_wall.py            # every case
    python bench/app_wall.py pipelined watches

Cases without the launch secret: ``pipelined`` (20,000 pipelined requests for the API
module, never read) and ``idle`` (1,100 idle TCP connections with the app limited to
1,024 descriptors, then a bridge call and a page request). With the secret:
``unread_reads`` (300 reads of a 2 MB file by a page that stops reading), ``instant``
(4,000 calls answered at once, never read), ``flood`` (a page flooding calls while
another client asks for the entry page) and ``watches`` (1,000 ``fs.watch`` calls, then
the page closes).
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil
from websockets.asyncio.client import ClientConnection, connect

CASES = ("pipelined", "idle", "unread_reads", "instant", "flood", "watches")


class App:
    """One ``shoal run --browser`` of a small app with a 2 MB file in its data dir."""

    def __init__(self, folder: Path, descriptors: int | None = None) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "shoal.toml").write_text('[app]\nname = "Bench"\nid = "bench.shoal.wall"\n')
        (folder / "index.html").write_text("<!doctype html><title>bench</title><p>bench")
        self.data = folder / "data"
        self.data.mkdir(exist_ok=True)
        (self.data / "big.bin").write_bytes(os.urandom(2 << 20))

        def limit() -> None:
            if descriptors is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (descriptors, descriptors))

        self.process = subprocess.Popen(
            [sys.executable, "-m", "shoal.cli.main", "run", "--browser", "--json", str(folder),
             "--data-dir", str(self.data)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, preexec_fn=limit)
        assert self.process.stdout is not None
        ready = json.loads(self.process.stdout.readline())
        self.url = ready["url"]
        parts = urlsplit(self.url)
        self.port = parts.port or 0
        self.secret = parts.fragment.split("=", 1)[1]
        self.ps = psutil.Process(self.process.pid)

    def rss_mib(self) -> float:
        return round(self.ps.memory_info().rss / 2**20, 1)

    def descriptors(self) -> int:
        return self.ps.num_fds()

    async def bridge(self) -> ClientConnection:
        return await connect(
            f"ws://127.0.0.1:{self.port}/_shoal/bridge?secret={self.secret}",
            origin=f"http://127.0.0.1:{self.port}",  # type: ignore[arg-type]
            max_size=None, compression=None, proxy=None)

    async def get(self, path: str = "/") -> tuple[float, int]:
        """Seconds to the status line of ``GET path``, and the status (0: no answer)."""
        started = time.perf_counter()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
                         "Connection: close\r\n\r\n".encode())
            line = await asyncio.wait_for(reader.readline(), 30)
            writer.close()
            status = int(line.split()[1]) if line else 0
        except (TimeoutError, OSError, IndexError, ValueError):
            status = 0
        return round(time.perf_counter() - started, 3), status

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


async def _call(ws: ClientConnection, call_id: int, name: str, *args: Any) -> Any:
    await ws.send(json.dumps({"id": call_id, "call": name, "args": list(args)}))
    while True:
        message = await asyncio.wait_for(ws.recv(), 30)
        if isinstance(message, bytes):
            if int.from_bytes(message[:4], "big") == call_id:
                return len(message) - 4
            continue
        payload = json.loads(message)
        if payload.get("id") == call_id:
            return payload.get("ok", payload.get("error"))


async def pipelined(app: App) -> dict[str, Any]:
    before = app.rss_mib()
    _reader, writer = await asyncio.open_connection("127.0.0.1", app.port)
    request = f"GET /_shoal/api.js HTTP/1.1\r\nHost: 127.0.0.1:{app.port}\r\n\r\n".encode()
    writer.write(request * 20_000)
    await asyncio.sleep(5)
    during = app.rss_mib()
    writer.close()
    await asyncio.sleep(2)
    return {"rss_before_mib": before, "rss_during_mib": during, "rss_after_close_mib":
            app.rss_mib(), "sent_kib": round(len(request) * 20_000 / 1024)}


async def idle(app: App) -> dict[str, Any]:
    ws = await app.bridge()
    held = []
    for _ in range(1100):
        try:
            held.append(await asyncio.open_connection("127.0.0.1", app.port))
        except OSError:
            break
    await asyncio.sleep(1)
    descriptors = app.descriptors()
    try:
        read = await _call(ws, 1, "fs.readFile", "big.bin")
    except Exception as exc:
        read = repr(exc)
    seconds, status = await app.get("/")
    for _, writer in held:
        writer.close()
    await ws.close()
    return {"opened": len(held), "app_descriptors": descriptors,
            "bridge_read": read, "page_status": status, "page_seconds": seconds}


async def unread_reads(app: App) -> dict[str, Any]:
    ws = await app.bridge()
    before = app.rss_mib()
    ws.transport.pause_reading()
    for call_id in range(1, 301):
        await ws.send(json.dumps({"id": call_id, "call": "fs.readFile", "args": ["big.bin"]}))
    await asyncio.sleep(5)
    during = app.rss_mib()
    ws.transport.abort()
    await asyncio.sleep(2)
    return {"rss_before_mib": before, "rss_during_mib": during,
            "rss_after_close_mib": app.rss_mib()}


async def instant(app: App) -> dict[str, Any]:
    ws = await app.bridge()
    before = app.rss_mib()
    ws.transport.pause_reading()
    message = json.dumps({"id": 1, "call": "x" * 60_000, "args": []})  # echoed: ENOSYS
    sent = 0
    for _ in range(4000):
        try:  # a host that stops reading stops the attack here
            await asyncio.wait_for(ws.send(message), 1)
        except TimeoutError:
            break
        sent += 1
    await asyncio.sleep(5)
    during = app.rss_mib()
    ws.transport.abort()
    await asyncio.sleep(2)
    return {"calls_sent": sent, "rss_before_mib": before, "rss_during_mib": during,
            "rss_after_close_mib": app.rss_mib()}


async def flood(app: App) -> dict[str, Any]:
    quiet, _ = await app.get("/")
    ws = await app.bridge()
    message = json.dumps({"id": 1, "call": "fs.stat", "args": ["big.bin"]}).encode()

    async def keep_flooding() -> None:
        while True:
            for _ in range(2000):
                ws.protocol.send_text(message)
            ws.send_data()
            await asyncio.sleep(0)

    async def drain() -> None:
        async for _ in ws:
            pass

    tasks = [asyncio.create_task(keep_flooding()), asyncio.create_task(drain())]
    await asyncio.sleep(2)
    loaded = [await app.get("/") for _ in range(5)]
    for task in tasks:
        task.cancel()
    ws.transport.abort()
    return {"page_seconds_quiet": quiet, "page_seconds_during_flood":
            sorted(s for s, _ in loaded), "statuses": sorted({c for _, c in loaded})}


async def watches(app: App) -> dict[str, Any]:
    ws = await app.bridge()
    answers = [await _call(ws, i, "fs.watch", ".") for i in range(1, 1001)]
    refused = sum(1 for a in answers if isinstance(a, dict))
    app.ps.cpu_percent()
    await asyncio.sleep(3)
    cpu_open = app.ps.cpu_percent()
    await ws.close()
    await asyncio.sleep(1)
    app.ps.cpu_percent()
    await asyncio.sleep(3)
    return {"watches_granted": len(answers) - refused, "refused": refused,
            "cpu_percent_page_open": cpu_open, "cpu_percent_after_close": app.ps.cpu_percent()}


async def main(cases: list[str]) -> None:
    import shoal

    results: dict[str, Any] = {"shoal": str(Path(shoal.__file__).parent)}
    with tempfile.TemporaryDirectory() as scratch:
        for case in cases:
            app = App(Path(scratch) / case, descriptors=1024 if case == "idle" else None)
            try:
                results[case] = await globals()[case](app)
            finally:
                app.close()
    print(json.dumps(results))


if __name__ == "__main__":
    chosen = sys.argv[1:] or list(CASES)
    unknown = [c for c in chosen if c not in CASES]
    if unknown:
        sys.exit(f"unknown case {unknown[0]!r}; cases: {', '.join(CASES)}")
    socket.setdefaulttimeout(30)
    asyncio.run(main(chosen))
