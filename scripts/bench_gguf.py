#!/usr/bin/env python3
"""Quantized decode on a real GGUF file: selfspec against llama.cpp (llama-cpp-python), same
file, same thread count, in one run; and the f32 copy of the same model against the memory
bandwidth ceiling. Prints one Markdown table with the goals of the real-models issue.

    python scripts/bench_gguf.py target/release/selfspec SmolLM2-135M-Instruct.Q4_1.gguf [--threads 2]

- llama.cpp: `Llama(model_path, n_threads=T, n_threads_batch=T)`; prefill = eval of 64 random
  tokens after a reset; decode = 64 single-token evals after it (batch 1). Median of --repeat runs
  after one warm-up.
- selfspec: `selfspec bench decode --batch 1|8 --prompt-len 64 --new-tokens 64 --repeat R` on
  the same file (RAYON_NUM_THREADS=T).
- f32: the GGUF dequantized by transformers (`from_pretrained(dir, gguf_file=...)`) and saved as
  a safetensors folder (made once, in --f32-dir); its batch-1 decode against the ceiling
  weight bytes per step ÷ `selfspec bench memory`'s copy bandwidth.
"""
import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time


def llama_cpp(gguf, threads, repeat, prompt, new):
    from llama_cpp import Llama

    llm = Llama(model_path=gguf, n_threads=threads, n_threads_batch=threads, n_ctx=max(512, prompt + new + 8),
                n_batch=512, verbose=False)
    vocab = llm.n_vocab()
    rng = random.Random(0)
    pre, dec = [], []
    for run in range(repeat + 1):
        tokens = [rng.randrange(100, vocab - 100) for _ in range(prompt)]
        llm.reset()
        t = time.perf_counter()
        llm.eval(tokens)
        p = prompt / (time.perf_counter() - t)
        t = time.perf_counter()
        for _ in range(new):
            llm.eval([rng.randrange(100, vocab - 100)])
        d = new / (time.perf_counter() - t)
        if run > 0:
            pre.append(p)
            dec.append(d)
    return statistics.median(pre), statistics.median(dec)


def selfspec(binary, args, threads):
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
    out = subprocess.run([binary] + args + ["--json"], check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def make_f32(gguf, out):
    if os.path.exists(os.path.join(out, "config.json")):
        return
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d, f = os.path.dirname(os.path.abspath(gguf)), os.path.basename(gguf)
    from safetensors.torch import save_file

    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
    # transformers marks a GGUF-loaded model as quantized and refuses save_pretrained; its weights
    # are plain dequantized f32 tensors, so write them and the config directly.
    os.makedirs(out, exist_ok=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    save_file(state, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    with open(os.path.join(out, "config.json"), "w") as fh:
        json.dump(config, fh, indent=2)
    AutoTokenizer.from_pretrained(d, gguf_file=f).save_pretrained(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("binary")
    ap.add_argument("gguf")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--f32-dir", default="target/smollm2-f32")
    args = ap.parse_args()
    T, R, P, N = args.threads, args.repeat, 64, 64
    mem = selfspec(args.binary, ["bench", "memory"], T)
    lc_pre, lc_dec = llama_cpp(args.gguf, T, R, P, N)
    shape = ["--prompt-len", str(P), "--new-tokens", str(N), "--repeat", str(R)]
    b1 = selfspec(args.binary, ["bench", "decode", "--model", args.gguf, "--batch", "1"] + shape, T)
    b8 = selfspec(args.binary, ["bench", "decode", "--model", args.gguf, "--batch", "8"] + shape, T)
    make_f32(args.gguf, args.f32_dir)
    f32 = selfspec(args.binary, ["bench", "decode", "--model", args.f32_dir, "--dtype", "f32", "--batch", "1"] + shape, T)
    ceiling = mem["copy_gb_per_s"] * 1e9 / f32["step_weight_bytes"]
    read_ceiling = mem["read_gb_per_s"] * 1e9 / f32["step_weight_bytes"]
    rows = [
        ("batch-1 decode tok/s", b1["decode_tokens_per_s"], lc_dec, b1["decode_tokens_per_s"] / lc_dec, "≥ 1.0×"),
        ("prefill (64 tokens) tok/s", b1["prefill_tokens_per_s"], lc_pre, b1["prefill_tokens_per_s"] / lc_pre, "≥ 1.0×"),
        ("batch-8 decode tok/s (all rows) vs llama.cpp batch 1", b8["decode_tokens_per_s"], lc_dec,
         b8["decode_tokens_per_s"] / lc_dec, "≥ 3×"),
        ("f32 batch-1 decode tok/s vs copy-bandwidth ceiling", f32["decode_tokens_per_s"], ceiling,
         f32["decode_tokens_per_s"] / ceiling, "≥ 0.8×"),
    ]
    print(f"{os.path.basename(args.gguf)}, {T} threads, prompt {P}, {N} new tokens, median of {R} runs")
    print(f"memory: copy {mem['copy_gb_per_s']:.1f} GB/s, read {mem['read_gb_per_s']:.1f} GB/s; "
          f"f32 weights per step {f32['step_weight_bytes'] / 1e6:.0f} MB (ceiling {ceiling:.1f} tok/s by copy, "
          f"{read_ceiling:.1f} by read); quantized weights per step as held {b1['step_weight_bytes'] / 1e6:.0f} MB")
    print()
    print("| measure | selfspec | reference | ratio | goal |")
    print("|---|---:|---:|---:|---|")
    for name, ours, ref, ratio, goal in rows:
        print(f"| {name} | {ours:.1f} | {ref:.1f} | {ratio:.2f}× | {goal} |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
