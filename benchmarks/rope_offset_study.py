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

    python benchmarks/rope_offset_study.py [--model smollm2] [--n 4096] [--window 512] [--type tq3t]

Models with one RoPE base and llama's adjacent pairs (SmolLM2) or NEOX halves (Qwen2.5).
"""
from __future__ import annotations

import argparse
import sys
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--n", type=int, default=4096, help="tokens run (the long window)")
    ap.add_argument("--window", type=int, default=512, help="the short window")
    ap.add_argument("--type", default="tq3t")
    a = ap.parse_args()
    base, neox = rope_of(a.model)
    z = kv_layer_study.capture(a.model, n=a.n)
    layers = sorted(int(k.split("-")[1]) for k in z if k.startswith("Kcur"))
    wins = (a.window, a.n)
    energy = {(w, m): 0.0 for w in wins for m in ("post", "pre")}
    logit = dict(energy)
    rows = []
    for il in layers:
        K, Q = z[f"Kcur-{il}"], z[f"Qcur-{il}"]
        n, nh, d = K.shape
        g = Q.shape[1] // nh
        H = kv_layer_study.hadamard(d)
        ang = np.arange(n)[:, None] * (base ** (-np.arange(0, d, 2) / d))[None, :]
        pre = rotate(K, ang, neox, -1.0)
        share = 1.0 - float(np.mean(np.sum((pre[1:] - pre[1:].mean(0)) ** 2, -1)) / np.mean(np.sum(pre[1:] ** 2, -1)))
        row = [il]
        for w in wins:
            e, lg = {}, {}
            for mode in ("post", "pre"):
                if mode == "post":
                    off = np.broadcast_to(K[1:w].mean(0), K[:w].shape)
                else:  # position 0 (BOS) left out of both means, as the cache's statistics leave it
                    off = rotate(np.broadcast_to(pre[1:w].mean(0), K[:w].shape).copy(), ang[:w], neox, 1.0)
                kc = K[:w] - off
                e[mode] = float(np.mean(np.sum(kc[1:] ** 2, -1)))
                y = np.ascontiguousarray((kc @ H.T).reshape(-1, d), np.float32)
                kh = (native.dequantize(native.quantize(y, a.type), a.type).reshape(kc.shape) @ H) + off
                q = Q[w - 128:w]
                lg[mode] = float(np.mean([np.mean(np.einsum("igd,jd->igj", q[:, h * g:(h + 1) * g], (kh - K[:w])[:, h]) ** 2)
                                          for h in range(nh)]))
                energy[(w, mode)] += e[mode]
                logit[(w, mode)] += lg[mode]
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


if __name__ == "__main__":
    main()
