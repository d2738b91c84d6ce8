"""The app wall attacked from outside the page: another local process on the loopback
server, a page that floods or stops reading, and a second process racing the file
checks. Each test is one attack; the wall must hold against it."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from shoal.runtime import bridge as bridge_module
from shoal.runtime.bridge import FILE_ERROR_TYPE, AppServer
from shoal.runtime.config import ConfigError, load_config
from shoal.runtime.fsapi import MAX_WATCHES_PER_PAGE, BridgeError, PathPolicy
from shoal.runtime.host import AppHost
from shoal.runtime.system import EXTERNAL
from shoal.runtime.testing import BridgeClient


def _app(folder: Path, permissions: str = "", extra: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "shoal.toml").write_text(
        '[app]\nname = "Wall"\nid = "test.shoal.wall"\n' + extra
        + ("[permissions]\n" + permissions if permissions else ""))
    (folder / "index.html").write_text("<!doctype html><title>wall</title><p>wall</p>")
    return folder


@pytest.fixture
async def granted(tmp_path: Path) -> AsyncIterator[Any]:
    """An app granted ``box`` (read-write) beside ``outside`` (not granted)."""
    box, outside = tmp_path / "box", tmp_path / "outside"
    box.mkdir()
    outside.mkdir()
    (outside / "secret.txt").write_text("not granted")
    (box / "inner").mkdir()
    (box / "inner" / "file.txt").write_text("granted")
    folder = _app(tmp_path / "app", f'fs = {{ write = ["{box}"] }}\n')
    async with AppHost(folder, data_dir=tmp_path / "data") as host, \
            BridgeClient(host) as page:
        page.box, page.outside, page.host = box, outside, host  # type: ignore[attr-defined]
        yield page


async def _code(coroutine: Any) -> str:
    with pytest.raises(BridgeError) as info:
        await coroutine
    return info.value.code


# ---------------------------------------------------------------------------- files


async def test_the_webview_store_is_out_of_the_pages_reach(tmp_path: Path) -> None:
    """Shoal keeps the window's storage in the app's data folder; no path of the page's
    reaches it (a script injected into the page could read another page's cookies)."""
    folder = _app(tmp_path / "app")
    data = tmp_path / "data"
    async with AppHost(folder, data_dir=data) as host, BridgeClient(host) as page:
        (data / ".webview").mkdir()
        (data / ".webview" / "Cookies").write_text("session")
        (data / "notes").mkdir()
        os.symlink(data / ".webview", data / "notes" / "store-link")
        for path in (".webview/Cookies", "./.webview/Cookies", "notes/../.webview/Cookies",
                     f"{os.path.realpath(data)}/.webview/Cookies", "notes/store-link/Cookies"):
            assert await _code(page.call("fs.readFile", path)) == "EPERM", path
        for call in (page.call("fs.rm", ".webview", {"recursive": True}),
                     page.call("fs.writeFile", ".webview/Cookies", "forged")):
            assert await _code(call) == "EPERM"
        with pytest.raises(BridgeError):  # the page's bulk reads over HTTP too
            host._parts[0].open_for_reading(".webview/Cookies")
        assert (data / ".webview" / "Cookies").read_text() == "session"
        await page.call("fs.writeFile", "notes/today.txt", b"hello")
        assert bytes(await page.call("fs.readFile", "notes/today.txt")) == b"hello"


async def test_no_grant_of_an_app_reaches_a_key(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The app's data folder is inside its app folder, it may read and write the whole
    home folder's parent and run cat: still neither its node key nor the user's
    publisher key can be read, served, shipped or moved. A key an older Shoal left in
    the data folder is moved to the keys folder, the same peer id."""
    import aiohttp

    from shoal.identity import Identity, default_identity_path, keys_dir
    from shoal.runtime import archive
    from shoal.runtime.config import node_key_path

    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_DATA_HOME", str(home / ".local" / "share"))
    monkeypatch.delenv("SHOAL_KEYS_DIR")
    folder = _app(tmp_path / "app", f'network = true\ncommands = ["cat"]\nfs = {{ read = '
                  f'["~"], write = ["{tmp_path}/app"] }}\n',
                  '[network]\nlan = false\nlisten = "127.0.0.1:0"\n')
    data = folder / "data"
    data.mkdir()
    old = Identity.generate()
    old.save(data / "identity.key")  # where an older Shoal kept it
    publisher = Identity.load_or_create(default_identity_path())
    async with AppHost(folder, data_dir=data) as host, BridgeClient(host) as page:
        assert host.node is not None and host.node.peer_id == old.peer_id
        assert not (data / "identity.key").exists()
        node_key = node_key_path(data)
        assert Identity.load(node_key).peer_id == old.peer_id
        keys = keys_dir()
        assert keys.is_relative_to(home) and os.stat(keys).st_mode & 0o777 == 0o700
        for path in (str(node_key), str(keys / "identity.key"), "~/.local/share/shoal/keys",
                     f"{data}/../../home/.local/share/shoal/keys/identity.key"):
            assert await _code(page.call("fs.readFile", path)) in ("EPERM", "EISDIR"), path
            assert await _code(page.call("fs.readdir", path)) == "EPERM", path
        assert await _code(page.call("fs.rename", str(data), str(folder / "moved"))) \
            == "EPERM"  # the data folder itself is granted
        ran = await page.call("child_process.exec", "cat", ["identity.key"])
        assert ran["code"] != 0 and ran["stdout"] == ""
        server = host.server
        assert server is not None
        old.save(data / "identity.key")  # left by an older Shoal, say, and not moved yet
        async with aiohttp.ClientSession() as session:
            for path in ("/data/identity.key", "/data/Identity.KEY", f"/data/{node_key.name}"):
                async with session.get(server.origin + path) as response:
                    assert response.status == 404, path
        (data / "identity.key").unlink()
    assert publisher.peer_id == Identity.load(keys / "identity.key").peer_id
    assert not [m for m, _ in archive.app_files(folder) if "key" in m]
    old.save(folder / "left-behind.key")  # a key copied into the app by hand
    with pytest.raises(archive.ArchiveError, match="keys are never shipped"):
        archive.app_files(folder)


async def test_a_closed_app_lets_go_of_its_node_key(tmp_path: Path) -> None:
    """Once the app's host has closed, another copy may run the app's node at once (it
    need not wait for this process to end)."""
    import subprocess
    import sys

    from shoal.runtime.config import node_key_path

    folder = _app(tmp_path / "app", "network = true\n",
                  '[network]\nlan = false\nlisten = "127.0.0.1:0"\n')
    data = tmp_path / "data"
    async with AppHost(folder, data_dir=data):
        pass
    other = subprocess.run([sys.executable, "-c", "import sys\nfrom shoal.identity import "
                            "IdentityLock\nIdentityLock(sys.argv[1])", str(node_key_path(data))],
                           capture_output=True, text=True, timeout=30)
    assert other.returncode == 0, other.stderr


async def test_rm_of_a_link_outside_the_grants_is_refused(granted: Any) -> None:
    """A link outside the grants that points into them: removing it by its own path, or
    by a path through a grant and '..', must not touch it."""
    link = granted.outside / "link"
    os.symlink(granted.box / "inner" / "file.txt", link)
    relative = f"{granted.box}/../outside/link"
    for path in (str(link), relative):
        assert await _code(granted.call("fs.rm", path)) == "EPERM"
        assert await _code(granted.call("fs.rename", path, str(granted.box / "x"))) == "EPERM"
    assert link.is_symlink() and (granted.box / "inner" / "file.txt").exists()
    # A link inside the grants is removed itself, never what it points to.
    os.symlink(granted.outside / "secret.txt", granted.box / "out")
    await granted.call("fs.rm", str(granted.box / "out"))
    assert not (granted.box / "out").is_symlink()
    assert (granted.outside / "secret.txt").read_text() == "not granted"


async def test_a_planted_temporary_file_is_not_followed(granted: Any) -> None:
    target = granted.box / "notes.txt"
    for name in (".notes.txt.shoal-tmp", ".notes.txt.tmp"):  # where a guess would plant
        os.symlink(granted.outside / "secret.txt", granted.box / name)
    await granted.call("fs.writeFile", str(target), b"written")
    assert target.read_bytes() == b"written" and not target.is_symlink()
    assert (granted.outside / "secret.txt").read_text() == "not granted"
    leftovers = sorted(p.name for p in granted.box.iterdir())
    assert leftovers == [".notes.txt.shoal-tmp", ".notes.txt.tmp", "inner", "notes.txt"]


def _swap_after_check(monkeypatch: pytest.MonkeyPatch, folder: Path, outside: Path) -> None:
    """Every path check is followed at once by the attack: ``folder`` (checked, inside
    the grants) becomes a link to ``outside``, as a racing process would make it."""
    for method in ("locate", "locate_entry"):
        original = getattr(PathPolicy, method)

        def checked_then_swapped(self: PathPolicy, *args: Any, _original: Any = original,
                                 **kwargs: Any) -> Any:
            answer = _original(self, *args, **kwargs)
            if folder.is_dir() and not folder.is_symlink():
                shutil.rmtree(folder)
                os.symlink(outside, folder)
            return answer

        monkeypatch.setattr(PathPolicy, method, checked_then_swapped)


@pytest.mark.parametrize("call", ["readFile", "read", "stat", "readdir", "appendFile",
                                  "writeFile", "mkdir", "rm", "rename", "watch", "http"])
async def test_a_folder_swapped_after_the_check_is_not_followed(
        granted: Any, monkeypatch: pytest.MonkeyPatch, call: str) -> None:
    inner, outside = granted.box / "inner", granted.outside
    (outside / "file.txt").write_text("outside")
    _swap_after_check(monkeypatch, inner, outside)
    target = str(inner / "file.txt")
    arguments: dict[str, tuple[Any, ...]] = {
        "readFile": (target,), "read": (target, 0, 100), "stat": (target,),
        "readdir": (str(inner),), "appendFile": (target, b" appended"),
        "writeFile": (target, b"overwritten"), "mkdir": (str(inner / "new"),),
        "rm": (target,), "rename": (target, str(granted.box / "taken.txt")),
        "watch": (str(inner),),
    }
    if call == "http":
        server = granted.host.server
        import aiohttp

        async with aiohttp.ClientSession() as session, session.get(
                f"{server.origin}/_shoal/file", params={"path": target},
                headers={"X-Shoal-Secret": server.secret}) as response:
            assert response.content_type == FILE_ERROR_TYPE
            assert json.loads(await response.read())["code"] in ("ELOOP", "ENOTDIR")
    else:
        with pytest.raises(BridgeError) as info:
            await granted.call(f"fs.{call}", *arguments[call])
        assert info.value.code in ("ELOOP", "ENOTDIR"), info.value
    assert inner.is_symlink()  # the attack happened
    assert sorted(p.name for p in outside.iterdir()) == ["file.txt", "secret.txt"]
    assert (outside / "file.txt").read_text() == "outside"


async def test_a_fifo_is_refused_not_waited_on(granted: Any) -> None:
    fifo = granted.box / "pipe"
    os.mkfifo(fifo)
    for call, args in (("fs.readFile", ()), ("fs.read", (0, 10)), ("fs.appendFile", (b"x",))):
        assert await asyncio.wait_for(_code(granted.call(call, str(fifo), *args)), 5) in (
            "EINVAL", "ENXIO")
    # Every I/O thread is still free.
    answers = await asyncio.wait_for(asyncio.gather(*(
        granted.call("fs.readFile", str(granted.box / "inner" / "file.txt"))
        for _ in range(40))), 10)
    assert set(answers) == {b"granted"}


# ---------------------------------------------------------------------------- pages


async def test_watches_are_capped_and_end_with_their_page(granted: Any) -> None:
    host = granted.host
    files = host._parts[0]
    watched = [await granted.call("fs.watch", str(granted.box)) for _ in
               range(MAX_WATCHES_PER_PAGE)]
    assert await _code(granted.call("fs.watch", str(granted.box))) == "EMFILE"
    assert files.watching == len(watched)
    await granted.call("fs.unwatch", watched[0])
    assert files.watching == len(watched) - 1
    await granted.__aexit__(None, None, None)  # the page goes away
    for _ in range(50):
        if files.watching == 0:
            break
        await asyncio.sleep(0.05)
    assert files.watching == 0


async def test_open_external_needs_its_permission_and_is_rate_limited(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[str] = []
    monkeypatch.setattr("webbrowser.open", lambda url: opened.append(url) or True)
    monkeypatch.setattr(EXTERNAL, "_tokens", float(EXTERNAL.burst))
    denied = _app(tmp_path / "denied")
    async with AppHost(denied, data_dir=tmp_path / "d1") as host, BridgeClient(host) as page:
        assert await _code(page.call("shell.openExternal", "https://example.org/")) == "EPERM"
    allowed = _app(tmp_path / "allowed", "shell = true\n")
    async with AppHost(allowed, data_dir=tmp_path / "d2") as host, BridgeClient(host) as page:
        codes = []
        for index in range(31):
            try:
                await page.call("shell.openExternal", f"https://example.org/{index}")
                codes.append("ok")
            except BridgeError as exc:
                codes.append(exc.code)
    assert codes[:EXTERNAL.burst] == ["ok"] * EXTERNAL.burst
    assert codes.count("ok") <= EXTERNAL.burst + 1 and "EAGAIN" in codes
    assert len(opened) == codes.count("ok")


@pytest.mark.parametrize("source", [
    "'UNSAFE-EVAL'", "'Unsafe-Inline'", "'self'\t'unsafe-eval'", "'self'\x0c",
    "'UNSAFE-HASHES'", "'nonce-abc'", "DATA:", "blob:", "Blob:", "https:", "*",
    "https://*", "'self' 'unsafe-eval'", "'self';script-src", "filesystem:",
])
def test_csp_sources_are_read_as_a_browser_reads_them(tmp_path: Path, source: str) -> None:
    directive = "style-src" if "INLINE" in source.upper() else "script-src"
    folder = _app(tmp_path, extra=f"[csp]\n{directive} = [{json.dumps(source)}]\n")
    with pytest.raises(ConfigError) as info:
        load_config(folder)
    assert f"csp.{directive}[0]" in info.value.message


def test_csp_keeps_what_is_safe(tmp_path: Path) -> None:
    folder = _app(tmp_path, extra='[csp]\nscript-src = ["\'SELF\'", "https://cdn.example"]\n'
                                  'img-src = ["data:", "https://*.images.example"]\n')
    assert load_config(folder).csp == {"script-src": ("'self'", "https://cdn.example"),
                                       "img-src": ("data:", "https://*.images.example")}


# ---------------------------------------------------------------------------- the server


async def _raw(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


def _buffered(server: AppServer) -> int:
    return sum(c._transport.get_write_buffer_size()  # type: ignore[union-attr]
               for c in server._server._connections if c._transport is not None)


async def test_pipelined_requests_never_read_stay_in_the_socket(tmp_path: Path) -> None:
    async with AppHost(_app(tmp_path / "app"), data_dir=tmp_path / "d") as host:
        server = host.server
        assert server is not None
        _reader, writer = await _raw(server.port)
        request = f"GET /_shoal/api.js HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n\r\n"
        writer.write(request.encode() * 20_000)  # about 1 MB, answered with 500 MB
        await asyncio.sleep(1.0)
        # What is not read waits in the client's socket: the server holds one answer's
        # worth past its high-water mark, not 20,000 answers.
        assert _buffered(server) < 1 << 20
        writer.close()


async def test_a_connection_flood_leaves_room_for_the_page(tmp_path: Path) -> None:
    async with AppHost(_app(tmp_path / "app"), data_dir=tmp_path / "d") as host, \
            BridgeClient(host) as page:
        server = host.server
        assert server is not None
        cap = server._server.max_connections
        idle = [await _raw(server.port) for _ in range(cap + 50)]
        await asyncio.sleep(0.2)
        assert len(server._server._connections) <= cap
        # The page's bridge (an open WebSocket) was not the one closed to make room,
        # and a new request is answered.
        assert await page.call("fs.dataDir")
        reader, writer = await _raw(server.port)
        writer.write(f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n\r\n".encode())
        assert (await asyncio.wait_for(reader.readline(), 5)).startswith(b"HTTP/1.1 200")
        for _, idle_writer in idle:
            idle_writer.close()
        writer.close()


async def test_server_errors_carry_the_security_headers(tmp_path: Path) -> None:
    folder = _app(tmp_path / "app")
    os.symlink(folder / "shoal.toml", folder / "alias.txt")
    os.symlink(folder / "shoal.toml", folder / "ALIAS.html")
    async with AppHost(folder, data_dir=tmp_path / "d") as host:
        server = host.server
        assert server is not None
        for path, status in (("/%00", 400), ("/a%00b.html", 400), ("/alias.txt", 404),
                             ("/ALIAS.html", 404), ("/Shoal.TOML", 404)):
            reader, writer = await _raw(server.port)
            writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
                         "Connection: close\r\n\r\n".encode())
            head = (await asyncio.wait_for(reader.read(), 5)).decode("latin-1")
            writer.close()
            assert head.startswith(f"HTTP/1.1 {status}"), (path, head[:80])
            assert "Content-Security-Policy: default-src 'none'" in head, path
            assert "[app]" not in head


async def test_service_worker_scripts_are_refused(tmp_path: Path) -> None:
    folder = _app(tmp_path / "app")
    (folder / "sw.js").write_text("self.onfetch = () => {};")
    async with AppHost(folder, data_dir=tmp_path / "d") as host:
        server = host.server
        assert server is not None
        reader, writer = await _raw(server.port)
        writer.write(f"GET /sw.js HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
                     "Service-Worker: script\r\nConnection: close\r\n\r\n".encode())
        assert (await asyncio.wait_for(reader.read(), 5)).startswith(b"HTTP/1.1 403")
        writer.close()


# ---------------------------------------------------------------------------- the bridge


async def test_a_page_that_stops_reading_cannot_grow_the_host(tmp_path: Path) -> None:
    folder = _app(tmp_path / "app")
    data = tmp_path / "d"
    async with AppHost(folder, data_dir=data) as host, BridgeClient(host) as page:
        server = host.server
        assert server is not None
        (data / "big.bin").write_bytes(os.urandom(2 << 20))
        page.websocket.transport.pause_reading()  # the page reads nothing from now on
        for call_id in range(300):
            await page.send_raw(json.dumps({"id": call_id + 1, "call": "fs.readFile",
                                            "args": ["big.bin"]}))
        for _ in range(20):
            await asyncio.sleep(0.1)
        # At most a few results wait in the host (and the rest of the calls wait, unread,
        # in the socket), not 300 x 2 MB.
        assert _buffered(server) < 12 << 20
        session = next(iter(server._sessions))
        assert len(session._in_flight) < bridge_module.MAX_CALLS_IN_FLIGHT
        page.websocket.transport.resume_reading()


async def test_instant_answers_to_a_page_that_does_not_read_are_bounded(
        tmp_path: Path) -> None:
    async with AppHost(_app(tmp_path / "app"), data_dir=tmp_path / "d") as host, \
            BridgeClient(host) as page:
        server = host.server
        assert server is not None
        page.websocket.transport.pause_reading()
        big_answer = json.dumps({"id": 1, "call": "x" * 60_000, "args": []})
        for _ in range(4000):  # each answered at once: ENOSYS, naming the call
            try:  # the host stops reading once its answers back up: so does the attack
                await asyncio.wait_for(page.send_raw(big_answer), 0.5)
            except TimeoutError:
                break
        await asyncio.sleep(0.5)
        assert _buffered(server) < 4 << 20
        page.websocket.transport.resume_reading()


async def test_one_page_flooding_calls_takes_turns_with_everyone_else(tmp_path: Path) -> None:
    async with AppHost(_app(tmp_path / "app"), data_dir=tmp_path / "d") as host, \
            BridgeClient(host) as page:
        server = host.server
        assert server is not None
        handled = [0]

        async def count() -> int:
            handled[0] += 1
            return handled[0]

        server.calls["test.count"] = count
        loop = asyncio.get_running_loop()
        per_turn: list[int] = []
        done = asyncio.Event()

        def probe(last: int) -> None:
            per_turn.append(handled[0] - last)
            if not done.is_set():
                loop.call_soon(probe, handled[0])

        message = json.dumps({"id": 1, "call": "test.count", "args": []})
        for _ in range(20_000):  # all at once, as fast as the socket takes them
            page.websocket.protocol.send_text(message.encode())
        page.websocket.send_data()
        loop.call_soon(probe, 0)
        for _ in range(600):
            if handled[0] >= 20_000:
                break
            await asyncio.sleep(0.02)
        done.set()
        assert handled[0] >= 20_000
        assert max(per_turn) <= bridge_module.CALLS_PER_TURN * 2, max(per_turn)


async def test_a_fifo_is_never_served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A FIFO where a page file was (swapped in after the check) or in the data folder:
    neither the app's files nor /_shoal/file answer it as a file, nor wait on it."""
    import aiohttp

    folder = _app(tmp_path / "app")
    (folder / "notes.txt").write_text("notes")
    data = tmp_path / "data"
    data.mkdir()
    os.mkfifo(data / "pipe")
    os.mkfifo(tmp_path / "swapped")
    checked = bridge_module.app_file

    def checked_then_swapped(config: Any, relative: str) -> Path | None:
        found = checked(config, relative)
        return tmp_path / "swapped" if found is not None and found.name == "notes.txt" \
            else found

    monkeypatch.setattr(bridge_module, "app_file", checked_then_swapped)
    async with AppHost(folder, data_dir=data) as host:
        server = host.server
        assert server is not None
        timeout = aiohttp.ClientTimeout(total=5)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            async with session.get(f"{server.origin}/notes.txt") as response:
                assert response.status == 404
            async with session.get(f"{server.origin}/_shoal/file", params={"path": "pipe"},
                                   headers={"X-Shoal-Secret": server.secret}) as response:
                assert response.content_type == FILE_ERROR_TYPE
                assert json.loads(await response.read())["code"] == "EINVAL"
            async with session.get(server.origin + "/") as response:  # still serving
                assert response.status == 200
