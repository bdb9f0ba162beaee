#!/usr/bin/env bash
# rows-per-block rule: the kernel tests and A/B in the harness, then the package's build, test-backend-ops and llama-bench A/B
# The harness binary was built here (nvcc 13.0) and carried to the device:
#   cmake -S native -B .tqab/nat -DCMAKE_BUILD_TYPE=Release -DTQ_BUILD_TESTS=ON -DTQ_CUDA_TESTS=ON
#   cmake --build .tqab/nat --target tq_cuda_fattn_test
# device tool: run(command="bash <this script>", carry=[".tqab/nat/tq_cuda_fattn_test", <this script>, ".tqdev" (scripts/gpu-tree.sh)])
b=.tqab/nat/tq_cuda_fattn_test
{ $b --no-perf; echo "rc=$?"; } > $OUT/harness-tests.log 2>&1
echo "harness: $(grep -c '^PASS' $OUT/harness-tests.log) PASS, $(grep -c '^FAIL' $OUT/harness-tests.log) FAIL; $(tail -2 $OUT/harness-tests.log | tr '\n' ' ')"
for seqs in 1 4; do for kv in 256 1024 4096 32768; do for rb in 0 4; do
  $b --perf-only --type tq3 --kv $kv --seqs $seqs --rb $rb --reps 400 | grep '^perf tq3' | sed -E "s/^perf [^(]*\((same|rotating)[^:]*: /seqs=$seqs kv=$kv rb=$rb \1: /; s/ GB\/s.*RB=/ GB\/s RB=/; s/ chunks=[0-9]+//; s/ grid=.*//" | tr "\n" " "; echo
done; done; done | tee $OUT/harness-ab.txt
TQ_BUDGET=$(( 585 - SECONDS )) TQ_STEPS="build test bench" TQ_BENCH_TYPES="tq3 tq3@rb4 f16 tq3 tq3@rb4" TQ_BENCH_DEPTHS=0,32768 TQ_BENCH_REPS=2 bash benchmarks/gpu_bench.sh > /dev/null 2>&1
cat $OUT/summary.txt
