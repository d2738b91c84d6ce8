"""Who gets a session when the table is full: a fair share per network prefix.

Sessions that peers open to this node are counted per source prefix (an IPv4 /24, an
IPv6 /48: what one party most easily holds many addresses of). When the table is full,
a newcomer takes the place of the oldest session of the prefix holding the most, if that
prefix holds at least two more than the newcomer's; otherwise the newcomer waits. So a
flood of throw-away identities from a few networks cannot keep peers from elsewhere out,
and a prefix is never squeezed below what the newcomer's holds. Sessions this node
dialed itself (its introducers, peers it chose) are not counted and never evicted.
"""

from __future__ import annotations

import ipaddress

from shoal.core.wire import Address


def prefix_of(address: Address) -> str:
    """The source prefix an address counts against: its /24 (IPv4) or /48 (IPv6)."""
    host = address[0]
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host
    if ip.version == 6 and ip.ipv4_mapped is None:
        return str(ipaddress.ip_network(f"{ip}/48", strict=False))
    v4 = ip.ipv4_mapped if ip.version == 6 else ip
    return str(ipaddress.ip_network(f"{v4}/24", strict=False))


class PrefixShares:
    """Sessions by source prefix, oldest first, with the heaviest prefix at hand."""

    def __init__(self) -> None:
        self._members: dict[str, dict[bytes, None]] = {}
        self._prefix: dict[bytes, str] = {}
        self._by_count: dict[int, set[str]] = {}
        self._top = 0

    def __len__(self) -> int:
        return len(self._prefix)

    def count(self, prefix: str) -> int:
        return len(self._members.get(prefix, ()))

    def add(self, key: bytes, prefix: str) -> None:
        if key in self._prefix:
            return
        members = self._members.setdefault(prefix, {})
        self._move(prefix, len(members), len(members) + 1)
        members[key] = None
        self._prefix[key] = prefix

    def remove(self, key: bytes) -> None:
        prefix = self._prefix.pop(key, None)
        if prefix is None:
            return
        members = self._members[prefix]
        del members[key]
        self._move(prefix, len(members) + 1, len(members))
        if not members:
            del self._members[prefix]

    def victim(self, newcomer: str) -> bytes | None:
        """The session to give up for a newcomer from ``newcomer``'s prefix, or None."""
        if self._top < self.count(newcomer) + 2:
            return None
        prefix = next(iter(self._by_count[self._top]))
        return next(iter(self._members[prefix]))

    def _move(self, prefix: str, before: int, after: int) -> None:
        if before:
            holders = self._by_count[before]
            holders.discard(prefix)
            if not holders:
                del self._by_count[before]
        if after:
            self._by_count.setdefault(after, set()).add(prefix)
        if after > self._top:
            self._top = after
        while self._top and self._top not in self._by_count:
            self._top -= 1
