#!/usr/bin/env python3
"""How a scaling run's time splits into the first round's ramp, the rounds and the tail.

The harness keeps every service's log in loadtest/results/logs (or --results-dir/logs), named
by the deployment's prefix. For one deployment of the scaling section:

    target/release/push0-loadtest --sections scaling --slots 1024
    python3 loadtest/ramp.py loadtest/results/logs/<prefix>

From ingest's "block accepted" lines, the gateways' "task done" lines (end − prove_ms is the
start) and the aggregator's "block proof published" lines, it prints, from the first block
accepted after the warm-up block: when the last block was accepted, when tasks started
(quantiles; the last first-round start is the ramp), when the last task ended and the last
proof came out, and each gateway's round starts.
"""
import datetime
import glob
import re
import sys

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def lines(path):
    with open(path) as f:
        for line in f:
            yield ANSI.sub("", line)


def at(stamp):
    return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def main(prefix):
    accepted = {}
    for line in lines(f"{prefix}-ingest.log"):
        m = re.match(r"(\S+).*block accepted chain=\S+ number=(\d+)", line)
        if m:
            accepted[int(m.group(2))] = at(m.group(1))
    # Block 1 is the warm-up the harness proves before the measured blocks.
    t0 = accepted[2]
    tasks = []
    for path in sorted(glob.glob(f"{prefix}-gateway-*.log")):
        gateway = path.rsplit("gateway-", 1)[1][: -len(".log")]
        for line in lines(path):
            m = re.match(r"(\S+).*number=(\d+).*task done prove_ms=(\d+)", line)
            if m and int(m.group(2)) > 1:
                end = at(m.group(1)) - t0
                tasks.append((end - int(m.group(3)) / 1000, end, gateway))
    proofs = []
    for line in lines(f"{prefix}-aggregator.log"):
        m = re.match(r"(\S+).*block proof published .* number=(\d+)", line)
        if m and int(m.group(2)) > 1:
            proofs.append(at(m.group(1)) - t0)
    starts = sorted(t[0] for t in tasks)
    n = len(starts)
    print(f"blocks accepted: {len(accepted) - 1}, last at {accepted[max(accepted)] - t0:.3f} s")
    for q in (0.0, 0.25, 0.5, 0.75, 0.99, 1.0):
        print(f"task starts q{q:.2f}: {starts[min(n - 1, int(q * n))]:.3f} s")
    last_end = max(t[1] for t in tasks)
    print(f"last task ended {last_end:.3f} s, last proof {max(proofs):.3f} s "
          f"(tail {max(proofs) - last_end:.3f} s), {len(proofs)} proofs")
    by_gateway = {}
    for start, _, gateway in tasks:
        by_gateway.setdefault(gateway, []).append(start)
    for gateway, s in sorted(by_gateway.items()):
        s.sort()
        # The scaling section's provers take 1 s: each second of starts is a round.
        rounds = int(s[-1] - s[0]) + 1
        per = len(s) // rounds
        first = [f"{s[i * per]:.3f}" for i in range(rounds)]
        last = [f"{s[(i + 1) * per - 1]:.3f}" for i in range(rounds)]
        print(f"gateway {gateway}: {len(s)} tasks, round starts {first}, last starts {last}")


if __name__ == "__main__":
    main(sys.argv[1])
