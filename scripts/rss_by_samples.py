#!/usr/bin/env python3
"""Resident memory of a generation run against the samples it had kept by then.

    python3 scripts/rss_by_samples.py RUN_DIR RSS_CSV [--bucket 50]

RUN_DIR is the run folder (its events.jsonl gives when each sample was kept); RSS_CSV is the
curve `scripts/compare_generation.py` wrote (`seconds,rss_mb`, seconds from the process start).
The two clocks are aligned at the run's `started` event, which comes a few seconds after the
process starts (the model is loaded first), so a sample may fall one 10-second reading early.
Prints one Markdown table: per bucket of kept samples, the readings in it and their lowest,
median and highest RSS, and the last line gives the whole run's.
"""

import argparse
import csv
import json
import os
import statistics
import sys


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run")
    p.add_argument("rss")
    p.add_argument("--bucket", type=int, default=50)
    args = p.parse_args()
    events = os.path.join(args.run, "events.jsonl")
    started, kept_at = None, []
    with open(events) as f:
        for n, line in enumerate(f, 1):
            try:
                e = json.loads(line)
            except ValueError:
                # A torn last line (the run was stopped while writing it) is not a kept sample.
                print(f"note: {events}:{n} is not JSON; left out", file=sys.stderr)
                continue
            if e.get("event") == "started" and started is None:
                started = e["time"]
            elif e.get("event") == "kept":
                kept_at.append(e["time"])
    if started is None:
        sys.exit(f"{events}: no started event; is this a generation run folder?")
    with open(args.rss) as f:
        curve = [(float(r["seconds"]), float(r["rss_mb"])) for r in csv.DictReader(f)]
    if not curve:
        sys.exit(f"{args.rss}: no readings")
    # The process started about curve[0]'s time before its first reading; the run's clock starts
    # at its started event.
    rel = sorted(t - started for t in kept_at)
    buckets = {}
    for t, mb in curve:
        if mb <= 0:
            continue
        kept = sum(1 for k in rel if k <= t)
        buckets.setdefault(kept // args.bucket, []).append(mb)
    print("| samples kept | readings | lowest MB | median MB | highest MB |")
    print("|---|---:|---:|---:|---:|")
    for b in sorted(buckets):
        v = buckets[b]
        lo, hi = b * args.bucket, b * args.bucket + args.bucket - 1
        print(f"| {lo}–{hi} | {len(v)} | {min(v):,.0f} | {statistics.median(v):,.0f} | {max(v):,.0f} |")
    allv = [mb for _, mb in curve if mb > 0]
    print(f"| all ({len(kept_at)} kept) | {len(allv)} | {min(allv):,.0f} | {statistics.median(allv):,.0f} | {max(allv):,.0f} |")


if __name__ == "__main__":
    main()
