#!/usr/bin/env bash
# The GPU check in one command: selfspec's CUDA build against PyTorch (logits, greedy tokens,
# prefill and decode speed at batch 1 and 32, eq. 2 with k 5, a QLoRA step against PEFT) on a
# Llama-3-8B-shaped model made on the host. Prints one table; logs and table.md under $OUT.
#
#   Here, once per change (CPU machine, ~12 min): the CUDA build, stripped and compressed into
#   gpu/selfspec.xz (gpu/ is listed in .git/info/exclude), with the size check against the
#   device tool's 64 MiB limit on what travels:
#     scripts/gpu_check.sh --prepare
#   Here, the dry run of every step on a small model with the CPU build:
#     scripts/gpu_check.sh --cpu           # builds target/release/selfspec first if it is missing
#   GPU host (H100/H200, CUDA 13, PyTorch + transformers + peft; no Rust, no network), with `gpu`
#   named in the device tool's `carry`:
#     scripts/gpu_check.sh                 # unpacks gpu/selfspec.xz (or takes gpu/selfspec)
#
# Options: --bin PATH, --out DIR (or OUT=DIR), --limit-scale X (every part's time limit
# multiplied), --train-layers N; PYTHON=... picks the interpreter.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
MODE=gpu
ARGS=()
BIN=
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu) MODE=cpu ;;
    --prepare) MODE=prepare ;;
    --bin) BIN=$2; shift ;;
    --bin=*) BIN=${1#--bin=} ;;
    *) ARGS+=("$1") ;;
  esac
  shift
done
PY=${PYTHON:-python3}
LIMIT=$((64 * 1024 * 1024))
if [ "$MODE" = prepare ]; then
  BUILD="$ROOT/../shared/cuda/build-cuda.sh"
  [ -x "$BUILD" ] || { echo "gpu_check: $BUILD is missing (the CUDA cross-build script)" >&2; exit 2; }
  (cd "$ROOT" && "$BUILD" --bin selfspec)
  mkdir -p "$ROOT/gpu"
  strip -o "$ROOT/gpu/selfspec" "$ROOT/target/cuda/release/selfspec"
  xz -9 -T0 -f "$ROOT/gpu/selfspec"
  tree=$(cd "$ROOT" && git ls-files -z --cached --others --exclude-standard | xargs -0 -r du -cb 2>/dev/null | tail -1 | cut -f1)
  carry=$(du -cb "$ROOT/gpu" | tail -1 | cut -f1)
  echo "gpu/selfspec.xz: $(stat -c %s "$ROOT/gpu/selfspec.xz") bytes; the working tree ${tree} bytes;" \
       "together $((tree + carry)) of the $LIMIT allowed"
  [ $((tree + carry)) -le $LIMIT ] || { echo "gpu_check: over the device tool's 64 MiB" >&2; exit 1; }
  exit 0
fi
if ! "$PY" -c 'import torch, transformers, peft, tokenizers' 2>/dev/null; then
  echo "gpu_check: $PY lacks torch, transformers, peft or tokenizers;" \
       "install them (pip install torch transformers peft) or point PYTHON at an environment that has them" >&2
  exit 2
fi
if [ "$MODE" = cpu ]; then
  BIN=${BIN:-$ROOT/target/release/selfspec}
  if [ ! -x "$BIN" ]; then
    echo "gpu_check: $BIN is missing; building it (cargo build --release)" >&2
    (cd "$ROOT" && cargo build --release --quiet)
  fi
  OUT=${OUT:-$ROOT/target/gpu-check-cpu}
else
  if [ -z "$BIN" ] && [ ! -x "$ROOT/gpu/selfspec" ] && [ -f "$ROOT/gpu/selfspec.xz" ]; then
    BIN=${TMPDIR:-/tmp}/selfspec-gpu/selfspec
    mkdir -p "$(dirname "$BIN")"
    "$PY" -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
      "$ROOT/gpu/selfspec.xz" "$BIN"
    chmod +x "$BIN"
  fi
  BIN=${BIN:-$ROOT/gpu/selfspec}
  if [ ! -x "$BIN" ]; then
    echo "gpu_check: no CUDA binary at $BIN (nor gpu/selfspec.xz). Make it on the CPU machine with" \
         "scripts/gpu_check.sh --prepare, and name gpu in the device tool's carry" >&2
    exit 2
  fi
  OUT=${OUT:-$ROOT/target/gpu-check}
fi
mkdir -p "$OUT"
exec "$PY" "$ROOT/scripts/gpu_check.py" --mode "$MODE" --bin "$BIN" --out "$OUT" ${ARGS[@]+"${ARGS[@]}"}
