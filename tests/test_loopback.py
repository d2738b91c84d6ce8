"""Real sockets on loopback: the public Node API, the CLI, STUN interop with coturn, and a
node fed 100k hostile datagrams."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import shoal
from shoal.core.wire import PacketKind, encode_init

LOOPBACK = "127.0.0.1:0"


def _node(**kwargs: object) -> shoal.Node:
    return shoal.Node(shoal.Identity.generate(), listen=LOOPBACK, lan_discovery=False, **kwargs)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_introducer_and_two_nodes_exchange_messages_both_ways() -> None:
    async with _node(introducer=True) as introducer:
        where = [f"127.0.0.1:{introducer.address[1]}"]
        async with _node(introducers=where) as a, _node(introducers=where) as b:
            await a.wait_for_introducers()
            await b.wait_for_introducers()
            delivery = await a.send(b.peer_id, b"hello b", timeout=5)
            assert delivery.path == "direct"
            message = await b.receive(timeout=5)
            assert (message.sender, message.data, message.path) == (a.peer_id, b"hello b", "direct")
            big = os.urandom(65536)
            await b.send(a.peer_id, big, timeout=5)
            message = await a.receive(timeout=5)
            assert (message.sender, message.data) == (b.peer_id, big)


async def test_a_full_node_refuses_at_once_with_its_own_code() -> None:
    from shoal.core.config import CoreConfig

    async with _node(config=CoreConfig(max_sessions=1)) as full, _node() as first, \
            _node() as second:
        await first.connect(full.address)
        started = asyncio.get_running_loop().time()
        with pytest.raises(shoal.ShoalError) as refused:
            await second.connect(full.address)
            await second.send(full.peer_id, b"let me in", timeout=5)
        assert refused.value.code == "ECONNREFUSED"
        assert "holds all the connections it can" in refused.value.message
        assert asyncio.get_running_loop().time() - started < 1  # not a timeout


async def test_unknown_peer_times_out_with_a_typed_error() -> None:
    async with _node(introducer=True) as introducer:
        where = [f"127.0.0.1:{introducer.address[1]}"]
        async with _node(introducers=where) as a:
            await a.wait_for_introducers()
            with pytest.raises(shoal.DeliveryError) as info:
                await a.send("cd" * 32, b"anyone?", timeout=1.0)
            assert info.value.code == "ETIMEDOUT"


async def test_ipv6_loopback() -> None:
    a = shoal.Node(shoal.Identity.generate(), listen="[::1]:0", lan_discovery=False)
    b = shoal.Node(shoal.Identity.generate(), listen="[::1]:0", lan_discovery=False)
    async with a, b:
        peer = await a.connect(b.address)
        assert peer == b.peer_id
        await a.send(b.peer_id, b"six", timeout=5)
        assert (await b.receive(timeout=5)).data == b"six"


async def test_live_node_survives_100k_hostile_datagrams() -> None:
    async with _node() as victim, _node() as friend:
        await friend.connect(victim.address)
        await friend.send(victim.peer_id, b"before", timeout=5)
        assert (await victim.receive(timeout=5)).data == b"before"
        session_id = next(iter(victim.endpoint.connections))
        before = dict(victim.stats)
        rng = __import__("random").Random(1234)
        templates = [
            encode_init(b"\x00" * 8, b"\x01" * 32),
            bytes([PacketKind.DATA]) + session_id + bytes(8) + bytes(40),
            b"\x00\x01\x00\x00\x21\x12\xa4\x42" + bytes(12),
        ]
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        target = victim.address
        for i in range(100_000):
            kind = i % 4
            if kind == 3:
                datagram = rng.randbytes(rng.randint(0, 1400))
            else:
                datagram = bytearray(templates[kind])
                for _ in range(rng.randint(1, 8)):
                    datagram[rng.randrange(len(datagram))] = rng.randrange(256)
                datagram = bytes(datagram[: rng.randint(1, len(datagram))])
            with contextlib.suppress(OSError):
                sender.sendto(datagram, target)
            if i % 100 == 0:
                await asyncio.sleep(0.001)
        sender.close()
        await asyncio.sleep(0.3)
        stats = victim.stats
        received = stats["rx_datagrams"] - before["rx_datagrams"]
        handled = sum(v - before.get(k, 0) for k, v in stats.items() if k.startswith("dropped_"))
        handled += sum(
            stats.get(k, 0) - before.get(k, 0)
            for k in ("stun_answered", "handshakes_answered", "cookies_sent")
        )
        assert received > 50_000, stats  # the kernel may drop some under load
        assert handled == received, {k: v for k, v in stats.items() if not k.startswith("dropped")}
        with pytest.raises(TimeoutError):
            await victim.receive(timeout=0.2)  # nothing hostile reached the application
        await friend.send(victim.peer_id, b"after", timeout=5)
        assert (await victim.receive(timeout=5)).data == b"after"


# ---------------------------------------------------------------------------- the CLI


def _shoal(*args: str) -> list[str]:
    return [sys.executable, "-m", "shoal.cli.main", *args]


def _peer_id(key: Path) -> str:
    """The peer id of the identity in ``key`` (created if missing), from ``shoal id``."""
    return json.loads(subprocess.run(_shoal("id", "--identity", str(key), "--json"),
                                     capture_output=True, text=True, check=True,
                                     ).stdout)["peer_id"]


@pytest.fixture
def introducer_process(tmp_path) -> Iterator[str]:
    port = _free_port()
    proc = subprocess.Popen(
        _shoal("introducer", "--listen", f"127.0.0.1:{port}", "--json", "--no-lan",
               "--identity", str(tmp_path / "intro.key")),
        stdout=subprocess.PIPE, text=True,
    )
    assert proc.stdout is not None
    ready = json.loads(proc.stdout.readline())
    assert ready["event"] == "ready" and ready["listen"] == f"127.0.0.1:{port}"
    yield ready["listen"]
    proc.terminate()
    proc.wait(timeout=10)


def test_cli_listen_and_send(tmp_path, introducer_process: str) -> None:
    listener_key = tmp_path / "listener.key"
    peer_id = _peer_id(listener_key)
    listener = subprocess.Popen(
        _shoal("listen", "--introducer", introducer_process, "--identity", str(listener_key),
               "--json", "--no-lan", "--listen", LOOPBACK),
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert listener.stdout is not None
        ready = json.loads(listener.stdout.readline())
        assert ready == {"event": "ready", "peer_id": peer_id, "listen": ready["listen"]}
        sent = subprocess.run(
            _shoal("send", "--introducer", introducer_process, "--to", peer_id, "--json",
                   "--no-lan", "--listen", LOOPBACK, "--identity", str(tmp_path / "s.key"),
                   "héllo wörld"),
            capture_output=True, text=True, timeout=30,
        )
        assert sent.returncode == 0, sent.stderr
        delivered = json.loads(sent.stdout.strip().splitlines()[-1])
        assert delivered["event"] == "delivered" and delivered["path"] == "direct"
        assert delivered["ms"] > 0
        message = json.loads(listener.stdout.readline())
        if message["event"] == "nat":  # the NAT check may finish before or after the message
            assert {"mapping", "filtering", "public"} <= message.keys()
            message = json.loads(listener.stdout.readline())
        assert message["event"] == "message"
        assert message["data"] == "héllo wörld" and message["path"] == "direct"
    finally:
        listener.terminate()
        listener.wait(timeout=10)


def test_cli_send_times_out_with_one_json_error_line(tmp_path, introducer_process: str) -> None:
    started = time.monotonic()
    sent = subprocess.run(
        _shoal("send", "--introducer", introducer_process, "--to", "ef" * 32, "--timeout", "2",
               "--json", "--no-lan", "--listen", LOOPBACK, "--identity", str(tmp_path / "k"),
               "x"),
        capture_output=True, text=True, timeout=30,
    )
    assert sent.returncode != 0
    lines = sent.stdout.strip().splitlines()
    error = json.loads(lines[-1])
    assert error["event"] == "error" and error["code"] in ("ETIMEDOUT", "EHOSTUNREACH")
    assert "Traceback" not in sent.stderr
    assert time.monotonic() - started < 15


@pytest.mark.parametrize(
    "args",
    [["send", "--to", "nothex", "x"], ["send", "--to", "ab" * 32, "--introducer", "nope", "x"],
     ["introducer", "--listen", "1.2.3.4:99999"],
     ["send", "--to", "ab" * 32, "--timeout", "nan", "x"],
     ["send", "--to", "ab" * 32, "--timeout", "-1", "x"],
     ["doctor", "--introducer", "127.0.0.1:9", "--timeout", "0"],
     ["send", "--to", "ab" * 32],
     ["send", "--to", "ab" * 32, "--file", "/nonexistent/file"]],
)
def test_cli_bad_input_is_one_clear_line(args: list[str], tmp_path) -> None:
    result = subprocess.run(_shoal(*args, "--identity", str(tmp_path / "k")),
                            capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_cli_sends_stdin_files_and_any_bytes_and_listen_escapes_them(
        tmp_path, introducer_process: str) -> None:
    listener_key = tmp_path / "listener.key"
    peer_id = _peer_id(listener_key)
    listener = subprocess.Popen(
        _shoal("listen", "--introducer", introducer_process, "--identity", str(listener_key),
               "--no-lan", "--listen", LOOPBACK),
        stdout=subprocess.PIPE,
    )
    sender = ["send", "--introducer", introducer_process, "--to", peer_id, "--no-lan",
              "--listen", LOOPBACK, "--identity", str(tmp_path / "s.key")]
    hostile = "\x1b]0;pwned\x07 x\nabcdef0123456789… (direct): forged"
    (tmp_path / "note.txt").write_bytes(b"from a file")
    try:
        assert listener.stdout is not None
        assert listener.stdout.readline().startswith(b"listening as ")
        for extra, stdin in ((["-"], b"from stdin"), (["--file", str(tmp_path / "note.txt")],
                                                       None), ([hostile], None),
                             ([b"caf\xe9 latin-1".decode("utf-8", "surrogateescape")], None)):
            sent = subprocess.run(_shoal(*sender, *extra), input=stdin, capture_output=True,
                                  timeout=30)
            assert sent.returncode == 0, sent.stderr
            assert b"Traceback" not in sent.stderr
        lines = []
        while len(lines) < 4:
            line = listener.stdout.readline()
            if not line.startswith(b"NAT:"):
                lines.append(line.decode())
        assert lines[0].endswith(": from stdin\n") and lines[1].endswith(": from a file\n")
        assert "\x1b" not in lines[2] and "\x07" not in lines[2]
        assert lines[2].endswith(": \\x1b]0;pwned\\x07 x\\x0aabcdef0123456789… (direct): forged\n")
        assert lines[3].endswith(": caf\ufffd latin-1\n")
    finally:
        listener.terminate()
        listener.wait(timeout=10)


def test_cli_refuses_a_message_over_one_mib_in_one_line(tmp_path) -> None:
    big = tmp_path / "big"
    big.write_bytes(b"x" * ((1 << 20) + 1))
    result = subprocess.run(_shoal("send", "--to", "ab" * 32, "--file", str(big), "--identity",
                                   str(tmp_path / "k")), capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 2
    assert "1 MiB" in result.stderr and len(result.stderr.strip().splitlines()) == 1


# ---------------------------------------------------------------------------- STUN interop


def _coturn() -> tuple[str, str]:
    server, client = shutil.which("turnserver"), shutil.which("turnutils_stunclient")
    assert server and client, "coturn is required (apt-get install coturn)"
    return server, client


def test_coturn_client_learns_its_address_from_a_shoal_introducer(introducer_process) -> None:
    _, client = _coturn()
    port = introducer_process.rsplit(":", 1)[1]
    result = subprocess.run([client, "-p", port, "127.0.0.1"], capture_output=True, text=True,
                            timeout=20)
    assert "UDP reflexive addr: 127.0.0.1:" in result.stdout + result.stderr


async def test_shoal_node_learns_its_address_from_coturn(tmp_path) -> None:
    server, _ = _coturn()
    port = _free_port()
    proc = subprocess.Popen(
        [server, "-n", "--listening-ip=127.0.0.1", f"--listening-port={port}", "--stun-only",
         "--no-cli", "--no-tls", "--no-dtls", f"--pidfile={tmp_path / 'turn.pid'}",
         "--log-file=stdout", f"--userdb={tmp_path / 'turn.db'}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        async with _node() as node:
            result = None
            for _ in range(20):  # the server needs a moment to bind
                result = await node.stun(("127.0.0.1", port), timeout=5)
                if result.mapped is not None:
                    break
                await asyncio.sleep(0.25)
            assert result is not None and result.mapped == node.address
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_cli_says_when_it_creates_an_identity_and_refuses_a_missing_folder(tmp_path) -> None:
    key = tmp_path / "alice.key"
    first = subprocess.run(_shoal("id", "--identity", str(key)), capture_output=True,
                           text=True, timeout=30)
    assert first.returncode == 0 and "created identity" in first.stderr and str(key) in first.stderr
    again = subprocess.run(_shoal("id", "--identity", str(key)), capture_output=True,
                           text=True, timeout=30)
    assert again.stdout == first.stdout and again.stderr == ""
    key.chmod(0o644)
    exposed = subprocess.run(_shoal("id", "--identity", str(key)), capture_output=True,
                             text=True, timeout=30)
    assert exposed.stdout == first.stdout and "chmod 600" in exposed.stderr
    typo = subprocess.run(_shoal("id", "--identity", str(tmp_path / "nodir" / "x.key")),
                          capture_output=True, text=True, timeout=30)
    assert typo.returncode != 0 and "no such folder" in typo.stderr
    assert not (tmp_path / "nodir").exists()


def test_cli_says_no_introducer_answers_within_seconds(tmp_path) -> None:
    dead = f"127.0.0.1:{_free_port()}"
    for command in (["send", "--to", "ab" * 32, "x"], ["listen"]):
        started = time.monotonic()
        result = subprocess.run(
            _shoal(*command, "--introducer", dead, "--no-lan", "--listen", LOOPBACK, "--json",
                   "--identity", str(tmp_path / "k")),
            capture_output=True, text=True, timeout=60)
        error = json.loads(result.stdout.strip().splitlines()[-1])
        assert result.returncode == 1
        assert error["code"] == "ENETUNREACH" and dead in error["message"]
        assert time.monotonic() - started < 10


def test_cli_refuses_a_second_node_with_the_same_identity(tmp_path) -> None:
    key = str(tmp_path / "shared.key")
    first = subprocess.Popen(_shoal("listen", "--identity", key, "--json", "--no-lan",
                                    "--listen", LOOPBACK), stdout=subprocess.PIPE, text=True)
    try:
        assert first.stdout is not None and '"ready"' in first.stdout.readline()
        second = subprocess.run(_shoal("listen", "--identity", key, "--no-lan", "--listen",
                                       LOOPBACK), capture_output=True, text=True, timeout=30)
        assert second.returncode == 1
        assert "in use by another running Shoal node" in second.stderr
        assert len(second.stderr.strip().splitlines()) == 1
    finally:
        first.terminate()
        first.wait(timeout=10)


def test_cli_names_the_socket_error_it_met(tmp_path) -> None:
    result = subprocess.run(
        _shoal("listen", "--listen", "192.0.2.1:0", "--no-lan", "--json", "--identity",
               str(tmp_path / "k")), capture_output=True, text=True, timeout=30)
    error = json.loads(result.stdout.strip().splitlines()[-1])
    assert result.returncode == 1
    assert error["code"] == "EADDRNOTAVAIL" and "192.0.2.1:0" in error["message"]


@pytest.mark.parametrize("command", ["id", "introducer", "listen", "send", "doctor", "init",
                                     "run", "dev", "info", "build", "install", "uninstall",
                                     "test", "inspect", "pair", "perf"])
def test_every_command_has_examples_in_its_help(command: str) -> None:
    result = subprocess.run(_shoal(command, "--help"), capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 0
    examples = result.stdout.split("Examples:", 1)[1].splitlines()
    assert any(line.strip().startswith(f"shoal {command}") for line in examples)


def test_errors_are_red_on_a_terminal_only() -> None:
    import pty

    argv = [sys.executable, "-m", "shoal.cli.main", "send", "--to", "nobody", "hi"]
    piped = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert piped.stderr.startswith("shoal: error:") and "\x1b[" not in piped.stderr
    for no_color, coloured in (("", True), ("1", False)):
        controller, terminal = pty.openpty()
        process = subprocess.Popen(argv, stdin=terminal, stdout=terminal, stderr=terminal,
                                   env={**os.environ, "NO_COLOR": no_color})
        os.close(terminal)
        process.wait(timeout=30)
        output = b""
        with contextlib.suppress(OSError):
            while chunk := os.read(controller, 4096):
                output += chunk
        os.close(controller)
        assert b"shoal: error:" in output
        assert (b"\x1b[31m" in output) is coloured, output


def test_the_command_list_is_whole() -> None:
    result = subprocess.run([sys.executable, "-m", "shoal.cli.main", "--help"],
                            capture_output=True, text=True, timeout=30)
    commands = result.stdout.split("Commands:", 1)[1].strip().splitlines()
    assert len(commands) == 23
    assert not any(line.rstrip().endswith(("...", "…")) for line in commands), commands


def test_doctor_explains_every_unknown(tmp_path, introducer_process: str) -> None:
    key = str(tmp_path / "doctor.key")

    def doctor(*args: str) -> tuple[int, dict]:
        result = subprocess.run(_shoal("doctor", "--identity", key, "--json",
                                       "--listen", "127.0.0.1", *args),
                                capture_output=True, text=True, timeout=60)
        assert "Traceback" not in result.stderr
        return result.returncode, json.loads(result.stdout.strip().splitlines()[-1])

    # No server at all: what can be known locally, and what to add.
    code, report = doctor()
    assert code == 0 and report["udp"] is None and "--introducer" in report["reachability"]
    # An introducer without --alternate: the mapping and filtering say why they are unknown.
    code, report = doctor("--introducer", introducer_process)
    assert code == 0 and report["udp"] is True
    assert report["mapping"] == report["filtering"] == "unknown"
    assert "two" in report["unknown_because"]["mapping"]
    assert "--alternate" in report["unknown_because"]["filtering"]
    # A closed port: no claim about TCP relays, and the possible causes named.
    code, report = doctor("--introducer", f"127.0.0.1:{_free_port()}", "--timeout", "3")
    assert code != 0 and report["udp"] is False
    assert "TCP" not in report["reachability"] and "closed port" in report["reachability"]
    assert report["unknown_because"] == {"mapping": "no server answered",
                                         "filtering": "no server answered"}


def test_waiting_shows_progress_on_a_terminal_only(tmp_path) -> None:
    import pty

    argv = _shoal("send", "--introducer", f"127.0.0.1:{_free_port()}", "--no-lan",
                  "--identity", str(tmp_path / "a.key"), "--to", "ab" * 32, "hi")
    piped = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert "acknowledgement" not in piped.stderr + piped.stdout
    assert piped.stderr.strip().splitlines()[-1].endswith("(ENETUNREACH)")
    controller, terminal = pty.openpty()
    process = subprocess.Popen(argv, stdin=terminal, stdout=terminal, stderr=terminal)
    os.close(terminal)
    output = b""
    with contextlib.suppress(OSError):
        while chunk := os.read(controller, 4096):
            output += chunk
    process.wait(timeout=60)
    os.close(controller)
    assert b"waiting for its acknowledgement" in output and b" s)" in output
    assert b"ENETUNREACH" in output
