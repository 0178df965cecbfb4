#!/usr/bin/env python3
"""Loads an adapter written by `selfspec train` in PEFT and compares PEFT's top-5 logits at the
last prompt position with `selfspec complete --adapter --json`.

    python scripts/check_adapter_in_peft.py MODEL_DIR ADAPTER_DIR "a prompt" [--selfspec target/release/selfspec]
        [--selfspec-model FILE.gguf]

With --selfspec-model, selfspec runs on that model instead (a GGUF file whose dequantized weights
MODEL_DIR holds, as scripts/bench_gguf.py makes it): PEFT on the f32 copy against selfspec's
quantized kernels on the file the adapter was trained over (QLoRA).
"""
import argparse
import json
import subprocess

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("adapter")
    ap.add_argument("prompt")
    ap.add_argument("--selfspec", default="target/release/selfspec")
    ap.add_argument("--selfspec-model")
    a = ap.parse_args()
    base = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32, attn_implementation="eager")
    model = PeftModel.from_pretrained(base, a.adapter).eval()
    ids = AutoTokenizer.from_pretrained(a.model)(a.prompt)["input_ids"]
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, -1]
    top = torch.topk(logits, 5)
    theirs = list(zip(top.indices.tolist(), top.values.tolist()))
    out = subprocess.run([a.selfspec, "complete", "--model", a.selfspec_model or a.model, "--adapter", a.adapter, "--prompt", a.prompt,
                          "--json", "--max-new-tokens", "1"], capture_output=True, text=True, check=True)
    ours = [tuple(x) for x in json.loads(out.stdout)["top5"]]
    worst = max(abs(l - logits[i].item()) for i, l in ours)
    same = [i for i, _ in ours] == [i for i, _ in theirs]
    print(f"PEFT top5 {[(i, round(l, 4)) for i, l in theirs]}")
    print(f"ours top5 {[(i, round(l, 4)) for i, l in ours]}")
    print(f"same ids: {same}; max |Δlogit| {worst:.2e}")
    raise SystemExit(0 if same and worst < 1e-3 else 1)


if __name__ == "__main__":
    main()
