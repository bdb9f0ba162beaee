#!/usr/bin/env bash
# The GPU check and benchmark of the tq KV-cache types, in ONE call on the GPU machine (it has no
# network and stays warm only briefly, so everything is built and run here in one go):
#   1. the card, and the codec's own C selftest on the host CPU (AVX-512 there), with tq_bench; the
#      CUDA selftest and the flash-attention decode test (native/tests/tq_cuda_*.cu, no llama.cpp)
#   2. configure + build llama.cpp with CUDA (sm_90) from the patched tree that scripts/gpu-tree.sh
#      wrote to .tqdev/llama.cpp, through benchmarks/gpu/CMakeLists.txt -> cmake/llamacpp.cmake
#      (TQ_CUDA=ON, TQ_LLAMA_SOURCE_DIR): only test-backend-ops, llama-bench and llama-perplexity
#   3. test-backend-ops -b CUDA0 for every tq case (SET_ROWS, CPY, GET_ROWS, FLASH_ATTN_EXT) against
#      the CPU, and a listing of CUDA support for them (no silent CPU fallback)
#   4. test-backend-ops perf: attention over 32K keys, one token and a 512-token ubatch, f16 / q8_0 /
#      q4_0 / tq4 / tq3 / tq2 / tq3t (TQ_PERF_PAIRS=1: the tq conversion to f16 two values per thread)
#   5. llama-bench decode (tg64 at depths 0, 8192, 32768) on a synthetic Llama-3.1-8B-shaped Q4_0
#      model, per cache type, as long as the time budget lasts
# Logs go to $OUT (the device tool brings that folder back; at most 8 files) or benchmarks/out.
#
#   # here: the patched tree (41 MB) to carry along
#   scripts/gpu-tree.sh
#   # the device tool: run(command="bash benchmarks/gpu_bench.sh", carry=[".tqdev"])
#
#   6. compute-sanitizer memcheck / racecheck on the tq kernels (step "sanitize", not by default)
#   break (not by default, after "pip" or "build"): the fused paths' tests against deliberately broken code
#   ppprofile (not by default): ncu, a prefill ubatch's attention over 32K keys (test-backend-ops perf,
#           512 tokens) kernel by kernel: the K/V conversion to f16 and the tensor-core kernel
#           (TQ_PPPROFILE_TYPES, default "f16 q4_0 tq3 tq3@pairs")
#   profile (not by default): ncu, one decode step at depth 0 kernel by kernel (f16 / tq3 / tq3 with
#           TQ_CUDA_FUSED_WRITE=0, or TQ_PROFILE_TYPES), summed per kind of kernel (benchmarks/ncu_kernels.py)
#   timeline (not by default): decode steps as a CUPTI timeline with the CUDA graphs on (TQ_TIMELINE_TYPES,
#           default "f16 tq3 q4_0"; TQ_TIMELINE_DEPTHS, default 0): where a step's time goes between its
#           kernels and between steps (benchmarks/gpu/kernel_trace.c, benchmarks/gpu_timeline.py)
# Steps not run by default:
#   pip     instead of "build": the package itself, `CMAKE_ARGS="-DTQ_CUDA=ON ..." pip install .`, timed,
#           from the carried tree (TQ_LLAMA_SOURCE_DIR) with the carried wheels (.tqdev/whl: cffi,
#           pycparser) and pure-Python packages (.tqdev/site: llama_cpp, diskcache) that
#           scripts/gpu-tree.sh puts there; later steps use the package's test-backend-ops and llama-bench
#   pytest  tests/test_gpu.py against the installed package (needs "pip"), on a synthetic SmolLM2-shaped
#           model (the real one is too large to carry)
#   rpc     a CUDA ggml-rpc-server and a CPU-only client on this host (benchmarks/rpc_bench.py, needs "pip"):
#           decode tokens/s and bytes per token over the socket, f16 and tq3, next to local CUDA
#   qk      native/bench/tq_cuda_qk_bench.cu: q.k logits over 32K keys, f32 / f16 / q8_0 / tq4 / tq3
#   batched llama-batched-bench -npp 8192 -ntg 32 -npl 1,4,16 per cache type (TQ_BATCHED_TYPES, default
#           "f16 tq3 q4_0"; TQ_BATCHED_PP, TQ_BATCHED_NPL), with the build step and llama-batched-bench in
#           TQ_TARGETS; then the decode kernel alone on S sequences of that depth (tq_cuda_fattn_test --seqs)
# Environment: TQ_BUDGET (seconds for the whole script, default 570), TQ_STEPS (default
# "selftest build test perf bench"), TQ_BENCH_TYPES (default "f16 tq3 q4_0 q8_0 tq4 tq2"),
# TQ_BENCH_DEPTHS (default 0,8192,32768), TQ_BENCH_PP (prompt sizes, default 0), TQ_BENCH_REPS (default 2),
# TQ_TARGETS, TQ_PERF_FILTER, TQ_PROFILE_TYPES (the profile's caches, default "f16 tq3 tq3@unfused"),
# TQ_NCU_ARGS (more ncu options: "--cache-control none --clock-control none" times each kernel with
# warm caches at the clocks it runs at, nearer a real step than the default's flushed caches),
# JOBS (default: all cores). A bench type "tq4/tq3t" sets K and V apart;
# one written "tq3@vec" runs with
# TQ_CUDA_FA_DECODE=0, "tq3@unfused" with TQ_CUDA_FUSED_WRITE=0, "tq3@norope" with TQ_CUDA_FUSED_ROPE=0
# (RoPE of Q and K in kernels of their own, not in the fused chains), "tq3@rb4" with TQ_CUDA_FA_RB=4 (the
# decode kernel's 4 query rows per block at every depth), "tq3@c0" with TQ_CUDA_FA_COMBINE_TILES=0 (short
# caches split as if the combine cost nothing: 2 splits at depth 0), "tq3@pairs" with TQ_CUDA_CONVERT_PAIRS=1
# (the K/V conversion to f16 of a prefill two values per thread, as ggml-cuda's generic kernel),
# "f16@gopt" with GGML_CUDA_GRAPH_OPT=1 (llama.cpp runs a layer's Q, K and V branches on streams of
# their own inside the CUDA graph), "tq3@nopdl" with TQ_CUDA_PDL=0 (the tq kernels launched the plain
# way, not as programmatic dependent launches as ggml-cuda's own); flags combine: "tq3@unfused@gopt".
set -uo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
budget=${TQ_BUDGET:-570}
steps=" ${TQ_STEPS:-selftest build test perf bench} "
out=${OUT:-benchmarks/out}
mkdir -p "$out"
jobs=${JOBS:-$(nproc)}
src=.tqdev/llama.cpp
b=/tmp/tq-gpu-build
sum=$out/summary.txt

