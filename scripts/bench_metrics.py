#!/usr/bin/env python3
"""F1 + ROUGE-L over many prediction/reference pairs: rouge-score and the SQuAD F1 in Python
against `selfspec score`, side by side on one core, with the means compared.

    pip install rouge-score nltk
    cargo build --release
    python scripts/bench_metrics.py [--pairs 100000] [--selfspec target/release/selfspec]
"""
import argparse
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_metrics_fixture import f1_score  # noqa: E402  (the SQuAD v1.1 definition)
from rouge_score import rouge_scorer  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=100_000)
    ap.add_argument("--selfspec", default=os.path.join(ROOT, "target/release/selfspec"))
    args = ap.parse_args()
    text = ""
    for name in ("biomedical", "finance", "sports"):
        with open(os.path.join(ROOT, "sample-seeds", name + ".corpus.jsonl"), encoding="utf-8") as f:
            text += " ".join(json.loads(line)["text"] for line in f) + " "
    words = re.findall(r"\S+", text)
    rng = random.Random(3)

    def sentence():
        start = rng.randrange(len(words) - 40)
        return " ".join(words[start:start + rng.randint(3, 40)])

    pairs = [(sentence(), [sentence() for _ in range(rng.randint(1, 2))]) for _ in range(args.pairs)]
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "pairs.jsonl")
        with open(path, "w", encoding="utf-8") as f:
            for p, refs in pairs:
                f.write(json.dumps({"prediction": p, "references": refs}) + "\n")
        env = dict(os.environ, RAYON_NUM_THREADS="1")
        started = time.perf_counter()
        out = subprocess.run(["taskset", "-c", "0", args.selfspec, "score", path], capture_output=True, text=True,
                             env=env, check=True)
        ours_s = time.perf_counter() - started
        ours = json.loads(out.stdout)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    os.sched_setaffinity(0, {0})
    started = time.perf_counter()
    f1_sum = rouge_sum = 0.0
    for p, refs in pairs:
        f1_sum += max(f1_score(p, r) for r in refs)
        rouge_sum += max(scorer.score(r, p)["rougeL"].fmeasure for r in refs)
    ref_s = time.perf_counter() - started
    ref = {"f1": f1_sum / len(pairs) * 100, "rougeL": rouge_sum / len(pairs) * 100}
    print(f"{len(pairs)} pairs, one core")
    print(f"rouge-score + SQuAD F1 (Python): {ref_s:7.2f} s   F1 {ref['f1']:.9f}  ROUGE-L {ref['rougeL']:.9f}")
    print(f"selfspec score (process, incl. reading): {ours_s:7.2f} s   F1 {ours['f1']:.9f}  ROUGE-L {ours['rougeL']:.9f}")
    print(f"speed-up: {ref_s / ours_s:.1f}x; |ΔF1| {abs(ref['f1'] - ours['f1']):.2e}, |ΔROUGE-L| "
          f"{abs(ref['rougeL'] - ours['rougeL']):.2e}")


if __name__ == "__main__":
    main()
