#!/usr/bin/env python3
"""The CPU attention loop alone (native.Attention, i.e. tq_ggml_attn_f32 of native/src/tq_attn.h): one
decode step's KV head, G query rows over N keys of tq K/V codes, with and without the per-key term of
keys centred before RoPE; best of --reps calls, microseconds. To compare two builds, run it with each
build's package, alternating (the loop is in the package's _native module, the same code llama.cpp's
CPU backend calls).

    python benchmarks/bench_attn_loop.py [--types tq3/tq3,tq3t/tq3] [--dims 64,128] [--keys 4096]
        [--live N] [--rows 3] [--reps 200] [--isa avx2]

--live N masks every key from N on (-inf), as llama.cpp masks a cache's cells past the used ones
(it pads the keys it hands attention to 256).
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from tq_llamacpp import native

F = np.float32


def loop_us(k_type: str, v_type: str, d: int, n_kv: int, nr: int, term: bool, reps: int, isa: str,
            live: int | None = None) -> float:
    rng = np.random.default_rng(0)
    q = rng.standard_normal((nr, d)).astype(F)
    kc = native.quantize(rng.standard_normal((n_kv, d)).astype(F), k_type)
    vc = native.quantize(rng.standard_normal((n_kv, d)).astype(F), v_type)
    mask = np.zeros((nr, n_kv), np.float16)
    mask[:, n_kv if live is None else live:] = -np.inf
    qb = rng.standard_normal((nr, d)).astype(F) if term else None
    kb = rng.standard_normal((n_kv, d)).astype(F) if term else None
    call = native.Attention(q, kc, vc, k_type, v_type, mask=mask, query_term=qb, key_term=kb)
    best = float("inf")
    with native.force_isa(isa):
        for _ in range(reps):
            call.reset()
            t = time.perf_counter()
            call.run()
            best = min(best, time.perf_counter() - t)
    return best * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--types", default="tq3/tq3,tq3t/tq3")
    ap.add_argument("--dims", default="64,128")
    ap.add_argument("--keys", type=int, default=4096)
    ap.add_argument("--live", type=int, default=None, help="keys before the masked rest (default: all)")
    ap.add_argument("--rows", type=int, default=3)
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--isa", default=None, help="default: the ISA this CPU runs best")
    a = ap.parse_args()
    isa = a.isa or native.isa_active()
    live = "" if a.live is None else f" ({a.live} live)"
    print(f"isa {isa}, {a.rows} rows x {a.keys} keys{live}, best of {a.reps}, microseconds")
    for kv in a.types.split(","):
        k, v = kv.split("/")
        for d in (int(x) for x in a.dims.split(",")):
            plain = loop_us(k, v, d, a.keys, a.rows, False, a.reps, isa, a.live)
            term = loop_us(k, v, d, a.keys, a.rows, True, a.reps, isa, a.live)
            print(f"{kv} d={d}: {plain:.1f} us, with the term {term:.1f} us (+{100 * (term / plain - 1):.0f} %)", flush=True)


if __name__ == "__main__":
    main()
