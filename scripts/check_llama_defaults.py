#!/usr/bin/env python3
"""Generation and evaluation through llama-cpp-python's server started with its defaults.

llama-cpp-python's server ends a streamed answer when another request arrives
(`interrupt_requests`, on by default). selfspec's client then lowers its concurrency, says once
why, and asks the cut answer again (issue 27). This starts the server with nothing but the model,
the host and the port, and runs with selfspec's default concurrency (8):
  1. `selfspec generate --mode none` (streamed task lists and responses),
  2. `selfspec generate --mode marginal --k 3` (eq. 2 stepped over top log-probabilities),
  3. `selfspec eval` 0-shot on one finance set,
and prints, for each, whether it completed, its time, and the notes the client printed.

usage: scripts/check_llama_defaults.py --gguf FILE [--bin BIN] [--work DIR] [--n N]
"""
import argparse
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--bin", default=str(ROOT / "target/release/selfspec"))
    ap.add_argument("--work", default="/tmp/llama-defaults")
    ap.add_argument("--n", type=int, default=6)
    args = ap.parse_args()
    work = Path(args.work)
    subprocess.run(["rm", "-rf", str(work)], check=True)
    work.mkdir(parents=True)
    (work / "config.yaml").write_text("generation:\n  tasks_per_prompt: 5\n  instruction_max_new_tokens: 300\n  response_max_new_tokens: 48\n")
    port = free_port()
    log = open(work / "server.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", args.gguf, "--host", "127.0.0.1", "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.2)
        index = work / "index"
        subprocess.run([args.bin, "--config", str(work / "config.yaml"), "index", "build", "--out", str(index),
                        str(ROOT / "sample-seeds/finance.corpus.jsonl")], check=True, capture_output=True)
        base = [args.bin, "--config", str(work / "config.yaml"), "--workspace", str(work / "ws")]
        # With its defaults the server names the model by the path it was given.
        remote = ["--backend", "openai", "--endpoint", url, "--served-model", args.gguf]
        runs = {
            "generate, mode none": base + ["generate", "--seeds", str(ROOT / "sample-seeds/finance.yaml"), "--n", str(args.n),
                                           "--seed", "3", "--mode", "none", "--run", str(work / "gen-none")] + remote,
            "generate, marginal k 3": base + ["generate", "--seeds", str(ROOT / "sample-seeds/finance.yaml"), "--n", str(args.n),
                                              "--seed", "3", "--mode", "marginal", "--k", "3", "--corpus", str(index),
                                              "--run", str(work / "gen-marginal")] + remote,
            "eval 0-shot fin-sentiment": base + ["eval", "--data", str(ROOT / "sample-seeds/eval/finance"), "--datasets",
                                                 "fin-sentiment", "--shots", "0", "--run", str(work / "eval")] + remote,
        }
        print("| run | exit | seconds | notes from the client |")
        print("|---|---|---|---|")
        for name, cmd in runs.items():
            started = time.time()
            out = subprocess.run(cmd, capture_output=True, text=True)
            secs = time.time() - started
            (work / f"{name.split(',')[0].split()[0]}-{len(name)}.log").write_text(out.stderr)
            notes = [l for l in out.stderr.splitlines() if l.startswith("note:")]
            tail = out.stderr.strip().splitlines()[-1:] if out.returncode else []
            print(f"| {name} | {out.returncode} | {secs:.0f} | {' / '.join(notes + tail)[:400]} |", flush=True)
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
