"""CPU cost of the core alone: acknowledged 1 KiB messages per CPU second, or with
``--transfer SIZE`` the CPU seconds per GiB of a bulk transfer by one stream and by
64 KiB messages, each side apart; prints JSON.

Two ``Endpoint`` cores in one process hand each other their datagrams directly (no
sockets, no event loop), so the figure is the protocol engine's own Python per message
or per byte (sealing and opening included), measured in process CPU time: far steadier
than wall-clock figures on a shared machine.

    python bench/core_cpu.py [--messages 20000] [--window 512] [--runs 5] [--json]
    python bench/core_cpu.py --transfer 64MiB [--runs 3]
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
from streams import parse_size  # (bench/streams.py)

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


class _Clock:
    """Process CPU time spent inside one endpoint's calls."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.seconds = 0.0
        for name in ("datagrams_to_send", "receive_datagram", "handle_timer", "call",
                     "send_message", "message_read"):
            setattr(endpoint, name, self._timed(getattr(endpoint, name)))

    def _timed(self, method):  # type: ignore[no-untyped-def]
        def timed(*args, **kwargs):  # type: ignore[no-untyped-def]
            started = time.process_time()
            try:
                return method(*args, **kwargs)
            finally:
                self.seconds += time.process_time() - started
        return timed


def transfer_cpu(kind: str, total: int, seed: int) -> dict[str, float]:
    """CPU seconds per GiB of moving ``total`` bytes by one stream (``kind`` "stream")
    or by 64 KiB messages, 128 in flight: the sender's, the receiver's and both."""
    rng = random.Random(seed)
    sender = Endpoint(Identity(bytes([1]) * 32), random_bytes=rng.randbytes)
    receiver = Endpoint(Identity(bytes([2]) * 32), random_bytes=rng.randbytes)
    now = 0.0

    def exchange() -> None:
        nonlocal now
        moved = True
        while moved:
            moved = False
            for source, target, address in ((sender, receiver, A), (receiver, sender, B)):
                for data, _, _ in source.datagrams_to_send(now):
                    target.receive_datagram(data, address, now)
                    moved = True
            now += 0.0002
            for endpoint in (sender, receiver):
                deadline = endpoint.get_timer()
                if deadline is not None and deadline <= now:
                    endpoint.handle_timer(now)

    sender.connect(B, now)
    exchange()
    receiver.streams.serve("bench")
    clocks = _Clock(sender), _Clock(receiver)
    block = rng.randbytes(256 << 10)
    received = 0
    if kind == "stream":
        handle = sender.call("streams", now, "open", receiver.peer_id, "bench")
        written, pending, reading = 0, block, None
        while received < total:
            while written < total:
                taken = sender.call("streams", now, "write", handle, pending)
                written += taken
                if taken < len(pending):
                    pending = memoryview(pending)[taken:]
                    break
                pending = block
            exchange()
            for event in iter(receiver.next_event, None):
                if isinstance(event, ev.ServiceEvent) and event.kind == "accepted":
                    reading = event.data[0]  # type: ignore[index]
            while reading is not None and (
                    data := receiver.call("streams", now, "read", reading, 2 << 20)):
                received += len(data)  # type: ignore[arg-type]
    else:
        size, queued, delivered = 64 << 10, 0, 0
        while received < total:
            while queued - delivered < 128 and queued * size < total:
                sender.send_message(receiver.peer_id, block[:size], now)
                queued += 1
            exchange()
            for event in iter(sender.next_event, None):
                delivered += isinstance(event, ev.MessageDelivered)
            for event in iter(receiver.next_event, None):
                if isinstance(event, ev.MessageReceived):
                    received += len(event.data)
                    receiver.message_read(event)
    scale = (1 << 30) / total
    send, recv = clocks[0].seconds * scale, clocks[1].seconds * scale
    return {"send": round(send, 2), "recv": round(recv, 2), "total": round(send + recv, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="(output is always JSON)")
    parser.add_argument("--transfer", type=parse_size,
                        help="CPU s/GiB of moving this many bytes by a stream and by messages")
    args = parser.parse_args()
    if args.transfer:
        result: dict[str, object] = {"transfer_bytes": args.transfer}
        for kind in ("stream", "messages"):
            runs = [transfer_cpu(kind, args.transfer, run) for run in range(args.runs)]
            result[kind] = {side: statistics.median(run[side] for run in runs)
                            for side in ("send", "recv", "total")}
            result[f"{kind}_runs_total"] = [run["total"] for run in runs]
        print(json.dumps(result))
        return
    rates = [messages_per_cpu_second(args.messages, args.window, run)
             for run in range(args.runs)]
    print(json.dumps({"message_bytes": 1024,
                      "core_messages_per_cpu_s": round(statistics.median(rates)),
                      "runs": [round(r) for r in rates]}))


if __name__ == "__main__":
    main()
