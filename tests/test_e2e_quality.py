"""End to end on the default model and text: llama-perplexity's KL-divergence against an f16 cache.

Bounds come from measurement (SmolLM2-135M Q4_1, Pride and Prejudice, this 2-core machine,
2026-11-28, tq K caches centred and equalized with the RoPE-aware statistics, README "Centring"):
ctx 512, 3 chunks gave q8_0 0.0037, q4_0 0.059, tq4 0.031, tq3 0.114, tq2 0.48, tq3 uncentred 0.201;
ctx 4096, 1 chunk (session 4's statistics, which follow RoPE's turn) gave q4_0 0.059, tq4 0.043,
tq3 0.132, tq3 uncentred 0.224. Each bound leaves about 1.2-1.5x headroom for run-to-run and build
differences while still failing a broken codec or a centring that stopped working, at the first
ubatch or past it. Session 5's statistics (parallel sequences, first token coded exactly) are lower
still (README, Centring); the last two tests pin those two steps. The values quoted in this file
are from builds with the least-squares scale; session 6's unbiased scale lowers SmolLM2's KLD
again (20 chunks: tq3 0.081 -> 0.073, tq4 0.023 -> 0.022) and every bound and ratio here still holds.
"""
from __future__ import annotations

import pytest

from tq_llamacpp.data import model_path, text_path

pytestmark = [pytest.mark.model, pytest.mark.slow]

BOUNDS = {"q8_0": 0.01, "tq4": 0.05, "tq3": 0.17, "tq2": 0.8}
# centred tq3 against uncentred: measured 0.57 (ctx 512) and 0.59 (ctx 4096); past the first ubatch
# tq4 against rotated q4_0: measured 0.73 (ctx 4096)
RATIO512, RATIO4096, TQ4_Q4_0_4096 = 0.75, 0.75, 0.85


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
    """Per bit and per value: tq4 (4.25 bits) against rotated q4_0 (4.5 bits); 20-chunk numbers in the README."""
    tq4, q4_0 = results["tq4"], results["q4_0"]
    assert tq4.bits_per_value < q4_0.bits_per_value
    assert tq4.kld_mean < 0.75 * q4_0.kld_mean


def test_centring_lowers_tq3_kld(results):
    """Centring (RoPE-aware means and factors) at ctx 512, where the first ubatch is the whole context."""
    assert results["tq3"].kld_mean < RATIO512 * results["tq3@off"].kld_mean


@pytest.fixture(scope="module")
def results_4096():
    from tq_llamacpp.compare import compare

    rs = compare(model_path("smollm2"), text_path("pride-and-prejudice"), ["f16", "q4_0", "tq4", "tq3", "tq3@off"],
                 ctx=4096, chunks=1)
    return {r.type: r for r in rs}


def test_centring_holds_past_the_first_ubatch(results_4096):
    """The K statistics are measured on the first ubatch (512 tokens) and must still hold 3500
    positions later, where RoPE has turned the keys' offsets: measured as is they made tq3 worse
    than no centring (session 2: 0.37 against 0.23 at 2 chunks), and session 3's real-part weighting
    left tq4 behind rotated q4_0 (0.072 against 0.060) with tq3 no better than uncentred (0.248
    against 0.230); README, Centring."""
    r = results_4096
    assert r["tq3"].kld_mean < RATIO4096 * r["tq3@off"].kld_mean
    assert r["tq4"].kld_mean < TQ4_Q4_0_4096 * r["q4_0"].kld_mean


def test_report_columns(results):
    tq3 = results["tq3"]
    assert tq3.bits_per_value == 3.25
    assert tq3.kv_mib == pytest.approx(results["f16"].kv_mib * 3.25 / 16)
    assert 1 < tq3.ppl < 100 and 0 < tq3.same_top_p <= 100 and tq3.tokens_per_s > 0


def test_statistics_of_parallel_sequences(monkeypatch):
    """llama-perplexity scores 4 chunks at once, each sequence in its own stream, and its first
    ubatch then holds 128 tokens of each: positions 0..127 four times, with four BOS sinks. The
    statistics must treat them as such (each sequence's first token left out, positions 0..127
    carried over the cache's 512), so that 4 parallel sequences code as well as one sequence whose
    first ubatch holds its whole 512 positions. Measured without the first-token code word (which
    hides most of the difference: 0.072 both ways), these 4 chunks: 4 at once 0.088, one at a time
    (`-b 512`) 0.1005; with the ubatch taken as one sequence of 512 positions (session 4's code)
    4 at once 0.1005, the same as one at a time."""
    from tq_llamacpp.compare import compare

    monkeypatch.setenv("LLAMA_KV_SINK", "0")
    model, text = model_path("smollm2"), text_path("pride-and-prejudice")
    together = compare(model, text, ["tq3"], ctx=512, chunks=4)[0].kld_mean
    one_by_one = compare(model, text, ["tq3"], ctx=512, chunks=4, extra_args=["-b", "512"])[0].kld_mean
    assert together < 0.95 * one_by_one, (together, one_by_one)


def test_first_token_coded_exactly(monkeypatch):
    """The first token of the first ubatch (BOS, an attention sink that most queries weigh heavily)
    is stored as a code word: the subtracted mean moves by that token's quantization error
    (README, Centring). Measured (4 chunks): tq3 0.072 with, 0.088 without (LLAMA_KV_SINK=0); tq4
    0.020 and 0.027."""
    from tq_llamacpp.compare import compare

    model, text = model_path("smollm2"), text_path("pride-and-prejudice")
    on = {r.type: r.kld_mean for r in compare(model, text, ["tq3", "tq4"], ctx=512, chunks=4)}
    monkeypatch.setenv("LLAMA_KV_SINK", "0")
    off = {r.type: r.kld_mean for r in compare(model, text, ["tq3", "tq4"], ctx=512, chunks=4)}
    assert on["tq3"] < 0.9 * off["tq3"], (on, off)
    assert on["tq4"] < 0.85 * off["tq4"], (on, off)
