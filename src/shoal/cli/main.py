"""``shoal`` commands: id, introducer, listen, send, perf, share, fetch, group, publish,
subscribe, doctor, and init, run, dev, info for apps.

With ``--json`` every command prints one JSON object per line and per event. Errors are
one line on stderr (or an ``{"event": "error"}`` object with ``--json``) and a non-zero
exit status, never a traceback.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import importlib.util
import json
import math
import os
import shlex
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from shoal import __version__
from shoal.errors import ShoalError, os_error_code
from shoal.net import format_address, local_addresses, parse_address

if TYPE_CHECKING:
    from shoal import Node
    from shoal.identity import Identity

EXIT_ERROR = 1
EXIT_USAGE = 2


class Output:
    """Prints events as JSON lines or as short human-readable lines."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json

    def event(self, name: str, human: str, /, **fields: Any) -> None:
        if self.as_json:
            click.echo(json.dumps({"event": name, **fields}), nl=True)
        else:
            click.secho(human, fg=_EVENT_COLOURS.get(name), color=_colour())
        sys.stdout.flush()

    @contextlib.contextmanager
    def waiting(self, text: str) -> Iterator[None]:
        """A transient line with a spinner and the seconds waited, on a terminal only
        (human output); nothing in JSON mode, in a pipe, or in a standalone bundle
        (which leaves ``rich`` out)."""
        if self.as_json or not sys.stderr.isatty() or \
                importlib.util.find_spec("rich") is None:
            yield
            return
        from rich.console import Console
        from rich.text import Text

        started = time.monotonic()

        class Elapsed:
            def __rich__(self) -> Text:
                return Text(f"{text} ({time.monotonic() - started:.0f} s)")

        console = Console(stderr=True, no_color=bool(os.environ.get("NO_COLOR")))
        with console.status(Elapsed()):
            yield

    def warning(self, message: str, **fields: Any) -> None:
        """Something the user should know that does not stop the command: on stderr for
        humans, an ``{"event": "warning"}`` line in JSON."""
        if self.as_json:
            click.echo(json.dumps({"event": "warning", "message": message, **fields}))
        else:
            click.secho(f"shoal: warning: {message}", err=True, fg="yellow", color=_colour())

    def error(self, code: str, message: str) -> None:
        if self.as_json:
            click.echo(json.dumps({"event": "error", "code": code, "message": message}))
        else:
            click.secho(f"shoal: error: {message} ({code})", err=True, fg="red",
                        color=_colour())


_EVENT_COLOURS = {"ready": "green", "delivered": "green", "perf": "green",
                  "notice": "yellow"}


def _colour() -> bool | None:
    """Colour on a terminal unless ``NO_COLOR`` is set (no-color.org); never in a pipe."""
    if os.environ.get("NO_COLOR"):
        return False
    return None  # click's own test: colour only where the stream is a terminal


def printable(text: str) -> str:
    """``text`` safe for a terminal: control and format characters (escape sequences,
    newlines, bidirectional overrides) are shown as escapes, so a peer's text can neither
    drive the terminal nor pass for a line of output of its own."""
    if text.isprintable():
        return text
    return "".join(
        c if c.isprintable() or c == " " else
        (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")
        for c in text
    )


def _positive_seconds(value: float, option: str) -> float:
    if not math.isfinite(value) or value <= 0:
        raise click.BadParameter("must be a positive number of seconds", param_hint=option)
    return value


def _run(output: Output, body: Callable[[], Awaitable[int | None]], *,
         interrupted: str | Callable[[], str | None] | None = None) -> None:
    """Run an async command body, turning every expected failure into one clear line.

    SIGINT or SIGTERM ends a command that runs until stopped (``interrupted`` None) with
    status 0; one that would end by itself says ``interrupted`` and exits with 128 plus
    the signal's number (130 for Ctrl-C), as shells expect. A callable ``interrupted``
    is asked then: None means the work was done before the signal (status 0)."""
    import asyncio

    received: list[int] = []

    async def runner() -> int | None:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None

        def stop(signum: int) -> None:
            received.append(signum)
            task.cancel()

        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signum, stop, signum)
        try:
            return await body()
        except asyncio.CancelledError:
            if not received:
                received.append(signal.SIGINT)
            return None

    try:
        with contextlib.suppress(ImportError):
            import uvloop

            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        status = asyncio.run(runner())
    except ShoalError as exc:
        output.error(exc.code, exc.message)
        sys.exit(EXIT_ERROR)
    except KeyboardInterrupt:
        received.append(signal.SIGINT)
        status = None
    if received:
        said = interrupted() if callable(interrupted) else interrupted
        if said is not None:
            output.error("EINTR", said)
            sys.exit(128 + received[0])
    sys.exit(status or 0)


def _identity(path: str | None, role: str = "identity") -> Identity:
    """The identity at ``path`` (or the user's default one for ``role``: "identity" for
    their node, "introducer", "publisher"). Creating one is said on stderr, a typo in a
    folder is refused rather than made into a new peer, and a key that other users can
    read is warned about. The node that runs it holds it (two at once are refused)."""
    from shoal import identity as identities

    target = Path(path) if path else identities.default_identity_path(role)
    if path and not target.parent.is_dir():
        raise ShoalError(f"{target.parent}: no such folder for the identity file",
                         code="ENOENT")
    if target.exists():
        identity = identities.Identity.load(target)
        with contextlib.suppress(OSError):
            if target.stat().st_mode & 0o077:
                click.echo(f"shoal: warning: {target} can be read by other users; "
                           f"run: chmod 600 {target}", err=True)
        return identity
    identity = identities.Identity.load_or_create(target)
    click.echo(f"shoal: created {'identity' if role == 'identity' else role + ' key'} "
               f"{identity.peer_id} in {target}", err=True)
    node_key = identities.default_identity_path()
    if role == "publisher" and node_key.exists():
        # Before publisher keys, archives were signed with the node's key: their updates
        # must keep that publisher to replace the installed copies.
        click.echo(f"shoal: note: apps built before were signed with your node key "
                   f"({identities.Identity.load(node_key).peer_id}); to publish their "
                   f"updates under it: shoal build --identity {shlex.quote(str(node_key))}",
                   err=True)
    return identity


def _servers(values: tuple[str, ...], listen: Any) -> list[tuple[str, int]]:
    """Introducers or STUN servers given as HOST:PORT, host names looked up (an IPv6
    address only for a node that listens on IPv6)."""
    from shoal.net import resolve_address

    ipv6 = ":" in parse_address(listen, default_port=0)[0]
    return [resolve_address(value, ipv6=ipv6) for value in values]


_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kib": 1 << 10, "kb": 10**3, "m": 1 << 20,
          "mib": 1 << 20, "mb": 10**6, "g": 1 << 30, "gib": 1 << 30, "gb": 10**9}


def _byte_count(text: str, option: str) -> int:
    """``text`` as a number of bytes: digits and an optional unit (KiB, MiB, GiB, or KB,
    MB, GB; K, M, G are binary)."""
    value = text.strip()
    digits = value.rstrip("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ").strip()
    unit = value[len(digits):].strip().lower()
    try:
        number = float(digits)
    except ValueError:
        number = -1.0
    if unit not in _UNITS or not math.isfinite(number) or number < 0:
        raise click.BadParameter(f"{text!r} is not a byte count (say 64MiB, 1GB, 5000)",
                                 param_hint=option)
    return int(number * _UNITS[unit])


def _check_can_listen(address: tuple[str, int]) -> None:
    """Fail now if the node could not bind ``address``, before anything is created."""
    from shoal.aio.udp import bind_udp

    bind_udp(address).close()


def _common(func: Callable[..., Any]) -> Callable[..., Any]:
    func = click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")(
        func
    )
    func = click.option(
        "--identity", "identity_path", type=click.Path(dir_okay=False),
        help="Identity file (default: the user's own in the user data dir, a separate "
             "one for an introducer and for build; created if missing).",
    )(func)
    return func


def _network_options(func: Callable[..., Any]) -> Callable[..., Any]:
    func = click.option(
        "--introducer", "introducers", multiple=True, metavar="HOST:PORT",
        help="An introducer to connect to (repeatable).",
    )(func)
    func = click.option(
        "--listen", default="0.0.0.0:0", show_default=True, metavar="HOST[:PORT]",
        help="Local address for the node's UDP socket (no port, or 0: any free port).",
    )(func)
    func = click.option(
        "--no-lan", is_flag=True, help="Turn LAN discovery (mDNS) off; SHOAL_NO_LAN=1 does too.",
    )(func)
    return func


def _inspect_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--inspect", is_flag=True,
                        help="Serve a live view of this node on 127.0.0.1 (shoal inspect "
                             "finds it).")(func)


def _lan(no_lan: bool) -> bool | None:
    return False if no_lan else None


@contextlib.asynccontextmanager
async def _started_node(output: Output, identity: Identity, addresses: list[tuple[str, int]],
                        listen: tuple[str, int], no_lan: bool,
                        data_dir: Path | None = None) -> AsyncIterator[Node]:
    """A node on the command's options, its introducers (if any) reached; ``data_dir``:
    where it keeps its groups (the group commands)."""
    from shoal import Node

    async with Node(identity, introducers=addresses, listen=listen,
                    lan_discovery=_lan(no_lan), data_dir=data_dir) as node:
        if addresses:
            with output.waiting(f"reaching {len(addresses)} introducer(s)"):
                await node.wait_for_introducers(timeout=30)
        yield node