left() { echo $((budget - ($(date +%s) - start))); }
say() { echo "[$(($(date +%s) - start))s] $*" | tee -a "$sum"; }
want() { [[ $steps == *" $1 "* ]]; }
# the synthetic Llama-3.1-8B-shaped Q4_0 model of the speed steps, made once per machine; $1: the log
m8b=/tmp/tq-synthetic-llama31-8b-q4_0.gguf
synthetic_8b() {
    [ -f $m8b ] || PYTHONPATH=$src/gguf-py python3 benchmarks/make_synthetic_gguf.py $m8b --vocab $src/models/ggml-vocab-llama-bpe.gguf > "$1" 2>&1
}

: > "$sum"
say "gpu_bench.sh $(date -u +%FT%TZ), budget ${budget}s, steps:$steps"
{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,clocks.max.mem --format=csv,noheader || true
  grep -m1 'model name' /proc/cpuinfo; echo "$(nproc) cores"; nvcc --version | tail -1; cmake --version | head -1; } 2>&1 | tee -a "$sum"

# ---- 1. the codec on the host CPU -------------------------------------------------------------
if want selftest; then
    n=/tmp/tq-native
    # the native tests are CMake targets (native/CMakeLists.txt): the C selftests, the CUDA device
    # code of native/cuda against the C codec byte for byte, and the flash-attention decode kernel
    # (native/cuda/tq-fattn-decode.cuh) against a float64 reference with its time over 32K keys
    { cmake -S native -B $n -DCMAKE_BUILD_TYPE=Release -DTQ_BUILD_TESTS=ON -DTQ_CUDA_TESTS=ON >/dev/null &&
      cmake --build $n -j "$jobs" >/dev/null &&
      echo "== tq_selftest" && $n/tq_selftest && echo "== tq_isa_stress 65536" && $n/tq_isa_stress 65536; } > "$out/native.log" 2>&1
    say "native selftest rc=$? : $(grep -h 'failures' "$out/native.log" | tr '\n' ' ')"
    { echo "== tq_cuda_selftest" && $n/tq_cuda_selftest; } >> "$out/native.log" 2>&1
    say "cuda selftest rc=$? : $(grep -h 'FAIL\|^[0-9]* failures' "$out/native.log" | tail -12 | tr '\n' ';')"
    grep -h '^perf .*to_fp16' "$out/native.log" >> "$sum"
    { echo "== tq_cuda_fattn_test" && $n/tq_cuda_fattn_test; } >> "$out/native.log" 2>&1
    rc=$?
    fa=$(sed -n '/^== tq_cuda_fattn_test/,$p' "$out/native.log")
    say "cuda fattn decode test rc=$rc : $(grep -c '^PASS' <<< "$fa") PASS, $(grep -c '^FAIL' <<< "$fa") FAIL; $(grep '^perf' <<< "$fa" | sed -E 's/ D=128 G=4 kvh=8 tok=1 kv=32768//; s/, RB=.*//' | tr '\n' ';')"
    grep '^FAIL' <<< "$fa" | head -20 >> "$sum"
