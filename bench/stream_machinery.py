"""How fast the sans-IO stream machinery moves bytes, without crypto or sockets.

    python bench/stream_machinery.py [--mib 64] [--streams 1] [--packet 1452] [--loss 0.0]

One process, two ``StreamManager``s: every packet's frames are filled, encoded, decoded
and received, then acknowledged (or, at ``--loss``, declared lost), and the receiver reads
as bytes arrive. This is the Python cost per byte that the stream service adds to the
connection's (encryption, sockets). Prints one JSON object: MB/s and packets per second.
"""

from __future__ import annotations

import argparse
import json
import random
import time

from shoal.core.streams import StreamManager
from shoal.core.streams import frames as F


def run(mib: int, streams: int, packet: int, loss: float, seed: int = 1) -> dict:
    rng = random.Random(seed)
    a, b = StreamManager(initiator=True), StreamManager(initiator=False)
    total = mib << 20
    block = bytes(range(256)) * 256  # 64 KiB
    opened = [a.open() for _ in range(streams)]
    left = {s.stream_id: total // streams for s in opened}
    received = packets = 0
    start = time.perf_counter()
    while received < total:
        for stream in opened:
            while left[stream.stream_id] and stream.send.writable:
                taken = stream.write(block[: min(len(block), left[stream.stream_id])])
                left[stream.stream_id] -= taken
                if not left[stream.stream_id]:
                    stream.close()
        for _ in range(64):
            frames = a.fill(packet)
            if not frames:
                break
            packets += 1
            payload = b"".join(F.encode(f) for f in frames)
            if loss and rng.random() < loss:
                for frame in frames:
                    a.on_lost(frame)
                continue
            for frame in F.decode(payload):
                b.receive(frame)
            for frame in frames:
                a.on_acked(frame)
        for stream in list(b.streams.values()):
            received += len(stream.read())
        for frame in b.fill(packet):
            a.receive(frame)
            b.on_acked(frame)
    seconds = time.perf_counter() - start
    return {"event": "stream_machinery", "bytes": total, "streams": streams, "loss": loss,
            "seconds": round(seconds, 3), "mbytes_per_s": round(total / seconds / 1e6, 1),
            "packets_per_s": round(packets / seconds)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=64)
    parser.add_argument("--streams", type=int, default=1)
    parser.add_argument("--packet", type=int, default=1452)
    parser.add_argument("--loss", type=float, default=0.0)
    args = parser.parse_args()
    print(json.dumps(run(args.mib, args.streams, args.packet, args.loss)))


if __name__ == "__main__":
    main()
