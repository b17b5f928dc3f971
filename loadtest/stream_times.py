#!/usr/bin/env python3
"""Where a harness run's time went, from the stored messages' timestamps.

Run the harness against a server that outlives it (BENCHMARKS.md, "Profile of the burst,
evening"), then:

    PYTHONPATH=.tools/pyclient python3 loadtest/stream_times.py nats://127.0.0.1:4333

It picks the run whose PROOFS stream is largest (or the prefix given as a second argument),
reads every message's time from ACCEPTED, RESULTS and PROOFS, takes the block number from
each msg-id, and prints: when blocks were accepted, how results arrived per second, and how
far each team's proofs ran behind its results (the publication walk's lag).
"""

import asyncio
import json
import sys
from collections import defaultdict

import nats


async def times(nc, stream):
    """(subject, msg-id, unix seconds) of every message in `stream`."""
    info = json.loads((await nc.request(f"$JS.API.STREAM.INFO.{stream}", b"")).data)
    state = info["state"]
    js = nc.jetstream()
    out = []
    for seq in range(state["first_seq"], state["last_seq"] + 1):
        m = await js.get_msg(stream, seq)
        out.append((m.subject, (m.headers or {}).get("Nats-Msg-Id", ""), m.time.timestamp()))
    return out


def number(msg_id):
    # result/<team>/<chain>/<number>/…, proof/<team>/<chain>/<number>/…, block/<chain>/<number>/…
    digits = [p for p in msg_id.split("/") if p.isdigit()]
    return int(digits[0]) if digits else None


async def main():
    url = sys.argv[1] if len(sys.argv) > 1 else "nats://127.0.0.1:4333"
    nc = await nats.connect(url)
    if len(sys.argv) > 2:
        prefix = sys.argv[2]
    else:
        names = json.loads((await nc.request("$JS.API.STREAM.NAMES", b"{}")).data)["streams"]
        sizes = {}
        for name in (n for n in names if n.endswith("_PROOFS")):
            info = json.loads((await nc.request(f"$JS.API.STREAM.INFO.{name}", b"")).data)
            sizes[name[: -len("PROOFS")]] = info["state"]["messages"]
        prefix = max(sizes, key=sizes.get)
    accepted = await times(nc, prefix + "ACCEPTED")
    results = await times(nc, prefix + "RESULTS")
    proofs = await times(nc, prefix + "PROOFS")
    await nc.close()

    # The harness proves one block first and waits for it (its warm-up): time starts at the
    # first acceptance after the longest pause in the first few, if that pause is over 0.5 s.
    acc = sorted(t for _, _, t in accepted)
    head = acc[:8]
    pause, after = max(((b - a, i + 1) for i, (a, b) in enumerate(zip(head, head[1:]))), default=(0, 0))
    warm_up = after if pause > 0.5 else 0
    t0 = acc[warm_up]
    print(
        f"run {prefix}: {len(accepted)} blocks accepted ({warm_up} before the batch, left out), "
        f"{len(results)} results, {len(proofs)} proofs; seconds from the batch's first acceptance"
    )
    acc = [t - t0 for t in acc[warm_up:]]
    marks = sorted({1, len(acc) // 4, len(acc) // 2, 3 * len(acc) // 4, len(acc)} - {0})
    print("| blocks accepted | seconds after the first |")
    print("|---|---|")
    for k in marks:
        print(f"| {k} | {acc[k - 1]:.3f} |")

    per_second = defaultdict(int)
    for _, _, t in results:
        if t >= t0:
            per_second[int(t - t0)] += 1
    print("\n| second | results |")
    print("|---|---|")
    for second in sorted(per_second):
        print(f"| {second} | {per_second[second]} |")

    result_at = defaultdict(dict)
    for _, msg_id, t in results:
        parts = msg_id.split("/")
        result_at[parts[1]][number(msg_id)] = t
    print("\n| team | last result | last proof | walk lag p50 | walk lag max |")
    print("|---|---|---|---|---|")
    proof_at = defaultdict(dict)
    for _, msg_id, t in proofs:
        proof_at[msg_id.split("/")[1]][number(msg_id)] = t
    for team in sorted(proof_at):
        # A proof can go out once its own and every lower block's result is in: its lag is
        # how long after that it went.
        lags, ready = [], 0.0
        for n in sorted(proof_at[team]):
            ready = max(ready, result_at[team].get(n, ready))
            lags.append(proof_at[team][n] - ready)
        lags.sort()
        last_result = max(result_at[team].values()) - t0
        last_proof = max(proof_at[team].values()) - t0
        print(
            f"| {team} | {last_result:.3f} | {last_proof:.3f} | "
            f"{lags[len(lags) // 2]:.3f} | {lags[-1]:.3f} |"
        )


asyncio.run(main())
