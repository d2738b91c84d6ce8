"""Tunable limits and timers of the core, with the defaults real networks want."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from shoal.core.wire import Address
from shoal.errors import LocalProtocolError


@dataclass(frozen=True, slots=True, kw_only=True)
class CoreConfig:
    """Every duration is in seconds."""

    keepalive_interval: float = 15.0
    """The side that dialed sends a PING after this much send silence (below NAT timeouts);
    the other side only answers."""
    idle_timeout: float = 45.0
    """A session that receives nothing authenticated for this long is dropped."""
    handshake_timeout: float = 10.0
    """A dial that has not completed a handshake by then gives up."""
    handshake_retry: float = 0.25
    """First INIT retransmission delay; doubles on each retry."""
    message_timeout: float = 30.0
    """A message not acknowledged by then fails with ETIMEDOUT."""
    max_message_size: int = 1 << 20
    """Largest direct message accepted or sent (bytes)."""
    max_reassembly_bytes: int = 8 << 20
    """Bytes of partly received messages one session may hold."""
    max_reassembly_total: int = 64 << 20
    """Bytes of partly received messages all connections together may hold."""
    channel_receive_window: int = 1 << 20
    """Bytes of messages one peer may have this node hold on one channel until the
    application reads them (never less than ``max_message_size``); a channel nobody reads
    takes no more from that peer."""
    connection_receive_window: int = 4 << 20
    """The same for all the channels of one connection together: a few channels nobody
    reads leave room for the others."""
    max_receive_total: int = 64 << 20
    """Bytes of received messages the node holds for its applications, unread, before it
    grants peers no more room (each may still finish what it was granted)."""
    max_channels_per_connection: int = 64
    """Channel numbers a peer may bind on one connection (each counted as 1 KiB of the
    reassembly budgets); one more closes the connection with CLOSE code 1."""
    reassembly_timeout: float = 30.0
    """A message unfinished for this long closes its connection."""
    max_sessions: int | None = None
    """Connections held at once (None: 4,096, or 262,144 for an introducer)."""
    max_handshakes_per_source: float = 20.0
    """INITs and PUNCH answers accepted per second from one IP, sustained."""
    handshake_burst: float = 40.0
    max_stun_per_source: float = 20.0
    """STUN requests answered per second from one IP (a bucket apart from handshakes)."""
    handshake_rate: float = 1000.0
    """INITs answered per second in all before the node asks for cookies (busy)."""
    introducer: bool = False
    """Keep a registry of connected peers and introduce them to each other."""
    stun_server: bool = True
    """Answer STUN Binding requests."""
    stun_timeout: float = 3.0
    stun_servers: tuple[Address, ...] = ()
    """STUN servers the NAT check asks besides the introducers."""
    nat_check: bool = True
    """Detect this node's NAT kind once an introducer has answered."""
    punching: bool = True
    """Use birthday punching where the NAT kinds call for it."""
    relay: bool = True
    """Relay between two peers that are both connected to this node."""
    dht: bool = True
    """Run the DHT service ("dht": find the peers that provide a key, store provider
    records for others); its own settings go in ``services["dht"]``."""
    relay_bytes_per_second: float = 512 * 1024
    """Relayed bytes accepted per second from one peer (the burst is two seconds' worth)."""
    relay_total_bytes_per_second: float = 4 * 1024 * 1024
    """Relayed bytes accepted per second from all peers together (a two-second burst);
    peers that relay little are never held back by it."""
    max_relay_targets: int = 16
    """Distinct peers one peer may reach through this node at a time."""
    max_relayed_pairs: int = 1024

    max_datagram_size: int = 1452
    """The largest UDP payload a connection probes for on a direct path (RFC 8899);
    1232 (the size every path carries) turns the search off. 8952 suits jumbo frames."""
    congestion_control: str = "cubic"
    """How a connection's window grows and shrinks: "cubic" (RFC 9438) or "newreno"
    (RFC 9002), or a name given to ``shoal.core.congestion.register``."""
    services: Mapping[str, Mapping[str, Any]] = field(default_factory=dict, hash=False)
    """Each added service's own settings, by service name (``ServiceContext.options``)."""

    def __post_init__(self) -> None:
        from shoal.core.congestion import CONTROLLERS

        if self.congestion_control not in CONTROLLERS:
            known = ", ".join(sorted(CONTROLLERS))
            raise LocalProtocolError(f"unknown congestion control {self.congestion_control!r} "
                                     f"(known: {known})")

    @property
    def session_limit(self) -> int:
        """``max_sessions``, or its default for this kind of node."""
        if self.max_sessions is not None:
            return self.max_sessions
        return 262_144 if self.introducer else 4096
