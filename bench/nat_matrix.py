"""Run the NAT matrix repeatedly and report success rate, path and time to first delivery.

    sudo python bench/nat_matrix.py --runs 5 --delay 0.05 --json
    sudo python bench/nat_matrix.py --runs 5 --delay 0.05 --markdown docs/nat-matrix.md

Each trial starts from cold NATs (conntrack flushed) and a fresh ``shoal send`` process;
"ms" is the sender's own figure: from its node starting (introducer handshake included)
to the receiver's acknowledgement. Needs root (it builds network namespaces).
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

from shoal.lab.matrix import Matrix, all_pairs, expected_path, strategy_class

TARGET_MS = {"direct": 1000, "cone": 1000, "lan": 1000, "birthday": 10000, "relay": 10000}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--delay", type=float, default=0.05, help="one-way, per access link")
    parser.add_argument("--loss", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument("--markdown", type=Path, help="write the table to this file")
    args = parser.parse_args()
    # SIGTERM unwinds like Ctrl-C, so the lab's namespaces are always deleted.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    started = time.monotonic()
    rows = []
    with tempfile.TemporaryDirectory() as workdir, Matrix(
        Path(workdir), delay=args.delay, loss=args.loss, seed=args.seed
    ) as matrix:
        for sender, receiver in all_pairs():
            trials = [matrix.run(sender, receiver) for _ in range(args.runs)]
            times = [t.ms for t in trials if t.delivered and t.ms is not None]
            paths = sorted({t.path for t in trials if t.path})
            rows.append({
                "sender": sender,
                "receiver": receiver,
                "strategy": strategy_class(sender, receiver),
                "delivered": sum(t.delivered for t in trials),
                "runs": len(trials),
                "paths": paths,
                "expected_path": expected_path(sender, receiver),
                "median_ms": round(statistics.median(times), 1) if times else None,
                "max_ms": round(max(times), 1) if times else None,
                "errors": [t.error for t in trials if t.error],
            })
            print(f"{sender:>16} -> {receiver:<16} {rows[-1]['delivered']}/{args.runs} "
                  f"{','.join(paths)} median {rows[-1]['median_ms']} ms", file=sys.stderr)
    summary = {
        "delay_ms": args.delay * 1000,
        "loss": args.loss,
        "runs_per_pair": args.runs,
        "pairs": len(rows),
        "delivered": sum(r["delivered"] for r in rows),
        "trials": sum(r["runs"] for r in rows),
        "paths_as_expected": all(r["paths"] == [r["expected_path"]] for r in rows),
        "within_targets": all(
            r["median_ms"] is not None and r["median_ms"] < TARGET_MS[r["strategy"]]
            for r in rows
        ),
        "seconds": round(time.monotonic() - started, 1),
        "rows": rows,
    }
    if args.json:
        print(json.dumps(summary))
    if args.markdown:
        args.markdown.write_text(_markdown(summary))


def _markdown(summary: dict) -> str:
    lines = [
        "# NAT matrix",
        "",
        "Every ordered pair of NAT kinds, run through the CLI in the namespace lab",
        "(`shoal.lab`): `shoal introducer` on the lab's internet, `shoal listen` in the",
        "receiver's site, `shoal send` in the sender's. Each trial starts from cold NATs.",
        f"Access links: {summary['delay_ms']:g} ms one-way delay each, "
        f"{summary['loss'] * 100:g}% loss; {summary['runs_per_pair']} runs per pair.",
        "Time is the sender's `ms`: node start (introducer handshake included) to the",
        "receiver's acknowledgement. Regenerate with",
        "`sudo python bench/nat_matrix.py --runs "
        f"{summary['runs_per_pair']} --delay {summary['delay_ms'] / 1000:g} "
        "--markdown docs/nat-matrix.md`.",
        "",
        "NAT kinds: *public* (no NAT), *full-cone* (endpoint-independent mapping and",
        "filtering), *port-restricted* (masquerade: endpoint-independent mapping,",
        "address-and-port-dependent filtering), *symmetric* (masquerade fully-random: a new",
        "port per destination), *double* (a home NAT behind a carrier NAT), *shared* (two",
        "hosts behind one NAT).",
        "",
        "| sender | receiver | strategy | delivered | path | median ms | max ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in summary["rows"]:
        lines.append(
            f"| {row['sender']} | {row['receiver']} | {row['strategy']} | "
            f"{row['delivered']}/{row['runs']} | {', '.join(row['paths']) or '-'} | "
            f"{row['median_ms']} | {row['max_ms']} |"
        )
    lines += [
        "",
        f"Delivered {summary['delivered']} of {summary['trials']} trials; every path as "
        f"expected: {'yes' if summary['paths_as_expected'] else 'no'}; every median within "
        f"its target (< 1 s without a hard NAT, < 10 s with one): "
        f"{'yes' if summary['within_targets'] else 'no'}.",
        "",
        "Strategies: *direct* (one side reachable), *cone* (simultaneous open), *birthday*",
        "(one side maps per destination), *relay* (both do), *lan* (same NAT: LAN addresses).",
        "For comparison, HyperDHT 6.34 in a lab of the same kinds (no delay) connected 75 of",
        "78 trials and failed symmetric x symmetric every time.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