def _guard(func: Callable[..., Any]) -> Callable[..., Any]:
    """Report ShoalErrors raised while parsing options as one line."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        output = Output(kwargs.get("as_json", False))
        try:
            return func(*args, **kwargs)
        except ShoalError as exc:
            output.error(exc.code, exc.message)
            sys.exit(EXIT_USAGE if exc.code == "EINVAL" else EXIT_ERROR)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]},
             invoke_without_command=True)
@click.version_option(__version__, prog_name="shoal")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """Shoal: peer-to-peer apps with no servers of their own."""
    if ctx.invoked_subcommand is None:  # bare ``shoal``: the help, as --help prints it
        click.echo(ctx.get_help())


@cli.command("id")
@_common
@_guard
def id_command(identity_path: str | None, as_json: bool) -> None:
    """Print this node's peer id.

    \b
    Examples:
      shoal id
      shoal id --identity alice.key --json
    """
    identity = _identity(identity_path)
    output = Output(as_json)
    output.event("id", identity.peer_id, peer_id=identity.peer_id)


@cli.command(short_help="Run an introducer that peers meet through.")
@_common
@click.option("--listen", required=True, metavar="HOST:PORT", help="Address to serve on.")
@click.option("--alternate", metavar="HOST:PORT",
              help="A second IP and port of this host, for NAT behaviour tests (RFC 5780).")
@click.option("--no-lan", is_flag=True, help="Turn LAN discovery (mDNS) off.")
@_inspect_option
@_guard
def introducer(identity_path: str | None, as_json: bool, listen: str, alternate: str | None,
               no_lan: bool, inspect: bool) -> None:
    """Run an introducer: a reachable node that introduces peers, relays for them when no
    direct path exists, and answers STUN.

    \b
    Examples:
      shoal introducer --listen 0.0.0.0:7000
      shoal introducer --listen 203.0.113.2:7000 --alternate 203.0.113.3:7001
    """
    from shoal import Node

    output = Output(as_json)
    listen_address = parse_address(listen)
    alternate_address = parse_address(alternate) if alternate else None
    _check_can_listen(listen_address)  # before an identity file is made
    identity = _identity(identity_path, "introducer")

    async def body() -> int:
        from shoal.pairing import PairingRelay

        async with Node(identity, listen=listen_address, introducer=True,
                        alternate=alternate_address, lan_discovery=_lan(no_lan)) as node:
            PairingRelay(node).start()  # ends with the node
            bound = format_address(node.address)
            extra = {"alternate": format_address(alternate_address)} if alternate_address else {}
            output.event("ready", f"introducer {node.peer_id} listening on {bound}",
                         peer_id=node.peer_id, listen=bound, **extra)
            async with _inspector(node, output, inspect):
                await _print_peer_events(node, output)
        return 0

    _run(output, body)


@contextlib.asynccontextmanager
async def _inspector(node: Any, output: Output, wanted: bool) -> Any:
    """The node's inspector for the block, when ``wanted``; its link is printed."""
    if not wanted:
        yield None
        return
    from shoal.inspector import Inspector

    async with Inspector(node) as inspector:
        output.event("inspect", f"inspector: {inspector.url}", url=inspector.url)
        yield inspector


