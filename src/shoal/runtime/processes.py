"""The page's ``dns``, ``process`` and ``child_process`` modules, each checked against the
app's ``shoal.toml``.

- ``dns`` (``dns = true``): name lookups through the system resolver.
- ``process``: the app's arguments, its platform, the environment variables it declared
  (``env = [...]``; no others are visible) and ``exit``.
- ``child_process`` (``commands = [...]``): spawn or run the named programs, never a
  shell, with the declared environment variables only; output streams to the page, which
  pauses the program when the page reads slowly. Each program starts a session of its
  own, and when the app closes every process left in those sessions is killed, what the
  programs started included.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import shutil
import signal
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from shoal.runtime.bridge import BridgeError
from shoal.runtime.system import platform_and_arch

MAX_CHILDREN = 16
"""Programs one app may have running at once."""
MAX_EXEC_OUTPUT = 1 << 20
"""Bytes of stdout (and of stderr) ``exec`` collects before it kills the program."""
CHUNK = 1 << 16
_FAMILIES = {0: socket.AF_UNSPEC, 4: socket.AF_INET, 6: socket.AF_INET6}
_SIGNALS = {"SIGTERM": signal.SIGTERM, "SIGKILL": signal.SIGKILL, "SIGINT": signal.SIGINT,
            "SIGHUP": signal.SIGHUP}


class Processes:
    """dns, process and child_process for one app."""

    def __init__(self, permissions: Any, data_dir: Path, emit: Callable[[str, dict], None],
                 drain: Callable[[], Awaitable[None]], *, argv: tuple[str, ...] = (),
                 exit: Callable[[int], None] | None = None) -> None:
        self.permissions = permissions
        self.data_dir = data_dir
        self._emit = emit
        self._drain = drain
        self.argv = argv
        self._exit = exit
        self._children: dict[int, asyncio.subprocess.Process] = {}
        self._sessions: set[int] = set()
        """Session ids of every program started (each leads its own)."""
        self._tasks: set[asyncio.Task[None]] = set()
        self._next_id = 1

    def calls(self) -> dict[str, Callable[..., Any]]:
        return {
            "dns.lookup": self.lookup,
            "dns.resolve": self.resolve,
            "process.info": self.info,
            "process.exit": self.exit,
            "child_process.spawn": self.spawn,
            "child_process.exec": self.exec,
            "child_process.write": self.write,
            "child_process.kill": self.kill,
        }

    # ------------------------------------------------------------------------ dns

    async def lookup(self, hostname: str, options: dict[str, Any] | None = None) -> Any:
        """``{address, family}`` of ``hostname`` (all of them with ``{all: true}``)."""
        options = options or {}
        family = options.get("family", 0)
        if family not in _FAMILIES:
            raise BridgeError("family is 0, 4 or 6", code="EINVAL")
        found = await self._addresses(hostname, _FAMILIES[family])
        return found if options.get("all") else found[0]

    async def resolve(self, hostname: str, rrtype: str = "A") -> list[str]:
        """The ``A`` or ``AAAA`` addresses of ``hostname``."""
        kinds = {"A": socket.AF_INET, "AAAA": socket.AF_INET6}
        if rrtype not in kinds:
            raise BridgeError(f"record type {rrtype!r} is not supported (A or AAAA)",
                              code="ENOTSUP")
        return [entry["address"] for entry in await self._addresses(hostname, kinds[rrtype])]

    async def _addresses(self, hostname: str, family: int) -> list[dict[str, Any]]:
        self._require("dns")
        if not isinstance(hostname, str) or not 0 < len(hostname) <= 253:
            raise BridgeError("a host name is a string of 1 to 253 characters", code="EINVAL")
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                hostname, None, family=family, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise BridgeError(f"{hostname}: {exc.strerror}", code="ENOTFOUND") from None
        seen: dict[str, dict[str, Any]] = {}
        for info_family, _, _, _, address in infos:
            seen.setdefault(address[0], {"address": address[0],
                                         "family": 6 if info_family == socket.AF_INET6 else 4})
        return list(seen.values())

    # ------------------------------------------------------------------------ process

    async def info(self) -> dict[str, Any]:
        """The app's arguments, platform, process id and declared environment."""
        return {
            "argv": list(self.argv),
            **platform_and_arch(),
            "pid": os.getpid(),
            "env": self._environment(),
        }

    def _environment(self) -> dict[str, str]:
        """The variables ``permissions.env`` names, as this process has them: all the
        page sees, and all its programs get."""
        return {name: os.environ[name] for name in self.permissions.env
                if name in os.environ}

    async def exit(self, code: int = 0) -> None:
        """Close the app (its window, or the server) with ``code``."""
        if not isinstance(code, int) or not 0 <= code <= 255:
            raise BridgeError("an exit code is an integer from 0 to 255", code="EINVAL")
        if self._exit is None:
            raise BridgeError("this app cannot be closed from its page", code="ENOTSUP")
        asyncio.get_running_loop().call_soon(self._exit, code)

    # ------------------------------------------------------------------------ child_process

    def _program(self, command: str) -> str:
        if not isinstance(command, str) or command not in self.permissions.commands:
            raise BridgeError(f"this app did not declare the command {command!r} "
                              "(permissions.commands)", code="EPERM")
        found = shutil.which(command)
        if found is None:
            raise BridgeError(f"{command}: not found", code="ENOENT")
        return found

    def _cwd(self, options: dict[str, Any]) -> Path:
        """The program's working folder: the app's data folder, or a folder inside it."""
        relative = options.get("cwd", ".")
        # Resolved, links included: an absolute path, "..", or a link out all land outside.
        try:
            folder = (self.data_dir / relative).resolve()
        except (TypeError, ValueError):  # not a string, or a NUL in it
            folder = None
        if folder is None or not folder.is_relative_to(self.data_dir.resolve()):
            raise BridgeError("cwd is a folder inside the app's data folder", code="EINVAL")
        if not folder.is_dir():
            raise BridgeError(f"{relative}: no such folder in the app's data folder",
                              code="ENOENT")
        return folder

    async def _start(self, command: str, args: Any,
                     options: Any) -> tuple[int, asyncio.subprocess.Process]:
        """Start a declared program (no shell) and track it under a new handle."""
        options = options or {}
        if not isinstance(args, list) or not all(isinstance(a, str) for a in args) \
                or any("\0" in a for a in args):
            raise BridgeError("args is a list of strings", code="EINVAL")
        program = self._program(command)
        if len(self._children) >= MAX_CHILDREN:
            raise BridgeError(f"{MAX_CHILDREN} programs are running already", code="EAGAIN")
        child = await asyncio.create_subprocess_exec(
            program, *args, cwd=self._cwd(options), stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            start_new_session=True, env=self._environment())
        self._sessions.add(child.pid)
        handle = self._next_id
        self._next_id += 1
        self._children[handle] = child
        return handle, child

    async def spawn(self, command: str, args: Any = None, options: Any = None) -> int:
        """Start ``command`` with ``args``; its output comes as ``child_process.data``
        events and its end as ``child_process.exit``. The handle for write and kill."""
        handle, child = await self._start(command, args or [], options)
        task = asyncio.get_running_loop().create_task(self._stream(handle, child))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return handle

    async def _stream(self, handle: int, child: asyncio.subprocess.Process) -> None:
        async def pump(name: str, stream: asyncio.StreamReader) -> None:
            while chunk := await stream.read(CHUNK):
                self._emit("child_process.data", {"id": handle, "stream": name,
                                                  "data": base64.b64encode(chunk).decode()})
                await self._drain()  # a page that reads slowly pauses the program

        assert child.stdout is not None and child.stderr is not None
        try:
            await asyncio.gather(pump("stdout", child.stdout), pump("stderr", child.stderr))
            code = await child.wait()
        finally:
            self._children.pop(handle, None)
        self._emit("child_process.exit", {"id": handle, **_ending(code)})

    async def exec(self, command: str, args: Any = None, options: Any = None) -> dict[str, Any]:
        """Run ``command`` to its end (or ``options.timeout`` seconds, default 30):
        ``{code, signal, stdout, stderr}``, output as text."""
        options = options or {}
        timeout = options.get("timeout", 30)
        if not isinstance(timeout, int | float) or not 0 < timeout <= 3600:
            raise BridgeError("timeout is seconds, up to 3600", code="EINVAL")
        handle, child = await self._start(command, args or [], options)
        assert child.stdout is not None and child.stderr is not None and child.stdin
        child.stdin.close()
        readers = [asyncio.ensure_future(_read_capped(child.stdout)),
                   asyncio.ensure_future(_read_capped(child.stderr))]
        try:
            out, err = await asyncio.wait_for(asyncio.gather(*readers), timeout)
            code = await child.wait()
        except TimeoutError:
            await _end(child, readers)
            raise BridgeError(f"{command}: still running after {timeout} s; killed",
                              code="ETIMEDOUT") from None
        except _TooMuch:
            await _end(child, readers)
            raise BridgeError(f"{command}: wrote more than {MAX_EXEC_OUTPUT} bytes; killed "
                              "(use spawn to stream it)", code="E2BIG") from None
        finally:
            self._children.pop(handle, None)
        return {**_ending(code), "stdout": out.decode("utf-8", "replace"),
                "stderr": err.decode("utf-8", "replace")}

    async def write(self, handle: int, data: bytes | str | None) -> None:
        """Write to a spawned program's stdin; ``None`` closes it."""
        child = self._child(handle)
        assert child.stdin is not None
        if data is None:
            child.stdin.close()
            return
        child.stdin.write(data.encode() if isinstance(data, str) else bytes(data))
        try:
            await child.stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            raise BridgeError("the program closed its input", code="EPIPE") from None

    async def kill(self, handle: int, name: str = "SIGTERM") -> None:
        if name not in _SIGNALS:
            raise BridgeError(f"signal is one of {', '.join(_SIGNALS)}", code="EINVAL")
        _kill(self._child(handle), _SIGNALS[name])

    def _child(self, handle: Any) -> asyncio.subprocess.Process:
        child = self._children.get(handle) if isinstance(handle, int) else None
        if child is None:
            raise BridgeError(f"no running program {handle!r}", code="EBADF")
        return child

    def _require(self, capability: str) -> None:
        if not self.permissions.allows(capability):
            raise BridgeError(f"this app did not declare the {capability!r} permission",
                              code="EPERM")

    def close(self) -> None:
        """The app is closing: end every program it started and whatever is left in
        their sessions (helpers they started, even once the program itself ended)."""
        for child in list(self._children.values()):
            _kill(child, signal.SIGKILL)
        for session in self._sessions:
            _kill_session(session)

    async def wait_closed(self) -> None:
        """Wait (a little) for the programs' ends to be read, so that nothing of theirs
        outlives the event loop."""
        if self._tasks:
            _done, late = await asyncio.wait(list(self._tasks), timeout=2)
            for task in late:
                task.cancel()


