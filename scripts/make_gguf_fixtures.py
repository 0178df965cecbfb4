#!/usr/bin/env python3
"""GGUF fixtures and what transformers says about them.

Builds two tiny Hugging Face models whose rows fit every quantized block (hidden 256), writes
them as GGUF with `selfspec quantize` (Q4_0, Q4_K, Q8_0) and once with the gguf package itself
(Q8_0, llama.cpp's conventions, no selfspec code involved), then loads every file with
transformers (`from_pretrained(..., gguf_file=...)`, which dequantizes with the gguf package)
and records last-position logits and greedy continuations in expected.json.

Two more files come from the gguf package alone, f32, for what llama.cpp stores outside the
weights: Llama 3 rope scaling as the `rope_freqs` tensor (computed here with llama.cpp's
converter formula) and Mistral's `attention.sliding_window`. transformers' GGUF loader reads
neither, so their expected.json comes from transformers on the original Hugging Face model.

One more comes from the gguf package as llama.cpp's converter lays out Gemma 3 (norms stored
with their 1 added, `post_attention_norm`/`ffn_norm`/`post_ffw_norm`, every sixth layer global,
the local rotary base 10,000), Q8_0, with transformers' GGUF loader as the reference (it
subtracts the 1 again).

    python scripts/make_gguf_fixtures.py target/release/selfspec
    python scripts/make_gguf_fixtures.py target/release/selfspec gemma3   # only the Gemma 3 file
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import torch
from gguf import GGMLQuantizationType, GGUFWriter, quants
from transformers import AutoModelForCausalLM, Gemma3TextConfig, LlamaConfig, MistralConfig, Qwen2Config

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_tiny_models import VOCAB, save_random_model  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "gguf")
PROMPTS = ["The patient", "Gross margin fell because memory chip costs rose, while", "Which receptor does losartan block?"]
COMMON = dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-6, vocab_size=VOCAB)


def permute(w, n_head):
    """llama.cpp's q/k row permutation for rotary embedding over adjacent pairs."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def llama3_rope_factors(rope, head_dim):
    """llama.cpp's `rope_freqs` for Llama 3 scaling (convert_hf_to_gguf.py's formula)."""
    import math
    base, factor = rope["rope_theta"], rope["factor"]
    low, high, old = rope["low_freq_factor"], rope["high_freq_factor"], rope["original_max_position_embeddings"]
    low_wavelen, high_wavelen = old / low, old / high
    factors = []
    for i in range(0, head_dim, 2):
        freq = 1.0 / (base ** (i / head_dim))
        wavelen = 2 * math.pi / freq
        if wavelen < high_wavelen:
            factors.append(1.0)
        elif wavelen > low_wavelen:
            factors.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(factors, dtype=np.float32)