@cli.command(short_help="Open the live view of a running node.")
@click.option("--no-open", is_flag=True, help="Print the links; open no browser.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@_guard
def inspect(no_open: bool, as_json: bool) -> None:
    """Open the inspector of this user's running nodes (started with --inspect) in the
    browser: id, addresses, NAT, peers with their paths, RTT and bytes, channels, and
    traffic over time.

    \b
    Examples:
      shoal listen --inspect &
      shoal inspect
      shoal inspect --no-open --json
    """
    from shoal.inspector import running_inspectors

    output = Output(as_json)
    found = running_inspectors()
    if not found:
        raise ShoalError("no running node has its inspector open; start one with --inspect "
                         "(shoal listen --inspect)", code="ENOENT")
    for entry in found:
        output.event("inspector", f"{entry['peer_id']} (pid {entry['pid']}): "
                     f"{entry['url']}", **entry)
    if not no_open and not as_json:
        import webbrowser

        webbrowser.open(found[0]["url"])


async def _print_peer_events(node: Any, output: Output) -> None:
    import shoal.core.events as ev

    async for event in node.subscribe():
        if isinstance(event, ev.PeerConnected):
            where = _where(event.address)
            output.event("peer_connected", f"connected {event.peer_id} at {where} ({event.path})",
                         peer_id=event.peer_id, address=where, path=event.path)
        elif isinstance(event, ev.PeerDisconnected):
            output.event("peer_disconnected", f"disconnected {event.peer_id}: {event.reason}",
                         peer_id=event.peer_id, reason=event.reason)


async def _print_nat(node: Any, output: Output) -> None:
    """Print the NAT kind once the automatic check has finished."""
    with contextlib.suppress(ShoalError):
        report = await node.wait_for_nat(timeout=30)
        output.event("nat", f"NAT: mapping {report.mapping}, filtering {report.filtering}",
                     public=[format_address(a) for a in report.public],
                     mapping=report.mapping, filtering=report.filtering)


def _warn_silent_introducer(output: Output, address: str, state: str) -> None:
    output.warning(f"introducer {address} has not answered; peers that only it could "
                   "introduce cannot be reached", introducer=address, state=state)


async def _watch_introducers(node: Any, output: Output) -> None:
    """While the node runs, warn once about each introducer that stops answering (again
    if it answers and stops again)."""
    import asyncio

    warned: set[str] = set()
    while True:
        await asyncio.sleep(1)
        for address, state in node.introducer_states().items():
            if state == "connected":
                warned.discard(address)
            elif state == "unreachable" and address not in warned:
                warned.add(address)
                _warn_silent_introducer(output, address, state)


def _where(address: Any) -> str:
    """An address for humans; a relayed path names the relaying node."""
    from shoal.core.wire import RelayPath

    if isinstance(address, RelayPath):
        return f"relay:{address.relay.hex()[:16]}"
    return format_address(address)


@cli.command(short_help="Print every direct message this node receives.")
@_common
@_network_options
@_inspect_option
@click.option("--save", "save_dir", type=click.Path(file_okay=False, path_type=Path),
              metavar="DIR", help="Also write each message to a file of its own in DIR.")
@click.option("--no-perf", is_flag=True, help="Answer no shoal perf runs.")
@click.option("--perf-limit", default="1GiB", show_default=True, metavar="BYTES",
              help="The most bytes the perf runs of one peer may move at once.")
@_guard
def listen(identity_path: str | None, as_json: bool, introducers: tuple[str, ...],
           listen: str, no_lan: bool, inspect: bool, save_dir: Path | None, no_perf: bool,
           perf_limit: str) -> None:
    """Print every direct message this node receives. With --json, a message that is
    not UTF-8 text comes base64-encoded, with "encoding": "base64"; --save keeps every
    message's bytes as they arrived. Unless --no-perf, it also answers shoal perf runs
    (peers' runs in progress move at most --perf-limit bytes each, either way).

    \b
    Examples:
      shoal listen --introducer 203.0.113.2:7000
      shoal listen --introducer 203.0.113.2:7000 --identity alice.key --json
      shoal listen --save received
    """
    import asyncio

    from shoal.aio.perf import serve_perf

    output = Output(as_json)
    limit = _byte_count(perf_limit, "--perf-limit")
    listen_address = parse_address(listen, default_port=0)
    addresses = _servers(introducers, listen_address)
    if save_dir is not None:
        _make_folder(save_dir)
    _check_can_listen(listen_address)  # before an identity file is made
    identity = _identity(identity_path)

    async def body() -> int:
        async with _started_node(output, identity, addresses, listen_address,
                                 no_lan) as node:
            output.event("ready", f"listening as {node.peer_id}", peer_id=node.peer_id,
                         listen=format_address(node.address))
            if addresses:
                asyncio.get_running_loop().create_task(_print_nat(node, output))
                asyncio.get_running_loop().create_task(_watch_introducers(node, output))
            if not no_perf:
                asyncio.get_running_loop().create_task(serve_perf(node, limit=limit))
            async with _inspector(node, output, inspect):
                async for message in node.messages():
                    _print_message(output, message, save_dir)
        return 0

    _run(output, body)


def message_fields(data: bytes) -> dict[str, Any]:
    """JSON fields that carry ``data`` losslessly: ``data`` is the text itself when the
    bytes are UTF-8, else their base64 with ``"encoding": "base64"``."""
    try:
        return {"data": data.decode("utf-8")}
    except UnicodeDecodeError:
        return {"data": base64.b64encode(data).decode("ascii"), "encoding": "base64"}


def _print_message(output: Output, message: Any, save_dir: Path | None) -> None:
    """One received message on the output, and in a new file of ``save_dir`` if given."""
    fields = message_fields(message.data)
    if save_dir is not None:
        saved = _save_message(save_dir, message.sender, message.data,
                              "bin" if "encoding" in fields else "txt")
        fields["saved"] = str(saved)
    shown = printable(message.data.decode("utf-8", "replace"))
    output.event("message", f"{message.sender} ({message.path}): {shown}",
                 **{"from": message.sender}, **fields, bytes=len(message.data),
                 path=message.path)


def _save_message(folder: Path, sender: str, data: bytes, suffix: str) -> Path:
    """Write ``data`` to the next free ``NUMBER-SENDER.SUFFIX`` in ``folder``; never
    overwrites a file."""
    number = sum(1 for _ in folder.iterdir()) + 1
    while True:
        target = folder / f"{number:06d}-{sender[:16]}.{suffix}"
        try:
            with target.open("xb") as handle:
                handle.write(data)
            return target
        except FileExistsError:
            number += 1
        except OSError as exc:
            raise ShoalError(f"{target}: cannot write ({exc.strerror})",
                             code=os_error_code(exc)) from exc


@cli.command(short_help="Send a message to a peer and wait for its ack.")
@_common
@_network_options
@click.option("--to", "to", required=True, metavar="PEER_ID", help="The receiver's peer id.")
@click.option("--timeout", default=30.0, show_default=True, type=float,
              help="Seconds to wait for the acknowledgement.")
@click.option("--file", "file", type=click.File("rb"), metavar="PATH",
              help="Send the bytes of this file instead of TEXT.")
@click.argument("text", required=False)
@_guard
def send(identity_path: str | None, as_json: bool, introducers: tuple[str, ...], listen: str,
         no_lan: bool, to: str, timeout: float, file: Any, text: str | None) -> None:
    """Send TEXT (or stdin with -, or --file) to a peer and wait until it acknowledges.

    A message is at most 1 MiB.

    \b
    Examples:
      shoal send --introducer 203.0.113.2:7000 --to PEER_ID "hello"
      echo hello | shoal send --introducer 203.0.113.2:7000 --to PEER_ID -
      shoal send --introducer 203.0.113.2:7000 --to PEER_ID --file notes.txt
    """
    from shoal import Node
    from shoal.core.config import CoreConfig
    from shoal.identity import peer_id_to_bytes

    output = Output(as_json)
    peer_id_to_bytes(to)
    listen_address = parse_address(listen, default_port=0)
    addresses = _servers(introducers, listen_address)
    _positive_seconds(timeout, "--timeout")
    limit = CoreConfig().max_message_size
    if (file is None) == (text is None):
        raise click.UsageError("give either TEXT (- for stdin) or --file")
    if file is not None:
        data = file.read(limit + 1)
    elif text == "-":
        data = sys.stdin.buffer.read(limit + 1)
    else:
        data = os.fsencode(text)  # the argument's own bytes, whatever their encoding
    if len(data) > limit:
        raise click.BadParameter(f"a message is at most {limit} bytes (1 MiB)",
                                 param_hint="--file" if file is not None else "TEXT")
    _check_can_listen(listen_address)  # before an identity file is made
    identity = _identity(identity_path)

    async def body() -> int:
        started = time.monotonic()
        async with Node(identity, introducers=addresses, listen=listen_address,
                        lan_discovery=_lan(no_lan)) as node:
            with output.waiting(f"sending to {to} and waiting for its acknowledgement"):
                delivery = await node.send(to, data, timeout=timeout)
            ms = round((time.monotonic() - started) * 1000, 1)
            output.event("delivered", f"delivered to {to} via {delivery.path} in {ms} ms",
                         peer_id=to, path=delivery.path, ms=ms)
            for address, state in node.introducer_states().items():
                if state != "connected":  # the message found its way without it
                    _warn_silent_introducer(output, address, state)
        return 0

    _run(output, body, interrupted="interrupted before the peer acknowledged the message: "
                                   "it may not have arrived")


@cli.command(short_help="Measure throughput to a peer that runs shoal listen.")
@_common
@_network_options
@click.option("--to", "to", required=True, metavar="PEER",
              help="The listener: HOST:PORT, or its peer id (found through --introducer).")
@click.option("--bytes", "size_text", default="32MiB", show_default=True, metavar="N",
              help="Bytes to move (KiB, MiB, GiB, KB, MB, GB may follow).")
@click.option("--streams", default=1, show_default=True, type=click.IntRange(1, 64),
              help="Streams to move them over at once.")
@click.option("--reverse", is_flag=True, help="The listener sends and this side receives.")
@click.option("--timeout", default=10.0, show_default=True, type=float,
              help="Seconds to wait for the connection.")
@_guard
def perf(identity_path: str | None, as_json: bool, introducers: tuple[str, ...], listen: str,
         no_lan: bool, to: str, size_text: str, streams: int, reverse: bool,
         timeout: float) -> None:
    """Move N bytes to the peer PEER (from it with --reverse) over streams, as iperf3
    does, and print the rate, the round-trip time and the path. The other side runs
    shoal listen, which answers runs unless started with --no-perf.

    \b
    Examples:
      shoal perf --to 192.0.2.7:7001
      shoal perf --to 192.0.2.7:7001 --bytes 1GiB --streams 4 --reverse --json
      shoal perf --introducer 203.0.113.2:7000 --to PEER_ID
    """
    from shoal import Identity
    from shoal.aio.perf import run_perf
    from shoal.cli.transfer import size_text as human_size
    from shoal.identity import peer_id_to_bytes

    output = Output(as_json)
    size = _byte_count(size_text, "--bytes")
    _positive_seconds(timeout, "--timeout")
    peer_id: str | None = None
    address: tuple[str, int] | None = None
    if len(to) == 64 and all(c in "0123456789abcdefABCDEF" for c in to):
        peer_id = peer_id_to_bytes(to).hex()
    else:
        address = parse_address(to)
    listen_address = parse_address(listen, default_port=0)
    addresses = _servers(introducers, listen_address)
    if peer_id is not None and not addresses:
        raise ShoalError("a peer id is reached through an introducer: give one with "
                         "--introducer HOST:PORT, or give the listener's HOST:PORT",
                         code="EINVAL")
    _check_can_listen(listen_address)
    # Any key will do: the user's own may be listening on this machine meanwhile.
    identity = _identity(identity_path) if identity_path else Identity.generate()

    async def body() -> int:
        async with _started_node(output, identity, addresses, listen_address,
                                 no_lan) as node:
            with output.waiting(f"connecting to {to}"):
                if address is not None:
                    other = await node.connect(address, timeout=timeout)
                else:
                    assert peer_id is not None
                    other = peer_id
                    await node.reach(other, timeout=timeout)
            way = "from" if reverse else "to"
            with output.waiting(f"moving {human_size(size)} {way} {other[:16]}"):
                result = await run_perf(node, other, size, streams=streams,
                                        reverse=reverse)
            rate = result.mbytes_per_s
            rtt = "?" if result.rtt_ms is None else f"{result.rtt_ms:.2f} ms"
            idle = "?" if result.idle_rtt_ms is None else f"{result.idle_rtt_ms:.2f} ms"
            output.event(
                "perf",
                f"{'received' if reverse else 'sent'} {human_size(result.bytes)} {way} "
                f"{other[:16]} in {result.seconds:.2f} s: {rate:.1f} MB/s "
                f"({rate * 8:.0f} Mbit/s), {streams} stream(s), {result.path} path, "
                f"RTT {idle} idle, {rtt} loaded",
                bytes=result.bytes, seconds=round(result.seconds, 4),
                mbytes_per_s=round(rate, 2),
                rtt_ms=None if result.rtt_ms is None else round(result.rtt_ms, 3),
                idle_rtt_ms=None if result.idle_rtt_ms is None else round(
                    result.idle_rtt_ms, 3),
                path=result.path, streams=streams, reverse=reverse, peer_id=other)
        return 0

    _run(output, body, interrupted="interrupted before the run finished")


@cli.command(short_help="Swap verified peer ids with someone by a short code.")
@_common
@_network_options
@click.argument("code", required=False)
@click.option("--timeout", default=600.0, show_default=True, type=float,
              help="Seconds to wait for the other side.")
@_guard
def pair(identity_path: str | None, as_json: bool, introducers: tuple[str, ...], listen: str,
         no_lan: bool, code: str | None, timeout: float) -> None:
    """Pair with someone: without CODE, print a code (and its QR code) to tell them;
    with the CODE they told you, join them. Both sides then learn each other's peer id,
    verified: a PAKE (SPAKE2) over the introducer proves that both know the code, so
    neither the introducer nor someone guessing codes can put itself in between. A code
    works once; a wrong one fails cleanly.

    \b
    Examples:
      shoal pair --introducer 203.0.113.2:7000
      shoal pair 7-amber-otter --introducer 203.0.113.2:7000
    """
    from shoal import Node
    from shoal.pairing import pair as pair_with
    from shoal.pairing import parse_code

    output = Output(as_json)
    if code is not None:
        parse_code(code)
    _positive_seconds(timeout, "--timeout")
    listen_address = parse_address(listen, default_port=0)
    addresses = _servers(introducers, listen_address)
    if not addresses:
        raise ShoalError("pairing goes through an introducer: give one with --introducer "
                         "HOST:PORT", code="EINVAL")
    _check_can_listen(listen_address)  # before an identity file is made
    identity = _identity(identity_path)

    def show(made: str) -> None:
        output.event("code", f"pairing code: {made}\non the other side, run: shoal pair "
                     f"{made} --introducer {' --introducer '.join(introducers)}",
                     code=made)
        if not as_json and sys.stdout.isatty():
            import segno

            segno.make(made, error="m").terminal(compact=True)

    async def body() -> int:
        async with Node(identity, introducers=addresses, listen=listen_address,
                        lan_discovery=_lan(no_lan)) as node:
            with output.waiting(f"reaching {len(addresses)} introducer(s)"):
                await node.wait_for_introducers(timeout=30)
            with output.waiting("waiting for the other side" if code is None else "pairing"):
                other = await pair_with(node, code, timeout=timeout, on_code=show)
            output.event("paired", f"paired with {other}", peer_id=other, me=node.peer_id)
        return 0

    _run(output, body, interrupted="interrupted before the pairing finished")


@cli.command(short_help="Check this network: UDP, NAT kind, reachability.")
@_common
@click.option("--introducer", "introducers", multiple=True, metavar="HOST:PORT",
              help="An introducer to ask (repeatable).")
@click.option("--stun", "stun_servers", multiple=True, metavar="HOST:PORT",
              help="A STUN server to ask (repeatable).")
@click.option("--listen", default="0.0.0.0:0", show_default=True, metavar="HOST[:PORT]",
              help="The local address to check from (port optional).")
@click.option("--timeout", default=10.0, show_default=True, type=float,
              help="Seconds to wait for the servers' answers.")
@click.option("--no-lan", is_flag=True, help="Do not look for Shoal peers on the LAN.")
@_guard
def doctor(identity_path: str | None, as_json: bool, introducers: tuple[str, ...],
           stun_servers: tuple[str, ...], listen: str, timeout: float, no_lan: bool) -> None:
    """Check this network: interfaces, IPv6, UDP, Shoal peers on the LAN and, with a
    server to ask, the public address, NAT mapping and filtering, hairpinning and what
    they mean.

    \b
    Examples:
      shoal doctor
      shoal doctor --introducer 203.0.113.2:7000
      shoal doctor --stun stun.example.net:3478 --json
    """
    from shoal import Identity, Node
    from shoal.aio.node import lan_discovery_default
    from shoal.cli import checks

    output = Output(as_json)
    _positive_seconds(timeout, "--timeout")
    listen_address = parse_address(listen, default_port=0)
    intro_addresses = _servers(introducers, listen_address)
    stun_addresses = _servers(stun_servers, listen_address)
    _check_can_listen(listen_address)  # before an identity file is made
    # Any key will do for a check: the user's own may be in use by a running node.
    identity = _identity(identity_path) if identity_path else Identity.generate()
    kinds = {a: "introducer" for a in intro_addresses} | {a: "stun" for a in stun_addresses}
    found = checks.interfaces()
    machine = {"interfaces": found, "ipv6": checks.ipv6_report(found),
               "udp_local": checks.udp_echo("127.0.0.1")}

    async def body() -> int:
        async with Node(identity, listen=listen_address, lan_discovery=False) as node:
            local = [format_address(a) for a in local_addresses(node.address)]
            lan = None
            if not no_lan and lan_discovery_default():
                with output.waiting("looking for Shoal peers on the LAN"):
                    lan = await _lan_peers(node, LAN_LOOK)
            machine["lan_peers"] = lan
            if not kinds:
                return _doctor_without_servers(output, node.peer_id, local, machine)
            nat = await node.detect_nat(list(kinds), timeout=timeout)
            hairpin = await _hairpin(node, nat) if nat.udp else None
        servers = [
            {
                "server": format_address(result.server),
                "kind": kinds.get(result.server, "stun"),
                "public": format_address(result.mapped) if result.mapped else None,
                "rtt_ms": round(result.rtt * 1000, 2) if result.rtt is not None else None,
            }
            for result in nat.servers
        ]
        report = {
            "peer_id": node.peer_id,
            "local": local,
            "public": [format_address(a) for a in nat.public],
            "udp": nat.udp,
            "nat": not nat.nat.public if nat.udp else None,
            "mapping": nat.mapping,
            "filtering": nat.filtering,
            "mapping_varies": nat.nat.varies or nat.nat.hard,
            "port_preserving": nat.port_preserving,
            "port_delta": nat.port_delta,
            "hairpin": hairpin,
            "reachability": nat.summary(),
            "unknown_because": nat.unknowns(),
            "servers": servers,
            **machine,
        }
        if as_json:
            click.echo(json.dumps(report))
            return 0 if nat.udp else EXIT_ERROR
        click.echo(f"peer id:    {report['peer_id']}")
        _print_machine(machine)
        click.echo(f"local:      {', '.join(local)}")
        click.echo(f"public:     {', '.join(report['public']) or '-'}")
        click.echo(f"UDP:        {'works' if nat.udp else 'no answer'}")
        why = nat.unknowns()
        for name in ("mapping", "filtering"):
            value = getattr(nat, name)
            reason = f" ({why[name]})" if name in why else ""
            click.echo(f"{name + ':':<11} {value}{reason}")
        click.echo(f"hairpin:    {_hairpin_text(hairpin)}")
        for server in servers:
            answer = (f"sees us at {server['public']} ({server['rtt_ms']} ms)"
                      if server["public"] else "no answer")
            click.echo(f"{server['kind']:<10}  {server['server']}: {answer}")
        click.echo(f"meaning:    {nat.summary()}")
        return 0 if nat.udp else EXIT_ERROR

    _run(output, body, interrupted="interrupted before the check finished")


LAN_LOOK = 2.0
"""Seconds ``doctor`` listens for Shoal peers announced on the LAN (mDNS)."""


async def _lan_peers(node: Any, seconds: float) -> int | str:
    """How many Shoal peers announce themselves on the LAN within ``seconds`` (mDNS), or
    why none can be heard."""
    import asyncio

    from shoal.aio.lan import LanDiscovery

    seen: set[str] = set()
    lan = LanDiscovery(node.peer_id, node.address[1], lambda peer, _addresses: seen.add(peer))
    try:
        await lan.start()
        await asyncio.sleep(seconds)
    except Exception as exc:  # no multicast here: say why rather than fail the check
        return f"cannot look: {exc}"
    finally:
        with contextlib.suppress(Exception):
            await lan.close()
    seen.discard(node.peer_id)
    return len(seen)


async def _hairpin(node: Any, nat: Any) -> bool | None:
    """Whether a packet to our own public address comes back to us through the NAT
    (hairpinning, which lets two nodes behind this NAT meet by public addresses); None
    when there is no NAT in between or no public address is known."""
    if nat.nat.public or not nat.public:
        return None
    try:
        result = await node.stun(nat.public[0], timeout=2)
    except (TimeoutError, ShoalError):
        return False
    return result.mapped is not None


def _hairpin_text(hairpin: bool | None) -> str:
    return {True: "yes", False: "no (nodes behind this NAT meet by their local addresses)",
            None: "- (no NAT in between)"}[hairpin]


def _print_machine(machine: dict[str, Any]) -> None:
    """What ``doctor`` found on this machine alone, for humans."""
    names = "; ".join(f"{i['name']} {', '.join(i['addresses'])}" for i in machine["interfaces"])
    click.echo(f"interfaces: {names or 'none up (loopback only)'}")
    ipv6 = machine["ipv6"]
    click.echo("IPv6:       " + (f"yes ({', '.join(ipv6['global_addresses'])})"
                                 if ipv6["global_addresses"] else
                                 "no global address" + ("" if ipv6["udp"] else
                                                        ", no IPv6 UDP")))
    click.echo(f"UDP here:   {'works' if machine['udp_local'] else 'a socket cannot reach itself'}")
    lan = machine["lan_peers"]
    click.echo("LAN peers:  " + ("not looked for (--no-lan or SHOAL_NO_LAN)" if lan is None
                                 else f"{lan} seen in {LAN_LOOK:g} s (mDNS)"
                                 if isinstance(lan, int) else lan))
    click.echo("port map:   none asked for (Shoal punches holes and relays instead of "
               "UPnP or NAT-PMP)")


@cli.command(short_help="Share a file: print its ticket and serve it until stopped.")
@_common
@_network_options
@click.argument("file", type=click.Path(path_type=Path))
@_guard
def share(identity_path: str | None, as_json: bool, introducers: tuple[str, ...], listen: str,
          no_lan: bool, file: Path) -> None:
    """Hash FILE, print a ticket for it, and serve it to whoever fetches it until stopped
    (Ctrl-C). Anyone with the ticket runs: shoal fetch TICKET. Share the same file from
    several machines and a fetch takes pieces from all of them at once.

    \b
    Examples:
      shoal share video.mkv
      shoal share video.mkv --introducer 203.0.113.2:7000 --json
    """
    import asyncio

    from shoal.cli.transfer import Meter, size_text

    output = Output(as_json)
    listen_address = parse_address(listen, default_port=0)
    addresses = _servers(introducers, listen_address)
    if not file.is_file():
        reason = "is a folder" if file.is_dir() else "no such file"
        raise ShoalError(f"{file}: cannot read ({reason})",
                         code="EISDIR" if file.is_dir() else "ENOENT")
    _check_can_listen(listen_address)  # before an identity file is made
    identity = _identity(identity_path)

    async def body() -> int:
        async with _started_node(output, identity, addresses, listen_address,
                                 no_lan) as node:
            with output.waiting(f"hashing {file}"):
                ticket = await node.share(file)
            output.event("sharing", f"sharing {file} ({size_text(ticket.size)}); fetch it "
                         f"with:\nshoal fetch {ticket}", ticket=str(ticket), path=str(file),
                         bytes=ticket.size, root=ticket.root.hex(), peer_id=node.peer_id)
            meter = Meter(as_json, "served", None) if not as_json else None
            try:
                while True:
                    await asyncio.sleep(0.5)
                    if meter is not None:
                        shared = node.files()
                        meter.update(sum(f.served_bytes for f in shared),
                                     len(set().union(*(f.peers for f in shared))))
            finally:
                if meter is not None:
                    meter.close()
                served = node.files()
                output.event("stopped", "stopped sharing",
                             served_bytes=sum(f.served_bytes for f in served),
                             served_pieces=sum(f.served for f in served))

    _run(output, body)


@cli.command(short_help="Fetch a shared file by its ticket, from every peer that has it.")
@_common
@_network_options
@click.argument("ticket")
@click.option("-o", "--output", "out", type=click.Path(path_type=Path), metavar="PATH",
              help="Where to write it (a folder: the file's own name inside it).")
@_guard
def fetch(identity_path: str | None, as_json: bool, introducers: tuple[str, ...], listen: str,
          no_lan: bool, ticket: str, out: Path | None) -> None:
    """Fetch the file of TICKET (from shoal share) from every peer that has it at once,
    each piece checked against the ticket's BLAKE3 root as it arrives. Until it is whole
    the file is PATH.part; run the same command again to resume an interrupted fetch.

    \b
    Examples:
      shoal fetch blobaes2kp...
      shoal fetch blobaes2kp... -o downloads/ --json
    """
    from shoal import Identity, Ticket
    from shoal.cli.transfer import Meter, output_path, size_text

    output = Output(as_json)
    parsed = Ticket.parse(ticket)
    target = output_path(out, parsed.name, parsed.root)
    if target.exists():
        raise ShoalError(f"{target}: exists already", code="EEXIST")
    if not target.parent.is_dir():
        raise ShoalError(f"{target.parent}: no such folder", code="ENOENT")
    listen_address = parse_address(listen, default_port=0)
    addresses = _servers(introducers, listen_address)
    _check_can_listen(listen_address)
    # Any key will do to fetch: the user's own may be serving files meanwhile.
    identity = _identity(identity_path) if identity_path else Identity.generate()

    async def body() -> int:
        async with _started_node(output, identity, addresses, listen_address,
                                 no_lan) as node:
            meter = Meter(as_json, target.name, parsed.size)
            try:
                result = await node.fetch(parsed, target, progress=lambda p: meter.update(
                    p.bytes, p.peers, corrupt=p.corrupt))
            finally:
                meter.close()
            rate = result.fetched_bytes / result.seconds / 1e6 if result.seconds > 0 else 0.0
            dropped = {peer: info["reason"] for peer, info in result.providers.items()
                       if info["state"] == "dropped"}
            for peer, reason in dropped.items():
                output.warning(f"provider {peer} was dropped: {reason}", peer_id=peer)
            output.event("fetched", f"fetched {target} ({size_text(parsed.size)}, "
                         f"{rate:.1f} MB/s, {len(result.providers)} provider(s))",
                         path=str(target), bytes=parsed.size, root=parsed.root.hex(),
                         seconds=round(result.seconds, 3), mbytes_per_s=round(rate, 2),
                         fetched_pieces=result.fetched, resumed_pieces=result.resumed,
                         providers=result.providers)
            done.append(target)
        return 0

    # A signal while the node closes, after the file got its name, interrupts nothing.
    done: list[Path] = []
    _run(output, body, interrupted=lambda: None if done else (
        f"interrupted: what was fetched is kept in {target}.part; run the same command "
        "to resume"))


def _data_dir_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--data-dir", type=click.Path(file_okay=False, path_type=Path), metavar="DIR",
        help="Where the node keeps its groups and their posts (default: beside its "
             "identity file, e.g. alice.groups for alice.key).",
    )(func)