fi

# ---- 2. build -------------------------------------------------------------------------------------
if want build; then
    [ -f $src/CMakeLists.txt ] || { say "no $src: run scripts/gpu-tree.sh before the call and carry .tqdev"; exit 1; }
    t0=$(date +%s)
    gen=(); command -v ninja >/dev/null && gen=(-G Ninja)
    cmake -S benchmarks/gpu -B $b "${gen[@]}" -DCMAKE_BUILD_TYPE=Release -DTQ_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 \
        -DTQ_LLAMA_SOURCE_DIR="$PWD/$src" -DGGML_CCACHE=OFF -DGGML_NATIVE=ON > "$out/build.log" 2>&1 &&
    timeout $(( $(left) - 60 )) cmake --build $b -j "$jobs" --target ${TQ_TARGETS:-test-backend-ops llama-bench llama-perplexity} >> "$out/build.log" 2>&1
    rc=$?
    say "build rc=$rc in $(( $(date +%s) - t0 ))s ($(grep -c '\.cu\.o' "$out/build.log") CUDA objects); FA pairs: $(grep -o 'FlashAttention K-V type combinations:.*' "$out/build.log")"
    if [ $rc -ne 0 ]; then
        grep -B2 -A12 -m5 -E 'error|Error' "$out/build.log" | head -80 >> "$sum"
        exit 1
    fi
