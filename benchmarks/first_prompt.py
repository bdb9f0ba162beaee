#!/usr/bin/env python3
"""Quality against how the first tokens arrive: the same tokens, only the split of the first eval
changes (`llm.eval(T[:k]); llm.eval(T[k:])`), mean KL of the next-token distributions against an f16
cache over the later positions, per cache type and source of the centring statistics (the model's
calibration, the default, or the first ubatch of each empty cache, `stats=first`). Prints a markdown
table; docs/results.md, First prompts, holds the runs.

    python benchmarks/first_prompt.py [--model smollm2] [--passages 6] [--tokens 400] [--from 100]
        [--splits all,64,16,4,1] [--types tq3,tq4] [--stats calib,first]
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from tq_llamacpp.data import AUSTEN, model_path, text_path
from tq_llamacpp.divergence import log_probs, mean_kl
from tq_llamacpp.llama import Llama


def passages(llm: Llama, n: int, tokens: int) -> list[list[int]]:
    """`tokens` tokens from the middle of each of the first `n` Austen novels (BOS as the model adds it)."""
    out = []
    for name in list(AUSTEN)[:n]:
        text = text_path(name).read_text(encoding="utf-8")
        mid = len(text) // 2
        chunk = text[mid:mid + 8 * tokens]
        chunk = chunk[chunk.index(". ") + 2:]  # start at a sentence
        out.append(llm.tokenize(chunk.encode())[:tokens])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--passages", type=int, default=6)
    ap.add_argument("--tokens", type=int, default=400)
    ap.add_argument("--from", dest="start", type=int, default=100, help="first position scored")
    ap.add_argument("--splits", default="all,64,16,4,1")
    ap.add_argument("--types", default="tq3,tq4")
    ap.add_argument("--stats", default="calib,first")
    ap.add_argument("--ctx", type=int, default=1024)
    a = ap.parse_args()
    mp = model_path(a.model)
    splits = [None if s == "all" else int(s) for s in a.splits.split(",")]
    kw = dict(n_ctx=a.ctx, n_batch=512, n_ubatch=512, logits_all=True, verbose=False, seed=0)

    ref = Llama(mp, type_k="f16", type_v="f16", flash_attn=True, **kw)
    texts = passages(ref, a.passages, a.tokens)
    base = [log_probs(ref, t, None) for t in texts]
    ref.close()

    def kld(llm: Llama, split: int | None) -> tuple[float, float]:
        # every passage has the same length: the mean of the means is the mean over all positions
        per = [mean_kl(p, log_probs(llm, t, split), a.start) for t, p in zip(texts, base)]
        return float(np.mean([k for k, _ in per])), float(np.mean([s for _, s in per]))

    rows = []
    t0 = time.time()
    for typ in a.types.split(","):
        for stats in a.stats.split(","):
            llm = Llama(mp, type_k=typ, type_v=typ, kv_options={"stats": stats}, **kw)
            rows.append((f"{typ}, statistics: {stats}", [kld(llm, s) for s in splits]))
            llm.close()
        llm = Llama(mp, type_k=typ, type_v=typ, kv_center="off", **kw)
        off = kld(llm, None)
        llm.close()
        rows.append((f"{typ}, uncentred", [off] * len(splits)))
    head = " | ".join("all tokens" if s is None else f"first eval {s}" for s in splits)
    print(f"{mp.name}: mean KL against f16 over positions {a.start}-{a.tokens - 1} of {len(texts)} passages of "
          f"{a.tokens} tokens (same top-1 %), by the size of the first eval; ctx {a.ctx}, {time.time() - t0:.0f} s\n")
    print(f"| cache | {head} |\n|---|" + "---|" * len(splits))
    for name, cells in rows:
        print(f"| {name} | " + " | ".join(f"{k:.4f} ({t:.1f})" for k, t in cells) + " |")


if __name__ == "__main__":
    main()