def _run_group(output: Output, identity_path: str | None, introducers: tuple[str, ...],
               listen: str, no_lan: bool, data_dir: Path | None,
               work: Callable[[Node], Awaitable[None]], *,
               interrupted: str | None = None) -> None:
    """Run a group command's ``work`` on its node, the options checked before anything
    is created."""
    from shoal.cli.groups import node_data_dir

    listen_address = parse_address(listen, default_port=0)
    addresses = _servers(introducers, listen_address)
    _check_can_listen(listen_address)  # before an identity file or a data folder is made
    folder = node_data_dir(data_dir)
    identity = _identity(identity_path)

    async def body() -> int:
        async with _started_node(output, identity, addresses, listen_address, no_lan,
                                 folder) as node:
            await work(node)
        return 0

    _run(output, body, interrupted=interrupted)


@cli.group("group", short_help="Create, join and list groups: posts shared among members.")
def group_commands() -> None:
    """A group is a set of members who share posts; anyone with its invite can join, read
    and post. Posts reach members who were offline when they come back.

    \b
    Examples:
      shoal group create team
      shoal group join shoal-group:AQ...
      shoal group invite team
      shoal group list
    """


@group_commands.command("create", short_help="Create a group; print its invite.")
@_common
@_network_options
@_data_dir_option
@click.argument("name")
@_guard
def group_create(identity_path: str | None, as_json: bool, introducers: tuple[str, ...],
                 listen: str, no_lan: bool, data_dir: Path | None, name: str) -> None:
    """Create a group called NAME, this node its admin, and print its invite: whoever
    holds the invite can join, read and post, so give it as you would a key.

    \b
    Examples:
      shoal group create team
      shoal group create team --introducer 203.0.113.2:7000 --json
    """
    output = Output(as_json)
    if not name.strip() or len(name.encode()) > 255:
        raise ShoalError("a group name is 1 to 255 bytes of text", code="EINVAL")

    async def work(node: Node) -> None:
        group = await node.create_group(name)
        invite = group.invite()
        output.event("created", f"created group {printable(group.name)} ({group.id[:12]}); "
                     f"others join with:\nshoal group join {invite}", id=group.id,
                     name=group.name, invite=invite, peer_id=node.peer_id)

    _run_group(output, identity_path, introducers, listen, no_lan, data_dir, work)