fi
# ---- 2'. or the package, as a user installs it -------------------------------------------------
pkgdir() { cd /tmp && python3 -c "import importlib.util, os; s = importlib.util.find_spec('tq_llamacpp'); print(os.path.dirname(s.origin) if s else '')" 2>/dev/null; }
if [ -d .tqdev/whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/tq-site .tqdev/whl/*.whl >> "$out/pip.log" 2>&1
fi
export PYTHONPATH=/tmp/tq-site:$PWD/.tqdev/site:$PWD/$src/gguf-py${PYTHONPATH:+:$PYTHONPATH}
if want pip; then
    [ -f $src/CMakeLists.txt ] || { say "no $src: run scripts/gpu-tree.sh before the call and carry .tqdev"; exit 1; }
    t0=$(date +%s)
    CMAKE_BUILD_PARALLEL_LEVEL=$jobs CMAKE_ARGS="-DTQ_CUDA=ON -DTQ_LLAMA_SOURCE_DIR=$PWD/$src" \
        timeout $(( $(left) - 60 )) python3 -m pip install --no-build-isolation --no-deps --no-index -v \
        -Cbuild-dir=/tmp/tq-pip-build . >> "$out/pip.log" 2>&1
    rc=$?
    say "pip install (TQ_CUDA=ON, sm_90) rc=$rc in $(( $(date +%s) - t0 ))s ($(grep -c '\.cu\.o' "$out/pip.log") CUDA objects): $(tail -1 "$out/pip.log")"
    if [ $rc -ne 0 ]; then
        grep -B2 -A12 -m5 -E 'error|Error' "$out/pip.log" | head -80 >> "$sum"
        exit 1
    fi
fi
if want pip || { ! want build && [ -n "$(pkgdir)" ] && [ -x "$(pkgdir)/bin/test-backend-ops" ]; }; then
    bin=$(pkgdir)/bin
else
    # the folder of whichever tool the build step made (TQ_TARGETS may leave test-backend-ops out)
    bin=$(dirname "$(find $b \( -name test-backend-ops -o -name llama-bench -o -name llama-batched-bench \) -type f -perm -u+x 2>/dev/null | head -1)")
fi
say "tools: $bin"
tbo=$bin/test-backend-ops

# ---- 3. correctness against the CPU ---------------------------------------------------------------
if want test; then
    # which tq cases CUDA claims (supports_op): the unsupported ones would run on the CPU in a graph
    $tbo support -b CUDA0 -o SET_ROWS,CPY,GET_ROWS,FLASH_ATTN_EXT -p '(=tq[234][jt]?[,)]|type_[KV]=tq)' > "$out/support.log" 2>&1
    say "support: $(grep -c 'SUPPORTED' "$out/support.log") tq cases listed, $(grep -c 'NOT SUPPORTED' "$out/support.log") not supported on CUDA0"
    grep 'NOT SUPPORTED' "$out/support.log" | cut -c1-150 | head -20 >> "$sum"
    timeout $(( $(left) - 30 )) $tbo -b CUDA0 -o SET_ROWS,CPY,GET_ROWS -p '=tq[234][jt]?[,)]' > "$out/tests.log" 2>&1
    r1=$?
    timeout $(( $(left) - 30 )) $tbo -b CUDA0 -o FLASH_ATTN_EXT -p 'type_[KV]=tq' >> "$out/tests.log" 2>&1
    r2=$?
    # the fused cache write and query chain (native/cuda/tq-fused-write.cuh) against the CPU's ops one by
    # one, alone and in one layer's attention (the chains, the writes, the attention, the un-rotation)
    timeout $(( $(left) - 30 )) $tbo -b CUDA0 -o TQ_FUSED_WRITE >> "$out/tests.log" 2>&1
    r2=$((r2 | $?))
    timeout $(( $(left) - 30 )) $tbo -b CUDA0 -o TQ_ATTN_LAYER >> "$out/tests.log" 2>&1
    r2=$((r2 | $?))
    # upstream's own types next to ours: the patch must not have broken them
    timeout 60 $tbo -b CUDA0 -o FLASH_ATTN_EXT -p 'hsk=128.*type_K=(q8_0|f16),type_V=(q8_0|f16)' >> "$out/tests.log" 2>&1
    r3=$?
    say "tests rc=$r1/$r2/$r3: $(grep -cE '^ +[A-Z_]+\(.*OK' "$out/tests.log") OK, $(grep -cE 'FAIL' "$out/tests.log") FAIL, $(grep -c 'not supported' "$out/tests.log") not supported; $(grep -E 'tests passed|Backend .*: (OK|FAIL)' "$out/tests.log" | tr '\n' ' ')"
    grep -E 'FAIL' "$out/tests.log" | head -30 >> "$sum"
    grep -E 'no FlashAttention vector kernel' "$out/tests.log" | sort -u | head >> "$sum"
fi

# ---- 3'. the fused paths' tests fail when the code they check is broken ("break", after "pip" or
# "build": their build tree): each break is one edit of native/cuda, a rebuild of test-backend-ops, the
# tests, the edit undone
bb=/tmp/tq-pip-build; [ -d $bb ] || bb=$b
if want break && [ -d $bb ]; then
    brk() { # what, file, sed expression, test-backend-ops -o
        local what=$1 f=$2 e=$3 ops=$4 t
        cp "$f" /tmp/tq-break.orig
        sed -i "$e" "$f"
        if cmp -s "$f" /tmp/tq-break.orig; then say "break $what: the edit changed nothing"; return; fi
        echo "== break $what: $e" >> "$out/break.log"
        timeout $(( $(left) - 40 )) cmake --build $bb -j "$jobs" --target test-backend-ops >> "$out/break.log" 2>&1
        t=$(find $bb -name test-backend-ops -type f -perm -u+x | head -1)
        timeout $(( $(left) - 30 )) "$t" -b CUDA0 -o "$ops" > /tmp/tq-break.log 2>&1
        cat /tmp/tq-break.log >> "$out/break.log"
        say "break $what ($ops): $(grep -cE 'TQ_[A-Z_]+\(.*OK' /tmp/tq-break.log) OK, $(grep -cE 'TQ_[A-Z_]+\(.*FAIL' /tmp/tq-break.log) FAIL"
        cp /tmp/tq-break.orig "$f"
    }
    [ "$(left)" -gt 100 ] && brk "K's factors not applied" native/cuda/tq-fused-write.cuh \
        's/if (pm) { v = v \* pm\[j\]; }/if (pm) { v = v; }/' TQ_ATTN_LAYER,TQ_FUSED_WRITE
    [ "$(left)" -gt 100 ] && brk "the query's output one segment off" native/cuda/tq-fused-write.cuh \
        's/out\[e0 + i \* W + lane\] = reg\[i\]/out[(e0 + N) % (c.n_seg * N) + i * W + lane] = reg[i]/' TQ_ATTN_LAYER,TQ_FUSED_WRITE
    [ "$(left)" -gt 100 ] && brk "RoPE turned the other way" native/cuda/tq-fused-write.cuh \
        's/x0 \* cs_ - x1 \* sn/x0 * cs_ + x1 * sn/g' TQ_ATTN_LAYER,TQ_FUSED_WRITE
    [ "$(left)" -gt 100 ] && brk "every block of a launch of several chains runs the first chain" native/cuda/tq-fused-write.cuh \
        's/const tq_cuda_chain \& c = cs.c\[jc\];/const tq_cuda_chain \& c = cs.c[0];/' TQ_ATTN_LAYER,TQ_FUSED_WRITE
    # the libraries as the code is, for the steps after
    timeout $(( $(left) - 10 )) cmake --build $bb -j "$jobs" --target test-backend-ops >> "$out/break.log" 2>&1
    say "break: rebuilt without the breaks rc=$?"
fi

# ---- 4. kernel-level attention over 32K keys: decode (1 token) and a prefill ubatch (512) ----------
if want perf && [ "$(left)" -gt 60 ]; then
    TQ_CUDA_CONVERT_PAIRS=${TQ_PERF_PAIRS:-0} timeout $(( $(left) - 30 )) $tbo perf -b CUDA0 -o FLASH_ATTN_EXT \
        -p "${TQ_PERF_FILTER:-hsk=128,hsv=128,nh=8,nr23=\\[4,1\\],kv=32768,nb=(1|512),}" > "$out/perf.log" 2>&1
    say "perf rc=$? (TQ_CUDA_CONVERT_PAIRS=${TQ_PERF_PAIRS:-0})"
    grep -E 'FLASH_ATTN_EXT' "$out/perf.log" | sed -E 's/permute=.*\)//; s/max_bias.*prec=f32,//' >> "$sum"
fi

# ---- 4'. a prefill ubatch's attention over 32K keys, kernel by kernel (ncu): the conversion of K and V
# to f16 that the tensor-core kernel reads, and that kernel; "@pairs" converts 2 values per thread
if want ppprofile && [ "$(left)" -gt 60 ]; then
    csvs=()
    for spec in ${TQ_PPPROFILE_TYPES:-f16 q4_0 tq3 tq3@pairs}; do
        t=${spec%@*}; pairs=0; [ "$spec" != "$t" ] && pairs=1
        [ "$(left)" -gt 40 ] || { say "ppprofile: out of time before $spec"; break; }
        TQ_CUDA_CONVERT_PAIRS=$pairs timeout $(( $(left) - 20 )) ncu --metrics gpu__time_duration.sum --csv --launch-count 12 ${TQ_NCU_ARGS:-} \
            $tbo perf -b CUDA0 -o FLASH_ATTN_EXT -p "hsk=128,hsv=128,nh=8,nr23=\\[4,1\\],kv=32768,nb=512,.*type_K=$t," \
            > "$out/ncu-pp-${spec/@/-}.csv" 2>> "$out/profile.log"
        say "ncu pp $spec rc=$?"
        csvs+=("$out/ncu-pp-${spec/@/-}.csv")
    done
    python3 benchmarks/ncu_kernels.py "${csvs[@]}" >> "$sum" 2>&1
fi

# ---- 5. llama-bench on a synthetic Llama-3.1-8B-shaped model ------------------------------------
if want bench && [ "$(left)" -gt 90 ]; then
    m=$m8b
    synthetic_8b "$out/bench.log"
    say "synthetic model rc=$? $(du -h $m 2>/dev/null | cut -f1)"
    # "tq3@vec": the same cache with the tq decode kernel switched off (llama.cpp's vec kernel), for A/B
    for spec in ${TQ_BENCH_TYPES:-f16 tq3 q4_0 q8_0 tq4 tq2}; do
        t=${spec%%@*}; fa_decode=1; fused=1; rope=1; rb=0; ct=1; pairs=0; gopt=0; merge=1; pdl=1
        for f in $(tr '@' ' ' <<< "${spec#"$t"}"); do
            case $f in vec) fa_decode=0 ;; unfused) fused=0 ;; norope) rope=0 ;; rb4) rb=4 ;; c0) ct=0 ;; pairs) pairs=1 ;; gopt) gopt=1 ;; sep) merge=0 ;; nopdl) pdl=0 ;;
                *) say "bench: unknown flag @$f in $spec" ;; esac
        done
        tk=${t%/*}; tv=${t#*/} # "tq4/tq3t": K tq4, V tq3t
        [ "$(left)" -gt 45 ] || { say "bench: out of time before $spec"; break; }
        echo "## $spec (TQ_CUDA_FA_DECODE=$fa_decode TQ_CUDA_FUSED_WRITE=$fused TQ_CUDA_FUSED_ROPE=$rope TQ_CUDA_FA_RB=$rb TQ_CUDA_FA_COMBINE_TILES=$ct TQ_CUDA_CONVERT_PAIRS=$pairs GGML_CUDA_GRAPH_OPT=$gopt TQ_CUDA_FUSED_MERGE=$merge TQ_CUDA_PDL=$pdl)" >> "$out/bench.log"
        TQ_CUDA_PDL=$pdl TQ_CUDA_FUSED_MERGE=$merge GGML_CUDA_GRAPH_OPT=$gopt TQ_CUDA_FA_DECODE=$fa_decode TQ_CUDA_FUSED_WRITE=$fused TQ_CUDA_FUSED_ROPE=$rope TQ_CUDA_FA_RB=$rb TQ_CUDA_FA_COMBINE_TILES=$ct TQ_CUDA_CONVERT_PAIRS=$pairs timeout $(( $(left) - 20 )) $bin/llama-bench -m $m -ngl 99 -fa 1 -ctk $tk -ctv $tv \
            -p "${TQ_BENCH_PP:-0}" -n 64 -d "${TQ_BENCH_DEPTHS:-0,8192,32768}" -r "${TQ_BENCH_REPS:-2}" -o md >> "$out/bench.log" 2>&1
        say "llama-bench $spec rc=$?"
    done
    grep -E '^## |^\| llama' "$out/bench.log" >> "$sum"
