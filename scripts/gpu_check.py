#!/usr/bin/env python3
"""The GPU check: selfspec's CUDA build against PyTorch on one GPU host, in one run, one table.

Run it through scripts/gpu_check.sh (it finds the binary and the CUDA libraries). Every part
runs in its own process under its own time limit, so a part that hangs or fails still leaves
the table with the others' numbers. Logs and JSON results go under --out.

Parts, on a Llama-3-8B-shaped model with random weights made here with transformers (GPU:
bf16; --cpu: a small model of the same family in f32):
  logits     selfspec `complete --greedy --json` against transformers in the same dtype: the
             prompt's ids, the top-5 logits at the last prompt position, greedy tokens
  speed      prefill and decode tokens/s at batch 1 and 32 (--cpu: 1 and 4), same lengths:
             `selfspec bench decode` against transformers `generate` (eager, and static cache +
             torch.compile when it compiles within its limit)
  eq2        one retrieval-marginalised step with k 5 (the paper's eq. 2): `selfspec bench
             marginal` against the same mixing step written in PyTorch
  qlora      two QLoRA steps (4-bit q4_0 base, r 8 on all linear layers, f32 activations) on the
             8B width with fewer layers: the losses against PEFT's LoRA on the dequantized
             weights from the same initial adapter (relative 1e-5, the CPU tests' tolerance),
             step time and peak memory
"""
import argparse
import glob
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SELF = os.path.abspath(__file__)
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PROMPTS = ["The patient presented with", "Which receptor does losartan block? Answer:"]


def prompts(mode):
    """The logits' prompts: one on a GPU, where each `selfspec complete` loads 16 GB."""
    return PROMPTS[:1] if mode == "gpu" else PROMPTS


# ---------------------------------------------------------------------------------------------
# Shapes and settings of the two modes


def settings(mode):
    if mode == "gpu":
        return {
            "device": "cuda", "dtype": "bf16", "batches": [1, 32], "prompt_len": 512, "new_tokens": 128,
            "greedy_tokens": 16, "eq2_prompt_len": 256, "eq2_new_tokens": 32,
            "train_rows": 4, "train_tokens": 256,
        }
    return {
        "device": "cpu", "dtype": "f32", "batches": [1, 4], "prompt_len": 64, "new_tokens": 16,
        "greedy_tokens": 16, "eq2_prompt_len": 32, "eq2_new_tokens": 8,
        "train_rows": 4, "train_tokens": 96,
    }