@group_commands.command("join", short_help="Join a group by its invite.")
@_common
@_network_options
@_data_dir_option
@click.argument("invite")
@_guard
def group_join(identity_path: str | None, as_json: bool, introducers: tuple[str, ...],
               listen: str, no_lan: bool, data_dir: Path | None, invite: str) -> None:
    """Join the group of INVITE (from shoal group create); its posts then come with
    shoal subscribe.

    \b
    Examples:
      shoal group join shoal-group:AQ...
    """
    from shoal.core.groups.posts import Invite

    output = Output(as_json)
    Invite.decode(invite)  # a damaged invite is one line, before anything is created

    async def work(node: Node) -> None:
        group = await node.join(invite)
        shown = printable(group.name)
        output.event("joined", f"joined group {shown} ({group.id[:12]}); read it with:\n"
                     f"shoal subscribe {shlex.quote(group.name or group.id)}",
                     id=group.id, name=group.name, peer_id=node.peer_id)

    _run_group(output, identity_path, introducers, listen, no_lan, data_dir, work)


@group_commands.command("invite", short_help="Print a group's invite.")
@_common
@_network_options
@_data_dir_option
@click.argument("group")
@_guard
def group_invite(identity_path: str | None, as_json: bool, introducers: tuple[str, ...],
                 listen: str, no_lan: bool, data_dir: Path | None, group: str) -> None:
    """Print the invite of GROUP (its name or the start of its id), alone on its line:
    it says where to find this node, so give the --listen this node runs with.

    \b
    Examples:
      shoal group invite team --listen 0.0.0.0:7100
      shoal group join "$(shoal group invite team)" --identity bob.key --data-dir bob
    """
    from shoal.cli.groups import find_group

    output = Output(as_json)

    async def work(node: Node) -> None:
        chosen = find_group(node.groups(), group)
        invite = chosen.invite()
        output.event("invite", invite, id=chosen.id, name=chosen.name, invite=invite)

    _run_group(output, identity_path, introducers, listen, no_lan, data_dir, work)


@group_commands.command("list", short_help="List the groups this node is in.")
@_common
@_data_dir_option
@_guard
def group_list(identity_path: str | None, as_json: bool, data_dir: Path | None) -> None:
    """List the groups this node is in, with their members.

    \b
    Examples:
      shoal group list
      shoal group list --json
    """
    output = Output(as_json)

    async def work(node: Node) -> None:
        groups = node.groups()
        if not groups and not as_json:
            click.echo("no groups yet: shoal group create NAME, or shoal group join INVITE")
        for group in groups:
            members = group.members()
            output.event("group", f"{group.id[:12]}  {printable(group.name)}  "
                         f"{len(members)} member(s)" + ("  (admin)" if group.is_admin
                                                        else ""),
                         id=group.id, name=group.name, admin=group.is_admin,
                         members=[{"peer_id": m.peer_id, "name": m.name, "admin": m.admin}
                                  for m in members])

    _run_group(output, identity_path, (), "127.0.0.1:0", True, data_dir, work)


@cli.command(short_help="Post a message to a group; wait until a member has it.")
@_common
@_network_options
@_data_dir_option
@click.option("--topic", default="", metavar="TOPIC", help="The post's topic (default: none).")
@click.option("--timeout", default=30.0, show_default=True, type=float,
              help="Seconds to wait for another member to hold the post.")
@click.argument("group")
@click.argument("message")
@_guard
def publish(identity_path: str | None, as_json: bool, introducers: tuple[str, ...],
            listen: str, no_lan: bool, data_dir: Path | None, topic: str, timeout: float,
            group: str, message: str) -> None:
    """Post MESSAGE (or stdin with -) to GROUP (its name or the start of its id) and wait
    until another member holds it, or --timeout passes: then the post stays in this node's
    store and goes out the next time the node runs with the group.

    \b
    Examples:
      shoal publish team "lunch at noon?"
      echo report | shoal publish team - --topic daily
    """
    from shoal.cli.groups import find_group

    output = Output(as_json)
    _positive_seconds(timeout, "--timeout")
    if len(topic.encode()) > 255:
        raise click.BadParameter("a topic is at most 255 bytes", param_hint="--topic")
    data = sys.stdin.buffer.read() if message == "-" else os.fsencode(message)

    async def work(node: Node) -> None:
        chosen = find_group(node.groups(), group)
        post = await chosen.publish(data, topic=topic)
        output.event("published", f"posted {post.id[:12]} to {printable(chosen.name)}",
                     id=post.id, group=chosen.id, topic=topic, bytes=len(data))
        with output.waiting("waiting for another member to take it"):
            peers = await _post_taken(node, post.id, timeout)
        if not peers:
            raise ShoalError(f"no other member took the post within {timeout:g} s; it "
                             "is kept here and goes out the next time this node runs "
                             "with the group", code="ETIMEDOUT")
        output.event("reached", f"{len(peers)} peer(s) have it: "
                     + ", ".join(peer[:12] for peer in peers), id=post.id, peers=peers)

    _run_group(output, identity_path, introducers, listen, no_lan, data_dir, work,
               interrupted="interrupted before another member had the post: it is kept "
                           "here and goes out the next time this node runs")


async def _post_taken(node: Node, post_id: str, timeout: float) -> list[str]:
    """The peers that hold post ``post_id`` (published by this node) once one does, or
    none after ``timeout`` seconds: a peer holds it once it acknowledged all of it, or
    sent or announced it itself."""
    import asyncio

    wanted = bytes.fromhex(post_id)
    deadline = time.monotonic() + timeout
    while True:
        holders = node.call("groups", "holders", wanted)
        if holders or time.monotonic() >= deadline:
            return [peer.hex() for peer in holders]
        await asyncio.sleep(0.05)


@cli.command(short_help="Print a group's posts: the ones missed, then new ones.")
@_common
@_network_options
@_data_dir_option
@click.option("--topic", metavar="TOPIC", help="Only posts of this topic.")
@click.argument("group")
@_guard
def subscribe(identity_path: str | None, as_json: bool, introducers: tuple[str, ...],
              listen: str, no_lan: bool, data_dir: Path | None, topic: str | None,
              group: str) -> None:
    """Print the posts of GROUP (its name or the start of its id): those this node holds
    or missed while away first, then new ones as they come, until stopped (Ctrl-C). With
    --json, a post that is not UTF-8 text comes base64-encoded, with "encoding": "base64".

    \b
    Examples:
      shoal subscribe team
      shoal subscribe team --topic daily --json
    """
    from shoal.cli.groups import find_group, post_fields, post_time

    output = Output(as_json)

    async def work(node: Node) -> None:
        chosen = find_group(node.groups(), group)
        output.event("ready", f"reading {printable(chosen.name)} ({chosen.id[:12]}) as "
                     f"{node.peer_id}", group=chosen.id, peer_id=node.peer_id,
                     listen=format_address(node.address))
        names: dict[str, str] = {}
        async for post in chosen.subscribe(topic):
            if post.author not in names:
                names.update((m.peer_id, m.name) for m in chosen.members() if m.name)
            who = names.get(post.author, "")
            label = f"{printable(who)} ({post.author[:12]})" if who else post.author[:12]
            text = printable(post.data.decode("utf-8", "replace"))
            where = f" [{printable(post.topic)}]" if post.topic else ""
            output.event("post", f"{post_time(post.time)} {label}{where}: {text}",
                         **post_fields(post))

    _run_group(output, identity_path, introducers, listen, no_lan, data_dir, work)


