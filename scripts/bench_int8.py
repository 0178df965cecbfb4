#!/usr/bin/env python3
"""Prefill and decode speed of int8 activations (`--int8-activations`) against selfspec's exact
products and llama.cpp (which rounds activations to 8 bits for its own integer products), on one
GGUF file, run one after another in one process tree on this machine.

    cargo build --release
    python scripts/bench_int8.py target/release/selfspec SmolLM2-135M-Instruct.Q4_1.gguf [--threads 2]

Greedy agreement of the int8 path: scripts/check_gguf_greedy.py ... --int8.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_gguf import llama_cpp, selfspec  # noqa: E402


def ours(binary, gguf, batch, prompt, new, int8, threads):
    args = ["bench", "decode", "--model", gguf, "--batch", str(batch), "--prompt-len", str(prompt),
            "--new-tokens", str(new), "--repeat", "3"] + (["--int8-activations"] if int8 else [])
    r = selfspec(binary, args, threads)
    return r["prefill_tokens_per_s"], r["decode_tokens_per_s"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("binary")
    ap.add_argument("gguf")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--new", type=int, default=64)
    args = ap.parse_args()
    print(f"{os.path.basename(args.gguf)}, {args.threads} threads, {args.new} new tokens; tokens/s, median of 3")
    print("| batch | prompt | llama.cpp prefill | exact prefill | int8 prefill | int8 ÷ exact | int8 ÷ llama.cpp "
          "| llama.cpp decode | exact decode | int8 decode |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for batch, prompt in [(1, 128), (1, 500), (8, 128), (8, 500)]:
        lp, ld = llama_cpp(args.gguf, args.threads, 3, prompt, args.new) if batch == 1 else (None, None)
        ep, ed = ours(args.binary, args.gguf, batch, prompt, args.new, False, args.threads)
        ip, idec = ours(args.binary, args.gguf, batch, prompt, args.new, True, args.threads)
        f = lambda v: "—" if v is None else f"{v:,.0f}"  # noqa: E731
        print(f"| {batch} | {prompt} | {f(lp)} | {f(ep)} | {f(ip)} | {ip / ep:.2f}× | "
              f"{f'{ip / lp:.2f}×' if lp else '—'} | {f(ld)} | {f(ed)} | {f(idec)} |", flush=True)


if __name__ == "__main__":
    main()
