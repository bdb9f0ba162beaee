#!/usr/bin/env python3
"""Why TQ_BLOCK = 64: relative MSE of the tq coding rules at block length 64 vs 128, with the
Gaussian-limit and the Beta(d=64) codebooks, on rows of random unit vectors (rotated data is
distributed so). Pure numpy re-implementation of the code choice (codes at the RMS scale, then two
least-squares refits, which pick the codes the codec stores); the codec then stores the unbiased
scale for those codes, whose MSE is higher by the factor 1/(1 - D) (native/README.md, Scale), the
same for every block length, so the comparison of block lengths holds. The C library is the
reference for everything else.

    python benchmarks/bench_block_length.py [--n 100000] [--dim 128]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import gen_codebooks  # noqa: E402


def code(x: np.ndarray, cb: np.ndarray, block: int, refit: bool) -> np.ndarray:
    xb = x.reshape(-1, block)
    bnd = (cb[1:] + cb[:-1]) / 2
    rms = np.sqrt((xb**2).mean(1, keepdims=True))
    k = np.searchsorted(bnd, xb / rms)
    d = rms
    if refit:
        for _ in range(2):
            c = cb[k]
            d = (xb * c).sum(1, keepdims=True) / (c * c).sum(1, keepdims=True)
            k = np.searchsorted(bnd, xb / d) if _ == 0 else k
    return (d * cb[k]).reshape(x.shape)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100000)
    ap.add_argument("--dim", type=int, default=128)
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((a.n, a.dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    books = {}
    for bits in (2, 3, 4):
        books[("gauss", bits)] = gen_codebooks.lloyd_max(gen_codebooks.gaussian_pdf, 12.0, 1 << bits)[0]
        pdf, lim = gen_codebooks.beta_pdf(64)
        books[("beta64", bits)] = gen_codebooks.lloyd_max(pdf, lim, 1 << bits)[0]
    print(f"relative MSE, {a.n} random unit vectors of dim {a.dim}\n")
    print("| bits | block | bits/value | codebook | RMS scale | least-squares refit (the codec's codes) |")
    print("|---|---|---|---|---|---|")
    for bits in (2, 3, 4):
        for block in (64, 128):
            for book in ("gauss", "beta64"):
                cb = books[(book, bits)]
                m = [float(((x - code(x, cb, block, r)) ** 2).sum(1).mean()) for r in (False, True)]
                print(f"| {bits} | {block} | {bits + 16 / block:.3f} | {book} | {m[0]:.5f} | {m[1]:.5f} |")


if __name__ == "__main__":
    main()
