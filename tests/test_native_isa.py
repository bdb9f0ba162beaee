"""Every SIMD path this CPU can run against the portable one (BLAKE3's habit).

Codes and dequantized values must be byte-identical: quantize follows one canonical order of float
operations on every ISA (native/src/tq_impl.h). Dot products may differ by rounding only:
|simd - portable| <= 2 * n * 2^-24 * sum_j |q_j * x_hat_j|, twice the worst case of one summation
order (both sum the same n products, in different orders, with or without FMA).

The AVX-512 path runs where the CPU has it (the GPU machine's Xeon: benchmarks/gpu_bench.sh); NEON
under qemu (scripts/check-isas.sh aarch64).
"""
from __future__ import annotations

import zlib

import numpy as np
import pytest

from tq_llamacpp import native

F = np.float32
SIMD = [isa for isa in native.isa_available() if isa != "portable"]
pytestmark = pytest.mark.skipif(not SIMD, reason="this CPU runs only the portable kernels")


def _blocks(rng: np.random.Generator, nblocks: int) -> np.ndarray:
    """Gaussian blocks at scales from 1e-8 to 1e6 (past fp16's range both ways), so scales and codes
    land on rounding edges often enough for a changed operation order to show."""
    scale = 10.0 ** rng.uniform(-8, 6, size=(nblocks, 1))
    return (rng.standard_normal((nblocks, 64)) * scale).astype(F).reshape(-1)


def _edge_rows() -> dict[str, np.ndarray]:
    n = 64 * 7
    ramp = (np.arange(n) % 64 - 31.5).astype(F)
    spike = np.zeros(n, F)
    spike[3::97] = 1000.0
    return {
        "zeros": np.zeros(n, F),
        "ramp-ties": ramp,
        "spike": spike,
        "huge": np.full(n, 3e19, F) * np.where(np.arange(n) % 2, 1, -1).astype(F),
        "denormal": (np.random.default_rng(1).standard_normal(n) * 1e-41).astype(F),
        "fp16-max": np.full(n, 65504.0, F),
    }


def _portable(fn, *args):
    with native.force_isa("portable"):
        return fn(*args)


@pytest.mark.parametrize("isa", SIMD)
@pytest.mark.parametrize("type", native.TYPE_NAMES)
def test_codes_and_values_identical(isa, type):
    # a seed that is the same in every run (hash() of a str is salted per process)
    rng = np.random.default_rng(zlib.crc32(f"{isa}/{type}".encode()))
    rows = {"random-scales": _blocks(rng, 16384), **_edge_rows()}
    for name, x in rows.items():
        ref = _portable(native.quantize, x, type)
        with native.force_isa(isa):
            got = native.quantize(x, type)
            got_x = native.dequantize(ref, type)
        assert np.array_equal(ref, got), f"{isa} {type} {name}: codes differ at byte {np.argmax(ref != got)}"
        ref_x = _portable(native.dequantize, ref, type)
        assert ref_x.tobytes() == got_x.tobytes(), f"{isa} {type} {name}: dequantized values differ"


@pytest.mark.parametrize("isa", SIMD)
@pytest.mark.parametrize("type", native.TYPE_NAMES)
@pytest.mark.parametrize("nblocks", [1, 2, 3, 4, 5, 7, 8, 9, 16, 17, 64])
def test_dot_within_rounding(isa, type, nblocks):
    rng = np.random.default_rng(nblocks)
    n = 64 * nblocks
    x = rng.standard_normal(n).astype(F)
    q = rng.standard_normal(n).astype(F)
    codes = native.quantize(x, type)
    xh = native.dequantize(codes, type).astype(np.float64)
    ref = _portable(native.dot, q, codes, type)
    with native.force_isa(isa):
        got = native.dot(q, codes, type)
    bound = 2 * n * 2.0**-24 * np.abs(q.astype(np.float64) * xh).sum()
    assert abs(got - ref) <= bound, f"{isa} {type}: {got} vs {ref}, bound {bound}"
    assert abs(ref - (q.astype(np.float64) * xh).sum()) <= bound
