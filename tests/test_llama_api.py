"""The Python API over the patched llama.cpp: cache types by name, the checks before llama.cpp is
touched, KV sizes, chat, state save/load and K-shift on a real model (SmolLM2-135M, head size 64)."""
from __future__ import annotations

import ctypes
import os
import re
import struct

import numpy as np
import pytest

from tq_llamacpp import native
from tq_llamacpp._libs import lib_dir
from tq_llamacpp.cache_types import CACHE_TYPES, cache_type, parse_pair
from tq_llamacpp.errors import LlamaError
from tq_llamacpp.divergence import log_probs, mean_kl

pytestmark = pytest.mark.model


def test_cache_table_matches_ggml():
    ggml = ctypes.CDLL(str(lib_dir() / "libggml-base.so"))
    ggml.ggml_type_name.restype = ctypes.c_char_p
    ggml.ggml_type_size.restype = ctypes.c_size_t
    ggml.ggml_blck_size.restype = ctypes.c_int64
    for t in CACHE_TYPES.values():
        assert ggml.ggml_type_name(t.ggml_id).decode() == t.name
        assert ggml.ggml_blck_size(t.ggml_id) == t.block
        assert ggml.ggml_type_size(t.ggml_id) == t.block_bytes
        if t.turboquant:
            assert t.block_bytes == native.block_bytes(t.name)


def test_names_ids_and_errors():
    assert cache_type("tq3") is cache_type(161) is cache_type(" TQ3 ") is cache_type(np.int64(161)) is cache_type("161")
    assert parse_pair("q8_0/tq3") == (CACHE_TYPES["q8_0"], CACHE_TYPES["tq3"])
    with pytest.raises(ValueError, match="valid names: f32, f16"):
        cache_type("tq9")
    with pytest.raises(ValueError, match="unknown KV cache type id 999"):
        cache_type(999)
    with pytest.raises(TypeError):
        cache_type(True)
    with pytest.raises(TypeError, match="not float"):
        cache_type(161.0)
    with pytest.raises(ValueError, match="'K' or 'K/V'"):
        parse_pair("tq3/tq3/tq3")


def test_errors_before_llama_cpp(tq, smollm2, tmp_path):
    with pytest.raises(FileNotFoundError, match="model file not found"):
        tq.Llama(tmp_path / "missing.gguf", type_k="tq3")
    with pytest.raises(ValueError, match="valid names"):
        tq.Llama(smollm2, type_k="tq5")
    with pytest.raises(ValueError, match="needs flash attention"):
        tq.Llama(smollm2, type_v="tq3", flash_attn=False)
    with pytest.raises(ValueError, match="tq4 K cache needs flash attention"):
        tq.Llama(smollm2, type_k="tq4", flash_attn=False)


@pytest.mark.parametrize("kwargs,error,message", [
    # llama_context_params holds these in 32 bits: 2**32 + 512 reached llama.cpp as 512
    ({"n_ctx": (1 << 32) + 512}, ValueError, r"n_ctx = 4294967808 is absurdly large: llama.cpp holds it in 32 bits"),
    ({"n_ubatch": 1 << 33}, ValueError, "n_ubatch = 8589934592 is absurdly large"),
    ({"n_ctx": -5}, ValueError, "n_ctx must be at least 0, got -5"),
    ({"n_batch": 0}, ValueError, "n_batch must be at least 1, got 0"),
    ({"n_batch": -1}, ValueError, "n_batch must be at least 1, got -1"),
    ({"n_ctx": 512.0}, TypeError, "n_ctx must be an int, not float"),
    ({"n_ubatch": True}, TypeError, "n_ubatch must be an int, not bool"),
])
def test_context_sizes_before_llama_cpp(tq, smollm2, kwargs, error, message):
    from tq_llamacpp.errors import TqError

    with pytest.raises(error, match=message) as info:
        tq.Llama(smollm2, type_k="tq3", type_v="tq3", **kwargs)
    assert isinstance(info.value, TqError)


def _tiny_gguf(path, head_dim=64, **keys):
    """A metadata-only GGUF of a llama (gguf's writer); `keys` override or add llama.* values
    (80 is a real head size: e.g. Phi-2)."""
    from gguf import GGUFWriter

    values = {"block_count": 2, "embedding_length": head_dim * 4, "attention.head_count": 4, **keys}
    w = GGUFWriter(str(path), "llama")
    for key, value in values.items():
        if isinstance(value, list):
            w.add_array(f"llama.{key}", value)
        else:
            w.add_uint32(f"llama.{key}", value)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.close()
    return path


