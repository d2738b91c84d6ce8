"""Bytes an introducer sends per byte a stranger sends it, for every packet kind a stranger
can send without a session: the reflection factor of each. Prints JSON.

    python bench/amplification.py [--count 500]

Each kind is sent ``count`` times to a sans-IO introducer (the same core as on UDP), from
``count`` source addresses spread over a few networks, as a spoofing flood would be;
``ratio`` is the bytes answered over the bytes received. Every ratio is at most 1.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable, Iterator

from shoal.core import stun
from shoal.core.config import CoreConfig
from shoal.core.endpoint import Endpoint
from shoal.core.wire import MIN_INIT_SIZE, PacketKind, encode_punch
from shoal.identity import Identity

Address = tuple[str, int]


def _sources(count: int) -> Iterator[Address]:
    for index in range(count):
        yield (f"198.51.{100 + index % 4}.{1 + index // 4 % 250}", 40000 + index)


def _fresh_init(server: Address) -> bytes:
    client = Endpoint(Identity.generate(), random_bytes=os.urandom)
    client.connect(server, 0.0)
    return next(d for d, _, _ in client.datagrams_to_send(0.0) if d[0] == PacketKind.INIT)


def kinds(server: Address) -> dict[str, Callable[[int], bytes]]:
    """Each packet kind a stranger can send, as a maker of its ``i``-th datagram."""
    one_init = _fresh_init(server)
    return {
        "INIT (fresh identities)": lambda i: _fresh_init(server),
        "INIT (one, repeated)": lambda i: one_init,
        "INIT (short)": lambda i: one_init[: MIN_INIT_SIZE // 2],
        "RESP (forged)": lambda i: bytes([PacketKind.RESP]) + os.urandom(120),
        "FINAL (forged)": lambda i: bytes([PacketKind.FINAL]) + os.urandom(160),
        "DATA (junk)": lambda i: bytes([PacketKind.DATA]) + os.urandom(64),
        "PUNCH (unknown token)": lambda i: encode_punch(os.urandom(8)),
        "COOKIE (forged)": lambda i: bytes([PacketKind.COOKIE]) + os.urandom(40),
        "VERSION (forged)": lambda i: bytes([PacketKind.VERSION]) + os.urandom(12),
        "STUN (plain, 20 B)": lambda i: stun.encode_binding_request(os.urandom(12)),
        "STUN (padded)": lambda i: stun.encode_binding_request(
            os.urandom(12), pad_to=stun.PLAIN_PADDED_SIZE),
        "STUN (change, unpadded)": lambda i: stun.encode_binding_request(
            os.urandom(12), change=stun.CHANGE_IP | stun.CHANGE_PORT),
        "random": lambda i: os.urandom(1 + i % 1400),
    }


def measure(count: int = 500) -> dict[str, dict[str, float]]:
    """``{kind: {"sent", "answered", "ratio"}}`` for a fresh introducer per kind."""
    address = ("203.0.113.1", 7000)
    results = {}
    for name, make in kinds(address).items():
        server = Endpoint(Identity.generate(), random_bytes=os.urandom,
                          config=CoreConfig(introducer=True))
        server.set_local_addresses([address])
        sent = answered = 0
        now = 0.0
        for index, source in enumerate(_sources(count)):
            datagram = make(index)
            now = index * 0.002  # 500 datagrams a second
            server.receive_datagram(datagram, source, now)
            sent += len(datagram)
            answered += sum(len(d) for d, _, _ in server.datagrams_to_send(now))
        results[name] = {"sent": sent, "answered": answered,
                         "ratio": round(answered / sent, 4) if sent else 0.0}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=500)
    arguments = parser.parse_args()
    results = measure(arguments.count)
    print(json.dumps({"count": arguments.count, "kinds": results,
                      "max_ratio": max(r["ratio"] for r in results.values())}))


if __name__ == "__main__":
    main()
