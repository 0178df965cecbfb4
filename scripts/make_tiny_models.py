#!/usr/bin/env python3
"""Tiny random models of every supported architecture, and what transformers says about them.

Writes tests/fixtures/models/<name>/ with config.json, model.safetensors (or shards with an index),
tokenizer.json, generation_config.json and expected.json: for each prompt, the ids that
`tokenizer(prompt)` gives, the last-position logits, and the greedy continuation of
`model.generate(..., do_sample=False, max_new_tokens=32)`, all from transformers in float32 with
eager attention. The Rust tests compare against these files and need no Python.

    pip install torch transformers tokenizers safetensors
    python scripts/make_tiny_models.py            # from the repository root
    python scripts/make_tiny_models.py gemma3     # only the models whose name starts so
"""
import json
import os
import shutil
import sys

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    AutoModelForCausalLM,
    FalconConfig,
    Gemma3TextConfig,
    LlamaConfig,
    MistralConfig,
    MptConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen3Config,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "models")
VOCAB = 384
PROMPTS = [
    "The patient",
    "Gross margin fell because memory chip costs rose, while",
    "Which receptor does losartan block? Answer:",
    "Café prices rose 3% — 😀 fans of the team cheered the late winner in the final minutes of extra time",
]


def corpus_lines():
    for name in ("biomedical", "finance", "sports"):
        with open(os.path.join(ROOT, "sample-seeds", f"{name}.corpus.jsonl"), encoding="utf-8") as f:
            for line in f:
                rec = json.loads(line)
                yield rec["title"] + ". " + rec["text"]


