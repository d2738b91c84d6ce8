"""The CLI as a new user meets it: errors in one line with honest exit statuses, output
that can be pasted back, nothing left behind by a failed start. Each test runs the
``shoal`` command in a subprocess, as a user would."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cli_helpers import free_port, running_introducer

LOOPBACK = "127.0.0.1:0"


def _shoal(*args: str) -> list[str]:
    return [sys.executable, "-m", "shoal.cli.main", *args]


def _run(*args: str, cwd: Path | None = None, timeout: float = 60
         ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(_shoal(*args), capture_output=True, text=True, timeout=timeout,
                          cwd=cwd)


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A loopback port held by another program, for TCP and UDP alike."""
    with socket.socket() as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        tcp.bind(("127.0.0.1", 0))
        tcp.listen()
        port = tcp.getsockname()[1]
        udp.bind(("127.0.0.1", port))
        yield port


def _one_error_line(result: subprocess.CompletedProcess[str], code: str) -> str:
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].endswith(f"({code})"), result.stderr
    return lines[0]


@pytest.mark.parametrize("command", ["run", "dev"])
def test_a_taken_port_is_one_line_with_its_code_and_a_hint(tmp_path, taken_port: int,
                                                            command: str) -> None:
    assert _run("init", "notes", cwd=tmp_path).returncode == 0
    result = _run(command, "notes", "--browser", "--port", str(taken_port), cwd=tmp_path)
    assert result.returncode == 1
    line = _one_error_line(result, "EADDRINUSE")
    assert f"127.0.0.1:{taken_port}" in line and "--port 0" in line


def test_a_failed_start_creates_no_identity_file(tmp_path, taken_port: int) -> None:
    key = tmp_path / "introducer.key"
    result = _run("introducer", "--listen", f"127.0.0.1:{taken_port}", "--identity",
                  str(key), "--no-lan")
    assert result.returncode == 1
    _one_error_line(result, "EADDRINUSE")
    assert not key.exists()
    result = _run("listen", "--listen", f"127.0.0.1:{taken_port}", "--identity",
                  str(tmp_path / "alice.key"), "--no-lan")
    assert result.returncode == 1 and not (tmp_path / "alice.key").exists()
    # An app with a node of its own: no data folder, no node key.
    assert _run("init", "chat", "--template", "chat", cwd=tmp_path).returncode == 0
    result = _run("run", "chat", "--browser", "--port", str(taken_port), "--data-dir",
                  "chat-data", cwd=tmp_path)
    assert result.returncode == 1 and "EADDRINUSE" in result.stderr
    assert not (tmp_path / "chat-data").exists()


