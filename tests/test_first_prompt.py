"""Quality that does not depend on how a program's first tokens arrive: the centring statistics come
from the model's calibration (native/llama/tq-kv-calibrate.cpp), not from whatever the first ubatch
holds. The old source, `stats=first`, shows what this fixes (docs/results.md, First prompts)."""
from __future__ import annotations

import ctypes

import pytest

from tq_llamacpp.data import text_path
from tq_llamacpp.divergence import log_probs, mean_kl

pytestmark = [pytest.mark.model, pytest.mark.slow]
KW = dict(n_ctx=1024, n_batch=512, n_ubatch=512, logits_all=True, verbose=False, seed=0)


@pytest.fixture(scope="module")
def passage(tq, smollm2):
    """400 tokens from the middle of Persuasion (a novel no table is measured on), and the f16
    cache's log-probabilities for them."""
    ref = tq.Llama(smollm2, type_k="f16", type_v="f16", flash_attn=True, **KW)
    text = text_path("persuasion").read_text(encoding="utf-8")
    mid = len(text) // 2
    tokens = ref.tokenize(text[mid:mid + 4000].encode())[:400]
    base = log_probs(ref, tokens)
    ref.close()
    return tokens, base


def test_first_eval_of_one_token(tq, smollm2, passage):
    """A program that sends one token first (the BOS alone, or token-by-token) gets the quality of one
    that sends the whole passage at once: 0.0956 both ways over six passages, where first-ubatch
    statistics gave 0.520 for the one-token split (tq3, positions 100-399, benchmarks/first_prompt.py,
    docs/results.md)."""
    tokens, base = passage
    llm = tq.Llama(smollm2, type_k="tq3", type_v="tq3", **KW)
    whole, _ = mean_kl(base, log_probs(llm, tokens), 100)
    one, _ = mean_kl(base, log_probs(llm, tokens, first=1), 100)
    llm.close()
    first = tq.Llama(smollm2, type_k="tq3", type_v="tq3", kv_options={"stats": "first"}, **KW)
    one_first, _ = mean_kl(base, log_probs(first, tokens, first=1), 100)
    first.close()
    assert one <= 1.1 * whole, (one, whole)
    assert whole < 0.15
    assert one_first > 2 * one, (one_first, one)  # what the calibration fixes


def _seq_stats_tail(L, ctx, seq: int, n_bytes: int) -> bytes:
    n = L.llama_state_seq_get_size(ctx, seq)
    buf = (ctypes.c_uint8 * n)()
    assert L.llama_state_seq_get_data(ctx, buf, n, seq) == n
    return bytes(buf)[-n_bytes:]


@pytest.mark.parametrize("stats,same", [("calib", True), ("first", False)])
def test_sequences_share_the_statistics(tq, smollm2, stats, same):
    """Two sequences of one context (n_seq_max 2, a stream each) that start with different prompts:
    with calibrated statistics the cache's are the same whichever prompt came first; with first-ubatch
    statistics they are the first prompt's."""
    from tq_llamacpp.llama import kv_options_string, llama_cpp as L, thread_kv_options
    from tq_llamacpp.data import calib_dir

    model = L.llama_model_load_from_file(str(smollm2).encode(), L.llama_model_default_params())
    vocab = L.llama_model_get_vocab(model)
    prompts = [b"It is a truth universally acknowledged, that a single man in possession of a good fortune",
               b"def add(a, b):\n    return a + b\n\nprint(add(2, 3))"]

    def tokens(text: bytes) -> list[int]:
        buf = (L.llama_token * 256)()
        n = L.llama_tokenize(vocab, text, len(text), buf, 256, True, False)
        return list(buf[:n])

    # the centring section a sequence's state ends with: a mode word, then per layer K means and factors
    n_bytes = 4 + 30 * 3 * 64 * 2 * 4  # SmolLM2: 30 layers, 3 KV heads of 64 values

    def stats_after(order):
        cp = L.llama_context_default_params()
        cp.n_ctx, cp.n_batch, cp.n_ubatch, cp.n_seq_max, cp.kv_unified = 1024, 512, 512, 2, False
        cp.type_k = cp.type_v = 161
        cp.flash_attn_type = L.LLAMA_FLASH_ATTN_TYPE_ENABLED
        with thread_kv_options(kv_options_string(None, {"stats": stats, "calib_dir": calib_dir()})):
            ctx = L.llama_init_from_model(model, cp)
        assert ctx
        for seq, i in enumerate(order):
            toks = tokens(prompts[i])
            batch = L.llama_batch_init(len(toks), 0, 1)
            for j, t in enumerate(toks):
                batch.token[j], batch.pos[j], batch.n_seq_id[j], batch.seq_id[j][0] = t, j, 1, seq
                batch.logits[j] = j == len(toks) - 1
            batch.n_tokens = len(toks)
            assert L.llama_decode(ctx, batch) == 0
            L.llama_batch_free(batch)
        tails = [_seq_stats_tail(L, ctx, s, n_bytes) for s in (0, 1)]
        L.llama_free(ctx)
        assert tails[0] == tails[1]  # one set of statistics per cache, whatever the sequence
        return tails[0]

    try:
        assert (stats_after([0, 1]) == stats_after([1, 0])) is same
    finally:
        L.llama_model_free(model)
