#!/usr/bin/env python3
"""GGUF files that carry their tokenizer in metadata, and the ids transformers gives for them.

A GGUF file has no tokenizer.json: llama.cpp's converter stores the vocabulary, merges, scores,
token types and special ids under `tokenizer.ggml.*`. This script writes small such files with
the gguf package and records, for a few thousand varied strings, the ids of transformers' own
GGUF conversion (`AutoTokenizer.from_pretrained(dir, gguf_file=...)`), and the chat template
rendered by `apply_chat_template`. tests/gguf_tokenizer.rs checks selfspec against them.

Vocabularies are trained here on the bundled sample corpora (so the files are small and ours):
- a byte-level BPE (`tokenizer.ggml.model` gpt2) written three times with the pre-tokenizers
  `smollm` (GPT-2's split), `llama-bpe` and `qwen2`, with control and user-defined tokens;
- a SentencePiece BPE with byte fallback (`llama`), scores and no merges, as llama.cpp writes
  Llama 2 files.

It also writes `tests/fixtures/gguf/lone/model.gguf`: the tiny llama fixture's Q8_0 weights
with the tiny model's byte-level tokenizer in metadata and no tokenizer.json beside it, so the
tests can load a lone file and compare its greedy tokens with transformers'.

    python scripts/make_gguf_tokenizer_fixtures.py
    python scripts/make_gguf_tokenizer_fixtures.py gemma3   # only the Gemma-shaped file (spm-gemma3.gguf)
"""
import json
import os
import random
import sys
import tempfile

import numpy as np
from gguf import GGUFReader, GGUFWriter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "gguf-tokenizer")

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou answer questions about medicine and finance.<|im_end|>\\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] | trim + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# A Llama-2-style template: bos_token, raise_exception, slicing and namespace-free loops.
LLAMA_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + content.strip() + ' ' + eos_token }}{% endif %}"
    "{% endfor %}"
)

