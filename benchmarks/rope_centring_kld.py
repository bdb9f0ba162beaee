#!/usr/bin/env python3
"""End-to-end KLD of centring the keys before RoPE, simulated before it is built.

rope_offset_study.py measures the lever at one layer (the keys' logit error); this measures what
the model's next-token distribution makes of it. The model runs with an f16 cache on the CPU;
an eval callback overwrites each layer's post-RoPE keys, before they enter the cache, with what a
K-only tq cache would give back:

  post: k^ = mu + H'(code(H (s (k - mu)))) / s, mu the keys' mean after RoPE (the cache today)
  pre:  the same with mu replaced by R(pos) m0, m0 the mean before RoPE (attention would add
        q . R(pos) m0 back per key; here the keys carry it, so the logits are those it would give)
  f16:  the keys untouched (the reference)

mu, m0 and the factors s = (E[q^2] / var k)^(1/4) (docs/method.md) come from the chunk itself, for
both variants alike; position 0 (BOS) is kept exact, as the cache's first-token code word keeps
it. Values stay f16, or with --type-v go to a real tq V cache (then a third run, "V only", leaves
the keys untouched), so that a whole K/V setting is projected. KLD as llama-perplexity reports it:
the mean over the second half of each chunk of n_ctx tokens (BOS first) of Pride and Prejudice,
against an f16/f16 run.

    python benchmarks/rope_centring_kld.py [--model smollm2] [--ctx 4096] [--chunks 2] [--type tq3t] [--type-v f16]

Models with one RoPE base and llama's adjacent pairs or NEOX halves (rope_offset_study.rope_of).
"""
from __future__ import annotations

import argparse
import ctypes
import re
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import kv_layer_study  # noqa: E402  (_Tensor, hadamard)
import rope_offset_study  # noqa: E402  (rope_of, rotate)

from tq_llamacpp import native  # noqa: E402
from tq_llamacpp._libs import import_llama_cpp, lib_dir  # noqa: E402
from tq_llamacpp.data import model_path, text_path  # noqa: E402
from tq_llamacpp.llama import cache_type  # noqa: E402


def code_keys(K: np.ndarray, Q: np.ndarray, mode: str, ang: np.ndarray, neox: bool, type: str) -> np.ndarray:
    """K [n, kv heads, d] post-RoPE keys as a K-only tq cache centred `mode` gives them back."""
    n, nh, d = K.shape
    g = Q.shape[1] // nh
    H = kv_layer_study.hadamard(d)
    if mode == "post":
        off = np.broadcast_to(K[1:].mean(0), K.shape)
    else:
        pre = rope_offset_study.rotate(K, ang, neox, -1.0)
        off = rope_offset_study.rotate(np.broadcast_to(pre[1:].mean(0), K.shape).copy(), ang, neox, 1.0)
    kc = K - off
    q2 = np.mean(Q[1:].reshape(n - 1, nh, g, d) ** 2, axis=(0, 2))              # [heads, d]
    s = (q2 / np.maximum(np.var(kc[1:], 0), 1e-12)) ** 0.25
    # a floor at 1 % of the head's mean factor, the same for both variants (the cache instead adds 1 %
    # of the layer's average to E[q^2] and to var k, tq-kv-center.cpp; only the ratio is read here)
    s = np.maximum(s, 0.01 * s.mean(-1, keepdims=True))
    y = np.ascontiguousarray(((kc * s) @ H.T).reshape(-1, d), np.float32)
    yq = native.dequantize(native.quantize(y, type), type).reshape(kc.shape)
    out = (yq @ H) / s + off
    out[0] = K[0]                                                                 # BOS exact
    return out


