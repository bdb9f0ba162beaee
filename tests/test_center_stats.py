"""The centring statistics on their own: native/llama/tq-kv-center.cpp's graph, run on the CPU from
host arrays (llama_tq_center_stats), against a numpy reference of the same formulas
(docs/method.md, Centring), and against what the statistics are for: a constant offset turned by
RoPE comes out as the offset's average over the cache's positions, and the factors balance the
keys' spread against the queries'."""
from __future__ import annotations

import ctypes

import numpy as np
import pytest

from tq_llamacpp.llama import llama_cpp

ROPE_NONE, ROPE_NORM, ROPE_NEOX = -1, 0, 2

_stats = llama_cpp.llama_cpp._lib.llama_tq_center_stats
_stats.restype = ctypes.c_int32
_stats.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
                   ctypes.c_int64, ctypes.c_float, ctypes.c_int32, ctypes.c_float, ctypes.c_float, ctypes.c_bool,
                   ctypes.c_void_p, ctypes.c_void_p]


def native(k, q, n_seq_tokens, positions, rope, base=10000.0, fscale=1.0, equalize=True):
    n_tokens, n_head_kv, d = k.shape
    n_gqa = q.shape[1] // n_head_kv
    k = np.ascontiguousarray(k, np.float32)
    q = np.ascontiguousarray(q, np.float32)
    mean = np.empty((n_head_kv, d), np.float32)
    scale = np.empty((n_head_kv, d), np.float32)
    rc = _stats(k.ctypes.data, q.ctypes.data if equalize else None, d, n_head_kv, n_gqa, n_tokens, n_seq_tokens,
                positions, rope, base, fscale, equalize, mean.ctypes.data, scale.ctypes.data)
    assert rc == 0
    return mean, scale


# ---- the reference, in float64 -------------------------------------------------------------------

def _pairs(d, rope):
    """(x index, y index, pair number) of every pair of a head."""
    half = d // 2
    if rope == ROPE_NEOX:
        return np.arange(half), np.arange(half) + half, np.arange(half)
    return np.arange(0, d, 2), np.arange(1, d, 2), np.arange(half)


def _dirichlet(th, n):
    return np.sin(n * th / 2) / (n * np.sin(th / 2))


def _ratio(th, H, n):
    du = _dirichlet(th, max(1.0, n - 1.0))
    return _dirichlet(th, H) * du / (du * du + 1e-6)


