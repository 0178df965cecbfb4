#!/usr/bin/env python3
"""What the "stretch said twice" loop rule (decode::looping, LOOP_STRETCH..LOOP_STRETCH_MAX tokens
written twice back to back) would have done to a finished generation run made without it.

For each task list in RUN/tasks.jsonl it finds the first token at which the rule fires (tokens
from the model's own tokenizer, read from the GGUF by llama-cpp-python) and counts the kept
tasks whose instruction comes only after that point (tasks the rule would lose). For each
response in RUN/samples.jsonl and RUN/filtered.jsonl it reports whether the rule fires, and
where, against the response's whole length (tokens a looping response would not decode).

    python3 scripts/check_loop_rule.py RUN MODEL.gguf [--lo 10] [--hi 256]
"""

import argparse
import json
import os
import sys


def first_fire(toks, lo, hi):
    """Length of the shortest prefix of `toks` that ends in a stretch of lo..hi tokens written
    twice, that stretch not itself a shorter one repeated; None if none does."""
    for n in range(2 * lo, len(toks) + 1):
        last = toks[n - 1]
        for p in range(1, min(hi, n // 2) + 1):
            if toks[n - 1 - p] == last and toks[n - 2 * p : n - p] == toks[n - p : n]:
                if p >= lo:
                    return n, p
                break
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("model")
    ap.add_argument("--lo", type=int, default=10)
    ap.add_argument("--hi", type=int, default=256)
    args = ap.parse_args()
    try:
        from llama_cpp import Llama
    except ImportError:
        sys.exit("needs llama-cpp-python (pip install ../shared/wheels/llama_cpp_python-*.whl)")
    tok = Llama(model_path=args.model, vocab_only=True, verbose=False)

    def ids(text):
        return tok.tokenize(text.encode(), add_bos=False, special=False)

    lists = [json.loads(l) for l in open(os.path.join(args.run, "tasks.jsonl"))]
    fired = lost = 0
    for t in lists:
        toks = ids(t["text"])
        f = first_fire(toks, args.lo, args.hi)
        if not f:
            continue
        fired += 1
        kept_text = tok.detokenize(toks[: f[0]]).decode(errors="ignore")
        after = [x["instruction"] for x in t["tasks"] if x["instruction"] not in kept_text]
        lost += len(after)
        for a in after:
            print(f"list of prompt {t['prompt']}: would lose {a[:80]!r}")
    print(f"lists: {len(lists)}; the rule fires in {fired}; tasks kept from them that it would lose: {lost}"
          f" of {sum(len(t['tasks']) for t in lists)}")

    rows = []
    for name, outcome in (("samples.jsonl", None), ("filtered.jsonl", "rejection")):
        path = os.path.join(args.run, name)
        for line in open(path):
            r = json.loads(line)
            if "output" not in r:
                continue
            why = "kept" if outcome is None else r[outcome]["filter"]
            rows.append((why, r["id"], r["output"]))
    by = {}
    for why, rid, out in rows:
        toks = ids(out)
        f = first_fire(toks, args.lo, args.hi)
        b = by.setdefault(why, [0, 0, 0, 0])
        b[0] += 1
        b[2] += len(toks)
        if f:
            b[1] += 1
            b[3] += len(toks) - f[0]
            if why == "kept":
                print(f"kept {rid}: fires at token {f[0]} of {len(toks)} (stretch {f[1]}): {out[:160]!r}")
    print("| responses | count | the rule fires | tokens | tokens after it fires |")
    print("|---|---:|---:|---:|---:|")
    for why, (n, fires, total, after) in sorted(by.items()):
        print(f"| {why} | {n} | {fires} | {total} | {after} |")


if __name__ == "__main__":
    main()
