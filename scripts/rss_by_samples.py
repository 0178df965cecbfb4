#!/usr/bin/env python3
"""Resident memory of a generation run against the samples it had kept by then.

    python3 scripts/rss_by_samples.py RUN_DIR RSS_CSV [RSS_CSV ...] [--bucket 50]

RUN_DIR is the run folder (its events.jsonl gives when each sample was kept); each RSS_CSV is the
curve `scripts/compare_generation.py` wrote for one process (`seconds,rss_mb`, seconds from the
process start): a run stopped and continued has one per process, in order. The i-th curve's clock
is aligned at the run's i-th `started` event, which comes a few seconds after its process starts
(the model is loaded first), so a sample may fall one 10-second reading early.
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
    p.add_argument("rss", nargs="+")
    p.add_argument("--bucket", type=int, default=50)
    args = p.parse_args()
    events = os.path.join(args.run, "events.jsonl")
    starts, kept_at = [], []
    with open(events) as f:
        for n, line in enumerate(f, 1):
            try:
                e = json.loads(line)
            except ValueError:
                # A torn last line (the run was stopped while writing it) is not a kept sample.
                print(f"note: {events}:{n} is not JSON; left out", file=sys.stderr)
                continue
            if e.get("event") == "started":
                starts.append(e["time"])
            elif e.get("event") == "kept":
                kept_at.append(e["time"])
    if not starts:
        sys.exit(f"{events}: no started event; is this a generation run folder?")
    if len(args.rss) > len(starts):
        sys.exit(f"{events}: {len(starts)} started events for {len(args.rss)} curves; one curve per process")
    curve = []
    for path, started in zip(args.rss, starts):
        with open(path) as f:
            readings = [(started + float(r["seconds"]), float(r["rss_mb"])) for r in csv.DictReader(f)]
        if not readings:
            sys.exit(f"{path}: no readings")
        curve += readings
    kept_at.sort()
    buckets = {}
    for t, mb in curve:
        if mb <= 0:
            continue
        kept = sum(1 for k in kept_at if k <= t)
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