def reference(k, q, n_seq_tokens, H, rope, base=10000.0, fscale=1.0, equalize=True):
    k, q = k.astype(np.float64), q.astype(np.float64)
    n_tokens, n_head_kv, d = k.shape
    ns = n_seq_tokens if n_seq_tokens and n_tokens % n_seq_tokens == 0 else n_tokens
    t0 = 1 if ns > 1 else 0
    xs = k.reshape(n_tokens // ns, ns, n_head_kv, d)[:, t0:].reshape(-1, n_head_kv, d)  # each sequence's first left out
    m = xs.mean(0)                                                                          # [n_head_kv, d]
    n = float(ns)
    turned = rope != ROPE_NONE and H > n
    ix, iy, j = _pairs(d, rope)
    theta = fscale * base ** (-2.0 * j / d)
    mean = m.copy()
    if turned:
        rp = np.clip(_ratio(theta, H, n), -1, 1)
        psi = theta * 0.5 * (H - 1 - n)
        x, y = m[:, ix], m[:, iy]
        mean[:, ix] = x * rp * np.cos(psi) - y * rp * np.sin(psi)
        mean[:, iy] = x * rp * np.sin(psi) + y * rp * np.cos(psi)
    if not equalize:
        return mean, np.ones_like(mean)
    qh = q.reshape(q.shape[0], n_head_kv, -1, d)  # query head h reads KV head h // n_gqa
    q2 = (qh ** 2).mean((0, 2))
    xc = xs - m
    vk = (xc ** 2).mean(0)
    if turned:
        def pair_avg(t):
            out = np.empty_like(t)
            out[:, ix] = out[:, iy] = (t[:, ix] + t[:, iy]) / 2
            return out

        def per_value(p):  # a per-pair quantity on both values of the pair
            out = np.empty((n_head_kv, d)) if p.ndim == 2 else np.empty(d)
            out[..., ix] = out[..., iy] = p
            return out

        th2 = 2 * theta
        rho2 = np.clip(_ratio(th2, H, n), -1, 1)
        psi2 = th2 * 0.5 * (H - 1 - n)
        sign = np.empty(d)
        sign[ix], sign[iy] = 1, -1
        C2, S2 = per_value(rho2 * np.cos(psi2)), per_value(rho2 * np.sin(psi2)) * sign
        r = per_value(_ratio(theta, H, n))
        rho = np.clip(r, -1, 1)
        left = np.maximum(0, 1 - rho * (2 * r - rho))
        cqq = per_value((qh[..., ix] * qh[..., iy]).mean((0, 2)))
        ckk = per_value((xc[..., ix] * xc[..., iy]).mean(0))

        def turn(t, cxy):
            pa = pair_avg(t)
            return pa + (t - pa) * C2 - cxy * S2

        q2 = turn(q2, cqq)
        vk = turn(vk, ckk) + left * pair_avg(m ** 2)
    fl = lambda t: t + 0.01 * t.mean()  # noqa: E731
    return mean, (fl(q2) / fl(vk)) ** 0.25


def _data(rng, n_tokens=96, n_head_kv=2, n_gqa=3, d=64, offset=2.0):
    k = rng.standard_normal((n_tokens, n_head_kv, d)) * rng.uniform(0.3, 3.0, d) + offset * rng.standard_normal(d)
    q = rng.standard_normal((n_tokens, n_head_kv * n_gqa, d)) * rng.uniform(0.2, 2.0, d)
    return k.astype(np.float32), q.astype(np.float32)


@pytest.mark.parametrize("rope", [ROPE_NONE, ROPE_NORM, ROPE_NEOX])
@pytest.mark.parametrize("n_seq_tokens,H", [(0, 96), (0, 4096), (32, 512), (48, 100000)])
@pytest.mark.parametrize("equalize", [True, False])
def test_graph_matches_reference(rope, n_seq_tokens, H, equalize):
    k, q = _data(np.random.default_rng(1000 + 10 * rope + n_seq_tokens))
    mean, scale = native(k, q, n_seq_tokens, H, rope, base=10000.0, equalize=equalize)
    want_mean, want_scale = reference(k, q, n_seq_tokens, H, rope, base=10000.0, equalize=equalize)
    # float32 sin/cos of angles up to theta * H / 2 (~5e4 rad): absolute errors ~ 1e-3 of the offset
    np.testing.assert_allclose(mean, want_mean, rtol=2e-3, atol=2e-3 * np.abs(want_mean).max())
    np.testing.assert_allclose(scale, want_scale, rtol=2e-3, atol=1e-4)


def test_mean_of_a_turned_offset_is_its_average_over_the_cache():
    """Keys that are one pre-RoPE constant c turned by RoPE at positions 0..n-1: over the H positions
    the cache holds, the constant that leaves the least offset is c's average turn, which the
    statistics predict from the first n positions alone."""
    d, n, H, base = 64, 128, 2048, 10000.0
    rng = np.random.default_rng(7)
    c = rng.standard_normal(d)
    ix, iy, j = _pairs(d, ROPE_NORM)
    theta = base ** (-2.0 * j / d)

    def turned(positions):
        ang = np.outer(positions, theta)
        out = np.empty((len(positions), d))
        out[:, ix] = c[ix] * np.cos(ang) - c[iy] * np.sin(ang)
        out[:, iy] = c[ix] * np.sin(ang) + c[iy] * np.cos(ang)
        return out

    k = turned(np.arange(n))[:, None, :].astype(np.float32)
    mean, _ = native(k, np.ones((n, 1, d), np.float32), 0, H, ROPE_NORM, base=base, equalize=False)
    want = turned(np.arange(H)).mean(0)
    # the ubatch mean (positions 1..n-1) is far from it; the carried one close
    naive = k[1:, 0].mean(0)
    assert np.linalg.norm(naive - want) > 0.5 * np.linalg.norm(c)
    assert np.linalg.norm(mean[0] - want) < 0.02 * np.linalg.norm(c)


def test_factors_balance_key_spread_against_queries():
    """Without RoPE, s_i^4 = E[q_i^2] / E[(k_i - mu_i)^2] (floored): a value where keys vary 4x more and
    queries look 4x less is shrunk by 2."""
    rng = np.random.default_rng(3)
    d, n = 64, 4000
    k = rng.standard_normal((n, 1, d)).astype(np.float32)
    q = rng.standard_normal((n, 1, d)).astype(np.float32)
    k[:, 0, 5] *= 2.0
    q[:, 0, 5] *= 0.5
    _, s = native(k, q, 0, n, ROPE_NONE)
    assert s[0, 5] / np.median(s[0]) == pytest.approx(0.5, rel=0.05)


def test_bad_arguments_are_refused():
    k, q = _data(np.random.default_rng(0), n_tokens=8)
    out = np.empty((2, 64), np.float32)
    for args in [(63, 2, 3, 8, 0, 8.0, ROPE_NONE), (64, 2, 3, 8, 3, 8.0, ROPE_NONE), (64, 2, 3, 8, 0, 0.0, ROPE_NONE),
                 (64, 2, 3, 8, 0, 8.0, 7)]:
        d, nkv, ngqa, nt, nst, H, rope = args
        assert _stats(k.ctypes.data, q.ctypes.data, d, nkv, ngqa, nt, nst, H, rope, 1e4, 1.0, True,
                      out.ctypes.data, out.ctypes.data) == -1
