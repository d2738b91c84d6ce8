"""Address parsing and local interface discovery shared by the driver and the CLI."""

from __future__ import annotations

import ipaddress
import socket
from typing import TYPE_CHECKING

from shoal.errors import LocalProtocolError

if TYPE_CHECKING:
    from shoal.core.wire import Address


def parse_address(value: str | Address, *, default_port: int | None = None) -> Address:
    """Parse "HOST:PORT", "[V6]:PORT" or a (host, port) tuple; hostnames are not resolved."""
    if isinstance(value, tuple):
        host, port = value[0], int(value[1])
    else:
        text = value.strip()
        if text.startswith("["):
            host, _sep, rest = text[1:].partition("]")
            port_text = rest[1:] if rest.startswith(":") else ""
        elif text.count(":") == 1:
            host, port_text = text.split(":")
        elif text.count(":") > 1:
            host, port_text = text, ""
        else:
            host, port_text = text, ""
        if not port_text:
            if default_port is None:
                raise LocalProtocolError(f"address {value!r} needs a port (HOST:PORT)")
            port = default_port
        else:
            try:
                port = int(port_text)
            except ValueError:
                raise LocalProtocolError(f"bad port in address {value!r}") from None
    if host in ("localhost", ""):
        host = "127.0.0.1" if host == "localhost" else "0.0.0.0"
    try:
        host = str(ipaddress.ip_address(host))
    except ValueError:
        raise LocalProtocolError(
            f"not an IP address: {host!r} (use an address, not a name)"
        ) from None
    if not 0 <= port <= 65535:
        raise LocalProtocolError(f"port out of range in {value!r}")
    return host, port


def format_address(address: Address) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def local_addresses(bound: Address) -> list[Address]:
    """Addresses on this machine's interfaces that reach the bound socket."""
    host, port = bound
    ip = ipaddress.ip_address(host)
    if not ip.is_unspecified:
        return [bound]
    import psutil

    out: list[Address] = []
    for entries in psutil.net_if_addrs().values():
        for entry in entries:
            try:
                candidate = ipaddress.ip_address(entry.address.split("%", 1)[0])
            except ValueError:
                continue
            if candidate.is_loopback or candidate.is_link_local or candidate.is_multicast:
                continue
            if candidate.version == 6 and ip.version == 4:
                continue
            out.append((str(candidate), port))
    return out or [("127.0.0.1", port)]


def bind_listener(port: int = 0) -> socket.socket:
    """A TCP socket listening on 127.0.0.1 (for an app's server), bound ahead of time."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(128)
    return listener
