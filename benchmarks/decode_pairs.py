"""CPU decode time per token of several caches, paired token by token in one process: one context per
cache, and every token goes through each context in turn before the next token, so that the VM's
drift (15 % between llama-bench runs on the 2-core machine) falls on all of them alike. Prints and
writes the median over the tokens of each cache's speed relative to the first cache, per range of
positions. A cache may carry KV-cache options, `tq3:rope=post` (each `:key=value` one of the
package's kv_options, set for its context as the Llama wrapper sets them), and `:rot=off` turns
llama.cpp's Hadamard rotation off (LLAMA_ATTN_ROT_DISABLE=1: a timing probe, not a usable tq cache).
    python benchmarks/decode_pairs.py [--model smollm2] [--types f16,tq3,tq3:rope=post] [--tokens 256]
        [--ranges 1-64,64-256] [--threads 2] [--out FILE]
    python benchmarks/decode_pairs.py --prompt 512 [--depth 4096] [--rounds 20] ...
With --prompt, prompts of that many tokens instead, each into the cache emptied down to --depth
tokens (filled once per context beforehand; default 0: an empty cache).
"""
from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_quality import machine  # noqa: E402

from tq_llamacpp._libs import import_llama_cpp  # noqa: E402
from tq_llamacpp.data import model_path  # noqa: E402
from tq_llamacpp.llama import cache_type, kv_options_string, thread_kv_options  # noqa: E402


