"""Who gets a place when a table is full: a fair share per owner (``FairShares``).

The session table shares itself per source network, the relay its pairs per source peer.

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
from collections.abc import Hashable

from shoal.core.wire import Address, RelayPath


def source_of(address: Address) -> Hashable:
    """What per-source limits count an address against: its IP, or its /64 for IPv6
    (what one host most easily holds many addresses of); for a packet that came through
    a relay, the relaying peer and the source it names, together."""
    if isinstance(address, RelayPath):
        return address
    host = address[0]
    if ":" not in host:
        return host  # IPv4, the common case: no parsing
    return _network(host, 32, 64)


def prefix_of(address: Address) -> str:
    """The source prefix an address counts against: its /24 (IPv4) or /48 (IPv6)."""
    return _network(address[0], 24, 48)


def _network(host: str, v4_bits: int, v6_bits: int) -> str:
    """The network of ``host`` with that many prefix bits (IPv4-mapped IPv6 as IPv4)."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host
    if ip.version == 6 and ip.ipv4_mapped is None:
        return str(ipaddress.ip_network(f"{ip}/{v6_bits}", strict=False))
    v4 = ip.ipv4_mapped if ip.version == 6 else ip
    return str(ipaddress.ip_network(f"{v4}/{v4_bits}", strict=False))


class FairShares:
    """Members (sessions, relayed pairs) by owner (a network, a source peer), oldest or
    least recently used first, with the heaviest owner at hand: who gives up a member
    when a newcomer's owner holds at least two fewer. Every step is O(1)."""

    def __init__(self) -> None:
        self._members: dict[Hashable, dict[Hashable, None]] = {}
        self._owner: dict[Hashable, Hashable] = {}
        self._by_count: dict[int, dict[Hashable, None]] = {}
        """Owners by how many members they hold, the first to reach a count first."""
        self._top = 0

    def __len__(self) -> int:
        return len(self._owner)

    def count(self, owner: Hashable) -> int:
        return len(self._members.get(owner, ()))

    def add(self, key: Hashable, owner: Hashable) -> None:
        if key in self._owner:
            return
        members = self._members.setdefault(owner, {})
        self._move(owner, len(members), len(members) + 1)
        members[key] = None
        self._owner[key] = owner

    def touch(self, key: Hashable) -> None:
        """``key`` was just used: it becomes its owner's last to give up."""
        members = self._members[self._owner[key]]
        del members[key]
        members[key] = None

    def remove(self, key: Hashable) -> None:
        owner = self._owner.pop(key, None)
        if owner is None:
            return
        members = self._members[owner]
        del members[key]
        self._move(owner, len(members) + 1, len(members))
        if not members:
            del self._members[owner]

    def victim(self, newcomer: Hashable) -> Hashable | None:
        """The member to give up for a newcomer of owner ``newcomer``, or None."""
        if self._top < self.count(newcomer) + 2:
            return None
        owner = next(iter(self._by_count[self._top]))
        return next(iter(self._members[owner]))

    def _move(self, owner: Hashable, before: int, after: int) -> None:
        if before:
            holders = self._by_count[before]
            del holders[owner]
            if not holders:
                del self._by_count[before]
        if after:
            self._by_count.setdefault(after, {})[owner] = None
        if after > self._top:
            self._top = after
        while self._top and self._top not in self._by_count:
            self._top -= 1