fi

# ---- 5c. batched decode as a server runs it: S sequences of the same depth, one token each per step
# (llama-batched-bench; the package does not ship it, so the "build" step with it in TQ_TARGETS), then
# the decode kernel alone on the same shape (native/tests/tq_cuda_fattn_test.cu --seqs S --kv depth)
if want batched && [ "$(left)" -gt 90 ]; then
    m=$m8b
    synthetic_8b "$out/batched.log"
    pp=${TQ_BATCHED_PP:-8192}; npl=${TQ_BATCHED_NPL:-1,4,16}; tg=32
    maxpl=$(tr ',' '\n' <<< "$npl" | sort -n | tail -1)
    if [ -x "$bin/llama-batched-bench" ]; then
        for spec in ${TQ_BATCHED_TYPES:-f16 tq3 q4_0}; do
            tk=${spec%/*}; tv=${spec#*/}
            [ "$(left)" -gt 60 ] || { say "batched: out of time before $spec"; break; }
            echo "## $spec" >> "$out/batched.log"
            # one KV stream per sequence (llama.cpp's default), each of pp + tg cells
            timeout $(( $(left) - 30 )) $bin/llama-batched-bench -m $m -ngl 99 -fa 1 -ctk $tk -ctv $tv -c $(( maxpl * (pp + tg) )) \
                -npp $pp -ntg $tg -npl $npl >> "$out/batched.log" 2>&1
            say "llama-batched-bench $spec rc=$?"
        done
        grep -E '^## |^\| +[0-9]' "$out/batched.log" >> "$sum"
    else
        say "batched: no llama-batched-bench in $bin (the build step with TQ_TARGETS naming it)"
    fi
    n=/tmp/tq-native
    if [ "$(left)" -gt 60 ] && { [ -x $n/tq_cuda_fattn_test ] || { cmake -S native -B $n -DCMAKE_BUILD_TYPE=Release -DTQ_BUILD_TESTS=ON -DTQ_CUDA_TESTS=ON >/dev/null &&
            cmake --build $n -j "$jobs" --target tq_cuda_fattn_test >/dev/null; }; }; then
        for S in $(tr ',' ' ' <<< "$npl"); do
            timeout 60 $n/tq_cuda_fattn_test --perf-only --type tq3 --seqs "$S" --kv "$pp" | grep '^perf tq' >> "$out/batched.log" 2>&1
        done
        grep '^perf tq' "$out/batched.log" | sed -E 's/ D=128 G=4 kvh=8 tok=1//; s/, RB=.*//' >> "$sum"
    fi
