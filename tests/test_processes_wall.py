"""child_process as the attack: a page that stops reading a chatty program, more programs
than allowed, output past exec's cap, a program that never ends, and programs left behind
when the app closes."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from shoal.runtime import processes
from shoal.runtime.fsapi import BridgeError
from shoal.runtime.host import AppHost
from shoal.runtime.testing import BridgeClient


def _app(folder: Path, commands: str) -> Path:
    folder.mkdir(parents=True)
    (folder / "shoal.toml").write_text('[app]\nname = "Procs"\nid = "test.shoal.procs"\n'
                                       f"[permissions]\ncommands = {commands}\n")
    (folder / "index.html").write_text("<!doctype html><title>procs</title>")
    return folder


def _buffered(host: AppHost) -> int:
    server = host.server
    assert server is not None
    return sum(c._transport.get_write_buffer_size()  # type: ignore[union-attr]
               for c in server._server._connections if c._transport is not None)


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def test_a_page_that_stops_reading_pauses_the_program(tmp_path: Path) -> None:
    folder = _app(tmp_path / "app", '["yes"]')
    async with AppHost(folder, data_dir=tmp_path / "d") as host, BridgeClient(host) as page:
        assert host.server is not None
        emitted = [0]
        real_emit = host.server.emit

        def counting(event: str, data: dict) -> None:
            emitted[0] += 1
            real_emit(event, data)

        host.server.emit = counting  # type: ignore[method-assign]
        # The first 64 KiB chunks reach the page; then the page stops reading.
        await page.call("child_process.spawn", "yes", [], {})
        page.websocket.transport.pause_reading()
        before = _rss_kib()
        await asyncio.sleep(2)
        stalled_at = emitted[0]
        await asyncio.sleep(1)
        # `yes` writes gigabytes a second: it is blocked on its pipe, and what waits in
        # the host is bounded by the socket's high-water mark, not by the program.
        assert emitted[0] == stalled_at
        assert _buffered(host) < 4 << 20
        assert _rss_kib() - before < 32 * 1024
        page.websocket.transport.resume_reading()


async def test_programs_are_bounded_and_end_with_the_app(tmp_path: Path) -> None:
    folder = _app(tmp_path / "app", '["sleep", "head", "yes"]')
    async with AppHost(folder, data_dir=tmp_path / "d") as host, BridgeClient(host) as page:
        handles = [await page.call("child_process.spawn", "sleep", ["60"], {})
                   for _ in range(processes.MAX_CHILDREN)]
        with pytest.raises(BridgeError) as refused:
            await page.call("child_process.spawn", "sleep", ["60"], {})
        assert refused.value.code == "EAGAIN"
        part = next(p for p in host._parts if isinstance(p, processes.Processes))
        pids = [part._children[h].pid for h in handles]
        for handle in handles[:4]:
            await page.call("child_process.kill", handle, "SIGKILL")
        await asyncio.sleep(0.5)
        # exec: a program that writes without end is stopped past the cap ...
        with pytest.raises(BridgeError) as big:
            await page.call("child_process.exec", "yes", [], {})
        assert big.value.code == "E2BIG"
        # ... and one that never ends, at its timeout.
        with pytest.raises(BridgeError) as slow:
            await page.call("child_process.exec", "sleep", ["60"], {"timeout": 0.5})
        assert slow.value.code == "ETIMEDOUT"
        # Arguments are never a shell's; a NUL in one is refused.
        with pytest.raises(BridgeError) as nul:
            await page.call("child_process.exec", "head", ["-c1", "a\0b"], {})
        assert nul.value.code == "EINVAL"
    await asyncio.sleep(0.5)
    for pid in pids:  # every program the app started is gone with it
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert json.dumps(pids)  # (the pids were real numbers)


async def test_a_declared_program_gets_only_the_declared_environment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """env = ["LANG"] is all the page may see; a declared printenv must not hand it the
    rest of Shoal's environment (a token, say)."""
    monkeypatch.setenv("PROBE_API_TOKEN", "secret-token")
    monkeypatch.setenv("LANG", "C.UTF-8")
    folder = _app(tmp_path / "app", '["printenv"]\nenv = ["LANG"]')
    async with AppHost(folder, data_dir=tmp_path / "d") as host, BridgeClient(host) as page:
        assert (await page.call("process.info"))["env"] == {"LANG": "C.UTF-8"}
        secret = await page.call("child_process.exec", "printenv", ["PROBE_API_TOKEN"])
        assert (secret["code"], secret["stdout"]) == (1, "")
        everything = await page.call("child_process.exec", "printenv", [])
        assert everything["stdout"] == "LANG=C.UTF-8\n"
    assert host.exit_code == 0


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


async def test_what_a_program_started_ends_with_the_app(tmp_path: Path) -> None:
    """A declared program starts a helper and exits at once: the helper must not outlive
    the app."""
    folder = _app(tmp_path / "app", '["sh"]\nrun_any_program = true')
    async with AppHost(folder, data_dir=tmp_path / "d") as host, BridgeClient(host) as page:
        ran = await page.call("child_process.exec", "sh",
                              ["-c", "sleep 300 >/dev/null 2>&1 & echo $!"])
        helper = int(ran["stdout"])
        assert _alive(helper)
    for _ in range(100):
        if not _alive(helper):
            break
        await asyncio.sleep(0.05)
    assert not _alive(helper)
    assert host.exit_code == 0
