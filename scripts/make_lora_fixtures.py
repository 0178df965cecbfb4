#!/usr/bin/env python3
"""LoRA fixtures from PEFT, for tests/lora.rs.

On the tiny random model tests/fixtures/models/llama3-gqa:

1. tests/fixtures/lora/peft-adapter/: a PEFT adapter (r 4, alpha 8, all seven projections) with
   random non-zero A and B, saved by PEFT (adapter_config.json, adapter_model.safetensors), and
   expected.json: transformers+PEFT's last-position logits with the adapter for a few prompts.
2. tests/fixtures/lora/train/: a fresh PEFT adapter (PEFT's initialisation, seeded) as init/,
   the micro-batches of four optimiser steps (left-padded token ids, labels with -100 on the
   prompt), and what a plain PyTorch loop over the PEFT model does with them: AdamW, linear
   warm-up then cosine decay, gradient clipping, two micro-batches accumulated per step, the loss
   a mean over every response token of the step. steps.json holds each step's loss, grad norm and
   learning rate; final.safetensors the adapter after the last step.

    pip install torch transformers peft safetensors
    python scripts/make_lora_fixtures.py           # from the repository root
    # after `selfspec train` wrote tests/fixtures/lora/ours/ (see tests/lora.rs):
    python scripts/make_lora_fixtures.py --ours
    # the training fixture alone on tests/fixtures/models/gemma3-window, in tests/fixtures/lora-gemma3/
    # (GELU-tanh, the extra norms, the embedding scale and the local rotary base in the backward):
    python scripts/make_lora_fixtures.py --gemma3
    # the same for MPT and Falcon (fused q/k/v, ALiBi, LayerNorms, parallel blocks), with PEFT's
    # module names for them, in tests/fixtures/lora-<model>/:
    python scripts/make_lora_fixtures.py --family mpt-alibi-clip falcon-40b-layout falcon-rw-alibi
"""
import json
import math
import os
import shutil
import sys

import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE = os.path.join(ROOT, "tests", "fixtures", "models", "llama3-gqa")
OUT = os.path.join(ROOT, "tests", "fixtures", "lora")
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PROMPTS = ["The patient", "Gross margin fell because memory chip costs rose, while"]


def base_model():
    return AutoModelForCausalLM.from_pretrained(BASE, attn_implementation="eager", dtype=torch.float32)


def adapter_fixture():
    torch.manual_seed(21)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, lora_dropout=0.0, bias="none",
                        task_type="CAUSAL_LM")
    model = get_peft_model(base_model(), config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape) * 0.3)
    out = os.path.join(OUT, "peft-adapter")
    model.save_pretrained(out)
    tok = AutoTokenizer.from_pretrained(BASE)
    model.eval()
    cases = []
    for text in PROMPTS:
        ids = tok(text)["input_ids"]
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0, -1].tolist()
            model.disable_adapter_layers()
            base = model(torch.tensor([ids])).logits[0, -1].tolist()
            model.enable_adapter_layers()
        cases.append({"prompt": text, "ids": ids, "logits": logits, "base_logits": base})
    json.dump({"cases": cases}, open(os.path.join(out, "expected.json"), "w"))


def batches(vocab):
    """4 steps × 2 micro-batches × 2 sequences of different lengths, left-padded."""
    g = torch.Generator().manual_seed(5)
    steps = []
    for _ in range(4):
        micro = []
        for _ in range(2):
            seqs = []
            for _ in range(2):
                n = int(torch.randint(8, 18, (1,), generator=g))
                ids = torch.randint(3, vocab, (n,), generator=g).tolist()
                prompt = max(2, int(n * 0.4))
                labels = [-100] * prompt + ids[prompt:]
                seqs.append((ids, labels))
            width = max(len(s[0]) for s in seqs)
            micro.append({
                "ids": [[0] * (width - len(i)) + i for i, _ in seqs],
                "labels": [[-100] * (width - len(l)) + l for _, l in seqs],
                "pad": [width - len(i) for i, _ in seqs],
            })
        steps.append(micro)
    return steps


