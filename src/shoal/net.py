"""Address parsing and local interface discovery shared by the driver and the CLI."""

from __future__ import annotations

import errno
import ipaddress
import socket
from typing import TYPE_CHECKING

from shoal.errors import LocalProtocolError, ShoalError, os_error_code

if TYPE_CHECKING:
    from shoal.core.wire import Address


def parse_address(value: str | Address, *, default_port: int | None = None) -> Address:
    """Parse "HOST:PORT", "[V6]:PORT" or a (host, port) tuple; host names are not resolved
    (``resolve_address`` does), except "localhost"."""
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


def resolve_address(value: str, *, default_port: int | None = None,
                    ipv6: bool = False) -> Address:
    """Like ``parse_address``, and a host name is looked up (A and AAAA records, blocking):
    the first IPv4 address found, or IPv6 with ``ipv6`` (a dual-stack socket) or when the
    name has no IPv4 one. A name that does not resolve raises ``LocalProtocolError``
    ``ENOTFOUND``."""
    import socket

    try:
        return parse_address(value, default_port=default_port)
    except LocalProtocolError as exc:
        if "not an IP address" not in exc.message:
            raise
    host, _sep, port_text = value.strip().rpartition(":")
    if not host:  # a name with no port: parse_address let default_port stand for it
        host, port = value.strip(), default_port or 0
    else:
        port = parse_address(f"0.0.0.0:{port_text}")[1]
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except (socket.gaierror, UnicodeError) as exc:
        reason = exc.strerror if isinstance(exc, socket.gaierror) else "not a valid name"
        raise LocalProtocolError(f"cannot resolve {host!r} ({value}): {reason}",
                                 code="ENOTFOUND") from None
    families = (socket.AF_INET6, socket.AF_INET) if ipv6 else (socket.AF_INET, socket.AF_INET6)
    for family in families:
        for entry in found:
            if entry[0] == family:
                return parse_address((str(entry[4][0]).split("%", 1)[0], port))
    raise LocalProtocolError(f"cannot resolve {host!r} ({value}): no IP address",
                             code="ENOTFOUND")


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


class ListenError(ShoalError, OSError):
    """The loopback port cannot be had; an ``OSError`` too, for callers that then try
    another port."""


def bind_listener(port: int = 0) -> socket.socket:
    """A TCP socket listening on 127.0.0.1 (for an app's server), bound ahead of time;
    raises ``ListenError`` (code ``EADDRINUSE``, ...) if the port cannot be had."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen(128)
    except OSError as exc:
        listener.close()
        hint = ("; another program uses it: choose another --port, or --port 0 for any free one"
                if exc.errno == errno.EADDRINUSE else "")
        raise ListenError(f"cannot serve on 127.0.0.1:{port}: {exc.strerror}{hint}",
                          code=os_error_code(exc)) from None
    return listener
