#!/usr/bin/env python3
"""A real GGUF file's tokenizer and chat template: selfspec against transformers.

Reads only the .gguf (nothing beside it): `selfspec tokenize --model FILE --jsonl` against
`AutoTokenizer.from_pretrained(dir, gguf_file=...)` on N varied strings (the fixture script's
generator: code, digits, Unicode, whitespace runs, special tokens inside text, corpus text), and
`selfspec tokenize --chat` against `apply_chat_template(..., add_generation_prompt=True,
tokenize=True)`. Prints one line per check and exits 1 on any difference.

    python scripts/check_gguf_tokenizer.py target/release/selfspec SmolLM2-135M-Instruct.Q4_1.gguf [--n 5000]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_gguf_tokenizer_fixtures import varied_strings  # noqa: E402


def selfspec_ids(binary, gguf, strings, chat):
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False, encoding="utf-8") as f:
        for s in strings:
            f.write(json.dumps({"text": s}, ensure_ascii=False) + "\n")
        name = f.name
    cmd = [binary, "tokenize", "--model", gguf, "--jsonl", name] + (["--chat"] if chat else [])
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    os.unlink(name)
    return [json.loads(line)["ids"] for line in out.splitlines()]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("binary")
    ap.add_argument("gguf")
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    from transformers import AutoTokenizer

    path = os.path.abspath(args.gguf)
    tok = AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))
    specials = [t for t in tok.all_special_tokens][:8]
    strings = varied_strings(args.n, args.seed, specials)
    failed = 0
    for chat in (False, True):
        if chat and not tok.chat_template:
            print(f"{os.path.basename(path)}: chat template: none in the file (a base model), not checked")
            continue
        ours = selfspec_ids(args.binary, path, strings, chat)
        if chat:
            theirs = [list(tok.apply_chat_template([{"role": "user", "content": s}], add_generation_prompt=True,
                                                   tokenize=True, return_dict=False)) for s in strings]
        else:
            theirs = [tok(s).input_ids for s in strings]
        wrong = [(s, a, b) for s, a, b in zip(strings, ours, theirs) if a != b]
        label = "chat template + ids" if chat else "ids"
        print(f"{os.path.basename(path)}: {label}: {len(strings) - len(wrong)}/{len(strings)} strings equal "
              f"({sum(len(t) for t in theirs)} tokens; specials tried: {specials})")
        for s, a, b in wrong[:5]:
            print(f"  {s!r}\n    selfspec     {a}\n    transformers {b}")
        failed += len(wrong)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