def llama_config(mode, layers=None):
    from transformers import LlamaConfig
    if mode == "gpu":
        shape = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                     num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192)
    else:
        shape = dict(hidden_size=256, intermediate_size=704, num_hidden_layers=4, num_attention_heads=8,
                     num_key_value_heads=2, vocab_size=2048, max_position_embeddings=8192)
    if layers is not None:
        shape["num_hidden_layers"] = layers
    return LlamaConfig(**shape, rms_norm_eps=1e-5, tie_word_embeddings=False, rope_theta=500000.0,
                       rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                     "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})


def torch_dtype(name):
    import torch
    return {"bf16": torch.bfloat16, "f32": torch.float32, "f16": torch.float16}[name]


def dtype_kw(name):
    """transformers' keyword for the weights' dtype: `dtype` from 4.56, `torch_dtype` before (an
    older version would take `dtype` as a config field and load f32 silently)."""
    import transformers
    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    return {"dtype" if (major, minor) >= (4, 56) else "torch_dtype": torch_dtype(name)}


def sync(device):
    import torch
    if device == "cuda":
        torch.cuda.synchronize()


def strict_f32():
    """PyTorch's f32 products in full precision (no TF32), as selfspec's are."""
    import torch
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


# ---------------------------------------------------------------------------------------------
# Model making (runs in a child)


def make_model(work, mode, layers, dtype_name, name):
    """A Llama-3-shaped model with random weights (scaled so that logits are far apart), and the
    small tokenizer of the tests' fixtures, saved in work/name."""
    import torch
    from transformers import AutoModelForCausalLM
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    from make_tiny_models import make_tokenizer
    s = settings(mode)
    tokenizer = make_tokenizer(add_bos=True)
    config = llama_config(mode, layers)
    config.bos_token_id = tokenizer.convert_tokens_to_ids("<s>")
    config.eos_token_id = tokenizer.convert_tokens_to_ids("</s>")
    config.pad_token_id = tokenizer.convert_tokens_to_ids("<pad>")
    with torch.device(s["device"]):
        model = AutoModelForCausalLM.from_config(config, attn_implementation="eager", **dtype_kw(dtype_name))
    g = torch.Generator(device=s["device"]).manual_seed(7)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if pname.endswith("norm.weight"):
                w = 1.0 + 0.2 * torch.randn(p.shape, generator=g, device=s["device"], dtype=torch.float32)
            else:
                w = torch.randn(p.shape, generator=g, device=s["device"], dtype=torch.float32) * (1.5 / p.shape[-1] ** 0.5)
            p.copy_(w.to(p.dtype))
    out = os.path.join(work, name)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


# ---------------------------------------------------------------------------------------------
# PyTorch reference parts (each a child process)


def load_reference(path, mode, dtype_name):
    from transformers import AutoModelForCausalLM
    s = settings(mode)
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager", **dtype_kw(dtype_name))
    return model.to(s["device"]).eval()


def emit(path, record):
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def generate_timing(model, device, batch, prompt_len, new_tokens, vocab, seed=0):
    """tokens/s of transformers `generate` (greedy, EOS ignored): prefill from a one-token
    generation, decode from the difference to a full one, as `selfspec bench decode` counts."""
    import torch
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (batch, prompt_len), generator=g).to(device)
    mask = torch.ones_like(ids)
    kw = dict(attention_mask=mask, do_sample=False, pad_token_id=0, eos_token_id=None)

    def run(n):
        sync(device)
        t0 = time.perf_counter()
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=n, min_new_tokens=n, **kw)
        sync(device)
        assert out.shape[1] == prompt_len + n, out.shape
        return time.perf_counter() - t0

    # Warm-up at both lengths: a static cache is sized by the length, and torch.compile
    # specialises on it.
    run(1)
    run(new_tokens)
    t1 = min(run(1) for _ in range(2))
    tn = run(new_tokens)
    return {"prefill_tokens_per_s": batch * prompt_len / t1,
            "decode_tokens_per_s": batch * (new_tokens - 1) / max(tn - t1, 1e-9)}


def part_reference(args):
    """Logits, greedy tokens, eager generate speed and the eq. 2 step, in PyTorch."""
    import torch
    from transformers import AutoTokenizer
    s = settings(args.mode)
    out = os.path.join(args.work, "reference.jsonl")
    tok = AutoTokenizer.from_pretrained(args.model)
    model = load_reference(args.model, args.mode, s["dtype"])
    vocab = model.config.vocab_size
    # Logits and greedy tokens.
    for prompt in prompts(args.mode):
        ids = tok(prompt)["input_ids"]
        x = torch.tensor([ids], device=s["device"])
        with torch.no_grad():
            logits = model(x).logits[0, -1].float()
            greedy = model.generate(x, attention_mask=torch.ones_like(x), do_sample=False,
                                    max_new_tokens=s["greedy_tokens"], min_new_tokens=s["greedy_tokens"],
                                    pad_token_id=0, eos_token_id=None)[0, len(ids):].tolist()
        top = torch.topk(logits, 5)
        emit(out, {"kind": "logits", "prompt": prompt, "ids": ids, "greedy": greedy,
                   "top5": [[int(i), float(v)] for i, v in zip(top.indices.tolist(), top.values.tolist())]})
        # The full row, for the ids selfspec names.
        torch.save(logits.cpu(), os.path.join(args.work, f"logits-{PROMPTS.index(prompt)}.pt"))
    # Eager generate speed.
    for b in s["batches"]:
        r = generate_timing(model, s["device"], b, s["prompt_len"], s["new_tokens"], vocab)
        emit(out, {"kind": "speed", "variant": "eager", "batch": b, **r})
    # Eq. 2: k prompts, one forward a step on their last tokens, the retriever-weighted mixture
    # of their next-token distributions, the argmax fed back to every row.
    k = 5
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, vocab, (k, s["eq2_prompt_len"]), generator=g).to(s["device"])
    logw = torch.log_softmax(torch.randn(k, generator=g), 0).to(s["device"])
    times = []
    with torch.no_grad():
        for rep in range(2):
            sync(s["device"])
            t0 = time.perf_counter()
            o = model(ids, use_cache=True)
            past, last = o.past_key_values, o.logits[:, -1].float()
            sync(s["device"])
            t_pre = time.perf_counter()
            for _ in range(s["eq2_new_tokens"]):
                mixed = torch.logsumexp(torch.log_softmax(last, -1) + logw[:, None], 0)
                nxt = mixed.argmax().view(1, 1).expand(k, 1)
                o = model(nxt, past_key_values=past, use_cache=True)
                past, last = o.past_key_values, o.logits[:, -1].float()
            sync(s["device"])
            times.append(((t_pre - t0) * 1e3, (time.perf_counter() - t_pre) * 1e3 / s["eq2_new_tokens"]))
    emit(out, {"kind": "eq2", "prefill_ms": times[-1][0], "step_ms": times[-1][1]})


