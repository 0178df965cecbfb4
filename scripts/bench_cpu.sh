#!/usr/bin/env bash
# CPU decode tokens/s, selfspec against transformers eager, same weights, same lengths, one run.
# usage: scripts/bench_cpu.sh [PYTHON]   (PYTHON with torch and transformers; default python3)
# The model (6 layers, hidden 512, vocab 32000, random weights) is made in target/bench-model on
# first use. Prints one table.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-python3}
MODEL=target/bench-model
BIN=target/release/selfspec
[ -x "$BIN" ] || cargo build --release
[ -f "$MODEL/config.json" ] || "$PY" scripts/bench_cpu.py make "$MODEL"
PROMPT=${PROMPT:-64} NEW=${NEW:-64}
rows=$(mktemp)
for B in 1 8; do
  "$BIN" bench decode --model "$MODEL" --device cpu --dtype f32 --batch $B --prompt-len $PROMPT --new-tokens $NEW --json >> "$rows"
  "$PY" scripts/bench_cpu.py run "$MODEL" --batch $B --prompt-len $PROMPT --new-tokens $NEW 2>/dev/null >> "$rows"
done
"$PY" scripts/bench_cpu.py table "$rows"
