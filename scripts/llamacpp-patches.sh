#!/usr/bin/env bash
# Regenerate patches/*.patch from a pristine and a working copy of the vendored llama.cpp
# (vendor/llama.cpp of the llama-cpp-python sdist named in patches/series).
#
#   scripts/llamacpp-patches.sh PRISTINE/vendor/llama.cpp WORK/vendor/llama.cpp
#
# Each patch is the `diff -ruN` of the files listed for it below (paths relative to
# vendor/llama.cpp, applied with `patch -p1`; a glob names files the patch creates, matched in
# the working copy). A changed file that no patch lists is an error.
set -euo pipefail

if [ $# -ne 2 ]; then
    echo "usage: $0 PRISTINE_LLAMA_CPP WORK_LLAMA_CPP" >&2
    exit 2
fi
P=$(cd "$1" && pwd)
W=$(cd "$2" && pwd)
OUT=$(cd "$(dirname "$0")/../patches" && pwd)

PATCHES=(
    "0001-ggml-tq-types.patch:ggml/include/ggml.h ggml/src/ggml.c ggml/src/ggml-quants.c ggml/src/ggml-cpu/ggml-cpu.c ggml/src/ggml-cpu/ops.cpp"
    "0002-llama-tq-kv-cache.patch:src/llama-context.cpp src/llama-kv-cache.h src/llama-kv-cache.cpp src/llama-graph.h src/llama-graph.cpp common/arg.cpp tools/llama-bench/llama-bench.cpp"
    "0003-tests-tq-types.patch:tests/test-backend-ops.cpp tests/test-quantize-fns.cpp"
    "0004-ggml-cuda-tq.patch:ggml/cmake/common.cmake ggml/src/ggml-cuda/cpy-utils.cuh ggml/src/ggml-cuda/cpy.cu ggml/src/ggml-cuda/set-rows.cu ggml/src/ggml-cuda/dequantize.cuh ggml/src/ggml-cuda/convert.cu ggml/src/ggml-cuda/getrows.cu ggml/src/ggml-cuda/fattn-common.cuh ggml/src/ggml-cuda/fattn-vec.cuh ggml/src/ggml-cuda/fattn.cu ggml/src/ggml-cuda/ggml-cuda.cu ggml/src/ggml-cuda/template-instances/generate_cu_files.py ggml/src/ggml-cuda/template-instances/fattn-vec-instance-*tq*.cu"
)

listed=()
for entry in "${PATCHES[@]}"; do
    name=${entry%%:*}
    files=${entry#*:}
    : > "$OUT/$name.tmp"
    # patterns (new files) expand in the working copy
    for f in $(cd "$W" && for p in $files; do echo $p; done); do
        listed+=("$f")
        if ! cmp -s "$P/$f" "$W/$f"; then
            echo "diff -ruN a/$f b/$f" >> "$OUT/$name.tmp"
            diff -uN --label "a/$f" --label "b/$f" "$P/$f" "$W/$f" >> "$OUT/$name.tmp" || [ $? -eq 1 ]
        fi
    done
    mv "$OUT/$name.tmp" "$OUT/$name"
    echo "wrote patches/$name ($(grep -c '^@@' "$OUT/$name") hunks)"
done

# every changed file must belong to a patch
status=0
while read -r f; do
    f=${f#"$W/"}
    found=0
    for l in "${listed[@]}"; do [ "$l" = "$f" ] && found=1; done
    if [ $found -eq 0 ]; then
        echo "error: $f differs from the pristine tree but no patch lists it" >&2
        status=1
    fi
done < <(diff -rq "$P" "$W" | sed -n -e "s|^Files $P/.* and \(.*\) differ$|\1|p" -e "s|^Only in \($W[^:]*\): \(.*\)$|\1/\2|p")
exit $status