def options_of(spec: str) -> tuple[str, bool]:
    """the spec's KV-cache options as the package's option string, and whether rot=off is among them"""
    opts = [o for o in spec.split(":")[1:] if o != "rot=off"]
    if any(o.startswith("rot=") for o in opts):
        raise SystemExit(f"decode_pairs: rot=off is the one rot option: {spec}")
    return kv_options_string(None, ",".join(opts)), len(opts) < len(spec.split(":")) - 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--types", default="f16,tq3,tq3:rope=post")
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--ranges", default="1-64,64-256")
    ap.add_argument("--prompt", type=int, default=0, help="time prompts of this many tokens instead")
    ap.add_argument("--rounds", type=int, default=20, help="prompts per cache (with --prompt)")
    ap.add_argument("--depth", type=int, default=0, help="tokens in the cache before each prompt (with --prompt)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="the table's file (default results/decode-pairs-<model>.md)")
    a = ap.parse_args()
    ranges = [tuple(int(x) for x in r.split("-")) for r in a.ranges.split(",")]
    if a.prompt:
        a.tokens, ranges = a.rounds, [(0, a.rounds)]
    if a.depth and not a.prompt:
        raise SystemExit("decode_pairs: --depth goes with --prompt")
    if any(lo < 0 or hi > a.tokens or lo >= hi for lo, hi in ranges):
        raise SystemExit(f"decode_pairs: each range must lie in 0-{a.tokens}: {a.ranges}")
    L = import_llama_cpp()
    L.llama_backend_init()
    path = model_path(a.model) if not a.model.endswith(".gguf") else Path(a.model)
    model = L.llama_model_load_from_file(str(path).encode(), L.llama_model_default_params())
    if not model:
        raise SystemExit(f"decode_pairs: llama.cpp could not load {path}")
    specs = a.types.split(",")
    ctxs = []
    for spec in specs:
        options, rot_off = options_of(spec)
        saved = os.environ.get("LLAMA_ATTN_ROT_DISABLE")
        if rot_off:
            os.environ["LLAMA_ATTN_ROT_DISABLE"] = "1"
        cp = L.llama_context_default_params()
        cp.n_ctx = max(1024, a.depth + a.prompt + 64) if a.prompt else max(1024, a.tokens + 64)
        cp.n_batch = cp.n_ubatch = max(cp.n_batch, a.prompt)
        cp.n_threads = cp.n_threads_batch = a.threads
        cp.type_k = cp.type_v = cache_type(spec.split(":")[0]).ggml_id
        cp.flash_attn_type = L.LLAMA_FLASH_ATTN_TYPE_ENABLED
        with thread_kv_options(options):
            ctx = L.llama_init_from_model(model, cp)
        if rot_off:
            if saved is None:
                os.environ.pop("LLAMA_ATTN_ROT_DISABLE")
            else:
                os.environ["LLAMA_ATTN_ROT_DISABLE"] = saved
        if not ctx:
            raise SystemExit(f"decode_pairs: no context for {spec}")
        ctxs.append(ctx)
    n = max(a.prompt, 1)
    batch = L.llama_batch_init(n, 0, 1)

    def fill(first: int, count: int) -> None:
        batch.n_tokens = count
        for j in range(count):
            pos = first + j
            batch.token[j], batch.pos[j], batch.n_seq_id[j] = 100 + (pos * 37) % 5000, pos, 1
            batch.seq_id[j][0] = 0
            batch.logits[j] = j == count - 1

    # --depth: the tokens every prompt sees before it, decoded once per context, in prompt-sized batches
    for i, ctx in enumerate(ctxs):
        for first in range(0, a.depth, n):
            fill(first, min(n, a.depth - first))
            if L.llama_decode(ctx, batch) != 0:
                raise SystemExit(f"decode_pairs: llama_decode failed for {specs[i]} filling the cache at {first}")
    secs = [[] for _ in specs]
    for step in range(a.tokens):
        # decode: position `step`, one token; prefill: positions depth..depth+n-1 of a cache emptied to depth
        fill(a.depth if a.prompt else step, n)
        for i, ctx in enumerate(ctxs):
            if a.prompt:
                mem = L.llama_get_memory(ctx)
                if a.depth:
                    L.llama_memory_seq_rm(mem, 0, a.depth, -1)
                else:
                    L.llama_memory_clear(mem, True)
            t0 = time.perf_counter()
            if L.llama_decode(ctx, batch) != 0:
                raise SystemExit(f"decode_pairs: llama_decode failed for {specs[i]} at step {step}")
            secs[i].append(time.perf_counter() - t0)
    what = (f"--prompt {a.prompt}{f' --depth {a.depth}' if a.depth else ''} --rounds {a.rounds}" if a.prompt
            else f"--tokens {a.tokens} --ranges {a.ranges}")
    unit = "prompt" if a.prompt else "token"
    lines = [f"`python benchmarks/decode_pairs.py --model {a.model} --types {a.types} {what} --threads {a.threads}"
             f"{' --out ' + a.out if a.out else ''}` ({path.name}, flash attention, {a.threads} threads; "
             f"{datetime.date.today()}, {machine()}): the median over the {unit}s of each "
             f"cache's speed relative to {specs[0]} (its time for the {unit} over the other's), and "
             f"{specs[0]}'s median ms per {unit}", "",
             "| cache | " + " | ".join((f"prompt of {a.prompt} tokens" + (f" at depth {a.depth}" if a.depth else ""))
                                       if a.prompt else f"positions {lo}-{hi}"
                                       for lo, hi in ranges) + " |",
             "|---|" + "---|" * len(ranges)]
    lines.append(f"| {specs[0]} | " + " | ".join(f"{statistics.median(secs[0][lo:hi]) * 1e3:.2f} ms" for lo, hi in ranges) + " |")
    for i, spec in enumerate(specs[1:], 1):
        cells = [f"{statistics.median([r / t for r, t in zip(secs[0][lo:hi], secs[i][lo:hi])]):.3f}x" for lo, hi in ranges]
        lines.append(f"| {spec} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    name = (f"prefill-pairs-{path.stem}" + (f"-d{a.depth}" if a.depth else "")) if a.prompt else f"decode-pairs-{path.stem}"
    out = Path(a.out) if a.out else Path(__file__).parent / "results" / f"{name}.md"
    out.write_text(text)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
