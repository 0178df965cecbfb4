#!/usr/bin/env python3
"""Reads the TensorBoard event files of selfspec run folders back with TensorBoard's own reader
and checks them against the runs' events.jsonl (training: every step's loss, learning rate,
gradient norm and tokens/s) and report.json (evaluation: every cell's F1 and ROUGE-L at its k).

    pip install tensorboard
    python scripts/check_tensorboard.py RUN_DIR [RUN_DIR ...]     # training or evaluation runs

Exits non-zero on the first disagreement (values are stored as float32: compared to 1e-6
relative).
"""
import json
import math
import os
import sys

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def scalars(run_dir):
    acc = EventAccumulator(run_dir, size_guidance={"scalars": 0})
    acc.Reload()
    out = {}
    for tag in acc.Tags()["scalars"]:
        for ev in acc.Scalars(tag):
            out.setdefault(tag, {})[ev.step] = ev.value
    return out


def close(a, b):
    return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-6)


def check_train(run_dir, got):
    steps = [json.loads(l) for l in open(os.path.join(run_dir, "events.jsonl")) if l.strip()]
    steps = [e for e in steps if e.get("event") == "step"]
    assert steps, f"{run_dir}: no steps in events.jsonl"
    for key, tag in [("loss", "train/loss"), ("lr", "train/learning_rate"), ("grad_norm", "train/grad_norm"),
                     ("tokens_per_s", "train/tokens_per_s")]:
        for e in steps:
            value = got.get(tag, {}).get(e["step"])
            assert value is not None, f"{run_dir}: {tag} has no step {e['step']}"
            assert close(value, e[key]), f"{run_dir}: {tag} step {e['step']}: {value} vs {e[key]}"
    return f"{len(steps)} steps × 4 scalars"


def check_eval(run_dir, got):
    report = json.load(open(os.path.join(run_dir, "report.json")))
    n = 0
    for c in report["cells"]:
        for metric, key in [("f1", "f1"), ("rougeL", "rougeL")]:
            tag = f"eval/{c['dataset']}/{metric}/{c['model']}"
            value = got.get(tag, {}).get(c["k"])
            assert value is not None and close(value, c[key]), f"{run_dir}: {tag} k {c['k']}: {value} vs {c[key]}"
            n += 1
    for a in report.get("averages", []):
        for metric, key in [("f1", "f1"), ("rougeL", "rougeL")]:
            tag = f"eval/average/{metric}/{a['model']}"
            value = got.get(tag, {}).get(a["k"])
            assert value is not None and close(value, a[key]["mean"]), f"{run_dir}: {tag}: {value}"
            n += 1
    return f"{n} scalars"


def main():
    for run_dir in sys.argv[1:]:
        got = scalars(run_dir)
        if os.path.exists(os.path.join(run_dir, "report.json")):
            what = check_eval(run_dir, got)
        else:
            what = check_train(run_dir, got)
        print(f"{run_dir}: TensorBoard reads {what}, equal to the run's records")


if __name__ == "__main__":
    main()