def part_compiled(args):
    """generate with a static cache and torch.compile (its own child: compiling may take long)."""
    import torch
    s = settings(args.mode)
    model = load_reference(args.model, args.mode, s["dtype"])
    model.generation_config.cache_implementation = "static"
    model.forward = torch.compile(model.forward, mode="reduce-overhead", fullgraph=True)
    out = os.path.join(args.work, "reference.jsonl")
    for b in s["batches"]:
        r = generate_timing(model, s["device"], b, s["prompt_len"], s["new_tokens"], model.config.vocab_size)
        emit(out, {"kind": "speed", "variant": "compiled", "batch": b, **r})


def alpaca(instruction, inp):
    with open(os.path.join(ROOT, "assets", "prompts", "alpaca.txt"), encoding="utf-8") as f:
        template = f.read()
    return template.replace("{{instruction}}", instruction.strip()).replace("{{input}}", inp.strip())


def train_examples(n, tokens):
    """n Alpaca examples from the finance corpus, inputs cut to about `tokens` words."""
    with open(os.path.join(ROOT, "sample-seeds", "finance.corpus.jsonl"), encoding="utf-8") as f:
        docs = [json.loads(line) for line in f]
    out = []
    for i in range(n):
        d = docs[i % len(docs)]
        words = (d["text"] + " " + docs[(i + 7) % len(docs)]["text"]).split()
        out.append({"instruction": f"Summarise the passage on {d['title'].lower()}.",
                    "input": " ".join(words[: tokens // 2]),
                    "output": " ".join(words[tokens // 2: tokens // 2 + tokens // 4])})
    return out


TRAIN = {"r": 8, "alpha": 16, "lr": 1e-3, "steps": 2, "max_grad_norm": 1.0}


def part_train_make(args):
    """The training model (8B width, fewer layers, f32), PEFT's initial adapter, the data."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    s = settings(args.mode)
    path = make_model(args.work, args.mode, args.train_layers, "f32", "train-model")
    torch.manual_seed(11)
    model = AutoModelForCausalLM.from_pretrained(path, **dtype_kw("f32"))
    peft = get_peft_model(model, LoraConfig(r=TRAIN["r"], lora_alpha=TRAIN["alpha"], lora_dropout=0.0, bias="none",
                                            target_modules=TARGETS, task_type="CAUSAL_LM"))
    # PEFT starts B at zero; a random B makes the first step's loss depend on the adapter too.
    g = torch.Generator().manual_seed(12)
    with torch.no_grad():
        for n, p in peft.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.01)
    peft.save_pretrained(os.path.join(args.work, "train-init"))
    with open(os.path.join(args.work, "train.jsonl"), "w", encoding="utf-8") as f:
        for e in train_examples(s["train_rows"], s["train_tokens"]):
            f.write(json.dumps(e) + "\n")
    with open(os.path.join(args.work, "train.yaml"), "w", encoding="utf-8") as f:
        f.write(f"r: {TRAIN['r']}\nlora_alpha: {TRAIN['alpha']}\nlora_dropout: 0.0\nlearning_rate: {TRAIN['lr']}\n"
                f"per_device_train_batch_size: {s['train_rows']}\ngradient_accumulation_steps: 1\n"
                f"max_steps: {TRAIN['steps']}\nwarmup_steps: 0\nweight_decay: 0.0\n"
                f"max_grad_norm: {TRAIN['max_grad_norm']}\nsave_steps: 100000\nmax_seq_length: 4096\n")


def q4_0_roundtrip(w):
    """ggml's q4_0 (quantize_row_q4_0_ref, as candle writes it) and back, on w's device: per block
    of 32, d = (the value of largest magnitude) / -8 stored as f16, q = min(15, trunc(x/d + 8.5))."""
    import torch
    shape = w.shape
    x = w.float().reshape(-1, 32)
    at = x.abs().argmax(dim=1, keepdim=True)  # the first of equal magnitudes, as the reference loop
    mx = x.gather(1, at)
    d = mx / -8.0
    inv = torch.where(d != 0, 1.0 / d, torch.zeros_like(d))
    q = torch.clamp(torch.trunc(x * inv + 8.5), 0, 15)
    return ((q - 8.0) * d.half().float()).reshape(shape)


def part_train_ref(args):
    """PEFT LoRA from the same initial adapter on the q4_0-dequantized projections: the losses
    selfspec's QLoRA steps must give, and PEFT's step time."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer
    strict_f32()
    s = settings(args.mode)
    path = os.path.join(args.work, "train-model")
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager", **dtype_kw("f32")).to(s["device"])
    with torch.no_grad():
        for n, mod in model.named_modules():
            if n.split(".")[-1] in TARGETS:
                mod.weight.copy_(q4_0_roundtrip(mod.weight))
    model = PeftModel.from_pretrained(model, os.path.join(args.work, "train-init"), is_trainable=True)
    model = model.to(s["device"])
    model.train()
    eos = model.config.eos_token_id
    rows = []
    with open(os.path.join(args.work, "train.jsonl"), encoding="utf-8") as f:
        for line in f:
            e = json.loads(line)
            prompt = alpaca(e["instruction"], e["input"])
            p = tok(prompt)["input_ids"]
            ids = tok(prompt + e["output"].strip())["input_ids"]
            masked = 0
            while masked < min(len(p), len(ids)) and p[masked] == ids[masked]:
                masked += 1
            ids = ids + [eos]
            rows.append((ids, [-100 if i < masked else t for i, t in enumerate(ids)]))
    width = max(len(i) for i, _ in rows)
    ids = torch.tensor([[0] * (width - len(i)) + i for i, _ in rows], device=s["device"])
    labels = torch.tensor([[-100] * (width - len(lab)) + lab for _, lab in rows], device=s["device"])
    mask = torch.tensor([[0] * (width - len(i)) + [1] * len(i) for i, _ in rows], device=s["device"])
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    total = int((labels[:, 1:] != -100).sum())
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=TRAIN["lr"], betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    steps = TRAIN["steps"]
    # transformers' cosine schedule without warm-up, as `selfspec train` follows it.
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda st: max(0.0, 0.5 * (1.0 + math.cos(math.pi * st / steps))))
    report = []
    if s["device"] == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for _ in range(steps):
        sync(s["device"])
        t0 = time.perf_counter()
        logits = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits
        nll = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                                                labels[:, 1:].reshape(-1), ignore_index=-100, reduction="sum")
        loss = nll / total
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, TRAIN["max_grad_norm"])
        opt.step()
        sched.step()
        opt.zero_grad()
        sync(s["device"])
        report.append({"loss": loss.item(), "step_s": time.perf_counter() - t0})
    extra = {"torch_peak_allocated_mb": torch.cuda.max_memory_allocated() / 2**20} if s["device"] == "cuda" else {}
    with open(os.path.join(args.work, "train-ref.json"), "w", encoding="utf-8") as f:
        json.dump({"steps": report, "tokens": int(mask.sum()), **extra}, f)


PARTS = {"reference": part_reference, "compiled": part_compiled, "train-make": part_train_make,
         "train-ref": part_train_ref}


# ---------------------------------------------------------------------------------------------
# The parent: runs every part under its limit, measures peak memory, prints the table


class Peak:
    """The peak memory of a running process. On a GPU: its memory in nvidia-smi's process list,
    sampled every 0.2 s; where a container hides the process list, the GPU's memory in use less
    what was in use when it started (the parts run one at a time). On the CPU: the resident
    high-water mark from /proc."""

    def __init__(self, pid, gpu):
        self.pid, self.gpu, self.mb, self.whole, self.done = pid, gpu, 0.0, 0.0, False
        self.base = self.gpu_used() if gpu else None
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    @staticmethod
    def gpu_used():
        try:
            q = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                               capture_output=True, text=True, timeout=5)
            return float(q.stdout.split()[0])
        except (OSError, ValueError, IndexError, subprocess.SubprocessError):
            return None

    def run(self):
        while not self.done:
            try:
                if self.gpu:
                    q = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory",
                                        "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=5)
                    for line in q.stdout.splitlines():
                        pid, used = [x.strip() for x in line.split(",")[:2]]
                        if pid == str(self.pid):
                            self.mb = max(self.mb, float(used))
                    used = self.gpu_used()
                    if used is not None and self.base is not None:
                        self.whole = max(self.whole, used - self.base)
                else:
                    with open(f"/proc/{self.pid}/status") as f:
                        for line in f:
                            if line.startswith("VmHWM:"):
                                self.mb = max(self.mb, int(line.split()[1]) / 1024)
            except (OSError, ValueError, subprocess.SubprocessError):
                pass
            time.sleep(0.2)

    def stop(self):
        self.done = True
        self.thread.join()
        return self.mb or self.whole or None


class Runner:
    def __init__(self, args):
        self.args = args
        self.log = open(os.path.join(args.out, "gpu_check.log"), "a", encoding="utf-8")
        self.env = dict(os.environ)
        self.deadline = math.inf

    def say(self, text):
        print(text, flush=True)
        self.log.write(text + "\n")
        self.log.flush()

    def run(self, name, argv, limit, measure=False):
        """argv under `limit` seconds, output to out/NAME.log. Returns (status, seconds, stdout,
        peak MiB): status is ok, timeout (after `limit` s) or error (exit code and the last line)."""
        path = os.path.join(self.args.out, f"{name}.log")
        limit = min(limit, int(self.deadline - time.perf_counter()))
        if limit < 5:
            self.say(f"{name}: skipped, the run's time is spent")
            return "skipped (the run's time is spent)", 0.0, "", None
        self.say(f"[{time.strftime('%H:%M:%S')}] {name}: {' '.join(argv)} (limit {limit} s)")
        t0 = time.perf_counter()
        with open(path, "w", encoding="utf-8") as err:
            p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, text=True, env=self.env,
                                 start_new_session=True)
            peak = Peak(p.pid, self.args.mode == "gpu") if measure else None
            try:
                stdout, _ = p.communicate(timeout=limit)
                status = "ok" if p.returncode == 0 else f"error (exit {p.returncode})"
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, 9)
                stdout, _ = p.communicate()
                status = f"timeout ({limit} s)"
        secs = time.perf_counter() - t0
        mb = peak.stop() if peak else None
        with open(path, "a", encoding="utf-8") as err:
            err.write(f"\n--- stdout ---\n{stdout}")
        if status.startswith("error"):
            with open(path, encoding="utf-8", errors="replace") as f:
                tail = [line.strip() for line in f.read().split("\n--- stdout ---")[0].splitlines() if line.strip()]
            if tail:
                status += ": " + tail[-1][:160]
        self.say(f"    {status} in {secs:.1f} s")
        return status, secs, stdout, mb

    def child(self, part, limit, model=None, measure=False):
        argv = [sys.executable, SELF, "--part", part, "--mode", self.args.mode, "--work", self.args.work,
                "--out", self.args.out, "--train-layers", str(self.args.train_layers)]
        if model:
            argv += ["--model", model]
        return self.run(part, argv, limit, measure)

    def ours(self, name, sub, limit, measure=False):
        s = settings(self.args.mode)
        argv = [self.args.bin] + sub + ["--device", s["device"]]
        return self.run(name, argv, limit, measure)


