#!/usr/bin/env python3
"""Pairs of prediction files and their paired statistics by a NumPy reference, for tests/stats.rs.

Writes tests/fixtures/paired/NAME.a.jsonl, NAME.b.jsonl ({id, prediction, references} a line,
B's lines in another order, some with fields other tools add) and tests/fixtures/paired/expected.json:
per pair, n; for F1 and ROUGE-L (per line the best over the references: SQuAD v1.1 token F1 as the
official script defines it, rouge-score's ROUGE-L F-measure with use_stemmer=True; 0–100) each
file's mean with its 95 % percentile-bootstrap interval, Δ = mean(B − A) with its paired bootstrap
interval (100,000 resamples, np.percentile), and the two-sided approximate-randomisation p
(100,000 trials, each example's sign flipped with probability ½, p = (c + 1)/(trials + 1)); exact
match (SQuAD's normalisation) of each file and McNemar's exact test (scipy.stats.binomtest on the
discordant pairs, p = ½).

    pip install numpy scipy rouge-score nltk && python scripts/make_paired_fixture.py
"""
import collections
import json
import os
import random
import re
import string

import numpy as np
from rouge_score import rouge_scorer
from scipy.stats import binomtest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "paired")
RESAMPLES = 100_000


def normalize_answer(s):
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def f1_score(prediction, truth):
    p = normalize_answer(prediction).split()
    g = normalize_answer(truth).split()
    same = sum((collections.Counter(p) & collections.Counter(g)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(g)
    return 2 * precision * recall / (precision + recall)


SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def scores(line):
    refs = line["references"]
    f1 = max((f1_score(line["prediction"], r) for r in refs), default=0.0)
    rl = max((SCORER.score(r, line["prediction"])["rougeL"].fmeasure for r in refs), default=0.0)
    em = any(normalize_answer(line["prediction"]) == normalize_answer(r) for r in refs)
    return 100 * f1, 100 * rl, em


def bootstrap_ci(x, rng):
    idx = rng.integers(0, len(x), size=(RESAMPLES, len(x)))
    means = x[idx].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return [float(lo), float(hi)]


def randomisation_p(d, rng):
    signs = rng.choice([-1.0, 1.0], size=(RESAMPLES, len(d)))
    observed = abs(d.mean())
    stat = np.abs((signs * d).mean(axis=1))
    c = int((stat >= observed - 1e-9).sum())
    return (c + 1) / (RESAMPLES + 1)


def reference(a_lines, b_lines, rng):
    by_id = {l["id"]: l for l in b_lines}
    sa = np.array([scores(l) for l in a_lines], dtype=float)
    sb = np.array([scores(by_id[l["id"]]) for l in a_lines], dtype=float)
    out = {"n": len(a_lines)}
    for col, name in [(0, "f1"), (1, "rougeL")]:
        a, b = sa[:, col], sb[:, col]
        d = b - a
        out[name] = {
            "a": float(a.mean()), "b": float(b.mean()),
            "a_ci": bootstrap_ci(a, rng), "b_ci": bootstrap_ci(b, rng),
            "delta": float(d.mean()), "ci": bootstrap_ci(d, rng), "p": randomisation_p(d, rng),
        }
    ea, eb = sa[:, 2].astype(bool), sb[:, 2].astype(bool)
    only_a, only_b = int((ea & ~eb).sum()), int((eb & ~ea).sum())
    p = binomtest(min(only_a, only_b), only_a + only_b, 0.5).pvalue if only_a + only_b else 1.0
    out["exact"] = {"a": 100 * float(ea.mean()), "b": 100 * float(eb.mean()), "mcnemar_p": float(p),
                    "only_a": only_a, "only_b": only_b}
    return out


LABELS = ["positive", "negative", "neutral"]
ANSWERS = ["cyclooxygenase", "phenylalanine hydroxylase", "beta cells", "vitamin K epoxide reductase",
           "the liver", "2031", "2.4 times EBITDA", "net interest margin", "4.25%", "tumour necrosis factor",
           "angiotensin-converting enzyme", "the proximal tubule", "$0.94 per share", "dopamine D2 receptors"]


def noisy(answer, rng, quality):
    """An answer of the given quality: right, partly right (extra or missing words) or wrong."""
    r = rng.random()
    if r < quality:
        return answer if rng.random() < 0.6 else answer.capitalize() + "."
    if r < quality + (1 - quality) / 2:
        words = answer.split()
        extra = rng.choice(["The answer is", "It is", "Probably", "Mainly"])
        return extra + " " + " ".join(words[: max(1, len(words) - rng.randrange(2))])
    return rng.choice(ANSWERS)


def label_pair(rng, n, qa, qb):
    a, b = [], []
    for i in range(n):
        gold = LABELS[i % 3]
        pick = lambda q: gold if rng.random() < q else rng.choice([l for l in LABELS if l != gold] + ["The tone is " + gold])
        a.append({"id": f"s{i}", "prediction": pick(qa), "references": [gold]})
        b.append({"id": f"s{i}", "prediction": pick(qb), "references": [gold], "model": "tuned", "k": 0})
    return a, b


def clean_label_pair(rng, n, qa, qb):
    """Answers that are a label or another label: every score is 0 or 100 (selfspec computes these
    distributions exactly; the reference still draws 100,000 times)."""
    a, b = [], []
    for i in range(n):
        gold = LABELS[i % 3]
        pick = lambda q: gold if rng.random() < q else rng.choice([l for l in LABELS if l != gold])
        a.append({"id": f"c{i}", "prediction": pick(qa), "references": [gold]})
        b.append({"id": f"c{i}", "prediction": pick(qb), "references": [gold]})
    return a, b


def qa_pair(rng, n, qa, qb, numeric_ids=False):
    a, b = [], []
    for i in range(n):
        gold = rng.choice(ANSWERS)
        refs = [gold] + ([gold.split()[-1]] if rng.random() < 0.3 else [])
        key = i if numeric_ids else f"q-{i:03d}"
        a.append({"id": key, "prediction": noisy(gold, rng, qa), "references": refs})
        b.append({"id": key, "prediction": noisy(gold, rng, qb), "references": refs, "doc_id": i})
    return a, b


def main():
    rng = random.Random(20261205)
    np_rng = np.random.default_rng(20261205)
    os.makedirs(OUT, exist_ok=True)
    pairs = {}
    qa_a, _ = qa_pair(rng, 40, 0.5, 0.5)
    pairs["identical"] = (qa_a, [dict(l) for l in qa_a])
    pairs["labels_gain"] = label_pair(rng, 150, 0.45, 0.62)
    pairs["qa_small"] = qa_pair(rng, 120, 0.40, 0.44)
    pairs["qa_numeric_ids"] = qa_pair(rng, 200, 0.55, 0.35, numeric_ids=True)
    pairs["labels_clean"] = clean_label_pair(rng, 160, 0.50, 0.58)
    expected = {}
    for name, (a, b) in pairs.items():
        b_shuffled = list(b)
        rng.shuffle(b_shuffled)
        for suffix, lines in (("a", a), ("b", b_shuffled)):
            with open(os.path.join(OUT, f"{name}.{suffix}.jsonl"), "w", encoding="utf-8") as f:
                for l in lines:
                    f.write(json.dumps(l, ensure_ascii=False) + "\n")
        expected[name] = reference(a, b, np_rng)
    with open(os.path.join(OUT, "expected.json"), "w", encoding="utf-8") as f:
        json.dump(expected, f, indent=1)
        f.write("\n")
    for name, e in expected.items():
        print(name, e["n"], {k: round(e[k]["delta"], 2) for k in ("f1", "rougeL")},
              {k: e[k]["ci"] for k in ("f1",)}, {k: round(e[k]["p"], 4) for k in ("f1", "rougeL")}, e["exact"])


if __name__ == "__main__":
    main()
