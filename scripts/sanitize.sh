#!/usr/bin/env bash
# The native tests under AddressSanitizer + UndefinedBehaviorSanitizer.
#
# Builds tq_native and the cffi module with -fsanitize=address,undefined (plain CMake, no
# llama.cpp) in build/sanitize, stages the package there, and runs tests/test_native_*.py against
# it. CPython is not instrumented, so libasan must be preloaded; leak checking is off because
# CPython does not free everything at exit. Any report aborts the run (exit status non-zero).
# Extra arguments go to CMake, e.g. -DTQ_NO_AVX512=ON. Needs python3 with numpy, cffi and pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
out=$root/build/sanitize
python=${PYTHON:-python3}

cmake -S . -B "$out/cmake" -G Ninja -DCMAKE_BUILD_TYPE=Debug -DTQ_BUILD_LLAMA=OFF \
  -DPython_EXECUTABLE="$(command -v "$python")" \
  -DCMAKE_C_FLAGS="-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer -O1" "$@"
cmake --build "$out/cmake" -j2
rm -rf "$out/stage"
mkdir -p "$out/stage/tq_llamacpp"
cp tq_llamacpp/*.py "$out/stage/tq_llamacpp/"
cmake --install "$out/cmake" --prefix "$out/stage" >/dev/null

export LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so)"
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:strict_string_checks=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
export PYTHONMALLOC=malloc  # let ASan see CPython's buffers too
cd "$out/stage"  # first on sys.path: the staged, instrumented package wins over any installed one
"$python" -c "import sys, tq_llamacpp._native as m; sys.exit(not m.__file__.startswith('$out/stage/'))" \
  || { echo "sanitize.sh: an installed tq_llamacpp shadows the instrumented build" >&2; exit 1; }
"$python" -m pytest -q -p no:cacheprovider --rootdir "$root" "$root"/tests/test_native_*.py