def read_jsonl(path):
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def fmt(x, unit=""):
    if x is None:
        return "—"
    if isinstance(x, float):
        return f"{x:,.1f}{unit}" if abs(x) >= 10 else f"{x:.3g}{unit}"
    return f"{x}{unit}"


def ratio(a, b):
    return f"{a / b:.2f}×" if a and b else "—"


def cuda_library_path():
    """Where the host keeps the CUDA 13 libraries the binary links (PyTorch's wheels carry them)."""
    dirs = [os.path.join(os.path.dirname(os.path.abspath(SELF)), "..", "gpu", "lib")]
    try:
        import nvidia  # noqa: F401  (PyTorch's CUDA wheels)
        for base in nvidia.__path__:
            dirs += sorted(glob.glob(os.path.join(base, "*", "lib")))
    except ImportError:
        pass
    for d in ["/usr/local/cuda-13.0/lib64", "/usr/local/cuda/lib64"]:
        dirs.append(d)
    return ":".join(d for d in dirs if os.path.isdir(d))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=["gpu", "cpu"], default="gpu")
    ap.add_argument("--bin", help="the selfspec binary (gpu: the stripped CUDA build)")
    ap.add_argument("--out", required=True, help="logs, JSON results and the table")
    ap.add_argument("--work", help="models and data, kept: a new or empty folder (default: a temporary folder, "
                    "removed at the end)")
    ap.add_argument("--train-layers", type=int, default=None,
                    help="layers of the QLoRA part's model (default: gpu 4, cpu 2)")
    ap.add_argument("--part", choices=sorted(PARTS), help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--limit-scale", type=float, default=1.0, help="multiply every part's time limit")
    args = ap.parse_args()
    if args.train_layers is None:
        args.train_layers = 4 if args.mode == "gpu" else 2
    if args.part:
        PARTS[args.part](args)
        return 0
    os.makedirs(args.out, exist_ok=True)
    # Models (16 GB on a GPU host) stay out of OUT, which is copied back.
    temporary = args.work is None
    if temporary:
        args.work = tempfile.mkdtemp(prefix="gpu-check-")
    elif os.path.isdir(args.work) and os.listdir(args.work):
        # The parts append to what they find there: a used folder would mix two runs.
        sys.exit(f"gpu_check: --work {args.work} is not empty; name a new or empty folder")
    else:
        os.makedirs(args.work, exist_ok=True)
    try:
        return check(args)
    finally:
        if temporary:
            shutil.rmtree(args.work, ignore_errors=True)


def check(args):
    for stale in glob.glob(os.path.join(args.out, "*.log")) + glob.glob(os.path.join(args.out, "*.json*")):
        os.remove(stale)
    r = Runner(args)
    s = settings(args.mode)
    gpu = args.mode == "gpu"
    L = {k: int(v * args.limit_scale) for k, v in
         (dict(make=70, reference=70, compiled=55, complete=25, bench_1=35, bench_n=45, marginal=30, train_make=45,
               train_ours=45, train_ref=40)
          if gpu else dict(make=60, reference=60, compiled=120, complete=60, bench_1=60, bench_n=60, marginal=60,
                           train_make=60, train_ours=60, train_ref=60)).items()}
    # The parts' limits add up to 460 s on a GPU; the deadline holds the whole run under 8 minutes.
    r.deadline = time.perf_counter() + (470 if gpu else 900) * args.limit_scale
    started = time.perf_counter()
    if gpu:
        r.env["LD_LIBRARY_PATH"] = cuda_library_path() + ":" + os.environ.get("LD_LIBRARY_PATH", "")
        try:
            q = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                               capture_output=True, text=True)
            r.say(f"GPU: {q.stdout.strip() or q.stderr.strip()}")
        except OSError as e:
            r.say(f"GPU: nvidia-smi could not run ({e})")
        missing = subprocess.run(["ldd", args.bin], capture_output=True, text=True, env=r.env).stdout
        for line in missing.splitlines():
            if "not found" in line:
                r.say(f"missing library for {args.bin}: {line.strip()} (set LD_LIBRARY_PATH)")
    import torch
    import transformers
    import peft
    r.say(f"PyTorch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}; "
          f"binary {args.bin}; mode {args.mode}")
    rows = []

    def row(part, ours, ref, diff, status):
        rows.append((part, ours, ref, diff, status))

    # The model.
    model = os.path.join(args.work, "model")
    make = [sys.executable, "-c", f"import sys; sys.path.insert(0, {os.path.join(ROOT, 'scripts')!r}); "
            f"import gpu_check as g; g.make_model({args.work!r}, {args.mode!r}, None, {s['dtype']!r}, 'model')"]
    st, secs, _, _ = r.run("make", make, L["make"])
    shape = "Llama-3-8B shape (32 layers, 4096 wide, GQA 32/8, vocab 128,256)" if gpu else \
        "small Llama-3 (4 layers, 256 wide, GQA 8/2, vocab 2,048)"
    row("model", f"{shape}, random {s['dtype']}", "made with transformers", f"{secs:.0f} s", st)
    have_model = st == "ok"

    # PyTorch's side: logits, eager speed, eq. 2; then the compiled variant.
    if have_model:
        ref_st = r.child("reference", L["reference"], model)[0]
        comp_st = r.child("compiled", L["compiled"], model)[0]
    else:
        ref_st = comp_st = "skipped (no model)"
    ref = read_jsonl(os.path.join(args.work, "reference.jsonl"))

    # Logits and greedy tokens.
    worst, top_same, greedy_same, greedy_total, problems = 0.0, 0, 0, 0, []
    for i, prompt in enumerate(prompts(args.mode)):
        want = next((x for x in ref if x["kind"] == "logits" and x["prompt"] == prompt), None)
        if not have_model:
            break
        st, _, stdout, _ = r.ours(f"ours-complete-{i}", ["complete", "--model", model, "--dtype", s["dtype"],
                                                         "--prompt", prompt, "--greedy", "--json", "--max-new-tokens",
                                                         str(s["greedy_tokens"])], L["complete"])
        if st != "ok" or want is None:
            problems.append(st if st != "ok" else f"no reference ({ref_st})")
            continue
        got = json.loads(stdout)
        if got["prompt_ids"] != want["ids"]:
            problems.append(f"prompt ids differ: {got['prompt_ids']} vs {want['ids']}")
        full = torch.load(os.path.join(args.work, f"logits-{i}.pt"))
        for tid, value in got["top5"]:
            worst = max(worst, abs(value - float(full[tid])))
        top_same += [t for t, _ in got["top5"]] == [t for t, _ in want["top5"]]
        n = 0
        while n < min(len(got["ids"]), len(want["greedy"])) and got["ids"][n] == want["greedy"][n]:
            n += 1
        greedy_same += n
        greedy_total += len(want["greedy"])
    tol = 1e-4 if s["dtype"] == "f32" else None
    if have_model:
        ok = not problems and top_same == len(prompts(args.mode)) and (tol is None or worst <= tol)
        if tol is None and ok and greedy_same < greedy_total:
            ok_text = "ok (bf16: greedy paths part at near-ties)"
        else:
            ok_text = "ok" if ok else "FAIL" + (": " + "; ".join(problems) if problems else "")
        n_prompts = len(prompts(args.mode))
        row(f"logits ({s['dtype']}, {n_prompts} prompt{'s' if n_prompts > 1 else ''})",
            f"top-5 ids equal {top_same}/{n_prompts}",
            "transformers, same dtype", f"largest top-5 logit difference {worst:.2e}" + (f" (≤ {tol:g})" if tol else ""), ok_text)
        row("greedy tokens", f"{greedy_same}/{greedy_total} identical before the first difference",
            "transformers generate", "", "ok" if greedy_same == greedy_total else "differs")

    # Speed.
    for b in s["batches"]:
        st, _, stdout, _ = (r.ours(f"ours-bench-b{b}", ["bench", "decode", "--model", model, "--dtype", s["dtype"],
                                                        "--batch", str(b), "--prompt-len", str(s["prompt_len"]),
                                                        "--new-tokens", str(s["new_tokens"]), "--warmup", "1",
                                                        "--repeat", "2", "--json"], L["bench_n" if b > 1 else "bench_1"])
                            if have_model else ("skipped", 0, "", None))
        mine = json.loads(stdout) if st == "ok" else {}
        eager = next((x for x in ref if x["kind"] == "speed" and x["variant"] == "eager" and x["batch"] == b), {})
        comp = next((x for x in ref if x["kind"] == "speed" and x["variant"] == "compiled" and x["batch"] == b), {})
        for what, key in [("prefill", "prefill_tokens_per_s"), ("decode", "decode_tokens_per_s")]:
            if what == "prefill" and b != s["batches"][0]:
                continue
            label = f"{what} tokens/s, batch {b}, prompt {s['prompt_len']}" + \
                    (f", {s['new_tokens']} new" if what == "decode" else "")
            ref_text = f"eager {fmt(eager.get(key))}"
            ref_text += f"; static+compile {fmt(comp.get(key))}" if comp else f"; static+compile: {comp_st}"
            best = max([v for v in (eager.get(key), comp.get(key)) if v] or [0])
            row(label, fmt(mine.get(key)), ref_text, f"speed {ratio(mine.get(key), best)} the faster one's",
                st if st != "ok" else ("ok" if eager else f"no reference ({ref_st})"))

    # Eq. 2 with k 5.
    if have_model:
        st, _, stdout, _ = r.ours("ours-marginal", ["bench", "marginal", "--model", model, "--dtype", s["dtype"],
                                                    "--k", "5", "--prompt-len", str(s["eq2_prompt_len"]),
                                                    "--new-tokens", str(s["eq2_new_tokens"]), "--repeat", "2",
                                                    "--json"], L["marginal"])
        mine = json.loads(stdout) if st == "ok" else {}
        want = next((x for x in ref if x["kind"] == "eq2"), {})
        row(f"eq. 2 step, k 5, prompt {s['eq2_prompt_len']} (ms)", fmt(mine.get("marginal_step_ms")),
            f"PyTorch mixing step {fmt(want.get('step_ms'))}",
            f"speed {ratio(want.get('step_ms'), mine.get('marginal_step_ms'))}" if mine and want else "", st)

    # QLoRA.
    st_make = r.child("train-make", L["train_make"])[0]
    tdir = os.path.join(args.work, "train-run")
    if st_make == "ok":
        st_ours, _, _, ours_mb = r.ours("ours-train", ["train", "--model", os.path.join(args.work, "train-model"),
                                                       "--data", os.path.join(args.work, "train.jsonl"), "--run", tdir,
                                                       "--train-config", os.path.join(args.work, "train.yaml"),
                                                       "--init-from", os.path.join(args.work, "train-init"),
                                                       "--qlora", "q4_0", "--dtype", "f32", "--prompt-format", "plain"],
                                        L["train_ours"], measure=True)
        st_ref, _, _, ref_mb = r.child("train-ref", L["train_ref"], measure=True)
    else:
        st_ours = st_ref = f"skipped (train-make: {st_make})"
        ours_mb = ref_mb = None
    events = read_jsonl(os.path.join(tdir, "events.jsonl"))
    mine = [e for e in events if e.get("event") == "step"]
    theirs = {}
    if os.path.exists(os.path.join(args.work, "train-ref.json")):
        with open(os.path.join(args.work, "train-ref.json"), encoding="utf-8") as f:
            theirs = json.load(f)
    label = f"QLoRA q4_0, {args.train_layers} layers, r 8 all linear, {s['train_rows']} rows"
    if mine and theirs.get("steps"):
        rel = [abs(a["loss"] - b["loss"]) / abs(b["loss"]) for a, b in zip(mine, theirs["steps"])]
        worst_rel = max(rel)
        row(f"{label}: losses", " ".join(f"{e['loss']:.6f}" for e in mine),
            "PEFT on the dequantized base " + " ".join(f"{e['loss']:.6f}" for e in theirs["steps"]),
            f"max relative {worst_rel:.1e} (≤ 1e-5)",
            "ok" if worst_rel <= 1e-5 and len(mine) == len(theirs["steps"]) else "FAIL")
        row(f"{label}: step time (s), last step", fmt(mine[-1]["step_s"]), f"PEFT {fmt(theirs['steps'][-1]['step_s'])}",
            f"speed {ratio(theirs['steps'][-1]['step_s'], mine[-1]['step_s'])}", "ok")
        what = "GPU memory (nvidia-smi)" if gpu else "resident memory"
        row(f"{label}: peak {what}, MiB", fmt(ours_mb), f"PEFT {fmt(ref_mb)}",
            f"memory {ratio(ours_mb, ref_mb)}" if ours_mb and ref_mb else "", "ok")
    else:
        row(f"{label}", st_ours, st_ref, "", "FAIL" if st_make == "ok" else st_make)

    total = time.perf_counter() - started
    lines = ["| part | selfspec | reference | selfspec against the reference | status |", "|---|---|---|---|---|"]
    lines += [f"| {' | '.join(str(c).replace('|', '/') for c in x)} |" for x in rows]
    table = "\n".join(lines)
    r.say("")
    r.say(table)
    r.say(f"\n{args.mode} check done in {total:.0f} s; logs in {args.out}")
    with open(os.path.join(args.out, "table.md"), "w", encoding="utf-8") as f:
        f.write(table + "\n")
    failed = [x for x in rows if str(x[4]).startswith(("FAIL", "error", "timeout"))]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
