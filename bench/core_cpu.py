"""CPU cost of the core alone: acknowledged 1 KiB messages per CPU second; prints JSON.

Two ``Endpoint`` cores in one process hand each other their datagrams directly (no
sockets, no event loop), so the figure is the protocol engine's own Python per message,
measured in process CPU time: far steadier than wall-clock figures on a shared machine.

    python bench/core_cpu.py [--messages 20000] [--window 512] [--runs 5] [--json]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time

from shoal.core import events as ev
from shoal.core.endpoint import Endpoint
from shoal.identity import Identity

A, B = ("10.0.0.1", 7000), ("10.0.0.2", 7000)


def messages_per_cpu_second(count: int, window: int, seed: int) -> float:
    rng = random.Random(seed)
    sender = Endpoint(Identity(bytes([1]) * 32), random_bytes=rng.randbytes)
    receiver = Endpoint(Identity(bytes([2]) * 32), random_bytes=rng.randbytes)
    now = 0.0

    def exchange() -> None:
        moved = True
        while moved:
            moved = False
            for source, target, address in ((sender, receiver, A), (receiver, sender, B)):
                for data, _, _ in source.datagrams_to_send(now):
                    target.receive_datagram(data, address, now)
                    moved = True

    sender.connect(B, now)
    exchange()
    peer, payload = receiver.peer_id, bytes(1024)
    queued = delivered = 0
    started = time.process_time()
    while delivered < count:
        while queued - delivered < window and queued < count:
            sender.send_message(peer, payload, now)
            queued += 1
        exchange()
        now += 0.0001
        for event in iter(sender.next_event, None):
            delivered += isinstance(event, ev.MessageDelivered)
        for event in iter(receiver.next_event, None):
            if isinstance(event, ev.MessageReceived):
                receiver.message_read(event)
        for endpoint in (sender, receiver):
            deadline = endpoint.get_timer()
            if deadline is not None and deadline <= now:
                endpoint.handle_timer(now)
    return count / (time.process_time() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="(output is always JSON)")
    args = parser.parse_args()
    rates = [messages_per_cpu_second(args.messages, args.window, run)
             for run in range(args.runs)]
    print(json.dumps({"message_bytes": 1024,
                      "core_messages_per_cpu_s": round(statistics.median(rates)),
                      "runs": [round(r) for r in rates]}))


if __name__ == "__main__":
    main()
