#!/usr/bin/env bash
# small-depth rows-per-block sweep: tq3 D128 G4 8 KV heads; RB 1/2/4 with the split rule and forced splits
# The harness binary was built here (nvcc 13.0) and carried to the device:
#   cmake -S native -B .tqab/nat -DCMAKE_BUILD_TYPE=Release -DTQ_BUILD_TESTS=ON -DTQ_CUDA_TESTS=ON
#   cmake --build .tqab/nat --target tq_cuda_fattn_test
# device tool: run(command="bash <this script>", carry=[".tqab/nat/tq_cuda_fattn_test", <this script>]])
b=.tqab/nat/tq_cuda_fattn_test
for seqs in 1 4 16; do
  for kv in 256 512 1024 4096 32768; do
    for rb in 4 2 1; do
      for s in 0 1 2; do
        [ $s -gt 0 ] && [ $((s*128)) -gt $kv ] && continue
        $b --perf-only --type tq3 --kv $kv --seqs $seqs --rb $rb --splits $s --reps 400 | grep '^perf tq3' | sed -E "s/^perf [^(]*\((same|rotating)[^:]*: /seqs=$seqs kv=$kv rb=$rb force=$s \1: /; s/ GB\/s.*splits=/ GB\/s splits=/; s/ grid=.*//" | tr "\n" " "; echo
      done
    done
  done
done
