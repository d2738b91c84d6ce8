"""The app runtime from Python: config validation, every API, every permission rule, and
the bridge's refusals (secret, Origin, Host)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import aiohttp
import pytest

from shoal.runtime import AppHost, ConfigError, load_config
from shoal.runtime.bridge import FILE_ERROR_TYPE
from shoal.runtime.fsapi import BridgeError
from shoal.runtime.pages import (
    IMPORT_MAP_TAG,
    LAUNCH_TAG,
    content_security_policy,
    lowercase_safe,
    page_html,
)
from shoal.runtime.qtscheme import ORIGIN, Answer, answer
from shoal.runtime.testing import BridgeClient
from webapp_checks import WEBAPP


def _app(folder: Path, toml: str, app_py: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "shoal.toml").write_text(toml)
    (folder / "index.html").write_text("<!doctype html><html><head></head><body>hi</body></html>")
    if app_py:
        (folder / "app.py").write_text(app_py)
    return folder


BASE = '[app]\nname = "T"\nid = "test.shoal.t"\n'


# ---------------------------------------------------------------------------- config


@pytest.mark.parametrize(("toml", "key", "reason"), [
    ('[app]\nname = "T"\n', "app.id", "missing"),
    (BASE + "[window]\nwidth = 5\n", "window.width", "integer from 100"),
    (BASE + "[window]\ncolour = 1\n", "window.colour", "unknown key"),
    (BASE + "[permissions]\nfs = { read = [3] }\n", "permissions.fs.read[0]", "string"),
    (BASE + "[permissions]\nos = \"yes\"\n", "permissions.os", "true or false"),
    (BASE + "[permissions]\nsudo = true\n", "permissions.sudo", "unknown key"),
    (BASE + "[permissions]\ndgram = [\"example.com:53\"]\n", "permissions.dgram[0]", "address"),
    (BASE + "[permissions]\ninvoke = [\"rm -rf\"]\n", "permissions.invoke[0]", "function name"),
    (BASE + "[csp]\nscript-src = [\"'unsafe-eval'\"]\n", "csp.script-src[0]", "injected code"),
    (BASE + "[csp]\nsandbox = [\"x\"]\n", "csp.sandbox", "unknown key"),
    ('[app]\nname = "T"\nid = "Not An Id"\n', "app.id", "reverse-DNS"),
    (BASE + "[extra]\n", "extra", "unknown table"),
    ("[app\n", "", "not valid TOML"),
    (BASE + "cross_origin_isolated = 1\n", "app.cross_origin_isolated", "true or false"),
    (BASE + 'entry = "main.html"\n', "app.entry", "'main.html' is not a file"),
    (BASE + "[window]\ntitel = \"x\"\n", "window.titel", "did you mean 'title'?"),
    (BASE + "[permisions]\n", "permisions", "did you mean 'permissions'?"),
    (BASE + "[permissions]\nnetwrok = true\n", "permissions.netwrok", "did you mean 'network'"),
    (BASE + "[permissions]\nfs = { writ = [] }\n", "permissions.fs.writ", "did you mean 'write'"),
    (BASE + '[permissions]\nfs = { write = ["/"] }\n', "permissions.fs.write[0]",
     "whole file system"),
    (BASE + '[permissions]\nfs = { read = ["/tmp/.."] }\n', "permissions.fs.read[0]",
     "whole file system"),
    (BASE + '[permissions]\nfs = { write = ["~"] }\n', "permissions.fs.write[0]",
     "whole home folder"),
])
def test_bad_config_names_file_key_and_reason(tmp_path: Path, toml: str, key: str,
                                             reason: str) -> None:
    _app(tmp_path, toml)
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'shoal.toml'}: {key}")
    assert reason in message
    assert info.value.code == "EINVAL"


async def test_invoke_names_a_function_app_py_exposes(tmp_path: Path) -> None:
    folder = _app(tmp_path / "app", BASE + '[permissions]\ninvoke = ["ad"]\n',
                  "from shoal.runtime import expose\n\n@expose\ndef add(a, b):\n"
                  "    return a + b\n")
    with pytest.raises(ConfigError) as info:
        await AppHost(folder, data_dir=tmp_path / "data").start()
    assert info.value.message.endswith("permissions.invoke[0]: app.py exposes no function "
                                       "'ad' (did you mean 'add'?) (exposed: add)")
    result = subprocess.run([sys.executable, "-m", "shoal.cli.main", "run", "--browser",
                             str(folder), "--data-dir", str(tmp_path / "data")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1 and "no function 'ad'" in result.stderr


def test_good_config_denies_everything_not_granted(tmp_path: Path) -> None:
    _app(tmp_path, BASE + '[permissions]\nos = true\ndgram = ["127.0.0.1:*", "10.0.0.1:53"]\n'
                          '[csp]\nimg-src = ["https://images.example"]\n')
    config = load_config(tmp_path)
    assert config.permissions.os and not config.permissions.network
    assert not config.permissions.window and config.permissions.fs_read == ()
    assert config.permissions.dgram == (("127.0.0.1", None), ("10.0.0.1", 53))
    assert config.window.title == "T"
    assert config.csp == {"img-src": ("https://images.example",)}
    assert not config.cross_origin_isolated


@pytest.mark.parametrize("isolated", [False, True])
async def test_cross_origin_isolation_is_the_apps_choice(tmp_path: Path, isolated: bool) -> None:
    toml = BASE + ("cross_origin_isolated = true\n" if isolated else "")
    app = _app(tmp_path / "app", toml)
    async with AppHost(app, data_dir=tmp_path / "data") as host, aiohttp.ClientSession() as s:
        assert host.server is not None
        for path in ("/", "/_shoal/api.js"):
            async with s.get(f"{host.server.origin}{path}") as r:
                assert r.status == 200
                assert r.headers["Cross-Origin-Resource-Policy"] == "same-origin"
                assert ("Cross-Origin-Opener-Policy" in r.headers) is isolated
                assert r.headers.get("Cross-Origin-Embedder-Policy") == (
                    "require-corp" if isolated else None)


def test_missing_config_is_one_clear_cli_line(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "shoal.cli.main", "run", "--browser",
                             str(tmp_path)], capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line]
    assert len(lines) == 1 and "shoal.toml: not found" in lines[0]


@pytest.mark.parametrize(("code", "expected"), [
    ("def broken(:\n", "app.py:1: SyntaxError"),
    ("raise RuntimeError('no database')\n", "failed to load: RuntimeError: no database"),
])
def test_broken_app_code_is_one_clear_cli_line(tmp_path: Path, code: str,
                                                expected: str) -> None:
    folder = _app(tmp_path / "app", BASE)
    (folder / "app.py").write_text(code)
    result = subprocess.run([sys.executable, "-m", "shoal.cli.main", "run", "--browser",
                             str(folder), "--data-dir", str(tmp_path / "data")],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line]
    assert len(lines) == 1 and expected in lines[0], lines


@pytest.mark.parametrize("template", ["blank", "chat", "notes"])
def test_init_writes_an_app_whose_own_test_passes(tmp_path: Path, template: str) -> None:
    folder = tmp_path / "notes"
    made = subprocess.run([sys.executable, "-m", "shoal.cli.main", "init", str(folder),
                           "--template", template, "--json"],
                          capture_output=True, text=True, timeout=30)
    assert made.returncode == 0, made.stderr
    assert {"index.html", "app.js", "shoal.toml", "test_app.py"} <= {
        p.name for p in folder.iterdir()}
    assert load_config(folder).id == "local.shoal.notes"
    again = subprocess.run([sys.executable, "-m", "shoal.cli.main", "init", str(folder)],
                           capture_output=True, text=True, timeout=30)
    assert again.returncode != 0 and "already exists" in again.stderr
    tested = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             "--rootdir", str(folder), str(folder / "test_app.py")],
                            capture_output=True, text=True, timeout=120, cwd=folder,
                            env={**os.environ, "SHOAL_NO_LAN": "1"})
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "1 passed" in tested.stdout
    # Its JS tests too, as the next step init prints says.
    js = subprocess.run([sys.executable, "-m", "shoal.cli.main", "test", str(folder)],
                        capture_output=True, text=True, timeout=300,
                        env={**os.environ, "SHOAL_NO_LAN": "1"})
    assert js.returncode == 0 and "# fail 0" in js.stdout, js.stdout + js.stderr
    assert "# pass 0" not in js.stdout


# ---------------------------------------------------------------------------- files


@pytest.fixture
async def page(tmp_path: Path):
    outside = tmp_path / "outside"
    (outside / "docs").mkdir(parents=True)
    (outside / "docs" / "readme.txt").write_text("granted for reading")
    (outside / "box").mkdir()
    (outside / "secret.txt").write_text("not granted")
    folder = _app(tmp_path / "app", BASE + (
        "[permissions]\n"
        f'fs = {{ read = ["{outside / "docs"}"], write = ["{outside / "box"}"] }}\n'
    ))
    data = tmp_path / "data"
    async with AppHost(folder, data_dir=data) as host, BridgeClient(host) as client:
        client.outside = outside  # type: ignore[attr-defined]
        client.data = data  # type: ignore[attr-defined]
        yield client


async def _code(coroutine) -> str:
    with pytest.raises(BridgeError) as info:
        await coroutine
    return info.value.code


async def test_files_in_the_data_dir(page) -> None:
    await page.call("fs.mkdir", "a/b", True)
    await page.call("fs.writeFile", "a/b/c.txt", b"\x00\x01binary")
    assert await page.call("fs.readFile", "a/b/c.txt") == b"\x00\x01binary"
    await page.call("fs.appendFile", "a/b/c.txt", b"!")
    info = await page.call("fs.stat", "a/b/c.txt")
    assert info["size"] == 9 and info["isFile"] and not info["isDirectory"]
    assert await page.call("fs.read", "a/b/c.txt", 2, 3) == b"bin"
    await page.call("fs.rename", "a/b/c.txt", "a/moved.txt")
    assert [e["name"] for e in await page.call("fs.readdir", "a")] == ["b", "moved.txt"]
    await page.call("fs.rm", "a", True)
    assert await page.call("fs.readdir", ".") == []
    assert await page.call("fs.dataDir") == str(page.data.resolve())


async def test_granted_folders_are_read_only_or_read_write(page) -> None:
    docs, box = page.outside / "docs", page.outside / "box"
    assert await page.call("fs.readFile", str(docs / "readme.txt")) == b"granted for reading"
    assert await _code(page.call("fs.writeFile", str(docs / "new.txt"), b"x")) == "EPERM"
    assert not (docs / "new.txt").exists()
    assert await _code(page.call("fs.rm", str(docs / "readme.txt"))) == "EPERM"
    assert (docs / "readme.txt").exists()
    await page.call("fs.writeFile", str(box / "ok.txt"), b"written")
    assert (box / "ok.txt").read_bytes() == b"written"
    assert await _code(page.call("fs.rm", str(box))) == "EPERM"  # a granted root itself


async def test_paths_are_resolved_before_they_are_checked(page) -> None:
    outside = page.outside
    assert await _code(page.call("fs.readFile", str(outside / "secret.txt"))) == "EPERM"
    assert await _code(page.call("fs.readFile", "../outside/secret.txt")) == "EPERM"
    assert await _code(page.call("fs.readFile",
                                 str(outside / "docs" / ".." / "secret.txt"))) == "EPERM"
    # A symlink inside the data dir that points out is followed, then refused.
    os.symlink(outside / "secret.txt", page.data / "escape")
    assert await _code(page.call("fs.readFile", "escape")) == "EPERM"
    assert await _code(page.call("fs.writeFile", "escape", b"overwrite")) == "EPERM"
    assert (outside / "secret.txt").read_text() == "not granted"
    os.symlink(outside, page.data / "dirlink")
    assert await _code(page.call("fs.readdir", "dirlink")) == "EPERM"
    assert await _code(page.call("fs.writeFile", "dirlink/planted.txt", b"x")) == "EPERM"
    assert not (outside / "planted.txt").exists()
    # A symlink that stays inside a grant is fine.
    os.symlink(outside / "docs" / "readme.txt", page.data / "inside")
    assert await page.call("fs.readFile", "inside") == b"granted for reading"
    # A prefix is not a parent: "docs-evil" is not inside "docs".
    (outside / "docs-evil").mkdir()
    (outside / "docs-evil" / "x").write_text("x")
    assert await _code(page.call("fs.readFile", str(outside / "docs-evil" / "x"))) == "EPERM"
    assert await _code(page.call("fs.readFile", "")) == "EINVAL"
    assert await _code(page.call("fs.readFile", "a\x00b")) == "EINVAL"
    assert await _code(page.call("fs.rename", "x", str(outside / "stolen"))) == "EPERM"


async def test_watch_reports_changes(page) -> None:
    await page.call("fs.mkdir", "watched")
    watch_id = await page.call("fs.watch", "watched")
    await asyncio.sleep(0.1)
    (page.data / "watched" / "new.txt").write_text("x")
    event, data = await asyncio.wait_for(page.events.get(), 5)
    assert event == "fs.watch" and data == {"id": watch_id, "type": "rename",
                                            "filename": "new.txt"}
    await page.call("fs.unwatch", watch_id)


async def test_capabilities_not_declared_are_refused(page) -> None:
    for call, args in [("os.info", ()), ("network.id", ()), ("window.setTitle", ("x",)),
                       ("dialog.open", ()), ("clipboard.readText", ()),
                       ("notification.show", ("t",)), ("invoke", ("anything",)),
                       ("dgram.createSocket", ())]:
        assert await _code(page.call(call, *args)) == "EPERM", call
    assert await _code(page.call("no.such.call")) == "ENOSYS"
    assert await _code(page.call("fs.readFile")) == "EINVAL"


# ---------------------------------------------------------------------------- other APIs


async def test_invoke_dgram_and_os(tmp_path: Path) -> None:
    async with AppHost(WEBAPP, data_dir=tmp_path) as host, BridgeClient(host) as page:
        assert await page.call("invoke", "add", [20, 22]) == 42
        assert await page.call("invoke", "add", {"a": 1, "b": 2}) == 3
        assert await _code(page.call("invoke", "add", [1])) == "EINVAL"
        assert await _code(page.call("invoke", "not_granted")) == "EPERM"
        assert await _code(page.call("invoke", "fail")) == "EAPP"
        info = await page.call("os.info")
        assert info["platform"] == "linux" and info["cpus"] >= 1 and info["totalmem"] > 0
        dirs = await page.call("os.dirs")
        assert dirs["data"] == str(tmp_path.resolve())
        # UDP to an allowed host works both ways; anything else is refused.
        peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        peer.bind(("127.0.0.1", 0))
        peer.settimeout(5)
        sock = await page.call("dgram.createSocket", {"address": "127.0.0.1"})
        await page.call("dgram.send", sock, b"ping", "127.0.0.1", peer.getsockname()[1])
        data, source = peer.recvfrom(100)
        assert data == b"ping"
        peer.sendto(b"pong", source)
        event, message = await asyncio.wait_for(page.events.get(), 5)
        assert event == "dgram.message" and message["id"] == sock
        assert await _code(page.call("dgram.send", sock, b"x", "127.0.0.2", 9)) == "EPERM"
        assert await _code(page.call("dgram.send", sock, b"x", "example.org", 9)) == "EINVAL"
        await page.call("dgram.close", sock)
        peer.close()


async def test_network_api_sends_between_two_apps(tmp_path: Path) -> None:
    toml = BASE + ('[permissions]\nnetwork = true\n'
                   '[network]\nlan = false\nlisten = "127.0.0.1:0"\n')
    first, second = _app(tmp_path / "a", toml), _app(tmp_path / "b", toml)
    async with AppHost(first, data_dir=tmp_path / "da", lan_discovery=False) as host_a, \
            AppHost(second, data_dir=tmp_path / "db", lan_discovery=False) as host_b, \
            BridgeClient(host_a) as page_a, BridgeClient(host_b) as page_b:
        id_b = await page_b.call("network.id")
        assert host_b.node is not None and host_a.node is not None
        host_a.node.add_peer_address(id_b, host_b.node.address)
        delivery = await page_a.call("network.send", id_b, b"hello app", {"timeout": 10})
        assert delivery["path"] == "direct"
        event, message = await asyncio.wait_for(page_b.events.get(), 5)
        while event != "network.message":
            event, message = await asyncio.wait_for(page_b.events.get(), 5)
        assert message["from"] == await page_a.call("network.id")
        assert base64.b64decode(message["data"]) == b"hello app"
        assert message["path"] == "direct"


# ---------------------------------------------------------------------------- the wall


async def test_bridge_refuses_without_secret_foreign_origin_or_host(tmp_path: Path) -> None:
    async with AppHost(WEBAPP, data_dir=tmp_path) as host:
        server = host.server
        assert server is not None
        bridge = f"{server.origin}/_shoal/bridge"
        attempts = [
            (f"{bridge}", {"Origin": server.origin}),
            (f"{bridge}?secret=wrong", {"Origin": server.origin}),
            (f"{bridge}?secret={server.secret}", {"Origin": "http://evil.example"}),
            (f"{bridge}?secret={server.secret}", {"Origin": server.origin,
                                                   "Host": "evil.example:80"}),
            (f"{bridge}?secret={server.secret}", {}),
        ]
        async with aiohttp.ClientSession() as session:
            for url, headers in attempts:
                with pytest.raises(aiohttp.WSServerHandshakeError) as info:
                    await session.ws_connect(url, headers=headers)
                assert info.value.status == 403, (url, headers)
            # Files: a rebinding Host is refused; the config and app.py are never served.
            async with session.get(f"{server.origin}/", headers={"Host": "evil.example"}) as r:
                assert r.status == 403
            for hidden in ("shoal.toml", "app.py", "../../etc/passwd", ".git/config"):
                async with session.get(f"{server.origin}/{hidden}") as r:
                    assert r.status == 404, hidden
            async with session.get(f"{server.origin}/") as r:
                policy = r.headers["Content-Security-Policy"]
                html = await r.text()
        assert server.refused == len(attempts) + 1
        assert "'unsafe-eval'" not in policy and "'unsafe-inline'" not in policy
        assert f"connect-src 'self' ws://127.0.0.1:{server.port}/_shoal/bridge" in policy
        assert '<script type="importmap">' in html


async def test_malformed_bridge_messages_get_errors_not_crashes(tmp_path: Path) -> None:
    async with AppHost(WEBAPP, data_dir=tmp_path) as host, BridgeClient(host) as page:
        junk: list[str | bytes] = ["not json", "[]", json.dumps({"id": "x"}), b"\x00\x00",
                                   json.dumps({"id": -1, "call": "fs.dataDir"}),
                                   json.dumps({"id": 1 << 32, "call": "fs.read"}),
                                   json.dumps({"id": True, "call": "fs.dataDir"})]
        for message in junk:
            await page.send_raw(message)
        replies = [await asyncio.wait_for(page.stray.get(), 5) for _ in junk]
        assert [r["error"]["code"] for r in replies] == ["EINVAL"] * len(junk)
        assert {r["id"] for r in replies} == {0}
        assert await page.call("invoke", "add", [1, 1]) == 2  # still serving


async def test_a_bug_behind_a_call_is_an_error_for_the_page(tmp_path: Path) -> None:
    async with AppHost(WEBAPP, data_dir=tmp_path) as host, BridgeClient(host) as page:
        assert host.server is not None

        async def broken() -> None:
            await asyncio.sleep(0)
            raise RuntimeError("a bug")

        host.server.calls["broken"] = broken
        with pytest.raises(BridgeError) as info:
            await page.call("broken")
        assert info.value.code == "EIO"
        assert await page.call("invoke", "add", [1, 1]) == 2  # still serving


async def test_file_endpoint_has_the_same_wall(tmp_path: Path) -> None:
    async with AppHost(WEBAPP, data_dir=tmp_path) as host:
        server = host.server
        assert server is not None
        (tmp_path / "page.txt").write_text("for the page")
        url = f"{server.origin}/_shoal/file"
        good = {"X-Shoal-Secret": server.secret}
        async with aiohttp.ClientSession() as session:
            async with session.get(url, params={"path": "page.txt"}, headers=good) as r:
                assert r.status == 200 and await r.read() == b"for the page"
            for headers in ({}, {"X-Shoal-Secret": "wrong"},
                            {**good, "Origin": "http://evil.example"},
                            {**good, "Sec-Fetch-Site": "cross-site"},
                            {**good, "Host": "evil.example"}):
                async with session.get(url, params={"path": "page.txt"}, headers=headers) as r:
                    assert r.status == 403, headers
            # A call that fails is an answer, not a failed request (no noise in the console).
            for path, code in (("/etc/hostname", "EPERM"), ("nothing.txt", "ENOENT"),
                               (".", "EISDIR")):
                async with session.get(url, params={"path": path}, headers=good) as r:
                    assert r.status == 200 and r.content_type == FILE_ERROR_TYPE
                    assert (await r.json(content_type=None))["code"] == code, path


async def test_pages_of_the_window_scheme_alone_reach_the_bridge(tmp_path: Path) -> None:
    """With the window serving the pages (``shoal://app``), the server's bridge and file
    endpoint answer that origin only, and bulk reads get CORS for it alone."""
    async with AppHost(WEBAPP, data_dir=tmp_path, page_origin=ORIGIN) as host:
        server = host.server
        assert server is not None
        (tmp_path / "page.txt").write_text("for the page")
        bridge = f"{server.origin}/_shoal/bridge?secret={server.secret}"
        files = f"{server.origin}/_shoal/file"
        good = {"X-Shoal-Secret": server.secret, "Origin": ORIGIN,
                "Sec-Fetch-Site": "cross-site"}
        async with aiohttp.ClientSession() as session:
            ws = await session.ws_connect(bridge, headers={"Origin": ORIGIN})
            await ws.send_str(json.dumps({"id": 1, "call": "invoke", "args": ["add", [2, 3]]}))
            assert json.loads((await ws.receive()).data) == {"id": 1, "ok": 5}
            await ws.close()
            with pytest.raises(aiohttp.WSServerHandshakeError):
                await session.ws_connect(bridge, headers={"Origin": server.origin})
            preflight = {"Origin": ORIGIN, "Access-Control-Request-Method": "GET",
                         "Access-Control-Request-Headers": "x-shoal-secret"}
            async with session.options(files, headers=preflight) as r:
                assert r.status == 204
                assert r.headers["Access-Control-Allow-Origin"] == ORIGIN
                assert r.headers["Access-Control-Allow-Headers"] == "X-Shoal-Secret"
            async with session.options(files, headers={**preflight,
                                                       "Origin": "http://evil.example"}) as r:
                assert r.status == 403
            async with session.get(files, params={"path": "page.txt"}, headers=good) as r:
                assert r.status == 200 and await r.read() == b"for the page"
                assert r.headers["Access-Control-Allow-Origin"] == ORIGIN
            for headers in ({**good, "Origin": server.origin},
                            {**good, "X-Shoal-Secret": "wrong"}):
                async with session.get(files, params={"path": "page.txt"},
                                       headers=headers) as r:
                    assert r.status == 403, headers
        assert server.refused == 4


async def test_server_pages_refuse_cross_origin_preflights(tmp_path: Path) -> None:
    async with AppHost(WEBAPP, data_dir=tmp_path) as host:
        server = host.server
        assert server is not None
        async with aiohttp.ClientSession() as session, session.options(
                f"{server.origin}/_shoal/file", headers={"Origin": ORIGIN}) as r:
            assert r.status == 403
            assert "Access-Control-Allow-Origin" not in r.headers


def test_window_scheme_serves_the_app_and_nothing_else(tmp_path: Path) -> None:
    folder = _app(tmp_path / "app", BASE)
    (folder / "index.html").write_text("<html><head><title>t</title></head></html>")
    (folder / "style.css").write_text("body {}")
    (folder / ".private").write_text("hidden")
    (tmp_path / "outside.txt").write_text("outside")
    (folder / "escape.txt").symlink_to(tmp_path / "outside.txt")
    config = load_config(folder)

    def ask(path: str, host: str = "app", method: bytes = b"GET") -> Answer | None:
        return answer(config, host=host, path=path, method=method)

    page = ask("/")
    assert page is not None and page.kind == "text/html; charset=utf-8"
    assert b"importmap" not in page.body  # "shoal:api" resolves to shoal://api/ instead
    assert b"<meta" not in page.body
    with_policy = answer(config, host="app", path="/", method=b"GET", policy="img-src 'A'")
    assert with_policy is not None and with_policy.body.startswith(
        b'<meta http-equiv="Content-Security-Policy" content="img-src &#x27;A&#x27;"><html>')
    style = ask("/style.css")
    assert style is not None and style.file == folder / "style.css"
    api = ask("/", host="api")
    assert api is not None and api.cross_origin and b"export const fs" in api.body
    fixed_url = ask("/_shoal/api.js")  # re-exports it: one module instance either way
    assert fixed_url is not None and fixed_url.body == b'export * from "shoal:api";\n'
    for path in ("/shoal.toml", "/app.py", "/.private", "/../outside.txt", "/escape.txt",
                 "/missing.js"):
        assert ask(path) is None, path
    assert ask("/", host="elsewhere") is None
    assert ask("/", method=b"POST") is None


def test_window_scheme_policy_survives_lowercased_headers() -> None:
    """QtWebEngine lowercases header values from a scheme handler: the window's own
    policy must mean the same in lower case, so it carries no hash."""
    policy = content_security_policy(4321, {}, api_origin="shoal://api")
    assert policy == policy.lower()
    assert "'sha256-" not in policy and "'unsafe-inline'" not in policy
    assert "script-src 'self' shoal://api 'report-sample';" in policy
    assert ("connect-src 'self' ws://127.0.0.1:4321/_shoal/bridge "
            "http://127.0.0.1:4321/_shoal/file;") in policy
    assert lowercase_safe(policy) == (policy, None)


def test_an_apps_case_sensitive_sources_reach_the_window_exactly() -> None:
    """Hashes and capitals in URL paths from ``[csp]``: the header widens them (what
    survives lowercasing), the page's meta element states them exactly."""
    extra = {"script-src": ("'sha256-AbC+/9='", "'sha256-lower'"),
             "img-src": ("https://Pics.example.org/Albums/", "https://CDN.example.org/x"),
             "media-src": ("Media.example.org/Clips/",)}
    policy = content_security_policy(4321, extra, api_origin="shoal://api")
    header, exact = lowercase_safe(policy)
    directives = dict(d.split(" ", 1) for d in header.split("; "))
    assert directives["script-src"] == "'self' shoal://api 'report-sample' 'unsafe-inline'"
    assert directives["img-src"] == "'self' blob: https://Pics.example.org https://CDN.example.org/x"
    assert directives["media-src"] == "'self' blob: Media.example.org"
    assert directives["style-src"] == "'self' 'report-sample'"
    assert directives["default-src"] == "'none'"
    assert exact == ("script-src 'self' shoal://api 'report-sample' 'sha256-AbC+/9=' "
                     "'sha256-lower'; "
                     "img-src 'self' blob: https://Pics.example.org/Albums/ "
                     "https://CDN.example.org/x; "
                     "media-src 'self' blob: Media.example.org/Clips/")


def test_served_pages_keep_their_doctype_first(tmp_path: Path) -> None:
    """What Shoal adds to a page goes after its doctype (before it, the page would be in
    quirks mode): the import map into the head, a policy before everything else."""
    page = tmp_path / "page.html"
    page.write_text("\ufeff<!DOCTYPE html><title>t</title><script src=a.js></script>")
    assert page_html(page).startswith(
        f"\ufeff<!DOCTYPE html>{LAUNCH_TAG}{IMPORT_MAP_TAG}<title>")
    page.write_text('<!doctype html>\n<html><head lang="en"><title>t</title></head></html>')
    assert page_html(page) == ('<!doctype html>\n<html><head lang="en">'
                               f'{LAUNCH_TAG}{IMPORT_MAP_TAG}<title>t</title></head></html>')
    assert page_html(page, import_map=False, policy="script-src 'self'") == (
        '<!doctype html><meta http-equiv="Content-Security-Policy" '
        'content="script-src &#x27;self&#x27;">\n<html><head lang="en">'
        f'{LAUNCH_TAG}<title>t</title></head></html>')


HOST_UP = """
import asyncio, json, sys
from pathlib import Path
from shoal.runtime.host import AppHost
from shoal.runtime.testing import BridgeClient

async def main():
    async with AppHost(Path(sys.argv[1]), data_dir=Path(sys.argv[2])) as host, \\
            BridgeClient(host) as page:
        await page.call("fs.writeFile", "first.txt", "answered")
        print(json.dumps(sorted(sys.modules)))

asyncio.run(main())
"""

NOT_FOR_EVERY_APP = ("cryptography", "zeroconf", "ifaddr", "pycrdt", "blake3", "rich",
                     "aiohttp", "uvloop", "psutil", "shoal.aio", "shoal.core",
                     "shoal.identity", "shoal.groups", "shoal.inspector",
                     "shoal.runtime.archive")


def test_an_app_without_the_network_loads_none_of_its_stack(tmp_path: Path) -> None:
    # What the window process holds is what the app uses: the node's stack and the other
    # heavy libraries load with the permission or the call that needs them, never for a
    # page's first call.
    data = tmp_path / "data"
    made = subprocess.run(
        [sys.executable, "-c", HOST_UP, str(_app(tmp_path / "app", BASE)), str(data)],
        capture_output=True, text=True, timeout=60, env={**os.environ, "SHOAL_NO_LAN": "1"})
    assert made.returncode == 0, made.stderr
    assert (data / "first.txt").read_text() == "answered"  # the host answered a call
    loaded = json.loads(made.stdout.splitlines()[-1])
    assert "shoal.runtime.bridge" in loaded
    assert [name for name in loaded
            if name.startswith(tuple(f"{heavy}." for heavy in NOT_FOR_EVERY_APP))
            or name in NOT_FOR_EVERY_APP] == []


def test_run_without_a_display_says_so_and_serves_for_a_browser(tmp_path: Path) -> None:
    from shoal.runtime.origins import preferred_port

    env = {k: v for k, v in os.environ.items()
           if k not in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")}
    process = subprocess.Popen(
        [sys.executable, "-m", "shoal.cli.main", "run", "--json", str(WEBAPP),
         "--data-dir", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        assert process.stdout is not None
        notice = json.loads(process.stdout.readline())
        assert notice["event"] == "notice" and "display" in notice["reason"]
        ready = json.loads(process.stdout.readline())
        assert ready["event"] == "ready" and ready["mode"] == "browser"
        # An origin of the app's own, on its own port: the same at each launch.
        port = preferred_port(load_config(WEBAPP).id)
        assert re.fullmatch(rf"http://bridge-checks-[a-z2-7]{{10}}\.localhost:{port}/"
                            r"#shoal=[\w-]+", ready["url"]), ready["url"]
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_a_missing_webview_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    from shoal.runtime import window

    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.setenv("QT_QPA_PLATFORM", "offscreen")  # a display for Qt alone
    assert window.gui_unavailable("qt") is None
    assert "no display" in (window.gui_unavailable("gtk") or "")
    monkeypatch.setenv("DISPLAY", ":99")
    installed = {"PySide6.QtWebEngineWidgets": False, "gi": True}
    monkeypatch.setattr(window, "_module_exists", lambda name: installed[name])
    assert "QtWebEngine is not installed" in (window.gui_unavailable("qt") or "")
    assert window.gui_unavailable("gtk") is None and window.gui_unavailable() is None
    monkeypatch.setattr(window, "_webkitgtk_installed", lambda: False)  # bindings alone
    assert "apt install libwebkit2gtk-4.1-0" in (window.gui_unavailable("gtk") or "")
    installed["gi"] = False
    assert "shoal[gtk]" in (window.gui_unavailable("gtk") or "")
    assert "neither" in (window.gui_unavailable() or "")


def test_pyside6s_import_hook_keeps_no_source(tmp_path: Path) -> None:
    pytest.importorskip("PySide6.QtCore")
    (tmp_path / "names_it.py").write_text("# uses PySide6\n")
    (tmp_path / "plain.py").write_text("VALUE = 1\n")
    script = (
        "import linecache, sys\n"
        "import PySide6.QtCore\n"
        "from shoal.runtime.qtscheme import spare_import_hook_memory\n"
        "spare_import_hook_memory()\n"
        f"sys.path.insert(0, {str(tmp_path)!r})\n"
        "import names_it, plain, tabnanny\n"
        "chosen = sys.modules['shibokensupport.feature'].pyside_feature_dict\n"
        "kept = [name for name in linecache.cache if 'names_it' in name or 'plain' in name"
        " or 'tabnanny' in name]\n"
        "print(kept, chosen['names_it'], chosen['plain'], chosen['tabnanny'])\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env={**os.environ, "QT_QPA_PLATFORM": "offscreen"}, timeout=60,
                         check=True).stdout
    # Nothing is kept, and the hook still tells a module that names PySide6 (0) from one
    # that does not (-1).
    assert out.strip() == "[] 0 -1 -1"


def test_a_page_is_on_the_app_origin_only_by_its_whole_host() -> None:
    from shoal.runtime.pages import on_origin

    for url in ("shoal://app", "shoal://app/", "shoal://app/a?b#c", "shoal://app?x",
                "shoal://app#x"):
        assert on_origin(url, "shoal://app"), url
    for url in ("shoal://app.example/", "shoal://apps/", "http://app/", "", "shoal://"):
        assert not on_origin(url, "shoal://app"), url


def test_asking_a_window_its_address_never_waits_forever() -> None:
    from shoal.runtime import window

    never = threading.Event()

    class Window:
        def __init__(self, address: str | None, answers: bool = True) -> None:
            self.address, self.answers = address, answers

        def get_current_url(self) -> str | None:
            if not self.answers:
                never.wait()  # a GUI thread that has gone
            return self.address

    assert window.address_within(Window("shoal://app/"), 1) == "shoal://app/"
    assert window.address_within(Window(None), 1) == ""
    started = time.monotonic()
    assert window.address_within(Window("x", answers=False), 0.2) is None
    assert time.monotonic() - started < 1
    stuck = [t for t in threading.enumerate() if t.is_alive() and not t.daemon
             and t is not threading.main_thread()]
    assert stuck == []  # nothing left that Python would wait for at exit
    never.set()


def test_looking_for_a_webview_imports_none() -> None:
    # Imported, PySide6 hooks every later import (slower, and its source kept in memory).
    script = (
        "import sys\n"
        "from shoal.runtime.window import _module_exists, gui_unavailable\n"
        "gui_unavailable('qt'); gui_unavailable('gtk')\n"
        "found = [_module_exists(n) for n in ('PySide6.QtWebEngineWidgets', 'gi',\n"
        "         'PySide6.NoSuchModule', 'no_such_package.module', 'json.decoder')]\n"
        "print(found, sorted(m for m in sys.modules if m.startswith(('PySide6', 'gi'))))\n"
    )
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env=env, timeout=60, check=True).stdout
    # What is really importable here, found by importing each in a process of its own.
    names = ("PySide6.QtWebEngineWidgets", "gi", "PySide6.NoSuchModule",
             "no_such_package.module", "json.decoder")
    truth = [subprocess.run([sys.executable, "-c", f"import {name}"], env=env, timeout=60,
                            capture_output=True).returncode == 0 for name in names]
    assert out.strip() == f"{truth} []"
    assert truth[2:] == [False, False, True]


def test_a_qt_plugin_missing_system_libraries_is_named(tmp_path: Path) -> None:
    """Qt aborts the whole process when its X11 plugin cannot load; Shoal looks first and
    names what is missing, with the package that has it."""
    from shoal.runtime.window import qt_xcb_missing

    (tmp_path / "dep.c").write_text("int shoal_dep(void) { return 1; }\n")
    (tmp_path / "plugin.c").write_text(
        "int shoal_dep(void);\nint use(void) { return shoal_dep(); }\n")
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(tmp_path / "libxcb-shoaltest.so.4"),
                    "-Wl,-soname,libxcb-shoaltest.so.4", str(tmp_path / "dep.c")], check=True)
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(tmp_path / "libqxcb.so"),
                    str(tmp_path / "plugin.c"), str(tmp_path / "libxcb-shoaltest.so.4")],
                   check=True)
    (tmp_path / "libxcb-shoaltest.so.4").unlink()  # as on a machine without the package
    missing = qt_xcb_missing(tmp_path / "libqxcb.so")
    assert missing[0] == "libxcb-shoaltest.so.4"


