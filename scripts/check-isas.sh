#!/usr/bin/env bash
# Every SIMD kernel against the portable one: tq_selftest (codes and values byte-identical, dots
# within bound) and tq_isa_stress (the same over many blocks, with timings).
#   native          CMake build run on this CPU: AVX2, and AVX-512 where the CPU has it
#   aarch64         cross-compiled, run under qemu-aarch64 with NEON active
#   avx512-compile  tq_avx512.c must compile warning-free (qemu's TCG cannot run AVX-512:
#                   run `native` on an AVX-512 CPU for that)
# Usage: scripts/check-isas.sh [native|aarch64|avx512-compile]... (default: all three).
# Needs gcc and cmake; aarch64 also `apt-get install gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user`.
# BLOCKS=n sets the stress size (default 65536). Exit status non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT_DIR:-/tmp/tq-check-isas}
blocks=${BLOCKS:-65536}

# build_run NAME CC EMULATOR [cmake args]: build tq_native and its tests warning-free, then ctest
# (through EMULATOR, e.g. qemu, when cross-compiled)
build_run() {
  local name=$1 cc=$2 emulator=$3 b=$out/$1
  shift 3
  cmake -S native -B "$b" -DCMAKE_BUILD_TYPE=Release -DCMAKE_C_COMPILER="$cc" -DTQ_BUILD_TESTS=ON \
    -DTQ_TEST_BLOCKS="$blocks" ${emulator:+-DCMAKE_CROSSCOMPILING_EMULATOR="$emulator"} "$@" >/dev/null
  if ! cmake --build "$b" --clean-first -j2 >"$b/build.log" 2>&1 || grep -E 'warning|error' "$b/build.log"; then
    echo "$name: build failed or warned, see $b/build.log" >&2
    return 1
  fi
  echo "== $name: ctest (tq_selftest, tq_isa_stress $blocks)"
  (cd "$b" && ctest --output-on-failure)
}

checks=("$@")
[ $# -gt 0 ] || checks=(native aarch64 avx512-compile)
for w in "${checks[@]}"; do
  case $w in
  native) build_run native "${CC:-cc}" "" ;;
  aarch64)
    build_run aarch64 aarch64-linux-gnu-gcc "qemu-aarch64;-L;/usr/aarch64-linux-gnu" \
      -DCMAKE_SYSTEM_NAME=Linux -DCMAKE_SYSTEM_PROCESSOR=aarch64 \
      -DCMAKE_FIND_ROOT_PATH=/usr/aarch64-linux-gnu -DCMAKE_FIND_ROOT_PATH_MODE_LIBRARY=ONLY ;;
  avx512-compile)
    echo "== avx512-compile"
    gcc -std=c11 -O2 -ffp-contract=off -Wall -Wextra -Werror -mavx512f -mavx512bw -mavx512vl -mavx2 -mfma -mf16c \
      -Inative/include -c native/src/tq_avx512.c -o /dev/null && echo "tq_avx512.c compiles cleanly" ;;
  *) echo "unknown check: $w" >&2; exit 2 ;;
  esac
done