def test_unsupported_head_size(tq, tmp_path):
    m = _tiny_gguf(tmp_path / "hd80.gguf", 80)
    with pytest.raises(ValueError, match="head size 80 .* tq3 cache cannot code: tq3 needs a multiple of 64"):
        tq.Llama(m, type_k="tq3", type_v="tq3")
    assert tq.kv_bytes(m, "f16", n_ctx=256) == 2 * 256 * 2 * (320 * 2)
    big = _tiny_gguf(tmp_path / "hd2048.gguf", 2048)
    with pytest.raises(ValueError, match="head size 2048 for K: the tq3 cache codes head sizes up to 1024"):
        tq.Llama(big, type_k="tq3")


@pytest.mark.parametrize("keys,message", [
    ({"block_count": 100000}, "block_count = 100000 is more than llama.cpp supports"),
    ({"attention.head_count": 0}, "head_count is 0 in every layer"),
    ({"block_count": 0}, "block_count is 0"),
    ({"attention.head_count": [4, 4, 4]}, "has 3 entries for 2 layers"),
    ({"expert_count": 5000}, "expert_count = 5000 is more than llama.cpp supports"),
])
def test_model_values_llama_cpp_would_abort_on(tq, tmp_path, keys, message):
    """Refused before llama.cpp loads the file: llama.cpp itself aborts the whole process
    (GGML_ASSERT) on some of these."""
    from tq_llamacpp.errors import GGUFError

    m = _tiny_gguf(tmp_path / "bad.gguf", **keys)
    for call in (lambda: tq.Llama(m, type_k="tq3"), lambda: tq.kv_bytes(m, "tq3")):
        with pytest.raises(GGUFError, match=message) as info:
            call()
        assert "bad.gguf" in str(info.value) and isinstance(info.value, ValueError)


def test_damaged_files_name_the_file(tq, tmp_path, smollm2):
    from tq_llamacpp.errors import GGUFError

    good = _tiny_gguf(tmp_path / "good.gguf").read_bytes()
    cases = {
        "truncated.gguf": (good[:40], "truncated.gguf is truncated or damaged"),
        "empty.gguf": (b"", "empty.gguf is not a GGUF file"),
        "text.gguf": (b"hello, not a model" * 8, "text.gguf is not a GGUF file"),
        # the first key's length says 2**60 bytes
        "huge.gguf": (good[:24] + struct.pack("<Q", 1 << 60) + good[32:], "huge.gguf is truncated or damaged: .* needs "
                      "1152921504606846976 bytes"),
        "cut.gguf": (smollm2.read_bytes()[:1_000_000], "cut.gguf is truncated or damaged"),
    }
    for name, (blob, message) in cases.items():
        (tmp_path / name).write_bytes(blob)
        with pytest.raises(GGUFError, match=message):
            tq.Llama(tmp_path / name, type_k="tq3")
    with pytest.raises(FileNotFoundError, match="model file not found"):
        tq.kv_bytes(tmp_path / "missing.gguf", "tq3")


def test_kv_bytes_arguments(tq, smollm2):
    with pytest.raises(ValueError, match="n_ctx must be at least 1, got -5"):
        tq.kv_bytes(smollm2, "tq3", "tq3", -5)
    with pytest.raises(ValueError, match="n_ctx must be at least 1, got 0"):
        tq.kv_bytes(smollm2, "tq3", n_ctx=0)
    with pytest.raises(TypeError, match="n_ctx must be an int, not float"):
        tq.kv_bytes(smollm2, "tq3", n_ctx=512.0)
    with pytest.raises(ValueError, match="absurdly large"):
        tq.kv_bytes(smollm2, "tq3", n_ctx=1 << 50)
    assert tq.kv_bytes(smollm2, np.int64(161), n_ctx=np.int32(512)) == tq.kv_bytes(smollm2, "TQ3", n_ctx=512)