fi

# ---- 5'. the GPU tests of the package (tests/test_gpu.py) -----------------------------------------
if want pytest && [ "$(left)" -gt 60 ]; then
    m=/tmp/tq-synthetic-smollm2.gguf
    [ -f $m ] || PYTHONPATH=$src/gguf-py:$PYTHONPATH python3 benchmarks/make_synthetic_gguf.py $m --shape smollm2-135m \
        --vocab $src/models/ggml-vocab-llama-bpe.gguf > "$out/pytest.log" 2>&1
    repo=$PWD
    # from /tmp: the tests import the installed package, not the checkout
    (cd /tmp && TQ_GPU_TEST_MODEL=$m timeout $(( $(left) - 20 )) python3 -m pytest -c "$repo/pyproject.toml" \
        --rootdir "$repo" -p no:cacheprovider -v -s -m gpu "$repo/tests/test_gpu.py") >> "$out/pytest.log" 2>&1
    say "pytest -m gpu rc=$?: $(grep -E '^(=+ )?[0-9]+ (passed|failed)|passed|failed' "$out/pytest.log" | tail -1)"
    grep -E 'PASSED|FAILED|SKIPPED|ERROR|rel RMS' "$out/pytest.log" | cut -c1-200 >> "$sum"
fi

# ---- 5'''. a tq cache on a CUDA ggml-rpc-server, seen from a CPU-only client on the same host ------
if want rpc && [ "$(left)" -gt 90 ]; then
    m=$m8b
    synthetic_8b "$out/rpc.log"
    $bin/ggml-rpc-server --host 127.0.0.1 --port 50052 >> "$out/rpc-server.log" 2>&1 &
    rpc_pid=$!
    sleep 3
    repo=$PWD
    # tokens/s and bytes per token through the socket (a client that sees no GPU), then the same
    # model on the local GPU; from /tmp, so that the installed package is imported
    (cd /tmp && CUDA_VISIBLE_DEVICES= PYTHONPATH=$repo/.tqdev/site:${PYTHONPATH:-} timeout $(( $(left) - 30 )) python3 \
        "$repo/benchmarks/rpc_bench.py" --model $m --rpc 127.0.0.1:50052 --no-local --types "${TQ_RPC_TYPES:-f16,tq3}" \
        --depths "${TQ_RPC_DEPTHS:-0,8192}" --n 32 --json "$out/rpc-remote.json") >> "$out/rpc.log" 2>&1
    say "rpc_bench (CUDA server, CPU client) rc=$?"
    (cd /tmp && PYTHONPATH=$repo/.tqdev/site:${PYTHONPATH:-} timeout $(( $(left) - 20 )) python3 \
        "$repo/benchmarks/rpc_bench.py" --model $m --rpc 127.0.0.1:50052 --no-rpc --types "${TQ_RPC_TYPES:-f16,tq3}" \
        --depths "${TQ_RPC_DEPTHS:-0,8192}" --n 32 --json "$out/rpc-local.json") >> "$out/rpc.log" 2>&1
    say "rpc_bench (local CUDA) rc=$?"
    kill $rpc_pid 2>/dev/null
    grep '^|' "$out/rpc.log" >> "$sum"
