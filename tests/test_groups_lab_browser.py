"""The chat template across real NATs: each copy's app host (``shoal run --browser``) runs
in a host of the NAT lab (``shoal.lab``: network namespaces, an introducer on the public
side), and chromium on this machine reaches each page through a loopback forward into that
host's namespace. A post from one page shows in the other; a member who joins later, from
behind a third NAT, sees what was said before.

``SHOAL_LAB_SLOW=1``: 50 ms of delay and 2% loss on every access link, and the late
member behind a symmetric NAT.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import selectors
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page

from shoal.lab.netlab import Host, NatLab
from test_runtime_browser import _invite_from

pytestmark = pytest.mark.netns

SLOW = os.environ.get("SHOAL_LAB_SLOW") == "1"
SITES = [("alice", "port-restricted"), ("bob", "double"),
         ("carol", "symmetric" if SLOW else "full-cone")]
CLONE_NEWNET = 0x40000000


def _enter_netns(name: str) -> None:
    """Move the calling thread (only it) into network namespace ``name``."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            error = ctypes.get_errno()
            raise OSError(error, f"setns {name}: {os.strerror(error)}")
    finally:
        os.close(fd)


class NetnsForward:
    """TCP on 127.0.0.1:``port`` here, carried to 127.0.0.1:``port`` inside network
    namespace ``netns`` (each connection's thread enters it to connect): the page's
    address stays the one its app host serves, and nothing leaves loopback."""

    def __init__(self, netns: str, port: int) -> None:
        self.netns = netns
        self.port = port
        self.listener = socket.create_server(("127.0.0.1", port))
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self._sockets.append(client)
            threading.Thread(target=self._carry, args=(client,), daemon=True).start()

    def _carry(self, client: socket.socket) -> None:
        try:
            _enter_netns(self.netns)
            upstream = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        except OSError:
            client.close()
            return
        self._sockets.append(upstream)
        peers = {client: upstream, upstream: client}
        with selectors.DefaultSelector() as selector, client, upstream:
            for end in peers:
                end.setblocking(False)
                selector.register(end, selectors.EVENT_READ)
            while True:
                for key, _ in selector.select():
                    source = key.fileobj
                    assert isinstance(source, socket.socket)
                    try:
                        data = source.recv(65536)
                        if data:
                            peers[source].setblocking(True)
                            peers[source].sendall(data)
                            peers[source].setblocking(False)
                    except OSError:
                        data = b""
                    if not data:
                        return

    def close(self) -> None:
        self.listener.close()
        for each in self._sockets:
            with contextlib.suppress(OSError):
                each.close()


def _free_tcp_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _shoal(*args: str) -> list[str]:
    return [sys.executable, "-m", "shoal.cli.main", *args]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[NatLab, Path]]:
    """A NAT lab with a site per member and an introducer running on its internet."""
    if os.geteuid() != 0:
        pytest.fail("the NAT lab builds network namespaces and must run as root")
    folder = tmp_path_factory.mktemp("chatlab")
    with NatLab(SITES, delay=0.05 if SLOW else 0.0, loss=0.02 if SLOW else 0.0,
                seed=3) as running:
        log = folder / "introducer.log"
        with log.open("w") as sink:
            running.spawn(running.server, _shoal(
                "introducer", "--listen", running.introducer_address, "--json", "--no-lan",
                "--identity", str(folder / "introducer.key")), stdout=sink, text=True,
                env={**os.environ, "SHOAL_NO_LAN": "1"})
        deadline = time.monotonic() + 30
        while '"ready"' not in log.read_text():
            assert time.monotonic() < deadline, f"no introducer: {log.read_text()!r}"
            time.sleep(0.05)
        yield running, folder


@contextlib.contextmanager
def _chat_app(lab: NatLab, folder: Path, host: Host, browser: Browser, name: str
              ) -> Iterator[Page]:
    """The chat template's app host run in ``host``'s namespace, its page open in
    chromium through a forward: the page, loaded."""
    app = folder / name
    subprocess.run(_shoal("init", str(app), "--template", "chat"), check=True,
                   capture_output=True)
    config = app / "shoal.toml"
    config.write_text(config.read_text().replace("lan = true", "lan = false"))
    port = _free_tcp_port()
    process = lab.spawn(host, _shoal(
        "run", "--browser", "--json", str(app), "--introducer", lab.introducer_address,
        "--data-dir", str(folder / f"{name}-data"), "--port", str(port)),
        stdout=subprocess.PIPE, stderr=(folder / f"{name}.err").open("w"), text=True,
        env={**os.environ, "SHOAL_NO_LAN": "1"})
    forward = None
    page = None
    try:
        assert process.stdout is not None
        ready = json.loads(process.stdout.readline() or "{}")
        assert ready.get("event") == "ready", (ready, (folder / f"{name}.err").read_text())
        assert f":{port}/" in ready["url"]
        forward = NetnsForward(host.netns, port)
        page = browser.new_page()
        page.goto(ready["url"])
        page.wait_for_selector("body[data-ready=true]", state="attached", timeout=30000)
        yield page
    finally:
        if page is not None:
            page.close()
        if forward is not None:
            forward.close()
        lab.stop(process, timeout=10)


def _lines(page: Page) -> list[str]:
    return [item.text_content() or "" for item in page.query_selector_all("#log li")]


def _join(page: Page, invite: str) -> None:
    page.fill("#invite-in", invite)
    page.click("#join button")
    page.wait_for_selector("#text:not([disabled])", timeout=20000)


def _say(page: Page, text: str) -> None:
    page.fill("#text", text)
    page.click("#compose button")


def test_chat_pages_behind_different_nats_share_posts_and_history(
        lab: tuple[NatLab, Path], browser: Browser) -> None:
    running, folder = lab
    timeout = 60000 if SLOW else 30000
    with _chat_app(running, folder, running.host("alice"), browser, "alice") as alice, \
            _chat_app(running, folder, running.host("bob"), browser, "bob") as bob:
        alice.fill("#group-name", "across")
        alice.click("#create button")
        alice.wait_for_selector("#text:not([disabled])", timeout=20000)
        _join(bob, _invite_from(alice))
        _say(alice, "hello from behind one NAT")
        bob.wait_for_selector("#log li", timeout=timeout)
        line = _lines(bob)[0]
        assert line.endswith(": hello from behind one NAT") and " me: " not in line, line
        assert re.fullmatch("[0-9a-f]{64}", bob.get_attribute("#log li", "title") or "")
        _say(bob, "and back from behind two")
        alice.wait_for_selector("#log li:nth-child(2)", timeout=timeout)
        assert _lines(alice)[1].endswith(": and back from behind two")
        invite = _invite_from(alice)

        with _chat_app(running, folder, running.host("carol"), browser, "carol") as carol:
            _join(carol, invite)
            carol.wait_for_selector("#log li:nth-child(2)", timeout=timeout)
            history = _lines(carol)
            assert [line.split(": ", 1)[1] for line in history] == [
                "hello from behind one NAT", "and back from behind two"], history
            authors = [item.get_attribute("title") for item in carol.query_selector_all("#log li")]
            assert authors[0] != authors[1] and None not in authors
