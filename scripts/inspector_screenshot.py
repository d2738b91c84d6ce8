"""Take docs/inspector.png: the inspector of a listening node while a peer sends to it.

    python scripts/inspector_screenshot.py [--out docs/inspector.png]

Needs Playwright and a Chromium (the system's /usr/bin/chromium where present).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import shoal
from shoal.identity import Identity


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/inspector.png"))
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as scratch:
        env = {**os.environ, "SHOAL_NO_LAN": "1", "XDG_STATE_HOME": scratch}
        listener = subprocess.Popen(
            [sys.executable, "-m", "shoal.cli.main", "listen", "--inspect", "--json",
             "--no-lan", "--listen", "127.0.0.1:0", "--identity", f"{scratch}/n.key"],
            stdout=subprocess.PIPE, text=True, env=env)
        assert listener.stdout is not None
        ready = json.loads(listener.stdout.readline())
        url = json.loads(listener.stdout.readline())["url"]
        threading.Thread(target=lambda: [None for _ in listener.stdout], daemon=True).start()
        port = int(ready["listen"].rsplit(":", 1)[1])
        stop = threading.Event()

        async def chatter() -> None:
            async with shoal.Node(Identity.generate(), listen="127.0.0.1:0",
                                  lan_discovery=False) as node:
                await node.connect(("127.0.0.1", port))
                started = time.monotonic()
                while not stop.is_set():
                    # A rate that rises and falls, so that the graphs show something.
                    phase = (time.monotonic() - started) % 20
                    for _ in range(int(5 + 4 * abs(10 - phase))):
                        node.send_nowait(ready["peer_id"], b"x" * 600)
                    await asyncio.sleep(0.1)

        sender = threading.Thread(target=asyncio.run, args=(chatter(),), daemon=True)
        sender.start()
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(
                    executable_path="/usr/bin/chromium" if Path("/usr/bin/chromium").exists()
                    else None, args=["--no-sandbox"])
                page = browser.new_page(viewport={"width": 1240, "height": 900})
                page.goto(url)
                time.sleep(40)  # forty seconds of traffic in the graphs
                page.screenshot(path=str(args.out), full_page=True)
                browser.close()
        finally:
            stop.set()
            sender.join(timeout=10)
            listener.terminate()
            listener.wait(timeout=10)
    print(json.dumps({"screenshot": str(args.out)}))


if __name__ == "__main__":
    main()
