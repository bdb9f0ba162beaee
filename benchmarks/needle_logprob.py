#!/usr/bin/env python3
"""How sure the model is of the pass key: the log-probability of the answer " KEY" after the
passkey prompts of `tq-llama needle` (teacher-forced, one token at a time), per cache type. A
continuous companion to the found/missed count: f16 gives about -0.15 at 8K, and a cache that
loses the key shows it as a few nats lost, mostly on the first answer token (a space that starts
the number, against " the").

    python benchmarks/needle_logprob.py --types f16,tq4,tq3 [--model smollm2] [--ctx 8192]
        [--depth 0.1] [--trials 2] [--seed 1]

Prompts are `tq-llama needle`'s (same seed, depth and trial give the same key). About 60 s per
8K prompt on this 2-core machine.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from tq_llamacpp import needle as nd
from tq_llamacpp.cache_types import pair_name
from tq_llamacpp.llama import parse_spec
from tq_llamacpp.data import model_path
from tq_llamacpp.llama import Llama, llama_cpp


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--types", default="f16,tq4,tq3")
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--ctx", type=int, default=None)
    ap.add_argument("--depth", type=float, default=0.1)
    ap.add_argument("--trials", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    mp = model_path(a.model)
    n_ctx = a.ctx or nd.context_limit(mp)
    with nd.Vocab(mp) as vocab:
        filler = nd.Filler(list(nd.NEUTRAL_FILLER), vocab.tokenize)
        keys = nd.passkeys(a.seed, [a.depth], a.trials)
        prompts = [nd.build_prompt(vocab.tokenize, filler, n_ctx, a.depth, keys[(a.depth, t)]) for t in range(a.trials)]
        answers = [vocab.tokenize(" " + p.passkey, False) for p in prompts]
    print(f"{mp.name}, ctx {n_ctx}, depth {a.depth:g}, seed {a.seed}: log p(answer) per key "
          "(first answer token's in brackets)\n")
    print("| cache K/V | " + " | ".join(p.passkey for p in prompts) + " | mean |\n|---|" + "---|" * (len(prompts) + 1))
    for spec in a.types.split(","):
        k, v, center = parse_spec(spec)
        llm = Llama(mp, type_k=k, type_v=v, n_ctx=n_ctx, n_batch=512, n_ubatch=512, flash_attn=True,
                    kv_center=center, verbose=False)
        prev: list[int] = []
        cells, total = [], []
        try:
            for p, ans in zip(prompts, answers):
                t0 = time.perf_counter()
                keep = nd._common_prefix(prev, p.tokens)  # as `tq-llama needle` reuses the cache
                llm.n_tokens = keep
                llm.eval(p.tokens[keep:])
                lps = []
                for tok in ans:
                    lg = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),))
                    lg = lg.astype(np.float64) - lg.max()
                    lps.append(float(lg[tok] - np.log(np.exp(lg).sum())))
                    llm.eval([tok])
                prev = p.tokens + ans
                total.append(sum(lps))
                cells.append(f"{sum(lps):.2f} ({lps[0]:.2f})")
                print(f"  {spec} {p.passkey}: {' '.join(f'{x:.2f}' for x in lps)} ({time.perf_counter() - t0:.0f} s)",
                      flush=True)
        finally:
            llm.close()
        print(f"| {pair_name(k, v)}{'@' + center if center else ''} | " + " | ".join(cells) + f" | {np.mean(total):.2f} |",
              flush=True)


if __name__ == "__main__":
    main()
