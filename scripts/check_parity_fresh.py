#!/usr/bin/env python3
"""Parity on models no test has seen: random configs of every supported architecture (sizes,
head counts, GQA, head_dim, biases, tied heads, rope types, sliding windows, vocabularies larger
than the tokenizer, transformers' own initialisation), each checked with
`selfspec complete --greedy --json` against transformers: prompt ids, greedy ids and the top-5
logits at the last prompt position (1e-4). Prints one line per model; exit 1 on a mismatch.

    cargo build --release
    python scripts/check_parity_fresh.py [--n 12] [--seed 0] [--bin target/release/selfspec]
"""
import argparse
import json
import os
import random
import subprocess
import sys
import tempfile

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_tiny_models import make_tokenizer, randomize  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPTS = ["The patient", "Which receptor does losartan block? Answer:", "Net interest margin widened as"]


def random_config(rng):
    arch = rng.choice(["llama", "llama3", "mistral", "qwen2", "qwen3"])
    heads = rng.choice([2, 3, 4, 6, 8])
    kv = rng.choice([h for h in range(1, heads + 1) if heads % h == 0])
    head_dim = rng.choice([8, 12, 16, 24, 32])
    hidden = heads * head_dim if arch != "qwen3" else rng.choice([40, 48, 72, 96])
    common = dict(hidden_size=hidden, intermediate_size=rng.choice([56, 100, 130, 176, 250]),
                  num_hidden_layers=rng.choice([1, 2, 3]), num_attention_heads=heads, num_key_value_heads=kv,
                  max_position_embeddings=256, rms_norm_eps=rng.choice([1e-5, 1e-6]),
                  tie_word_embeddings=rng.random() < 0.4)
    theta = rng.choice([10000.0, 500000.0, 1000000.0])
    if arch == "llama":
        return LlamaConfig(rope_parameters={"rope_type": "default", "rope_theta": theta}, head_dim=head_dim,
                           **common)
    if arch == "llama3":
        rope = {"rope_type": "llama3", "rope_theta": theta, "factor": rng.choice([4.0, 8.0, 32.0]),
                "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": rng.choice([8, 16, 32])}
        return LlamaConfig(rope_parameters=rope, head_dim=head_dim, **common)
    if arch == "mistral":
        return MistralConfig(sliding_window=rng.choice([3, 5, 8, None]), head_dim=head_dim, **common)
    if arch == "qwen2":
        return Qwen2Config(**common)
    return Qwen3Config(head_dim=head_dim, **common)


def check(i, rng, binary, work):
    config = random_config(rng)
    add_bos = rng.random() < 0.5
    tokenizer = make_tokenizer(add_bos)
    config.vocab_size = len(tokenizer) + rng.choice([0, 0, 61, 600])
    config.bos_token_id = tokenizer.convert_tokens_to_ids("<s>")
    config.eos_token_id = tokenizer.convert_tokens_to_ids("</s>")
    config.pad_token_id = tokenizer.convert_tokens_to_ids("<pad>")
    seed = rng.randrange(1 << 30)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager", dtype=torch.float32).eval()
    scaled = rng.random() < 0.5
    if scaled:
        randomize(model, seed)
    out = os.path.join(work, f"m{i}")
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    worst, problems = 0.0, []
    for prompt in PROMPTS:
        ids = tokenizer(prompt)["input_ids"]
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0, -1]
            greedy = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                    do_sample=False, max_new_tokens=32,
                                    pad_token_id=config.pad_token_id)[0, len(ids):].tolist()
        ours = json.loads(subprocess.run([binary, "complete", "--model", out, "--prompt", prompt, "--greedy",
                                          "--json", "--max-new-tokens", "32"],
                                         check=True, capture_output=True, text=True).stdout)
        if ours["prompt_ids"] != ids:
            problems.append(f"prompt ids {ours['prompt_ids']} vs {ids}")
        for tid, value in ours["top5"]:
            worst = max(worst, abs(value - logits[tid].item()))
        ref_top = torch.topk(logits, 5).indices.tolist()
        if [t for t, _ in ours["top5"]] != ref_top:
            problems.append(f"top-5 ids {[t for t, _ in ours['top5']]} vs {ref_top}")
        if ours["ids"] != greedy:
            problems.append(f"{prompt!r}: greedy {ours['ids']} vs {greedy}")
    if worst > 1e-4:
        problems.append(f"top-5 logits differ by {worst:.2e}")
    desc = (f"{type(config).__name__[:-6]:<8} hidden {config.hidden_size:<3} heads {config.num_attention_heads}/"
            f"{config.num_key_value_heads} inter {config.intermediate_size:<3} layers {config.num_hidden_layers} "
            f"vocab {config.vocab_size:<4} tied {str(config.tie_word_embeddings):<5} "
            f"{'scaled' if scaled else 'hf-init'}")
    print(f"{'ok  ' if not problems else 'FAIL'} {desc}  max |Δtop5| {worst:.1e}")
    for p in problems:
        print("     ", p)
    return not problems


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bin", default=os.path.join(ROOT, "target", "release", "selfspec"))
    args = ap.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as work:
        ok = [check(i, rng, args.bin, work) for i in range(args.n)]
    print(f"{sum(ok)}/{len(ok)} models match")
    sys.exit(0 if all(ok) else 1)


if __name__ == "__main__":
    main()
