"""tq_ggml_attn_f32, the CPU flash-attention loop over tq K/V codes (native/src/tq_attn.h), on every
ISA this CPU runs, against NumPy: softmax(scale * q.K^T + slope * mask) V over the decoded rows, with
ggml's running max M and sum S. ggml's own test (test-backend-ops FLASH_ATTN_EXT, tests/test_ggml_ops.py)
covers the call from llama.cpp with the best ISA only."""
from __future__ import annotations

import numpy as np
import pytest

from tq_llamacpp import native
from tq_llamacpp._native import ffi, lib

F = np.float32
ISAS = native.isa_available()


def _reference(q, kd, vd, mask, slope, scale, softcap, bias=None):
    """M, S, acc of ggml's loop in float64 over decoded rows; mask rows in float (-inf skips);
    bias: the part (qb, kb) of q.k that keys centred before RoPE do not hold"""
    s = q.astype(np.float64) @ kd.T.astype(np.float64)
    if bias is not None:
        s = s + bias[0].astype(np.float64) @ bias[1].T.astype(np.float64)
    s = s * scale
    if softcap:
        s = softcap * np.tanh(s)
    s = s + slope[:, None] * mask
    M = s.max(axis=1)
    w = np.where(np.isneginf(s), 0.0, np.exp(s - np.where(np.isneginf(M), 0, M)[:, None]))
    return M, w.sum(axis=1), w @ vd.astype(np.float64)


class Call:
    """One tq_ggml_attn_f32 call over n_kv keys whose K and V rows lie `stride` rows apart."""

    def __init__(self, q, kc, vc, k_type, v_type, mask=None, slope=None, scale=0.125, softcap=0.0, bias=None):
        self.q, self.kc, self.vc, self.mask, self.bias = q, kc, vc, mask, bias
        nr, dk = q.shape
        dv = vc.shape[1] // native.block_bytes(v_type) * native.BLOCK
        self.M = np.full(nr, -np.inf, F)
        self.S = np.zeros(nr, F)
        self.acc = np.zeros((nr, dv), F)
        a = ffi.new("tq_attn_args *")
        a.k_type, a.v_type = native.type_info(k_type).id, native.type_info(v_type).id
        a.dk, a.dv, a.n_rows = dk, dv, nr
        for r in range(nr):
            a.q[r] = ffi.cast("const float *", q[r].ctypes.data)
            a.mask[r] = ffi.cast("const uint16_t *", mask[r].ctypes.data) if mask is not None else ffi.NULL
            a.slope[r] = 1.0 if slope is None else slope[r]
        a.k, a.v = ffi.cast("void *", kc.ctypes.data), ffi.cast("void *", vc.ctypes.data)
        a.k_stride, a.v_stride = kc.strides[0], vc.strides[0]
        a.n_kv = kc.shape[0]
        a.scale, a.softcap = scale, softcap
        a.M = ffi.cast("float *", self.M.ctypes.data)
        a.S = ffi.cast("float *", self.S.ctypes.data)
        a.acc = ffi.cast("float *", self.acc.ctypes.data)
        if bias is not None:
            qb, kb = bias
            for r in range(nr):
                a.qb[r] = ffi.cast("const float *", qb[r].ctypes.data)
            a.kb, a.kb_stride, a.nb = ffi.cast("const float *", kb.ctypes.data), kb.strides[0], kb.shape[1]
        self.args = a

    def run(self, isa):
        with native.force_isa(isa):
            assert lib.tq_ggml_attn_f32(self.args) == lib.TQ_OK
        return self.M, self.S, self.acc


def _case(rng, k_type, v_type, nr, d, n_kv, masked=0.3):
    q = rng.standard_normal((nr, d)).astype(F)
    kc = native.quantize(rng.standard_normal((n_kv, d)).astype(F), k_type)
    vc = native.quantize(rng.standard_normal((n_kv, d)).astype(F), v_type)
    m = np.where(rng.random((nr, n_kv)) < masked, -np.inf, rng.standard_normal((nr, n_kv)))
    mask = m.astype(np.float16)
    return q, kc, vc, mask


