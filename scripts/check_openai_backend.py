#!/usr/bin/env python3
"""selfspec's OpenAI-compatible backend checked against a server nobody here wrote.

Starts llama.cpp's server (llama-cpp-python[server]) and `selfspec serve` on 127.0.0.1, both
serving the same GGUF file as "smollm2", then with one selfspec binary:
  1. generates samples without documents (plain decoding), locally, through llama.cpp and
     through selfspec serve: time, samples/min, and how the responses agree;
  2. generates with the eq. 2 mixture over k=3 documents: locally (exact, every token of the
     vocabulary) and through both servers (their top-20 log-probabilities a step);
  3. evaluates 0-shot on the finance sets locally and through both servers;
  4. checks the errors: a closed port, a name the server does not serve, a server killed
     mid-run (then restarted: the same command finishes the run).
With --only-truncation: the eq. 2 mixture through `selfspec serve` (the local engine's numerics)
at top 5, 20 and 100 against the exact local mixture, the truncation's effect alone.
Agreement is counted in the GGUF's own tokens (llama.cpp's tokenizer): a response pair agrees
up to its first differing token. Writes a Markdown report and prints it.

usage: scripts/check_openai_backend.py --gguf FILE [--python PY] [--work DIR] [--out FILE] [--only-truncation]
       PY: a python with llama-cpp-python[server] (default: this one).
"""
import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# SELFSPEC_BIN: a copy of the binary, so that a build during a long run does not replace it.
BIN = Path(os.environ.get("SELFSPEC_BIN", ROOT / "target/release/selfspec"))
NAME = "smollm2"
REUSE = False