fi

# ---- 5''. q.k logits over 32K keys per key format ----------------------------------------------
if want qk && [ "$(left)" -gt 40 ]; then
    n=/tmp/tq-native
    { cmake -S native -B $n -DCMAKE_BUILD_TYPE=Release -DTQ_BUILD_TESTS=ON -DTQ_CUDA_TESTS=ON >/dev/null &&
      cmake --build $n -j "$jobs" --target tq_cuda_qk_bench >/dev/null && timeout $(( $(left) - 20 )) $n/tq_cuda_qk_bench; } > "$out/qk.log" 2>&1
    say "qk bench rc=$?"
    cut -c1-220 "$out/qk.log" >> "$sum"
fi

# ---- 5b. one decode step at depth 0, kernel by kernel (ncu): f16, tq3, tq3 unfused by default -----
if want profile && [ "$(left)" -gt 90 ]; then
    m=$m8b
    synthetic_8b "$out/profile.log"
    # a first run per cache type keeps its calibration (a kv-calib file per type), so that the profiled
    # run holds the decode step only
    for t in $(for spec in ${TQ_PROFILE_TYPES:-f16 tq3 tq3@unfused}; do echo "${spec%@*}"; done | sort -u); do
        $bin/llama-bench -m $m -ngl 99 -fa 1 -ctk $t -ctv $t -p 0 -n 1 -r 1 >> "$out/profile.log" 2>&1
    done
    csvs=()
    for spec in ${TQ_PROFILE_TYPES:-f16 tq3 tq3@unfused}; do
        t=${spec%@*}; fused=1; rope=1; merge=1
        case $spec in *@unfused) fused=0 ;; *@norope) rope=0 ;; *@sep) merge=0 ;; esac
        [ "$(left)" -gt 40 ] || { say "profile: out of time before $spec"; break; }
        TQ_CUDA_FUSED_WRITE=$fused TQ_CUDA_FUSED_ROPE=$rope TQ_CUDA_FUSED_MERGE=$merge GGML_CUDA_DISABLE_GRAPHS=1 timeout $(( $(left) - 20 )) ncu --metrics gpu__time_duration.sum --csv ${TQ_NCU_ARGS:-} \
            $bin/llama-bench -m $m -ngl 99 -fa 1 -ctk $t -ctv $t -p 0 -n 1 -r 1 -d 0 --no-warmup > "$out/ncu-${spec/@/-}.csv" 2>> "$out/profile.log"
        say "ncu $spec rc=$?"
        csvs+=("$out/ncu-${spec/@/-}.csv")
    done
    python3 benchmarks/ncu_kernels.py "${csvs[@]}" >> "$sum" 2>&1
fi

