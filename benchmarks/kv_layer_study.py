#!/usr/bin/env python3
"""Single-layer study of K-cache coding: how much attention error each way of storing the keys
leaves, one layer and KV head at a time, on a model's real queries and keys.

Runs the model once on a 512-token window of Pride and Prejudice (f16 cache, CPU), takes each
layer's post-RoPE Q, K and V from llama.cpp's eval callback, then for each KV head compares
softmax attention over the exact keys with attention over keys stored the way the cache would
(centred, scaled by the factors s, Hadamard-rotated, coded with the tq codec, decoded back):
mean KL of the attention rows and relative error of the attention output (V exact). It is how
the first-token code word was found (README, Centring); end-to-end KLD decides what is kept,
since this study overstated other changes (a matrix instead of s: -25 to -35 % here, a few per
cent end to end).

    python benchmarks/kv_layer_study.py [--model smollm2] [--type tq3] [--layers 1,5,12,18,25] [--per-layer]

--per-layer prints each layer's row for the stored keys the cache uses (centred, first token code
word) instead of the means: a screen for the layers whose K needs more bits.
"""
from __future__ import annotations

import argparse
import ctypes
import re

import numpy as np

from tq_llamacpp import native
from tq_llamacpp._libs import import_llama_cpp, lib_dir
from tq_llamacpp.data import model_path, text_path


class _Tensor(ctypes.Structure):  # struct ggml_tensor of the pinned ggml (ggml.h)
    _fields_ = [("type", ctypes.c_int), ("buffer", ctypes.c_void_p), ("ne", ctypes.c_int64 * 4),
                ("nb", ctypes.c_size_t * 4), ("op", ctypes.c_int), ("op_params", ctypes.c_int32 * 16),
                ("flags", ctypes.c_int32), ("src", ctypes.c_void_p * 10), ("view_src", ctypes.c_void_p),
                ("view_offs", ctypes.c_size_t), ("data", ctypes.c_void_p), ("name", ctypes.c_char * 64),
                ("extra", ctypes.c_void_p), ("padding", ctypes.c_char * 8)]


def capture(model: str, n: int = 512, skip: int = 2000) -> dict[str, np.ndarray]:
    """Post-RoPE Qcur/Kcur and Vcur of every layer ([tokens, heads, head size]) for BOS + n-1 tokens."""
    L = import_llama_cpp()
    got: dict[str, np.ndarray] = {}
    layout_changed: list[str] = []

    @L.ggml_backend_sched_eval_callback
    def cb(tp, ask, _ud):
        t = _Tensor.from_address(tp)
        name = t.name.decode()
        # _Tensor mirrors struct ggml_tensor of the pinned ggml: refuse to read a tensor whose name
        # ggml's own accessor disagrees with (the struct changed, e.g. after a rebase of the patches)
        if name != _ggml_get_name(tp).decode():
            layout_changed.append(name)
            return False
        want = re.fullmatch(r"(Qcur|Kcur|Vcur)-\d+", name) is not None
        if ask or not want or t.type != 0:  # F32 only
            return want if ask else True
        ne = list(t.ne)
        if t.nb[1] != 4 * ne[0] or t.nb[2] != 4 * ne[0] * ne[1]:
            return True
        a = np.ctypeslib.as_array((ctypes.c_float * (ne[0] * ne[1] * ne[2])).from_address(t.data))
        got[name] = a.reshape(ne[2], ne[1], ne[0]).astype(np.float64)  # the last one written is post-RoPE
        return True

    _ggml_get_name = ctypes.CDLL(str(lib_dir() / "libggml-base.so")).ggml_get_name
    _ggml_get_name.restype, _ggml_get_name.argtypes = ctypes.c_char_p, [ctypes.c_void_p]
    L.llama_backend_init()
    m = L.llama_model_load_from_file(str(model_path(model)).encode(), L.llama_model_default_params())
    cp = L.llama_context_default_params()
    cp.n_ctx = cp.n_batch = cp.n_ubatch = n
    cp.cb_eval = cb
    ctx = L.llama_init_from_model(m, cp)
    text = text_path().read_text(encoding="utf-8")[:200000].encode()
    toks = (L.llama_token * 100000)()
    L.llama_tokenize(L.llama_model_get_vocab(m), text, len(text), toks, 100000, True, False)
    ids = (L.llama_token * n)(*([toks[0]] + list(toks[skip:skip + n - 1])))
    if L.llama_decode(ctx, L.llama_batch_get_one(ids, n)) != 0:
        raise RuntimeError("llama_decode failed")
    if layout_changed:
        raise SystemExit("kv_layer_study: struct ggml_tensor differs from _Tensor: update _Tensor to ggml.h")
    L.llama_free(ctx)
    L.llama_model_free(m)
    return got