def test_kv_bytes_refuses_layers_a_context_refuses(tq, smollm2, monkeypatch):
    """Per-layer types on a cache that is not tq: the error the context gives, from kv_options or from
    LLAMA_KV_LAYERS (which a context reads too), not the bytes of a cache llama.cpp would not make."""
    with pytest.raises(ValueError, match="per-layer K types need a tq K cache, not f16"):
        tq.kv_bytes(smollm2, "f16", "tq3", kv_options={"layers": "k0:tq4"})
    monkeypatch.setenv("LLAMA_KV_LAYERS", "v2:tq4")
    with pytest.raises(ValueError, match="per-layer V types need a tq V cache, not q8_0"):
        tq.kv_bytes(smollm2, "tq3", "q8_0")
    assert tq.kv_bytes(smollm2, "tq3", "tq3", n_ctx=256) == 2 * 256 * 30 * 3 * 26 + 256 * 3 * (34 - 26)
    # an empty `layers` overrides the variable: what needle counts its f16 reference with
    assert tq.kv_bytes(smollm2, "f16", n_ctx=256, kv_options={"layers": ""}) == 2 * 256 * 30 * 192 * 2


def test_strings_and_ints_run(tq, smollm2):
    for k, v in [("tq3", "tq3"), (161, 162), ("q8_0", "tq3"), ("f16", "tq2")]:
        llm = tq.Llama(smollm2, type_k=k, type_v=v, n_ctx=256, verbose=False)
        assert llm.context_params.type_k == cache_type(k).ggml_id
        assert llm.context_params.type_v == cache_type(v).ggml_id
        out = llm("The capital of France is", max_tokens=4, temperature=0)
        assert out["choices"][0]["text"].strip()
        llm.close()


def test_kv_bytes_matches_llama_cpp(tq, smollm2, capfd):
    """llama.cpp logs the cache it allocates: 'llama_kv_cache: size = X MiB'."""
    for k, v, opts in [("f16", "f16", None), ("tq3", "tq3", None), ("q8_0", "tq2", None),
                       ("tq3", "tq3", "layers=k0-3+10:tq4;v5+7:tq2")]:
        llm = tq.Llama(smollm2, type_k=k, type_v=v, n_ctx=1000, verbose=True, kv_options=opts)
        llm.close()
        # the cache's own lines, not those of the context that calibrates its statistics
        err = capfd.readouterr().err.split("calibrating the KV centring")[0]
        sizes = [float(s) for s in re.findall(r"llama_kv_cache: size =\s*([\d.]+) MiB", err)]
        assert sizes, err[-2000:]
        assert abs(sum(sizes) - tq.kv_bytes(smollm2, k, v, n_ctx=1000, kv_options=opts) / 2**20) < 0.01
    # five layers' K one bit up, two layers' V one bit down: 3 more bits per 30 layers x 2 sides
    per_layer = tq.kv_bytes(smollm2, "tq3", n_ctx=8192, kv_options={"layers": "k0-3+10:tq4;v5+7:tq2"})
    assert per_layer / tq.kv_bytes(smollm2, "tq3", n_ctx=8192) == pytest.approx((3.25 * 60 + 3) / (3.25 * 60))
    with pytest.raises(ValueError, match="layer 30 does not exist"):
        tq.kv_bytes(smollm2, "tq3", kv_options="layers=k30:tq4")
    # tq3 holds the same context in 16 / 3.25 less memory than f16
    assert tq.kv_bytes(smollm2, "f16", n_ctx=8192) / tq.kv_bytes(smollm2, "tq3", n_ctx=8192) == pytest.approx(16 / 3.25)


def test_chat_is_deterministic_with_a_seed(tq, smollm2):
    from tq_llamacpp.chat import chat

    replies = []
    for _ in range(2):
        llm = tq.Llama(smollm2, type_k="tq3", type_v="tq3", n_ctx=512, seed=7, verbose=False)
        with open(os.devnull, "w") as devnull:
            msgs = chat(llm, prompts=["Name a color."], out=devnull, max_tokens=16)
        replies.append(msgs[-1]["content"])
        llm.close()
    assert replies[0].strip() and replies[0] == replies[1]


def _greedy(llm, n):
    toks = []
    for _ in range(n):
        t = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        toks.append(t)
        llm.eval([t])
    return toks


@pytest.mark.parametrize("type", ["tq3", "tq4"])
def test_state_save_load_round_trip(tq, smollm2, type):
    llm = tq.Llama(smollm2, type_k=type, type_v=type, n_ctx=256, logits_all=True, verbose=False)
    llm.eval(llm.tokenize(b"It is a truth universally acknowledged, that a single man"))
    state = llm.save_state()
    first = _greedy(llm, 12)
    llm.reset()
    llm.load_state(state)
    assert _greedy(llm, 12) == first
    llm.close()