def _decoded(codes, type):
    with native.force_isa("portable"):
        return native.dequantize(codes, type)


def _check(call, k_type, v_type, isa, slope=None, scale=0.125, softcap=0.0):
    M, S, acc = call.run(isa)
    nr = call.q.shape[0]
    mask = call.mask.astype(np.float64) if call.mask is not None else np.zeros((nr, call.kc.shape[0]))
    slope = np.ones(nr) if slope is None else np.asarray(slope, np.float64)
    rM, rS, racc = _reference(call.q, _decoded(call.kc, k_type), _decoded(call.vc, v_type), mask, slope, scale,
                              softcap, call.bias)
    np.testing.assert_allclose(M, rM, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(S, rS, rtol=1e-4)
    np.testing.assert_allclose(acc / S[:, None], racc / rS[:, None], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("k_type,v_type", [("tq3", "tq3"), ("tq4", "tq3"), ("tq2", "tq4"), ("tq4j", "tq3j")])
@pytest.mark.parametrize("nr,d,n_kv", [(1, 64, 1), (3, 64, 100), (16, 128, 37), (4, 256, 50), (2, 512, 9)])
def test_matches_numpy(isa, k_type, v_type, nr, d, n_kv):
    rng = np.random.default_rng(nr * 1000 + d + n_kv)
    q, kc, vc, mask = _case(rng, k_type, v_type, nr, d, n_kv)
    mask[:, 0] = 0  # every row attends to at least one key
    _check(Call(q, kc, vc, k_type, v_type, mask), k_type, v_type, isa)


@pytest.mark.parametrize("isa", ISAS)
def test_softcap_slope_and_no_mask(isa):
    rng = np.random.default_rng(7)
    q, kc, vc, mask = _case(rng, "tq3", "tq4", 5, 128, 70)
    mask[:, 3] = 0
    slope = np.array([1.0, 0.5, 0.25, 2.0, 1.0], F)
    _check(Call(q, kc, vc, "tq3", "tq4", mask, slope, scale=0.3, softcap=10.0), "tq3", "tq4", isa, slope, 0.3,
           10.0)
    _check(Call(q, kc, vc, "tq3", "tq4", None, scale=0.3), "tq3", "tq4", isa, scale=0.3)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("nr,d,nb,n_kv,stride,softcap", [(1, 64, 64, 40, 64, 0.0), (5, 128, 128, 33, 160, 0.0),
                                                         (16, 64, 32, 17, 32, 0.0), (5, 128, 128, 33, 128, 3.0)])
def test_key_bias_matches_numpy(isa, nr, d, nb, n_kv, stride, softcap):
    """The per-key term <qb[r], kb[j]> (keys centred before RoPE) joins q.k before the scale and
    the soft-cap, as the part of the key the cache does not hold; kb's rows lie `stride` floats
    apart."""
    rng = np.random.default_rng(nr * 100 + d + nb)
    q, kc, vc, mask = _case(rng, "tq3t", "tq3", nr, d, n_kv)
    mask[:, 0] = 0
    qb = rng.standard_normal((nr, nb)).astype(F)
    kb = np.zeros((n_kv, stride), F)[:, :nb]
    kb[:] = 2 * rng.standard_normal((n_kv, nb))
    call = Call(q, kc, vc, "tq3t", "tq3", mask, softcap=softcap, bias=(qb, kb))
    _check(call, "tq3t", "tq3", isa, softcap=softcap)
    plain = Call(q, kc, vc, "tq3t", "tq3", mask, softcap=softcap).run(isa)
    assert np.abs(call.M - plain[0]).max() > 0.5  # the term is there, not ignored


@pytest.mark.parametrize("nb,null_qb,status", [(48, False, "TQ_ERR_LENGTH"), (0, False, "TQ_ERR_LENGTH"),
                                               (1024, False, "TQ_ERR_LENGTH"), (64, True, "TQ_ERR_NULL")])
def test_bad_key_bias_touches_nothing(nb, null_qb, status):
    rng = np.random.default_rng(2)
    q, kc, vc, mask = _case(rng, "tq3", "tq3", 2, 64, 4)
    qb = np.ones((2, 1024), F)
    kb = np.ones((4, 1024), F)
    call = Call(q, kc, vc, "tq3", "tq3", mask, bias=(qb, kb))
    call.args.nb = nb
    if null_qb:
        call.args.qb[1] = ffi.NULL
    assert lib.tq_ggml_attn_f32(call.args) == getattr(lib, status)
    assert (call.M == -np.inf).all() and not call.S.any() and not call.acc.any()


@pytest.mark.parametrize("isa", ISAS)
def test_keys_split_over_calls_carry_M_S_acc(isa):
    """ggml's split-KV decode hands each thread a range of keys; two calls equal one."""
    rng = np.random.default_rng(3)
    q, kc, vc, mask = _case(rng, "tq3", "tq3", 3, 64, 90)
    whole = Call(q, kc, vc, "tq3", "tq3", mask).run(isa)
    first = Call(q, kc[:41], vc[:41], "tq3", "tq3", np.ascontiguousarray(mask[:, :41]))
    first.run(isa)
    second = Call(q, kc[41:], vc[41:], "tq3", "tq3", np.ascontiguousarray(mask[:, 41:]))
    second.M[:], second.S[:], second.acc[:] = first.M, first.S, first.acc
    M, S, acc = second.run(isa)
    np.testing.assert_allclose(M, whole[0], rtol=1e-6)
    np.testing.assert_allclose(S, whole[1], rtol=1e-5)
    np.testing.assert_allclose(acc, whole[2], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("isa", ISAS)
def test_masked_keys_are_never_read(isa):
    """A key masked for every row (a cell no sequence owns) may hold anything, NaN codes included;
    a row with every key masked ends with M = -inf, S = 0, acc = 0; a NaN key that a row attends
    to turns that row to NaN, as ggml's loop does."""
    rng = np.random.default_rng(5)
    q, kc, vc, mask = _case(rng, "tq3", "tq3", 3, 64, 40, masked=0.0)
    kc[10, :2] = vc[10, :2] = (0x00, 0x7E)  # the blocks' fp16 scale d = NaN: every value decodes to NaN
    mask[:, 10] = -np.inf
    mask[2, :] = -np.inf
    M, S, acc = Call(q, kc, vc, "tq3", "tq3", mask).run(isa)
    assert np.isfinite(acc[:2]).all() and np.isfinite(S[:2]).all()
    assert M[2] == -np.inf and S[2] == 0 and not acc[2].any()
    mask[0, 10] = 0
    M, S, acc = Call(q, kc, vc, "tq3", "tq3", mask).run(isa)
    assert np.isnan(acc[0]).all() and np.isfinite(acc[1]).all()


@pytest.mark.parametrize("field,value,status", [
    ("n_rows", 0, "TQ_ERR_LENGTH"), ("n_rows", 17, "TQ_ERR_LENGTH"), ("dk", 96, "TQ_ERR_LENGTH"),
    ("dv", 1024, "TQ_ERR_LENGTH"), ("n_kv", -1, "TQ_ERR_LENGTH"), ("k_type", 7, "TQ_ERR_TYPE"),
    ("v_type", -1, "TQ_ERR_TYPE"), ("k", None, "TQ_ERR_NULL"),
])
def test_bad_arguments_touch_nothing(field, value, status):
    rng = np.random.default_rng(1)
    q, kc, vc, mask = _case(rng, "tq3", "tq3", 2, 64, 4)
    call = Call(q, kc, vc, "tq3", "tq3", mask)
    setattr(call.args, field, ffi.NULL if value is None else value)
    assert lib.tq_ggml_attn_f32(call.args) == getattr(lib, status)
    assert (call.M == -np.inf).all() and not call.S.any() and not call.acc.any()
