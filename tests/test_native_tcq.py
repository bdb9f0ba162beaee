"""The trellis-coded types tq2t/tq3t (native/include/tq-math.h, "trellis-coded quantization") against
a numpy reference written from the description there: the same 8-state trellis, Viterbi search,
scale refits and byte layout, in float32 in the C codec's order of operations, so the bytes must be
equal. Then their error against the Lloyd-Max types of the same bits. tq2ts/tq3ts, the same codes
with an 8-bit logarithmic scale, likewise."""
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


def reference_scale(bits: int, x: np.ndarray):
    """The unbiased scale (float32) that tq_tcq_quantize_with stores, and its path."""
    sumsq = fold16((x * x).astype(F))
    rms = np.sqrt((sumsq * F(1 / 64)).astype(F)).astype(F)
    d0 = (rms * F(0.875)).astype(F)
    idx, u = viterbi(bits, x, (F(1) / d0).astype(F))
    xc, cc = refit(bits, x, idx)
    d1 = (xc / cc).astype(F)
    idx, u = viterbi(bits, x, (F(1) / d1).astype(F))
    xc, cc = refit(bits, x, idx)
    return (sumsq / xc).astype(F), idx, u  # the unbiased scale


# the 8-bit scale of tq2ts/tq3ts: code e = 1..254 is 2^((e - 144) / 16); 0 a zero block, 255 NaN
S8_BIAS = 144
MANTISSA = np.array([np.float32(2.0 ** (k / 16)) for k in range(16)], dtype=F)


def scale8_value(e: np.ndarray) -> np.ndarray:
    t = e.astype(np.int64) - S8_BIAS
    v = (MANTISSA[t & 15] * np.ldexp(F(1), t >> 4).astype(F)).astype(F)
    return np.where(e == 0, F(0), np.where(e == 255, F(np.nan), v)).astype(F)


def scale8_code(d: np.ndarray) -> np.ndarray:
    """The code nearest to d in ratio: the e with v(e) <= d < v(e+1), then e + 1 where d^2 >= v(e) v(e+1)
    (in float64, where those products are exact); the range's ends as tq_scale8_from_float."""
    grid = scale8_value(np.arange(1, 255))  # increasing
    e = np.searchsorted(grid, d, side="right")  # v(e) <= d, e = 0 below v(1)
    lo = grid[np.clip(e - 1, 0, 253)].astype(np.float64)
    hi = grid[np.clip(e, 0, 253)].astype(np.float64)
    up = (d.astype(np.float64) ** 2 >= lo * hi) & (e >= 1) & (e < 254)
    e = e + up
    below = d < F(0.5) * grid[0]
    e = np.where(e >= 1, e, np.where(below, 0, 1))
    return np.minimum(e, 254).astype(np.uint8)


def pack(bits: int, idx: np.ndarray, u: np.ndarray) -> np.ndarray:
    """A block's code bytes (tq_tcq_store_codes)"""
    out = []
    level = idx >> 2
    if bits == 3:  # level bits in tq2's 2-bit plane: value j in byte j % 16, bits 2 * (j // 16)
        planes = sum(level[:, 16 * g:16 * g + 16] << (2 * g) for g in range(4))
        out.append(planes.astype(np.uint8))
    word = lambda b: np.packbits(b.astype(np.uint8), axis=1, bitorder="little")  # noqa: E731
    out.append(word(u))
    if bits == 2:
        out.append(word(level))
    return np.concatenate(out, axis=1)


def reference_blocks(bits: int, x: np.ndarray) -> np.ndarray:
    """tq_quantize_block_tq{2,3}t for finite, non-zero blocks within the fp16 range."""
    d, idx, u = reference_scale(bits, x)
    return np.concatenate([d.astype(np.float16).view(np.uint8).reshape(-1, 2), pack(bits, idx, u)], axis=1)


def reference_blocks_s8(bits: int, x: np.ndarray) -> np.ndarray:
    """tq_quantize_block_tq{2,3}ts for finite, non-zero blocks: tq{2,3}t's codes, and its scale rounded
    to fp16, then to the 8-bit code (a block whose code is 0 keeps no codes)."""
    d, idx, u = reference_scale(bits, x)
    e = scale8_code(d.astype(np.float16).astype(F))
    idx, u = np.where(e[:, None] == 0, 0, idx), np.where(e[:, None] == 0, 0, u)
    return np.concatenate([e[:, None], pack(bits, idx, u)], axis=1)


def reference_decode(bits: int, blocks: np.ndarray, s8: bool = False) -> np.ndarray:
    if s8:
        d, blocks = scale8_value(blocks[:, 0]), blocks[:, 1:]
    else:
        d, blocks = blocks[:, :2].copy().view(np.float16).astype(F)[:, 0], blocks[:, 2:]
    if bits == 3:
        planes = blocks[:, 0:16].astype(np.int64)
        level = np.concatenate([(planes >> (2 * g)) & 3 for g in range(4)], axis=1)
        ubytes = blocks[:, 16:24]
    else:
        ubytes = blocks[:, 0:8]
        level = np.unpackbits(blocks[:, 8:16], axis=1, bitorder="little").astype(np.int64)
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