def test_k_shift_continues(tq, smollm2):
    """Drop tokens from the middle and shift the rest back: the K-shift re-applies RoPE to the coded
    keys (tq -> f32 -> rope -> tq). The tq4 cache must then go on predicting like an f16 cache that did
    the same. (The ops themselves are checked exactly by test-backend-ops CPY/ROPE cases.)"""
    from llama_cpp import llama_cpp as C

    text = b"It is a truth universally acknowledged, that a single man in possession of a good fortune, must be " \
           b"in want of a wife. However little known the feelings or views of such a man may be on his first " \
           b"entering a neighbourhood, this truth is so well fixed in the minds of the surrounding families, that"
    cut = (5, 45)

    def run(type, **kw):
        llm = tq.Llama(smollm2, type_k=type, type_v=type, n_ctx=256, logits_all=True, verbose=False, **kw)
        toks = llm.tokenize(text)
        llm.eval(toks)
        mem = C.llama_get_memory(llm.ctx)
        n, k = len(toks), cut[1] - cut[0]
        assert C.llama_memory_seq_rm(mem, 0, cut[0], cut[1])
        C.llama_memory_seq_add(mem, 0, cut[1], n, -k)
        llm.n_tokens = n - k
        llm.eval(llm.tokenize(b" he", add_bos=False))
        out = np.array(llm.scores[llm.n_tokens - 1])
        llm.close()
        return out

    f16, tq4 = run("f16"), run("tq4")
    # the re-coded keys move the logits a little; the f16 choice stays among tq4's first three
    assert np.argmax(f16) in np.argsort(tq4)[-3:]
    assert np.corrcoef(f16, tq4)[0, 1] > 0.98
    # exactness of the shift itself: a q8_0 K cache stored centred and equalized (kv_center="k"), and
    # centred only (equalize=0), shifts s R(k - mu + mu) - s mu, so it must follow f16 as closely as
    # the plain q8_0 cache does
    plain, equalized = run("q8_0"), run("q8_0", kv_center="k")
    centred = run("q8_0", kv_center="k", kv_options={"equalize": 0})
    r_plain = np.corrcoef(f16, plain)[0, 1]
    for r in (np.corrcoef(f16, centred)[0, 1], np.corrcoef(f16, equalized)[0, 1]):
        assert r_plain > 0.999 and r > 0.999
        assert abs(r_plain - r) < 5e-4


_TEXT = (b"It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in want "
         b"of a wife. However little known the feelings or views of such a man may be on his first entering a "
         b"neighbourhood, this truth is so well fixed in the minds of the surrounding families, that he is considered")


def _last_logits(tq, model, type, **kw):
    llm = tq.Llama(model, type_k=type, type_v=type, n_ctx=256, logits_all=True, verbose=False, **kw)
    llm.eval(llm.tokenize(_TEXT))
    out = np.array(llm.scores[llm.n_tokens - 1])
    llm.close()
    return out


def test_centring_is_exact(tq, smollm2):
    """Storing k - mu_k and v - mu_v (V added back per query head through its KV head, GQA 3 here)
    changes nothing but rounding: a q8_0 cache centred both ways follows f16 as closely as plain q8_0."""
    f16 = _last_logits(tq, smollm2, "f16")
    plain = np.corrcoef(f16, _last_logits(tq, smollm2, "q8_0", kv_center="off"))[0, 1]
    centred = np.corrcoef(f16, _last_logits(tq, smollm2, "q8_0", kv_center="kv"))[0, 1]
    assert plain > 0.999 and centred > 0.999
    assert abs(plain - centred) < 5e-4


def test_centring_helps_tq3(tq, smollm2):
    f16 = _last_logits(tq, smollm2, "f16")
    off = np.corrcoef(f16, _last_logits(tq, smollm2, "tq3", kv_center="off"))[0, 1]
    auto = np.corrcoef(f16, _last_logits(tq, smollm2, "tq3"))[0, 1]
    assert auto > off


