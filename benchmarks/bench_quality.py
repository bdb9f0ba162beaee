#!/usr/bin/env python3
"""KV-cache quality on the three test models: KLD / same top-1 / PPL against an f16 cache, stock
types beside tq types, one `tq-llama compare` run per model (so every row of a table comes from the
same build, text and settings). Writes benchmarks/results/quality-<model>.{md,json,png}.

    python benchmarks/bench_quality.py [--models smollm2,gemma3-270m,qwen2.5-coder-0.5b]
        [--types ...] [--ctx 512] [--chunks 20]
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from tq_llamacpp import compare as cmp
from tq_llamacpp.data import model_path, text_path

TYPES = "q8_0,q4_0,q4_0@k,tq4,tq4@off,tq3,tq3@off,tq2,q8_0/tq3,tq4/tq3,tq4/tq2,tq3/tq2,tq3@kv"


def machine() -> str:
    """e.g. "2 cores of an AMD EPYC 9B14 (avx512)": the CPU and the instruction set the codec runs"""
    from tq_llamacpp import native

    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "a CPU")
    return f"{os.cpu_count()} cores of an {cpu} ({native.isa_active()})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="smollm2,gemma3-270m,qwen2.5-coder-0.5b")
    ap.add_argument("--types", default=TYPES)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--chunks", type=int, default=20)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    a = ap.parse_args()
    text = text_path("pride-and-prejudice")
    for name in a.models.split(","):
        model = model_path(name)
        res = cmp.compare(model, text, a.types.split(","), ctx=a.ctx, chunks=a.chunks, progress=True)
        title = f"{name}, Pride and Prejudice, ctx {a.ctx}, {a.chunks} chunks"
        how = (f"Measured {cmp.now_stamp()} on {machine()}, CPU build: "
               f"`python benchmarks/bench_quality.py --models {name} --ctx {a.ctx} --chunks {a.chunks}"
               + (f" --types {a.types}" if a.types != TYPES else "") + "` "
               "(llama-perplexity --kl-divergence against an f16 cache, -fa on, 2 threads; tokens/s is "
               "llama-perplexity's first pass).")
        for p in cmp.write_outputs(res, Path(a.out), {"title": title, "how": how, "model": name, "ctx": a.ctx,
                                                      "chunks": a.chunks}, stem=f"quality-{name}-c{a.ctx}"):
            print(f"wrote {p}")
        print(cmp.markdown(res, title))


if __name__ == "__main__":
    main()