# ---- 5b'. decode steps as a timeline (CUPTI, benchmarks/gpu/kernel_trace.c): per step the host's
# period, the graph's span on the GPU, the kernels' own time and the GPU's idle time inside and
# outside the span (benchmarks/gpu_timeline.py), per cache type and depth, with the CUDA graphs on
if want timeline && [ "$(left)" -gt 90 ]; then
    m=$m8b
    synthetic_8b "$out/timeline.log"
    cuda=$(dirname "$(dirname "$(command -v nvcc)")")
    inc=$(dirname "$(find "$cuda" /usr/local/cuda* -name cupti.h 2>/dev/null | head -1)")
    lib=$(dirname "$(find "$cuda" /usr/local/cuda* -name 'libcupti.so' 2>/dev/null | head -1)")
    cc -O2 -shared -fPIC -I"$cuda/include" -I"$inc" benchmarks/gpu/kernel_trace.c -L"$lib" -Wl,-rpath,"$lib" -lcupti \
        -o /tmp/libkernel_trace.so >> "$out/timeline.log" 2>&1
    say "kernel_trace rc=$? (cupti.h in $inc, libcupti in $lib)"
    for d in ${TQ_TIMELINE_DEPTHS:-0}; do
        traces=()
        for spec in ${TQ_TIMELINE_TYPES:-f16 tq3 q4_0}; do
            [ "$(left)" -gt 40 ] || { say "timeline: out of time before $spec @$d"; break; }
            t=${spec%@*}; tk=${t%/*}; tv=${t#*/}; pdl=1; [[ $spec == *@nopdl ]] && pdl=0
            TQ_CUDA_PDL=$pdl CUDA_INJECTION64_PATH=/tmp/libkernel_trace.so TQ_TRACE_OUT=/tmp/trace-${spec//\//-}-d$d.csv timeout $(( $(left) - 20 )) \
                $bin/llama-bench -m $m -ngl 99 -fa 1 -ctk $tk -ctv $tv -p 0 -n 64 -r 1 -d $d >> "$out/timeline.log" 2>&1
            say "timeline $spec @$d rc=$? $(grep -c . /tmp/trace-${spec//\//-}-d$d.csv 2>/dev/null) records"
            traces+=("$spec=/tmp/trace-${spec//\//-}-d$d.csv")
        done
        { echo "== timeline, depth $d"; python3 benchmarks/gpu_timeline.py --last 56 --top 25 "${traces[@]}"; } >> "$sum" 2>&1
    done
    tar -czf "$out/traces.tar.gz" -C /tmp $(cd /tmp && ls trace-*.csv) 2>/dev/null
fi

# ---- 6. compute-sanitizer on the tq kernels ----------------------------------------------------
if want sanitize && [ "$(left)" -gt 60 ]; then
    { echo "== memcheck tq_cuda_selftest 2048"
      timeout $(( $(left) / 3 )) compute-sanitizer --tool memcheck --error-exitcode 9 /tmp/tq-native/tq_cuda_selftest 2048; echo "rc=$?"
      echo "== memcheck test-backend-ops (tq3 SET_ROWS/CPY/GET_ROWS, tq3 vec decode)"
      timeout $(( $(left) / 2 )) compute-sanitizer --tool memcheck --error-exitcode 9 $tbo -b CUDA0 -o SET_ROWS,CPY,GET_ROWS,FLASH_ATTN_EXT \
          -p '(type_dst=tq3,|type_src=tq3,|type=tq3,|kv=512,nb=1,.*type_K=tq3,type_V=tq3)'; echo "rc=$?"
      echo "== memcheck + racecheck test-backend-ops (the fused write, tq3, tq3t (shared-memory trellis) and the query's chain)"
      timeout $(( $(left) / 3 )) compute-sanitizer --tool memcheck --error-exitcode 9 $tbo -b CUDA0 -o TQ_FUSED_WRITE -p 'type=(tq3|tq3t|f32),'; echo "rc=$?"
      timeout $(( $(left) / 3 )) compute-sanitizer --tool racecheck --error-exitcode 9 $tbo -b CUDA0 -o TQ_FUSED_WRITE -p 'type=(tq3|tq3t),'; echo "rc=$?"
      echo "== memcheck + racecheck test-backend-ops (one layer's attention: the chains side by side, the un-rotation)"
      timeout $(( $(left) / 3 )) compute-sanitizer --tool memcheck --error-exitcode 9 $tbo -b CUDA0 -o TQ_ATTN_LAYER; echo "rc=$?"
      timeout $(( $(left) / 3 )) compute-sanitizer --tool racecheck --error-exitcode 9 $tbo -b CUDA0 -o TQ_ATTN_LAYER -p 'type_k=tq3t?,'; echo "rc=$?"
      echo "== racecheck test-backend-ops (tq3 vec decode)"
      timeout $(( $(left) - 20 )) compute-sanitizer --tool racecheck --error-exitcode 9 $tbo -b CUDA0 -o FLASH_ATTN_EXT \
          -p 'hsk=128,.*kv=512,nb=1,.*type_K=tq3,type_V=tq3'; echo "rc=$?"
    } > "$out/sanitize.log" 2>&1
    say "sanitize: $(grep -E '^rc=|ERROR SUMMARY|RACECHECK SUMMARY' "$out/sanitize.log" | tr '\n' ' ')"
fi

if want selftest && [ "$(left)" -gt 30 ]; then
    echo "== tq_bench" >> "$out/native.log"
    timeout $(( $(left) - 10 )) /tmp/tq-native/tq_bench >> "$out/native.log" 2>&1
fi
say "done"
