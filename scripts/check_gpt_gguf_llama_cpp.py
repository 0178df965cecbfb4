#!/usr/bin/env python3
"""MPT and Falcon GGUF files from `selfspec quantize`, run by llama.cpp: the reference for files
"as llama.cpp writes them" (transformers' GGUF loader reads no MPT, and reads Falcon's fused
q/k/v rows without llama.cpp's reordering).

For each tiny model (tests/fixtures/models/mpt-alibi-clip, falcon-7b-layout, falcon-40b-layout):
`selfspec quantize --type f32`, then a copy of the file with the model's byte-level BPE added as
`tokenizer.ggml.*` (llama.cpp will not load a file without one; selfspec writes none), then
llama.cpp's last-position logits on the prompts' token ids, against transformers' (expected.json)
and selfspec's own on the same file. Prints one table.

    pip install gguf numpy "shared/wheels/llama_cpp_python-*.whl"
    python scripts/check_gpt_gguf_llama_cpp.py target/release/selfspec
"""
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
from gguf import GGUFReader, GGUFWriter, GGUFValueType

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = ["mpt-alibi-clip", "falcon-7b-layout", "falcon-40b-layout"]


def with_tokenizer(src, dst, model_dir):
    """`src` with tokenizer.ggml.* from the model's tokenizer.json (gpt2-style BPE)."""
    reader = GGUFReader(src)
    arch = bytes(reader.fields["general.architecture"].parts[-1]).decode()
    w = GGUFWriter(dst, arch)
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        kind = field.types[0]
        if kind == GGUFValueType.STRING:
            w.add_string(name, bytes(field.parts[-1]).decode())
        elif kind == GGUFValueType.ARRAY:
            continue
        else:
            value = field.parts[-1][0].item()
            {GGUFValueType.UINT32: w.add_uint32, GGUFValueType.FLOAT32: w.add_float32,
             GGUFValueType.BOOL: w.add_bool, GGUFValueType.INT32: w.add_int32}[kind](name, value)
    tok = json.load(open(os.path.join(model_dir, "tokenizer.json")))
    vocab = tok["model"]["vocab"]
    for t in tok.get("added_tokens", []):
        vocab[t["content"]] = t["id"]
    tokens = [None] * len(vocab)
    for t, i in vocab.items():
        tokens[i] = t
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    specials = {t["id"] for t in tok.get("added_tokens", [])}
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([3 if i in specials else 1 for i in range(len(tokens))])
    w.add_token_merges(merges)
    for t in reader.tensors:
        data = np.array(t.data)
        w.add_tensor(t.name, data.reshape([int(d) for d in reversed(t.shape)]), raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main():
    exe = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "target", "release", "selfspec")
    from llama_cpp import Llama
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in MODELS:
            model_dir = os.path.join(ROOT, "tests", "fixtures", "models", name)
            plain = os.path.join(tmp, f"{name}.gguf")
            subprocess.run([exe, "quantize", "--model", model_dir, "--type", "f32", "--out", plain, "--force"],
                           check=True, capture_output=True)
            full = os.path.join(tmp, f"{name}-tok.gguf")
            with_tokenizer(plain, full, model_dir)
            llm = Llama(model_path=full, logits_all=True, n_ctx=256, n_threads=2, verbose=False)
            expected = json.load(open(os.path.join(model_dir, "expected.json")))
            worst_hf, worst_ours, same_top = 0.0, 0.0, 0
            for case in expected["cases"]:
                ids = case["prompt_ids"]
                llm.reset()
                llm.eval(ids)
                ref = np.array(llm.scores[len(ids) - 1])
                hf = np.array(case["last_logits"])
                out = subprocess.run([exe, "complete", "--model", plain, "--prompt", case["prompt"], "--greedy",
                                      "--json", "--max-new-tokens", "1", "--device", "cpu"],
                                     check=True, capture_output=True, text=True)
                ours = json.loads(out.stdout.strip().splitlines()[-1])
                worst_hf = max(worst_hf, float(np.abs(ref - hf).max()))
                top_ours = {t: p for t, p in ours["top5"]}
                worst_ours = max(worst_ours, max(abs(ref[t] - p) for t, p in top_ours.items()))
                same_top += int(int(np.argmax(ref)) == ours["ids"][0])
            rows.append((name, len(expected["cases"]), worst_hf, worst_ours, same_top))
    print("| model | prompts | max |llama.cpp − transformers| | max |llama.cpp − selfspec| (top-5) | same first greedy token |")
    print("|---|---|---|---|---|")
    for name, n, a, b, same in rows:
        print(f"| {name} | {n} | {a:.2e} | {b:.2e} | {same}/{n} |")


if __name__ == "__main__":
    main()
