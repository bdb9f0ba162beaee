"""End to end on the default model and text: llama-perplexity's KL-divergence against an f16 cache.

Bounds come from measurement (SmolLM2-135M Q4_1, Pride and Prejudice, ctx 512, 3 chunks, this
2-core machine, 2026-11-28): q8_0 0.0037, tq4 0.051, q4_0 0.059, tq3 0.22, tq2 0.93; each bound
leaves about 1.5x headroom for run-to-run and build differences while still failing a broken codec
(an unrotated or mis-scaled cache lands several times higher).
"""
from __future__ import annotations

import pytest

from tq_llamacpp.data import model_path, text_path

pytestmark = [pytest.mark.model, pytest.mark.slow]

BOUNDS = {"q8_0": 0.01, "tq4": 0.08, "tq3": 0.35, "tq2": 1.5}


@pytest.fixture(scope="module")
def results():
    from tq_llamacpp.compare import compare

    rs = compare(model_path("smollm2"), text_path("pride-and-prejudice"),
                 ["f16", "q8_0", "q4_0", "tq4", "tq3", "tq2"], ctx=512, chunks=3)
    return {r.type: r for r in rs}


def test_kld_order(results):
    kld = [results[t].kld_mean for t in ("f16", "q8_0", "tq4", "tq3", "tq2")]
    assert kld[0] == pytest.approx(0.0, abs=1e-6)
    assert kld == sorted(kld), kld


@pytest.mark.parametrize("type", BOUNDS)
def test_kld_bounds(results, type):
    assert results[type].kld_mean < BOUNDS[type]


def test_tq4_near_rotated_q4_0_with_fewer_bits(results):
    """Not yet better: over 20 chunks tq4 (4.25 bits) measures 0.0647 against rotated q4_0's 0.0584
    (4.5 bits), README; 3 chunks show 0.051 vs 0.059. The bound catches a regression, not the goal."""
    tq4, q4_0 = results["tq4"], results["q4_0"]
    assert tq4.bits_per_value < q4_0.bits_per_value
    assert tq4.kld_mean <= 1.25 * q4_0.kld_mean


def test_report_columns(results):
    tq3 = results["tq3"]
    assert tq3.bits_per_value == 3.25
    assert tq3.kv_mib == pytest.approx(results["f16"].kv_mib * 3.25 / 16)
    assert 1 < tq3.ppl < 100 and 0 < tq3.same_top_p <= 100 and tq3.tokens_per_s > 0
