#!/usr/bin/env python3
"""Check the bundled evaluation sets in sample-seeds/eval/<domain>/.

Standard library only. Run from anywhere:

    python3 scripts/check_eval_sets.py                 # all domains in DOMAINS
    python3 scripts/check_eval_sets.py biomedical      # one domain

Every problem is printed as `file:line: message` (line 0 = a problem with the
file as a whole). A one-line summary is printed per test file, then either
"all checks passed" (exit 0) or the number of problems (exit 1).

Checks on each test file NAME.jsonl (not *.train.jsonl):
  * at least MIN_LINES lines; every line is a JSON object;
  * keys are exactly {dataset, task, instruction, input} plus exactly one of
    output (non-empty string) or outputs (non-empty list of non-empty strings);
  * dataset equals the file name stem; one task and one instruction per file;
  * no duplicate inputs within the file (case- and whitespace-normalised) and
    no input equal to an input of NAME.train.jsonl;
  * content checks by dataset kind (see KINDS):
      label    - output is one of the allowed labels in LABELS; label counts
                 differ by at most 1 (counts are printed);
      entities - every comma-separated entity of output occurs in input
                 (case-insensitive);
      extract  - the first reference (output, or outputs[0]) occurs in input
                 (case-insensitive); further references are accepted variants
                 of it (abbreviations, other notations, paraphrases);
      kpi      - output has the form "KPI: value" and value occurs in input
                 (case-insensitive).
The NAME.train.jsonl files (the few-shot demonstrations) are checked for
parsing, keys, dataset name, and the same content rules except the label
balance, and must use the same task and instruction as the test file.
"""

import json
import os
import re
import sys
from collections import Counter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EVAL_DIR = os.path.join(ROOT, "sample-seeds", "eval")
DOMAINS = ["biomedical", "finance"]
MIN_LINES = 150

# Allowed labels for the classification datasets.
LABELS = {
    "bio-ddi": ["mechanism", "effect", "advice", "int", "none"],
    "bio-sentiment": ["positive", "negative", "neutral"],
    "bio-topic": ["cardiology", "oncology", "infectious disease", "endocrinology", "neurology"],
    "fin-sentiment": ["positive", "negative", "neutral"],
    "fin-topic": ["earnings", "mergers", "monetary policy", "commodities", "markets"],
}

# Which content check applies to each dataset.
KINDS = {
    "bio-ddi": "label",
    "bio-sentiment": "label",
    "bio-topic": "label",
    "fin-sentiment": "label",
    "fin-topic": "label",
    "bio-ner": "entities",
    "fin-ner": "entities",
    "bio-qa": "extract",
    "fin-qa": "extract",
    "fin-kpi": "kpi",
}

BASE_KEYS = {"dataset", "task", "instruction", "input"}


def norm(text):
    return " ".join(text.split()).lower()


def contains(haystack, needle):
    return norm(needle) in norm(haystack)


class Report:
    def __init__(self):
        self.problems = 0

    def error(self, path, line, message):
        self.problems += 1
        print("%s:%d: %s" % (os.path.relpath(path, ROOT), line, message))


def load_lines(path, rep):
    """Return [(line_no, obj)] for the lines that parse as JSON objects."""
    rows = []
    with open(path, encoding="utf-8") as fh:
        for no, raw in enumerate(fh, 1):
            if not raw.strip():
                rep.error(path, no, "empty line")
                continue
            try:
                obj = json.loads(raw)
            except ValueError as exc:
                rep.error(path, no, "invalid JSON: %s" % exc)
                continue
            if not isinstance(obj, dict):
                rep.error(path, no, "line is not a JSON object")
                continue
            rows.append((no, obj))
    return rows


def references(obj):
    """The reference answer(s) of a well-formed line."""
    if "outputs" in obj:
        return list(obj["outputs"])
    return [obj["output"]]


def check_schema(path, stem, rows, rep):
    """Check keys and types; return the rows that are well-formed."""
    good = []
    for no, obj in rows:
        keys = set(obj)
        ok = True
        has_out, has_outs = "output" in keys, "outputs" in keys
        if has_out and has_outs:
            rep.error(path, no, "has both output and outputs")
            ok = False
        elif not (has_out or has_outs):
            rep.error(path, no, "has neither output nor outputs")
            ok = False
        extra = keys - BASE_KEYS - {"output", "outputs"}
        missing = BASE_KEYS - keys
        if extra:
            rep.error(path, no, "unexpected keys: %s" % ", ".join(sorted(extra)))
            ok = False
        if missing:
            rep.error(path, no, "missing keys: %s" % ", ".join(sorted(missing)))
            ok = False
        for key in BASE_KEYS & keys:
            if not isinstance(obj[key], str) or not obj[key].strip():
                rep.error(path, no, "%s must be a non-empty string" % key)
                ok = False
        if has_out and not has_outs:
            if not isinstance(obj["output"], str) or not obj["output"].strip():
                rep.error(path, no, "output must be a non-empty string")
                ok = False
        if has_outs and not has_out:
            outs = obj["outputs"]
            if (not isinstance(outs, list) or not outs
                    or not all(isinstance(o, str) and o.strip() for o in outs)):
                rep.error(path, no, "outputs must be a non-empty list of non-empty strings")
                ok = False
        if ok and obj["dataset"] != stem:
            rep.error(path, no, "dataset %r does not match file name %r" % (obj["dataset"], stem))
            ok = False
        if ok:
            good.append((no, obj))
    return good