def train_fixture(targets=TARGETS):
    torch.manual_seed(33)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=targets, lora_dropout=0.0, bias="none",
                        task_type="CAUSAL_LM")
    model = get_peft_model(base_model(), config)
    out = os.path.join(OUT, "train")
    model.save_pretrained(os.path.join(out, "init"))
    hp = {"learning_rate": 1e-2, "warmup_steps": 1, "max_steps": 4, "weight_decay": 0.01, "max_grad_norm": 0.5,
          "lr_scheduler_type": "cosine"}
    params = [p for n, p in model.named_parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=hp["learning_rate"], betas=(0.9, 0.999), eps=1e-8,
                            weight_decay=hp["weight_decay"])

    def lam(step):  # transformers' get_cosine_schedule_with_warmup
        if step < hp["warmup_steps"]:
            return step / max(1, hp["warmup_steps"])
        progress = (step - hp["warmup_steps"]) / max(1, hp["max_steps"] - hp["warmup_steps"])
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lam)
    steps = batches(model.config.vocab_size)
    model.train()
    report = []
    for micro in steps:
        total = sum(sum(1 for l in row[1:] if l != -100) for m in micro for row in m["labels"])
        loss_sum = 0.0
        lr = sched.get_last_lr()[0]
        for m in micro:
            ids = torch.tensor(m["ids"])
            mask = torch.tensor([[0] * p + [1] * (ids.shape[1] - p) for p in m["pad"]])
            pos = (mask.cumsum(-1) - 1).clamp(min=0)
            logits = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits
            labels = torch.tensor(m["labels"])
            nll = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                                    labels[:, 1:].reshape(-1), ignore_index=-100, reduction="sum")
            loss = nll / total
            loss.backward()
            loss_sum += loss.item()
        norm = torch.nn.utils.clip_grad_norm_(params, hp["max_grad_norm"]).item()
        opt.step()
        sched.step()
        opt.zero_grad()
        report.append({"loss": loss_sum, "grad_norm": norm, "lr": lr})
    final = {n.replace(".default", ""): p.detach().contiguous() for n, p in model.named_parameters() if "lora_" in n}
    save_file(final, os.path.join(out, "final.safetensors"))
    json.dump({"hyperparameters": hp, "steps": steps, "report": report}, open(os.path.join(out, "steps.json"), "w"))
    print(json.dumps(report, indent=1))


def tidy(folder, base="tests/fixtures/models/llama3-gqa"):
    """The base model path relative to the repository, and no model card."""
    path = os.path.join(folder, "adapter_config.json")
    cfg = json.load(open(path))
    cfg["base_model_name_or_path"] = base
    json.dump(cfg, open(path, "w"), indent=2, sort_keys=True)
    card = os.path.join(folder, "README.md")
    if os.path.exists(card):
        os.remove(card)


def gemma3():
    global BASE, OUT
    BASE = os.path.join(ROOT, "tests", "fixtures", "models", "gemma3-window")
    OUT = os.path.join(ROOT, "tests", "fixtures", "lora-gemma3")
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    train_fixture()
    tidy(os.path.join(OUT, "train", "init"), "tests/fixtures/models/gemma3-window")


FAMILY_TARGETS = {
    "mpt": ["Wqkv", "out_proj", "up_proj", "down_proj"],
    "falcon": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
}


def family(name):
    global BASE, OUT
    BASE = os.path.join(ROOT, "tests", "fixtures", "models", name)
    OUT = os.path.join(ROOT, "tests", "fixtures", f"lora-{name}")
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    train_fixture(FAMILY_TARGETS[name.split("-")[0]])
    tidy(os.path.join(OUT, "train", "init"), f"tests/fixtures/models/{name}")


def main():
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    adapter_fixture()
    train_fixture()
    tidy(os.path.join(OUT, "peft-adapter"))
    tidy(os.path.join(OUT, "train", "init"))


if __name__ == "__main__" and "--gemma3" in sys.argv:
    gemma3()
elif __name__ == "__main__" and "--family" in sys.argv:
    for name in sys.argv[sys.argv.index("--family") + 1:]:
        family(name)
elif __name__ == "__main__" and "--ours" not in sys.argv:
    main()


def ours_in_peft():
    """tests/fixtures/lora/ours/ holds an adapter trained by `selfspec train` (committed); PEFT
    loads it and its logits go to expected.json beside it, for tests/lora.rs to compare with ours."""
    from peft import PeftModel
    folder = os.path.join(OUT, "ours")
    model = PeftModel.from_pretrained(base_model(), folder).eval()
    tok = AutoTokenizer.from_pretrained(BASE)
    cases = []
    for text in PROMPTS:
        ids = tok(text)["input_ids"]
        with torch.no_grad():
            cases.append({"prompt": text, "ids": ids, "logits": model(torch.tensor([ids])).logits[0, -1].tolist()})
    json.dump({"cases": cases}, open(os.path.join(folder, "expected.json"), "w"))


if __name__ == "__main__" and "--ours" in sys.argv:
    ours_in_peft()
