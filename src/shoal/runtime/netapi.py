"""``network``, ``dgram`` and ``invoke`` calls: the page's reach beyond its own files.

``network`` is the Python ``shoal.Node`` API as calls and events. ``dgram`` opens UDP
sockets that may send only to the hosts and ports in ``permissions.dgram``. ``invoke``
runs functions of the app's own ``app.py`` that carry ``@shoal.runtime.expose`` and are
named in ``permissions.invoke``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import inspect
import ipaddress
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shoal.errors import ShoalError, os_error_code
from shoal.net import format_address
from shoal.runtime.fsapi import BridgeError
from shoal.runtime.scope import current_page

if TYPE_CHECKING:
    from shoal.aio.node import Node, Subscription

EXPOSED = "__shoal_expose__"
MAX_DGRAM_SOCKETS = 64


def expose(function: Callable[..., Any] | None = None, *, name: str | None = None) -> Any:
    """Mark a function of ``app.py`` as callable from the page with ``invoke(name, args)``.

    It must also be listed in ``permissions.invoke`` of ``shoal.toml``. Plain functions
    run in a worker thread; ``async def`` functions run on the app's event loop.
    """

    def mark(target: Callable[..., Any]) -> Callable[..., Any]:
        setattr(target, EXPOSED, name or target.__name__)
        return target

    return mark(function) if function is not None else mark


def load_exposed(path: Path) -> dict[str, Callable[..., Any]]:
    """The exposed functions of the ``app.py`` at ``path`` (none if it does not exist).
    It runs from its source, always: no bytecode is read (a ``__pycache__`` beside it
    could hold other code than the source that was reviewed) or written."""
    if not path.is_file():
        return {}
    module_name = f"shoal_app_{abs(hash(str(path)))}"
    module = types.ModuleType(module_name)
    module.__file__ = str(path)
    sys.modules[module_name] = module
    try:
        code = compile(path.read_bytes(), str(path), "exec", dont_inherit=True)
        exec(code, module.__dict__)
    except Exception as exc:  # the app's own code: report it in one line
        raise ShoalError(f"{path}: failed to load: {type(exc).__name__}: {exc}",
                         code="EINVAL") from None
    found = {}
    for value in vars(module).values():
        exposed = getattr(value, EXPOSED, None)
        if callable(value) and isinstance(exposed, str):
            found[exposed] = value
    return found


class Invoker:
    """``invoke`` calls into ``app.py``."""

    def __init__(self, functions: dict[str, Callable[..., Any]], granted: tuple[str, ...]) -> None:
        self.granted = set(granted)
        self.replace(functions)

    def replace(self, functions: dict[str, Callable[..., Any]]) -> None:
        """Call these functions from now on (``app.py`` was loaded again)."""
        self.functions = functions
        self._coroutine = {n: inspect.iscoroutinefunction(f) for n, f in functions.items()}

    def calls(self) -> dict[str, Callable[..., Any]]:
        return {"invoke": self.invoke}

    async def invoke(self, name: str, args: Any = None) -> Any:
        if not isinstance(name, str) or name not in self.granted:
            raise BridgeError(f"{name!r} is not granted in permissions.invoke", code="EPERM")
        function = self.functions.get(name)
        if function is None:
            raise BridgeError(f"app.py has no exposed function {name!r}", code="ENOENT")
        positional, keywords = ([], args) if isinstance(args, dict) else (list(args or []), {})
        try:
            if self._coroutine[name]:
                return await function(*positional, **keywords)
            return await asyncio.to_thread(function, *positional, **keywords)
        except ShoalError:
            raise
        except TypeError as exc:
            raise BridgeError(f"{name}: {exc}", code="EINVAL") from None
        except Exception as exc:  # the app's own error, passed to the page as one line
            raise BridgeError(f"{name}: {type(exc).__name__}: {exc}", code="EAPP") from None


class Network:
    """``network.*`` calls and events over one ``shoal.Node``."""

    def __init__(self, node: Node | None, allowed: bool, emit: Callable[[str, dict], None]) -> None:
        self.node = node
        self.allowed = allowed
        self._emit = emit
        self._tasks: list[asyncio.Task[None]] = []
        if node is not None:
            events = node.subscribe()
            loop = asyncio.get_running_loop()
            self._tasks.append(loop.create_task(self._forward_messages(node)))
            self._tasks.append(loop.create_task(self._forward_events(events)))

    def calls(self) -> dict[str, Callable[..., Any]]:
        return {
            "network.id": self.peer_id,
            "network.nat": self.nat,
            "network.peers": self.peers,
            "network.send": self.send,
            "network.pair": self.pair,
        }

    def _require(self) -> Node:
        if not self.allowed:
            raise BridgeError("this app did not declare the 'network' permission", code="EPERM")
        if self.node is None:
            raise BridgeError("the network is not running", code="ENOTCONN")
        return self.node

    async def peer_id(self) -> str:
        return self._require().peer_id

    async def nat(self) -> dict[str, Any] | None:
        report = self._require().nat_report
        if report is None:
            return None
        return {"mapping": report.mapping, "filtering": report.filtering,
                "public": [format_address(a) for a in report.public], "udp": report.udp,
                "summary": report.summary()}

    async def peers(self) -> list[dict[str, Any]]:
        return [
            {"peerId": p.peer_id, "connected": p.connected, "path": p.path,
             "rttMs": round(p.rtt * 1000, 2) if p.rtt is not None else None}
            for p in self._require().peers()
        ]

    async def send(self, peer_id: str, data: bytes | str, options: dict | None = None) -> dict:
        node = self._require()
        payload = data.encode() if isinstance(data, str) else data
        if not isinstance(payload, bytes | bytearray):
            raise BridgeError("data must be a string or a Uint8Array", code="EINVAL")
        timeout = (options or {}).get("timeout", 30)
        if not isinstance(timeout, int | float) or timeout <= 0:
            raise BridgeError("timeout must be a positive number of seconds", code="EINVAL")
        delivery = await node.send(peer_id, bytes(payload), timeout=float(timeout))
        return {"path": delivery.path, "ms": round(delivery.seconds * 1000, 2)}

    async def pair(self, code: str | None = None, options: dict | None = None) -> dict:
        """Pairing (see ``shoal.pairing``): with no ``code``, a new one goes to the pages
        as a ``network.pair-code`` event; resolves with the other side's peer id."""
        from shoal.pairing import SLOT_LIFETIME
        from shoal.pairing import pair as pair_with

        node = self._require()
        if code is not None and not isinstance(code, str):
            raise BridgeError("a pairing code is a string", code="EINVAL")
        timeout = (options or {}).get("timeout", SLOT_LIFETIME)
        if not isinstance(timeout, int | float) or timeout <= 0:
            raise BridgeError("timeout must be a positive number of seconds", code="EINVAL")
        other = await pair_with(node, code, timeout=float(timeout), on_code=lambda made:
                                self._emit("network.pair-code", {"code": made}))
        return {"peerId": other}

    async def _forward_messages(self, node: Node) -> None:
        async for message in node.messages():
            self._emit("network.message", {
                "from": message.sender, "path": message.path,
                "data": base64.b64encode(message.data).decode(),
            })

    async def _forward_events(self, events: Subscription) -> None:
        from shoal.core import events as ev

        async for event in events:
            if isinstance(event, ev.PeerConnected) and not event.introducer:
                self._emit("network.peer", {"peerId": event.peer_id, "connected": True,
                                            "path": event.path})
            elif isinstance(event, ev.PeerDisconnected):
                self._emit("network.peer", {"peerId": event.peer_id, "connected": False})

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()


