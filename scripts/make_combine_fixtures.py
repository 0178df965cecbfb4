#!/usr/bin/env python3
"""Adapter-merge fixtures from PEFT, for tests/combine.rs.

On the tiny random model tests/fixtures/models/llama3-gqa, three PEFT adapters with random
non-zero A and B (seeded) that differ in rank, alpha and targets:
  a: r 4, alpha 8,  q_proj v_proj down_proj
  b: r 2, alpha 6,  q_proj k_proj down_proj          (rsLoRA off)
  c: r 4, alpha 16, q_proj v_proj down_proj
and the adapters PEFT's LoraModel.add_weighted_adapter makes of them:
  linear: a, c   weights 0.7, -0.4
  cat:    a, b   weights 0.6, 0.5
  svd:    a, b   weights 0.6, 0.5, svd_rank 3
  svd4:   a, b, c weights 0.5, 0.3, 0.2 (rank: the largest, 4)
saved by PEFT (tests/fixtures/combine/merged/NAME/), with expected.json: for each merge, the
last-position logits of the base with the merged adapter for two prompts, and each merged
projection's update B·A·scaling (deltas-NAME.safetensors, by module name).

    pip install torch transformers peft safetensors
    python scripts/make_combine_fixtures.py        # from the repository root
"""
import json
import os
import shutil

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE = os.path.join(ROOT, "tests", "fixtures", "models", "llama3-gqa")
OUT = os.path.join(ROOT, "tests", "fixtures", "combine")
PROMPTS = ["The patient", "Gross margin fell because memory chip costs rose, while"]
ADAPTERS = {
    "a": (4, 8, ["q_proj", "v_proj", "down_proj"], 1),
    "b": (2, 6, ["q_proj", "k_proj", "down_proj"], 2),
    "c": (4, 16, ["q_proj", "v_proj", "down_proj"], 3),
}
MERGES = {
    "linear": (["a", "c"], [0.7, -0.4], "linear", None),
    "cat": (["a", "b"], [0.6, 0.5], "cat", None),
    "svd": (["a", "b"], [0.6, 0.5], "svd", 3),
    "svd4": (["a", "b", "c"], [0.5, 0.3, 0.2], "svd", None),
}


def base_model():
    return AutoModelForCausalLM.from_pretrained(BASE, attn_implementation="eager", dtype=torch.float32)


def main():
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    for name, (r, alpha, targets, seed) in ADAPTERS.items():
        torch.manual_seed(seed)
        config = LoraConfig(r=r, lora_alpha=alpha, target_modules=targets, lora_dropout=0.0, bias="none",
                            task_type="CAUSAL_LM")
        model = get_peft_model(base_model(), config)
        with torch.no_grad():
            for pname, p in model.named_parameters():
                if "lora_" in pname:
                    p.copy_(torch.randn(p.shape) * 0.3)
        model.save_pretrained(os.path.join(OUT, name))
        os.remove(os.path.join(OUT, name, "README.md"))
    tok = AutoTokenizer.from_pretrained(BASE)
    expected = {}
    for merge, (names, weights, method, rank) in MERGES.items():
        model = PeftModel.from_pretrained(base_model(), os.path.join(OUT, names[0]), adapter_name=names[0])
        for n in names[1:]:
            model.load_adapter(os.path.join(OUT, n), adapter_name=n)
        model.add_weighted_adapter(names, weights, "merged", combination_type=method, svd_rank=rank)
        model.set_adapter("merged")
        model.eval()
        tmp = os.path.join(OUT, "tmp")
        model.save_pretrained(tmp, selected_adapters=["merged"])
        shutil.move(os.path.join(tmp, "merged"), os.path.join(OUT, "merged", merge))
        shutil.rmtree(tmp)
        cases = []
        for text in PROMPTS:
            ids = tok(text)["input_ids"]
            with torch.no_grad():
                logits = model(torch.tensor([ids])).logits[0, -1].tolist()
            cases.append({"ids": ids, "logits": logits})
        deltas = {}
        for mname, module in model.named_modules():
            if hasattr(module, "lora_A") and "merged" in module.lora_A:
                key = mname.replace("base_model.model.", "", 1)
                deltas[key] = module.get_delta_weight("merged").detach().contiguous()
        save_file(deltas, os.path.join(OUT, f"deltas-{merge}.safetensors"))
        expected[merge] = {"adapters": names, "weights": weights, "method": method, "rank": rank,
                           "cases": cases}
    json.dump(expected, open(os.path.join(OUT, "expected.json"), "w"))


if __name__ == "__main__":
    main()
