"""``AppHost``: one running app — its config, data dir, capabilities, network and server.

The CLI (``shoal run``/``shoal dev``) and tests use this class; the window, when there is
one, only shows ``host.url``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shoal.runtime.bridge import AppServer
from shoal.runtime.config import (
    AppConfig,
    ConfigError,
    default_data_dir,
    did_you_mean,
    load_config,
)
from shoal.runtime.fsapi import FileSystem, PathPolicy
from shoal.runtime.netapi import Datagrams, Invoker, Network, load_exposed
from shoal.runtime.system import BrowserBackend, System, WindowBackend

if TYPE_CHECKING:
    from shoal.aio.node import Node

RELOAD_POLL = 0.3


class AppHost:
    """Runs the app in ``folder`` until ``close``. ``window`` is the native window's
    backend, or None for a browser tab."""

    def __init__(self, folder: Path, *, data_dir: Path | None = None,
                 window: WindowBackend | None = None, dev: bool = False, port: int = 0,
                 lan_discovery: bool | None = None, listener: socket.socket | None = None,
                 secret: str | None = None, page_origin: str | None = None,
                 config: AppConfig | None = None) -> None:
        """``listener`` and ``secret``: a socket already listening on 127.0.0.1 and the
        launch secret, when the window must know the URL before the host has started.
        ``page_origin``: the pages' origin when the window serves them itself.
        ``config``: the app's ``shoal.toml`` when the caller has read it already."""
        self.folder = folder
        self.config: AppConfig = config or load_config(folder)
        self.data_dir = data_dir or default_data_dir(self.config.id)
        self.window = window or BrowserBackend()
        self.dev = dev
        self.port = port
        self.lan_discovery = lan_discovery
        self.listener = listener
        self.secret = secret
        self.page_origin = page_origin
        self.node: Node | None = None
        self.server: AppServer | None = None
        self._parts: list[Any] = []
        self._watcher: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        assert self.server is not None, "start the host first"
        return self.server.url

    async def start(self) -> AppHost:
        config = self.config
        permissions = config.permissions
        functions = load_exposed(self.folder / "app.py")
        check_invoke(config, functions)
        calls: dict[str, Any] = {}
        policy = PathPolicy(self.data_dir, permissions.fs_read, permissions.fs_write)
        files = FileSystem(policy, lambda event, data: server.emit(event, data))
        server = AppServer(config, calls, port=self.port, listener=self.listener,
                           secret=self.secret, page_origin=self.page_origin,
                           readable=files.open_for_reading)
        emit = server.emit
        self._parts = [files]
        raise_descriptor_limit()
        if permissions.network:
            from shoal.aio.node import Node
            from shoal.identity import Identity, hold

            network = config.network
            lan = network.lan if self.lan_discovery is None else self.lan_discovery
            key = self.data_dir / "identity.key"
            identity = Identity.load_or_create(key)
            hold(key)  # a second copy of the app would share its peer id: refused
            self.node = Node(
                identity,
                introducers=network.introducers, listen=network.listen,
                lan_discovery=lan and not os.environ.get("SHOAL_NO_LAN"),
            )
            await self.node.start()
        await server.start()
        self.server = server
        system = System(permissions, str(policy.data_dir), self.window, server.page_origin)
        net = Network(self.node, permissions.network, emit)
        datagrams = Datagrams(permissions.dgram, emit)
        invoker = Invoker(functions, permissions.invoke)
        self._parts = [files, net, datagrams]
        for part in (files, system, net, datagrams, invoker):
            calls.update(part.calls())
        if self.dev:
            self._watcher = asyncio.get_running_loop().create_task(self._watch_files())
        return self

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
        for part in self._parts:
            part.close()
        if self.server is not None:
            await self.server.close()
        if self.node is not None:
            await self.node.close()

    async def __aenter__(self) -> AppHost:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _watch_files(self) -> None:
        """Live reload: tell every page to reload when a file of the app changes."""
        before = await asyncio.to_thread(_tree, self.folder)
        while True:
            await asyncio.sleep(RELOAD_POLL)
            after = await asyncio.to_thread(_tree, self.folder)
            if after != before:
                before = after
                assert self.server is not None
                self.server.emit("dev.reload", {})


def check_invoke(config: AppConfig, functions: dict[str, Any]) -> None:
    """Every name in ``permissions.invoke`` is a function ``app.py`` exposes."""
    for index, name in enumerate(config.permissions.invoke):
        if name not in functions:
            exposed = ", ".join(sorted(functions)) or "none"
            raise ConfigError(
                f"{config.root / 'shoal.toml'}: permissions.invoke[{index}]: app.py exposes "
                f"no function {name!r}{did_you_mean(name, functions)} (exposed: {exposed})")


def raise_descriptor_limit() -> None:
    """Let the process open as many files as the system allows it (the soft limit is
    often 1024, the hard one far more), so that the server's connection cap, not the
    descriptor limit, is what a flood of connections meets first."""
    try:
        import resource
    except ImportError:  # Windows has no such limit
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else 1 << 16
    if soft != resource.RLIM_INFINITY and soft < wanted:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def _tree(folder: Path) -> dict[str, int]:
    out = {}
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d != "__pycache__"]
        for name in files:
            path = os.path.join(root, name)
            try:
                out[path] = os.stat(path).st_mtime_ns
            except OSError:
                continue
    return out
