#!/usr/bin/env python3
"""Interleaved A/B of two builds on the closed-loop latency figures.

Each build is a folder holding its own push0-loadtest and service binaries (the harness starts
the services beside its own executable), for instance a copy of target/release/push0* made
after building each commit:

    python3 loadtest/ab.py --a /tmp/old --b /tmp/new --pairs 12

Runs `push0-loadtest --sections latency` of A and B alternately, in A B B A order (so a drift
of the machine during the run weighs on both alike), and prints, per series and percentile,
each build's median over its runs, the median of the paired differences B - A, and in how
many pairs B was lower. With `--throughput` it runs the burst and the scaling run at 1 and
1,024 slots instead (about a minute each) and compares tasks/s and the efficiency at 1,024. On a shared 2-core machine one run's p50 moves by a quarter between
runs minutes apart: a difference is only worth reporting when most pairs agree on its sign.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

SERIES = [
    ("floor", lambda s: s["floor"]),
    ("overhead per task", lambda s: s["latency"]["task"]),
    ("overhead per block (split 4/2)", lambda s: s["latency"]["block_split"]),
    ("leg: publish of the block", lambda s: s["latency"]["hops"]["submit"]),
    ("hop: ingest", lambda s: s["latency"]["hops"]["ingest"]),
    ("hop: scheduler", lambda s: s["latency"]["hops"]["scheduler"]),
    ("hop: gateway", lambda s: s["latency"]["hops"]["gateway"]),
    ("hop: aggregator", lambda s: s["latency"]["hops"]["aggregator"]),
    ("leg: receipt of the proof", lambda s: s["latency"]["hops"]["deliver"]),
]
PERCENTILES = ("p50", "p90", "p99")
THROUGHPUT = [
    ("burst, tasks/s", lambda s: s["burst"]["tasks_per_s"]),
    ("efficiency at 1,024 slots, %", lambda s: s["scaling"][-1]["efficiency_pct"]),
]


def run(build: Path, samples: int, out: Path, throughput: bool) -> dict:
    """One run of `build` (latency, or burst and scaling); its R1 section."""
    sections = ["burst,scaling", "--slots", "1,1024"] if throughput else [
        "latency", "--samples", str(samples)]
    cmd = [str(build / "push0-loadtest"), "--sections", *sections, "--results-dir", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    report = json.loads((out / "latest.json").read_text())
    return report["sections"][0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--a", type=Path, required=True, help="folder of build A's binaries")
    parser.add_argument("--b", type=Path, required=True, help="folder of build B's binaries")
    parser.add_argument("--pairs", type=int, default=12)
    parser.add_argument("--samples", type=int, default=600, help="closed-loop samples per series")
    parser.add_argument("--throughput", action="store_true",
                        help="compare the burst's tasks/s and the efficiency at 1,024 slots")
    args = parser.parse_args()
    for build in (args.a, args.b):
        if not (build / "push0-loadtest").is_file():
            sys.exit(f"{build}/push0-loadtest missing")
    runs: dict[str, list[dict]] = {"A": [], "B": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.pairs):
            order = ("A", "B") if i % 2 == 0 else ("B", "A")
            for name in order:
                build = args.a if name == "A" else args.b
                runs[name].append(run(build, args.samples, Path(tmp) / f"{name}{i}",
                                      args.throughput))
            print(f"pair {i + 1}/{args.pairs} done", file=sys.stderr, flush=True)
    if args.throughput:
        print(f"{args.pairs} pairs (A B B A ...)\nA: {args.a}\nB: {args.b}\n")
        print("| figure | A median | B median | B - A (paired median) | B higher in |")
        print("|---|---|---|---|---|")
        for label, pick in THROUGHPUT:
            a = [pick(s) for s in runs["A"]]
            b = [pick(s) for s in runs["B"]]
            diff = [y - x for x, y in zip(a, b)]
            higher = sum(1 for d in diff if d > 0)
            print(f"| {label} | {statistics.median(a):.1f} | {statistics.median(b):.1f} "
                  f"| {statistics.median(diff):+.1f} | {higher}/{len(diff)} |")
        return 0
    print(f"{args.pairs} pairs (A B B A ...), {args.samples} samples per series; ms")
    print(f"A: {args.a}\nB: {args.b}\n")
    print("| series | pct | A median | B median | B - A (paired median) | B lower in |")
    print("|---|---|---|---|---|---|")
    for label, pick in SERIES:
        try:
            for s in runs["A"] + runs["B"]:
                pick(s)
        except KeyError:
            # A build from before the harness split this series.
            print(f"| {label} | - | - | - | - | - |")
            continue
        for pct in PERCENTILES:
            a = [pick(s)[pct] / 1000 for s in runs["A"]]
            b = [pick(s)[pct] / 1000 for s in runs["B"]]
            diff = [y - x for x, y in zip(a, b)]
            lower = sum(1 for d in diff if d < 0)
            print(f"| {label} | {pct} | {statistics.median(a):.2f} | {statistics.median(b):.2f} "
                  f"| {statistics.median(diff):+.2f} | {lower}/{len(diff)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
