"""End to end on the default model and text: llama-perplexity's KL-divergence against an f16 cache.

Bounds come from measurement (SmolLM2-135M Q4_1, Pride and Prejudice, ctx 512, this 2-core
machine, 2026-11-28; tq caches centred, README "Centring"): 4 chunks gave tq4 0.031, tq3 0.107,
q4_0 0.059 (3 chunks: q8_0 0.0037, q4_0 0.059; 20 chunks: tq2 0.55). Each bound leaves about 1.5x
headroom for run-to-run and build differences while still failing a broken codec or a centring that
stopped working (uncentred: tq4 0.065, tq3 0.23 over 20 chunks).
"""
from __future__ import annotations

import pytest

from tq_llamacpp.data import model_path, text_path

pytestmark = [pytest.mark.model, pytest.mark.slow]

BOUNDS = {"q8_0": 0.01, "tq4": 0.05, "tq3": 0.17, "tq2": 0.8}


@pytest.fixture(scope="module")
def results():
    from tq_llamacpp.compare import compare

    rs = compare(model_path("smollm2"), text_path("pride-and-prejudice"),
                 ["f16", "q8_0", "q4_0", "tq4", "tq3", "tq2", "tq3@off"], ctx=512, chunks=3)
    return {r.type: r for r in rs}


def test_kld_order(results):
    kld = [results[t].kld_mean for t in ("f16", "q8_0", "tq4", "tq3", "tq2")]
    assert kld[0] == pytest.approx(0.0, abs=1e-6)
    assert kld == sorted(kld), kld


@pytest.mark.parametrize("type", BOUNDS)
def test_kld_bounds(results, type):
    assert results[type].kld_mean < BOUNDS[type]


def test_tq4_beats_rotated_q4_0_with_fewer_bits(results):
    """20 chunks: tq4 (4.25 bits) 0.0337 against rotated q4_0's 0.0584 (4.5 bits), README."""
    tq4, q4_0 = results["tq4"], results["q4_0"]
    assert tq4.bits_per_value < q4_0.bits_per_value
    assert tq4.kld_mean < 0.75 * q4_0.kld_mean


def test_centring_halves_tq3_kld(results):
    """20 chunks: tq3 0.118 centred, 0.229 without (README)."""
    assert results["tq3"].kld_mean < 0.7 * results["tq3@off"].kld_mean


def test_report_columns(results):
    tq3 = results["tq3"]
    assert tq3.bits_per_value == 3.25
    assert tq3.kv_mib == pytest.approx(results["f16"].kv_mib * 3.25 / 16)
    assert 1 < tq3.ppl < 100 and 0 < tq3.same_top_p <= 100 and tq3.tokens_per_s > 0
