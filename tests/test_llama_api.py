"""The Python API over the patched llama.cpp: cache types by name, the checks before llama.cpp is
touched, KV sizes, chat, state save/load and K-shift on a real model (SmolLM2-135M, head size 64)."""
from __future__ import annotations

import ctypes
import struct

import numpy as np
import pytest

from tq_llamacpp import native
from tq_llamacpp._libs import lib_dir
from tq_llamacpp.cache_types import CACHE_TYPES, cache_type, parse_pair
from tq_llamacpp.data import model_path

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def smollm2():
    return model_path("smollm2")


@pytest.fixture(scope="module")
def tq():
    import tq_llamacpp
    import tq_llamacpp.llama  # noqa: F401  binds llama_cpp to the patched libraries before any test imports it

    return tq_llamacpp


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
    assert cache_type("tq3") is cache_type(161) is cache_type(" TQ3 ")
    assert parse_pair("q8_0/tq3") == (CACHE_TYPES["q8_0"], CACHE_TYPES["tq3"])
    with pytest.raises(ValueError, match="valid names: f32, f16"):
        cache_type("tq9")
    with pytest.raises(ValueError, match="unknown KV cache type id 999"):
        cache_type(999)
    with pytest.raises(TypeError):
        cache_type(True)
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


def _tiny_gguf(path, head_dim):
    """A metadata-only GGUF of a llama with the given head size (80 is real: e.g. Phi-2)."""
    kv = [("general.architecture", 8, "llama"), ("llama.block_count", 4, 2),
          ("llama.embedding_length", 4, head_dim * 4), ("llama.attention.head_count", 4, 4)]
    out = bytearray(b"GGUF" + struct.pack("<IQQ", 3, 0, len(kv)))
    for key, vtype, val in kv:
        out += struct.pack("<Q", len(key)) + key.encode() + struct.pack("<I", vtype)
        out += struct.pack("<Q", len(val)) + val.encode() if vtype == 8 else struct.pack("<I", val)
    path.write_bytes(bytes(out))
    return path


def test_unsupported_head_size(tq, tmp_path):
    m = _tiny_gguf(tmp_path / "hd80.gguf", 80)
    with pytest.raises(ValueError, match="head size 80 .* tq3 cache cannot code: tq3 needs a multiple of 64"):
        tq.Llama(m, type_k="tq3", type_v="tq3")
    assert tq.kv_bytes(m, "f16", n_ctx=256) == 2 * 256 * 2 * (320 * 2)


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
    for k, v in [("f16", "f16"), ("tq3", "tq3"), ("q8_0", "tq2")]:
        llm = tq.Llama(smollm2, type_k=k, type_v=v, n_ctx=1000, verbose=True)
        llm.close()
        err = capfd.readouterr().err
        sizes = [float(s) for s in __import__("re").findall(r"llama_kv_cache: size =\s*([\d.]+) MiB", err)]
        assert sizes, err[-2000:]
        assert abs(sum(sizes) - tq.kv_bytes(smollm2, k, v, n_ctx=1000) / 2**20) < 0.01
    # tq3 holds the same context in 16 / 3.25 less memory than f16
    assert tq.kv_bytes(smollm2, "f16", n_ctx=8192) / tq.kv_bytes(smollm2, "tq3", n_ctx=8192) == pytest.approx(16 / 3.25)


def test_chat_is_deterministic_with_a_seed(tq, smollm2):
    from tq_llamacpp.chat import chat

    replies = []
    for _ in range(2):
        llm = tq.Llama(smollm2, type_k="tq3", type_v="tq3", n_ctx=512, seed=7, verbose=False)
        msgs = chat(llm, prompts=["Name a color."], out=open("/dev/null", "w"), max_tokens=16)
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


def test_k_shift_continues(tq, smollm2, monkeypatch):
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
    # centred only (LLAMA_KV_EQUALIZE=0), shifts s R(k - mu + mu) - s mu, so it must follow f16 as
    # closely as the plain q8_0 cache does
    plain, equalized = run("q8_0"), run("q8_0", kv_center="k")
    monkeypatch.setenv("LLAMA_KV_EQUALIZE", "0")
    centred = run("q8_0", kv_center="k")
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
    # a state saved from a centred cache does not load into an uncentred one: an error, not garbage
    llm = tq.Llama(smollm2, type_k="tq3", type_v="tq3", n_ctx=128, verbose=False)
    llm.eval(llm.tokenize(b"It is a truth universally acknowledged"))
    state = llm.save_state()
    llm.close()
    other = tq.Llama(smollm2, type_k="tq3", type_v="tq3", n_ctx=128, verbose=False, kv_center="off")
    with pytest.raises(Exception):
        other.load_state(state)
    other.close()


def test_compare_spec_centring(tq):
    from tq_llamacpp.compare import parse_spec

    k, v, mode = parse_spec("q8_0/tq3@kv")
    assert (k.name, v.name, mode) == ("q8_0", "tq3", "kv")
    assert parse_spec("tq3@off")[2] == "0" and parse_spec("tq3")[2] is None
    with pytest.raises(ValueError, match="unknown centring '@sometimes'"):
        parse_spec("tq3@sometimes")
