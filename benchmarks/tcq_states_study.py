#!/usr/bin/env python3
"""What a larger trellis or a smaller scale would buy the trellis-coded types (native/README.md,
"Trellis-coded types"), on random blocks of 64 values (what rotated data looks like).

States: the shipped trellis picks value j's subset as k_j = 2 * parity(u_j, u_j-1, u_j-2, u_j-3) + u_j-1
over the (b+1)-bit codebook (8 states). Here the window grows to m earlier branch bits (2^m states)
and the parity's taps are searched exhaustively; the decoder would stay a window of the branch
word, the encoder's Viterbi pass grows with the states. Relative MSE with the least-squares and
with the unbiased scale (what the cache stores), best taps per state count.

Scale: the shipped 8-state codes with their unbiased scale stored as fp16 (16 bits per 64 values,
0.25 bits per value) against the same scale rounded to an 8-bit logarithmic step of 2^(1/16).

    python benchmarks/tcq_states_study.py [--bits 2] [--blocks 500] [--states 3,4,5,6,7]

The shipped coder (tq_llamacpp.native, tq2t/tq3t) on the same blocks is printed first: the m = 3
row with taps 0xf must measure the same.
"""
from __future__ import annotations

import argparse

import numpy as np

from tq_llamacpp import native


def parity(x: np.ndarray) -> np.ndarray:
    p = np.zeros_like(x)
    while x.any():
        p ^= x & 1
        x = x >> 1
    return p


def trellis_codes(x: np.ndarray, inv: np.ndarray, alphabet: np.ndarray, m: int, taps: int) -> np.ndarray:
    """Viterbi over 2^m states; the code values (unscaled) of the best path per block of x * inv."""
    levels = np.stack([alphabet[k::4] for k in range(4)])     # subset k: levels a[k], a[k+4], ...
    e = (x[:, :, None, None] * inv[:, None, None, None] - levels[None, None]) ** 2
    lev, dist = e.argmin(-1), e.min(-1)                       # per value and subset
    n, states = len(x), np.arange(1 << m)
    # a state holds u_j-1 .. u_j-m (bit t-1 = u_j-t); the window adds u_j as bit 0 below them
    win = [states | (b << m) for b in (0, 1)]                 # the window into each state, by the bit it drops
    sub = [2 * parity(w & taps) + ((w >> 1) & 1) for w in win]
    cost = np.where(states == 0, 0.0, np.inf)[None].repeat(n, 0)
    back = np.zeros((x.shape[1], n, 1 << m), dtype=np.int64)
    for j in range(x.shape[1]):
        c0, c1 = (cost[:, w >> 1] + dist[:, j, s] for w, s in zip(win, sub))
        back[j] = c1 < c0
        cost = np.minimum(c0, c1)
    s, rows, c = cost.argmin(1), np.arange(n), np.zeros(x.shape)
    for j in range(x.shape[1] - 1, -1, -1):
        w = s | (back[j, rows, s] << m)
        k = 2 * parity(w & taps) + ((w >> 1) & 1)
        c[:, j] = alphabet[4 * lev[rows, j, k] + k]
        s = w >> 1
    return c


def code(x: np.ndarray, bits: int, m: int, taps: int):
    """The shipped search: at 0.875 x RMS, then again at the least-squares scale of that path."""
    a = native.codebook(bits + 1).astype(np.float64)
    c = trellis_codes(x, 1 / (0.875 * np.sqrt((x * x).mean(1))), a, m, taps)
    c = trellis_codes(x, (c * c).sum(1) / (x * c).sum(1), a, m, taps)
    return c, (x * c).sum(1) / (c * c).sum(1), (x * x).sum(1) / (x * c).sum(1)


def rel_mse(x: np.ndarray, c: np.ndarray, scale: np.ndarray) -> float:
    return float((((x - scale[:, None] * c) ** 2).sum(1) / (x * x).sum(1)).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bits", type=int, choices=(2, 3), default=2)
    ap.add_argument("--blocks", type=int, default=500)
    ap.add_argument("--states", default="3,4,5,6,7", help="m per row: 2^m states")
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    # blocks of any size: the scale's range matters for the 8-bit step, not for the code
    rng = np.random.default_rng(a.seed)
    x = rng.standard_normal((a.blocks, 64)) * np.exp(rng.uniform(-4, 4, a.blocks))[:, None]
    t = f"tq{a.bits}t"
    shipped = native.dequantize(native.quantize(x.astype(np.float32).ravel(), t), t).reshape(x.shape)
    print(f"{t}, {a.blocks} blocks of 64; the shipped coder (unbiased scale): {rel_mse(x, shipped, np.ones(len(x))):.5f}")

    c, ls, ub = code(x, a.bits, 3, 0xF)
    q8 = 2.0 ** (np.round(np.log2(ub) * 16) / 16)
    print(f"scale: fp16 {rel_mse(x, c, ub.astype(np.float16).astype(np.float64)):.5f}, "
          f"8-bit log step 2^(1/16) {rel_mse(x, c, q8):.5f}")
    print("| states | best taps | MSE, least-squares scale | MSE, unbiased scale |")
    print("|---|---|---|---|")
    for m in (int(s) for s in a.states.split(",")):
        best = min(((rel_mse(x, c, ls), rel_mse(x, c, ub), taps)
                    for taps in (1 | (g << 1) for g in range(1 << m))
                    for c, ls, ub in [code(x, a.bits, m, taps)]))
        print(f"| {1 << m} | {best[2]:#x} | {best[0]:.5f} | {best[1]:.5f} |", flush=True)


if __name__ == "__main__":
    main()
