#!/usr/bin/env python3
"""Where bits matter: end-to-end KLD (against an f16 cache) of a tq3 cache with ONE layer's K or V
moved to another tq type (the KV option `layers`, here through LLAMA_KV_LAYERS), for every layer.
The change against all-tq3 is that layer's marginal gain (tq4) or cost (tq2) of a bit; a greedy
pairing of the largest gains with the smallest costs then gives allocations at tq3's 3.25 bits,
measured end to end. Writes benchmarks/results/layer-bits-<model>.{md,json}.

    python benchmarks/layer_bits_study.py [--model smollm2] [--moves k:tq4,v:tq2] [--chunks 5]
        [--layers 0,5,10] [--pairs 2,4,8]

--layers restricts the single-layer runs to those layers (a screen at few chunks, then the
candidates it finds at more). --configs "k10:tq4;v6:tq2,..." measures just those settings (and
the base everywhere), e.g. at another context size.

--base tq2 --moves k:tq3,k:tq4,v:tq3 --budgets 2.5 starts from another type and, instead of the
pairs, spends a budget of bits per value (every K and V tensor counted, scales included): the
moves with the largest measured gain per added bit first, at most one per layer and side.
"""
from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path

from tq_llamacpp import compare as cmp
from tq_llamacpp.cache_types import cache_type
from tq_llamacpp._libs import tool
from tq_llamacpp.data import model_path, text_path
from tq_llamacpp.gguf_meta import read_metadata


def kld(model: Path, text: Path, ctx: int, chunks: int, layers: str, k: str = "tq3", v: str = "tq3") -> float:
    exe = str(tool("llama-perplexity"))
    base = cmp._base_file(model, text, ctx, chunks, Path(exe))
    common = [exe, "-m", str(model), "-f", str(text), "-c", str(ctx), "--chunks", str(chunks),
              "-t", str(os.cpu_count() or 1), "-fa", "on"]
    if not base.exists():
        tmp = base.with_suffix(".tmp")
        cmp._run(common + ["-ctk", "f16", "-ctv", "f16", "--kl-divergence-base", str(tmp)], "f16", chunks, False)
        tmp.replace(base)
    env = dict(os.environ, LLAMA_KV_LAYERS=layers)
    out = cmp._run(common + ["-ctk", k, "-ctv", v, "--kl-divergence-base", str(base), "--kl-divergence"],
                   layers or "tq3", chunks, False, env)
    return cmp.parse_output(out)["kld_mean"]


def spec(side_layers: dict[str, dict[int, str]]) -> str:
    parts = []
    for side in ("k", "v"):
        by_type: dict[str, list[int]] = {}
        for il, t in sorted(side_layers.get(side, {}).items()):
            by_type.setdefault(t, []).append(il)
        parts += [f"{side}{'+'.join(map(str, ls))}:{t}" for t, ls in by_type.items()]
    return ";".join(parts)


def delta_table(delta: dict, layers: list[int]) -> list[str]:
    """The single moves' changes as Markdown rows, a column per move."""
    rows = ["| layer | " + " | ".join(delta) + " |", "|---|" + "---|" * len(delta)]
    return rows + [f"| {i} | " + " | ".join(f"{d.get(i, d.get(str(i))):+.5f}" for d in delta.values()) + " |"
                   for i in layers]


def write_md(path: Path, model: str, ctx: int, chunks: int, command: str, base_type: str, base: float,
             delta: dict, rows: list) -> None:
    layers = sorted({int(i) for d in delta.values() for i in d})
    md = [f"# One layer's bits at a time, {model} ({base_type} cache, ctx {ctx}, {chunks} chunks of Pride and Prejudice)",
          "", f"`{command}`: KLD against f16 of {base_type} everywhere = {base:.5f}; the change when one layer "
          "moves (layer: K or V of that layer alone in the named type):", "",
          *delta_table(delta, layers)]
    (us, ut), (ds, dt) = (mv.split(":") for mv in list(delta)[:2])
    md += ["", f"Greedy pairs (the layers whose {us.upper()} gains most with {ut}, the layers whose {ds.upper()} "
           f"loses least with {dt}; {base_type}'s bits per value on average):", "",
           "| pairs moved | layers | sum of the single moves | measured |", "|---|---|---|---|"]
    md += [f"| {r['pairs']} | `{r['layers']}` | {r['predicted']:.5f} | {r['measured']:.5f} |" for r in rows]
    path.write_text("\n".join(md) + "\n")


