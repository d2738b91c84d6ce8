"""NAT boxes for the simulator: RFC 4787 mapping and filtering behaviours in virtual time.

A ``SimNat`` owns one public IP. A node placed behind it keeps its private address;
datagrams it sends leave with a public source chosen by the mapping behaviour, and
datagrams to the public IP come in only through a mapping whose filter lets them pass.
No hairpinning: nodes behind one NAT reach each other by their private addresses.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from shoal.core.traversal import (
    ADDRESS_AND_PORT_DEPENDENT,
    ADDRESS_DEPENDENT,
    ENDPOINT_INDEPENDENT,
)
from shoal.core.wire import Address

PORT_RANGE = (1024, 65535)


@dataclass(slots=True)
class _Mapping:
    private: Address
    port: int
    allowed: set[Address] = field(default_factory=set)


class SimNat:
    """One NAT box. ``mapping`` and ``filtering`` take the RFC 4787 terms."""

    def __init__(
        self,
        public_ip: str,
        *,
        mapping: str = ENDPOINT_INDEPENDENT,
        filtering: str = ADDRESS_AND_PORT_DEPENDENT,
        rng: random.Random,
    ) -> None:
        for value in (mapping, filtering):
            if value not in (ENDPOINT_INDEPENDENT, ADDRESS_DEPENDENT, ADDRESS_AND_PORT_DEPENDENT):
                raise ValueError(f"not an RFC 4787 behaviour: {value!r}")
        self.public_ip = public_ip
        self.mapping = mapping
        self.filtering = filtering
        self.rng = rng
        self._by_key: dict[tuple, _Mapping] = {}
        self._by_port: dict[int, _Mapping] = {}

    def outbound(self, source: Address, destination: Address) -> Address:
        """The public source address of a datagram from private ``source``."""
        if self.mapping == ENDPOINT_INDEPENDENT:
            key: tuple = (source,)
        elif self.mapping == ADDRESS_DEPENDENT:
            key = (source, destination[0])
        else:
            key = (source, destination)
        entry = self._by_key.get(key)
        if entry is None:
            port = source[1] if self.mapping == ENDPOINT_INDEPENDENT else 0
            while port == 0 or port in self._by_port:
                port = self.rng.randint(*PORT_RANGE)
            entry = self._by_key[key] = self._by_port[port] = _Mapping(source, port)
        entry.allowed.add(destination)
        return (self.public_ip, entry.port)

    def inbound(self, source: Address, port: int) -> Address | None:
        """The private destination for a datagram from ``source`` to our ``port``, or None."""
        entry = self._by_port.get(port)
        if entry is None:
            return None
        if self.filtering == ENDPOINT_INDEPENDENT:
            return entry.private
        if self.filtering == ADDRESS_DEPENDENT:
            ok = any(a[0] == source[0] for a in entry.allowed)
        else:
            ok = source in entry.allowed
        return entry.private if ok else None
