#!/usr/bin/env bash
# CPU speed of KV-cache types: llama-bench prefill (pp512) and decode (tg64) at depth 0 and 4096,
# flash attention on, all types in one run on the same build. Run on an otherwise idle machine.
#   bash benchmarks/bench_speed.sh [model.gguf] [threads]
set -euo pipefail
cd "$(dirname "$0")/.."
# (from /: the checkout must not shadow the installed package)
model=${1:-$(cd / && python -c 'from tq_llamacpp.data import model_path; print(model_path("smollm2"))')}
threads=${2:-2}
bench=$(cd / && python -c 'from tq_llamacpp._libs import tool; print(tool("llama-bench"))')
out=benchmarks/results/speed-$(basename "$model" .gguf).md
{
  echo "llama-bench -m $(basename "$model") -fa 1 -t $threads -p 512 -n 64 -d 0,4096 -ctk/-ctv as listed; $(date +%F), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores"
  echo
  for t in f16 q8_0 q4_0 tq4 tq3; do
    "$bench" -m "$model" -fa 1 -t "$threads" -p 512 -n 64 -d 0,4096 -ctk "$t" -ctv "$t" -o md -r 2 2>/dev/null \
      | { if [ "$t" = f16 ]; then cat; else tail -n +3; fi; }
  done
} | tee "$out"
echo "wrote $out"
