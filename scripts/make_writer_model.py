#!/usr/bin/env python3
"""A tiny model trained to write the task lists and answers the generation pipeline asks for.

Random weights never write `Task N / Instruction: / Input:` lists, so end-to-end tests of
`selfspec generate` would see no samples at all. This script trains a small Llama (about a
million parameters) on the bundled sample seeds, laid out exactly as the Rust code lays out its
prompts (assets/prompts/), so that sampling from it gives well-formed but new task lists and short
answers that end with </s>. It is a format fixture, not a useful model.

Writes tests/fixtures/models/writer/ (config.json, model.safetensors, tokenizer.json,
generation_config.json). Takes a few minutes on two CPU cores.

    pip install torch transformers tokenizers safetensors pyyaml
    python scripts/make_writer_model.py            # from the repository root
"""
import json
import os
import random
import re
import shutil
import sys
import time

import torch
import yaml
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "models", "writer")
DOMAINS = ("biomedical", "finance", "sports")
VOCAB = 2048
MAX_LEN = 1536
STEPS = int(os.environ.get("WRITER_STEPS", "700"))


def template(name):
    with open(os.path.join(ROOT, "assets", "prompts", name + ".txt"), encoding="utf-8") as f:
        return f.read()


def render(text, **variables):
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: variables[m.group(1)], text)


def load_domains():
    out = {}
    for name in DOMAINS:
        with open(os.path.join(ROOT, "sample-seeds", name + ".yaml"), encoding="utf-8") as f:
            data = yaml.load(f, Loader=yaml.BaseLoader)  # every scalar a string, as in Rust
        with open(os.path.join(ROOT, "sample-seeds", name + ".corpus.jsonl"), encoding="utf-8") as f:
            docs = [json.loads(line) for line in f if line.strip()]
        out[name] = (data, docs)
    return out


def example(number, seed):
    """src/generate/prompts.rs `example`."""
    text = (seed.get("input") or "").strip() or "<noinput>"
    return f"Task {number}\nInstruction: {seed['instruction'].strip()}\nInput: {text}\n"


def instruction_prompt(data, demos, count):
    """src/generate/prompts.rs `instruction_prompt`: the prompt (ending with the primer)."""
    examples = "".join(example(i + 1, s) + "\n" for i, s in enumerate(demos))
    examples += f"Task {len(demos) + 1}\nInstruction:"
    description = (data.get("description") or "").strip() or "(no description given)"
    prompt = render(template("instruction_generation"), domain=data["domain"], description=description,
                    count=str(count), examples=examples)
    return prompt.rstrip()


def response_prompt(data, document, seed):
    """src/generate/pipeline.rs `response_prompt`."""
    name = "response_generation" if document is not None else "response_generation_no_document"
    text = render(template(name), domain=data["domain"], document=document or "",
                  instruction=seed["instruction"].strip(), input=(seed.get("input") or "").strip())
    return re.sub(r"\n{3,}", "\n\n", text).rstrip()


def make_tokenizer(texts):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<s>", "</s>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


VERBS = ["Summarise", "Explain", "List the main facts in", "Classify the tone of", "Extract the figures from",
         "Rewrite in plain words", "Identify the risks described in", "Compare the two claims in",
         "Write a short question about", "Give the key term defined in", "Describe who is affected by",
         "State the cause given in", "Name the outcome reported in", "Turn into three bullet points",
         "Point out what is missing from", "Judge whether the claim holds in", "Shorten to one sentence",
         "Find the number that matters in", "Draft a reply to", "Suggest a title for"]
OBJECTS = ["the passage on {t}", "this note about {t}", "the report on {t}", "the text below on {t}",
           "the excerpt about {t}", "this summary of {t}", "the paragraph on {t}"]
TAILS = ["", " for a newcomer", " in two sentences", " for a busy reader", " without jargon", " with one example",
         " and say why", " for an expert audience", " in under fifty words", " using the passage only"]


def synthetic_task(rng, docs):
    """A new task in the seeds' style, from combinable parts and a corpus passage: there are far
    too many combinations to memorise, so the model learns to write new ones."""
    doc = rng.choice(docs)
    obj = rng.choice(OBJECTS).format(t=doc["title"].lower())
    instruction = f"{rng.choice(VERBS)} {obj}{rng.choice(TAILS)}."
    if rng.random() < 0.3:
        instruction = instruction[:-1] + "?" if instruction.startswith(("Explain", "Describe")) else instruction
    return {"instruction": instruction, "input": doc["text"], "output": doc["text"].split(". ")[0] + "."}


def example_text(rng, domains):
    """One training text: a task-list continuation (two thirds) or an answer."""
    name = rng.choice(DOMAINS)
    data, docs = domains[name]
    seeds = data["seeds"]
    if rng.random() < 0.67:
        demos = rng.sample(seeds, 3)
        more = [synthetic_task(rng, docs) for _ in range(rng.randint(2, 5))]
        prompt = instruction_prompt(data, demos, rng.choice([3, 4, 5, 20]))
        first = more[0]
        text = " " + first["instruction"].strip() + "\nInput: " + ((first.get("input") or "").strip() or "<noinput>")
        text += "\n\n" + "".join(example(i + 5, s) + "\n" for i, s in enumerate(more[1:]))
        return prompt + text.rstrip("\n") + "\n"
    seed = rng.choice(seeds) if rng.random() < 0.5 else synthetic_task(rng, docs)
    document = None if rng.random() < 0.3 else rng.choice(docs)["text"]
    return response_prompt(data, document, seed) + " " + seed["output"].strip()


def main():
    rng = random.Random(7)
    torch.manual_seed(7)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    domains = load_domains()
    texts = [example_text(rng, domains) for _ in range(3000)]
    tokenizer = make_tokenizer(texts)
    eos = tokenizer.convert_tokens_to_ids("</s>")
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=128, intermediate_size=384, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=4096,
                         rms_norm_eps=1e-6, tie_word_embeddings=True, bos_token_id=0, eos_token_id=eos,
                         pad_token_id=tokenizer.convert_tokens_to_ids("<pad>"))
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa", dtype=torch.float32)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=STEPS, pct_start=0.05)
    encoded = []
    for t in texts:
        ids = tokenizer(t)["input_ids"][:MAX_LEN - 1] + [eos]
        encoded.append(ids)
    print(f"{len(encoded)} texts, mean {sum(map(len, encoded)) / len(encoded):.0f} tokens", file=sys.stderr)
    model.train()
    started = time.time()
    batch = 4
    for step in range(STEPS):
        chunk = [encoded[rng.randrange(len(encoded))] for _ in range(batch)]
        width = max(map(len, chunk))
        ids = torch.full((batch, width), config.pad_token_id)
        labels = torch.full((batch, width), -100)
        for i, c in enumerate(chunk):
            ids[i, :len(c)] = torch.tensor(c)
            labels[i, :len(c)] = torch.tensor(c)
        loss = model(input_ids=ids, attention_mask=(labels != -100).long(), labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
        if step % 100 == 0 or step == STEPS - 1:
            print(f"step {step} loss {loss.item():.3f} ({time.time() - started:.0f}s)", file=sys.stderr)
    model.eval()
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    model.save_pretrained(OUT, safe_serialization=True)
    tokenizer.save_pretrained(OUT)
    # A sample of what it writes, for a quick look.
    data, _ = domains["finance"]
    prompt = instruction_prompt(data, data["seeds"][:3], 3)
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, do_sample=True, top_p=0.98, temperature=1.0, max_new_tokens=200)
    print(tokenizer.decode(out[0, ids.shape[1]:]), file=sys.stderr)


if __name__ == "__main__":
    main()
