"""``files.*`` calls: the page shares and fetches files by content, within its folders.

Sharing needs the ``network`` permission and a file the page may read; fetching needs
the ``network`` permission and a target the page may write (its ``NAME.part`` beside it
is then writable too). Progress reaches the page as ``files.progress`` events carrying
the id the page gave the fetch.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from shoal.runtime.fsapi import BridgeError, PathPolicy

if TYPE_CHECKING:
    from shoal.aio.files import FetchProgress
    from shoal.aio.node import Node

PROGRESS_INTERVAL = 0.1
"""Seconds between two progress events of one fetch (the last always goes)."""


class Files:
    """``files.share``, ``files.fetch``, ``files.unshare`` and ``files.list``."""

    def __init__(self, node: Node | None, allowed: bool, policy: PathPolicy,
                 emit: Callable[[str, dict], None]) -> None:
        self.node = node
        self.allowed = allowed
        self.policy = policy
        self._emit = emit

    def calls(self) -> dict[str, Callable[..., Any]]:
        return {"files.share": self.share, "files.fetch": self.fetch,
                "files.unshare": self.unshare, "files.list": self.list}

    def _require(self) -> Node:
        if not self.allowed:
            raise BridgeError("this app did not declare the 'network' permission", code="EPERM")
        if self.node is None:
            raise BridgeError("the network is not running", code="ENOTCONN")
        return self.node

    async def share(self, path: str) -> dict[str, Any]:
        node = self._require()
        _, real = self.policy.locate(path, write=False)
        ticket = await node.share(real)
        return {"ticket": str(ticket), "size": ticket.size, "name": ticket.name,
                "root": ticket.root.hex()}

    async def fetch(self, ticket: str, path: str, fetch_id: Any = None) -> dict[str, Any]:
        node = self._require()
        if not isinstance(ticket, str):
            raise BridgeError("a ticket is a string", code="EINVAL")
        _, real = self.policy.locate(path, write=True)
        last = [0.0]

        def progress(p: FetchProgress) -> None:
            now = time.monotonic()
            if now - last[0] < PROGRESS_INTERVAL and p.bytes < p.size:
                return
            last[0] = now
            self._emit("files.progress", {"id": fetch_id, "bytes": p.bytes, "size": p.size,
                                          "peers": p.peers, "corrupt": p.corrupt})

        result = await node.fetch(ticket, real, progress=progress)
        return {"path": path, "size": result.size, "fetched": result.fetched,
                "resumed": result.resumed, "seconds": round(result.seconds, 3)}

    async def unshare(self, ticket: str) -> bool:
        return self._require().unshare(ticket)

    async def list(self) -> list[dict[str, Any]]:
        return [{"ticket": str(f.ticket), "size": f.size, "name": f.ticket.name,
                 "served": f.served_bytes} for f in self._require().files()]

    def close(self) -> None:
        """Shares end with the node."""
