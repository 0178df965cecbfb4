"""Reads an evaluation run's predictions.jsonl for the scripts beside it."""
import json
import sys

FIELDS = ("model", "dataset", "k", "index", "prediction", "references")


def read(run):
    """Yields (model, dataset, k, index, prediction, references) for every answer of `run`
    (a folder holding predictions.jsonl); a broken line ends the script with its file and line."""
    path = run.rstrip("/") + "/predictions.jsonl"
    try:
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    p = json.loads(line)
                    yield tuple(p[k] for k in FIELDS)
                except (ValueError, KeyError, TypeError) as e:
                    sys.exit(f"{path}:{n}: not a prediction line ({e}); expected {', '.join(FIELDS)}")
    except OSError as e:
        sys.exit(f"cannot read {path}: {e}")