@cli.command(short_help="What this machine has for apps: versions, webviews, display.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
@_guard
def info(as_json: bool) -> None:
    """Print what a user or a bug report needs: Shoal's and Python's versions, the
    webviews installed, the display, whether (and why not) a window would open, and
    what shoal test and shoal build --standalone need, each marked ok or missing.

    \b
    Examples:
      shoal info
      shoal info --json
    """
    from shoal.cli.checks import tool_checks
    from shoal.runtime.window import environment

    report: dict[str, Any] = {"shoal": __version__, **environment()}
    report["checks"] = tool_checks(report)
    if as_json:
        click.echo(json.dumps(report))
        return
    width = max(len(k) for k in report) + 1
    for key, value in report.items():
        if key == "checks":
            continue
        if isinstance(value, dict):
            value = ", ".join(f"{k} ({v})" for k, v in value.items()) or "-"
        elif isinstance(value, list):
            value = ", ".join(value) or "-"
        click.echo(f"{key + ':':<{width}} {value if value not in (None, '') else '-'}")
    click.echo("checks:")
    for check in report["checks"]:
        mark = click.style("ok     ", fg="green") if check["ok"] else \
            click.style("missing", fg="red")
        detail = f" ({check['detail']})" if check["ok"] and check["detail"] else \
            f": {check['fix']}" if not check["ok"] else ""
        click.echo(f"  {mark} {check['name']}, for {check['for']}{detail}", color=_colour())


@cli.command(short_help="Simulate a group of many peers in virtual time.")
@click.option("--peers", type=click.IntRange(2), default=100, show_default=True)
@click.option("--groups", type=click.IntRange(1), default=1, show_default=True)
@click.option("--posts", type=click.IntRange(0), default=20, show_default=True)
@click.option("--churn", type=click.FloatRange(0, 1, max_open=True), default=0.0,
              show_default=True, help="Fraction of the peers offline at any time.")
@click.option("--seed", type=int, default=1, show_default=True)
@click.option("--latency", type=click.FloatRange(0), default=0.03, show_default=True,
              help="One-way delay of every datagram, seconds.")
@click.option("--jitter", type=click.FloatRange(0), default=0.01, show_default=True,
              help="Extra random delay up to this, seconds.")
@click.option("--loss", type=click.FloatRange(0, 1, max_open=True), default=0.01,
              show_default=True, help="Fraction of datagrams lost.")
@click.option("--nat", type=click.FloatRange(0, 1), default=0.0, show_default=True,
              help="Fraction of the peers behind a NAT box each.")
@click.option("--nat-kind", type=click.Choice(["full-cone", "restricted", "port-restricted",
                                                "symmetric"]), default="port-restricted",
              show_default=True)
@click.option("--dht", is_flag=True, help="Run the DHT service on every node too.")
@click.option("--progress", is_flag=True, help="Print each phase's time on stderr.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
@_guard
def sim(peers: int, groups: int, posts: int, churn: float, seed: int, latency: float,
        jitter: float, loss: float, nat: float, nat_kind: str, dht: bool, progress: bool,
        as_json: bool) -> None:
    """Run PEERS real Shoal nodes in virtual time on a simulated network: they join
    GROUPS groups, publish POSTS posts while CHURN of them are offline, then all come
    back and catch up. Prints delivery (to the members online, and after catching up),
    latency, datagrams, bytes and copies per post, and the wall time and memory taken
    (see shoal.sim.groups). The same seed gives the same figures.

    \b
    Examples:
      shoal sim --peers 200 --posts 20 --json
      shoal sim --peers 1000 --posts 100 --churn 0.1 --seed 2
    """
    from shoal.sim.groups import GroupSimSpec, run_groups

    if os.environ.get("PYTHONHASHSEED") != "0":
        # Set iteration order follows the interpreter's hash seed: fix it, so that the
        # same --seed gives the same figures from one run to the next.
        import subprocess

        env = {**os.environ, "PYTHONHASHSEED": "0"}
        sys.exit(subprocess.call([sys.executable, "-m", "shoal.cli.main", *sys.argv[1:]],
                                 env=env))
    spec = GroupSimSpec(peers=peers, groups=groups, posts=posts, churn=churn, seed=seed,
                        latency=latency, jitter=jitter, loss=loss, nat=nat,
                        nat_kind=nat_kind, dht=dht)
    figures = run_groups(spec, (lambda line: click.echo(line, err=True)) if progress
                         else None).figures()
    if as_json:
        click.echo(json.dumps(figures))
        return
    width = max(len(k) for k in figures) + 1
    for key, value in figures.items():
        click.echo(f"{key + ':':<{width}} {value}")


def _doctor_without_servers(output: Output, peer_id: str, local: list[str],
                            machine: dict[str, Any]) -> int:
    """``doctor`` with no server to ask: what this machine alone tells, and what a
    server would add."""
    needs = ["public address", "NAT mapping and filtering", "hairpinning",
             "whether UDP leaves this network"]
    hint = (f"no --introducer or --stun given: the {', '.join(needs[:-1])} and "
            f"{needs[-1]} need a server to ask; e.g. shoal doctor --introducer HOST:PORT")
    if output.as_json:
        click.echo(json.dumps({"peer_id": peer_id, "local": local, "public": [], "udp": None,
                               "hairpin": None, "reachability": hint, "servers": [],
                               "needs_server": needs, **machine}))
    else:
        click.echo(f"peer id:    {peer_id}")
        _print_machine(machine)
        click.echo(f"local:      {', '.join(local)}")
        click.echo(f"meaning:    {hint}")
    return 0 if machine["udp_local"] else EXIT_ERROR


@cli.command(short_help="Create a new app from a template.")
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
@click.option("--template", type=click.Choice(["blank", "chat", "notes", "vite"]),
              default="blank",
              show_default=True, help="What the new app starts from.")
@click.option("--name", help="The app's name (default: the folder's name).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@_guard
def init(folder: Path, template: str, name: str | None, as_json: bool) -> None:
    """Create a new app in FOLDER: index.html, app.js, app.py, shoal.toml and a test
    (with --template vite: a Vite project whose dev server shoal dev shows, and whose
    build, dist, shoal run serves).

    \b
    Examples:
      shoal init notes
      shoal init chat --template chat
      shoal init plans --template notes
      shoal init web --template vite
    """
    from shoal.runtime.scaffold import create_app

    output = Output(as_json)
    written = create_app(folder, template=template, name=name)
    where = shlex.quote(str(folder))
    if template == "vite":
        steps = {f"npm --prefix {where} install": "fetch the framework",
                 f"npm --prefix {where} run dev": "start its dev server, then in another "
                                                  "terminal:",
                 f"shoal dev {where}": "show its pages in the app, reloading as you edit",
                 f"npm --prefix {where} run build && shoal run {where}":
                     "run the built app as its users will"}
    else:
        steps = {f"shoal dev {where}": "run it, reloading the page as you edit",
                 f"shoal run {where}": "run it as its users will",
                 f"shoal test {where}": "run its tests (*.test.js)"}
    width = max(map(len, steps)) + 2
    output.event("created", f"created {folder} ({template}); next:\n" + "\n".join(
                     f"  {step:<{width}}# {what}" for step, what in steps.items()),
                 folder=str(folder), template=template, files=[str(p) for p in written],
                 next=list(steps))


@cli.command(short_help="List what the app's policy will refuse, with fixes.")
@click.argument("folder", metavar="APP", type=click.Path(file_okay=False, path_type=Path),
                default=Path("."))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@_guard
def check(folder: Path, as_json: bool) -> None:
    """Read the app in APP without running it and list, one line each, what its pages'
    Content-Security-Policy will refuse (inline event handlers, javascript: URLs, eval,
    remote resources and connections to hosts shoal.toml does not name) and how to fix
    it. Exits 1 when there is any.

    \b
    Examples:
      shoal check notes
      shoal check notes --json
    """
    from shoal.runtime.config import load_config

    output = Output(as_json)
    findings = _findings(load_config(folder), output)
    if findings:
        output.event("checked", f"{findings} to fix", findings=findings)
        sys.exit(1)
    output.event("checked", "nothing the policy refuses", findings=0)


def _findings(config: Any, output: Output) -> int:
    """Print what ``shoal check`` finds in the app; how many."""
    from shoal.runtime.check import check_app

    found = check_app(config)
    for finding in found:
        output.event("finding", printable(finding.text()), **finding.fields())
    return len(found)


@cli.command(short_help="Sign an app into one .shoal archive.")
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path), default=Path("."))
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Folder to write the archive to (default: the app folder's parent).")
@click.option("--standalone", is_flag=True,
              help="Instead: a folder and a .tar.gz that run without Python or Shoal "
                   "(PyInstaller; pip install 'shoal[bundle]').")
@click.option("--gui", type=click.Choice(["qt", "gtk"]),
              help="With --standalone: the system's WebKitGTK (the default where installed; "
                   "small) or QtWebEngine inside the bundle (needs nothing on the machine).")
@click.option("--no-check", is_flag=True,
              help="Build even when shoal check finds what the policy will refuse.")
@_common
@_guard
def build(folder: Path, out_dir: Path | None, standalone: bool, gui: str | None,
          no_check: bool, identity_path: str | None, as_json: bool) -> None:
    """Sign the app in FOLDER into NAME-VERSION.shoal with your identity (its peer id is
    the app's publisher): the web files, shoal.toml and any app.py, without hidden files,
    caches and tests. It runs shoal check first and stops on what it finds, unless
    --no-check.

    \b
    Examples:
      shoal build notes
      shoal build notes --out dist --identity ~/keys/publisher.key
      shoal build notes --standalone --out dist
      shoal build notes --standalone --gui qt
    """
    from shoal.runtime import archive
    from shoal.runtime.config import load_config

    output = Output(as_json)
    if gui is not None and not standalone:
        raise ShoalError("--gui chooses the webview of a --standalone build", code="EINVAL")
    config = load_config(folder)  # a broken app: one line, before any folder is made
    if not no_check:
        findings = _findings(config, output)
        if findings:
            raise ShoalError(f"{folder}: shoal check found {findings} thing(s) the policy "
                             "will refuse (above); fix them, or build with --no-check",
                             code="EINVAL")
    if out_dir is not None and not standalone:
        _make_folder(out_dir)
    if standalone:
        from shoal.runtime.standalone import build_standalone

        with output.waiting("bundling Python, Shoal and the webview (a minute or two)"):
            made = build_standalone(folder, out_dir or folder.resolve().parent / "dist", gui)
        output.event("built", f"built {made.folder} ({_size(made.folder_bytes)}; start it "
                     f"with {made.launcher}) and {made.archive} ({_size(made.archive_bytes)})",
                     folder=str(made.folder), launcher=str(made.launcher),
                     archive=str(made.archive), folder_bytes=made.folder_bytes,
                     archive_bytes=made.archive_bytes, gui=made.gui, parts=made.parts,
                     largest=[{"path": path, "bytes": size} for path, size in made.largest])
        if not as_json:
            for part, size in made.parts.items():
                click.echo(f"  {_size(size):>10}  {part}")
        return
    built = archive.build(folder, _identity(identity_path, "publisher"), out_dir)
    manifest = built.manifest
    output.event("built", f"built {built.path} ({_size(built.bytes)}, "
                 f"{len(manifest.files)} files, publisher {manifest.publisher})",
                 path=str(built.path), bytes=built.bytes, files=len(manifest.files),
                 app_id=manifest.app_id, version=manifest.version,
                 publisher=manifest.publisher)


@cli.command(short_help="Install a .shoal archive for this user.")
@click.argument("archive_path", metavar="ARCHIVE",
                type=click.Path(dir_okay=False, path_type=Path))
@click.option("--yes", is_flag=True, help="Grant what the app asks for without asking.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@_guard
def install(archive_path: Path, yes: bool, as_json: bool) -> None:
    """Verify ARCHIVE, show what the app may do, and install it (on Linux with a desktop
    entry). A newer archive from the same publisher replaces an older one.

    \b
    Examples:
      shoal install notes-0.1.0.shoal
      shoal install notes-0.2.0.shoal --yes
    """
    from shoal.runtime import archive

    output = Output(as_json)
    done = archive.install(archive_path, _approver(output, yes))
    where = f"; desktop entry {done.desktop_entry}" if done.desktop_entry else ""
    output.event("installed", f"installed {done.name} {done.version} in {done.folder}{where}; "
                 f"run it with: shoal run {done.app_id}",
                 app_id=done.app_id, version=done.version, publisher=done.publisher,
                 folder=str(done.folder),
                 desktop_entry=str(done.desktop_entry) if done.desktop_entry else None)


@cli.command(short_help="Remove an installed app (its data stays).")
@click.argument("app_id")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@_guard
def uninstall(app_id: str, as_json: bool) -> None:
    """Remove the installed app APP_ID and its desktop entry; its data folder stays.

    \b
    Examples:
      shoal uninstall org.example.notes
    """
    from shoal.runtime import archive

    gone = archive.uninstall(app_id)
    Output(as_json).event("uninstalled", f"uninstalled {gone.name} {gone.version}",
                          app_id=gone.app_id, version=gone.version)


@cli.command("test", short_help="Run an app's JS tests (*.test.js) and print TAP.")
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path), default=Path("."))
@click.option("--timeout", default=300.0, type=float, show_default=True,
              help="Seconds the whole run may take.")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path),
              help="The app's data folder during the tests (default: a temporary one).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option("--window", is_flag=True,
              help="Run them in the app's own native window instead of headless Chromium.")