def test_without_qts_libraries_the_window_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    from shoal.runtime import window

    monkeypatch.setenv("DISPLAY", ":99")
    monkeypatch.delenv("QT_QPA_PLATFORM", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.setattr(window, "gui_unavailable", lambda gui=None: None)
    monkeypatch.setattr(window, "_module_exists", lambda name: True)
    monkeypatch.setattr(window, "qt_xcb_missing", lambda: ["libxcb-icccm.so.4"])
    assert window.choose_gui(None) == (
        True, "gtk", "Qt cannot open a window on X11: libxcb-icccm.so.4 not found "
        "(apt install libxcb-icccm4); using WebKitGTK instead")
    assert window.choose_gui("qt")[:2] == (False, "qt")  # asked for Qt: serve for a browser
    monkeypatch.setattr(window, "qt_xcb_missing", lambda: [])
    assert window.choose_gui(None) == (True, None, None)


def test_info_says_whether_a_window_opens_and_why_not() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY",
                                                              "QT_QPA_PLATFORM")}
    shoal_info = [sys.executable, "-m", "shoal.cli.main", "info", "--json"]
    headless = json.loads(subprocess.run(shoal_info, capture_output=True, text=True, env=env,
                                         timeout=60, check=True).stdout)
    from shoal import __version__

    assert headless["shoal"] == __version__ and headless["display"] is None
    assert headless["window"] == "does not open: there is no display (DISPLAY or " \
                                 "WAYLAND_DISPLAY is not set)"
    assert set(headless["webviews"]) <= {"QtWebEngine", "WebKitGTK"}
    with_display = json.loads(subprocess.run(
        ["xvfb-run", "--auto-servernum", *shoal_info], capture_output=True, text=True,
        env=env, timeout=60, check=True).stdout)
    assert with_display["display"] and with_display["window"].startswith("opens with ")
    human = subprocess.run(shoal_info[:-1], capture_output=True, text=True, env=env,
                           timeout=60, check=True).stdout
    assert "window:" in human and "does not open" in human


