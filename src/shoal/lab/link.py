"""A userspace link impairment: forwards Ethernet frames between interface pairs with a
fixed delay and random loss (this kernel has no netem qdisc).

Run inside a network namespace that holds both interfaces of each pair::

    python -m shoal.lab.link --delay 0.05 --loss 0.05 --seed 1 a0:b0 a1:b1 ...

Frames read on one interface of a pair are written to the other after ``--delay``
seconds, unless dropped with probability ``--loss``. Prints ``ready`` once all sockets
are bound; stops on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import signal
import socket
import sys

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4


def _open(interface: str) -> socket.socket:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.bind((interface, 0))
    sock.setblocking(False)
    return sock


async def _run(pairs: list[tuple[str, str]], delay: float, loss: float, seed: int) -> None:
    loop = asyncio.get_running_loop()
    rng = random.Random(seed)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    def forward(source: socket.socket, target: socket.socket) -> None:
        for _ in range(64):
            try:
                frame, address = source.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            if address[2] == PACKET_OUTGOING or (loss and rng.random() < loss):
                continue
            if delay > 0:
                loop.call_later(delay, _send, target, frame)
            else:
                _send(target, frame)

    sockets = []
    for left_name, right_name in pairs:
        left, right = _open(left_name), _open(right_name)
        sockets += [left, right]
        loop.add_reader(left.fileno(), forward, left, right)
        loop.add_reader(right.fileno(), forward, right, left)
    print("ready", flush=True)
    await stop.wait()
    for sock in sockets:
        loop.remove_reader(sock.fileno())
        sock.close()


def _send(target: socket.socket, frame: bytes) -> None:
    with contextlib.suppress(OSError):
        target.send(frame)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pairs", nargs="+", metavar="IF_A:IF_B")
    parser.add_argument("--delay", type=float, default=0.0, help="one-way delay in seconds")
    parser.add_argument("--loss", type=float, default=0.0, help="drop probability, 0..1")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    pairs = []
    for pair in args.pairs:
        left, sep, right = pair.partition(":")
        if not sep or not left or not right:
            parser.error(f"not an interface pair: {pair!r}")
        pairs.append((left, right))
    try:
        asyncio.run(_run(pairs, args.delay, args.loss, args.seed))
    except OSError as exc:
        print(f"shoal.lab.link: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
