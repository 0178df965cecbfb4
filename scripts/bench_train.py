#!/usr/bin/env python3
"""LoRA training step time and peak memory on the CPU: PEFT (a plain PyTorch loop, as
scripts/make_lora_fixtures.py) against `selfspec train`, same model, data, batch and settings.

    cargo build --release
    python scripts/bench_cpu.py make target/bench-model   # once: the 6-layer model
    python scripts/bench_train.py --model target/bench-model [--steps 12]
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))


def examples(n):
    with open(os.path.join(ROOT, "sample-seeds", "finance.corpus.jsonl"), encoding="utf-8") as f:
        docs = [json.loads(line) for line in f]
    return [{"instruction": f"Summarise the passage on {d['title'].lower()}.", "input": d["text"],
             "output": d["text"].split(". ")[0] + "."} for d in docs[:n]]


ALPACA = ("Below is an instruction that describes a task, paired with an input that provides further context. "
          "Write a response that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n"
          "### Input:\n{input}\n\n### Response:\n")


def peft_steps(model_dir, data, steps, batch, threads):
    torch.set_num_threads(threads)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager")
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, task_type="CAUSAL_LM",
                                             target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                             "up_proj", "down_proj"]))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=3e-4)
    enc = []
    for e in data:
        prompt = ALPACA.format(**e)
        p = tok(prompt)["input_ids"]
        ids = tok(prompt + e["output"])["input_ids"] + [model.config.eos_token_id]
        enc.append((ids, [-100] * len(p) + ids[len(p):]))
    times = []
    model.train()
    for s in range(steps):
        rows = [enc[(s * batch + i) % len(enc)] for i in range(batch)]
        width = max(len(r[0]) for r in rows)
        ids = torch.tensor([[0] * (width - len(i)) + i for i, _ in rows])
        labels = torch.tensor([[-100] * (width - len(l)) + l for _, l in rows])
        mask = (torch.arange(width)[None, :] >= torch.tensor([width - len(i) for i, _ in rows])[:, None]).long()
        t0 = time.perf_counter()
        out = model(input_ids=ids, attention_mask=mask, labels=labels)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad()
        times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return times, peak


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--selfspec", default=os.path.join(ROOT, "target/release/selfspec"))
    ap.add_argument("--qlora", choices=["q4k", "q4_0", "q8_0"],
                    help="train selfspec's side as QLoRA with this block type (PEFT's stays f32 LoRA)")
    args = ap.parse_args()
    data = examples(args.batch * args.steps)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "data.jsonl")
        with open(path, "w") as f:
            f.write("\n".join(json.dumps(e) for e in data) + "\n")
        cfg = os.path.join(d, "train.yaml")
        with open(cfg, "w") as f:
            f.write(f"per_device_train_batch_size: {args.batch}\ngradient_accumulation_steps: 1\n"
                    f"max_steps: {args.steps}\nnum_train_epochs: 1\nwarmup_steps: 0\nsave_steps: 100000\n")
        env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads))
        subprocess.run([args.selfspec, "train", "--model", args.model, "--data", path, "--run",
                        os.path.join(d, "run"), "--train-config", cfg]
                       + (["--qlora", args.qlora] if args.qlora else []), check=True, env=env,
                       stderr=subprocess.DEVNULL)
        events = [json.loads(line) for line in open(os.path.join(d, "run", "events.jsonl"))]
    steps = [e for e in events if e["event"] == "step"]
    ours = [e["step_s"] for e in steps]
    ours_peak = max(e["peak_memory_mb"] for e in steps)
    times, peak = peft_steps(args.model, data, args.steps, args.batch, args.threads)
    skip = 2  # warm-up steps left out of both medians
    theirs = statistics.median(times[skip:])
    mine = statistics.median(ours[skip:])
    print(f"model {args.model}, batch {args.batch}, r 8 on all 7 projections, {args.threads} threads, "
          f"median of steps {skip + 1}..{args.steps}")
    print(f"PEFT (PyTorch {torch.__version__}): {theirs * 1e3:8.1f} ms/step  peak RSS {peak:7.0f} MiB")
    label = f"selfspec train --qlora {args.qlora}:" if args.qlora else "selfspec train:"
    print(f"{label:<27}{mine * 1e3:8.1f} ms/step  peak RSS {ours_peak:7.0f} MiB")
    print(f"speed: {theirs / mine:.2f}x PEFT")


if __name__ == "__main__":
    main()
