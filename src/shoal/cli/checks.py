"""What ``shoal doctor`` can find out on this machine alone, and what ``shoal info``
checks for the commands that need more than Shoal itself."""

from __future__ import annotations

import contextlib
import importlib.util
import ipaddress
import os
import shutil
import socket
from pathlib import Path
from typing import Any


def interfaces() -> list[dict[str, Any]]:
    """Each network interface that is up, with its IP addresses (loopback left out)."""
    import psutil

    stats = psutil.net_if_stats()
    found = []
    for name, entries in sorted(psutil.net_if_addrs().items()):
        if name in stats and not stats[name].isup:
            continue
        addresses = []
        for entry in entries:
            with contextlib.suppress(ValueError):
                ip = ipaddress.ip_address(entry.address.split("%", 1)[0])
                if not ip.is_loopback:
                    addresses.append(str(ip))
        if addresses:
            found.append({"name": name, "addresses": addresses})
    return found


def ipv6_report(found: list[dict[str, Any]]) -> dict[str, Any]:
    """Whether this host has IPv6 that reaches beyond its link: a global address, and a
    UDP socket that can use it."""
    addresses = [ipaddress.ip_address(a) for i in found for a in i["addresses"]]
    public = [str(a) for a in addresses if a.version == 6 and a.is_global]
    return {"global_addresses": public, "udp": udp_echo("::1")}


def udp_echo(host: str) -> bool:
    """Whether a UDP socket on ``host`` can send a datagram to itself and read it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.bind((host, 0))
            sock.settimeout(1)
            sock.sendto(b"shoal doctor", sock.getsockname())
            return sock.recv(64) == b"shoal doctor"
    except OSError:
        return False


def tool_checks(environment: dict[str, Any]) -> list[dict[str, Any]]:
    """Each thing a command needs beyond Shoal: whether it is here (``ok``), and what it
    is for and how to get it."""
    window = environment.get("window", "")
    chromium = next((shutil.which(n) for n in ("chromium", "chromium-browser",
                                               "google-chrome") if shutil.which(n)), None)
    bundled = _playwright_chromium()
    playwright = importlib.util.find_spec("playwright") is not None
    return [
        {"name": "window", "ok": str(window).startswith("opens"), "for": "shoal run, dev",
         "detail": window, "fix": window if environment.get("webviews") else
         "pip install 'shoal[gui]'"},
        {"name": "Playwright", "ok": playwright, "for": "shoal test",
         "detail": "installed" if playwright else "not installed",
         "fix": "pip install 'shoal[test]'"},
        {"name": "Chromium", "ok": bool(chromium or bundled), "for": "shoal test",
         "detail": chromium or bundled or "not found",
         "fix": "apt install chromium, or: python -m playwright install chromium"},
        {"name": "PyInstaller", "ok": importlib.util.find_spec("PyInstaller") is not None,
         "for": "shoal build --standalone", "detail": "", "fix": "pip install 'shoal[bundle]'"},
    ]


def _playwright_chromium() -> str | None:
    """A Chromium that Playwright downloaded, if any."""
    base = Path(os.environ.get("PLAYWRIGHT_BROWSERS_PATH") or
                Path.home() / ".cache" / "ms-playwright")
    found = sorted(base.glob("chromium*/chrome-linux*/chrome")) if base.is_dir() else []
    return str(found[-1]) if found else None
