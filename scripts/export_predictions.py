#!/usr/bin/env python3
"""Writes one model's answers from an evaluation run as `selfspec score --paired` input.

    python3 scripts/export_predictions.py RUN/eval --model NAME [--k 0] \
        [--datasets a,b] [--pick DATASET=MODEL ...] > out.jsonl

One line per example, `{"id": "DATASET:K:INDEX", "prediction", "references"}`, so two exports of
the same run pair up by id. `--pick DATASET=MODEL` takes that dataset's answers from another
model (for a column such as "each expert on its own task"). docs/RESULTS.md compares Seeded LoRA
columns this way.
"""
import argparse
import json
import sys

import eval_predictions


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="an evaluation run folder (holds predictions.jsonl)")
    ap.add_argument("--model", required=True, help="the model whose answers to write")
    ap.add_argument("--k", type=int, default=None, help="only this number of shots (default: all)")
    ap.add_argument("--datasets", default="", help="comma-separated datasets (default: all)")
    ap.add_argument("--pick", action="append", default=[], metavar="DATASET=MODEL",
                    help="take DATASET's answers from MODEL instead")
    args = ap.parse_args()
    pick = {}
    for p in args.pick:
        if "=" not in p:
            sys.exit(f"--pick {p!r}: expected DATASET=MODEL")
        d, m = p.split("=", 1)
        pick[d] = m
    want = set(filter(None, args.datasets.split(",")))
    seen = {}
    for m, d, k, i, pred, refs in eval_predictions.read(args.run):
        if (want and d not in want) or (args.k is not None and k != args.k):
            continue
        if m != pick.get(d, args.model):
            continue
        seen[f"{d}:{k}:{i}"] = {"id": f"{d}:{k}:{i}", "prediction": pred, "references": refs}
    if not seen:
        sys.exit(f"{args.run}: no answers of {args.model!r} with these filters")
    for key in sorted(seen):
        print(json.dumps(seen[key], ensure_ascii=False))


if __name__ == "__main__":
    main()