S8_TYPES = {"tq2ts": 2, "tq3ts": 3}


@pytest.mark.parametrize("type", S8_TYPES)
def test_scale8_table(type):
    """Every one of the 256 scale codes decodes as the reference's table, in which each scale is
    2^(1/16) above the one before (to float rounding), from 2^-8.94 to 2^6.88; 0 is zero, 255 NaN."""
    bits = S8_TYPES[type]
    e = np.arange(256)
    v = scale8_value(e)
    assert v[0] == 0 and np.isnan(v[255])
    np.testing.assert_allclose(np.log2(v[1:255].astype(np.float64)), (e[1:255] - S8_BIAS) / 16, atol=1e-7)
    blocks = np.random.default_rng(5).integers(0, 256, (256, native.block_bytes(type)), dtype=np.uint8)
    blocks[:, 0] = e
    got = native.dequantize(blocks.reshape(-1), type).reshape(256, 64)
    np.testing.assert_array_equal(got, reference_decode(bits, blocks, s8=True))


@pytest.mark.parametrize("type", S8_TYPES)
def test_s8_codes_equal_the_reference(type):
    bits = S8_TYPES[type]
    rng = np.random.default_rng(17)
    x = gaussian_blocks(800, seed=7)
    # block scales across and beyond the code's range (2^-8.94 .. 2^6.88): flushed to zero below half
    # its bottom, clamped at its top
    x *= np.exp2(rng.uniform(-11, 9, 800)).astype(F)[:, None]
    got = native.quantize(x.reshape(-1), type).reshape(len(x), -1)
    want = reference_blocks_s8(bits, x)
    assert got.shape == want.shape == (len(x), native.block_bytes(type))
    assert {0, 1, 254} <= set(np.unique(got[:, 0]))  # the range's ends were reached
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("type", S8_TYPES)
def test_s8_decode_equals_the_reference(type):
    bits = S8_TYPES[type]
    x = gaussian_blocks(300, seed=9) * np.exp2(np.random.default_rng(3).uniform(-8, 6, 300)).astype(F)[:, None]
    codes = native.quantize(x.reshape(-1), type).reshape(300, -1)
    got = native.dequantize(codes.reshape(-1), type).reshape(300, 64)
    np.testing.assert_array_equal(got, reference_decode(bits, codes, s8=True))


@pytest.mark.parametrize("type,fp16_type", [("tq2ts", "tq2t"), ("tq3ts", "tq3t")])
def test_s8_costs_little_error_for_an_eighth_of_a_bit(unit_blocks, type, fp16_type):
    """The 8-bit scale saves 0.125 bits per value for at most 1 % more squared error on Gaussian blocks,
    and keeps each block along itself to within half a step of the scale (2^(1/32), after fp16)."""
    assert native.bits_per_value(type) == native.bits_per_value(fp16_type) - 0.125
    got, base = mse(unit_blocks, type), mse(unit_blocks, fp16_type)
    assert base <= got <= 1.01 * base, (got, base)
    x = unit_blocks[:3000].astype(np.float64)
    xhat = native.dequantize(native.quantize(unit_blocks[:3000].reshape(-1), type), type).reshape(x.shape)
    ratio = np.log2((x * xhat).sum(axis=1) / (x * x).sum(axis=1))
    assert np.abs(ratio).max() < 1 / 32 + 2.0**-10
    assert abs(ratio.mean()) < 0.002  # rounding in the log domain: no drift either way


@pytest.mark.parametrize("type", S8_TYPES)
def test_s8_edge_blocks(type):
    """A zero block codes to zero bytes, a non-finite one to the NaN code 255 (row functions) and a
    refusal (tq_quantize), a tiny one to a zero block, a huge one to the top code."""
    zero = np.zeros(64, dtype=F)
    assert not native.quantize(zero, type).any()
    bad = gaussian_blocks(1, seed=3)[0]
    bad[5] = np.inf
    with pytest.raises(ValueError, match="infinity at index 5"):
        native.quantize(bad, type)
    from tq_llamacpp._native import ffi, lib
    src = np.ascontiguousarray(np.concatenate([bad, zero]))
    row = np.zeros(2 * native.block_bytes(type), dtype=np.uint8)
    getattr(lib, f"tq_ggml_quantize_row_{type}")(ffi.cast("float *", src.ctypes.data), ffi.cast("void *", row.ctypes.data), 128)
    assert row[0] == 255 and not row[1:].any()
    assert np.isnan(native.dequantize(row[:native.block_bytes(type)], type)).all()
    tiny = gaussian_blocks(1, seed=4)[0] * F(1e-4)
    assert not native.quantize(tiny, type).any()
    big = gaussian_blocks(1, seed=4)[0] * F(1e6)
    assert native.quantize(big, type)[0] == 254


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