def _ending(returncode: int) -> dict[str, Any]:
    """``{code, signal}`` of a program that ended: its exit code, or the signal that
    killed it (asyncio's negative return code)."""
    if returncode < 0:
        return {"code": None, "signal": signal.Signals(-returncode).name}
    return {"code": returncode, "signal": None}


class _TooMuch(Exception):
    pass


async def _read_capped(stream: asyncio.StreamReader) -> bytes:
    out = bytearray()
    while chunk := await stream.read(CHUNK):
        out += chunk
        if len(out) > MAX_EXEC_OUTPUT:
            raise _TooMuch
    return bytes(out)


async def _end(child: asyncio.subprocess.Process, readers: list[asyncio.Future]) -> None:
    """Kill ``child`` and wait for it, reading its pipes to their end (a reader that
    stopped halfway holds the pipe open, and the wait with it)."""
    _kill(child, signal.SIGKILL)
    for reader in readers:
        reader.cancel()
    await asyncio.gather(*readers, return_exceptions=True)
    assert child.stdout is not None and child.stderr is not None

    async def discard(stream: asyncio.StreamReader) -> None:
        while await stream.read(CHUNK):
            pass

    await asyncio.gather(discard(child.stdout), discard(child.stderr), child.wait())


def _kill_session(session: int) -> None:
    """SIGKILL every process of ``session``: its leader's process group, and on Linux
    every other process whose session it is (``/proc``). A session's id is not handed
    to another process while one of its members lives."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(session, signal.SIGKILL)
    try:
        entries = os.listdir("/proc")
    except OSError:
        return
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[-1].split()  # state, ppid, pgrp, session, ...
        if len(fields) > 3 and fields[3] == str(session):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(entry), signal.SIGKILL)


def _kill(child: asyncio.subprocess.Process, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(child.pid, sig)
