#!/usr/bin/env python3
"""Kept samples per minute and peak resident memory of `selfspec generate`, two binaries side by
side (issue 27's goal: this binary against commit 90f0ed6's).

Both binaries run the same job (seeds, corpus index, mode, k, N, seed) from a fresh run folder
with an empty configuration (every setting at its default), one after the other and interleaved
(base, new, base, new, ...), never two at once. Resident memory is read from /proc every
`--every` seconds (the curve goes to DIR/rss-<binary>-<round>.csv) and the peak from
/usr/bin/time. Prints one Markdown table and writes DIR/compare.json. A run that was stopped
continues when the same command is given again with `--tag resume`: the run folders are reused
and the new log, curve and results go to files whose names end in `-resume`.

    python3 scripts/compare_generation.py --base /work/bin/selfspec-90f0ed6 \
        --new target/release/selfspec --model SmolLM2-135M-Instruct.Q4_1.gguf \
        --seeds sample-seeds/biomedical.yaml --index INDEX_DIR --n 100 --rounds 3 --out DIR
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time


def rss_mb(pid):
    """Resident memory of `pid` and its children, in MB (0 when gone)."""
    total = 0
    pids = [pid]
    try:
        children = open(f"/proc/{pid}/task/{pid}/children").read().split()
        pids += [int(c) for c in children]
    except OSError:
        pass
    for p in pids:
        try:
            for line in open(f"/proc/{p}/status"):
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def one(binary, label, args, rnd):
    run = os.path.join(args.out, f"run-{label}-{rnd}")
    work = os.path.join(args.out, f"home-{label}-{rnd}")
    os.makedirs(work, exist_ok=True)
    config = os.path.join(work, "config.yaml")
    open(config, "w").write("{}\n")
    cmd = [
        "/usr/bin/time", "-v", binary, "generate",
        "--config", config, "--workspace", os.path.join(work, "ws"),
        "--model", args.model, "--seeds", args.seeds, "--corpus", args.index,
        "--mode", "marginal", "--k", str(args.k), "--n", str(args.n), "--seed", str(args.seed),
        "--run", run,
    ]
    samples = os.path.join(run, "samples.jsonl")
    # A continued run (--tag) starts with the samples kept before; the rate counts only this call's.
    before = sum(1 for line in open(samples) if line.strip()) if os.path.exists(samples) else 0
    env = dict(os.environ, HOME=work, XDG_CONFIG_HOME=os.path.join(work, "cfg"), XDG_DATA_HOME=os.path.join(work, "data"))
    tag = f"-{args.tag}" if args.tag else ""
    log = open(os.path.join(args.out, f"log-{label}-{rnd}{tag}.txt"), "w")
    started = time.time()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    curve = []
    while proc.poll() is None:
        # /usr/bin/time's child is the binary.
        curve.append((round(time.time() - started, 1), round(rss_mb(proc.pid), 1)))
        for _ in range(int(args.every * 10)):
            if proc.poll() is not None:
                break
            time.sleep(0.1)
    wall = time.time() - started
    log.close()
    text = open(os.path.join(args.out, f"log-{label}-{rnd}{tag}.txt")).read()
    peak = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    peak_mb = int(peak.group(1)) / 1024 if peak else max((m for _, m in curve), default=0)
    with open(os.path.join(args.out, f"rss-{label}-{rnd}{tag}.csv"), "w") as f:
        f.write("seconds,rss_mb\n")
        for t, m in curve:
            f.write(f"{t},{m}\n")
    kept = 0
    if os.path.exists(samples):
        kept = sum(1 for line in open(samples) if line.strip())
    counters = {}
    events = os.path.join(run, "events.jsonl")
    if os.path.exists(events):
        for line in open(events):
            try:
                e = json.loads(line)
            except ValueError:
                continue
            if e.get("event") in ("batch", "finished"):
                counters = e.get("counters", counters)
    return {
        "binary": label,
        "round": rnd,
        "exit": proc.returncode,
        "wall_s": round(wall, 1),
        "kept": kept,
        "kept_before": before,
        "kept_per_min": round((kept - before) / (wall / 60), 2),
        "peak_rss_mb": round(peak_mb, 1),
        "prompts": counters.get("prompts"),
        "parsed": counters.get("parsed"),
        "time": counters.get("time"),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True)
    ap.add_argument("--new", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--seeds", required=True)
    ap.add_argument("--index", required=True)
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--every", type=float, default=10.0, help="seconds between memory samples")
    ap.add_argument("--out", required=True)
    ap.add_argument("--only", choices=["base", "new"], help="run one binary only")
    ap.add_argument("--new-first", action="store_true", help="in each round, run the new binary first")
    ap.add_argument("--tag", help="continue the run folders already in DIR (the same command resumes a run) "
                    "and write this call's log, curve and results under names ending in -TAG")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    results = []
    for rnd in range(args.rounds):
        pair = [("base", args.base), ("new", args.new)]
        for label, binary in (pair[::-1] if args.new_first else pair):
            if args.only and label != args.only:
                continue
            r = one(binary, label, args, rnd)
            print(json.dumps(r), file=sys.stderr, flush=True)
            results.append(r)
            name = f"compare-{args.tag}.json" if args.tag else "compare.json"
            json.dump(results, open(os.path.join(args.out, name), "w"), indent=1)
    print(f"| binary | round | N asked | kept | wall s | kept/min | peak RSS MB | exit |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['binary']} | {r['round']} | {args.n} | {r['kept']} | {r['wall_s']} | {r['kept_per_min']} | {r['peak_rss_mb']} | {r['exit']} |")
    by = {}
    for r in results:
        by.setdefault(r["binary"], []).append(r)
    if "base" in by and "new" in by:
        b = statistics.mean(r["kept_per_min"] for r in by["base"])
        n = statistics.mean(r["kept_per_min"] for r in by["new"])
        ratios = [x["kept_per_min"] / y["kept_per_min"] for x, y in zip(by["new"], by["base"]) if y["kept_per_min"] > 0]
        print(f"\nmean kept/min: base {b:.2f}, new {n:.2f}, ratio {n / b:.2f}" if b > 0 else "")
        if ratios:
            print(f"per-round ratios: {', '.join(f'{x:.2f}' for x in ratios)}")


if __name__ == "__main__":
    main()
