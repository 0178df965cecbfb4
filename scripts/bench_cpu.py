#!/usr/bin/env python3
"""CPU decode speed of transformers (eager attention, float32) on a model folder, measured the
way `selfspec bench decode` measures: greedy, random prompt ids, EOS ignored, prefill timed on
its own and decode as the rest.

    python scripts/bench_cpu.py make DIR            # a 6-layer, hidden-512 Llama with random weights
    python scripts/bench_cpu.py run DIR --batch 8 --prompt-len 64 --new-tokens 64
"""
import argparse
import json
import os
import sys
import time

import torch
from transformers import AutoModelForCausalLM, LlamaConfig


def make(out):
    config = LlamaConfig(
        vocab_size=32000, hidden_size=512, intermediate_size=1376, num_hidden_layers=6,
        num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=2048,
        tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(out, safe_serialization=True)
    # The tiny fixture tokenizer: the benchmark feeds random ids, the tokenizer only has to load.
    here = os.path.dirname(os.path.abspath(__file__))
    fixture = os.path.join(here, "..", "tests", "fixtures", "models", "llama2", "tokenizer.json")
    with open(fixture, "rb") as src, open(os.path.join(out, "tokenizer.json"), "wb") as dst:
        dst.write(src.read())
    print(f"{out}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters", file=sys.stderr)


def run(model_dir, batch, prompt_len, new_tokens, threads, repeat):
    torch.set_num_threads(threads)
    model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="eager", dtype=torch.float32).eval()
    g = torch.Generator().manual_seed(1234)
    ids = torch.randint(0, model.config.vocab_size, (batch, prompt_len), generator=g)
    mask = torch.ones_like(ids)
    kwargs = dict(attention_mask=mask, do_sample=False, eos_token_id=None, pad_token_id=0)

    def timed(n):
        start = time.perf_counter()
        with torch.no_grad():
            model.generate(ids, max_new_tokens=n, min_new_tokens=n, **kwargs)
        return time.perf_counter() - start

    timed(4)  # warm-up
    runs = []
    for _ in range(repeat):
        prefill = timed(1)
        total = timed(new_tokens)
        runs.append((prefill, total - prefill))
    # The median run by decode time, as selfspec reports medians.
    runs.sort(key=lambda r: r[1])
    prefill = sorted(r[0] for r in runs)[len(runs) // 2]
    decode = runs[len(runs) // 2][1]
    print(json.dumps({
        "impl": "transformers-eager", "torch": torch.__version__, "threads": threads,
        "batch": batch, "prompt_len": prompt_len, "new_tokens": new_tokens, "repeat": repeat,
        "prefill_tokens_per_s": batch * prompt_len / prefill,
        "decode_tokens_per_s": batch * (new_tokens - 1) / decode,
        "prefill_secs": prefill, "decode_secs": decode,
    }))


def table(path):
    rows = [json.loads(l) for l in open(path) if l.strip()]
    print(f"{'batch':<6} {'implementation':<22} {'prefill tok/s':>14} {'decode tok/s':>14}")
    for ours, ref in zip(rows[0::2], rows[1::2]):
        for r in (ours, ref):
            print(f"{r['batch']:<6} {r.get('impl', 'selfspec (candle)'):<22} "
                  f"{r['prefill_tokens_per_s']:>14.1f} {r['decode_tokens_per_s']:>14.1f}")
        print(f"{ours['batch']:<6} {'selfspec / reference':<22} "
              f"{ours['prefill_tokens_per_s'] / ref['prefill_tokens_per_s']:>13.2f}x "
              f"{ours['decode_tokens_per_s'] / ref['decode_tokens_per_s']:>13.2f}x")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["make", "run", "table"])
    ap.add_argument("dir")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    if a.what == "make":
        make(a.dir)
    elif a.what == "table":
        table(a.dir)
    else:
        run(a.dir, a.batch, a.prompt_len, a.new_tokens, a.threads, a.repeat)


if __name__ == "__main__":
    main()