def make_tokenizer(add_bos):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=["<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(corpus_lines()), trainer=trainer)
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))]
        )
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def randomize(model, seed):
    """Weights large enough that logits differ by far more than float error (the default
    initialisation gives near-ties that make greedy comparisons fragile)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        gemma = model.config.model_type.startswith("gemma")
        # MPT's and Falcon's LayerNorms are named norm_1, ln_f, ln_attn, …
        layer_norms = {f"{m}.{p}" for m, mod in model.named_modules() if isinstance(mod, torch.nn.LayerNorm)
                       for p in ("weight", "bias")}
        for name, p in model.named_parameters():
            if name in layer_norms and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            elif name.endswith("norm.weight") and gemma:
                # Gemma's norms scale by 1 + weight.
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
            elif name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            else:
                fan_in = p.shape[-1]
                p.copy_(torch.randn(p.shape, generator=g) * (1.5 / fan_in**0.5))


def save_random_model(config, add_bos, seed, out, shard=None):
    """A model of `config` with weights from `randomize`, and its tokenizer, saved in `out`."""
    tokenizer = make_tokenizer(add_bos)
    config.vocab_size = VOCAB
    config.bos_token_id = tokenizer.convert_tokens_to_ids("<s>")
    config.eos_token_id = tokenizer.convert_tokens_to_ids("</s>")
    config.pad_token_id = tokenizer.convert_tokens_to_ids("<pad>")
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager", dtype=torch.float32)
    randomize(model, seed)
    model.eval()
    kwargs = {"max_shard_size": shard} if shard else {}
    model.save_pretrained(out, safe_serialization=True, **kwargs)
    tokenizer.save_pretrained(out)
    return model, tokenizer


def build(name, config, add_bos, seed, shard=None, old_rope_keys=None):
    out = os.path.join(OUT, name)
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    model, tokenizer = save_random_model(config, add_bos, seed, out, shard)
    if old_rope_keys is not None:
        # The same model described with the older keys: rope_theta and rope_scaling.
        path = os.path.join(out, "config.json")
        cfg = json.load(open(path))
        cfg.pop("rope_parameters", None)
        cfg.update(old_rope_keys)
        json.dump(cfg, open(path, "w"), indent=2)
        model = AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager", dtype=torch.float32).eval()

    cases = []
    for text in PROMPTS:
        ids = tokenizer(text)["input_ids"]
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0, -1].tolist()
            generated = model.generate(
                torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                do_sample=False, max_new_tokens=32,
            )[0, len(ids):].tolist()
        cases.append({
            "prompt": text,
            "prompt_ids": ids,
            "last_logits": logits,
            "greedy_ids": generated,
            "greedy_text": tokenizer.decode(generated, skip_special_tokens=True),
        })
    expected = {"model": name, "transformers": __import__("transformers").__version__,
                "torch": torch.__version__, "cases": cases}
    json.dump(expected, open(os.path.join(out, "expected.json"), "w"))
    print(f"{name}: {sum(p.numel() for p in model.parameters())} parameters", file=sys.stderr)


ONLY = sys.argv[1] if len(sys.argv) > 1 else ""


def main():
    global build
    full_build = build

    def build(name, *args, **kwargs):
        if name.startswith(ONLY):
            full_build(name, *args, **kwargs)

    common = dict(hidden_size=64, intermediate_size=160, num_hidden_layers=2, max_position_embeddings=256,
                  rms_norm_eps=1e-6)
    build("llama2", LlamaConfig(num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=False, **common),
          add_bos=True, seed=1)
    llama3_rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                   "high_freq_factor": 4.0, "original_max_position_embeddings": 16}
    build("llama3-gqa", LlamaConfig(num_attention_heads=8, num_key_value_heads=2, rope_parameters=llama3_rope,
                                    tie_word_embeddings=False, **common), add_bos=True, seed=2)
    old = {"rope_theta": 500000.0, "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                     "high_freq_factor": 4.0, "original_max_position_embeddings": 16}}
    build("llama3-old-keys-sharded", LlamaConfig(num_attention_heads=8, num_key_value_heads=2,
                                                 rope_parameters=llama3_rope, tie_word_embeddings=False, **common),
          add_bos=True, seed=3, shard="100KB", old_rope_keys=old)
    build("mistral-window", MistralConfig(num_attention_heads=4, num_key_value_heads=1, sliding_window=8,
                                          tie_word_embeddings=False, **common), add_bos=True, seed=4)
    build("qwen2-bias-tied", Qwen2Config(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                                         **common), add_bos=False, seed=5)
    build("qwen3-headdim", Qwen3Config(num_attention_heads=4, num_key_value_heads=2, head_dim=24,
                                       tie_word_embeddings=False, **common), add_bos=False, seed=6)
    # Gemma 3: a window of 8 over the sliding layers (the prompts are longer), the global layer
    # last, a head_dim that is not hidden / heads, and a query scale that is neither.
    gemma = dict(num_attention_heads=4, num_key_value_heads=1, head_dim=24, query_pre_attn_scalar=20,
                 sliding_window=8, **common)
    build("gemma3-window", Gemma3TextConfig(
        layer_types=["sliding_attention", "full_attention"],
        rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1_000_000.0},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0}},
        **gemma), add_bos=True, seed=7)
    # The Hub's older keys (rope_theta, rope_local_base_freq, rope_scaling on the global layers,
    # sliding_window_pattern), a final soft-cap, and sliding layers around a global one.
    gemma3 = dict(gemma, num_hidden_layers=3)
    build("gemma3-softcap-old-keys", Gemma3TextConfig(
        layer_types=["sliding_attention", "full_attention", "sliding_attention"],
        final_logit_softcapping=3.0, **gemma3), add_bos=True, seed=8,
        old_rope_keys={"rope_theta": 100_000.0, "rope_local_base_freq": 500.0,
                       "rope_scaling": {"rope_type": "linear", "factor": 4.0}})
    # MPT: ALiBi over 6 heads (not a power of two: the interleaved slopes), clipped q/k/v, no
    # biases and bias-free LayerNorms, a GELU MLP, tied head.
    build("mpt-alibi-clip", MptConfig(d_model=96, n_heads=6, n_layers=2, max_seq_len=256, expansion_ratio=4,
                                      attn_config={"clip_qkv": 2.0}, tie_word_embeddings=True),
          add_bos=False, seed=9)
    falcon = dict(hidden_size=64, num_hidden_layers=2, max_position_embeddings=256, layer_norm_epsilon=1e-5)
    # Falcon-7B's layout: one key/value head after all the queries, attention and MLP in
    # parallel on one LayerNorm, rotary positions.
    build("falcon-7b-layout", FalconConfig(num_attention_heads=4, multi_query=True, parallel_attn=True,
                                           new_decoder_architecture=False, bias=False, alibi=False,
                                           tie_word_embeddings=True, **falcon), add_bos=False, seed=10)
    # Falcon-40B's: key/value groups (each group's queries, then its key and value), two
    # LayerNorms in parallel, an untied head.
    build("falcon-40b-layout", FalconConfig(num_attention_heads=8, num_kv_heads=2, new_decoder_architecture=True,
                                            parallel_attn=True, bias=False, alibi=False,
                                            tie_word_embeddings=False, **falcon), add_bos=False, seed=11)
    # Falcon-RW's: ALiBi (slopes rounded to bfloat16 as transformers does), q/k/v interleaved per
    # head, attention then MLP in sequence, biases everywhere.
    build("falcon-rw-alibi", FalconConfig(num_attention_heads=4, multi_query=False, parallel_attn=False,
                                          new_decoder_architecture=False, bias=True, alibi=True,
                                          tie_word_embeddings=True, **falcon), add_bos=False, seed=12)


if __name__ == "__main__":
    main()