@click.option("--gui", type=click.Choice(["qt", "gtk"]),
              help="With --window: QtWebEngine (the default where installed) or WebKitGTK.")
@_guard
def test_command(folder: Path, timeout: float, data_dir: Path | None, as_json: bool,
                 window: bool, gui: str | None) -> None:
    """Run the app's *.test.js files in headless Chromium (or, with --window, in the app's
    native webview), against the app's real bridge and permissions, and print TAP (exit
    status 1 if any test failed).

    \b
    A test file:
      import { test, assert } from "shoal:test";
      import { invoke } from "shoal:api";
      test("greets", async () => assert.equal(await invoke("greet", ["x"]), "Hello, x!"));

    \b
    Examples:
      shoal test notes
      shoal test notes --json
      shoal test notes --window --gui gtk
    """
    from shoal.runtime.apptests import run_tests, run_tests_in_window
    from shoal.runtime.config import check_app_code, load_config

    output = Output(as_json)
    _positive_seconds(timeout, "--timeout")
    load_config(folder)
    check_app_code(folder)
    counted = {"n": 0, "failed": 0}
    if not as_json:
        click.echo("TAP version 13")

    def on_result(result: dict[str, Any]) -> None:
        counted["n"] += 1
        counted["failed"] += not result["ok"]
        title = printable(f"{result['file']}: {result['name']}" if result["file"]
                          else result["name"])
        if as_json:
            fields = {**result, "test": result["name"]}
            del fields["name"]  # Output.event's own first parameter
            output.event("test", title, **fields)
            return
        click.echo(f"{'ok' if result['ok'] else 'not ok'} {counted['n']} - {title}"
                   f" # {result['ms']} ms")
        if not result["ok"]:
            # TAP's YAML block: the message as a literal block (quotes stay as written),
            # the values as the JSON the page showed them in.
            click.echo("  ---")
            if result.get("error") is not None:
                click.echo(f"  error: |-\n    {printable(str(result['error']))}")
            for key in ("expected", "actual"):
                if result.get(key) is not None:
                    click.echo(f"  {key}: {printable(str(result[key]))}")
            click.echo("  ...")

    def on_problem(text: str) -> None:
        if as_json:
            output.event("problem", text, message=text)
        else:
            click.echo(f"# {printable(text)}")

    def summary() -> int:
        passed = counted["n"] - counted["failed"]
        if as_json:
            output.event("done", f"{passed} passed, {counted['failed']} failed",
                         passed=passed, failed=counted["failed"])
        else:
            click.echo(f"1..{counted['n']}\n# pass {passed}\n# fail {counted['failed']}")
        return 1 if counted["failed"] else 0

    if window:
        from shoal.runtime.window import end_within_grace

        try:
            run_tests_in_window(folder, on_result=on_result, gui=gui, data_dir=data_dir,
                                timeout=timeout)
        except ShoalError as exc:
            output.error(exc.code, exc.message)
            sys.exit(EXIT_ERROR)
        finally:
            end_within_grace()
        sys.exit(summary())

    async def body() -> int:
        await run_tests(folder, on_result=on_result, on_problem=on_problem,
                        data_dir=data_dir, timeout=timeout)
        return summary()

    _run(output, body, interrupted="interrupted before the tests finished")


