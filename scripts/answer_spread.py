#!/usr/bin/env python3
"""How varied a model's answers are, per dataset and k, from an evaluation run's predictions.

    python3 scripts/answer_spread.py RUN/eval [--datasets bio-ddi,bio-topic] [--models base,s80-n60]

For each model, dataset and k: the share of answers equal to the model's most common answer
(normalised: lower case, trimmed), that answer, and how often the most common gold answer
occurs (what always answering it would score on exact match). A significant Δ between two
models that both give one answer to almost every example is a change of that one answer, not
of what the model understands; docs/RESULTS.md uses this to read its tables.
"""
import argparse
import collections

import eval_predictions


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="an evaluation run folder (holds predictions.jsonl)")
    ap.add_argument("--datasets", default="", help="comma-separated datasets (default: all)")
    ap.add_argument("--models", default="", help="comma-separated models (default: all)")
    args = ap.parse_args()
    want_d = set(filter(None, args.datasets.split(",")))
    want_m = set(filter(None, args.models.split(",")))
    groups = collections.defaultdict(dict)
    for m, d, k, i, pred, refs in eval_predictions.read(args.run):
        groups[(m, d, k)][i] = (pred, refs)
    print("| model | dataset | k | n | most common answer | its share | gold's most common answer's share |")
    print("|---|---|---:|---:|---|---:|---:|")
    for (m, d, k), rows in sorted(groups.items(), key=lambda x: (x[0][1], x[0][2], x[0][0])):
        if (want_d and d not in want_d) or (want_m and m not in want_m):
            continue
        norm = [r[0].strip().lower() for r in rows.values()]
        top, count = collections.Counter(norm).most_common(1)[0]
        gold = collections.Counter(r[1][0].strip().lower() for r in rows.values() if r[1])
        gshare = gold.most_common(1)[0][1] / len(rows) if gold else 0.0
        shown = top.replace("\n", " ").replace("|", "/")
        shown = shown if len(shown) <= 40 else shown[:40] + "…"
        print(f"| {m} | {d} | {k} | {len(rows)} | `{shown}` | {100 * count / len(rows):.0f} % | {100 * gshare:.0f} % |")


if __name__ == "__main__":
    main()