class _DatagramProtocol(asyncio.DatagramProtocol):
    def __init__(self, socket_id: int, emit: Callable[[str, dict], None]) -> None:
        self.socket_id = socket_id
        self.emit = emit

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.emit("dgram.message", {"id": self.socket_id, "host": addr[0], "port": addr[1],
                                    "data": base64.b64encode(data).decode()})


class Datagrams:
    """``dgram.*``: UDP sockets that send only where ``permissions.dgram`` allows."""

    def __init__(self, allowed: tuple[tuple[str, int | None], ...],
                 emit: Callable[[str, dict], None]) -> None:
        self.allowed = allowed
        self._emit = emit
        self._sockets: dict[int, asyncio.DatagramTransport] = {}
        self._next = 1

    def calls(self) -> dict[str, Callable[..., Any]]:
        return {"dgram.createSocket": self.create, "dgram.send": self.send,
                "dgram.close": self.close_socket, "dgram.address": self.address}

    def _require(self) -> None:
        if not self.allowed:
            raise BridgeError("this app did not declare any 'dgram' destinations",
                              code="EPERM")

    async def create(self, options: dict | None = None) -> int:
        self._require()
        options = options or {}
        port = options.get("port", 0)
        host = options.get("address", "0.0.0.0")
        if not isinstance(port, int) or not 0 <= port <= 65535 or not isinstance(host, str):
            raise BridgeError("port must be 0..65535 and address a string", code="EINVAL")
        if len(self._sockets) >= MAX_DGRAM_SOCKETS:
            raise BridgeError("too many open UDP sockets", code="EMFILE")
        socket_id = self._next
        self._next += 1
        try:
            transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
                lambda: _DatagramProtocol(socket_id, self._emit), local_addr=(host, port)
            )
        except OSError as exc:
            raise BridgeError(f"cannot bind UDP {host}:{port}: {exc.strerror}",
                              code=os_error_code(exc)) from None
        self._sockets[socket_id] = transport
        page = current_page.get()
        if page is not None:  # the socket closes with the page that opened it
            page.hold(("dgram", socket_id), lambda: self._drop(socket_id))
        return socket_id

    def _drop(self, socket_id: int) -> None:
        transport = self._sockets.pop(socket_id, None)
        if transport is not None:
            transport.close()

    async def address(self, socket_id: int) -> dict[str, Any]:
        transport = self._socket(socket_id)
        host, port = transport.get_extra_info("sockname")[:2]
        return {"address": host, "port": port}

    async def send(self, socket_id: int, data: bytes | str, host: str, port: int) -> None:
        self._require()
        transport = self._socket(socket_id)
        if not isinstance(host, str) or not isinstance(port, int) or not 0 < port <= 65535:
            raise BridgeError("host must be an IP address string and port 1..65535",
                              code="EINVAL")
        try:
            canonical = str(ipaddress.ip_address(host))
        except ValueError:
            raise BridgeError(f"not an IP address: {host!r}", code="EINVAL") from None
        if not any(canonical == h and (p is None or p == port) for h, p in self.allowed):
            raise BridgeError(f"this app may not send UDP to {host}:{port}", code="EPERM")
        payload = data.encode() if isinstance(data, str) else data
        if not isinstance(payload, bytes | bytearray) or len(payload) > 65507:
            raise BridgeError("data must be a string or a Uint8Array up to 65507 bytes",
                              code="EINVAL")
        transport.sendto(bytes(payload), (canonical, port))

    async def close_socket(self, socket_id: int) -> None:
        self._drop(socket_id)

    def _socket(self, socket_id: int) -> asyncio.DatagramTransport:
        transport = self._sockets.get(socket_id)
        if transport is None:
            raise BridgeError(f"no open UDP socket {socket_id}", code="EBADF")
        return transport

    def close(self) -> None:
        for transport in self._sockets.values():
            with contextlib.suppress(Exception):
                transport.close()
        self._sockets.clear()
