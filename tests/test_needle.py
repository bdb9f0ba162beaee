"""Passkey retrieval (`tq-llama needle`): prompt construction and input errors against SmolLM2's
tokenizer (fast), then retrieval at SmolLM2's full 8K context with f16, tq4 and tq3 caches, and the
command at a small context."""
from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from tq_llamacpp.data import model_path, text_path

pytestmark = pytest.mark.model
EXE = shutil.which("tq-llama")


@pytest.fixture(scope="module")
def nd():
    import tq_llamacpp.llama  # noqa: F401  binds llama_cpp to the patched libraries first
    from tq_llamacpp import needle

    return needle


@pytest.fixture(scope="module")
def vocab(nd, smollm2):
    with nd.Vocab(smollm2) as v:
        yield v


def _find_all(seq, sub):
    return [i for i in range(len(seq) - len(sub) + 1) if seq[i:i + len(sub)] == sub]


@pytest.mark.parametrize("ctx", [1024, 8192])
@pytest.mark.parametrize("depth", [0.0, 0.1, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("filler", ["neutral", "novel"])
def test_prompt_layout(nd, vocab, ctx, depth, filler):
    sentences = (nd.NEUTRAL_FILLER if filler == "neutral"
                 else nd.filler_sentences(text_path("pride-and-prejudice").read_text()))
    f = nd.Filler(sentences, vocab.tokenize)
    p = nd.build_prompt(vocab.tokenize, f, ctx, depth, "48213")
    longest = max(len(t) for t in f._tokens)
    # fills the context up to the answer's tokens, less at most one filler sentence that did not fit
    assert ctx - nd.MAX_NEW_TOKENS - longest < len(p.tokens) <= ctx - nd.MAX_NEW_TOKENS
    needle = vocab.tokenize(" " + nd.NEEDLE.format(key="48213"), False)
    assert _find_all(p.tokens, needle) == [p.needle_at]
    # at the sentence boundary nearest the requested depth
    assert abs(p.actual_depth - depth) <= longest / 2 / p.filler_tokens + 1e-9
    text = vocab.detokenize(p.tokens)
    assert text.count("48213") == 2 and len(re.findall(r"\d", text)) == 10  # no other digit in the prompt
    assert text.count(nd.NEEDLE.format(key="48213")) == 1
    assert text.startswith(nd.INSTRUCTION) and text.endswith(nd.QUESTION)


def test_depth_is_close_at_full_context(nd, vocab):
    f = nd.Filler(nd.NEUTRAL_FILLER, vocab.tokenize)
    for depth in (0.1, 0.25, 0.5, 0.75, 0.9):
        assert abs(nd.build_prompt(vocab.tokenize, f, 8192, depth, "10000").actual_depth - depth) < 0.001


def test_prompts_share_the_filler_before_the_needle(nd, vocab):
    """What makes running the deepest needle first cheap: the next prompt differs only from its own needle on."""
    f = nd.Filler(nd.NEUTRAL_FILLER, vocab.tokenize)
    deep, shallow = (nd.build_prompt(vocab.tokenize, f, 2048, d, k) for d, k in ((0.9, "11111"), (0.5, "22222")))
    assert deep.tokens[:shallow.needle_at] == shallow.tokens[:shallow.needle_at]
    assert nd.run_order([0.1, 0.9, 0.5], 2) == [(0.9, 0), (0.9, 1), (0.5, 0), (0.5, 1), (0.1, 0), (0.1, 1)]


def test_passkeys(nd):
    keys = nd.passkeys(3, [0.1, 0.5, 0.9], 4)
    assert len(keys) == 12 and all(re.fullmatch(r"[1-9]\d{4}", k) for k in keys.values())
    assert keys == nd.passkeys(3, [0.1, 0.5, 0.9], 4) != nd.passkeys(4, [0.1, 0.5, 0.9], 4)
    assert len(set(keys.values())) > 6


def test_filler_sentences_drop_digits(nd):
    text = "Chapter 1\n\n\nIt was late.  He said\n42 things! \"Who?\" asked she.\n\nShe left."
    assert nd.filler_sentences(text) == ["It was late.", "\"Who?\" asked she.", "She left."]


def test_bad_depths(nd, vocab):
    f = nd.Filler(nd.NEUTRAL_FILLER, vocab.tokenize)
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"outside \[0, 1\]"):
            nd.build_prompt(vocab.tokenize, f, 1024, bad, "12345")
    with pytest.raises(ValueError, match="no depths"):
        nd.check_depths([])


def test_bad_input_fails_before_any_model_runs(nd, smollm2):
    with pytest.raises(ValueError, match=r"context 16384 is larger than smollm2.gguf's training context \(8192\)"):
        nd.run_needle(smollm2, ["f16"], n_ctx=16384)
    with pytest.raises(ValueError, match=r"context 60 is too small for the needle test: .* at least \d+"):
        nd.run_needle(smollm2, ["f16"], n_ctx=60)
    with pytest.raises(ValueError, match=r"unknown KV cache type 'tq5'; valid names: f32, f16"):
        nd.run_needle(smollm2, ["f16", "tq5"], n_ctx=1024)
    with pytest.raises(ValueError, match="'K' or 'K/V'"):
        nd.run_needle(smollm2, ["tq3/tq3/tq3"], n_ctx=1024)
    with pytest.raises(ValueError, match=r"depth 2 is outside \[0, 1\]"):
        nd.run_needle(smollm2, ["f16"], n_ctx=1024, depths=[0.5, 2])
    with pytest.raises(ValueError, match="trials must be at least 1"):
        nd.run_needle(smollm2, ["f16"], n_ctx=1024, trials=0)
    with pytest.raises(FileNotFoundError, match="text file not found"):
        nd.run_needle(smollm2, ["f16"], n_ctx=1024, text="/nonexistent.txt")
    with pytest.raises(ValueError, match=r"KV-cache options 'layers=k10:tq9'"):
        nd.run_needle(smollm2, ["tq3"], n_ctx=1024, kv_options="layers=k10:tq9")


def test_kv_options_reach_every_type(nd, smollm2):
    """The per-layer option changes the cache (its size, the bits per value over all layers, counted
    by llama.cpp's allocation) and the label; the pass key is still found at 1K."""
    plain, layered = (nd.run_needle(smollm2, ["tq3"], n_ctx=1024, depths=[0.5], kv_options=o)[0]
                      for o in (None, {"layers": "k10:tq4;v6:tq2"}))
    assert plain.type == "tq3" and layered.type == "tq3 [layers=k10:tq4;v6:tq2]"
    assert plain.bits_per_value == pytest.approx(3.25)
    assert layered.bits_per_value == pytest.approx(3.25)  # one layer's K up a bit, one layer's V down
    assert layered.kv_mib == pytest.approx(plain.kv_mib)
    more = nd.run_needle(smollm2, ["tq3"], n_ctx=1024, depths=[0.5], kv_options="layers=k0-29:tq4")[0]
    assert more.bits_per_value == pytest.approx(3.75) and more.kv_mib > plain.kv_mib
    assert all(r.accuracy() == (1, 1) for r in (plain, layered, more)), [r.trials[0].answer for r in (plain, layered, more)]


# one needle in the middle keeps the test to three 8K prefills (CI's 2 cores); `tq-llama needle`
# reports every depth (docs/results.md, Passkey retrieval): tq3 misses some keys at depth 0.1, so
# only tq4 is held to f16 there (test below)
DEPTHS_8K = [0.5]


@pytest.mark.slow
def test_tq4_and_tq3_retrieve_like_f16_at_8k(nd, smollm2):
    """SmolLM2-135M at its full 8K training context: tq4 and tq3 caches (K and V) find the pass key
    where an f16 cache does, at depth 0.5 (key 60494; about 60 s per prompt on 2 cores). Centring
    statistics taken as measured on a short first ubatch, without RoPE's turn, lose this key ("green.
    The sky is blue.")."""
    results = {r.type: r for r in nd.run_needle(smollm2, ["f16", "tq4", "tq3"], depths=DEPTHS_8K, trials=1,
                                                seed=0, progress=True)}
    f16 = results["f16"]
    assert f16.trials[0].prompt_tokens > 8192 - 32  # the full context, not a shrunken one
    assert f16.accuracy()[0] > 0, "f16 finds no pass key: the test would compare nothing"
    for t in ("tq4", "tq3"):
        for d in DEPTHS_8K:
            assert results[t].accuracy(d) == f16.accuracy(d), (t, d, [x.answer for x in results[t].trials])


@pytest.mark.slow
def test_tq4_retrieves_like_f16_7400_tokens_back(nd, smollm2):
    """Depth 0.1 of 8K: key 60494, 7400 tokens before the question. tq4 finds it as f16 does; this
    pins the 4-bit cache's long-range retrieval (tq3's is measured in docs/results.md)."""
    results = {r.type: r for r in nd.run_needle(smollm2, ["f16", "tq4"], depths=[0.1], trials=1, seed=0,
                                                progress=True)}
    assert results["f16"].accuracy(0.1) == (1, 1), [x.answer for x in results["f16"].trials]
    assert results["tq4"].accuracy(0.1) == (1, 1), [x.answer for x in results["tq4"].trials]


@pytest.mark.slow
def test_needle_command_json(tmp_path):
    if EXE is None:
        pytest.fail("the tq-llama console script is not on PATH: install the package")
    out = tmp_path / "needle.json"
    proc = subprocess.run([EXE, "needle", "--ctx", "1024", "--types", "f16,q8_0/tq3", "--depths", "0.2,0.8",
                           "--trials", "2", "--seed", "5", "--format", "json", "--out", str(out)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "q8_0/tq3: depth 0.2 key" in proc.stderr and "q8_0/tq3: 4/4 prompt" in proc.stderr  # progress
    data = json.loads(out.read_text())
    assert data["meta"]["ctx"] == 1024 and data["meta"]["depths"] == [0.2, 0.8]
    assert [r["type"] for r in data["results"]] == ["f16", "q8_0/tq3"]
    for r in data["results"]:
        assert [(t["depth"], t["trial"]) for t in r["trials"]] == [(0.2, 0), (0.2, 1), (0.8, 0), (0.8, 1)]
        assert all(re.fullmatch(r"\d{5}", t["passkey"]) and t["correct"] == (t["passkey"] in t["answer"])
                   for t in r["trials"])
        assert r["seconds"] > 0 and 0 < r["kv_mib"] < 30
    f16 = {(t["depth"], t["trial"]): t for t in data["results"][0]["trials"]}
    assert all(t["correct"] for t in f16.values()), f16
    # the same prompts for every type
    assert all(t["passkey"] == f16[(t["depth"], t["trial"])]["passkey"] for t in data["results"][1]["trials"])


def test_needle_command_errors():
    if EXE is None:
        pytest.fail("the tq-llama console script is not on PATH: install the package")
    for args, msg in [(["--depths", "0.5,1.5"], "depth 1.5 is outside [0, 1]"),
                      (["--depths", "half"], "--depths takes comma-separated fractions"),
                      (["--ctx", "9000"], "larger than smollm2.gguf's training context (8192)"),
                      (["--types", "f16,tq5"], "unknown KV cache type 'tq5'"),
                      (["--model", "/nonexistent.gguf"], "model file not found: /nonexistent.gguf")]:
        proc = subprocess.run([EXE, "needle", *args], capture_output=True, text=True, timeout=120)
        assert proc.returncode != 0 and msg in proc.stderr, (args, proc.stderr[-2000:])
