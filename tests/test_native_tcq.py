"""The trellis-coded types tq2t/tq3t (native/include/tq-math.h, "trellis-coded quantization") against
a numpy reference written from the description there: the same 8-state trellis, Viterbi search,
scale refits and byte layout, in float32 in the C codec's order of operations, so the bytes must be
equal. Then their error against the Lloyd-Max types of the same bits."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from tq_llamacpp import native

HEADER = (Path(__file__).resolve().parents[1] / "native" / "include" / "tq-codebooks.h").read_text()
TCQ_TYPES = {"tq2t": 2, "tq3t": 3}
F = np.float32


def codebook(bits: int) -> np.ndarray:
    body = re.search(rf"TQ_CODEBOOK_{bits}, \d+\) = \{{(.*?)\}};", HEADER).group(1)
    return np.array([float(v.rstrip("f")) for v in body.split(",")], dtype=F)


def subset(w: np.ndarray) -> np.ndarray:
    """k = 2 * (u_j ^ u_j-1 ^ u_j-2 ^ u_j-3) + u_j-1 for the window w (bit t = u_j-t)."""
    return (((w ^ (w >> 1) ^ (w >> 2) ^ (w >> 3)) & 1) << 1) | ((w >> 1) & 1)


def fold16(v: np.ndarray) -> np.ndarray:
    """The canonical block sum (tq_impl.h): 16 lanes adding l, l+16, l+32, l+48, folded in halves."""
    acc = v[:, 0:16].copy()
    for r in range(1, 4):
        acc = acc + v[:, 16 * r:16 * r + 16]
    for h in (8, 4, 2, 1):
        acc = acc[:, :h] + acc[:, h:2 * h]
    return acc[:, 0]


def viterbi(bits: int, x: np.ndarray, inv: np.ndarray):
    """Best path per block of x * inv: (index into the (bits+1)-bit codebook, branch bits)."""
    a = codebook(bits + 1)
    n = len(x)
    levels = np.stack([a[k::4] for k in range(4)])  # subset k: levels a[k], a[k+4], ...
    v = (x * inv[:, None]).astype(F)
    e = (v[:, :, None, None] - levels[None, None]).astype(F)
    e = (e * e).astype(F)  # (n, 64, 4, levels)
    lev = e.argmin(-1)  # the first minimum: ties to the lower level, as the C loop's strict <
    dist = e.min(-1)
    states = np.arange(8)
    cost = np.where(states == 0, F(0), F(1e30)).astype(F)[None].repeat(n, 0)
    back = np.zeros((64, n, 8), dtype=bool)
    for j in range(64):
        c0 = (cost[:, states >> 1] + dist[:, j, subset(states)]).astype(F)
        c1 = (cost[:, (states >> 1) + 4] + dist[:, j, subset(states + 8)]).astype(F)
        back[j] = c1 < c0
        cost = np.where(back[j], c1, c0)
    s = cost.argmin(1)
    rows = np.arange(n)
    idx = np.zeros((n, 64), dtype=np.int64)
    u = np.zeros((n, 64), dtype=np.int64)
    for j in range(63, -1, -1):
        w = s | (back[j, rows, s].astype(np.int64) << 3)
        k = subset(w)
        idx[:, j] = 4 * lev[rows, j, k] + k
        u[:, j] = w & 1
        s = w >> 1
    return idx, u


def refit(bits: int, x: np.ndarray, idx: np.ndarray):
    c = codebook(bits + 1)[idx]
    return fold16((x * c).astype(F)), fold16((c * c).astype(F))


def reference_blocks(bits: int, x: np.ndarray) -> np.ndarray:
    """tq_quantize_block_tq{2,3}t for finite, non-zero blocks within the fp16 range."""
    sumsq = fold16((x * x).astype(F))
    rms = np.sqrt((sumsq * F(1 / 64)).astype(F)).astype(F)
    d0 = (rms * F(0.875)).astype(F)
    idx, u = viterbi(bits, x, (F(1) / d0).astype(F))
    xc, cc = refit(bits, x, idx)
    d1 = (xc / cc).astype(F)
    idx, u = viterbi(bits, x, (F(1) / d1).astype(F))
    xc, cc = refit(bits, x, idx)
    d = (sumsq / xc).astype(F)  # the unbiased scale
    out = [d.astype(np.float16).view(np.uint8).reshape(-1, 2)]
    level = idx >> 2
    if bits == 3:  # level bits in tq2's 2-bit plane: value j in byte j % 16, bits 2 * (j // 16)
        planes = sum(level[:, 16 * g:16 * g + 16] << (2 * g) for g in range(4))
        out.append(planes.astype(np.uint8))
    word = lambda b: np.packbits(b.astype(np.uint8), axis=1, bitorder="little")  # noqa: E731
    out.append(word(u))
    if bits == 2:
        out.append(word(level))
    return np.concatenate(out, axis=1)


def reference_decode(bits: int, blocks: np.ndarray) -> np.ndarray:
    d = blocks[:, :2].copy().view(np.float16).astype(F)[:, 0]
    if bits == 3:
        planes = blocks[:, 2:18].astype(np.int64)
        level = np.concatenate([(planes >> (2 * g)) & 3 for g in range(4)], axis=1)
        ubytes = blocks[:, 18:26]
    else:
        ubytes = blocks[:, 2:10]
        level = np.unpackbits(blocks[:, 10:18], axis=1, bitorder="little").astype(np.int64)
    u = np.unpackbits(ubytes, axis=1, bitorder="little").astype(np.int64)
    prev = [np.pad(u, ((0, 0), (t, 0)))[:, :64] for t in range(4)]  # u_j-t, zero before the block
    k = 2 * (prev[0] ^ prev[1] ^ prev[2] ^ prev[3]) + prev[1]
    return (d[:, None] * codebook(bits + 1)[4 * level + k]).astype(F)


def gaussian_blocks(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 64)).astype(F)


@pytest.mark.parametrize("type", TCQ_TYPES)
def test_codes_equal_the_reference(type):
    bits = TCQ_TYPES[type]
    x = gaussian_blocks(600, seed=7) * F(3.0)
    x[:100] *= np.exp(np.random.default_rng(8).standard_normal((100, 64))).astype(F)  # heavy tails
    got = native.quantize(x.reshape(-1), type).reshape(len(x), -1)
    want = reference_blocks(bits, x)
    assert got.shape == want.shape == (len(x), native.block_bytes(type))
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("type", TCQ_TYPES)
def test_decode_equals_the_reference(type):
    bits = TCQ_TYPES[type]
    codes = native.quantize(gaussian_blocks(300, seed=9).reshape(-1), type).reshape(300, -1)
    got = native.dequantize(codes.reshape(-1), type).reshape(300, 64)
    np.testing.assert_array_equal(got, reference_decode(bits, codes))


def mse(x: np.ndarray, type: str) -> float:
    y = native.dequantize(native.quantize(x.reshape(-1), type), type).reshape(x.shape)
    return float(((x.astype(np.float64) - y) ** 2).mean())


@pytest.fixture(scope="module")
def unit_blocks():
    x = gaussian_blocks(20000, seed=1)
    return x / np.sqrt((x.astype(np.float64) ** 2).mean(axis=1, keepdims=True)).astype(F)


# squared error per value at unit RMS, measured on 20000 Gaussian blocks (native/README.md); the
# Lloyd-Max code of the same bits with its unbiased scale: tq2 0.128, tq3 0.0327
@pytest.mark.parametrize("type,lo,hi,lloyd_max", [("tq2t", 0.090, 0.097, "tq2"), ("tq3t", 0.0228, 0.0240, "tq3")])
def test_error_below_the_lloyd_max_code(unit_blocks, type, lo, hi, lloyd_max):
    got, base = mse(unit_blocks, type), mse(unit_blocks, lloyd_max)
    assert lo <= got <= hi, got
    assert got <= 0.76 * base, (got, base)


@pytest.mark.parametrize("type", TCQ_TYPES)
def test_scale_keeps_each_block_along_itself(unit_blocks, type):
    """<x, x_hat> = <x, x> per block, up to the fp16 rounding of the scale, as for tq2/tq3/tq4."""
    x = unit_blocks[:3000].astype(np.float64)
    xhat = native.dequantize(native.quantize(unit_blocks[:3000].reshape(-1), type), type).reshape(x.shape)
    ratio = (x * xhat).sum(axis=1) / (x * x).sum(axis=1)
    assert np.abs(ratio - 1).max() < 2.0**-11


@pytest.mark.parametrize("type", TCQ_TYPES)
def test_edge_blocks(type):
    """Zero blocks code to zero bytes, a non-finite block to a NaN scale (the row functions) and a
    refusal (tq_quantize), a block past fp16 to the saturated scale 65504."""
    n = native.block_bytes(type)
    zero = np.zeros(64, dtype=F)
    assert not native.quantize(zero, type).any()
    np.testing.assert_array_equal(native.dequantize(native.quantize(zero, type), type), 0)
    bad = gaussian_blocks(1, seed=3)[0]
    bad[5] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        native.quantize(bad, type)
    big = gaussian_blocks(1, seed=4)[0] * F(1e6)
    codes = native.quantize(big, type)
    assert codes.shape == (n,) and codes[:2].view(np.float16)[0] == np.float16(65504)