CONFIG = """generation:
  tasks_per_prompt: 5
  instruction_max_new_tokens: 300
  response_max_new_tokens: 48
  prompts_per_batch: 4
  responses_per_batch: 4
  k: 3
  document_max_chars: 500
  prompt_format: plain
  instruction_temperature: 0
  prompt_budget: 300
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url, proc, what, seconds=120):
    import urllib.request
    start = time.time()
    while time.time() - start < seconds:
        if proc.poll() is not None:
            sys.exit(f"{what} exited: see its log")
        try:
            urllib.request.urlopen(url + "/models", timeout=2).read()
            return
        except Exception:
            time.sleep(0.5)
    sys.exit(f"{what} did not answer at {url} in {seconds} s")


class Servers:
    def __init__(self, py, gguf, work):
        self.py, self.gguf, self.work = py, gguf, work
        self.llama = self.serve = None

    def start_llama(self):
        port = free_port()
        log = open(self.work / f"llama-{port}.log", "w")
        self.llama = subprocess.Popen(
            [self.py, "-m", "llama_cpp.server", "--model", str(self.gguf), "--model_alias", NAME,
             "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--logits_all", "true",
             "--interrupt_requests", "false", "--cache", "true", "--cache_size", str(64 << 20),
             "--n_threads", "2"],
            stdout=log, stderr=subprocess.STDOUT)
        self.llama_url = f"http://127.0.0.1:{port}/v1"
        wait_for(self.llama_url, self.llama, "llama.cpp's server")

    def start_serve(self):
        port = free_port()
        log = open(self.work / "serve.log", "w")
        self.serve = subprocess.Popen([str(BIN), "serve", "--model", str(self.gguf), "--served-name", NAME,
                                       "--port", str(port)], stdout=log, stderr=subprocess.STDOUT)
        self.serve_url = f"http://127.0.0.1:{port}/v1"
        wait_for(self.serve_url, self.serve, "selfspec serve")

    def stop(self):
        for p in (self.llama, self.serve):
            if p and p.poll() is None:
                p.send_signal(signal.SIGTERM)
                p.wait()


def selfspec(work, args, check=True, config="config.yaml"):
    cmd = [str(BIN), "--config", str(work / config), "--workspace", str(work / "ws")] + args
    start = time.time()
    r = subprocess.run(cmd, capture_output=True, text=True)
    took = time.time() - start
    if check and r.returncode != 0:
        sys.exit(f"failed ({r.returncode}): {' '.join(cmd)}\n{r.stderr[-3000:]}")
    return r, took


def timed(work, run, args, config="config.yaml"):
    """Runs a generation or evaluation into work/run, or with --reuse takes a finished one's
    recorded time (times.json keeps every run's seconds)."""
    times_file = work / "times.json"
    times = json.loads(times_file.read_text()) if times_file.exists() else {}
    if REUSE and run in times:
        return times[run]
    _, took = selfspec(work, args, config=config)
    times[run] = took
    times_file.write_text(json.dumps(times, indent=1))
    return took


def generate_args(work, run, n, mode, backend):
    args = ["generate", "--seeds", str(ROOT / "sample-seeds/finance.yaml"), "--n", str(n), "--seed", "5",
            "--mode", mode, "--run", str(work / run)]
    if mode != "none":
        args += ["--corpus", str(work / "index")]
    return args + backend


def samples(run):
    path = run / "samples.jsonl"
    return [json.loads(l) for l in path.read_text().splitlines()] if path.exists() else []


def agreement(tok, a_run, b_run):
    """Pairs of samples with the same id, instruction and input: exact responses, and the mean
    share of tokens before the first difference."""
    a = {s["id"]: s for s in samples(a_run)}
    pairs = [(a[s["id"]], s) for s in samples(b_run)
             if s["id"] in a and (a[s["id"]]["instruction"], a[s["id"]]["input"]) == (s["instruction"], s["input"])]
    exact, shares, tokens = 0, [], 0
    for x, y in pairs:
        tx = tok.tokenize(x["output"].encode(), add_bos=False, special=False)
        ty = tok.tokenize(y["output"].encode(), add_bos=False, special=False)
        same = 0
        while same < min(len(tx), len(ty)) and tx[same] == ty[same]:
            same += 1
        longest = max(len(tx), len(ty), 1)
        exact += tx == ty
        shares.append(same / longest)
        tokens += longest
    n = len(pairs)
    return {"pairs": n, "exact": exact, "prefix_share": sum(shares) / n if n else float("nan"), "tokens": tokens}


def response_tokens(tok, run):
    return sum(len(tok.tokenize(s["output"].encode(), add_bos=False, special=False)) for s in samples(run))


def truncation(a, gguf, tok):
    """Eq. 2 through `selfspec serve` (the local engine's own numerics) at several top-N against
    the exact local mixture: what the truncation alone (and the text round trip) changes. Two
    more comparisons tell the causes apart: the local mixture decoded one response a batch
    instead of 4 (the floor set by batching's float noise), and each served top-N against the
    largest (the truncation without the round trip, which every served run shares)."""
    work = a.work.with_name(a.work.name + "-truncation")
    if not a.reuse:
        subprocess.run(["rm", "-rf", str(work)])
    work.mkdir(parents=True, exist_ok=True)
    (work / "config.yaml").write_text(CONFIG)
    (work / "config-b1.yaml").write_text(CONFIG.replace("responses_per_batch: 4", "responses_per_batch: 1"))
    if not (work / "index").exists():
        selfspec(work, ["index", "build", str(ROOT / "sample-seeds/finance.corpus.jsonl"), "--out", str(work / "index")])
    servers = Servers(a.python, gguf, work)
    n = a.truncation
    try:
        servers.start_serve()
        took = timed(work, "local", generate_args(work, "local", n, "marginal", ["--model", str(gguf)]))
        rows = [f"| exact (local engine) | {took:.1f} | | | | {response_tokens(tok, work / 'local')} |"]
        print(rows[-1], flush=True)
        took = timed(work, "local-b1", generate_args(work, "local-b1", n, "marginal", ["--model", str(gguf)]),
                     config="config-b1.yaml")
        g = agreement(tok, work / "local", work / "local-b1")
        rows.append(f"| exact, one response a batch (local engine) | {took:.1f} | {g['pairs']} | {g['exact']} | "
                    f"{g['prefix_share'] * 100:.1f} % | {response_tokens(tok, work / 'local-b1')} |")
        print(rows[-1], flush=True)
        for top in a.tops:
            run = f"serve-top{top}"
            flags = ["--backend", "openai", "--endpoint", servers.serve_url, "--served-model", NAME,
                     "--top-logprobs", str(top)]
            took = timed(work, run, generate_args(work, run, n, "marginal", flags))
            g = agreement(tok, work / "local", work / run)
            rows.append(f"| top {top} through selfspec serve | {took:.1f} | {g['pairs']} | {g['exact']} | "
                        f"{g['prefix_share'] * 100:.1f} % | {response_tokens(tok, work / run)} |")
            print(rows[-1], flush=True)
        # The same at the default top 20, stepping in token ids: no text round trip.
        run = "serve-ids-top20"
        flags = ["--backend", "openai", "--endpoint", servers.serve_url, "--served-model", NAME,
                 "--top-logprobs", "20", "--tokenizer", str(gguf)]
        took = timed(work, run, generate_args(work, run, n, "marginal", flags))
        g = agreement(tok, work / "local", work / run)
        rows.append(f"| top 20 through selfspec serve, in token ids (--tokenizer) | {took:.1f} | {g['pairs']} | "
                    f"{g['exact']} | {g['prefix_share'] * 100:.1f} % | {response_tokens(tok, work / run)} |")
        print(rows[-1], flush=True)
    finally:
        servers.stop()
    most = max(a.tops)
    between = []
    for top in sorted(a.tops):
        if top != most:
            g = agreement(tok, work / f"serve-top{most}", work / f"serve-top{top}")
            between.append(f"| top {top} against top {most} | {g['pairs']} | {g['exact']} | "
                           f"{g['prefix_share'] * 100:.1f} % |")
    return ["## Truncation alone", "",
            f"{n} samples with the eq. 2 mixture (k = 3) through `selfspec serve` on the same file — the local "
            "engine's own numerics, so what differs is the top-N truncation and the text round trip — against "
            "the exact local mixture over the whole vocabulary:", "",
            "| mixture | seconds | pairs | identical responses | tokens before the first difference | response tokens |",
            "|---|---:|---:|---:|---:|---:|"] + rows + [
            "", "Between the served runs (the same round trip, only N differs):", "",
            "| served | pairs | identical responses | tokens before the first difference |",
            "|---|---:|---:|---:|"] + between


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", required=True, type=Path)
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--work", type=Path, default=ROOT / "target/openai-check")
    ap.add_argument("--out", type=Path, default=ROOT / "docs/results/openai-backend.md")
    ap.add_argument("--plain", type=int, default=16, help="samples without documents per backend")
    ap.add_argument("--marginal", type=int, default=10, help="samples with the eq. 2 mixture per backend")
    ap.add_argument("--truncation", type=int, default=40, help="samples for the truncation runs (0: none)")
    ap.add_argument("--tops", type=int, nargs="+", default=[5, 20, 100])
    ap.add_argument("--only-truncation", action="store_true", help="run only the truncation part")
    ap.add_argument("--reuse", action="store_true", help="keep --work and the runs it finished (times.json)")
    a = ap.parse_args()
    global REUSE
    REUSE = a.reuse
    gguf = a.gguf.resolve()
    if not BIN.exists():
        sys.exit(f"{BIN} is missing: cargo build --release")
    import llama_cpp
    tok = llama_cpp.Llama(model_path=str(gguf), vocab_only=True, verbose=False)
    if a.only_truncation:
        text = "\n".join(truncation(a, gguf, tok)) + "\n"
        out = a.out.with_name(a.out.stem + "-truncation.md")
        out.write_text("# The eq. 2 mixture's top-N truncation\n\nMade by `scripts/check_openai_backend.py --gguf "
                       f"{gguf.name} --only-truncation` on {time.strftime('%Y-%m-%d')}.\n\n" + text)
        print(text)
        return
    work = a.work
    if not a.reuse:
        subprocess.run(["rm", "-rf", str(work)])
    work.mkdir(parents=True, exist_ok=True)
    (work / "config.yaml").write_text(CONFIG)
    if not (work / "index").exists():
        selfspec(work, ["index", "build", str(ROOT / "sample-seeds/finance.corpus.jsonl"), "--out", str(work / "index")])
    for name in ("bad-endpoint", "bad-model", "killed"):
        subprocess.run(["rm", "-rf", str(work / name)])
    servers = Servers(a.python, gguf, work)
    lines = []
    try:
        servers.start_llama()
        servers.start_serve()
        local = ["--model", str(gguf)]
        # llama.cpp's server decodes one request at a time: one in flight keeps its prompt cache
        # on the k prompts of one response.
        llama = ["--backend", "openai", "--endpoint", servers.llama_url, "--served-model", NAME, "--concurrency", "1"]
        serve = ["--backend", "openai", "--endpoint", servers.serve_url, "--served-model", NAME]
        backends = [("local engine", "local", local), ("llama.cpp server", "llama", llama),
                    ("selfspec serve", "serve", serve)]

        # 1 and 2: generation.
        timing = {}
        for mode, n in (("none", a.plain), ("marginal", a.marginal)):
            for label, key, flags in backends:
                run = f"{mode}-{key}"
                took = timed(work, run, generate_args(work, run, n, mode, flags))
                timing[(mode, key)] = (took, len(samples(work / run)), response_tokens(tok, work / run))
                print(f"{run}: {took:.1f} s", flush=True)
        lines += ["## Generation", "",
                  f"`selfspec generate` on the finance seeds, {a.plain} samples without documents and "
                  f"{a.marginal} with the eq. 2 mixture over k = 3 documents (greedy task lists and responses, "
                  "plain prompts), one backend at a time on this 2-core machine.", "",
                  "| mode | backend | seconds | samples/min | response tokens | vs local |",
                  "|---|---|---:|---:|---:|---:|"]
        for mode in ("none", "marginal"):
            base = timing[(mode, "local")][0]
            for label, key, _ in backends:
                took, n, toks = timing[(mode, key)]
                lines.append(f"| {mode} | {label} | {took:.1f} | {n / took * 60:.1f} | {toks} | {base / took:.2f}× |")
        lines += ["", "Agreement with the local engine (pairs with the same instruction and input):", "",
                  "| mode | backend | pairs | identical responses | tokens before the first difference |",
                  "|---|---|---:|---:|---:|"]
        for mode in ("none", "marginal"):
            for label, key, _ in backends[1:]:
                g = agreement(tok, work / f"{mode}-local", work / f"{mode}-{key}")
                lines.append(f"| {mode} | {label} | {g['pairs']} | {g['exact']} | {g['prefix_share'] * 100:.1f} % |")

        # 3: evaluation.
        reports = {}
        for label, key, flags in backends:
            fmt = ["--prompt-format", "plain"] if key == "local" else []
            took = timed(work, f"eval-{key}", ["eval", "--data", str(ROOT / "sample-seeds/eval/finance"), "--shots",
                                               "0", "--run", str(work / f"eval-{key}")] + flags + fmt)
            reports[key] = (json.loads((work / f"eval-{key}/report.json").read_text()), took)
            print(f"eval-{key}: {took:.1f} s", flush=True)
        sets = reports["local"][0]["datasets"]
        lines += ["", "## Evaluation", "", "`selfspec eval` 0-shot on the finance sets (30 examples each), F1 / ROUGE-L:",
                  "", "| backend | seconds | " + " | ".join(sets) + " | identical answers |",
                  "|---|---:|" + "---:|" * len(sets) + "---:|"]
        def preds(key):
            return {(p["dataset"], p["index"]): p["prediction"]
                    for p in map(json.loads, (work / f"eval-{key}/predictions.jsonl").read_text().splitlines())}
        local_preds = preds("local")
        for label, key, _ in backends:
            rep, took = reports[key]
            cells = {c["dataset"]: c for c in rep["cells"]}
            p = preds(key)
            same = sum(local_preds[k] == v for k, v in p.items())
            row = " | ".join(f"{cells[d]['f1']:.1f} / {cells[d]['rougeL']:.1f}" for d in sets)
            lines.append(f"| {label} | {took:.1f} | {row} | {same}/{len(p)} |")

        # 4: errors and a resumed run.
        lines += ["", "## Errors", ""]
        closed = f"http://127.0.0.1:{free_port()}"
        r, _ = selfspec(work, generate_args(work, "bad-endpoint", 2, "none",
                                            ["--backend", "openai", "--endpoint", closed, "--served-model", NAME]),
                        check=False)
        lines.append(f"- closed port (exit {r.returncode}): `{r.stderr.strip().splitlines()[-1]}`")
        r, _ = selfspec(work, generate_args(work, "bad-model", 2, "none",
                                            ["--backend", "openai", "--endpoint", servers.llama_url,
                                             "--served-model", "SmolLM2-135M-Instruct"]), check=False)
        lines.append(f"- a name llama.cpp does not serve (exit {r.returncode}): `{r.stderr.strip().splitlines()[-1]}`")
        run = work / "killed"
        cmd = [str(BIN), "--config", str(work / "config.yaml"), "--workspace", str(work / "ws")] + generate_args(
            work, "killed", 12, "none", llama + ["--retries", "3"])
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        while not samples(run):
            if proc.poll() is not None:
                sys.exit("the run ended before its first sample: " + proc.stderr.read())
            time.sleep(0.2)
        servers.llama.send_signal(signal.SIGKILL)
        servers.llama.wait()
        err = proc.communicate()[1].strip().splitlines()[-1]
        kept = len(samples(run))
        lines.append(f"- llama.cpp's server killed (SIGKILL) after the first sample (exit {proc.returncode}, "
                     f"{kept} samples kept): `{err}`")
        servers.start_llama()
        llama = ["--backend", "openai", "--endpoint", servers.llama_url, "--served-model", NAME, "--concurrency", "1"]
        r, _ = selfspec(work, generate_args(work, "killed", 12, "none", llama + ["--retries", "3"]))
        ids = [s["id"] for s in samples(run)]
        lines.append(f"- the server started again (another port), the same command: exit {r.returncode}, "
                     f"{len(ids)} samples, {len(set(ids))} distinct ids: `{r.stderr.strip().splitlines()[-1]}`")
    finally:
        servers.stop()
    versions = subprocess.run([a.python, "-c", "import llama_cpp; print(llama_cpp.__version__)"],
                              capture_output=True, text=True).stdout.strip()
    head = ["# The OpenAI-compatible backend against llama.cpp's server", "",
            f"Made by `scripts/check_openai_backend.py --gguf {gguf.name}` on {time.strftime('%Y-%m-%d')}: "
            f"llama-cpp-python {versions} (`--logits_all true --cache true --cache_size 67108864 "
            "--interrupt_requests false --n_threads 2`; one request in flight) and `selfspec serve`, both on 127.0.0.1 serving the same file.", ""]
    if a.reuse:
        head += ["With `--reuse`: the seconds of runs kept from an earlier invocation (those not deleted from "
                 f"{work.name}/times.json) are that invocation's.", ""]
    text = "\n".join(head + lines) + "\n"
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
