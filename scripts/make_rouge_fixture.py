#!/usr/bin/env python3
"""ROUGE-L (no stemming) by google's rouge-score on awkward pairs, for tests/metrics.rs.

    pip install rouge-score && python scripts/make_rouge_fixture.py
"""
import json
import os
import random

from rouge_score import rouge_scorer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAIRS = [
    ("The cat sat on the mat.", "A cat sat on a mat!"),
    ("", "nothing to compare"),
    ("   ", "\t\n"),
    ("Café crème — naïve résumé", "cafe creme naive resume"),
    ("İstanbul ŞEHİR ıssız", "istanbul sehir issiz"),
    ("Straße ﬁnal ＦＵＬＬ１２３", "strasse final full123"),
    ("3.14 vs 3,14 and 10-20%", "3 14 vs 3 14 and 10 20"),
    ("Summarise the abstract in one sentence.", "Summarize the abstract in one sentence for a general reader."),
    ("yes", "Yes."),
    ("the the the the", "the"),
    ("😀 emoji only 🧬", "emoji only"),
    ("Which receptor does losartan block?", "Which receptor does the drug block? Answer with the receptor name."),
    ("A" * 300 + " b", "a b"),
    ("line one\nline two\r\nline three", "line two line three"),
    ("under_score and hy-phen", "under score and hy phen"),
]


def main():
    rng = random.Random(7)
    pool = list("abcdeABCDE0123 ,.;:-_'\"()\n\téÉıİß日本😀") + [" the ", " and ", " cat ", " of "]
    pairs = list(PAIRS)
    for _ in range(300):
        pairs.append(("".join(rng.choice(pool) for _ in range(rng.randint(0, 40))),
                      "".join(rng.choice(pool) for _ in range(rng.randint(0, 40)))))
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    out = []
    for target, prediction in pairs:
        s = scorer.score(target, prediction)["rougeL"]
        out.append({"target": target, "prediction": prediction,
                    "precision": s.precision, "recall": s.recall, "fmeasure": s.fmeasure})
    with open(os.path.join(ROOT, "tests", "fixtures", "rouge_l.json"), "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, indent=0)


if __name__ == "__main__":
    main()