CONVERSATIONS = [
    [{"role": "user", "content": "Which receptor does losartan block?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "  Define EBITDA.  "}],
    [
        {"role": "user", "content": "What is gross margin?"},
        {"role": "assistant", "content": "Revenue minus cost of goods, over revenue."},
        {"role": "user", "content": "And for a bank?\nExplain ünïcode too."},
    ],
]


def corpus_text():
    lines = []
    for name in ("biomedical", "finance", "sports"):
        with open(os.path.join(ROOT, "sample-seeds", f"{name}.corpus.jsonl"), encoding="utf-8") as f:
            for line in f:
                lines.append(json.loads(line)["text"])
    return lines


def varied_strings(n, seed, specials):
    """Strings of every kind a tokenizer gets wrong: code, digits, Unicode, whitespace runs,
    special tokens inside text, and sentences from the corpora."""
    rng = random.Random(seed)
    corpus = corpus_text()
    words = " ".join(corpus).split()
    pieces = [
        "def f(x):\n    return x**2  # square\n", "for (int i = 0; i < n; ++i) { a[i] += b[i]; }",
        "if x != None and y >= 3:\n\tprint(f\"{x!r}\")", "SELECT * FROM t WHERE id = 42;", "<div class=\"a\">b</div>",
        "12345", "3.14159", "1,000,000", "2026-11-27", "0x1F", "-42", "1e-10", "99%", "$12.50", "v2.3.1",
        "héllo", "naïve café", "Straße", "Ελληνικά", "русский текст", "日本語のテキスト", "中文字符", "한국어",
        "مرحبا", "עברית", "emoji 😀🎉👍🏽", "👨‍👩‍👧", "e\u0301", "\u00a0nbsp", "zero\u200bwidth", "tab\there",
        "  ", "\n\n", "\t\t", "   leading", "trailing   ", "a  b   c    d", "\r\n", "line1\nline2\r\nline3",
        "don't", "I'M", "they'll", "we've", "she'd", "it's", "O'Neil", "'quoted'", "\"double\"",
        "!!!", "???", "...", "---", "***", "(a)[b]{c}", "a/b\\c", "@user #tag", "<unk>", "</s>", "<s>",
    ]
    out = []
    for i in range(n):
        kind = i % 6
        if kind == 0:
            s = rng.choice(corpus)
            a = rng.randrange(len(s))
            s = s[a:a + rng.randrange(1, 200)]
        elif kind == 1:
            s = "".join(rng.choice(pieces) + rng.choice(["", " ", "  ", "\n", "\t"]) for _ in range(rng.randrange(1, 5)))
        elif kind == 2:
            s = " ".join(rng.choice(words) for _ in range(rng.randrange(1, 12)))
            if specials:
                s = s.replace(" ", rng.choice([" ", f" {rng.choice(specials)} ", rng.choice(specials)]), 1)
        elif kind == 3:
            s = "".join(rng.choice([rng.choice(words), str(rng.randrange(10 ** rng.randrange(1, 9))),
                                    " " * rng.randrange(1, 6), rng.choice(pieces)]) for _ in range(rng.randrange(1, 8)))
        elif kind == 4:
            s = "".join(chr(rng.choice([rng.randrange(32, 127), rng.randrange(0xa0, 0x2000),
                                        rng.randrange(0x3040, 0x30ff), rng.randrange(0x4e00, 0x4f00),
                                        rng.randrange(0x1f300, 0x1f64f), 32, 10, 9]))
                        for _ in range(rng.randrange(1, 40)))
        else:
            s = rng.choice(specials) + rng.choice(words) if specials else rng.choice(words)
            s += rng.choice(["", "\n", " ", "  \n  "]) + rng.choice(pieces)
        out.append(s)
    out += ["", " ", "a", "\n", "  \n\n  "]
    return out


def byte_level_vocab():
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(vocab_size=1200, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus_text(), trainer)
    data = json.loads(tok.to_str())
    vocab = sorted(data["model"]["vocab"].items(), key=lambda kv: kv[1])
    tokens = [t for t, _ in vocab]
    merges = [" ".join(m) if isinstance(m, list) else m for m in data["model"]["merges"]]
    # A user-defined token (llama.cpp type 4), like Qwen's <think>.
    tokens.append("<think>")
    types = [3 if t in specials else 1 for t in tokens[:-1]] + [4]
    return tokens, merges, types


def sentencepiece_vocab(tmp):
    import sentencepiece as spm

    text = os.path.join(tmp, "corpus.txt")
    with open(text, "w", encoding="utf-8") as f:
        f.write("\n".join(corpus_text()))
    prefix = os.path.join(tmp, "sp")
    spm.SentencePieceTrainer.train(input=text, model_prefix=prefix, vocab_size=1000, model_type="bpe",
                                   byte_fallback=True, character_coverage=1.0, minloglevel=2,
                                   user_defined_symbols=["<think>"])
    sp = spm.SentencePieceProcessor(model_file=prefix + ".model")
    tokens, scores, types = [], [], []
    for i in range(sp.get_piece_size()):
        tokens.append(sp.id_to_piece(i))
        scores.append(sp.get_score(i))
        # llama.cpp's token types: 1 normal, 2 unknown, 3 control, 4 user-defined, 6 byte.
        types.append(2 if sp.is_unknown(i) else 3 if sp.is_control(i) else 6 if sp.is_byte(i)
                     else 4 if tokens[-1] == "<think>" else 1)
    return tokens, scores, types


def write(path, tokens, types, model, pre=None, merges=None, scores=None, bos=None, eos=None, unk=None, pad=None,
          add_bos=None, template=None, arch="llama", tensors=None, extra=None):
    w = GGUFWriter(path, arch)
    for key, value in (extra or {}).items():
        kind = type(value)
        {int: w.add_uint32, float: w.add_float32, str: w.add_string}[kind](key, value)
    if not extra:
        w.add_block_count(1)
        w.add_context_length(64)
        w.add_embedding_length(8)
        w.add_feed_forward_length(16)
        w.add_head_count(2)
    w.add_tokenizer_model(model)
    if pre:
        w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    if merges is not None:
        w.add_token_merges(merges)
    if scores is not None:
        w.add_token_scores(scores)
    for fn, value in ((w.add_bos_token_id, bos), (w.add_eos_token_id, eos), (w.add_unk_token_id, unk),
                      (w.add_pad_token_id, pad)):
        if value is not None:
            fn(value)
    if add_bos is not None:
        w.add_add_bos_token(add_bos)
    if template:
        w.add_chat_template(template)
    for name, array, raw_dtype in tensors or []:
        w.add_tensor(name, array, raw_dtype=raw_dtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def record(path, strings):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))
    chats = []
    if tok.chat_template:
        for conversation in CONVERSATIONS:
            for add in (True, False):
                try:
                    text = tok.apply_chat_template(conversation, tokenize=False, add_generation_prompt=add)
                except Exception as e:  # raise_exception in the template
                    text = {"error": str(e)}
                chats.append({"messages": conversation, "add_generation_prompt": add, "text": text})
    return {
        "cases": [{"text": s, "ids": tok(s).input_ids} for s in strings],
        "chats": chats,
        "decode": [{"ids": tok(s).input_ids, "text": tok.decode(tok(s).input_ids, skip_special_tokens=True)}
                   for s in strings[:300]],
    }


def lone_model():
    """The tiny llama fixture's Q8_0 weights with its tokenizer in metadata, nothing beside it."""
    src = os.path.join(ROOT, "tests", "fixtures", "gguf", "llama")
    reader = GGUFReader(os.path.join(src, "q8_0-gguf-package.gguf"))
    with open(os.path.join(src, "tokenizer.json"), encoding="utf-8") as f:
        tj = json.load(f)
    vocab = sorted(tj["model"]["vocab"].items(), key=lambda kv: kv[1])
    tokens = [t for t, _ in vocab]
    for added in tj["added_tokens"]:
        while len(tokens) <= added["id"]:
            tokens.append(f"[PAD{len(tokens)}]")
        tokens[added["id"]] = added["content"]
    specials = {a["content"] for a in tj["added_tokens"] if a["special"]}
    types = [3 if t in specials else 1 for t in tokens]
    merges = [" ".join(m) if isinstance(m, list) else m for m in tj["model"]["merges"]]
    extra = {}
    for key, field in reader.fields.items():
        if key.startswith("llama.") or key == "general.file_type":
            value = field.contents()
            extra[key] = value
    tensors = [(t.name, np.array(t.data), t.tensor_type) for t in reader.tensors]
    os.makedirs(os.path.join(OUT, "lone"), exist_ok=True)
    path = os.path.join(OUT, "lone", "model.gguf")
    # The tiny tokenizer adds <s> in front, as its tokenizer.json's template does.
    write(path, tokens, types, "gpt2", pre="smollm", merges=merges, add_bos=True, template=CHAT_TEMPLATE,
          bos=tokens.index("<s>"), eos=tokens.index("</s>"), pad=tokens.index("<pad>"), tensors=tensors, extra=extra)
    return path


def gemma_vocab(tmp):
    """A SentencePiece BPE shaped as Gemma's file is: no prefix space, tokens of spaces stored as
    real spaces and newline runs as user-defined tokens (both placed right after the control
    tokens, as Gemma's are), and scores that do not follow the merge order (all zero)."""
    tokens, _, types = sentencepiece_vocab(tmp)
    runs = ["\n", "\n\n", "\n\n\n", "  ", "   ", "    ", "\t\t"]
    at = max(i for i, t in enumerate(types) if t == 3) + 1
    tokens = tokens[:at] + runs + tokens[at:]
    types = types[:at] + [4] * len(runs) + types[at:]
    return tokens, [0.0] * len(tokens), types


def gemma(expected):
    with tempfile.TemporaryDirectory() as tmp:
        tokens, scores, types = gemma_vocab(tmp)
    name = "spm-gemma3.gguf"
    path = os.path.join(OUT, name)
    write(path, tokens, types, "llama", scores=scores, bos=1, eos=2, unk=0, add_bos=True, arch="gemma3")
    expected[name] = record(path, varied_strings(1500, 4, ["<s>", "</s>", "<think>"]))


def main():
    os.makedirs(OUT, exist_ok=True)
    if sys.argv[1:] == ["gemma3"]:
        with open(os.path.join(OUT, "expected.json"), encoding="utf-8") as f:
            expected = json.load(f)
        gemma(expected)
        with open(os.path.join(OUT, "expected.json"), "w", encoding="utf-8") as f:
            json.dump(expected, f, ensure_ascii=False, separators=(",", ":"))
        return
    expected = {}
    tokens, merges, types = byte_level_vocab()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>"]
    strings = varied_strings(1500, 1, specials)
    for pre, add_bos in (("smollm", False), ("llama-bpe", True), ("qwen2", False)):
        name = f"bpe-{pre}.gguf"
        path = os.path.join(OUT, name)
        write(path, tokens, types, "gpt2", pre=pre, merges=merges, bos=1, eos=2, unk=0, pad=2, add_bos=add_bos,
              template=CHAT_TEMPLATE)
        expected[name] = record(path, strings)
    with tempfile.TemporaryDirectory() as tmp:
        sp_tokens, scores, sp_types = sentencepiece_vocab(tmp)
    name = "spm-llama.gguf"
    path = os.path.join(OUT, name)
    write(path, sp_tokens, sp_types, "llama", scores=scores, bos=1, eos=2, unk=0, template=LLAMA_TEMPLATE)
    expected[name] = record(path, varied_strings(1500, 2, ["<s>", "</s>", "<think>"]))
    lone = lone_model()
    # Its own special tokens only: for a gpt2 file that names no unknown token, transformers
    # invents "<|endoftext|>" as a new id past the model's vocabulary (384 here), which no
    # model can embed; selfspec does not copy that.
    expected["lone/model.gguf"] = record(lone, varied_strings(200, 3, ["<s>", "</s>", "<pad>"]))
    gemma(expected)
    with open(os.path.join(OUT, "expected.json"), "w", encoding="utf-8") as f:
        json.dump(expected, f, ensure_ascii=False, separators=(",", ":"))
    for name, e in expected.items():
        print(name, len(e["cases"]), "strings,", sum(len(c["ids"]) for c in e["cases"]), "ids,", len(e["chats"]), "chats")


if __name__ == "__main__":
    main()
