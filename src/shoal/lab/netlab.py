"""A lab of real NATs built from Linux network namespaces (needs root, iproute2, nftables).

Layout: an "internet" namespace holds a bridge on 203.0.113.0/24 (a documentation
range). An introducer host sits on it with two addresses (.2 and .3, for RFC 5780 tests).
Each site hangs off the bridge through its own access link:

=================  ==========================================================
kind               what is built
=================  ==========================================================
public             a host with a 203.0.113.x address, no NAT
full-cone          a router: endpoint-independent mapping *and* filtering
                   (masquerade plus an nftables map from external port to host)
port-restricted    a router with plain masquerade (the usual home router)
symmetric          a router with ``masquerade fully-random``: a new port per
                   destination
double             a home router (masquerade) behind a carrier router
                   (masquerade) on 100.64.k.0/24
shared             one port-restricted router with two hosts on its LAN
=================  ==========================================================

Routers drop unsolicited packets to themselves (``ct state new`` on the WAN input) as
real ones do; without that, probes create conntrack entries that steal ports. An access
link can delay and drop frames (``delay``, ``loss``): a userspace forwarder
(``shoal.lab.link``) sits between the site and the bridge, since this kernel has no
netem; checksum offload is then turned off on every veth, so copied frames carry
finished checksums. Everything is removed on exit, also after errors; names carry a per-run tag so
parallel labs do not collide.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

KINDS = ("public", "full-cone", "port-restricted", "symmetric", "double", "shared")
INTRODUCER_IP = "203.0.113.2"
ALTERNATE_IP = "203.0.113.3"
INTRODUCER_PORT = 7000
ALTERNATE_PORT = 7001

_MASQUERADE = {
    "full-cone": "masquerade",
    "port-restricted": "masquerade",
    "symmetric": "masquerade fully-random",
    "double": "masquerade",
    "shared": "masquerade",
}


class LabError(RuntimeError):
    """A lab command failed (with the command and its stderr in the message)."""


@dataclass(slots=True)
class Host:
    """One end host: its namespace and its own (LAN or public) IP."""

    netns: str
    ip: str
    site: str
    kind: str


@dataclass(slots=True)
class Site:
    name: str
    kind: str
    index: int
    hosts: list[Host] = field(default_factory=list)
    routers: list[str] = field(default_factory=list)


class NatLab:
    """Build the lab on ``__enter__``, tear it down on ``__exit__``.

    ``sites`` are (name, kind) pairs. ``delay`` (seconds, one way) and ``loss``
    (probability) apply to every site's access link.
    """

    _count = 0

    def __init__(
        self,
        sites: Sequence[tuple[str, str]],
        *,
        delay: float = 0.0,
        loss: float = 0.0,
        tag: str | None = None,
        seed: int = 0,
    ) -> None:
        if os.geteuid() != 0:
            raise LabError("the NAT lab builds network namespaces and must run as root")
        for name, kind in sites:
            if kind not in KINDS:
                raise LabError(f"site {name!r}: unknown kind {kind!r} (one of {', '.join(KINDS)})")
        if len(sites) > 80:
            raise LabError("at most 80 sites")
        NatLab._count += 1
        self.tag = tag or f"l{os.getpid() % 1000}{NatLab._count % 100}"
        self.delay = delay
        self.loss = loss
        self.seed = seed
        self.sites = {
            name: Site(name, kind, index) for index, (name, kind) in enumerate(sites, start=1)
        }
        self.inet = f"{self.tag}net"
        self.server = Host(f"{self.tag}srv", INTRODUCER_IP, "internet", "public")
        self._namespaces: list[str] = []
        self._processes: list[subprocess.Popen[str]] = []
        self._link_pairs: list[str] = []

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> NatLab:
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop every process the lab started and delete every namespace."""
        for process in reversed(self._processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in reversed(self._processes):
            _reap(process)
        self._processes.clear()
        for netns in reversed(self._namespaces):
            subprocess.run(["ip", "netns", "del", netns], capture_output=True, check=False)
        self._namespaces.clear()

    # ------------------------------------------------------------------ use

    def host(self, site: str, index: int = 0) -> Host:
        return self.sites[site].hosts[index]

    @property
    def introducer_address(self) -> str:
        return f"{INTRODUCER_IP}:{INTRODUCER_PORT}"

    @property
    def alternate_address(self) -> str:
        return f"{ALTERNATE_IP}:{ALTERNATE_PORT}"

    def command(self, host: Host | str, args: Sequence[str]) -> list[str]:
        """The argv that runs ``args`` inside ``host``'s namespace."""
        netns = host if isinstance(host, str) else host.netns
        return ["ip", "netns", "exec", netns, *args]

    def spawn(self, host: Host | str, args: Sequence[str], **popen: object) -> subprocess.Popen:
        """Start a long-running process in ``host``'s namespace; stopped on ``close``."""
        process = subprocess.Popen(self.command(host, args), **popen)  # type: ignore[call-overload]
        self._processes.append(process)
        return process

    def stop(self, process: subprocess.Popen, timeout: float = 5.0) -> None:
        """Stop a process ``spawn`` started, now: SIGTERM, then SIGKILL after ``timeout``."""
        process.terminate()
        _reap(process, timeout)
        if process in self._processes:
            self._processes.remove(process)

    def flush_conntrack(self) -> None:
        """Forget every NAT mapping, so the next trial starts as cold as the first."""
        for site in self.sites.values():
            for router in site.routers:
                subprocess.run(self.command(router, ["conntrack", "-F"]), capture_output=True,
                               check=False)

    # ------------------------------------------------------------------ building

    def _build(self) -> None:
        self._netns(self.inet)
        self._in(self.inet, "sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=0")
        self._in(self.inet, "ip", "link", "add", "br0", "type", "bridge")
        self._in(self.inet, "ip", "link", "set", "br0", "up")
        self._netns(self.server.netns)
        self._veth(self.server.netns, "eth0", self.inet, "srv0")
        self._bridge_port("srv0")
        for ip in (INTRODUCER_IP, ALTERNATE_IP):
            self._in(self.server.netns, "ip", "addr", "add", f"{ip}/24", "dev", "eth0")
        for site in self.sites.values():
            self._build_site(site)
        if self._link_pairs:
            process = self.spawn(self.inet, [
                sys.executable, "-m", "shoal.lab.link", "--delay", str(self.delay),
                "--loss", str(self.loss), "--seed", str(self.seed), *self._link_pairs,
            ], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            assert process.stdout is not None
            if process.stdout.readline().strip() != "ready":
                raise LabError(f"the link forwarder did not start: {process.stderr.read()}")

    def _build_site(self, site: Site) -> None:
        k = site.index
        wan_ip = f"203.0.113.{10 + k}"
        edge = f"{self.tag}{'h' if site.kind == 'public' else 'r'}{k}"
        self._netns(edge)
        self._access_link(edge, k)
        self._in(edge, "ip", "addr", "add", f"{wan_ip}/24", "dev", "wan")
        if site.kind == "public":
            site.hosts.append(Host(edge, wan_ip, site.name, site.kind))
            return
        site.routers.append(edge)
        lan_router = edge
        if site.kind == "double":
            home = f"{self.tag}r{k}b"
            self._netns(home)
            self._veth(edge, "lan", home, "wan")
            self._in(edge, "ip", "addr", "add", f"100.64.{k}.1/24", "dev", "lan")
            self._in(home, "ip", "addr", "add", f"100.64.{k}.2/24", "dev", "wan")
            self._in(home, "ip", "route", "add", "default", "via", f"100.64.{k}.1")
            self._router(edge, site.kind)
            site.routers.append(home)
            lan_router = home
        self._router(lan_router, site.kind)
        count = 2 if site.kind == "shared" else 1
        if count > 1:
            self._in(lan_router, "sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=0")
            self._in(lan_router, "ip", "link", "add", "lan", "type", "bridge")
            self._in(lan_router, "ip", "link", "set", "lan", "up")
        for n in range(count):
            host = f"{self.tag}h{k}{'ab'[n]}"
            self._netns(host)
            if count > 1:
                port = f"p{n}"
                self._veth(lan_router, port, host, "eth0")
                self._in(lan_router, "ip", "link", "set", port, "master", "lan")
            else:
                self._veth(lan_router, "lan", host, "eth0")
            ip = f"10.{k}.0.{2 + n}"
            self._in(host, "ip", "addr", "add", f"{ip}/24", "dev", "eth0")
            self._in(host, "ip", "route", "add", "default", "via", f"10.{k}.0.1")
            site.hosts.append(Host(host, ip, site.name, site.kind))
        self._in(lan_router, "ip", "addr", "add", f"10.{k}.0.1/24", "dev", "lan")

    def _access_link(self, edge: str, k: int) -> None:
        """Join ``edge``'s "wan" to the bridge, through the impairing forwarder if asked."""
        if self.delay <= 0 and self.loss <= 0:
            self._veth(edge, "wan", self.inet, f"s{k}")
            self._bridge_port(f"s{k}")
            return
        self._veth(edge, "wan", self.inet, f"t{k}")
        self._veth(self.inet, f"u{k}", self.inet, f"v{k}")
        self._bridge_port(f"v{k}")
        for name in (f"t{k}", f"u{k}"):
            self._in(self.inet, "ip", "link", "set", name, "promisc", "on", "up")
        self._link_pairs.append(f"t{k}:u{k}")

    def _router(self, netns: str, kind: str) -> None:
        self._in(netns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        for scope in ("all", "default"):
            self._in(netns, "sysctl", "-qw", f"net.ipv4.conf.{scope}.rp_filter=0")
        full_cone = kind == "full-cone"
        rules = [
            "table ip lab {",
            *([
                "  map cone { type inet_service : ipv4_addr . inet_service ;"
                " flags dynamic,timeout ; timeout 300s ; }",
                "  chain prerouting { type nat hook prerouting priority dstnat; policy accept;",
                '    iifname "wan" meta l4proto udp dnat ip to udp dport map @cone; }',
                "  chain learn { type filter hook postrouting priority 200; policy accept;",
                '    oifname "wan" meta l4proto udp update @cone'
                " { ct reply proto-dst : ct original ip saddr . ct original proto-src }; }",
            ] if full_cone else []),
            "  chain postrouting { type nat hook postrouting priority srcnat; policy accept;",
            f'    oifname "wan" {_MASQUERADE[kind]}; }}',
            "  chain forward { type filter hook forward priority filter; policy drop;",
            "    ct state established,related accept",
            '    iifname "lan" accept',
            *(["    ct status dnat accept"] if full_cone else []),
            "  }",
            "  chain input { type filter hook input priority filter; policy accept;",
            '    iifname "wan" ct state new drop; }',
            "}",
        ]
        self._run(self.command(netns, ["nft", "-f", "-"]), stdin="\n".join(rules))

    # ------------------------------------------------------------------ primitives

    def _netns(self, name: str) -> None:
        self._run(["ip", "netns", "add", name])
        self._namespaces.append(name)
        self._in(name, "ip", "link", "set", "lo", "up")

    def _veth(self, ns_a: str, name_a: str, ns_b: str, name_b: str) -> None:
        self._run(["ip", "link", "add", name_a, "netns", ns_a, "type", "veth", "peer", "name",
                   name_b, "netns", ns_b])
        self._in(ns_a, "ip", "link", "set", name_a, "up")
        self._in(ns_b, "ip", "link", "set", name_b, "up")
        if self.delay > 0 or self.loss > 0:
            # Frames copied by the userspace link must carry finished checksums.
            for netns, name in ((ns_a, name_a), (ns_b, name_b)):
                self._in(netns, "ethtool", "-K", name, "tx", "off")

    def _bridge_port(self, name: str) -> None:
        self._in(self.inet, "ip", "link", "set", name, "master", "br0")

    def _in(self, netns: str, *args: str) -> None:
        self._run(self.command(netns, args))

    def _run(self, argv: list[str], stdin: str | None = None) -> None:
        result = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise LabError(f"{' '.join(argv)}: {result.stderr.strip()}")


def _reap(process: subprocess.Popen, timeout: float = 5.0) -> None:
    """Wait for ``process`` to exit, killing it after ``timeout``."""
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
