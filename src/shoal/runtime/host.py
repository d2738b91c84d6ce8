"""``AppHost``: one running app — its config, data dir, capabilities, network and server.

The CLI (``shoal run``/``shoal dev``) and tests use this class; the window, when there is
one, only shows ``host.url``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shoal.errors import ShoalError
from shoal.net import bind_listener
from shoal.runtime.bridge import AppServer
from shoal.runtime.config import (
    CONFIG_NAME,
    AppConfig,
    ConfigError,
    default_data_dir,
    did_you_mean,
    load_config,
    node_key_path,
)
from shoal.runtime.devserver import DevServer
from shoal.runtime.filesapi import Files
from shoal.runtime.fsapi import BridgeError, FileSystem, PathPolicy
from shoal.runtime.groupsapi import Groups
from shoal.runtime.hotkeys import Hotkeys
from shoal.runtime.instance import Instance
from shoal.runtime.launch import Launch
from shoal.runtime.netapi import Datagrams, Invoker, Network, load_exposed
from shoal.runtime.netchannels import Channels
from shoal.runtime.origins import own_listener
from shoal.runtime.processes import Processes
from shoal.runtime.refusals import Refusal
from shoal.runtime.system import BrowserBackend, System, WindowBackend

if TYPE_CHECKING:
    from shoal.aio.node import Node
    from shoal.inspector import Inspector

RELOAD_POLL = 0.3


class AppHost:
    """Runs the app in ``folder`` until ``close``, launched as ``launch`` says (or with
    ``options``, its fields, for short: ``AppHost(folder, data_dir=...)``)."""

    def __init__(self, folder: Path, launch: Launch | None = None, *,
                 window: WindowBackend | None = None, listener: socket.socket | None = None,
                 secret: str | None = None, page_origin: str | None = None,
                 **options: Any) -> None:
        """``window``: the native window's backend, or None for a browser tab.
        ``listener`` and ``secret``: a socket already listening on 127.0.0.1 and the
        launch secret, when the window must know the URL before the host has started.
        ``page_origin``: the pages' origin when the window serves them itself."""
        launch = dataclasses.replace(launch or Launch(), **options)
        self.folder = folder
        self.launch = launch
        self.argv = launch.argv
        self._instance: Instance | None = None
        self._processes: Processes | None = None
        self.exited = asyncio.Event()
        """Set when the page called ``process.exit``; ``exit_code`` is its code."""
        self.exit_code = 0
        self.config: AppConfig = launch.config or load_config(folder)
        self.data_dir = launch.data_dir or default_data_dir(self.config.id)
        self.window = window or BrowserBackend()
        self.dev = launch.dev
        self.listener = listener
        self.secret = secret
        self.page_origin = page_origin
        self.on_dev = launch.on_dev or (lambda kind, line: None)
        self.on_refusal = launch.on_refusal
        self.dev_url = launch.dev_url if launch.dev else None
        self.node: Node | None = None
        self.server: AppServer | None = None
        self.channels: Channels | None = None
        """The pages' named channels and streams (once started)."""
        self._invoker: Invoker | None = None
        self._parts: list[Any] = []
        self._watcher: asyncio.Task[None] | None = None
        self.inspector: Inspector | None = None
        """Under ``dev``, for an app with a node: its inspector (``on_dev`` is told
        ``("inspector", url)``)."""

    @property
    def url(self) -> str:
        assert self.server is not None, "start the host first"
        return self.server.url

    async def start(self) -> AppHost:
        config = self.config
        permissions = config.permissions
        if self.listener is None:
            # A taken port fails here, before the data folder or a node key is made.
            self.listener = own_listener(config.id, self.launch.port) \
                if self.launch.host else bind_listener(self.launch.port)
        functions = load_exposed(self.folder / "app.py")
        check_invoke(config, functions)
        calls: dict[str, Any] = {}
        policy = PathPolicy(self.data_dir, permissions.fs_read, permissions.fs_write)
        files = FileSystem(policy, lambda event, data: server.emit(event, data))
        server = AppServer(config, calls, port=self.launch.port, listener=self.listener,
                           secret=self.secret, host=self.launch.host, page_origin=self.page_origin,
                           readable=files.open_for_reading, dev=self.dev,
                           plugins=self.launch.plugins, on_refusal=self._refused,
                           dev_server=DevServer(self.dev_url) if self.dev_url else None)
        emit = server.emit
        self._parts = [files]
        raise_descriptor_limit()
        if permissions.network:
            from shoal.aio.node import Node
            from shoal.identity import Identity

            network = config.network
            lan = network.lan if self.launch.lan_discovery is None else \
                self.launch.lan_discovery
            # The node holds its key while it runs: a second copy would share its peer id.
            # Its groups (their keys and posts) live beside the key, out of the page's reach.
            key = node_key_path(policy.data_dir)
            identity = Identity.load_or_create(key)
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
        shared = Files(self.node, permissions.network, policy, emit)
        groups = Groups(self.node, permissions.network, emit)
        datagrams = Datagrams(permissions.dgram, emit)
        invoker = self._invoker = Invoker(functions, permissions.invoke)
        processes = self._processes = Processes(permissions, policy.data_dir, emit,
                                                server.drain, argv=self.argv,
                                                exit=self._exit)
        hotkeys = Hotkeys(permissions.hotkeys, emit)
        hotkeys.start()
        self._parts = [files, net, groups, datagrams, processes, hotkeys]
        for part in (files, system, net, shared, groups, datagrams, invoker, processes,
                     hotkeys):
            calls.update(part.calls())
        # Named channels and streams (network.channel, network.openStream).
        channels = self.channels = Channels(self.node, permissions.network)
        calls.update(channels.calls())
        self._parts.append(channels)
        calls["app.launch"] = self._launch
        if self.launch.instance is not None:
            self._instance = Instance(self.launch.instance, self._opened_again)
            await self._instance.start()
        for plugin in self.launch.plugins:
            calls.update(plugin.calls(self.window))
        if self.dev:
            calls["dev.report"] = self._page_reported
            if self.node is not None:  # the app's node, live, beside the app
                from shoal.inspector import Inspector

                self.inspector = await Inspector(self.node).start()
                self.on_dev("inspector", self.inspector.url)
            self._watcher = asyncio.get_running_loop().create_task(self._watch_files())
        return self

    async def _launch(self) -> dict[str, Any]:
        """How this copy of the app was started: its deep link and arguments."""
        return {"url": self.launch.url, "argv": list(self.argv)}

    def _opened_again(self, launch: dict[str, Any]) -> str | None:
        """A second launch handed over its link and arguments: tell the pages, and bring
        the window forward. A browser tab's link goes back to that launch, to print."""
        assert self.server is not None
        self.server.emit("app.open", launch)
        with contextlib.suppress(Exception):  # a window that cannot rise still gets the link
            self.window.focus()
        return self.url if isinstance(self.window, BrowserBackend) else None

    def _exit(self, code: int) -> None:
        self.exit_code = code
        self.exited.set()
        with contextlib.suppress(BridgeError):  # a browser tab stays; the server stops
            self.window.close()

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
        if self._instance is not None:
            await self._instance.close()
        for part in self._parts:
            part.close()
        if self._processes is not None:
            await self._processes.wait_closed()
        if self.server is not None:
            await self.server.close()
        if self.inspector is not None:
            await self.inspector.close()
        if self.node is not None:
            await self.node.close()  # lets go of the key: a next copy may start at once

    async def __aenter__(self) -> AppHost:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _watch_files(self) -> None:
        """Under ``dev``: when a file of the app changes, reload every page; when
        ``app.py`` changes, load it again first; a broken ``shoal.toml`` or ``app.py``
        is reported (terminal and page) and watching goes on."""
        # A dev server reloads the pages itself: only shoal.toml and app.py are watched.
        only = (CONFIG_NAME, "app.py") if self.dev_url else None
        before = await asyncio.to_thread(_tree, self.folder, only)
        while True:
            await asyncio.sleep(RELOAD_POLL)
            after = await asyncio.to_thread(_tree, self.folder, only)
            if after == before:
                continue
            changed = sorted(Path(p).name for p in {*before, *after}
                             if before.get(p) != after.get(p))
            before = after
            problem = await self._reload_python(changed)
            assert self.server is not None
            if problem is not None:
                source, message = problem
                if not message.split(": ", 1)[0].endswith(source):  # else it names the file
                    message = f"{source}: {message}"
                self.on_dev("error", message)
                self.server.emit("dev.error", {"source": source, "message": message})
                continue
            self.on_dev("reload", f"reloaded ({', '.join(changed)} changed)")
            self.server.emit("dev.reload", {})

    async def _reload_python(self, changed: list[str]) -> tuple[str, str] | None:
        """Check ``shoal.toml`` and load ``app.py`` again if they changed: the problem
        ``(file, message)``, or None."""
        if CONFIG_NAME in changed:
            try:
                config = load_config(self.folder)
            except ConfigError as exc:
                return CONFIG_NAME, exc.message
            if config != self.config:
                self.on_dev("notice", "shoal.toml changed: restart the app to apply it")
        if "app.py" in changed and self._invoker is not None:
            try:
                functions = await asyncio.to_thread(load_exposed, self.folder / "app.py")
                check_invoke(self.config, functions)
            except ShoalError as exc:
                return "app.py", exc.message
            self._invoker.replace(functions)
        return None

    def _refused(self, refusal: Refusal) -> None:
        if self.on_refusal is not None:
            self.on_refusal(refusal)
        else:
            self.on_dev("refused", refusal.line())
        if self.dev and self.server is not None:
            self.server.emit_or_hold("dev.error",
                                     {"source": "policy", "message": refusal.line()})

    async def _page_reported(self, text: str) -> None:
        """``dev.report``: a page's error, for the terminal."""
        if not isinstance(text, str):
            raise BridgeError("text must be a string", code="EINVAL")
        self.on_dev("error", f"page: {text[:4000]}")


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


def _tree(folder: Path, only: tuple[str, ...] | None = None) -> dict[str, int]:
    """The modification times of the app's files (``only`` these names, if given)."""
    out = {}
    for root, dirs, files in os.walk(folder):
        dirs[:] = [] if only else [d for d in dirs if not d.startswith(".")
                                   and d not in ("__pycache__", "node_modules")]
        for name in files if only is None else [f for f in files if f in only]:
            path = os.path.join(root, name)
            try:
                out[path] = os.stat(path).st_mtime_ns
            except OSError:
                continue
    return out
