#!/usr/bin/env python3
"""The CPU attention loop alone (tq_ggml_attn_f32, native/src/tq_attn.h): one decode step's KV head,
G query rows over N keys of tq K/V codes, with and without the per-key term of keys centred before
RoPE; best of --reps calls, microseconds. To compare two builds, run it with each build's package,
alternating (the loop is in the package's _native module, the same code llama.cpp's CPU backend calls).

    python benchmarks/bench_attn_loop.py [--types tq3/tq3,tq3t/tq3] [--dims 64,128] [--keys 4096]
        [--rows 3] [--reps 200] [--isa avx2]
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from tq_llamacpp import native
from tq_llamacpp._native import ffi, lib

F = np.float32


def loop_us(k_type: str, v_type: str, d: int, n_kv: int, nr: int, term: bool, reps: int, isa: str) -> float:
    rng = np.random.default_rng(0)
    q = rng.standard_normal((nr, d)).astype(F)
    kc = native.quantize(rng.standard_normal((n_kv, d)).astype(F), k_type)
    vc = native.quantize(rng.standard_normal((n_kv, d)).astype(F), v_type)
    mask = np.zeros((nr, n_kv), np.float16).view(np.uint16)
    qb = rng.standard_normal((nr, d)).astype(F)
    kb = rng.standard_normal((n_kv, d)).astype(F)
    M, S, acc = np.empty(nr, F), np.empty(nr, F), np.empty((nr, d), F)
    a = ffi.new("tq_attn_args *")
    a.k_type, a.v_type = native.type_info(k_type).id, native.type_info(v_type).id
    a.dk = a.dv = d
    a.n_rows = nr
    for r in range(nr):
        a.q[r] = ffi.cast("const float *", q[r].ctypes.data)
        a.mask[r] = ffi.cast("const uint16_t *", mask[r].ctypes.data)
        a.slope[r] = 1.0
        a.qb[r] = ffi.cast("const float *", qb[r].ctypes.data)
    a.k, a.v = ffi.cast("void *", kc.ctypes.data), ffi.cast("void *", vc.ctypes.data)
    a.k_stride, a.v_stride = kc.strides[0], vc.strides[0]
    a.n_kv, a.scale = n_kv, d ** -0.5
    a.M, a.S = ffi.cast("float *", M.ctypes.data), ffi.cast("float *", S.ctypes.data)
    a.acc = ffi.cast("float *", acc.ctypes.data)
    if term:
        a.kb, a.kb_stride, a.nb = ffi.cast("const float *", kb.ctypes.data), kb.strides[0], d
    best = float("inf")
    with native.force_isa(isa):
        for _ in range(reps):
            M[:], S[:], acc[:] = -np.inf, 0, 0
            t = time.perf_counter()
            assert lib.tq_ggml_attn_f32(a) == lib.TQ_OK
            best = min(best, time.perf_counter() - t)
    return best * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--types", default="tq3/tq3,tq3t/tq3")
    ap.add_argument("--dims", default="64,128")
    ap.add_argument("--keys", type=int, default=4096)
    ap.add_argument("--rows", type=int, default=3)
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--isa", default=None, help="default: the ISA this CPU runs best")
    a = ap.parse_args()
    isa = a.isa or native.isa_active()
    print(f"isa {isa}, {a.rows} rows x {a.keys} keys, best of {a.reps}, microseconds")
    for kv in a.types.split(","):
        k, v = kv.split("/")
        for d in (int(x) for x in a.dims.split(",")):
            plain = loop_us(k, v, d, a.keys, a.rows, False, a.reps, isa)
            term = loop_us(k, v, d, a.keys, a.rows, True, a.reps, isa)
            print(f"{kv} d={d}: {plain:.0f} us, with the term {term:.0f} us (+{100 * (term / plain - 1):.0f} %)", flush=True)


if __name__ == "__main__":
    main()
