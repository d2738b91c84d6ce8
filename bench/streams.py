"""Bulk transfer between two processes: Shoal against TLS over TCP, aioquic and Node.js
UDX with secret-stream; prints MB/s for each, the ratios and each side's peak memory.

Everything runs on the loopback of a network namespace this script creates (and removes),
with the loopback's MTU set to 1500, so that no side can send 64 KiB datagrams. Each row
moves the same ``--bytes`` from a sender process to a receiver process; both hash what
they send or receive (SHA-256) and the row is ``verified`` only if the hashes match. The
time is from the sender's first write (once connected) to the receiver's last byte.

    python bench/streams.py [--bytes 1GiB]
                            [--rows shoal_stream,shoal_messages,tls_tcp,aioquic,udx]
                            [--loss PCT] [--repeat K] [--profile] [--json]

Rows: ``tls_tcp`` (Python's ssl over TCP, a self-signed certificate made with
``cryptography``), ``aioquic`` (one QUIC stream; ``pip install 'shoal[bench]'``),
``udx`` (udx-native with @hyperswarm/secret-stream, installed with npm into
``~/.cache/shoal-bench/udx`` on first use), ``shoal_stream`` (one Shoal stream, written
``CHUNK`` bytes at a time) and ``shoal_messages`` (acknowledged messages on a channel,
``--message-size`` each). ``--loss PCT`` drops that share of packets at
the receiving end with an nftables rule in the namespace; it turns segmentation offload
off (Shoal's GSO, TCP's TSO), so that each dropped packet is one datagram or segment.
``--profile`` samples Shoal's processes with py-spy (where py-spy is missing, each
samples itself every millisecond of CPU time) and prints where their time goes.
Needs root (network namespaces).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import datetime
import functools
import hashlib
import json
import os
import random
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("SHOAL_NO_LAN", "1")

HERE = Path(__file__).resolve().parent
UDX_CACHE = Path.home() / ".cache" / "shoal-bench" / "udx"
UDX_PACKAGES = ("udx-native@^1.21", "@hyperswarm/secret-stream@^6.9")
RECEIVER_PORT = 40001
SENDER_PORT = 40002
CHUNK = 256 * 1024
"""What a stream sender writes at once."""
BLOCK = 2 << 20
CHANNEL = "bench/1"
SEEDS = {"recv": bytes(range(32)), "send": bytes(range(32, 64))}
DEFAULT_ROWS = ("shoal_stream", "shoal_messages", "tls_tcp", "aioquic", "udx")


# ====================================================================== data both sides see

class Pattern:
    """The bytes a sender moves: chunks of a random block, each starting with its index
    (so that reordered or repeated chunks change the receiver's hash)."""

    def __init__(self, seed: int = 1) -> None:
        self.block = random.Random(seed).randbytes(BLOCK)
        self.hash = hashlib.sha256()
        self.sent = 0

    def chunks(self, total: int, size: int) -> Iterator[bytes]:
        index = 0
        while self.sent < total:
            length = min(size, total - self.sent)
            start = (index * 4099) % (BLOCK - size)
            chunk = index.to_bytes(8, "big")[:length] + self.block[start:start + length - 8]
            self.hash.update(chunk)
            self.sent += length
            index += 1
            yield chunk


def cpu_seconds() -> float:
    """The process's CPU time so far (user and system)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


_transfer_cpu_from: list[float] = []
"""The process's CPU time when its part of the transfer began (see ``started``)."""


def report(role: str, **fields: object) -> None:
    """A side's result line, with its peak resident memory, the CPU time it used in all
    and the CPU time since ``started`` or ``ready`` (the transfer alone: no start-up,
    imports or handshake)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = usage.ru_utime + usage.ru_stime
    if _transfer_cpu_from:
        fields["transfer_cpu_s"] = round(cpu - _transfer_cpu_from[0], 3)
    print(json.dumps({"role": role, "peak_rss_kib": usage.ru_maxrss,
                      "cpu_s": round(cpu, 3), "user_s": round(usage.ru_utime, 3),
                      "sys_s": round(usage.ru_stime, 3), **fields}), flush=True)


_samplers: list[CpuSampler] = []
"""The process's own sampler, under ``--profile`` without py-spy."""


def _transfer_begins() -> None:
    """This side's transfer CPU counts (and is sampled) from here."""
    _transfer_cpu_from[:] = [cpu_seconds()]
    for sampler in _samplers:
        sampler.start()


def started() -> float:
    """The sender begins (see ``_transfer_begins``); returns the start time."""
    _transfer_begins()
    return time.monotonic()


def ready() -> None:
    """The receiver is set up (see ``_transfer_begins``)."""
    _transfer_begins()
    print(json.dumps({"ready": True}), flush=True)


def wait_for_parent() -> None:
    """Stay up (answering the peer) until the parent closes our standard input."""
    sys.stdin.read()


def use_uvloop() -> str:
    try:
        import uvloop
    except ImportError:
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return "uvloop"


# ====================================================================== TLS over TCP

def tls_recv(args: argparse.Namespace) -> None:
    import socket
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(args.cert, args.key)
    server = socket.create_server(("127.0.0.1", args.port))
    ready()
    raw, _ = server.accept()
    conn = context.wrap_socket(raw, server_side=True)
    buffer = bytearray(BLOCK)
    view = memoryview(buffer)
    digest, received = hashlib.sha256(), 0
    while received < args.bytes:
        count = conn.recv_into(buffer)
        if not count:
            break
        digest.update(view[:count])
        received += count
    end = time.monotonic()
    conn.close()  # the sender waits for this, lest it close first and reset the connection
    report("recv", bytes=received, sha256=digest.hexdigest(), end=end)
    wait_for_parent()


def tls_send(args: argparse.Namespace) -> None:
    import socket
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(args.cert)
    raw = socket.create_connection(("127.0.0.1", args.peer_port))
    conn = context.wrap_socket(raw, server_hostname="localhost")
    pattern = Pattern()
    start = started()
    for chunk in pattern.chunks(args.bytes, CHUNK):
        conn.sendall(chunk)
    conn.shutdown(socket.SHUT_WR)
    # Closing with unread input (TLS session tickets) would reset the connection, and the
    # receiver would lose what it has not read yet: read until the receiver closes.
    with contextlib.suppress(OSError):
        while conn.recv(1 << 16):
            pass
    report("send", bytes=pattern.sent, sha256=pattern.hash.hexdigest(), start=start)


# ====================================================================== aioquic

QUIC_WINDOW = 16 << 20
"""Flow-control windows given to aioquic (its defaults are 1 MiB), and what its sender
keeps unacknowledged at most."""


def _quic_config(args: argparse.Namespace, *, client: bool):  # type: ignore[no-untyped-def]
    import ssl

    from aioquic.quic.configuration import QuicConfiguration

    config = QuicConfiguration(is_client=client, alpn_protocols=["shoal-bench"],
                               max_data=QUIC_WINDOW, max_stream_data=QUIC_WINDOW)
    if client:
        config.verify_mode = ssl.CERT_NONE
    else:
        config.load_cert_chain(args.cert, args.key)
    return config


def quic_recv(args: argparse.Namespace) -> None:
    from aioquic.asyncio import QuicConnectionProtocol, serve
    from aioquic.quic.events import StreamDataReceived

    loop_name = use_uvloop()
    digest = hashlib.sha256()
    state = {"received": 0}

    async def run() -> None:
        done = asyncio.get_running_loop().create_future()

        class Receiver(QuicConnectionProtocol):
            def quic_event_received(self, event: object) -> None:
                if isinstance(event, StreamDataReceived):
                    digest.update(event.data)
                    state["received"] += len(event.data)
                    if (event.end_stream or state["received"] >= args.bytes) and not done.done():
                        done.set_result(time.monotonic())

        server = await serve("127.0.0.1", args.port, configuration=_quic_config(args, client=False),
                             create_protocol=Receiver)
        ready()
        end = await done
        report("recv", bytes=state["received"], sha256=digest.hexdigest(), end=end,
               loop=loop_name)
        await asyncio.to_thread(wait_for_parent)
        server.close()

    asyncio.run(run())


def quic_send(args: argparse.Namespace) -> None:
    from aioquic.asyncio import QuicConnectionProtocol, connect

    use_uvloop()

    class Sender(QuicConnectionProtocol):
        def __init__(self, *a: object, **k: object) -> None:
            super().__init__(*a, **k)  # type: ignore[arg-type]
            self.progress = asyncio.Event()

        def datagram_received(self, data: bytes, addr: object) -> None:
            super().datagram_received(data, addr)  # type: ignore[arg-type]
            self.progress.set()

    async def run() -> None:
        async with connect("127.0.0.1", args.peer_port,
                           configuration=_quic_config(args, client=True),
                           create_protocol=Sender, local_port=SENDER_PORT) as client:
            quic = client._quic
            stream_id = quic.get_next_available_stream_id()
            pattern = Pattern()
            start = started()
            for chunk in pattern.chunks(args.bytes, CHUNK):
                quic.send_stream_data(stream_id, chunk, end_stream=pattern.sent >= args.bytes)
                client.transmit()
                # aioquic buffers whatever it is given: wait while too much is unacknowledged.
                sender = quic._streams[stream_id].sender
                while sender._buffer_stop - sender._buffer_start > QUIC_WINDOW:
                    client.progress.clear()
                    await client.progress.wait()
            report("send", bytes=pattern.sent, sha256=pattern.hash.hexdigest(), start=start)
            sender = quic._streams[stream_id].sender
            deadline = time.monotonic() + 30
            while sender._buffer_start < sender._buffer_stop and time.monotonic() < deadline:
                client.progress.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(client.progress.wait(), 1)

    asyncio.run(run())


# ====================================================================== Shoal

def shoal_messages_recv(args: argparse.Namespace) -> None:
    import shoal
    from shoal.identity import Identity

    loop_name = use_uvloop()

    async def run() -> None:
        async with shoal.Node(Identity(SEEDS["recv"]), listen=f"127.0.0.1:{args.port}",
                              lan_discovery=False) as node:
            channel = node.channel(CHANNEL)
            ready()
            digest, received, following = hashlib.sha256(), 0, 0
            early: dict[int, bytes] = {}
            async for message in channel:
                data = message.data
                received += len(data)
                early[int.from_bytes(data[:8], "big")] = data
                while following in early:  # messages may overtake each other: hash in order
                    digest.update(early.pop(following))
                    following += 1
                if received >= args.bytes:
                    break
            end = time.monotonic()
            report("recv", bytes=received if not early else -1, sha256=digest.hexdigest(),
                   end=end, loop=loop_name, io_stats=getattr(node, "io_stats", None),
                   stats=node.stats)
            await asyncio.to_thread(wait_for_parent)

    asyncio.run(run())


def shoal_messages_send(args: argparse.Namespace) -> None:
    import shoal
    from shoal.identity import Identity

    use_uvloop()
    window = max(4, (8 << 20) // args.message_size)

    async def run() -> None:
        async with shoal.Node(Identity(SEEDS["send"]), listen=f"127.0.0.1:{SENDER_PORT}",
                              lan_discovery=False) as node:
            peer = await node.connect(("127.0.0.1", args.peer_port))
            pattern = Pattern()
            in_flight: collections.deque[asyncio.Future[object]] = collections.deque()
            start = started()
            for chunk in pattern.chunks(args.bytes, args.message_size):
                in_flight.append(node.send_nowait(peer, chunk, channel=CHANNEL))  # type: ignore[arg-type]
                if len(in_flight) >= window:
                    await in_flight.popleft()
            await asyncio.gather(*in_flight)
            report("send", bytes=pattern.sent, sha256=pattern.hash.hexdigest(), start=start,
                   io_stats=getattr(node, "io_stats", None), stats=node.stats)

    asyncio.run(run())


def shoal_stream_recv(args: argparse.Namespace) -> None:
    import shoal
    from shoal.identity import Identity

    loop_name = use_uvloop()

    async def run() -> None:
        async with shoal.Node(Identity(SEEDS["recv"]), listen=f"127.0.0.1:{args.port}",
                              lan_discovery=False) as node:
            channel = node.channel(CHANNEL)
            ready()
            stream = await channel.accept()
            digest, received = hashlib.sha256(), 0
            while chunk := await stream.read(BLOCK):
                digest.update(chunk)
                received += len(chunk)
            end = time.monotonic()
            report("recv", bytes=received, sha256=digest.hexdigest(), end=end,
                   loop=loop_name, io_stats=getattr(node, "io_stats", None), stats=node.stats)
            await asyncio.to_thread(wait_for_parent)

    asyncio.run(run())


def shoal_stream_send(args: argparse.Namespace) -> None:
    import shoal
    from shoal.identity import Identity

    use_uvloop()

    async def run() -> None:
        async with shoal.Node(Identity(SEEDS["send"]), listen=f"127.0.0.1:{SENDER_PORT}",
                              lan_discovery=False) as node:
            peer = await node.connect(("127.0.0.1", args.peer_port))
            pattern = Pattern()
            stream = await node.open_stream(peer, CHANNEL)
            start = started()
            for chunk in pattern.chunks(args.bytes, CHUNK):
                await stream.write(chunk)
            await stream.close()
            report("send", bytes=pattern.sent, sha256=pattern.hash.hexdigest(), start=start,
                   io_stats=getattr(node, "io_stats", None), stats=node.stats)

    asyncio.run(run())


# ====================================================================== rows

@dataclass(frozen=True)
class Row:
    """A transport measured: how each side is started (the receiver first)."""

    name: str
    receiver: Callable[[argparse.Namespace], None] | None
    sender: Callable[[argparse.Namespace], None] | None
    shoal: bool = False
    """Profiled under ``--profile``, and counted in the ratios."""

    def command(self, role: str, options: argparse.Namespace, workdir: Path) -> list[str]:
        port = RECEIVER_PORT if role == "recv" else SENDER_PORT
        peer = SENDER_PORT if role == "recv" else RECEIVER_PORT
        if self.name == "udx":
            return ["node", str(HERE / "streams_udx.js"), role, str(options.bytes), str(port),
                    str(peer)]
        return [sys.executable, str(Path(__file__).resolve()), "--role", role, "--row",
                self.name, "--bytes", str(options.bytes), "--port", str(port),
                "--peer-port", str(peer), "--message-size", str(options.message_size),
                "--cert", str(workdir / "cert.pem"), "--key", str(workdir / "key.pem")]


ROWS = {row.name: row for row in (
    Row("tls_tcp", tls_recv, tls_send),
    Row("aioquic", quic_recv, quic_send),
    Row("udx", None, None),
    Row("shoal_stream", shoal_stream_recv, shoal_stream_send, shoal=True),
    Row("shoal_messages", shoal_messages_recv, shoal_messages_send, shoal=True),
)}
"""The ratios compare the first of ``SHOAL_ROWS`` that ran with the others."""
SHOAL_ROWS = ("shoal_stream", "shoal_messages")


def make_certificate(workdir: Path) -> None:
    """A self-signed certificate for localhost, for the TLS and QUIC rows."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    (workdir / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (workdir / "key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))


def install_udx() -> None:
    """udx-native and secret-stream in the benchmark's npm cache (first use only)."""
    if (UDX_CACHE / "node_modules" / "@hyperswarm" / "secret-stream").is_dir() and \
            (UDX_CACHE / "node_modules" / "udx-native").is_dir():
        return
    if shutil.which("npm") is None:
        raise BenchError("the udx row needs Node.js and npm")
    UDX_CACHE.mkdir(parents=True, exist_ok=True)
    if not (UDX_CACHE / "package.json").exists():
        (UDX_CACHE / "package.json").write_text('{"name": "shoal-bench-udx", "private": true}\n')
    done = subprocess.run(["npm", "install", "--no-audit", "--no-fund", *UDX_PACKAGES],
                          cwd=UDX_CACHE, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise BenchError(f"npm install failed: {done.stderr.strip().splitlines()[-1:]}")


class BenchError(Exception):
    """Why the benchmark cannot run (printed as one line)."""


# ====================================================================== the namespace

def _run(*command: str) -> None:
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise BenchError(f"{' '.join(command)}: {done.stderr.strip() or done.returncode}")


@contextlib.contextmanager
def namespace(loss: float) -> Iterator[str]:
    """A network namespace whose loopback has MTU 1500 (and drops ``loss`` percent of
    what arrives on it); removed on exit."""
    if os.geteuid() != 0:
        raise BenchError("the benchmark needs root to create a network namespace")
    name = f"shoal-bench-{os.getpid()}"
    _run("ip", "netns", "add", name)
    try:
        _run("ip", "-n", name, "link", "set", "lo", "mtu", "1500", "up")
        if loss > 0:
            # One dropped packet is one datagram or one TCP segment only without offload.
            _run("ip", "netns", "exec", name, "ethtool", "-K", "lo", "tso", "off", "gso", "off",
                 "gro", "off")
            rules = (
                "add table inet shoal_bench\n"
                "add chain inet shoal_bench input "
                "{ type filter hook input priority 0; policy accept; }\n"
                f"add rule inet shoal_bench input numgen random mod 100 < {round(loss)} drop\n")
            done = subprocess.run(["ip", "netns", "exec", name, "nft", "-f", "-"], input=rules,
                                  capture_output=True, text=True)
            if done.returncode != 0:
                raise BenchError(f"nft: {done.stderr.strip()}")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


# ====================================================================== one measurement

def _read_json(process: subprocess.Popen[str], what: str, deadline: float,
               key: str = "role") -> dict:
    """The next JSON object with ``key`` that ``process`` prints."""
    assert process.stdout is not None
    while True:
        line = process.stdout.readline()
        if not line:
            raise BenchError(f"{what} ended without a result (exit {process.wait()})")
        with contextlib.suppress(ValueError):
            value = json.loads(line)
            if isinstance(value, dict) and key in value:
                return value
        if time.monotonic() > deadline:
            raise BenchError(f"{what} took too long")


def _profiler(row: Row, options: argparse.Namespace, role: str, outdir: Path) -> list[str]:
    if not (options.profile and row.shoal):
        return []
    if options.profiler == "py-spy":
        return ["py-spy", "record", "--nonblocking", "--rate", "200", "--format", "raw",
                "-o", str(outdir / f"{row.name}-{role}.txt"), "--"]
    return []


def measure(row: Row, options: argparse.Namespace, ns: str, workdir: Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(HERE.parent / "src"), *filter(None, [env.get("PYTHONPATH")])])
    if options.loss:
        env["SHOAL_UDP_OFFLOAD"] = "0"
    if row.name == "udx":
        env["NODE_PATH"] = str(UDX_CACHE / "node_modules")
    outdir = Path(options.profile_dir)
    timeout = 60 + options.bytes / 1e6  # 1 MB/s at the least

    def start(role: str) -> subprocess.Popen[str]:
        command = _profiler(row, options, role, outdir) + row.command(role, options, workdir)
        if options.profile and row.shoal and options.profiler == "sampler":
            command += ["--sample", str((outdir / f"{row.name}-{role}.txt").resolve())]
        return subprocess.Popen(["ip", "netns", "exec", ns, *command], env=env, text=True,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    deadline = time.monotonic() + timeout
    receiver = start("recv")
    sender = None
    try:
        _read_json(receiver, "the receiver", deadline, "ready")
        sender = start("send")
        got = _read_json(receiver, "the receiver", deadline)
        sent = _read_json(sender, "the sender", deadline)
        with contextlib.suppress(subprocess.TimeoutExpired):
            sender.wait(timeout=15)
    finally:
        for process in (sender, receiver):
            if process is None:
                continue
            with contextlib.suppress(OSError):
                assert process.stdin is not None
                process.stdin.close()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    if "start" not in sent or "end" not in got:
        raise BenchError(f"{row.name}: no result ({sent}, {got})")
    seconds = got["end"] - sent["start"]
    verified = got["bytes"] == sent["bytes"] == options.bytes and got["sha256"] == sent["sha256"]
    result = {
        "mbytes_per_s": round(options.bytes / seconds / 1e6, 2) if seconds > 0 else None,
        "seconds": round(seconds, 3),
        "verified": verified,
        "sender_peak_rss_mib": round(sent["peak_rss_kib"] / 1024, 1),
        "receiver_peak_rss_mib": round(got["peak_rss_kib"] / 1024, 1),
        # CPU seconds per GiB moved: what a transfer costs, less sensitive than its rate
        # to other work on the machine (the rate also waits for the CPU).
        "sender_cpu_s_per_gib": round(sent["cpu_s"] * (1 << 30) / options.bytes, 2),
        "receiver_cpu_s_per_gib": round(got["cpu_s"] * (1 << 30) / options.bytes, 2),
    }
    if "transfer_cpu_s" in sent and "transfer_cpu_s" in got:
        # The same for the transfer alone (from the sender's first write and the
        # receiver's readiness): start-up costs weigh nothing, even on a short run.
        send_cpu = sent["transfer_cpu_s"] * (1 << 30) / options.bytes
        recv_cpu = got["transfer_cpu_s"] * (1 << 30) / options.bytes
        result["transfer_cpu_s_per_gib"] = {"send": round(send_cpu, 2),
                                            "recv": round(recv_cpu, 2),
                                            "total": round(send_cpu + recv_cpu, 2)}
    if row.shoal:
        result["udp_offload"] = not options.loss and os.environ.get(
            "SHOAL_UDP_OFFLOAD", "1") not in ("0", "off", "no")
        result["sender_io"] = sent.get("io_stats")
        result["receiver_io"] = got.get("io_stats")
        result["sender_stats"] = sent.get("stats")
        result["receiver_stats"] = got.get("stats")
    return result


def summarize_row(runs: list[dict]) -> dict:
    """The run with the median rate, with every run's rate beside it."""
    rates = [run["mbytes_per_s"] or 0.0 for run in runs]
    middle = sorted(runs, key=lambda run: run["mbytes_per_s"] or 0.0)[(len(runs) - 1) // 2]
    summary = {**middle, "mbytes_per_s": round(statistics.median(rates), 2),
               "runs_mbytes_per_s": rates, "verified": all(run["verified"] for run in runs)}
    costs = [run["transfer_cpu_s_per_gib"] for run in runs if "transfer_cpu_s_per_gib" in run]
    if len(costs) == len(runs):
        # The CPU a GiB costs is steadier than the rate: each side's median over the runs.
        summary["transfer_cpu_s_per_gib"] = {
            side: round(statistics.median(cost[side] for cost in costs), 2)
            for side in ("send", "recv", "total")}
        summary["runs_transfer_cpu_s_per_gib"] = [cost["total"] for cost in costs]
    return summary


# ====================================================================== profiles

_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
_CALLS = ((re.compile(r"\b(sendto|sendmsg)\("), "kernel: send"),
          (re.compile(r"\b(recvmsg_into|recvfrom|recvmsg)\("), "kernel: receive"),
          (re.compile(r"\b(encrypt|decrypt|seal|open)(_into)?\("), "AEAD (ChaCha20-Poly1305)"))
"""Lines of Shoal's source whose time is spent in C: a system call or the cipher
(py-spy, without native frames, charges it to the calling line)."""
_SOURCE = HERE.parent / "src"


@functools.cache
def _source_line(file: str, line: int) -> str:
    path = _SOURCE / file if not Path(file).is_absolute() else Path(file)
    try:
        return path.read_text().splitlines()[line - 1]
    except (OSError, IndexError):
        return ""


def _area(path: str, line: int = 0) -> str:
    """Where a sampled frame belongs, for the breakdown."""
    if line and "shoal/" in path:
        text = _source_line(path[path.index("shoal/"):], line)
        for call, area in _CALLS:
            if call.search(text):
                return area
    marks = (("shoal/core/connection", "core: connection"),
             ("shoal/core/services/messages", "core: messages service"),
             ("shoal/core/streams/", "core: streams"),
             ("shoal/core/services/streams", "core: streams"),
             ("shoal/core/endpoint", "core: endpoint"), ("shoal/core/wire", "core: wire"),
             ("shoal/core/recovery", "core: recovery"), ("shoal/core/", "core: other"),
             ("shoal/aio/udp", "aio: udp driver"), ("shoal/aio/driver", "aio: loop driver"),
             ("shoal/aio/node", "aio: node API"), ("asyncio", "event loop"),
             ("uvloop", "event loop"), ("streams.py", "bench (data and hashing)"),
             ("<string>", "dataclass __init__ (frames, events)"))
    for mark, area in marks:
        if mark in path:
            return area
    return "other"


def summarize_py_spy(path: Path, top: int = 15) -> dict:
    """Self time by function and by area from collapsed stacks (py-spy's, or
    ``CpuSampler``'s)."""
    functions: collections.Counter[str] = collections.Counter()
    areas: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        leaf = stack.rsplit(";", 1)[-1]
        match = _FRAME.match(leaf)
        function, file, number = (
            (match["function"], match["file"], int(match["line"] or 0)) if match
            else (leaf, "", 0))
        samples = int(count)
        total += samples
        functions[f"{function} ({Path(file).name})"] += samples
        areas[_area(file, number)] += samples
    return _percentages(functions, areas, total, top)


class CpuSampler:
    """Where py-spy is missing: the process samples its own stack every millisecond of
    CPU time it uses (``SIGPROF``) from the start of the transfer (``started``,
    ``ready``), so that neither start-up nor waiting counts, and writes the samples
    as py-spy's collapsed stacks. Time in C (the cipher, a system call) is charged to
    the line that called it, once the call returns."""

    def __init__(self, path: str, interval: float = 0.001) -> None:
        import signal

        self.path = path
        self.interval = interval
        self.stacks: collections.Counter[str] = collections.Counter()
        signal.signal(signal.SIGPROF, self._sample)

    def start(self) -> None:
        import signal

        signal.setitimer(signal.ITIMER_PROF, self.interval, self.interval)

    def _sample(self, _signum: int, frame: object) -> None:
        names = []
        while frame is not None:
            code = frame.f_code  # type: ignore[attr-defined]
            names.append(f"{code.co_name} ({code.co_filename}:{frame.f_lineno})")  # type: ignore[attr-defined]
            frame = frame.f_back  # type: ignore[attr-defined]
        self.stacks[";".join(reversed(names))] += 1

    def run(self, side: Callable[[argparse.Namespace], None], options: argparse.Namespace,
            ) -> None:
        import signal

        _samplers.append(self)
        try:
            side(options)
        finally:
            signal.setitimer(signal.ITIMER_PROF, 0, 0)
            Path(self.path).write_text("".join(f"{stack} {count}\n"
                                               for stack, count in self.stacks.items()))


def _percentages(functions: collections.Counter, areas: collections.Counter, total: float,
                 top: int) -> dict:
    share = (lambda value: round(100 * value / total, 1)) if total else (lambda value: 0.0)
    return {"by_area_pct": {area: share(value) for area, value in areas.most_common()},
            "top_self_pct": {name: share(value) for name, value in functions.most_common(top)}}


def profiles(options: argparse.Namespace, names: list[str]) -> dict:
    outdir = Path(options.profile_dir)
    found: dict[str, object] = {"tool": options.profiler, "dir": str(outdir)}
    for name in names:
        for role in ("send", "recv"):
            path = outdir / f"{name}-{role}.txt"
            if path.exists():
                found[f"{name}_{role}"] = summarize_py_spy(path)
    return found


# ====================================================================== main

def parse_size(text: str) -> int:
    units = {"": 1, "k": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mib": 1 << 20,
             "g": 1 << 30, "gib": 1 << 30}
    match = re.fullmatch(r"\s*(\d+)\s*([a-zA-Z]*)\s*", text)
    if not match or match[2].lower() not in units:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (say 4MiB, 1GiB, 1000000)")
    return int(match[1]) * units[match[2].lower()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bytes", type=parse_size, default=1 << 30)
    parser.add_argument("--rows", default=",".join(DEFAULT_ROWS),
                        help="comma-separated: " + ", ".join(ROWS))
    parser.add_argument("--loss", type=float, default=0.0, help="percent of packets dropped")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each row (median)")
    parser.add_argument("--message-size", type=parse_size, default=64 << 10)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--profile-dir", default="streams-profile")
    parser.add_argument("--json", action="store_true")
    # One side of one row, in the namespace (started by the benchmark itself).
    parser.add_argument("--role", choices=("send", "recv"), help=argparse.SUPPRESS)
    parser.add_argument("--row", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--peer-port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--cert", help=argparse.SUPPRESS)
    parser.add_argument("--key", help=argparse.SUPPRESS)
    parser.add_argument("--sample", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.role:
        side = getattr(ROWS[options.row], "sender" if options.role == "send" else "receiver")
        if options.sample:
            CpuSampler(options.sample).run(side, options)
        else:
            side(options)
        return 0
    try:
        return run(options, parser)
    except BenchError as exc:
        print(f"streams: {exc}", file=sys.stderr)
        return 2


def run(options: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    names = [name.strip() for name in options.rows.split(",") if name.strip()]
    unknown = [name for name in names if name not in ROWS]
    if unknown:
        parser.error(f"unknown rows: {', '.join(unknown)} (known: {', '.join(ROWS)})")
    if options.bytes < 64 << 10 or options.repeat < 1 or not 0 <= options.loss < 100:
        parser.error("--bytes is at least 64KiB, --repeat at least 1, --loss within 0..99")
    if "udx" in names:
        install_udx()
    if "aioquic" in names:
        try:
            import aioquic  # noqa: F401
        except ImportError:
            raise BenchError(
                "the aioquic row needs aioquic: pip install 'shoal[bench]'") from None
    options.profiler = "py-spy" if shutil.which("py-spy") else "sampler"
    if options.profile:
        Path(options.profile_dir).mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[dict]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory() as tmp, namespace(options.loss) as ns:
        workdir = Path(tmp)
        make_certificate(workdir)
        for _ in range(options.repeat):
            for name in names:  # interleaved, so that a busy minute hits every row alike
                runs[name].append(measure(ROWS[name], options, ns, workdir))
    rows = {name: summarize_row(results) for name, results in runs.items()}
    result: dict[str, object] = {
        "bench": "streams", "bytes": options.bytes, "loss_pct": options.loss,
        "mtu": 1500, "repeat": options.repeat, "message_size": options.message_size,
        "cpus": os.cpu_count(), "rows": rows,
    }
    shoal_row = next((name for name in SHOAL_ROWS if name in rows), None)
    if shoal_row is not None:
        ratios = {}
        for other in ("udx", "aioquic", "tls_tcp"):
            if other in rows and rows[other]["mbytes_per_s"]:
                ratios[f"shoal/{other}"] = round(
                    rows[shoal_row]["mbytes_per_s"] / rows[other]["mbytes_per_s"], 3)
        result["ratios"] = {"row": shoal_row, **ratios}
    if options.profile:
        result["profile"] = profiles(options, [name for name in names if ROWS[name].shoal])
    if options.json:
        print(json.dumps(result, indent=2))
    else:
        for name, row in rows.items():
            print(f"{name:16} {row['mbytes_per_s']:>9} MB/s  verified={row['verified']}  "
                  f"rss send/recv {row['sender_peak_rss_mib']}/{row['receiver_peak_rss_mib']} "
                  f"MiB  cpu s/GiB send/recv {row['sender_cpu_s_per_gib']}/"
                  f"{row['receiver_cpu_s_per_gib']}"
                  + (f"  transfer cpu s/GiB send/recv {cost['send']}/{cost['recv']}"
                     if (cost := row.get("transfer_cpu_s_per_gib")) else ""))
        for name, ratio in result.get("ratios", {}).items():  # type: ignore[union-attr]
            print(f"{name:16} {ratio}")
    return 0 if all(row["verified"] for row in rows.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
