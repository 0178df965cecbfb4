#!/usr/bin/env python3
"""Greedy tokens of `selfspec complete` against llama.cpp's on the same GGUF file, on prompts
drawn at random from this repository's sample seeds and corpora (rendered through the model's
chat template with --chat).

    python scripts/check_gguf_greedy.py target/release/selfspec SmolLM2-135M-Instruct.Q4_1.gguf [--n 40] [--new 32] [--chat] [--f32-dir target/smollm2-f32] [--int8] [--f16-kv]

Both sides start from the same prompt ids (selfspec's; `tokenize` equals transformers' GGUF
tokenizer) and pick the argmax at every step (llama.cpp: top_k 1, no repetition penalty). llama.cpp
rounds activations to 8 bits for its integer dot products and keeps the KV cache in f16; selfspec
multiplies f32 activations with the exactly decoded weights. So a near-tie between the two best
logits can go either way, and the continuations part from there: the script reports, per
prompt, how many tokens agree before the first difference. With --f32-dir (the GGUF dequantized
by transformers, as scripts/bench_gguf.py makes it), transformers' own greedy decoding of the
same weights in f32 is the third column: the exact reference selfspec should equal. With --f16-kv
selfspec keeps its KV cache in f16 (`--kv-cache f16`, generate's default), and its own exact run
(f32 cache) is one more column.
"""
import argparse
import glob
import json
import os
import random
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def prompts(n, seed):
    import yaml

    texts = []
    for path in sorted(glob.glob(os.path.join(ROOT, "sample-seeds", "*.yaml"))):
        with open(path, encoding="utf-8") as f:
            doc = yaml.safe_load(f)
        for s in doc.get("seeds", []) if isinstance(doc, dict) else []:
            texts.append((s["instruction"] + ("\n\n" + s["input"] if s.get("input") else "")).strip())
    for path in sorted(glob.glob(os.path.join(ROOT, "sample-seeds", "*.corpus.jsonl"))):
        with open(path, encoding="utf-8") as f:
            for line in f:
                words = json.loads(line)["text"].split()
                texts.append(" ".join(words[: 12 + len(words) % 20]))
    rng = random.Random(seed)
    return rng.sample(texts, min(n, len(texts)))


def ours(binary, gguf, prompt, new, chat, int8=False, f16_kv=False):
    cmd = [binary, "complete", "--model", gguf, "--prompt", prompt, "--greedy", "--max-new-tokens", str(new), "--json"]
    cmd += (["--chat"] if chat else []) + (["--int8-activations"] if int8 else [])
    cmd += ["--kv-cache", "f16"] if f16_kv else []
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("binary")
    ap.add_argument("gguf")
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--new", type=int, default=32)
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--chat", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--f32-dir", help="the dequantized folder, for transformers' greedy tokens")
    ap.add_argument("--int8", action="store_true",
                    help="selfspec with --int8-activations (activations rounded to int8, as llama.cpp's)")
    ap.add_argument("--f16-kv", action="store_true",
                    help="selfspec with --kv-cache f16 (as llama.cpp keeps its cache); its f32-cache run is a column")
    args = ap.parse_args()
    from llama_cpp import Llama

    hf = None
    if args.f32_dir:
        import torch
        from transformers import AutoModelForCausalLM

        torch.set_num_threads(args.threads)
        hf = AutoModelForCausalLM.from_pretrained(args.f32_dir, dtype=torch.float32)
    llm = Llama(model_path=args.gguf, n_threads=args.threads, n_ctx=2048, verbose=False, logits_all=False)
    eos = llm.token_eos()
    rows = []
    for prompt in prompts(args.n, args.seed):
        mine = ours(args.binary, args.gguf, prompt, args.new, args.chat, args.int8, args.f16_kv)
        llm.reset()
        theirs = []
        for tok in llm.generate(mine["prompt_ids"], top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0):
            if len(theirs) == len(mine["ids"]) or tok == eos:
                break
            theirs.append(tok)
        if len(mine["ids"]) > len(theirs) and mine["ids"][len(theirs)] == eos:
            theirs.append(eos)  # selfspec keeps the end token it stopped on
        ref = None
        if hf is not None:
            import torch

            with torch.no_grad():
                out = hf.generate(torch.tensor([mine["prompt_ids"]]), max_new_tokens=len(mine["ids"]), do_sample=False,
                                  eos_token_id=eos, pad_token_id=eos)
            ref = out[0, len(mine["prompt_ids"]):].tolist()
        exact = None
        if args.f16_kv:
            exact = ours(args.binary, args.gguf, prompt, args.new, args.chat, args.int8)["ids"]
        rows.append((mine["ids"], theirs, ref, prompt, exact))

    def agree(a, b):
        n = 0
        for x, y in zip(a, b):
            if x != y:
                break
            n += 1
        return n

    print(f"{os.path.basename(args.gguf)}: {len(rows)} prompts{' (chat template)' if args.chat else ''}, "
          f"up to {args.new} greedy tokens; selfspec {'with int8 activations' if args.int8 else 'exact (f32 activations)'}"
          f"{', f16 KV cache' if args.f16_kv else ''}")
    total = sum(len(r[0]) for r in rows)
    names = [("llama.cpp", 1)] + ([("transformers f32", 2)] if hf is not None else [])
    names += [("selfspec with an f32 cache", 4)] if args.f16_kv else []
    for name, i in names:
        same = sum(r[0] == r[i] for r in rows)
        print(f"against {name}: identical continuations {same}/{len(rows)}; tokens before the first "
              f"difference {sum(agree(r[0], r[i]) for r in rows)} of {total}")
    for r in rows:
        for name, i in names:
            if r[0] != r[i]:
                print(f"  {name} differs at token {agree(r[0], r[i])} of {len(r[0])}: {r[3][:60]!r}")


if __name__ == "__main__":
    main()
