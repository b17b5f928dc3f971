#!/usr/bin/env python3
"""Where a harness run's time went, from the stored messages' timestamps.

Run the harness against a server that outlives it (BENCHMARKS.md, "Profile of the burst,
evening"), then:

    PYTHONPATH=.tools/pyclient python3 loadtest/stream_times.py nats://127.0.0.1:4333

(.tools/pyclient is installed by .ci/install-tools.)

It picks the latest run (or the stream prefix given as a second argument, e.g. `TABCDEF0123_`),
reads every message's time from ACCEPTED, RESULTS and PROOFS, and prints: when blocks were
accepted (by arrival order), how results arrived per second, and, from the block numbers in
the msg-ids, how
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
    if state["messages"] == 0:
        return []
    js = nc.jetstream()
    out = []
    for seq in range(state["first_seq"], state["last_seq"] + 1):
        m = await js.get_msg(stream, seq)
        out.append((m.subject, (m.headers or {}).get("Nats-Msg-Id", ""), m.time.timestamp()))
    return out


def number(msg_id):
    # result/<team>/<chain>/<number>/… and proof/<team>/<chain>/<number>/…
    parts = msg_id.split("/")
    return int(parts[3]) if len(parts) > 3 and parts[3].isdigit() else None


async def main():
    url = sys.argv[1] if len(sys.argv) > 1 else "nats://127.0.0.1:4333"
    nc = await nats.connect(url)
    if len(sys.argv) > 2:
        prefix = sys.argv[2]
    else:
        names = json.loads((await nc.request("$JS.API.STREAM.NAMES", b"{}")).data)["streams"]
        # The latest run: the PROOFS stream written to last.
        latest = {}
        for name in (n for n in names if n.endswith("_PROOFS")):
            info = json.loads((await nc.request(f"$JS.API.STREAM.INFO.{name}", b"")).data)
            if info["state"]["messages"]:
                latest[name[: -len("PROOFS")]] = info["state"]["last_ts"]
        if not latest:
            sys.exit("no run with proofs on this server")
        prefix = max(latest, key=latest.get)
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

    # One chain per harness run: keyed by team and block number.
    result_at = defaultdict(dict)
    for _, msg_id, t in results:
        if number(msg_id) is not None:
            result_at[msg_id.split("/")[1]][number(msg_id)] = t
    print("\n| team | last result | last proof | walk lag p50 | walk lag max |")
    print("|---|---|---|---|---|")
    proof_at = defaultdict(dict)
    for _, msg_id, t in proofs:
        if number(msg_id) is not None:
            proof_at[msg_id.split("/")[1]][number(msg_id)] = t
    for team in sorted(proof_at):
        # A proof can go out once its own and every lower block's result is in: its lag is
        # how long after that it went.
        lags, ready, unmatched = [], 0.0, 0
        for n in sorted(proof_at[team]):
            if n not in result_at[team]:
                unmatched += 1
                continue
            ready = max(ready, result_at[team][n])
            lags.append(proof_at[team][n] - ready)
        if not lags:
            print(f"| {team} | - | - | - | - |")
            continue
        lags.sort()
        last_result = max(result_at[team].values()) - t0
        last_proof = max(proof_at[team].values()) - t0
        print(
            f"| {team} | {last_result:.3f} | {last_proof:.3f} | "
            f"{lags[len(lags) // 2]:.3f} | {lags[-1]:.3f} |"
            + (f" ({unmatched} proofs without a result left out)" if unmatched else "")
        )


asyncio.run(main())