def test_ctrl_c_during_send_is_status_130_and_says_it_was_not_delivered(tmp_path) -> None:
    process = subprocess.Popen(
        _shoal("send", "--no-lan", "--listen", LOOPBACK, "--identity", str(tmp_path / "k"),
               "--to", "ab" * 32, "anyone?"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None
    assert "created identity" in process.stderr.readline()  # the node is up: now Ctrl-C
    time.sleep(0.5)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=30)
    assert process.returncode == 130
    assert stdout == "" and "never retrieved" not in stderr
    line = _one_error_line(subprocess.CompletedProcess([], 130, stdout, stderr), "EINTR")
    assert "may not have arrived" in line


def test_build_creates_its_out_folder(tmp_path) -> None:
    assert _run("init", "notes", cwd=tmp_path).returncode == 0
    result = _run("build", "notes", "--out", "dist/v1", "--identity", "pub.key", "--json",
                  cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    built = json.loads(result.stdout)
    assert Path(built["path"]).parent == Path("dist/v1") and (tmp_path / built["path"]).is_file()


def test_bare_shoal_prints_the_help_as_help_does() -> None:
    bare, helped = _run(), _run("--help")
    assert (bare.returncode, bare.stdout, bare.stderr) == (0, helped.stdout, "")
    assert "Commands:" in bare.stdout and "\n  send " in bare.stdout


def test_init_suggests_every_next_step_in_a_form_that_pastes(tmp_path) -> None:
    result = _run("init", "My Notes", cwd=tmp_path)
    assert result.returncode == 0
    steps = [line.split("#")[0].strip() for line in result.stdout.splitlines()[1:]]
    assert steps == ["shoal dev 'My Notes'", "shoal run 'My Notes'", "shoal test 'My Notes'"]
    pasted = subprocess.run(["bash", "-c", steps[2].replace("shoal", " ".join(_shoal()), 1)],
                            capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert pasted.returncode == 0, pasted.stdout + pasted.stderr
    assert "# fail 0" in pasted.stdout
    as_json = json.loads(_run("init", "x y", "--json", cwd=tmp_path).stdout)
    assert as_json["next"] == ["shoal dev 'x y'", "shoal run 'x y'", "shoal test 'x y'"]



@pytest.fixture
def introducer(tmp_path) -> Iterator[str]:
    """A running ``shoal introducer`` on loopback: its HOST:PORT."""
    with running_introducer(tmp_path) as address:
        yield address


@pytest.fixture
def listener(tmp_path, introducer: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """``shoal listen --json --save received`` reached through ``introducer``: the
    process (its ready line read) and its peer id."""
    process = subprocess.Popen(
        _shoal("listen", "--introducer", introducer, "--identity", str(tmp_path / "l.key"),
               "--json", "--no-lan", "--listen", LOOPBACK, "--save",
               str(tmp_path / "received")),
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert process.stdout is not None
    ready = json.loads(process.stdout.readline())
    assert ready["event"] == "ready"
    yield process, ready["peer_id"]
    process.terminate()
    process.wait(timeout=10)


def _next_message(process: subprocess.Popen[str]) -> dict:
    assert process.stdout is not None
    while (event := json.loads(process.stdout.readline()))["event"] != "message":
        pass
    return event


def test_binary_data_arrives_whole_in_json_and_in_saved_files(tmp_path, introducer: str,
                                                              listener) -> None:
    import base64

    process, peer_id = listener
    binary = tmp_path / "binary"
    binary.write_bytes(b"\x00\x01\xff\xfe binary")
    sender = ("send", "--introducer", introducer, "--to", peer_id, "--no-lan", "--listen",
              LOOPBACK, "--identity", str(tmp_path / "s.key"))
    for extra in (("--file", str(binary)), ("héllo",)):
        sent = _run(*sender, *extra)
        assert sent.returncode == 0, sent.stderr
        assert peer_id in sent.stdout  # whole, to be pasted
    first, second = _next_message(process), _next_message(process)
    assert first["encoding"] == "base64" and first["bytes"] == 11
    assert base64.b64decode(first["data"]) == binary.read_bytes()
    assert second["data"] == "héllo" and "encoding" not in second
    assert Path(first["saved"]).read_bytes() == binary.read_bytes()
    assert Path(second["saved"]).read_bytes() == "héllo".encode()
    assert sorted(p.name for p in (tmp_path / "received").iterdir()) == sorted(
        Path(event["saved"]).name for event in (first, second))


def _own_home(tmp_path: Path) -> dict[str, str]:
    """An environment whose user data folder (default keys) is the test's own."""
    return {**os.environ, "XDG_DATA_HOME": str(tmp_path / "data")}


def test_an_introducer_and_the_users_node_have_separate_default_keys(tmp_path) -> None:
    env = _own_home(tmp_path)
    introducer = subprocess.Popen(
        _shoal("introducer", "--listen", f"127.0.0.1:{free_port()}", "--json", "--no-lan"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert introducer.stdout is not None and introducer.stderr is not None
        ready = json.loads(introducer.stdout.readline())
        assert "introducer.key" in introducer.stderr.readline()
        own = subprocess.run(_shoal("id", "--json"), capture_output=True, text=True, env=env,
                             timeout=60)
        assert own.returncode == 0 and json.loads(own.stdout)["peer_id"] != ready["peer_id"]
        doctor = subprocess.run(_shoal("doctor", "--json", "--listen", "127.0.0.1"),
                                capture_output=True, text=True, env=env, timeout=60)
        assert doctor.returncode == 0, doctor.stdout + doctor.stderr
        # The user's node reaches the introducer (no EBUSY over a shared key), which then
        # refuses the message: an introducer serves no channel.
        sent = subprocess.run(_shoal("send", "--no-lan", "--listen", LOOPBACK, "--to",
                                     ready["peer_id"], "--introducer", ready["listen"],
                                     "--json", "hi"),
                              capture_output=True, text=True, env=env, timeout=60)
        assert json.loads(sent.stdout.splitlines()[-1])["code"] == "ENOPROTOOPT", \
            sent.stdout + sent.stderr
    finally:
        introducer.terminate()
        introducer.wait(timeout=10)


def test_an_apps_publisher_key_is_not_the_node_key_and_the_change_is_said(tmp_path) -> None:
    env = _own_home(tmp_path)
    node = json.loads(subprocess.run(_shoal("id", "--json"), capture_output=True, text=True,
                                     env=env, timeout=60, check=True).stdout)["peer_id"]
    assert _run("init", "notes", cwd=tmp_path).returncode == 0
    built = subprocess.run(_shoal("build", "notes", "--json"), capture_output=True, text=True,
                           env=env, cwd=tmp_path, timeout=60)
    assert built.returncode == 0, built.stderr
    publisher = json.loads(built.stdout)["publisher"]
    assert publisher != node
    # Whoever published with the node key before is told how to keep that publisher.
    assert "publisher key" in built.stderr and node in built.stderr
    assert "--identity" in built.stderr and "identity.key" in built.stderr
    again = subprocess.run(_shoal("build", "notes", "--json"), capture_output=True,
                           text=True, env=env, cwd=tmp_path, timeout=60)
    assert json.loads(again.stdout)["publisher"] == publisher and again.stderr == ""


def test_a_python_node_is_refused_the_key_a_cli_node_runs(tmp_path) -> None:
    import asyncio

    import shoal

    key = tmp_path / "alice.key"
    process = subprocess.Popen(
        _shoal("listen", "--identity", str(key), "--json", "--no-lan", "--listen", LOOPBACK),
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)

    async def start(identity: shoal.Identity) -> None:
        async with shoal.Node(identity, listen=LOOPBACK, lan_discovery=False):
            pass

    async def two_in_one_process() -> None:
        other = shoal.Identity.load_or_create(tmp_path / "bob.key")
        async with shoal.Node(other, listen=LOOPBACK, lan_discovery=False):
            await start(shoal.Identity.load(other.path))  # type: ignore[arg-type]

    try:
        assert process.stdout is not None and '"ready"' in process.stdout.readline()
        with pytest.raises(shoal.IdentityError) as refused:
            asyncio.run(start(shoal.Identity.load(key)))
        assert refused.value.code == "EBUSY"
        with pytest.raises(shoal.IdentityError) as refused:
            asyncio.run(two_in_one_process())
        assert refused.value.code == "EBUSY"
    finally:
        process.terminate()
        process.wait(timeout=10)
    asyncio.run(start(shoal.Identity.load(key)))  # let go of when the CLI node ended


def _with_hosts(tmp_path: Path, hosts: str, *args: str, argv: list[str] | None = None
                ) -> subprocess.CompletedProcess[str]:
    """``shoal ARGS`` (or ``argv`` + ARGS) in a mount namespace of its own where
    /etc/hosts is ``hosts`` and DNS asks loopback only (so no lookup leaves this
    machine)."""
    (tmp_path / "hosts").write_text(hosts)
    (tmp_path / "resolv.conf").write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
    script = (f"mount --bind {tmp_path / 'hosts'} /etc/hosts && "
              f"mount --bind {tmp_path / 'resolv.conf'} /etc/resolv.conf && exec \"$@\"")
    command = [*argv, *args] if argv is not None else _shoal(*args)
    return subprocess.run(["unshare", "--mount", "sh", "-c", script, "sh", *command],
                          capture_output=True, text=True, timeout=60)


def test_servers_may_be_given_by_name_and_a_name_that_does_not_resolve_is_one_line(
        tmp_path, introducer: str) -> None:
    if os.geteuid() != 0:
        pytest.fail("this test mounts its own /etc/hosts and must run as root")
    port = introducer.rsplit(":", 1)[1]
    hosts = "127.0.0.1 localhost\n127.0.0.1 intro.shoal.test\n::1 intro.shoal.test\n"
    found = _with_hosts(tmp_path, hosts, "doctor", "--introducer", f"intro.shoal.test:{port}",
                        "--stun", f"intro.shoal.test:{port}", "--listen", "127.0.0.1",
                        "--json")
    assert found.returncode == 0, found.stdout + found.stderr
    report = json.loads(found.stdout)
    assert report["udp"] is True
    assert {server["server"] for server in report["servers"]} == {introducer}
    for option in ("--introducer", "--stun"):
        missing = _with_hosts(tmp_path, hosts, "doctor", option, "nosuchhost.shoal.test:7000")
        assert missing.returncode == 1
        line = _one_error_line(missing, "ENOTFOUND")
        assert "nosuchhost.shoal.test" in line and "use an address" not in line


def test_a_peer_no_introducer_knows_is_ehostunreach_in_seconds(tmp_path, introducer) -> None:
    key = str(tmp_path / "k")
    assert _run("id", "--identity", key).returncode == 0
    started = time.monotonic()
    result = _run("send", "--introducer", introducer, "--to", "ab" * 32, "--no-lan",
                  "--listen", LOOPBACK, "--identity", key, "anyone?")
    assert result.returncode == 1
    line = _one_error_line(result, "EHOSTUNREACH")
    assert "no introducer knows this peer" in line
    assert time.monotonic() - started < 10  # not the 30 s timeout


@pytest.mark.parametrize("as_json", [False, True])
def test_an_introducer_that_never_answers_is_warned_about_once(tmp_path, introducer, listener,
                                                               as_json: bool) -> None:
    _, peer_id = listener
    dead = f"127.0.0.1:{free_port()}"
    key = str(tmp_path / "k")
    assert _run("id", "--identity", key).returncode == 0
    result = _run("send", "--introducer", dead, "--introducer", introducer, "--to", peer_id,
                  "--no-lan", "--listen", LOOPBACK, "--identity", key,
                  *(["--json"] if as_json else []), "hello")
    assert result.returncode == 0, result.stdout + result.stderr
    if as_json:
        events = [json.loads(line) for line in result.stdout.splitlines()]
        warnings = [e for e in events if e["event"] == "warning"]
        assert [e["introducer"] for e in warnings] == [dead]
        assert events[0]["event"] == "delivered"
    else:
        warnings = [line for line in result.stderr.splitlines() if "warning" in line]
        assert len(warnings) == 1 and dead in warnings[0] and introducer not in warnings[0]


STUCK = """import signal, sys, threading
from shoal.runtime.display import exit_when_display_dies
signal.signal(signal.SIGTERM, signal.SIG_IGN)  # as a process stuck in C++ teardown is
exit_when_display_dies(2)
print("watching", flush=True)
threading.Event().wait()
"""


def test_a_process_whose_display_dies_ends_within_the_grace(display: str) -> None:
    """A window's process that would hang in its toolkit's teardown once the X server is
    gone, deaf to SIGTERM: it ends a grace period after the display died."""
    number = display.lstrip(":")
    stuck = subprocess.Popen([sys.executable, "-c", STUCK], stdout=subprocess.PIPE,
                             text=True, env={**os.environ, "DISPLAY": display})
    try:
        assert stuck.stdout is not None and stuck.stdout.readline() == "watching\n"
        time.sleep(1.5)
        stuck.terminate()
        assert stuck.poll() is None  # alive while its display is
        os.kill(_pid_of([b"Xvfb", f":{number}".encode()]), signal.SIGKILL)
        started = time.monotonic()
        assert stuck.wait(timeout=15) == 1
        assert 1.5 < time.monotonic() - started < 6
    finally:
        if stuck.poll() is None:
            stuck.kill()
        for left in (f"/tmp/.X11-unix/X{number}", f"/tmp/.X{number}-lock"):  # by the kill
            Path(left).unlink(missing_ok=True)


def _pid_of(argv_start: list[bytes]) -> int:
    """The process whose command line starts with ``argv_start``."""
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and (entry / "cmdline").read_bytes().split(
                    b"\0")[:len(argv_start)] == argv_start:
                return int(entry.name)
        except OSError:  # gone meanwhile
            continue
    raise LookupError(argv_start)


def test_a_window_prints_its_own_lines_only(tmp_path, display: str) -> None:
    """No webview noise in the terminal: no "Sandboxing disabled by user." (QtWebEngine
    as root), no Chromium log lines (D-Bus, GPU)."""
    assert _run("init", "notes", cwd=tmp_path).returncode == 0
    env = {**os.environ, "DISPLAY": display, "SHOAL_NO_LAN": "1"}
    env.pop("QT_QPA_PLATFORM", None)
    env.pop("QT_LOGGING_RULES", None)
    process = subprocess.Popen(_shoal("run", "notes", "--gui", "qt", "--json", "--data-dir",
                                      str(tmp_path / "data")),
                               cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        assert json.loads(process.stdout.readline())["event"] == "ready"
        time.sleep(2)  # the page loads, its GPU and D-Bus attempts are made
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=30)
    assert "Sandboxing" not in stderr and ":ERROR:" not in stderr, stderr


def test_doctor_with_no_server_checks_this_machine_and_says_what_a_server_adds() -> None:
    result = _run("doctor", "--json", "--listen", "127.0.0.1")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["udp_local"] is True and report["lan_peers"] is None  # SHOAL_NO_LAN
    assert isinstance(report["ipv6"]["udp"], bool) and "global_addresses" in report["ipv6"]
    assert all(i["name"] and i["addresses"] for i in report["interfaces"])
    assert "hairpinning" in report["needs_server"] and report["hairpin"] is None
    human = _run("doctor", "--listen", "127.0.0.1").stdout
    for label in ("interfaces:", "IPv6:", "UDP here:   works", "LAN peers:  not looked for",
                  "need a server to ask"):
        assert label in human, human


def test_doctor_with_a_server_reports_hairpinning(introducer: str) -> None:
    result = _run("doctor", "--introducer", introducer, "--listen", "127.0.0.1", "--json")
    report = json.loads(result.stdout)
    assert report["udp"] is True and report["nat"] is False
    assert report["hairpin"] is None  # no NAT between loopback and itself
    human = _run("doctor", "--introducer", introducer, "--listen", "127.0.0.1").stdout
    assert "hairpin:    - (no NAT in between)" in human


def test_info_marks_what_each_command_needs_ok_or_missing(tmp_path) -> None:
    env = {**os.environ, "PATH": str(tmp_path), "PLAYWRIGHT_BROWSERS_PATH": str(tmp_path)}
    env.pop("DISPLAY", None)
    env.pop("WAYLAND_DISPLAY", None)
    result = subprocess.run(_shoal("info"), capture_output=True, text=True, env=env,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    checks = result.stdout.split("checks:\n", 1)[1].splitlines()
    assert "  missing Chromium, for shoal test: apt install chromium" in "\n".join(checks)
    assert any(line.startswith("  missing window, for shoal run, dev: ") and "display" in line
               for line in checks)
    assert "  ok      Playwright, for shoal test (installed)" in checks
    as_json = json.loads(subprocess.run(_shoal("info", "--json"), capture_output=True,
                                        text=True, env=env, timeout=60).stdout)
    assert {c["name"]: c["ok"] for c in as_json["checks"]}["Chromium"] is False


def test_listen_warns_once_about_an_introducer_that_stops_answering(tmp_path,
                                                                    introducer) -> None:
    dead = f"127.0.0.1:{free_port()}"
    process = subprocess.Popen(
        _shoal("listen", "--introducer", introducer, "--introducer", dead, "--json",
               "--no-lan", "--listen", LOOPBACK, "--identity", str(tmp_path / "l.key")),
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert process.stdout is not None
        assert json.loads(process.stdout.readline())["event"] == "ready"
        warnings = []
        deadline = time.monotonic() + 20
        while not warnings and time.monotonic() < deadline:
            event = json.loads(process.stdout.readline())
            if event["event"] == "warning":
                warnings.append(event)
        assert [w["introducer"] for w in warnings] == [dead]
        assert warnings[0]["state"] == "unreachable"
        time.sleep(3)  # the watch looks every second: it must not say it again
    finally:
        process.terminate()
        stdout, _ = process.communicate(timeout=10)
    assert dead not in stdout  # once: no second warning while it stays silent


NODE_BY_NAME = """import asyncio, sys
import shoal

async def main():
    node = shoal.Node(shoal.Identity.generate(), listen="127.0.0.1:0", lan_discovery=False,
                      introducers=[sys.argv[1]])
    try:
        async with node:
            await node.wait_for_introducers(timeout=10)
            print("reached", list(node.introducer_states().items()))
    except shoal.ShoalError as exc:
        print("error", exc.code)

asyncio.run(main())
"""


def test_a_python_node_takes_introducers_by_name(tmp_path, introducer: str) -> None:
    if os.geteuid() != 0:
        pytest.fail("this test mounts its own /etc/hosts and must run as root")
    port = introducer.rsplit(":", 1)[1]
    hosts = "127.0.0.1 localhost\n127.0.0.1 intro.shoal.test\n"
    found = _with_hosts(tmp_path, hosts, f"intro.shoal.test:{port}", argv=[
        sys.executable, "-c", NODE_BY_NAME])
    assert found.stdout.strip() == f"reached [('{introducer}', 'connected')]", found.stderr
    missing = _with_hosts(tmp_path, hosts, "nosuchhost.shoal.test:7000", argv=[
        sys.executable, "-c", NODE_BY_NAME])
    assert missing.stdout.strip() == "error ENOTFOUND", missing.stderr