def check_content(path, stem, rows, rep):
    """Dataset-specific checks on well-formed rows; returns label counts (or None)."""
    kind = KINDS.get(stem)
    if kind is None:
        rep.error(path, 0, "no content rule for dataset %r (add it to KINDS in this script)" % stem)
        return None
    counts = Counter() if kind == "label" else None
    for no, obj in rows:
        inp = obj["input"]
        if kind == "label":
            if "outputs" in obj:
                rep.error(path, no, "label datasets must use output, not outputs")
                continue
            label = obj["output"]
            if label not in LABELS[stem]:
                rep.error(path, no, "label %r not in %s" % (label, LABELS[stem]))
            else:
                counts[label] += 1
        elif kind == "entities":
            for ref in references(obj):
                for ent in ref.split(","):
                    ent = ent.strip()
                    if not ent:
                        rep.error(path, no, "empty entity in %r" % ref)
                    elif not contains(inp, ent):
                        rep.error(path, no, "entity %r does not occur in the input" % ent)
        elif kind == "extract":
            # The first reference is the answer as the passage words it; the others are
            # accepted variants of it (an abbreviation, another notation) and need not occur.
            refs = references(obj)
            if refs and not contains(inp, refs[0]):
                rep.error(path, no, "the first reference %r does not occur in the input" % refs[0])
        elif kind == "kpi":
            for ref in references(obj):
                m = re.match(r"^([^:]+):\s+(\S.*)$", ref)
                if not m or not m.group(1).strip():
                    rep.error(path, no, "output %r is not of the form 'KPI: value'" % ref)
                elif not contains(inp, m.group(2).strip()):
                    rep.error(path, no, "KPI value %r does not occur in the input" % m.group(2).strip())
    return counts


def check_one_value(path, rows, key, rep):
    values = Counter(obj[key] for _, obj in rows)
    if len(values) > 1:
        common = values.most_common(1)[0][0]
        for no, obj in rows:
            if obj[key] != common:
                rep.error(path, no, "%s differs from the rest of the file (%r)" % (key, common))
    return values.most_common(1)[0][0] if values else None


def check_dataset(test_path, rep):
    stem = os.path.basename(test_path)[: -len(".jsonl")]
    train_path = test_path[: -len(".jsonl")] + ".train.jsonl"

    with open(test_path, encoding="utf-8") as fh:
        n_lines = sum(1 for _ in fh)
    if n_lines < MIN_LINES:
        rep.error(test_path, 0, "only %d lines (need >= %d)" % (n_lines, MIN_LINES))

    rows = check_schema(test_path, stem, load_lines(test_path, rep), rep)
    task = check_one_value(test_path, rows, "task", rep)
    instruction = check_one_value(test_path, rows, "instruction", rep)

    seen = {}
    for no, obj in rows:
        key = norm(obj["input"])
        if key in seen:
            rep.error(test_path, no, "duplicate input (same as line %d)" % seen[key])
        else:
            seen[key] = no

    counts = check_content(test_path, stem, rows, rep)
    if counts is not None:
        for label in LABELS[stem]:
            counts.setdefault(label, 0)
        if counts and max(counts.values()) - min(counts.values()) > 1:
            rep.error(test_path, 0, "label counts differ by more than 1: %s"
                      % ", ".join("%s=%d" % (l, counts[l]) for l in LABELS[stem]))

    n_train = 0
    if not os.path.exists(train_path):
        rep.error(test_path, 0, "missing demonstrations file %s" % os.path.basename(train_path))
    else:
        train_rows = check_schema(train_path, stem, load_lines(train_path, rep), rep)
        n_train = len(train_rows)
        check_content(train_path, stem, train_rows, rep)
        for no, obj in train_rows:
            if task is not None and obj["task"] != task:
                rep.error(train_path, no, "task %r differs from the test file (%r)" % (obj["task"], task))
            if instruction is not None and obj["instruction"] != instruction:
                rep.error(train_path, no, "instruction differs from the test file")
            key = norm(obj["input"])
            if key in seen:
                rep.error(test_path, seen[key], "test input repeats a train input (%s:%d)"
                          % (os.path.basename(train_path), no))

    summary = "%s: %d lines, %d demonstrations, task=%s" % (
        os.path.relpath(test_path, ROOT), n_lines, n_train, task)
    if counts is not None:
        summary += ", labels: " + ", ".join("%s=%d" % (l, counts[l]) for l in LABELS[stem])
    else:
        summary += ", check: %s" % KINDS.get(stem, "none")
    print(summary)


def main(argv):
    domains = argv[1:] or DOMAINS
    rep = Report()
    for domain in domains:
        folder = os.path.join(EVAL_DIR, domain)
        if not os.path.isdir(folder):
            rep.error(folder, 0, "domain folder not found")
            continue
        tests = sorted(f for f in os.listdir(folder)
                       if f.endswith(".jsonl") and not f.endswith(".train.jsonl"))
        if not tests:
            rep.error(folder, 0, "no test files")
        for name in tests:
            check_dataset(os.path.join(folder, name), rep)
    if rep.problems:
        print("%d problem(s) found" % rep.problems)
        return 1
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
