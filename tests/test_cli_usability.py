"""The CLI as a new user meets it: errors in one line with honest exit statuses, output
that can be pasted back, nothing left behind by a failed start. Each test runs the
``shoal`` command in a subprocess, as a user would."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

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

