#!/usr/bin/env python3
"""LoRA training at real lengths: one optimiser step over `batch × length` tokens, PEFT with
PyTorch's SDPA attention against `selfspec train`, same model, rows and settings, each in its
own process so each peak resident memory is its own (issue 29).

    cargo build --release
    python scripts/bench_long_train.py --model target/smollm2-f32 --lengths 1024 2048 \
        [--gguf SmolLM2-135M-Instruct.Q4_1.gguf] [--out docs/long-train.json]

Every row is an Alpaca example whose response is long enough that the row is cut to exactly
`length` tokens (so the batch is `batch × length` with no padding and almost every token
labelled). Each side runs `--steps` optimiser steps of one micro-batch (r 8 on all seven
projections, lr 3e-4, no warm-up); the table reports the last step's time (the first one pays
page faults on both sides), the first step's loss (the adapter's B starts at zero, so both sides
must agree on it to the last digits), and the process's peak RSS from `/usr/bin/time -v`.
`--gguf` adds selfspec on the quantized file (its own 4-bit weights, as `train` uses them).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

ALPACA = ("Below is an instruction that describes a task, paired with an input that provides further context. "
          "Write a response that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n"
          "### Input:\n{input}\n\n### Response:\n")


def examples(n):
    """n examples whose responses run past any length asked (the corpus's passages strung)."""
    with open(os.path.join(ROOT, "sample-seeds", "finance.corpus.jsonl"), encoding="utf-8") as f:
        docs = [json.loads(line) for line in f]
    text = " ".join(d["text"] for d in docs)
    words = text.split()
    out = []
    for i in range(n):
        start = (i * 997) % max(1, len(words) - 1)
        body = (words[start:] + words[:start]) * 3
        out.append({"instruction": f"Continue the report on {docs[i % len(docs)]['title'].lower()}.",
                    "input": docs[i % len(docs)]["text"][:200],
                    "output": " ".join(body[:4000])})
    return out


PEFT_SIDE = r'''
import json, sys, time, torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer
model_dir, data, length, steps, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
ALPACA = json.loads(sys.argv[6])
torch.set_num_threads(threads)
torch.manual_seed(0)
tok = AutoTokenizer.from_pretrained(model_dir)
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")
model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, task_type="CAUSAL_LM",
    target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
params = [p for p in model.parameters() if p.requires_grad]
opt = torch.optim.AdamW(params, lr=3e-4, weight_decay=0.0)
rows = [json.loads(l) for l in open(data)]
ids, labels = [], []
for e in rows:
    p = tok(ALPACA.format(**e))["input_ids"]
    full = tok(ALPACA.format(**e) + e["output"].strip())["input_ids"][:length]
    masked = next((i for i, (a, b) in enumerate(zip(p, full)) if a != b), min(len(p), len(full)))
    ids.append(full)
    labels.append([-100] * masked + full[masked:])
assert all(len(r) == length for r in ids), "a row shorter than the length asked"
ids, labels = torch.tensor(ids), torch.tensor(labels)
model.train()
out = []
for s in range(steps):
    t0 = time.perf_counter()
    loss = model(input_ids=ids, labels=labels).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step(); opt.zero_grad()
    out.append((time.perf_counter() - t0, loss.item()))
print(json.dumps({"steps": out, "torch": torch.__version__}))
'''


def peak_rss_mb(stderr):
    for line in stderr.splitlines():
        if "Maximum resident set size" in line:
            return int(line.split(":")[1]) / 1024
    return float("nan")


def run_peft(python, model, data, length, batch, steps, threads, limit_gb):
    def limit():
        import resource
        cap = int(limit_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    p = subprocess.run(["/usr/bin/time", "-v", python, "-c", PEFT_SIDE, model, data, str(length), str(steps),
                        str(threads), json.dumps(ALPACA)], capture_output=True, text=True, preexec_fn=limit)
    if p.returncode != 0:
        tail = p.stderr.strip().splitlines()
        why = next((l for l in reversed(tail) if "Error" in l), tail[-1] if tail else "no message")
        print(f"PEFT side failed at length {length} (address space capped at {limit_gb} GB): {why}", file=sys.stderr)
        return {"side": "PEFT sdpa", "step_s": float("nan"), "loss": float("nan"),
                "peak_mb": peak_rss_mb(p.stderr), "failed": why.strip()}
    res = json.loads(p.stdout.strip().splitlines()[-1])
    t, loss = res["steps"][-1][0], res["steps"][0][1]
    return {"side": f"PEFT sdpa (torch {res['torch']})", "step_s": t, "loss": loss,
            "peak_mb": peak_rss_mb(p.stderr)}


def run_selfspec(binary, model, data, length, batch, steps, threads, work, label, extra):
    cfg = os.path.join(work, "train.yaml")
    with open(cfg, "w") as f:
        f.write(f"per_device_train_batch_size: {batch}\ngradient_accumulation_steps: 1\nmax_steps: {steps}\n"
                f"num_train_epochs: 1\nwarmup_steps: 0\nsave_steps: 100000\nmax_seq_length: {length}\n"
                f"weight_decay: 0.0\n" + "".join(f"{k}: {v}\n" for k, v in extra.items()))
    run = tempfile.mkdtemp(dir=work)
    os.rmdir(run)
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
    p = subprocess.run(["/usr/bin/time", "-v", binary, "train", "--model", model, "--data", data, "--run", run,
                        "--train-config", cfg, "--prompt-format", "plain"], capture_output=True, text=True, env=env)
    if p.returncode != 0:
        sys.exit(f"selfspec side failed:\n{p.stderr[-3000:]}")
    events = [json.loads(line) for line in open(os.path.join(run, "events.jsonl"))]
    steps_ev = [e for e in events if e["event"] == "step"]
    last = steps_ev[-1]
    return {"side": label, "step_s": last["step_s"], "loss": steps_ev[0]["loss"], "peak_mb": peak_rss_mb(p.stderr),
            "tokens": last.get("tokens")}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, help="a transformers folder (f32 safetensors)")
    ap.add_argument("--gguf", help="also train selfspec on this quantized file")
    ap.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--selfspec", default=os.path.join(ROOT, "target/release/selfspec"))
    ap.add_argument("--checkpointing", action="store_true", help="also selfspec with gradient_checkpointing")
    ap.add_argument("--skip-peft", action="store_true")
    ap.add_argument("--peft-limit-gb", type=float, default=21.0,
                    help="address-space cap of the PEFT process, so that running out of memory fails it "
                         "instead of the machine")
    ap.add_argument("--out", help="write the rows as JSON here")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as work:
        data = os.path.join(work, "data.jsonl")
        with open(data, "w") as f:
            f.write("\n".join(json.dumps(e) for e in examples(args.batch)) + "\n")
        for length in args.lengths:
            sides = []
            if not args.skip_peft:
                sides.append(run_peft(args.python, args.model, data, length, args.batch, args.steps, args.threads,
                                      args.peft_limit_gb))
            sides.append(run_selfspec(args.selfspec, args.model, data, length, args.batch, args.steps, args.threads,
                                      work, "selfspec train (f32)", {}))
            if args.checkpointing:
                sides.append(run_selfspec(args.selfspec, args.model, data, length, args.batch, args.steps,
                                          args.threads, work, "selfspec train (f32, checkpointing)",
                                          {"gradient_checkpointing": "true"}))
            if args.gguf:
                sides.append(run_selfspec(args.selfspec, args.gguf, data, length, args.batch, args.steps,
                                          args.threads, work, "selfspec train (GGUF, its 4-bit weights)", {}))
                if args.checkpointing:
                    sides.append(run_selfspec(args.selfspec, args.gguf, data, length, args.batch, args.steps,
                                              args.threads, work, "selfspec train (GGUF, checkpointing)",
                                              {"gradient_checkpointing": "true"}))
            for s in sides:
                s["length"] = length
                rows.append(s)
                print(json.dumps(s), flush=True)
    print()
    print(f"batch {args.batch} × length, r 8 on all 7 projections, {args.threads} threads, step {args.steps} of "
          f"{args.steps} (one micro-batch each)")
    print("| length | side | step s | loss | peak RSS MB | speed vs PEFT | memory vs PEFT |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for length in args.lengths:
        ref = next((r for r in rows if r["length"] == length and r["side"].startswith("PEFT")
                    and "failed" not in r), None)
        for r in (r for r in rows if r["length"] == length):
            if "failed" in r:
                print(f"| {length} | {r['side']} | failed: {r['failed'][:80]} | | {r['peak_mb']:,.0f} | | |")
                continue
            speed = f"{ref['step_s'] / r['step_s']:.2f}×" if ref else ""
            mem = f"{r['peak_mb'] / ref['peak_mb']:.2f}×" if ref else ""
            print(f"| {length} | {r['side']} | {r['step_s']:.1f} | {r['loss']:.5f} | {r['peak_mb']:,.0f} | {speed} | {mem} |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
