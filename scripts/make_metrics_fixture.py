#!/usr/bin/env python3
"""The evaluation metrics by their reference implementations, for tests/metrics.rs.

- tests/fixtures/porter.json: words and their stems by NLTK's PorterStemmer() (default mode,
  NLTK_EXTENSIONS), the stemmer rouge-score uses.
- tests/fixtures/scores.json: prediction/references pairs with rouge-score's ROUGE-L
  (use_stemmer=True, best F-measure over the references) and the SQuAD v1.1 token F1 (best over
  the references), written out below from the official evaluation script's definition.

    pip install rouge-score nltk && python scripts/make_metrics_fixture.py
"""
import collections
import json
import os
import random
import re
import string

from nltk.stem.porter import PorterStemmer
from rouge_score import rouge_scorer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def normalize_answer(s):
    """SQuAD v1.1: lower text and remove punctuation, articles and extra whitespace."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def f1_score(prediction, ground_truth):
    p = normalize_answer(prediction).split()
    g = normalize_answer(ground_truth).split()
    common = collections.Counter(p) & collections.Counter(g)
    num_same = sum(common.values())
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(p)
    recall = 1.0 * num_same / len(g)
    return (2 * precision * recall) / (precision + recall)


def words():
    out = set()
    for name in ("biomedical", "finance", "sports"):
        for ext in (".yaml", ".corpus.jsonl"):
            with open(os.path.join(ROOT, "sample-seeds", name + ext), encoding="utf-8") as f:
                out.update(re.findall(r"[a-z0-9]+", f.read().lower()))
    stems = ["relat", "condit", "rate", "hope", "form", "electr", "sens", "operat", "digit", "allow", "adjust",
             "effect", "depend", "adopt", "commun", "activ", "general", "fall", "hiss", "fizz", "fail", "fil",
             "tan", "hop", "sky", "die", "ly", "ty", "cri", "spi", "fli", "tri", "troubl", "siz", "conflat",
             "happ", "enjoy", "analog", "vietnam", "predic", "feud", "decis", "callous", "formal", "sensitiv",
             "triplic", "revival", "homolog", "archaeolog", "bowl", "roll", "control", "proceed", "succeed",
             "news", "inning", "outing", "canning", "howe", "agre", "feed", "bled", "sing", "motor", "plaster"]
    suffixes = ["", "s", "es", "ies", "ied", "ed", "ing", "y", "ly", "ally", "ational", "tional", "enci", "anci",
                "izer", "abli", "bli", "alli", "entli", "eli", "ousli", "ization", "ation", "ator", "alism",
                "iveness", "fulness", "ousness", "aliti", "iviti", "biliti", "fulli", "logi", "icate", "ative",
                "alize", "iciti", "ical", "ful", "ness", "al", "ance", "ence", "er", "ic", "able", "ible", "ant",
                "ement", "ment", "ent", "ion", "sion", "tion", "ou", "ism", "ate", "iti", "ous", "ive", "ize", "e",
                "ll", "eed", "yy", "yying", "ying"]
    out.update(s + x for s in stems for x in suffixes)
    rng = random.Random(5)
    letters = "aeiouybcdlmnrstyyz0123456789"
    for _ in range(3000):
        out.add("".join(rng.choice(letters) for _ in range(rng.randint(1, 12))))
    out.update(["y", "yy", "yyyy", "ies", "ied", "eed", "ing", "ed", "s", "sses", "ties", "dies", "skies", "dying"])
    return sorted(out)


def text_pairs():
    rng = random.Random(11)
    fixed = [
        ("The cat sat on the mat.", ["A cat sat on a mat!"]),
        ("", [""]),
        ("", ["something"]),
        ("nothing", []),
        ("Phenylalanine hydroxylase", ["phenylalanine hydroxylase (PAH)", "PAH"]),
        ("running runners ran", ["the runner runs"]),
        ("Generalizations of relational conditioning", ["generalize relate condition"]),
        ("Café crème — naïve résumé", ["cafe creme naive resume"]),
        ("İstanbul ŞEHİR ıssız", ["istanbul sehir issiz"]),
        ("3.14 vs 3,14 and 10-20%", ["3 14 vs 3 14 and 10 20"]),
        ("an apple a day", ["the apple, the day"]),
        ("Yes.", ["yes", "no"]),
        ("aspirin, ibuprofen", ["aspirin, ibuprofen, naproxen"]),
        ("😀 emoji only 🧬", ["emoji only"]),
        ("under_score and hy-phen", ["under score and hy phen"]),
        ("A\u00a0non-breaking\u2003space", ["a non breaking space"]),
        ("the the the", ["the"]),
        ("1,000,000 dollars", ["1000000 dollars", "one million dollars"]),
        ("ΣΊΣΥΦΟΣ ὈΔΥΣΣΕΎΣ", ["σίσυφος"]),
        ("tab\tseparated\nlines\r\nhere", ["tab separated lines here"]),
    ]
    vocab = words()[:800] + ["the", "a", "an", "The", "A", ",", ".", "!", "?", "'s", "-", "(", ")", "%", "é", "ß"]
    out = list(fixed)
    for _ in range(600):
        def sent():
            return " ".join(rng.choice(vocab) for _ in range(rng.randint(0, 25)))
        out.append((sent(), [sent() for _ in range(rng.randint(1, 3))]))
    return out


def main():
    stemmer = PorterStemmer()
    ws = words()
    json.dump({w: stemmer.stem(w) for w in ws}, open(os.path.join(ROOT, "tests/fixtures/porter.json"), "w"),
              indent=0, sort_keys=True)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    cases = []
    for prediction, references in text_pairs():
        rouge = max((scorer.score(r, prediction)["rougeL"].fmeasure for r in references), default=0.0)
        f1 = max((f1_score(prediction, r) for r in references), default=0.0)
        cases.append({"prediction": prediction, "references": references, "rougeL": rouge, "f1": f1})
    json.dump(cases, open(os.path.join(ROOT, "tests/fixtures/scores.json"), "w"), indent=0, ensure_ascii=False)
    print(len(ws), "words,", len(cases), "pairs")


if __name__ == "__main__":
    main()
