#!/usr/bin/env python3
"""Messages each push0 role sent to the server during a harness run, per block.

Against a separate server (see BENCHMARKS.md), started before the harness:
    python3 loadtest/connz_counts.py http://127.0.0.1:8333 BLOCKS &
    PUSH0_NATS_URL=nats://127.0.0.1:4333 target/release/push0-loadtest --sections burst
It polls /connz every 0.5 s for 60 s and keeps the snapshot with the most messages (the
services' connections close when the run ends), then prints in_msgs and out_msgs per block
for each connection name. BLOCKS is the run's block count (2000 for the burst).
"""
import json
import sys
import time
import urllib.request


def snapshot(url):
    with urllib.request.urlopen(f"{url}/connz?limit=1000", timeout=2) as r:
        return json.load(r).get("connections", [])


def main():
    url, blocks = sys.argv[1], int(sys.argv[2])
    best, best_total = [], -1
    end = time.time() + 60
    while time.time() < end:
        try:
            conns = snapshot(url)
        except OSError:
            conns = []
        total = sum(c.get("in_msgs", 0) for c in conns)
        if total >= best_total:
            best, best_total = conns, total
        time.sleep(0.5)
    roles = {}
    for c in best:
        r = roles.setdefault(c.get("name", "?"), [0, 0, 0])
        r[0] += c.get("in_msgs", 0)
        r[1] += c.get("out_msgs", 0)
        r[2] += 1
    print(f"| connection | count | to the server per block | from the server per block |")
    print("|---|---|---|---|")
    for name, (i, o, n) in sorted(roles.items(), key=lambda t: -t[1][0]):
        print(f"| {name} | {n} | {i / blocks:.1f} | {o / blocks:.1f} |")
    print(f"| all | {len(best)} | {best_total / blocks:.1f} | |")


if __name__ == "__main__":
    main()