class _Counter:
    """A host plugin: one bridge call and one page."""

    def __init__(self) -> None:
        self.count = 0
        self.window: object = None

    def calls(self, window: object) -> dict:
        self.window = window

        async def add(step: int) -> int:
            self.count += step
            return self.count

        return {"counter.add": add}

    def page(self, path: str) -> tuple[str, bytes] | None:
        if path == "/_shoal/counter.txt":
            return "text/plain; charset=utf-8", str(self.count).encode()
        return None


async def test_a_plugin_of_the_launch_adds_bridge_calls_and_pages(tmp_path: Path) -> None:
    counter = _Counter()
    async with AppHost(WEBAPP, data_dir=tmp_path, plugins=(counter,)) as host, \
            BridgeClient(host) as page, aiohttp.ClientSession() as session:
        assert host.server is not None
        assert await page.call("counter.add", 2) == 2
        assert counter.window is host.window  # the window closes when it is done
        async with session.get(f"{host.server.origin}/_shoal/counter.txt") as answered:
            assert answered.status == 200 and await answered.text() == "2"
            assert answered.headers["Content-Security-Policy"]  # under the app's policy
        async with session.get(f"{host.server.origin}/_shoal/other.txt") as answered:
            assert answered.status == 404
    async with AppHost(WEBAPP, data_dir=tmp_path) as host, BridgeClient(host) as page:
        with pytest.raises(BridgeError):  # no plugin, no call
            await page.call("counter.add", 1)
