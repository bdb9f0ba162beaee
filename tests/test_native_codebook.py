"""Codebooks: scripts/gen_codebooks.py reproduces the paper's Gaussian Lloyd-Max quantizers, and
the shipped tables (tq-codebooks.h, tq_codebook()) are its Beta(d=64) derivation."""
import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest

from tq_llamacpp import native

ROOT = Path(__file__).resolve().parents[1]
HEADER = (ROOT / "native" / "include" / "tq-codebooks.h").read_text()


def _load_generator():
    spec = importlib.util.spec_from_file_location("gen_codebooks", ROOT / "scripts" / "gen_codebooks.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


gen = _load_generator()
BETA = gen.tables()

# Positive halves of the Gaussian Lloyd-Max centroids and their MSE (Max 1960; the paper's Table).
GAUSSIAN = {
    2: ([0.4528, 1.5104], 0.1175),
    3: ([0.2451, 0.7560, 1.3439, 2.1519], 0.0345),
    4: ([0.1284, 0.3880, 0.6568, 0.9423, 1.2562, 1.6180, 2.0690, 2.7326], 0.0095),
}


def _header_table(name: str) -> np.ndarray:
    body = re.search(rf"\b{name}, \d+\) = \{{([^}}]*)\}}", HEADER).group(1)
    return np.array([float(v.rstrip("f")) for v in body.split(",")])


def _header_mse(bits: int) -> float:
    return float(re.search(rf"#define TQ_MSE_{bits} ([0-9.]+)", HEADER).group(1))


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_gaussian_lloyd_max_matches_published(bits):
    centroids, _, mse = gen.lloyd_max(gen.gaussian_pdf, 12, 2**bits)
    half, want_mse = GAUSSIAN[bits]
    np.testing.assert_allclose(centroids[2 ** (bits - 1):], half, atol=1e-4)
    np.testing.assert_allclose(centroids, -centroids[::-1], atol=1e-12)
    assert abs(mse - want_mse) < 1e-4


@pytest.mark.parametrize("bits", [1, 2, 3, 4])
def test_shipped_codebook_is_the_beta64_derivation(bits):
    centroids, bounds, mse = BETA[bits]
    np.testing.assert_allclose(native.codebook(bits), centroids, atol=1e-6, rtol=0)
    np.testing.assert_allclose(_header_table(f"TQ_CODEBOOK_{bits}"), centroids, atol=1e-6, rtol=0)
    np.testing.assert_allclose(_header_table(f"TQ_BOUNDS_{bits}"), bounds, atol=1e-6, rtol=0)
    assert abs(_header_mse(bits) - mse) < 1e-6


@pytest.mark.parametrize("bits", [1, 2, 3, 4])
def test_codebook_shape(bits):
    cb = native.codebook(bits)
    assert cb.dtype == np.float32 and cb.shape == (2**bits,)
    assert np.all(np.diff(cb) > 0)
    np.testing.assert_array_equal(cb, -cb[::-1])
    bounds = _header_table(f"TQ_BOUNDS_{bits}")
    np.testing.assert_allclose(bounds, (cb[1:] + cb[:-1]) / 2, atol=1e-7)


def test_beta64_is_just_under_gaussian():
    """At d = 64 the exact marginal has lighter tails than N(0, 1): a slightly smaller MSE."""
    for bits in (2, 3, 4):
        assert 0.95 * GAUSSIAN[bits][1] < BETA[bits][2] < GAUSSIAN[bits][1]
