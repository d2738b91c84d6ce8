"""First contact behind NATs, Shoal and HyperDHT side by side in one NAT lab run.

    sudo python bench/first_contact.py --runs 3 --delay 0.02 --loss 0.01 \\
        --markdown docs/nat-matrix.md

For every ordered pair of NAT kinds, trials of both systems alternate, each from cold
NATs. Shoal: ``shoal introducer`` on the lab's internet, ``shoal listen`` in the
receiver's site, and a sender node (this file, ``sender`` mode) that starts, waits for
its introducer and NAT check, then sends one message and waits for the acknowledgement.
HyperDHT (``bench/hyperdht/lab.js``, installed here with npm for this comparison only): a
five-node DHT on the lab's internet, an echo server in the receiver's site, and a client
that bootstraps, dials, and times the stream's open and the echo of one message.
"dial" columns start once each sender is ready (introducer answered, NAT known; DHT
bootstrapped), "start" columns when its process began. Needs root, Node.js and npm.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from shoal.lab.matrix import Matrix, all_pairs, strategy_class

HERE = Path(__file__).resolve().parent
HYPERDHT = HERE / "hyperdht"
DHT_PORT = 49737
MARK_BEGIN = "<!-- first-contact: begin -->"
MARK_END = "<!-- first-contact: end -->"


def sender_main(introducer: str, peer_id: str, identity: str) -> None:
    """Run inside the sender's namespace: one timed message to ``peer_id``."""
    import shoal
    from shoal.identity import Identity

    async def body() -> dict:
        loop = asyncio.get_running_loop()
        started = loop.time()
        async with shoal.Node(Identity.load_or_create(identity), introducers=[introducer],
                              lan_discovery=False) as node:
            await node.wait_for_introducers(timeout=10)
            await node.wait_for_nat(timeout=10)
            dialed = loop.time()
            delivery = await node.send(peer_id, b"across the NATs", timeout=30)
            done = loop.time()
        return {"event": "delivered", "path": delivery.path,
                "dial_to_ack_ms": (done - dialed) * 1000,
                "start_to_ack_ms": (done - started) * 1000}

    try:
        print(json.dumps(asyncio.run(body())))
    except shoal.ShoalError as exc:
        print(json.dumps({"event": "error", "message": str(exc)}))