def write_gguf(hf_dir, path, arch, parts, qtype, middle, transform, first=None):
    """A GGUF of the Hugging Face model in `hf_dir` written by the gguf package, named as llama.cpp's
    converter names it (`parts`: the layer tensors' names). `first(w, cfg)` writes what comes before
    the shared metadata, `middle(w, cfg)` the architecture's keys between the head counts and the
    vocabulary size, `transform(name, data, cfg)` each tensor's values as the converter stores them."""
    from safetensors.numpy import load_file
    cfg = json.load(open(os.path.join(hf_dir, "config.json")))
    t = load_file(os.path.join(hf_dir, "model.safetensors"))
    w = GGUFWriter(path, arch)
    if first:
        first(w, cfg)
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    middle(w, cfg)
    w.add_vocab_size(cfg["vocab_size"])
    w.add_bos_token_id(cfg["bos_token_id"])
    w.add_eos_token_id(cfg["eos_token_id"])
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    for name, data in t.items():
        if name in names:
            gname = names[name]
        else:
            layer, rest = name[len("model.layers."):].split(".", 1)
            part, suffix = rest.rsplit(".", 1)
            gname = f"blk.{layer}.{parts[part]}.{suffix}"
        data = transform(name, data.astype(np.float32), cfg)
        if data.ndim == 2 and qtype != GGMLQuantizationType.F32:
            w.add_tensor(gname, quants.quantize(data, qtype), raw_dtype=qtype)
        else:
            w.add_tensor(gname, data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


LLAMA_PARTS = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
               "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
               "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
# Gemma's post_attention_layernorm is its attention's output norm; ffn_norm is the pre-MLP one.
GEMMA3_PARTS = dict(LLAMA_PARTS, **{"self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm",
                                    "post_attention_layernorm": "post_attention_norm",
                                    "pre_feedforward_layernorm": "ffn_norm",
                                    "post_feedforward_layernorm": "post_ffw_norm"})


def write_with_gguf_package(hf_dir, path, qtype=GGMLQuantizationType.Q8_0):
    """A llama GGUF written by the gguf package, as llama.cpp's converter lays it out."""
    def first(w, cfg):
        rope = cfg["rope_parameters"]
        if rope.get("rope_type") == "llama3":
            w.add_tensor("rope_freqs.weight", llama3_rope_factors(rope, cfg["hidden_size"] // cfg["num_attention_heads"]))
        if cfg.get("sliding_window"):
            w.add_sliding_window(cfg["sliding_window"])

    def middle(w, cfg):
        w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
        w.add_rope_freq_base(cfg["rope_parameters"]["rope_theta"])
        w.add_rope_dimension_count(cfg["hidden_size"] // cfg["num_attention_heads"])

    def transform(name, data, cfg):
        if name.endswith("q_proj.weight"):
            return permute(data, cfg["num_attention_heads"])
        if name.endswith("k_proj.weight"):
            return permute(data, cfg["num_key_value_heads"])
        return data

    write_gguf(hf_dir, path, "llama", LLAMA_PARTS, qtype, middle, transform, first)


def write_gemma3_with_gguf_package(hf_dir, path, qtype=GGMLQuantizationType.Q8_0):
    """A gemma3 GGUF written by the gguf package with llama.cpp's converter's conventions."""
    def middle(w, cfg):
        w.add_key_length(cfg["head_dim"])
        w.add_value_length(cfg["head_dim"])
        w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
        w.add_rope_freq_base(cfg["rope_parameters"]["full_attention"]["rope_theta"])
        w.add_sliding_window(cfg["sliding_window"])

    def transform(name, data, cfg):
        return data + 1.0 if name.endswith("norm.weight") else data

    write_gguf(hf_dir, path, "gemma3", GEMMA3_PARTS, qtype, middle, transform)


def gemma3(work):
    """Six layers (the sixth global), a window of 4, head_dim 256 = query_pre_attn_scalar: Gemma 3 as
    llama.cpp assumes it (and as transformers' GGUF loader, which reads no query scale, does)."""
    config = Gemma3TextConfig(hidden_size=256, intermediate_size=256, num_hidden_layers=6, num_attention_heads=2,
                              num_key_value_heads=1, head_dim=256, query_pre_attn_scalar=256, sliding_window=4,
                              max_position_embeddings=512, rms_norm_eps=1e-6, vocab_size=VOCAB,
                              rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1_000_000.0},
                                               "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0}})
    hf = os.path.join(work, "gemma3")
    _, tokenizer = save_random_model(config, True, 15, hf)
    folder = os.path.join(OUT, "gemma3")
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    shutil.copy(os.path.join(hf, "tokenizer.json"), folder)
    fname = "q8_0-gguf-package.gguf"
    write_gemma3_with_gguf_package(hf, os.path.join(folder, fname))
    json.dump({fname: reference(folder, fname, tokenizer)}, open(os.path.join(folder, "expected.json"), "w"))


def record(model, tokenizer):
    """Per prompt: `tokenizer(prompt)` ids, last-position logits and 16 greedy tokens."""
    cases = []
    for text in PROMPTS:
        ids = tokenizer(text)["input_ids"]
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0, -1].tolist()
            out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                 do_sample=False, max_new_tokens=16)[0, len(ids):].tolist()
        cases.append({"prompt": text, "prompt_ids": ids, "last_logits": logits, "greedy_ids": out})
    return cases


def reference(folder, fname, tokenizer):
    """transformers on the GGUF file (dequantized by the gguf package)."""
    return record(AutoModelForCausalLM.from_pretrained(folder, gguf_file=fname, dtype=torch.float32,
                                                       attn_implementation="eager").eval(), tokenizer)


def reference_hf(hf_dir, tokenizer):
    """transformers on the Hugging Face model itself."""
    return record(AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32,
                                                       attn_implementation="eager").eval(), tokenizer)


def main():
    selfspec = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "target", "release", "selfspec")
    work = tempfile.mkdtemp()
    if sys.argv[2:] == ["gemma3"]:
        gemma3(work)
        shutil.rmtree(work)
        return
    shutil.rmtree(OUT, ignore_errors=True)
    models = {
        "llama": (LlamaConfig(tie_word_embeddings=False, **COMMON), True, 11),
        "qwen2": (Qwen2Config(tie_word_embeddings=True, **COMMON), False, 12),
    }
    for name, (config, add_bos, seed) in models.items():
        hf = os.path.join(work, name)
        _, tokenizer = save_random_model(config, add_bos, seed, hf)
        folder = os.path.join(OUT, name)
        os.makedirs(folder)
        types = ["q4_0", "q4k", "q8_0"] if name == "llama" else ["q8_0"]
        expected = {}
        for qtype in types:
            fname = f"{qtype}.gguf"
            subprocess.run([selfspec, "quantize", "--model", hf, "--type", qtype, "--out",
                            os.path.join(folder, fname)], check=True)
            expected[fname] = reference(folder, fname, tokenizer)
        if name == "llama":
            fname = "q8_0-gguf-package.gguf"
            write_with_gguf_package(hf, os.path.join(folder, fname))
            expected[fname] = reference(folder, fname, tokenizer)
        json.dump(expected, open(os.path.join(folder, "expected.json"), "w"))
    small = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-6, vocab_size=VOCAB,
                 tie_word_embeddings=False)
    llama3 = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
              "high_freq_factor": 4.0, "original_max_position_embeddings": 16}
    extra = {
        "llama3-rope": (LlamaConfig(rope_parameters=llama3, **small), 13),
        "mistral-window": (MistralConfig(sliding_window=4, **small), 14),
    }
    for name, (config, seed) in extra.items():
        hf = os.path.join(work, name)
        _, tokenizer = save_random_model(config, True, seed, hf)
        folder = os.path.join(OUT, name)
        os.makedirs(folder)
        shutil.copy(os.path.join(hf, "tokenizer.json"), folder)
        fname = "f32-gguf-package.gguf"
        write_with_gguf_package(hf, os.path.join(folder, fname), GGMLQuantizationType.F32)
        json.dump({fname: reference_hf(hf, tokenizer)}, open(os.path.join(folder, "expected.json"), "w"))
    gemma3(work)
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
