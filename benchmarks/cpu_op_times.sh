#!/usr/bin/env bash
# A decode step's time per op on the CPU, per cache type: thread 0's time per graph node (the node's
# compute and the barrier after it) summed per op and node name over llama-bench's decode steps, in
# µs per token, side by side. The timer is benchmarks/cpu/op_timer.diff, applied to a copy of the
# patched tree (scripts/gpu-tree.sh) in a build of its own: a diagnostic build, never the package.
#   bash benchmarks/cpu_op_times.sh [TYPES (default "f16 tq3 q4_0")]
# Environment: MODEL (a path or a tq_llamacpp.data name, default smollm2), DEPTH (default 0), TOKENS
# (default 64), THREADS (default 2), ROUNDS (default 2: the types one after another, twice; the table
# takes each op's median), TQ_OPTIME_BUILD (default /tmp/tq-optime).
set -euo pipefail
cd "$(dirname "$0")/.."
types=${1:-f16 tq3 q4_0}
b=${TQ_OPTIME_BUILD:-/tmp/tq-optime}
[ -f .tqdev/llama.cpp/CMakeLists.txt ] || scripts/gpu-tree.sh
# the patched tree with the timer, copied again whenever the tree or the diff is newer than the copy;
# the build is incremental either way, so native/ changes are always in it
if [ ! -f "$b/src/.stamp" ] || [ -n "$(find .tqdev/llama.cpp benchmarks/cpu/op_timer.diff -newer "$b/src/.stamp" -print -quit)" ]; then
    rm -rf "$b/src"
    mkdir -p "$b"
    cp -a .tqdev/llama.cpp "$b/src"
    patch -d "$b/src" -p1 -s < benchmarks/cpu/op_timer.diff
    touch "$b/src/.stamp"
fi
if [ ! -f "$b/build/CMakeCache.txt" ]; then
    gen=(); command -v ninja >/dev/null && gen=(-G Ninja)
    cmake -S benchmarks/gpu -B "$b/build" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release -DTQ_CUDA=OFF \
        -DTQ_LLAMA_SOURCE_DIR="$b/src" -DGGML_NATIVE=ON > "$b/configure.log"
fi
cmake --build "$b/build" -j "${JOBS:-2}" --target llama-bench > "$b/build.log"
bench=$(find "$b/build" -name llama-bench -type f -perm -u+x | head -1)
model=${MODEL:-smollm2}
# from outside the checkout, so that the installed package is the one imported
[ -f "$model" ] || model=$(cd / && python3 -c "from tq_llamacpp import data; print(data.model_path('$model'))")
logs=()
for r in $(seq 1 "${ROUNDS:-2}"); do
    for t in $types; do
        tk=${t%/*}; tv=${t#*/}
        log="$b/op-${t//\//-}-r$r.log"
        # a run before the timed one keeps the cache's calibration, so that the timed one reads it
        [ "$r" = 1 ] && "$bench" -m "$model" -fa 1 -ctk "$tk" -ctv "$tv" -p 0 -n 1 -r 1 -t "${THREADS:-2}" > /dev/null 2>&1
        TQ_OPTIME=1 "$bench" -m "$model" -fa 1 -ctk "$tk" -ctv "$tv" -p 0 -n "${TOKENS:-64}" -d "${DEPTH:-0}" -r 1 \
            -t "${THREADS:-2}" -o csv > "$log.csv" 2> "$log"
        logs+=("$t=$log")
    done
done
python3 - "${logs[@]}" <<'EOF'
import csv, statistics, sys
from collections import defaultdict
runs = defaultdict(list)  # type -> [(total, {op: (us, nodes)}, tokens/s)]
for arg in sys.argv[1:]:
    t, path = arg.split("=", 1)
    ops, total = {}, None
    for line in open(path):
        if line.startswith("optime graphs"):
            total = float(line.split()[-1])
        elif line.startswith("optime node "):
            key, us, n = line[len("optime node "):].rstrip("\n").rsplit("|", 2)
            ops[key] = (float(us), float(n))
    rows = list(csv.DictReader(open(path + ".csv")))
    runs[t].append((total, ops, float(rows[-1]["avg_ts"]) if rows else float("nan")))
types = list(runs)
med = lambda xs: statistics.median(xs) if xs else 0.0
print("| per decode step (µs, median of the rounds) | " + " | ".join(types) + " |")
print("|---|" + "---|" * len(types))
print("| llama-bench tokens/s | " + " | ".join(f"{med([r[2] for r in runs[t]]):.1f}" for t in types) + " |")
print("| all nodes, thread 0 | " + " | ".join(f"{med([r[0] for r in runs[t]]):.0f}" for t in types) + " |")
keys = sorted({k for t in types for r in runs[t] for k in r[1]},
              key=lambda k: -max(med([r[1].get(k, (0, 0))[0] for r in runs[t]]) for t in types))
for k in keys:
    cells = []
    for t in types:
        v = [r[1][k] for r in runs[t] if k in r[1]]
        cells.append(f"{med([x[0] for x in v]):.1f} ({v[0][1]:.0f})" if v else "")
    print(f"| `{k}` | " + " | ".join(cells) + " |")
EOF
