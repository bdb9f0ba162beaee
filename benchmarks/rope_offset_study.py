#!/usr/bin/env python3
"""How much of the keys' offset one mean per cache removes after RoPE, against the same offset
removed before RoPE, over a short and a long window, and what that does to a tq cache's logit error.

Runs the model once on n tokens of Pride and Prejudice (f16 cache, CPU) and takes each layer's
post-RoPE Q and K from llama.cpp's eval callback (kv_layer_study.capture), then undoes RoPE to get
the keys before it. Per layer and window (the first W positions):
  post: the keys minus their mean over the window, the best one vector after RoPE (what a tq
        cache's centring approximates: one vector, which attention takes back as a constant per query)
  pre:  the keys minus R(pos) m0, m0 their mean before RoPE (one vector before RoPE; attention would
        have to add q . R(pos) m0 back per key, which is not built)
and reports the energy left in each, and the mean squared logit error q . (k^ - k) of the last 128
queries over every key when the centred keys are Hadamard-rotated and coded with the tq codec.

    python benchmarks/rope_offset_study.py [--model smollm2] [--n 4096] [--window 512] [--type tq3t] [--pairs 0,1,4,all]

--pairs r,...: also hybrid offsets, how few RoPE pairs (the 2 dims RoPE rotates together) need the
rotating one: per layer, KV head and window, R(pos) m0 on the r pairs where it removes the most energy
beyond the mean after RoPE (ranked on the window itself), the mean after RoPE on the others. Attention
would add back q . R(pos) m0 over those r pairs only (2r multiply-adds per key, and r angles per key).
r = 0 is post and all is pre; prints the totals over layers per r and the pairs picked most often in the
top 4, with their angle per position base^(-2i/d).

Models with one RoPE base and llama's adjacent pairs (SmolLM2) or NEOX halves (Qwen2.5).
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import gguf
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import kv_layer_study  # noqa: E402  (its capture() and hadamard())

from tq_llamacpp import native  # noqa: E402
from tq_llamacpp.data import model_path  # noqa: E402

NEOX = {"qwen2"}        # llama.cpp's LLAMA_ROPE_TYPE_NEOX: dims i and i + d/2 are a pair
NORM = {"llama"}        # LLAMA_ROPE_TYPE_NORM: dims 2i and 2i + 1


def rope_of(model: str) -> tuple[float, bool]:
    r = gguf.GGUFReader(str(model_path(model)))

    def field(key: str):
        f = r.fields[key]
        return f.parts[f.data[0]]

    arch = bytes(field("general.architecture")).decode()
    if arch not in NEOX | NORM:
        raise SystemExit(f"rope_offset_study: {arch} (several RoPE bases or an unknown pairing) is not handled")
    return float(field(f"{arch}.rope.freq_base")[0]), arch in NEOX


def rotate(x: np.ndarray, ang: np.ndarray, neox: bool, sign: float) -> np.ndarray:
    """RoPE (sign +1) or its inverse (-1) of x [n, heads, d] at angles ang [n, d/2]."""
    h = x.shape[-1] // 2
    a, b = (x[..., :h], x[..., h:]) if neox else (x[..., 0::2], x[..., 1::2])
    c, s = np.cos(ang)[:, None, :], sign * np.sin(ang)[:, None, :]
    out = np.empty_like(x)
    if neox:
        out[..., :h], out[..., h:] = a * c - b * s, a * s + b * c
    else:
        out[..., 0::2], out[..., 1::2] = a * c - b * s, a * s + b * c
    return out


def errors(K: np.ndarray, Q: np.ndarray, off: np.ndarray, H: np.ndarray, typ: str) -> tuple[float, float]:
    """Energy left in keys K [w, heads, d] minus off, and the logit MSE of queries Q over every key when the
    centred keys are Hadamard-rotated, coded with typ and the offset added back."""
    nh, d = K.shape[1:]
    g = Q.shape[1] // nh
    kc = K - off
    e = float(np.mean(np.sum(kc[1:] ** 2, -1)))
    y = np.ascontiguousarray((kc @ H.T).reshape(-1, d), np.float32)
    kh = (native.dequantize(native.quantize(y, typ), typ).reshape(kc.shape) @ H) + off
    return e, float(np.mean([np.mean(np.einsum("igd,jd->igj", Q[:, h * g:(h + 1) * g], (kh - K)[:, h]) ** 2)
                             for h in range(nh)]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--n", type=int, default=4096, help="tokens run (the long window)")
    ap.add_argument("--window", type=int, default=512, help="the short window")
    ap.add_argument("--type", default="tq3t")
    ap.add_argument("--pairs", help="comma list of r, RoPE pairs per KV head given the rotating offset (0 = post, all = pre)")
    a = ap.parse_args()
    rs = a.pairs.split(",") if a.pairs else []
    base, neox = rope_of(a.model)
    z = kv_layer_study.capture(a.model, n=a.n)
    layers = sorted(int(k.split("-")[1]) for k in z if k.startswith("Kcur"))
    wins = (a.window, a.n)
    energy = {(w, m): 0.0 for w in wins for m in ("post", "pre")}
    logit = dict(energy)
    hyb = {(w, r): np.zeros(2) for w in wins for r in rs}  # energy, logit MSE summed over layers
    top = {w: Counter() for w in wins}  # pair indices in each KV head's top 4
    rows = []
    for il in layers:
        K, Q = z[f"Kcur-{il}"], z[f"Qcur-{il}"]
        n, nh, d = K.shape
        pair = np.arange(d) % (d // 2) if neox else np.arange(d) // 2  # the RoPE pair of each dim
        H = kv_layer_study.hadamard(d)
        ang = np.arange(n)[:, None] * (base ** (-np.arange(0, d, 2) / d))[None, :]
        pre = rotate(K, ang, neox, -1.0)
        share = 1.0 - float(np.mean(np.sum((pre[1:] - pre[1:].mean(0)) ** 2, -1)) / np.mean(np.sum(pre[1:] ** 2, -1)))
        row = [il]
        for w in wins:
            e, lg, off = {}, {}, {}
            for mode in ("post", "pre"):
                if mode == "post":
                    off[mode] = np.broadcast_to(K[1:w].mean(0), K[:w].shape)
                else:  # position 0 (BOS) left out of both means, as the cache's statistics leave it
                    off[mode] = rotate(np.broadcast_to(pre[1:w].mean(0), K[:w].shape).copy(), ang[:w], neox, 1.0)
                e[mode], lg[mode] = errors(K[:w], Q[w - 128:w], off[mode], H, a.type)
                energy[(w, mode)] += e[mode]
                logit[(w, mode)] += lg[mode]
            if rs:  # rank each KV head's pairs by the energy the rotating offset removes beyond the mean after RoPE
                gain = np.mean((K[1:w] - off["post"][1:]) ** 2 - (K[1:w] - off["pre"][1:]) ** 2, 0)  # [nh, d]
                rank = np.argsort(-np.stack([gain[:, pair == i].sum(-1) for i in range(d // 2)], -1), -1)
                top[w].update(rank[:, :4].ravel().tolist())
                for r in rs:
                    on = np.zeros((nh, d // 2), bool)
                    np.put_along_axis(on, rank[:, :d // 2 if r == "all" else int(r)], True, -1)
                    hyb[(w, r)] += errors(K[:w], Q[w - 128:w], np.where(on[:, pair], off["pre"], off["post"]), H, a.type)
            row += [e["post"] / e["pre"], lg["pre"] / lg["post"]]
        rows.append(row + [share])
    print(f"{a.model}, {a.type}, RoPE base {base:g} ({'NEOX' if neox else 'adjacent'} pairs), windows {a.window} and {a.n} "
          f"positions of Pride and Prejudice; the best single mean after RoPE (post) against one before it (pre)\n")
    print(f"| layer | offset's share of the energy before RoPE @{a.n} | energy left, post / pre @{a.window} | @{a.n} "
          f"| logit MSE, pre / post @{a.window} | @{a.n} |")
    print("|---|---|---|---|---|---|")
    for il, e1, l1, e2, l2, sh in rows:
        print(f"| {il} | {sh:.2f} | {e1:.2f} | {e2:.2f} | {l1:.2f} | {l2:.2f} |")
    print(f"| all | | {energy[(wins[0], 'post')] / energy[(wins[0], 'pre')]:.2f} | {energy[(wins[1], 'post')] / energy[(wins[1], 'pre')]:.2f} "
          f"| {logit[(wins[0], 'pre')] / logit[(wins[0], 'post')]:.3f} | {logit[(wins[1], 'pre')] / logit[(wins[1], 'post')]:.3f} |")
    print(f"\nFrom {a.window} to {a.n} positions the logit MSE grows {logit[(wins[1], 'post')] / logit[(wins[0], 'post')]:.3f}x "
          f"with the mean after RoPE and {logit[(wins[1], 'pre')] / logit[(wins[0], 'pre')]:.3f}x with the mean before it.")
    if not rs:
        return
    print("\nHybrid offsets: the rotating (pre) offset on each KV head's r best RoPE pairs, the mean after RoPE on the rest\n")
    print(f"| pairs r | energy left / pre @{a.window} | @{a.n} | logit MSE / post @{a.window} | @{a.n} |")
    print("|---|---|---|---|---|")
    for r in rs:
        print(f"| {r} | {hyb[(wins[0], r)][0] / energy[(wins[0], 'pre')]:.2f} | {hyb[(wins[1], r)][0] / energy[(wins[1], 'pre')]:.2f} "
              f"| {hyb[(wins[0], r)][1] / logit[(wins[0], 'post')]:.3f} | {hyb[(wins[1], r)][1] / logit[(wins[1], 'post')]:.3f} |")
    nh, hd = z[f"Kcur-{layers[0]}"].shape[1:]
    print(f"\nThe 8 pairs most often in a KV head's top 4 per window ({len(layers)} layers x {nh} heads; "
          f"pair i turns base^(-2i/d) radians per position)\n")
    print(f"| pair i | radians per position | period (positions) | top 4 @{a.window} | @{a.n} |")
    print("|---|---|---|---|---|")
    for i in sorted({i for w in wins for i, _ in top[w].most_common(8)}):  # each window's 8 most frequent
        th = base ** (-2 * i / hd)
        print(f"| {i} | {th:.3g} | {2 * np.pi / th:.0f} | {top[wins[0]][i]} | {top[wins[1]][i]} |")


if __name__ == "__main__":
    main()