def _make_folder(folder: Path) -> None:
    """Create ``folder`` (and its parents) for output, or say in one line why not."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ShoalError(f"{folder}: exists and is not a folder", code="ENOTDIR") from None
    except OSError as exc:
        raise ShoalError(f"{folder}: cannot create ({exc.strerror})",
                         code=os_error_code(exc)) from exc


def _size(count: int) -> str:
    return f"{count} bytes" if count < 1024 else (
        f"{count / 1024:.1f} KiB" if count < 1 << 20 else f"{count / (1 << 20):.1f} MiB")


def _approver(output: Output, yes: bool) -> Callable[[Any, Any], None]:
    """Show what an archived app may do and have it granted: by --yes, by an earlier
    grant of exactly this (same publisher, same capabilities), or at the terminal."""
    from shoal.runtime import archive

    def approve(manifest: Any, config: Any) -> None:
        lines = archive.capabilities(config)
        digest = archive.approval_digest(manifest, lines)
        if yes or archive.granted(manifest.app_id, digest):
            archive.remember_grant(manifest.app_id, digest)
            return
        output.event("asks", f"{printable(manifest.name)} {printable(manifest.version)} "
                     f"(publisher {manifest.publisher}) asks to:\n"
                     + "\n".join(f"  - {printable(line)}" for line in lines),
                     app_id=manifest.app_id, publisher=manifest.publisher,
                     capabilities=lines)
        if output.as_json or not sys.stdin.isatty():
            raise ShoalError("not granted: run again with --yes to allow what it asks for",
                             code="EPERM")
        if not click.confirm("Allow?", default=False):
            raise ShoalError("not granted", code="EPERM")
        archive.remember_grant(manifest.app_id, digest)

    return approve


def _app_options(func: Callable[..., Any]) -> Callable[..., Any]:
    func = click.argument("app_args", nargs=-1, metavar="[-- ARGS...]")(func)
    func = click.argument("folder", metavar="APP", type=click.Path(path_type=Path),
                          default=Path("."))(func)
    func = click.option("--browser", is_flag=True,
                        help="Serve for a browser instead of opening a window.")(func)
    func = click.option("--port", default=0, type=click.IntRange(0, 65535),
                        help="Port of the local app server (default: the app's own, or any "
                             "free one while that is taken).")(func)
    func = click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path),
                        help="The app's own data folder (default: in the user data dir).")(func)
    func = click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")(func)
    func = click.option("--introducer", "introducers", multiple=True, metavar="HOST:PORT",
                        help="An introducer for the app's network, besides those in "
                             "shoal.toml (repeatable).")(func)
    func = click.option("--gui", type=click.Choice(["qt", "gtk"]),
                        help="The webview on Linux: QtWebEngine (the default where installed) "
                             "or WebKitGTK.")(func)
    return func


@cli.command(short_help="Open an app in a window (or a browser).")
@_app_options
@click.option("--yes", is_flag=True,
              help="For an archive: grant what the app asks for without asking.")
@click.option("--url", metavar="LINK",
              help="A deep link for the app (its [app] scheme), e.g. from a desktop entry.")
@_guard
def run(folder: Path, app_args: tuple[str, ...], browser: bool, port: int,
        data_dir: Path | None, as_json: bool, gui: str | None, introducers: tuple[str, ...],
        yes: bool, url: str | None) -> None:
    """Open APP in a native window (or a browser with --browser). APP is an app folder,
    a .shoal archive (verified, and what it may do shown, before anything runs) or the
    id of an installed app. ARGS after -- are the app's own (process.info().argv). While
    the app runs, launching it again (with the same data folder) hands the new launch's
    --url and ARGS to it and brings its window forward.

    \b
    Examples:
      shoal run notes
      shoal run notes --browser --port 8123
      shoal run chat --introducer 203.0.113.2:7000
      shoal run notes-0.1.0.shoal
      shoal run org.example.notes
    """
    _run_app(folder, browser=browser, port=port, data_dir=data_dir, as_json=as_json,
             gui=gui, dev=False, introducers=introducers, yes=yes, app_args=app_args,
             url=url)


@cli.command(short_help="Like run, with live reload and error overlay.")
@_app_options
@click.option("--url", "dev_url", metavar="URL",
              help="Show the pages of this framework dev server on this machine "
                   "(default: [dev] url in shoal.toml), e.g. http://127.0.0.1:5173.")
@_guard
def dev(folder: Path, app_args: tuple[str, ...], browser: bool, port: int,
        data_dir: Path | None, as_json: bool, gui: str | None,
        introducers: tuple[str, ...], dev_url: str | None) -> None:
    """Like run, and reload the page whenever a file of the app changes. With a
    framework's dev server (--url, or [dev] url), show its pages instead, with the JS
    API, and let it reload them itself (hot module reload).

    \b
    Examples:
      shoal dev notes
      shoal dev notes --browser
      shoal dev my-vite-app --url http://127.0.0.1:5173
    """
    _run_app(folder, browser=browser, port=port, data_dir=data_dir, as_json=as_json,
             gui=gui, dev=True, introducers=introducers, app_args=app_args, dev_url=dev_url)


def _run_app(app: Path, *, browser: bool, port: int, data_dir: Path | None, as_json: bool,
             gui: str | None, dev: bool, introducers: tuple[str, ...] = (),
             yes: bool = False, app_args: tuple[str, ...] = (),
             url: str | None = None, dev_url: str | None = None) -> None:
    output = Output(as_json)
    with contextlib.ExitStack() as stack:
        folder, publisher = _app_folder(app, output, yes, stack,
                                        own_data=data_dir is not None)
        _run_folder(folder, output, browser=browser, port=port, data_dir=data_dir, gui=gui,
                    dev=dev, introducers=introducers, app_args=app_args, url=url,
                    dev_url=dev_url, publisher=publisher)


def _app_folder(app: Path, output: Output, yes: bool, stack: contextlib.ExitStack, *,
                own_data: bool = False) -> tuple[Path, str | None]:
    """The folder to run for APP, and its publisher (None for a folder): itself, an
    archive verified and unpacked into a temporary folder, or an installed app's folder.
    An archive runs with its app id's
    data folder only if it comes from the publisher that id is pinned to (``own_data``:
    the user gave it a data folder of its own)."""
    from shoal.runtime.config import ARCHIVE_SUFFIX

    if app.is_dir() and app.suffix == ARCHIVE_SUFFIX:
        raise ShoalError(f"{app}: a folder named like an archive; what is in it was never "
                         "verified (an unpacked download?): run the .shoal file itself, or "
                         "rename the folder to run it as an unsigned app", code="EISDIR")
    if app.is_dir():
        return app, None
    from shoal.runtime import archive  # after: it loads cryptography (6 MB, 30 ms)

    if app.is_file() or app.suffix == archive.SUFFIX:
        approve = _approver(output, yes)

        def pinned_then_approved(manifest: Any, config: Any) -> None:
            if not own_data:
                archive.check_publisher(manifest, app)
            approve(manifest, config)

        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="shoal-app-")))
        manifest = archive.unpack(app, scratch / "app", pinned_then_approved)
        if not own_data:
            archive.pin_publisher(manifest)
        return scratch / "app", manifest.publisher
    found = archive.installed(str(app))
    if found is None:
        raise ShoalError(f"{app}: no app folder, .shoal archive or installed app by that "
                         "name", code="ENOENT")
    return found.folder, found.publisher


def _run_folder(folder: Path, output: Output, *, browser: bool, port: int,
                data_dir: Path | None, gui: str | None, dev: bool,
                introducers: tuple[str, ...], app_args: tuple[str, ...],
                url: str | None = None, dev_url: str | None = None,
                publisher: str | None = None) -> None:
    import dataclasses

    from shoal.runtime import instance
    from shoal.runtime.config import check_app_code, default_data_dir, load_config
    from shoal.runtime.launch import Launch
    from shoal.runtime.window import choose_gui, end_within_grace, run_in_window

    # A bad config or app code: one clear line before anything starts.
    config = load_config(folder)
    check_app_code(folder)
    dev_url = _dev_server(config, dev, dev_url)
    if dev_url is None and not config.pages.is_dir():
        raise ShoalError(f"{config.pages}: no such folder ([app] root): build the app first "
                         "(npm run build, say), or show its dev server with shoal dev --url",
                         code="ENOENT")
    if url is not None:
        instance.check_url(url, config.scheme)
    listening = instance.socket_path(data_dir or default_data_dir(config.id))
    claimed = instance.claim(listening)  # held while this copy runs
    if claimed is None:
        for _ in range(30):  # the first copy may still be starting
            link = instance.hand_over(listening, url, app_args)
            if link is not None:
                output.event("handed-over", "the app is running already: handed over to it"
                             + (f"; open {link} in a browser" if link else ""),
                             url=url, argv=list(app_args), link=link or None)
                return
            time.sleep(0.1)
        raise ShoalError("another copy of this app holds its data folder and does not "
                         "answer", code="EBUSY")
    if introducers:
        added = tuple(_servers(introducers, config.network.listen))
        network = dataclasses.replace(config.network, introducers=tuple(
            dict.fromkeys((*config.network.introducers, *added))))
        config = dataclasses.replace(config, network=network)
    hint = _peer_hint(config)
    if hint is not None:
        output.event("notice", hint, reason=hint)

    def on_dev(kind: str, line: str) -> None:
        shown = printable(line)  # a page's text must not drive the terminal
        output.event("dev", shown if kind == "reload" else f"{kind}: {shown}", kind=kind,
                     message=line)

    def on_refusal(refusal: Any) -> None:
        output.event("refused", printable(refusal.line()), **refusal.fields())

    launch = Launch(data_dir=data_dir, config=config, dev=dev, on_dev=on_dev, port=port,
                    argv=app_args, instance=listening, url=url, on_refusal=on_refusal,
                    dev_url=dev_url)
    if not browser:
        can_open, gui, reason = choose_gui(gui)
        if can_open and reason is not None:
            output.event("notice", reason, reason=reason)
        if can_open:
            started = time.monotonic()

            def ready(url: str) -> None:
                ms = round((time.monotonic() - started) * 1000, 1)
                output.event("ready", f"window open ({ms} ms)", mode="window", ms=ms)

            try:
                run_in_window(folder, launch, on_ready=ready, gui=gui)
            finally:
                # The windows are closed: a next launch is the app's first copy again,
                # even while the webview's teardown still runs.
                os.close(claimed)
                end_within_grace()
            return
        output.event("notice", f"no native window: {reason}; serving for a browser instead",
                     reason=reason)

    from shoal.runtime.origins import app_host

    # An origin of the app's own, the same each launch: its storage stays its own.
    launch = dataclasses.replace(launch, host=app_host(
        config.name, config.id, publisher, (data_dir or default_data_dir(config.id)).resolve()))

    async def body() -> int:
        from shoal.runtime.host import AppHost

        async with AppHost(folder, launch) as host:
            output.event("ready", f"open {host.url} in a browser", mode="browser",
                         url=host.url, dev=dev)
            await host.exited.wait()  # the page called process.exit
        return host.exit_code

    _run(output, body)


def _dev_server(config: Any, dev: bool, given: str | None) -> str | None:
    """The framework dev server ``shoal dev`` shows: ``--url``, else ``[dev] url``."""
    from shoal.runtime.config import dev_server_url

    if given is None:
        return config.dev_url if dev else None
    try:
        return dev_server_url(given)
    except ValueError as exc:
        raise ShoalError(f"--url: {exc}", code="EINVAL") from None


def _peer_hint(config: Any) -> str | None:
    """What to say when the app's network can find no peer, or only peers on this LAN."""
    if not config.permissions.network or config.network.introducers:
        return None
    lan = config.network.lan and not os.environ.get("SHOAL_NO_LAN")
    if not lan:
        return ("this app has no introducer and LAN discovery is off, so it can find no "
                "peer; add one with --introducer HOST:PORT (or [network] introducers)")
    return ("this app has no introducer: it finds peers on this LAN only; add one with "
            "--introducer HOST:PORT to reach others")


def main() -> None:
    """Console entry point."""
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.ClickException as exc:
        # One line, in the same style as every other error (not click's usage block).
        message = " ".join(exc.format_message().split())
        click.secho(f"shoal: error: {message} (EINVAL); see 'shoal --help'", err=True,
                    fg="red", color=_colour())
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
