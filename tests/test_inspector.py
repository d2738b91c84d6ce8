"""The inspector in headless Chromium while two nodes exchange messages: what the page
shows is what the nodes count; without the token (or with a wrong Host) nothing is shown."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

import shoal
from shoal.identity import Identity
from shoal.runtime.config import node_key_path
from window_helpers import find_window, shoal_env

if TYPE_CHECKING:
    from playwright.sync_api import Browser


def _snapshot(url: str, token: str | None, host: str | None = None) -> dict | int:
    base = url.split("#", 1)[0]
    request = urllib.request.Request(base + "snapshot")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    if host is not None:
        request.add_header("Host", host)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code


def test_the_inspector_shows_what_the_nodes_count(tmp_path: Path, browser: Browser) -> None:
    state = tmp_path / "state"
    env = {**os.environ, "SHOAL_NO_LAN": "1", "XDG_STATE_HOME": str(state)}
    process = subprocess.Popen(
        [sys.executable, "-m", "shoal.cli.main", "listen", "--inspect", "--json", "--no-lan",
         "--listen", "127.0.0.1:0", "--identity", str(tmp_path / "listener.key")],
        stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert process.stdout is not None
        ready = json.loads(process.stdout.readline())
        inspect = json.loads(process.stdout.readline())
        assert inspect["event"] == "inspect"
        url, token = inspect["url"], inspect["url"].split("#token=", 1)[1]
        listener = ready["peer_id"]
        # shoal inspect finds it, through a file only this user can read.
        found = subprocess.run([sys.executable, "-m", "shoal.cli.main", "inspect", "--json"],
                               capture_output=True, text=True, env=env, timeout=30)
        assert json.loads(found.stdout)["url"] == url
        (entry,) = (state / "shoal" / "inspect").iterdir()
        assert stat.S_IMODE(entry.stat().st_mode) == 0o600

        # The sender runs on a loop of its own (Playwright's runs in this thread) and
        # stays up while the page is read: a peer that leaves is forgotten.
        loop = asyncio.new_event_loop()
        runner = threading.Thread(target=loop.run_forever, daemon=True)
        runner.start()
        node = shoal.Node(Identity.generate(), listen="127.0.0.1:0", lan_discovery=False)

        def on_loop(coroutine: Any) -> Any:
            return asyncio.run_coroutine_threadsafe(coroutine, loop).result(timeout=60)

        async def exchange() -> dict:
            await node.start()
            await node.connect(("127.0.0.1", int(ready["listen"].rsplit(":", 1)[1])))
            for index in range(20):
                await node.send(listener, b"x" * (100 * index))
            await asyncio.sleep(0.3)  # the last ACKs arrive
            (peer,) = [p for p in node.peers() if p.peer_id == listener]
            return {"id": node.peer_id, "sent": peer.bytes_sent,
                    "received": peer.bytes_received}

        sender = on_loop(exchange())
        page = browser.new_page()
        page.goto(url)
        row = page.locator(f'tr[data-peer="{sender["id"]}"]')
        row.wait_for(timeout=10000)
        page.wait_for_function("document.body.dataset.updated !== undefined")
        # The listener's view of the sender, as drawn, is the sender's own count mirrored.
        shown = {field: row.locator(f'td[data-field="{field}"]').text_content()
                 for field in ("bytes_sent", "bytes_received", "path")}
        assert row.locator('td[data-field="peer_id"] code').text_content() == sender["id"]
        assert shown == {"bytes_sent": str(sender["received"]),
                         "bytes_received": str(sender["sent"]), "path": "direct"}
        snapshot = _snapshot(url, token)
        assert isinstance(snapshot, dict)
        assert page.text_content("#peer-id") == listener == snapshot["peer_id"]
        rx = page.locator('#stats td[data-field="rx_datagrams"]').text_content()
        assert int(rx or 0) >= 20
        assert page.locator("canvas#datagrams").count() == 1
        # Without the token, with a wrong one, or through another Host: nothing.
        assert _snapshot(url, None) == 403
        assert _snapshot(url, "wrong") == 403
        assert _snapshot(url, token, host="attacker.example:80") == 403
    finally:
        if "loop" in locals():
            on_loop(node.close())
            loop.call_soon_threadsafe(loop.stop)
            runner.join(timeout=10)
        process.terminate()
        process.wait(timeout=10)
    assert not list((state / "shoal" / "inspect").iterdir())  # gone with the node


NETWORK_APP = """[app]
name = "Peer"
id = "test.shoal.peer"

[permissions]
network = true

[network]
lan = false
listen = "127.0.0.1:0"
"""


def _dev(app: Path, data: Path, *args: str, display: str | None = None
         ) -> tuple[subprocess.Popen[str], dict[str, str], dict[str, Any]]:
    """``shoal dev APP``: the process, its environment, and its inspector event."""
    env = shoal_env(display)
    process = subprocess.Popen(
        [sys.executable, "-m", "shoal.cli.main", "dev", "--json", *args, str(app),
         "--data-dir", str(data)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        text=True, env=env, start_new_session=True)
    assert process.stdout is not None
    for line in process.stdout:
        event = json.loads(line)
        if event.get("kind") == "inspector":
            return process, env, event
    raise AssertionError(f"shoal dev ended without an inspector ({process.wait()})")


def _stop(process: subprocess.Popen[str]) -> None:
    """SIGTERM to Shoal, which closes its windows and ends; then to what is left of its
    session (a signal to the whole group at once ends the same way, after a grace)."""
    import contextlib
    import signal

    process.send_signal(signal.SIGTERM)
    process.wait(timeout=20)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


@pytest.mark.parametrize("mode", ["window", "browser"])
def test_shoal_dev_shows_the_apps_own_node_in_an_inspector(
        tmp_path: Path, display: str, mode: str) -> None:
    app = tmp_path / "app"
    app.mkdir()
    (app / "shoal.toml").write_text(NETWORK_APP)
    (app / "index.html").write_text("<!doctype html><p>peer</p>")
    data = tmp_path / "data"
    args = ("--gui", "qt") if mode == "window" else ("--browser",)
    process, env, event = _dev(app, data, *args, display=display)
    try:
        url = event["message"]
        token = url.split("#token=", 1)[1]
        snapshot = _snapshot(url, token)
        assert isinstance(snapshot, dict)
        assert snapshot["peer_id"] == Identity.load(node_key_path(data)).peer_id
        assert _snapshot(url, None) == 403
        if mode == "window":  # a panel beside the app's window
            assert find_window("Peer — inspector", env)
            assert find_window("Peer", env)
    finally:
        _stop(process)


def test_shoal_dev_of_an_app_without_the_network_has_no_inspector(tmp_path: Path) -> None:
    app = tmp_path / "app"
    app.mkdir()
    (app / "shoal.toml").write_text('[app]\nname = "Quiet"\nid = "test.shoal.quiet"\n')
    (app / "index.html").write_text("<!doctype html><p>quiet</p>")
    process = subprocess.Popen(
        [sys.executable, "-m", "shoal.cli.main", "dev", "--json", "--browser", str(app),
         "--data-dir", str(tmp_path / "data")], stdout=subprocess.PIPE, text=True,
        env={**os.environ, "SHOAL_NO_LAN": "1"}, start_new_session=True)
    try:
        assert process.stdout is not None
        assert json.loads(process.stdout.readline())["event"] == "ready"
    finally:
        _stop(process)
    rest = process.stdout.read()
    assert "inspector" not in rest