def budget_rows(a, model: Path, text: Path, base: float, layers: list[int], n_layer: int, delta: dict) -> None:
    """Spend each budget (average bits per value over the 2 * n_layer tensors) on the moves with
    the largest measured gain per added bit, one move per layer and side."""
    b0 = cache_type(a.base).bits_per_value
    cand = sorted(((delta[mv][il] / (cache_type(mv.split(":")[1]).bits_per_value - b0), mv, il)
                   for mv in delta for il in layers if delta[mv][il] < 0))
    rows = []
    for budget in (float(x) for x in a.budgets.split(",")):
        bits, moved, pred = 2 * n_layer * b0, {}, base
        for _, mv, il in cand:
            side, t = mv.split(":")
            extra = cache_type(t).bits_per_value - b0
            if il in moved.get(side, {}) or (bits + extra) / (2 * n_layer) > budget + 1e-9:
                continue
            moved.setdefault(side, {})[il] = t
            bits += extra
            pred += delta[mv][il]
        setting = spec(moved)
        rows.append({"budget": budget, "bits": bits / (2 * n_layer), "layers": setting, "predicted": pred,
                     "measured": kld(model, text, a.ctx, a.chunks, setting, a.base, a.base)})
        print(rows[-1], flush=True)
    out = Path(__file__).parent / "results" / f"layer-bits-{a.model}-{a.base}-c{a.ctx}-{a.chunks}ch"
    out.with_suffix(".json").write_text(json.dumps({"base_type": a.base, "base": base, "delta": delta, "rows": rows,
                                                    "ctx": a.ctx, "chunks": a.chunks}, indent=1))
    command = (f"python benchmarks/layer_bits_study.py --model {a.model} --base {a.base} --moves {a.moves} "
               f"--chunks {a.chunks} --budgets {a.budgets}")
    md = [f"# Bits per layer from a {a.base} cache, {a.model} (ctx {a.ctx}, {a.chunks} chunks of Pride and Prejudice)",
          "", f"`{command}`: KLD against f16 of {a.base} everywhere = {base:.5f}; the change when one layer's K "
          "or V alone moves to the named type:", "", *delta_table(delta, layers)]
    md += ["", "The largest gains per added bit within each budget (bits per value over every K and V tensor, "
           "scales included):", "", "| budget | bits | layers | sum of the single moves | measured |",
           "|---|---|---|---|---|"]
    md += [f"| {r['budget']} | {r['bits']:.3f} | `{r['layers']}` | {r['predicted']:.5f} | {r['measured']:.5f} |"
           for r in rows]
    out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print(f"wrote {out}.md")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--moves", default="k:tq4,v:tq2")
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--chunks", type=int, default=5)
    ap.add_argument("--pairs", default="2,4,8")
    ap.add_argument("--layers", default=None)
    ap.add_argument("--configs", default=None)
    ap.add_argument("--base", default="tq3")
    ap.add_argument("--budgets", default=None)
    a = ap.parse_args()
    model, text = model_path(a.model), text_path("pride-and-prejudice")
    b = a.base
    if a.configs:
        print(f"`python benchmarks/layer_bits_study.py --model {a.model} --ctx {a.ctx} --chunks {a.chunks} "
              f"--base {b} --configs {a.configs}`\n\n| setting ({b} cache) | KLD |\n|---|---|")
        for c in [""] + a.configs.split(","):
            print(f"| {c or b + ' everywhere'} | {kld(model, text, a.ctx, a.chunks, c, b, b):.5f} |", flush=True)
        return
    n_layer = next(v for k, v in read_metadata(model).items() if k.endswith(".block_count"))
    layers = [int(x) for x in a.layers.split(",")] if a.layers else list(range(n_layer))
    base = kld(model, text, a.ctx, a.chunks, "", b, b)
    print(f"all {b}: {base:.5f}", flush=True)
    delta: dict[str, list[float]] = {}
    for mv in a.moves.split(","):
        side, t = mv.split(":")
        delta[mv] = {}
        for il in layers:
            d = kld(model, text, a.ctx, a.chunks, spec({side: {il: t}}), b, b) - base
            delta[mv][il] = d
            print(f"{mv} layer {il}: {d:+.5f}", flush=True)
    rows = []
    if a.budgets:
        budget_rows(a, model, text, base, layers, n_layer, delta)
        return
    # greedy: the n layers that gain most from tq4 K against the n that lose least with tq2 V
    up, down = (m for m in a.moves.split(","))
    order_up = sorted(layers, key=lambda i: delta[up][i])
    order_down = sorted(layers, key=lambda i: delta[down][i])
    for n in (int(x) for x in a.pairs.split(",")):
        s = {up.split(":")[0]: {i: up.split(":")[1] for i in order_up[:n]},
             down.split(":")[0]: {i: down.split(":")[1] for i in order_down[:n]}}
        moved = spec(s)
        predicted = base + sum(delta[up][i] for i in order_up[:n]) + sum(delta[down][i] for i in order_down[:n])
        rows.append({"pairs": n, "layers": moved, "predicted": predicted,
                     "measured": kld(model, text, a.ctx, a.chunks, moved, b, b)})
        print(rows[-1], flush=True)
    tag = "" if b == "tq3" else f"-{b}"
    out = Path(__file__).parent / "results" / f"layer-bits-{a.model}{tag}-c{a.ctx}-{a.chunks}ch"
    out.with_suffix(".json").write_text(json.dumps({"base": base, "delta": delta, "rows": rows, "ctx": a.ctx,
                                                    "chunks": a.chunks}, indent=1))
    command = (f"python benchmarks/layer_bits_study.py --model {a.model}" + (f" --base {b}" if tag else "")
               + f" --moves {a.moves} --chunks {a.chunks}" + (f" --layers {a.layers}" if a.layers else "")
               + f" --pairs {a.pairs}")
    write_md(out.with_suffix(".md"), a.model, a.ctx, a.chunks, command, b, base, delta, rows)
    print(f"wrote {out}.md")


if __name__ == "__main__":
    main()
