#!/usr/bin/env python3
"""What the "unusable items in a row" rule (prompts::list_gone_bad) would have done to a finished
generation run made without it.

The rule ends a task list once its last J finished items (an item is finished when the next one
begins) each lack an instruction or an input, or repeat an earlier item's instruction of the
same list (ROUGE-L F above 0.7, rouge-score's tokenizer). This replays it, in Python, on every
list of RUN/tasks.jsonl for J = 1, 2 and 3 and reports the lists it would end, the list tokens
it would not decode (the model's own tokenizer, read from the GGUF by llama-cpp-python) and the
tasks that passed the task filters (parsed, not too similar, not blacklisted, input not a
restatement) but come after the point where it fires: tasks the rule would lose.

    python3 scripts/check_list_stop.py RUN MODEL.gguf
"""

import argparse
import json
import os
import re
import sys

MARK = r"(?mi)^[ \t]*(?:(?:task[ \t]*#?[ \t]*)?\d+[ \t]*[.):-]?[ \t]*)?{}s?[ \t]*:[ \t]*"
TASK_FILTERS = ("too_similar", "blacklisted", "input_restates_instruction")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("model")
    args = ap.parse_args()
    try:
        from llama_cpp import Llama
        from rouge_score import rouge_scorer
    except ImportError as e:
        sys.exit(f"check_list_stop: {e}; install llama-cpp-python and rouge-score")
    llm = Llama(model_path=args.model, vocab_only=True, verbose=False)
    count = lambda s: len(llm.tokenize(s.encode(), add_bos=False, special=False))
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    instruction_re, input_re, output_re = (re.compile(MARK.format(w)) for w in ("instruction", "input", "output"))
    dropped = set()
    with open(os.path.join(args.run, "filtered.jsonl")) as f:
        for line in f:
            r = json.loads(line)
            if r["rejection"]["filter"] in TASK_FILTERS:
                dropped.add(r["id"])
    lists = [json.loads(l) for l in open(os.path.join(args.run, "tasks.jsonl"))]
    total_tokens = passed_total = 0
    fired, saved, lost = {}, {}, {}
    for entry in lists:
        text = entry["text"]
        n = count(text)
        total_tokens += n
        # The text begins with the primer ("Task N\nInstruction:"), which opens the first item.
        starts = list(instruction_re.finditer(text))
        passed = [t["id"] not in dropped for t in entry["tasks"]]
        passed_total += sum(passed)
        usable, kept_here, seen, taken = [], [], [], 0
        for i, m in enumerate(starts):
            end = starts[i + 1].start() if i + 1 < len(starts) else len(text)
            item = output_re.split(text[m.end() : end])[0]
            found = input_re.search(item)
            instruction = (item[: found.start()] if found else item).strip()
            has_input = bool(found) and item[found.end() :].strip() != ""
            repeat = any(scorer.score(p, instruction)["rougeL"].fmeasure > 0.7 for p in seen) if instruction else False
            seen.append(instruction)
            usable.append(has_input and instruction != "" and not repeat)
            # Parsed tasks are the items with an instruction and an input, in order.
            if has_input and instruction and taken < len(passed):
                kept_here.append(passed[taken])
                taken += 1
            else:
                kept_here.append(False)
        for j in (1, 2, 3):
            run = 0
            for i, ok in enumerate(usable):
                run = 0 if ok else run + 1
                if run >= j and i + 1 < len(starts):
                    fired[j] = fired.get(j, 0) + 1
                    saved[j] = saved.get(j, 0) + n - count(text[: starts[i + 1].start()])
                    lost[j] = lost.get(j, 0) + sum(kept_here[i + 1 :])
                    break
    print(f"{len(lists)} lists, {total_tokens} list tokens, {passed_total} tasks passed the task filters")
    print("| J | lists ended | tokens saved | share | passed tasks lost |")
    print("|---:|---:|---:|---:|---:|")
    for j in (1, 2, 3):
        s = saved.get(j, 0)
        print(f"| {j} | {fired.get(j, 0)} | {s} | {100 * s / max(total_tokens, 1):.1f} % | {lost.get(j, 0)} |")


if __name__ == "__main__":
    main()