def run(model: str, ctx: int, chunks: int, mode: str, type: str, base: float, neox: bool, type_v: str = "f16") -> np.ndarray:
    """Log-probabilities [chunks, ctx/2 - 1, vocab] of the second half of each chunk, keys per mode."""
    L = import_llama_cpp()
    ggml = ctypes.CDLL(str(lib_dir() / "libggml-base.so"))
    ggml.ggml_get_name.restype, ggml.ggml_get_name.argtypes = ctypes.c_char_p, [ctypes.c_void_p]
    ggml.ggml_op_name.restype, ggml.ggml_op_name.argtypes = ctypes.c_char_p, [ctypes.c_int]
    d_ang: dict[tuple[int, int], np.ndarray] = {}
    qs: dict[str, np.ndarray] = {}
    bad: list[str] = []

    @L.ggml_backend_sched_eval_callback
    def cb(tp, ask, _ud):
        t = kv_layer_study._Tensor.from_address(tp)
        name = t.name.decode()
        if name != ggml.ggml_get_name(tp).decode():
            bad.append(name)
            return False
        # the post-RoPE Q and K of each layer (the names repeat before RoPE; the op tells them apart)
        want = re.fullmatch(r"(Qcur|Kcur)-\d+", name) is not None and ggml.ggml_op_name(t.op) == b"ROPE"
        if ask or not want:
            return want if ask else True
        ne = list(t.ne)
        if t.type != 0 or t.nb[1] != 4 * ne[0] or t.nb[2] != 4 * ne[0] * ne[1]:
            bad.append(name)
            return True
        a = np.ctypeslib.as_array((ctypes.c_float * (ne[0] * ne[1] * ne[2])).from_address(t.data)).reshape(ne[2], ne[1], ne[0])
        il = int(name.split("-")[1])
        if name.startswith("Qcur"):
            qs[il] = a.astype(np.float64)
        elif mode != "f16":
            if il not in qs:
                bad.append(f"{name} before its Qcur")
                return True
            d = ne[0]
            if (ne[2], d) not in d_ang:  # a tq V cache's calibration runs shorter ubatches through here too
                d_ang[(ne[2], d)] = np.arange(ne[2])[:, None] * (base ** (-np.arange(0, d, 2) / d))[None, :]
            a[...] = code_keys(a.astype(np.float64), qs[il], mode, d_ang[(ne[2], d)], neox, type).astype(np.float32)
        return True

    L.llama_backend_init()
    m = L.llama_model_load_from_file(str(model_path(model)).encode(), L.llama_model_default_params())
    cp = L.llama_context_default_params()
    cp.n_ctx = cp.n_batch = cp.n_ubatch = ctx      # one ubatch: every key of a chunk in one callback
    cp.cb_eval = cb
    if type_v != "f16":
        cp.type_v = cache_type(type_v).ggml_id
        cp.flash_attn_type = L.LLAMA_FLASH_ATTN_TYPE_ENABLED
    lctx = L.llama_init_from_model(m, cp)
    if not lctx:
        raise SystemExit(f"rope_centring_kld: no context with a {type_v} V cache")
    vocab = L.llama_model_get_vocab(m)
    nv = L.llama_vocab_n_tokens(vocab)
    text = text_path().read_text(encoding="utf-8").encode()
    toks = (L.llama_token * (len(text) + 16))()
    nt = L.llama_tokenize(vocab, text, len(text), toks, len(toks), False, False)
    bos = L.llama_vocab_bos(vocab)
    half = ctx // 2
    out = np.empty((chunks, ctx - 1 - half, nv), np.float32)
    batch = L.llama_batch_init(ctx, 0, 1)
    for c in range(chunks):
        if (c + 1) * ctx > nt:
            raise SystemExit(f"the text has {nt} tokens, fewer than {chunks} chunks of {ctx}")
        ids = [bos] + list(toks[c * ctx + 1:(c + 1) * ctx])
        batch.n_tokens = ctx
        for i, tok in enumerate(ids):
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = tok, i, 1
            batch.seq_id[i][0] = 0
            batch.logits[i] = i >= half
        L.llama_memory_clear(L.llama_get_memory(lctx), True)
        qs.clear()
        if L.llama_decode(lctx, batch) != 0:
            raise RuntimeError("llama_decode failed")
        lg = np.ctypeslib.as_array(L.llama_get_logits(lctx), shape=(ctx - half, nv))[:-1].astype(np.float64)
        lg -= lg.max(-1, keepdims=True)
        out[c] = lg - np.log(np.exp(lg).sum(-1, keepdims=True))
    L.llama_batch_free(batch)
    L.llama_free(lctx)
    L.llama_model_free(m)
    if bad:
        raise SystemExit(f"rope_centring_kld: unexpected tensors {sorted(set(bad))[:4]} (struct ggml_tensor, the graph's order or layout)")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--ctx", type=int, default=4096)
    ap.add_argument("--chunks", type=int, default=2)
    ap.add_argument("--type", default="tq3t")
    ap.add_argument("--type-v", default="f16", help="the V cache (a real one; f16 = untouched)")
    a = ap.parse_args()
    base, neox = rope_offset_study.rope_of(a.model)
    t0 = time.time()
    ref = run(a.model, a.ctx, a.chunks, "f16", a.type, base, neox)
    p = np.exp(ref)
    res = {}
    modes = ("post", "pre") + (("f16",) if a.type_v != "f16" else ())
    for mode in modes:
        lp = run(a.model, a.ctx, a.chunks, mode, a.type, base, neox, a.type_v)
        kl = np.sum(p * (ref - lp), -1)
        res[mode] = (float(kl.mean()), float(kl.std(ddof=1) / np.sqrt(kl.size)))
    print(f"{a.model}, K {a.type} simulated, V {a.type_v}, ctx {a.ctx}, {a.chunks} chunks of Pride and Prejudice, "
          f"KLD against f16 over the second half of each chunk ({time.time() - t0:.0f} s)\n")
    print("| keys centred | mean KLD | ± (s.e.) |\n|---|---|---|")
    for mode, label in (("post", "after RoPE: one mean (the cache today)"), ("pre", "before RoPE: R(pos) m0"),
                        ("f16", f"keys untouched (V {a.type_v} only)")):
        if mode in res:
            print(f"| {label} | {res[mode][0]:.4f} | {res[mode][1]:.4f} |")
    print(f"\npre / post: {res['pre'][0] / res['post'][0]:.3f}")


if __name__ == "__main__":
    main()