def hadamard(d: int) -> np.ndarray:
    h = np.array([[1.0]])
    while h.shape[0] < d:
        h = np.block([[h, h], [h, -h]])
    return h / np.sqrt(d)


def attention(q, k, v):
    """q [n, g, d], k/v [n, d]: causal softmax attention; probabilities [g, n, n] and outputs [g, n, d]."""
    n = k.shape[0]
    lg = np.einsum("igd,jd->gij", q, k) / np.sqrt(k.shape[1]) + np.triu(np.full((n, n), -np.inf), 1)[None]
    p = np.exp(lg - lg.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return p, np.einsum("gij,jd->gid", p, v)


def study(z: dict[str, np.ndarray], layers: list[int], type: str) -> dict[str, list[tuple[float, float]]]:
    variants = ("plain", "centred", "centred, first token exact", "centred, first token code word")
    out: dict[str, list[tuple[float, float]]] = {v: [] for v in variants}
    for il in layers:
        Q, K, V = z[f"Qcur-{il}"], z[f"Kcur-{il}"], z[f"Vcur-{il}"]
        n, nh, d = Q.shape
        g = nh // K.shape[1]
        H = hadamard(d)
        code = lambda x: native.dequantize(native.quantize(np.ascontiguousarray(x, np.float32), type), type).reshape(x.shape)  # noqa: E731
        for h in range(K.shape[1]):
            q, k, v = Q[:, h * g:(h + 1) * g], K[:, h], V[:, h]
            p0, o0 = attention(q, k, v)
            mu = k[1:].mean(0)
            s = (np.mean(q[1:].reshape(-1, d) ** 2, 0) / np.var(k[1:], 0)) ** 0.25  # README, Centring
            for name in variants:
                c, sc = (np.zeros(d), np.ones(d)) if name == "plain" else (mu, s)
                if name.endswith("code word"):  # mu moves by the first token's quantization error
                    c = k[0] - (code(((k[0] - c) * sc) @ H.T) @ H) / sc
                y = ((k - c) * sc) @ H.T
                yq = code(y)
                if name.endswith("exact"):
                    yq[0] = y[0]
                p1, o1 = attention(q, (yq @ H) / sc + c, v)
                kl = np.sum(p0[:, 1:] * (np.log(p0[:, 1:] + 1e-30) - np.log(p1[:, 1:] + 1e-30)), -1).mean()
                out[name].append((kl, np.sum((o1 - o0)[:, 1:] ** 2) / np.sum(o0[:, 1:] ** 2)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--type", default="tq3")
    ap.add_argument("--layers", default="1,5,12,18,25")
    ap.add_argument("--per-layer", action="store_true")
    a = ap.parse_args()
    layers = [int(x) for x in a.layers.split(",")]
    res = study(capture(a.model), layers, a.type)
    if a.per_layer:
        rows = np.array(res["centred, first token code word"]).reshape(len(layers), -1, 2).mean(1)
        print(f"{a.model}, {a.type}, keys centred with the first token's code word, mean over KV heads; V exact\n")
        print("| layer | attention KL | output rel. error |\n|---|---|---|")
        for il, (kl, err) in zip(layers, rows):
            print(f"| {il} | {kl:.4f} | {err:.4f} |")
        return
    print(f"{a.model}, {a.type}, layers {a.layers}, every KV head; V exact\n")
    print("| keys stored | attention KL | output rel. error |\n|---|---|---|")
    for name, rows in res.items():
        r = np.array(rows)
        print(f"| {name} | {r[:, 0].mean():.4f} | {r[:, 1].mean():.4f} |")


if __name__ == "__main__":
    main()