class Comparison:
    """A running NAT lab with Shoal's introducer and a small HyperDHT."""

    def __init__(self, matrix: Matrix) -> None:
        self.matrix = matrix
        self.lab = matrix.lab
        self.bootstrap = f"{self.lab.introducer_address.split(':')[0]}:{DHT_PORT}"

    def start_dht(self) -> None:
        log = self.matrix.workdir / "dht.log"
        with log.open("w") as sink:
            self.lab.spawn(self.lab.server,
                           ["node", str(HYPERDHT / "lab.js"), "testnet",
                            self.bootstrap.split(":")[0], str(DHT_PORT), "5"],
                           stdout=sink, text=True)
        deadline = time.monotonic() + 60
        while '"ready"' not in log.read_text():
            if time.monotonic() > deadline:
                raise RuntimeError(f"the DHT did not start: {log.read_text()!r}")
            time.sleep(0.1)

    def shoal_trial(self, sender: str, receiver: str) -> dict:
        self.lab.flush_conntrack()
        source, target = self.matrix.hosts(sender, receiver)
        with self.matrix.listening(target) as (peer_id, _):
            if peer_id is None:
                return {"error": "listener not ready"}
            result = subprocess.run(
                self.lab.command(source, [
                    sys.executable, str(Path(__file__).resolve()), "sender",
                    self.lab.introducer_address, peer_id,
                    str(self.matrix.workdir / f"{source.netns}.key")]),
                capture_output=True, text=True, env=self.matrix.env, timeout=90, check=False)
        return _last_json(result.stdout) or {"error": result.stderr[-300:]}

    def hyperdht_trial(self, sender: str, receiver: str) -> dict:
        self.lab.flush_conntrack()
        source, target = self.matrix.hosts(sender, receiver)
        server = self.lab.spawn(target, ["node", str(HYPERDHT / "lab.js"), "server",
                                         self.bootstrap],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            assert server.stdout is not None
            ready = _last_json(server.stdout.readline())
            if not ready or ready.get("event") != "ready":
                return {"error": "server not ready"}
            result = subprocess.run(
                self.lab.command(source, ["node", str(HYPERDHT / "lab.js"), "client",
                                          self.bootstrap, ready["public_key"]]),
                capture_output=True, text=True, timeout=60, check=False)
            return _last_json(result.stdout) or {"error": result.stderr[-300:]}
        finally:
            self.lab.stop(server)


def _last_json(text: str) -> dict | None:
    for line in reversed(text.strip().splitlines()):
        try:
            return json.loads(line)
        except json.JSONDecodeError:
            continue
    return None


def _median(trials: list[dict], key: str) -> float | None:
    values = [t[key] for t in trials if t.get("event") == "delivered"]
    return round(statistics.median(values), 1) if values else None


def compare(args: argparse.Namespace) -> dict:
    if not (HYPERDHT / "node_modules" / "hyperdht").is_dir():
        subprocess.run(["npm", "install", "--no-audit", "--no-fund"], cwd=HYPERDHT,
                       check=True, capture_output=True)
    rows = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as workdir, Matrix(
        Path(workdir), delay=args.delay, loss=args.loss, seed=args.seed
    ) as matrix:
        comparison = Comparison(matrix)
        comparison.start_dht()
        pairs = [p for p in all_pairs() if not args.only or f"{p[0]}/{p[1]}" in args.only]
        for sender, receiver in pairs:
            shoal_trials, dht_trials = [], []
            for _ in range(args.runs):
                shoal_trials.append(comparison.shoal_trial(sender, receiver))
                dht_trials.append(comparison.hyperdht_trial(sender, receiver))
            row = {
                "sender": sender, "receiver": receiver,
                "strategy": strategy_class(sender, receiver),
                "shoal_delivered": sum(t.get("event") == "delivered" for t in shoal_trials),
                "shoal_paths": sorted({t["path"] for t in shoal_trials if "path" in t}),
                "shoal_dial_to_ack_ms": _median(shoal_trials, "dial_to_ack_ms"),
                "shoal_start_to_ack_ms": _median(shoal_trials, "start_to_ack_ms"),
                "hyperdht_opened": sum(t.get("event") == "delivered" for t in dht_trials),
                "hyperdht_dial_to_open_ms": _median(dht_trials, "dial_to_open_ms"),
                "hyperdht_dial_to_echo_ms": _median(dht_trials, "dial_to_echo_ms"),
                "hyperdht_start_to_open_ms": _median(dht_trials, "start_to_open_ms"),
                "runs": args.runs,
                "errors": [t.get("error") or t.get("message")
                           for t in shoal_trials + dht_trials
                           if t.get("event") != "delivered"][:3],
            }
            rows.append(row)
            print(json.dumps(row), file=sys.stderr)
    return {"delay_ms": args.delay * 1000, "loss": args.loss, "runs_per_pair": args.runs,
            "seconds": round(time.monotonic() - started, 1), "rows": rows}


def _table(summary: dict) -> str:
    def cell(value: float | None) -> str:
        return "-" if value is None else f"{value:g}"

    lines = [
        MARK_BEGIN,
        "## First contact: Shoal and HyperDHT side by side",
        "",
        f"One lab run, both systems alternating on every pair: {summary['delay_ms']:g} ms "
        f"one-way delay and {summary['loss'] * 100:g}% loss on every site's access link, "
        f"median of {summary['runs_per_pair']} trials, cold NATs each time. Regenerate "
        "with `sudo python bench/first_contact.py --runs "
        f"{summary['runs_per_pair']} --delay {summary['delay_ms'] / 1000:g} "
        f"--loss {summary['loss']:g} --markdown docs/nat-matrix.md`.",
        "",
        "*dial*: from the moment the sender is ready (Shoal: its introducer answered and its",
        "NAT check finished; HyperDHT: fully bootstrapped) to the first message",
        "acknowledged (Shoal) or the stream open and the echo of one message (HyperDHT).",
        "*start*: from the sender's process starting; Shoal's sender waits for its NAT",
        "check before it dials (about 1 s behind a NAT; `shoal send` does not wait),",
        "HyperDHT's for its bootstrap, which includes its own NAT analysis.",
        "Shoal's first message rides in its first INIT (Noise IK with the key the",
        "introducer handed on; see protocol.md), so it is acknowledged in the RESP: a",
        "round trip to the introducer, then one to the peer.",
        "",
        "| sender | receiver | Shoal ok | Shoal path | Shoal dial→ack ms | HyperDHT ok "
        "| HyperDHT dial→open ms | HyperDHT dial→echo ms | Shoal start→ack ms "
        "| HyperDHT start→open ms |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in summary["rows"]:
        lines.append(
            f"| {row['sender']} | {row['receiver']} | {row['shoal_delivered']}/{row['runs']} "
            f"| {', '.join(row['shoal_paths']) or '-'} | {cell(row['shoal_dial_to_ack_ms'])} "
            f"| {row['hyperdht_opened']}/{row['runs']} "
            f"| {cell(row['hyperdht_dial_to_open_ms'])} "
            f"| {cell(row['hyperdht_dial_to_echo_ms'])} "
            f"| {cell(row['shoal_start_to_ack_ms'])} "
            f"| {cell(row['hyperdht_start_to_open_ms'])} |")
    both = [r for r in summary["rows"] if r["shoal_dial_to_ack_ms"] is not None
            and r["hyperdht_dial_to_open_ms"] is not None]
    ahead = sum(r["shoal_dial_to_ack_ms"] <= r["hyperdht_dial_to_open_ms"] for r in both)
    lines += [
        "",
        f"Shoal's first message was acknowledged no later than HyperDHT's stream opened in "
        f"{ahead} of {len(both)} pairs both systems connected.",
        MARK_END,
        "",
    ]
    return "\n".join(lines)


def write_markdown(path: Path, summary: dict) -> None:
    """Put the table in ``path`` between its markers (appended the first time)."""
    table = _table(summary)
    text = path.read_text() if path.exists() else ""
    if MARK_BEGIN in text and MARK_END in text:
        before, rest = text.split(MARK_BEGIN, 1)
        after = rest.split(MARK_END, 1)[1].lstrip("\n")
        text = before + table + after
    else:
        text = text.rstrip("\n") + "\n\n" + table
    path.write_text(text)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "sender":
        sender_main(*sys.argv[2:5])
        return
    if len(sys.argv) > 1 and sys.argv[1] == "table":  # table SUMMARY.json MARKDOWN
        write_markdown(Path(sys.argv[3]), json.loads(Path(sys.argv[2]).read_text()))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--delay", type=float, default=0.02, help="one-way, per access link")
    parser.add_argument("--loss", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--only", nargs="*", help="pairs as sender/receiver kinds")
    parser.add_argument("--markdown", type=Path, help="put the table in this file")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    summary = compare(args)
    print(json.dumps(summary))
    if args.markdown:
        write_markdown(args.markdown, summary)


if __name__ == "__main__":
    main()