def test_centring_errors(tq, smollm2):
    with pytest.raises(ValueError, match="kv_center"):
        tq.Llama(smollm2, type_k="tq3", type_v="tq3", kv_center="sometimes")
    with pytest.raises(ValueError, match="stats must be calib or first, not 'often'"):
        tq.Llama(smollm2, type_k="tq3", kv_options="stats=often")
    with pytest.raises(ValueError, match="unknown KV-cache option 'colour'"):
        tq.Llama(smollm2, type_k="tq3", kv_options={"colour": "red"})
    # a state saved from a centred cache does not load into an uncentred one: an error with
    # llama.cpp's reason, not garbage
    llm = tq.Llama(smollm2, type_k="tq3", type_v="tq3", n_ctx=128, verbose=False)
    llm.eval(llm.tokenize(b"It is a truth universally acknowledged"))
    state = llm.save_state()
    llm.close()
    other = tq.Llama(smollm2, type_k="tq3", type_v="tq3", n_ctx=128, verbose=False, kv_center="off")
    with pytest.raises(LlamaError, match="cannot load the saved state: .*KV mean-centring differs: the state has centred K 1"):
        other.load_state(state)
    other.close()


def test_keys_centred_before_rope(tq, smollm2):
    """rope=auto (the default) centres a CPU tq cache's keys before RoPE: k - R(p) mu0 is stored and
    attention adds q.R(p) mu0 back per key. It must track f16 at least as well as centring after
    RoPE, carry the extra statistics in its state (a state of the other kind does not load), and
    keep both choices apart in the option's errors."""
    f16 = _last_logits(tq, smollm2, "f16")
    r = {m: np.corrcoef(f16, _last_logits(tq, smollm2, "tq3t", kv_options={"rope": m}))[0, 1]
         for m in ("post", "pre", "auto")}
    assert r["auto"] == r["pre"] and r["pre"] > r["post"] > 0.99, r
    sizes = {}
    for m in ("pre", "post"):
        llm = tq.Llama(smollm2, type_k="tq3", type_v="tq3", n_ctx=128, verbose=False, kv_options={"rope": m})
        llm.eval(llm.tokenize(b"It is a truth universally acknowledged"))
        sizes[m] = (llama_cpp_state_size(llm), llm.save_state())
        llm.close()
    # one more [head size x KV heads] of floats per layer: 64 * 3 * 30 * 4 bytes
    assert sizes["pre"][0] - sizes["post"][0] == 64 * 3 * 30 * 4
    other = tq.Llama(smollm2, type_k="tq3", type_v="tq3", n_ctx=128, verbose=False, kv_options={"rope": "post"})
    with pytest.raises(LlamaError, match="KV mean-centring differs: .*before RoPE 1, this cache 1 0 1 0"):
        other.load_state(sizes["pre"][1])
    other.close()
    with pytest.raises(ValueError, match="rope must be auto, pre or post .*, not 'middle'"):
        tq.Llama(smollm2, type_k="tq3", kv_options={"rope": "middle"})
    # asked for where flash attention cannot add the offset back: an error, not a quiet fallback
    with pytest.raises(LlamaError, match="rope=pre: the K cache is not a tq type"):
        tq.Llama(smollm2, type_k="q8_0", type_v="q8_0", n_ctx=128, verbose=False, flash_attn=True,
                 kv_center="k", kv_options={"rope": "pre"})


def test_key_offset_gives_the_terms_scores(tq, smollm2):
    """Keys centred before RoPE: a ubatch of 64 tokens and more has attention add each key's offset
    H(s R(p) mu0) to the keys it decodes (key_offset=1, the default), in place of the per-key term
    q.R(p) mu0 on the scores (key_offset=0, what shorter ubatches use). The scores are the same to
    float rounding (layer 0's attention output agrees to 6e-7; tests/test_ggml_ops.py has the op
    against its reference), but a rounding difference that moves one code of a later layer's cache
    moves every layer after it, so over a prompt the two differ as two tq caches do: each as close
    to f16 as the other, both closer than keys centred after RoPE."""
    text = _TEXT + b" " + _TEXT

    def lp(type, **opts):
        llm = tq.Llama(smollm2, type_k=type, type_v=type, n_ctx=256, logits_all=True, verbose=False, kv_options=opts)
        toks = llm.tokenize(text)
        assert len(toks) >= 64
        out = log_probs(llm, toks)
        llm.close()
        return out

    f16 = lp("f16")
    kl = {k: mean_kl(f16, lp("tq3", **o))[0] for k, o in
          (("offset", {}), ("term", {"key_offset": 0}), ("post", {"rope": "post"}))}
    # two realizations of the cache's noise over 128 positions: 0.039 and 0.052-0.064 measured; an
    # offset without its rotation measures 3.7
    assert kl["offset"] < 2.0 * kl["term"] and kl["term"] < 2.0 * kl["offset"], kl
    assert max(kl["offset"], kl["term"]) < kl["post"], kl
    with pytest.raises(ValueError, match="key_offset must be 1 or 0, not 'sometimes'"):
        tq.Llama(smollm2, type_k="tq3", kv_options={"key_offset": "sometimes"})


