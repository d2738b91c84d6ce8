"""LAN discovery over mDNS/DNS-SD (``zeroconf``): nodes on one network find each other
with no server. Each node announces ``<peer id prefix>._shoal._udp.local.`` with its full
peer id in the TXT record, and browses for the others."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
from collections.abc import Callable

from zeroconf import IPVersion, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from shoal.core.wire import Address
from shoal.identity import peer_id_to_bytes

SERVICE_TYPE = "_shoal._udp.local."


class LanDiscovery:
    """Announce this node and report every other Shoal node seen on the LAN."""

    def __init__(
        self, peer_id: str, port: int, on_peer: Callable[[str, list[Address]], None]
    ) -> None:
        self.peer_id = peer_id
        self.port = port
        self._on_peer = on_peer
        self._zeroconf: AsyncZeroconf | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._info: AsyncServiceInfo | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._zeroconf = AsyncZeroconf(ip_version=IPVersion.V4Only)
        self._info = AsyncServiceInfo(
            SERVICE_TYPE,
            f"{self.peer_id[:32]}.{SERVICE_TYPE}",
            port=self.port,
            properties={"id": self.peer_id, "v": "1"},
            parsed_addresses=_announce_addresses(),
        )
        await self._zeroconf.async_register_service(self._info)
        self._browser = AsyncServiceBrowser(
            self._zeroconf.zeroconf, SERVICE_TYPE, handlers=[self._on_change]
        )

    def _on_change(
        self, zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        if state_change is ServiceStateChange.Removed:
            return
        task = asyncio.ensure_future(self._resolve(zeroconf, service_type, name))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _resolve(self, zeroconf: Zeroconf, service_type: str, name: str) -> None:
        info = AsyncServiceInfo(service_type, name)
        if not await info.async_request(zeroconf, 3000):
            return
        raw = info.properties.get(b"id")
        if not raw:
            return
        peer_id = raw.decode("ascii", "replace")
        try:
            peer_id_to_bytes(peer_id)
        except ValueError:
            return
        except Exception:
            return
        if peer_id == self.peer_id or info.port is None:
            return
        addresses = [(a, info.port) for a in info.parsed_addresses()]
        if addresses:
            self._on_peer(peer_id, addresses)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._browser is not None:
            await self._browser.async_cancel()
        if self._zeroconf is not None:
            with contextlib.suppress(Exception):
                if self._info is not None:
                    await self._zeroconf.async_unregister_service(self._info)
            await self._zeroconf.async_close()


def _announce_addresses() -> list[str]:
    import psutil

    out = []
    for entries in psutil.net_if_addrs().values():
        for entry in entries:
            try:
                ip = ipaddress.ip_address(entry.address)
            except ValueError:
                continue
            if ip.version == 4 and not ip.is_loopback and not ip.is_link_local:
                out.append(str(ip))
    return out
