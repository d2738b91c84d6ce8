"""Files by content: BLAKE3 tree hashing, and fetches on loopback from 1 and 3 providers.

Each provider is a ``shoal share`` process and the fetch a ``shoal fetch`` process, all
on 127.0.0.1 (the rate is the fetch's own, from its first request to the renamed file,
without process start-up). Prints one JSON object; rates are medians of ``--reps`` runs.

    python bench/files.py --json [--bytes 268435456] [--reps 3]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from shoal.core.blobs import PIECE_SIZE, HashTree, Ticket


def shoal(*args: str) -> list[str]:
    return [sys.executable, "-m", "shoal.cli.main", *args]


def hashing(size: int) -> float:
    """MB/s of building a blob's tree from bytes in memory (what sharing a file costs
    beyond reading it)."""
    data = os.urandom(size)
    view = memoryview(data)
    started = time.perf_counter()
    HashTree.build(size, (view[o:o + PIECE_SIZE] for o in range(0, size, PIECE_SIZE)))
    return size / (time.perf_counter() - started) / 1e6


def fetch_rate(source: Path, providers: int, folder: Path) -> dict[str, float]:
    """One fetch of ``source`` from ``providers`` ``shoal share`` processes."""
    sharers = [subprocess.Popen(
        shoal("share", str(source), "--listen", "127.0.0.1:0", "--no-lan", "--json",
              "--identity", str(folder / f"provider{i}.key")),
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        for i in range(providers)]
    try:
        tickets = [Ticket.parse(json.loads(p.stdout.readline())["ticket"])  # type: ignore[union-attr]
                   for p in sharers]
        ticket = tickets[0].merge(*tickets[1:])
        target = folder / "fetched.bin"
        target.unlink(missing_ok=True)
        result = subprocess.run(
            shoal("fetch", str(ticket), "-o", str(target), "--listen", "127.0.0.1:0",
                  "--no-lan", "--json"), capture_output=True, text=True, timeout=600)
        if result.returncode != 0:
            raise SystemExit(f"fetch failed: {result.stdout}{result.stderr}")
        done = json.loads(result.stdout.splitlines()[-1])
        target.unlink()
        return {"mbytes_per_s": done["mbytes_per_s"], "seconds": done["seconds"]}
    finally:
        for process in sharers:
            process.send_signal(signal.SIGINT)
        for process in sharers:
            process.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bytes", type=int, default=256 << 20)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="(the output is JSON anyway)")
    args = parser.parse_args()
    out: dict[str, object] = {"bytes": args.bytes, "reps": args.reps}
    out["hash_mbytes_per_s"] = round(statistics.median(
        hashing(args.bytes) for _ in range(args.reps)), 1)
    with tempfile.TemporaryDirectory(prefix="shoal-files-bench-") as tmp:
        folder = Path(tmp)
        source = folder / "source.bin"
        with source.open("wb") as handle:
            for _ in range(0, args.bytes, 1 << 20):
                handle.write(os.urandom(min(1 << 20, args.bytes)))
            handle.truncate(args.bytes)
        for providers in (1, 3):
            runs = [fetch_rate(source, providers, folder) for _ in range(args.reps)]
            out[f"fetch_{providers}_mbytes_per_s"] = statistics.median(
                r["mbytes_per_s"] for r in runs)
            out[f"fetch_{providers}_runs"] = [r["mbytes_per_s"] for r in runs]
    out["cpus"] = os.cpu_count()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