def test_per_layer_types(tq, smollm2):
    """The KV option `layers` gives single layers another tq type: a tq3 cache whose 30 layers all
    hold K in tq4 is a tq4/tq3 cache, logit for logit; a mix runs and differs from both."""
    def logits(k, v, **kw):
        llm = tq.Llama(smollm2, type_k=k, type_v=v, n_ctx=256, logits_all=True, verbose=False, **kw)
        llm.eval(llm.tokenize(_TEXT))
        out = np.array(llm.scores[llm.n_tokens - 1])
        llm.close()
        return out

    pair = logits("tq4", "tq3")
    np.testing.assert_array_equal(logits("tq3", "tq3", kv_options={"layers": "k0-29:tq4"}), pair)
    mixed = logits("tq3", "tq3", kv_options="layers=k0-3+7:tq4;v20-29:tq2")
    assert np.isfinite(mixed).all() and not np.array_equal(mixed, pair)
    with pytest.raises(LlamaError, match="per-layer K types need a tq K cache, not f16"):
        tq.Llama(smollm2, type_k="f16", type_v="tq3", n_ctx=128, verbose=False, kv_options="layers=k0:tq4")
    with pytest.raises(LlamaError, match="layer 30 does not exist \\(the model has 30\\)"):
        tq.Llama(smollm2, type_k="tq3", type_v="tq3", n_ctx=128, verbose=False, kv_options="layers=v2+30:tq4")
    with pytest.raises(ValueError, match=r"a layer's type must be a tq type \(tq2, tq3, tq4, tq3j, tq4j, tq2t, tq3t, tq2ts, tq3ts\), not 'q8_0'"):
        tq.Llama(smollm2, type_k="tq3", kv_options="layers=k0-3:q8_0")
    for bad in ("x0:tq4", "k:tq4", "k3-1:tq4", "k0-:tq4", "k0tq4"):
        with pytest.raises(ValueError, match="is not k\\|v<layers>:<tq type>"):
            tq.Llama(smollm2, type_k="tq3", kv_options={"layers": bad})


def test_bits_chooses_the_layers(tq):
    """The KV option `bits`: K of layers 0, 1, ... one type up, then V, while the average bits per
    value (what a token adds to the cache, every scale counted) stay within it."""
    from tq_llamacpp.llama import layer_types

    def moved(n_layer, bits, k, v, kv=192, **kw):
        lk, lv = layer_types(n_layer, {"bits": bits, **kw}, k, v, [kv] * n_layer, [kv] * n_layer)
        return ([i for i, t in enumerate(lk) if t], {t.name for t in lk if t},
                [i for i, t in enumerate(lv) if t], {t.name for t in lv if t})

    # tq2ts 2.125 bits, tq3ts 3.125: 2.5 bits leave 0.375 x 60 tensors = 22 keys for SmolLM2's 30 layers,
    # 13 for Gemma-3's 18, 18 for Qwen2.5's 24
    assert moved(30, 2.5, "tq2ts", "tq2ts") == (list(range(22)), {"tq3ts"}, [], set())
    assert moved(18, 2.5, "tq2ts", "tq2ts", kv=256) == (list(range(13)), {"tq3ts"}, [], set())
    assert moved(24, "2.5", "tq2ts", "tq2ts", kv=128) == (list(range(18)), {"tq3ts"}, [], set())
    # every key up (2.625), then values: 0.375 x 60 = 22
    assert moved(30, 3, "tq2ts", "tq2ts") == (list(range(30)), {"tq3ts"}, list(range(22)), {"tq3ts"})
    assert moved(30, 3.5, "tq3", "tq3") == (list(range(15)), {"tq4"}, [], set())
    assert moved(30, 2.875, "tq2t", "tq2") == (list(range(30)), {"tq3t"}, list(range(7)), {"tq3"})
    assert moved(30, 2.125, "tq2ts", "tq2ts") == ([], set(), [], set())
    # a layer without a cache takes no bits and no type
    lk, _ = layer_types(4, {"bits": 2.6}, "tq2", "tq2", [64, 0, 64, 64], [64, 0, 64, 64])
    assert [t.name if t else None for t in lk] == ["tq3", None, "tq3", None]
    with pytest.raises(ValueError, match=r"bits=2 is below the cache's own 2.125 bits per value \(tq2ts/tq2ts\)"):
        moved(30, 2, "tq2ts", "tq2ts")
    with pytest.raises(ValueError, match="bits=2.5 needs a K cache of tq2, tq2t, tq2ts, tq3 or tq3t .*not tq4"):
        moved(30, 2.5, "tq4", "tq2")
    with pytest.raises(ValueError, match="options bits and layers both set"):
        moved(30, 2.5, "tq2", "tq2", layers="k0:tq3")
    for bad in ("2.5x", "0.5", "17", "nan", "-3"):
        with pytest.raises(ValueError, match=f"bits must be a number of bits per value from 1 to 16, .*not '{bad}'"):
            moved(30, bad, "tq2", "tq2")


def test_bits_is_the_layers_it_names(tq, smollm2, capfd):
    """A context with bits=2.5 runs the cache that `layers` spells out, logit for logit, says which
    in its log, and kv_bytes counts it alike."""
    def logits(**opts):
        llm = tq.Llama(smollm2, type_k="tq2ts", type_v="tq2ts", n_ctx=256, logits_all=True, verbose=True,
                       kv_options=opts)
        llm.eval(llm.tokenize(_TEXT))
        out = np.array(llm.scores[llm.n_tokens - 1])
        llm.close()
        return out

    by_bits = logits(bits=2.5)
    assert "KV-cache option bits=2.5: K of layers 0-21 in tq3ts" in capfd.readouterr().err
    np.testing.assert_array_equal(by_bits, logits(layers="k0-21:tq3ts"))
    assert not np.array_equal(by_bits, logits())
    assert tq.kv_bytes(smollm2, "tq2ts", n_ctx=4096, kv_options={"bits": 2.5}) == \
        tq.kv_bytes(smollm2, "tq2ts", n_ctx=4096, kv_options={"layers": "k0-21:tq3ts"})
    with pytest.raises(LlamaError, match="bits=2.5 needs a K cache of tq2, tq2t, tq2ts, tq3 or tq3t .*not q8_0"):
        tq.Llama(smollm2, type_k="q8_0", type_v="tq3", n_ctx=128, verbose=False, kv_options={"bits": 2.5})


def test_a_model_llama_cpp_cannot_load_says_why(tq, tmp_path):
    m = tmp_path / "weights-missing.gguf"
    _tiny_gguf(m)
    with pytest.raises(LlamaError, match="llama.cpp refused weights-missing.gguf: .*") as info:
        tq.Llama(m, type_k="tq3", verbose=False)
    assert "Failed to load model" not in str(info.value)  # llama.cpp's reason, not llama-cpp-python's wrapper


def test_threads_keep_their_own_options(tq, smollm2):
    """The KV-cache options reach llama.cpp per thread: two threads making contexts at once with
    different centring each get their own (a centred tq cache's state carries its statistics, so the
    state size tells which one a context got)."""
    import threading

    def state_size(center):
        llm = tq.Llama(smollm2, type_k="tq3", type_v="tq3", n_ctx=128, verbose=False, kv_center=center)
        llm.eval(llm.tokenize(b"Hello"))
        n = llama_cpp_state_size(llm)
        llm.close()
        return n

    want = {c: state_size(c) for c in ("off", "auto")}
    assert want["auto"] > want["off"]
    got: dict = {}
    errors = []

    def work(center, i):
        try:
            got[(center, i)] = state_size(center)
        except Exception as exc:  # noqa: BLE001  reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(c, i)) for i in range(3) for c in ("off", "auto")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert all(n == want[c] for (c, _), n in got.items()), (got, want)


def llama_cpp_state_size(llm) -> int:
    from tq_llamacpp.llama import llama_cpp

    return llama_cpp.llama_state_get_size(llm.ctx)


def test_compare_spec_centring(tq):
    from tq_llamacpp.llama import parse_spec

    k, v, mode = parse_spec("q8_0/tq3@kv")
    assert (k.name, v.name, mode) == ("q8_0", "tq3", "kv")
    assert parse_spec("tq3@off")[2] == "off" and parse_spec("tq3")[2] is None
    with pytest.raises(ValueError, match="unknown centring '@sometimes'"):
        parse_spec("tq3@sometimes")
