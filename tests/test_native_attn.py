"""tq_ggml_attn_f32, the CPU flash-attention loop over tq K/V codes (native/src/tq_attn.h), through its
checked Python entry native.Attention, on every ISA this CPU runs, against NumPy: softmax(scale * q.K^T + slope * mask) V over the decoded rows, with
ggml's running max M and sum S. ggml's own test (test-backend-ops FLASH_ATTN_EXT, tests/test_ggml_ops.py)
covers the call from llama.cpp with the best ISA only."""
from __future__ import annotations

import re

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


def Call(q, kc, vc, k_type, v_type, mask=None, slope=None, scale=0.125, softcap=0.0, bias=None):
    """One loop call over the keys of kc/vc (native.Attention); bias: (query_term, key_term)."""
    qb, kb = bias if bias is not None else (None, None)
    return native.Attention(q, kc, vc, k_type, v_type, mask=mask, slope=slope, scale=scale, softcap=softcap,
                            query_term=qb, key_term=kb)


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
    mask = call.mask.astype(np.float64) if call.mask is not None else np.zeros((nr, call.k_codes.shape[0]))
    slope = np.ones(nr) if slope is None else np.asarray(slope, np.float64)
    bias = (call.query_term, call.key_term) if call.key_term is not None else None
    rM, rS, racc = _reference(call.q, _decoded(call.k_codes, k_type), _decoded(call.v_codes, v_type), mask, slope,
                              scale, softcap, bias)
    np.testing.assert_allclose(M, rM, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(S, rS, rtol=1e-4)
    np.testing.assert_allclose(acc / S[:, None], racc / rS[:, None], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("k_type,v_type", [("tq3", "tq3"), ("tq4", "tq3"), ("tq2", "tq4"), ("tq4j", "tq3j"),
                                           ("tq3ts", "tq2ts"), ("tq2t", "tq3ts")])
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
    qb = np.ones((2, 1024), F)[:, :64]  # rows wide enough for any nb the C call is handed below
    kb = np.ones((4, 1024), F)[:, :64]
    call = Call(q, kc, vc, "tq3", "tq3", mask, bias=(qb, kb))
    call._args.nb = nb
    if null_qb:
        call._args.qb[1] = ffi.NULL
    assert lib.tq_ggml_attn_f32(call._args) == getattr(lib, status)
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


@pytest.mark.parametrize("isa", ISAS)
def test_keys_masked_at_both_ends_are_left_out(isa):
    """Keys every row masks out at either end (a cache's cells past the used ones, a sliding window's
    before it) are skipped whole tiles at a time, the remaining tiles as they were: the result is the
    softmax's, bit for bit what the loop gives when those keys weigh 0 through a finite mask (-65504,
    so that every tile from the first is scored), and the same with NaN codes in the skipped keys."""
    rng = np.random.default_rng(11)
    q, kc, vc, mask = _case(rng, "tq3", "tq3", 3, 64, 256, masked=0.0)
    mask[:, :] = -np.inf
    mask[0, 40:100] = rng.standard_normal(60)
    mask[1, 50:120] = mask[2, 50:120] = rng.standard_normal(70)  # rows 1 and 2: one position's mask row
    mask[1, 60] = mask[2, 60] = -np.inf                           # a dead key among live ones stays dead
    dead = np.isneginf(mask.astype(np.float64)).all(axis=0)
    _check(Call(q, kc, vc, "tq3", "tq3", mask), "tq3", "tq3", isa)
    skipped = Call(q, kc, vc, "tq3", "tq3", mask).run(isa)
    finite = mask.copy()
    finite[:, dead] = -65504.0
    scored = Call(q, kc, vc, "tq3", "tq3", finite).run(isa)
    kc[dead, :2] = vc[dead, :2] = (0x00, 0x7E)                    # NaN scales: reading one poisons a row
    poisoned = Call(q, kc, vc, "tq3", "tq3", mask).run(isa)
    for a, b, c in zip(skipped, scored, poisoned):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)


@pytest.mark.parametrize("field,value,status", [
    ("n_rows", 0, "TQ_ERR_LENGTH"), ("n_rows", 17, "TQ_ERR_LENGTH"), ("dk", 96, "TQ_ERR_LENGTH"),
    ("dv", 1024, "TQ_ERR_LENGTH"), ("n_kv", -1, "TQ_ERR_LENGTH"), ("k_type", int(lib.TQ_TYPE_COUNT), "TQ_ERR_TYPE"),
    ("v_type", -1, "TQ_ERR_TYPE"), ("k", None, "TQ_ERR_NULL"),
])
def test_bad_arguments_touch_nothing(field, value, status):
    rng = np.random.default_rng(1)
    q, kc, vc, mask = _case(rng, "tq3", "tq3", 2, 64, 4)
    call = Call(q, kc, vc, "tq3", "tq3", mask)
    setattr(call._args, field, ffi.NULL if value is None else value)
    assert lib.tq_ggml_attn_f32(call._args) == getattr(lib, status)
    assert (call.M == -np.inf).all() and not call.S.any() and not call.acc.any()


def test_output_is_softmax_times_v():
    """native.Attention.output(): softmax(scale q.K^T + mask) V over the decoded rows, zeros for a row
    whose keys are all masked (what ggml writes there)."""
    rng = np.random.default_rng(11)
    q, kc, vc, mask = _case(rng, "tq4", "tq3t", 3, 128, 30)
    mask[:2, 0] = 0
    mask[2, :] = -np.inf
    call = Call(q, kc, vc, "tq4", "tq3t", mask, scale=0.1)
    call.run()
    s = 0.1 * q.astype(np.float64) @ _decoded(kc, "tq4").T + mask.astype(np.float64)
    w = np.exp(s[:2] - s[:2].max(axis=1, keepdims=True))
    want = (w / w.sum(axis=1, keepdims=True)) @ _decoded(vc, "tq3t")
    out = call.output()
    np.testing.assert_allclose(out[:2], want, rtol=1e-4, atol=1e-5)
    assert not out[2].any()
    call.reset()
    assert (call.M == -np.inf).all() and not call.S.any() and not call.acc.any()
    call.run()
    np.testing.assert_allclose(call.output()[:2], want, rtol=1e-4, atol=1e-5)  # reset, then the same keys again


def _bad(**change):
    """native.Attention's arguments of a valid call, with `change` applied"""
    rng = np.random.default_rng(4)
    q, kc, vc, mask = _case(rng, "tq3", "tq3", 2, 64, 5)
    args = dict(q=q, k_codes=kc, v_codes=vc, k_type="tq3", v_type="tq3", mask=mask)
    args.update(change)
    return args


_F = np.zeros((2, 64), F)
_NAN = np.full((2, 64), np.nan, F)


@pytest.mark.parametrize("change,error,words", [
    (dict(k_type="tq5"), ValueError, "unknown TurboQuant type"),
    (dict(q=_F.astype(np.float64)), TypeError, "q must have dtype float32"),
    (dict(q=_NAN), ValueError, "q contains NaN"),
    (dict(q=np.zeros((17, 64), F)), ValueError, "1 to 16"),
    (dict(q=np.zeros((2, 96), F)), ValueError, "multiple of the block size"),
    (dict(q=np.zeros((2, 1024), F)), ValueError, "larger than 512"),
    (dict(q=np.zeros(64, F)), ValueError, "must be 2-D"),
    (dict(k_codes=np.zeros((5, 18), np.uint8)), ValueError, "k_codes rows hold 18 values, expected 26"),
    (dict(v_codes=np.zeros((4, 26), np.uint8)), ValueError, "v_codes has 4 rows, expected 5"),
    (dict(v_codes=np.zeros((5, 25), np.uint8)), ValueError, "not a positive multiple of the 26-byte tq3 block"),
    (dict(mask=np.zeros((2, 5), np.float32)), TypeError, "mask must have dtype float16"),
    (dict(mask=np.zeros((2, 4), np.float16)), ValueError, "mask rows hold 4 values, expected 5"),
    (dict(mask=np.full((2, 5), np.nan, np.float16)), ValueError, "mask contains NaN"),
    (dict(slope=np.ones(3, F)), ValueError, "slope must have shape (2,)"),
    (dict(query_term=np.zeros((2, 64), F)), ValueError, "give both or neither"),
    (dict(query_term=np.zeros((2, 48), F), key_term=np.zeros((5, 48), F)), ValueError, "multiple of 32"),
    (dict(query_term=np.zeros((2, 64), F), key_term=np.zeros((5, 32), F)), ValueError, "key_term rows hold 32"),
    (dict(query_term=np.zeros((2, 64), F), key_term=np.full((5, 64), np.inf, F)), ValueError, "key_term contains infinity"),
    (dict(query_term=np.zeros((2, 64), F), key_term=np.broadcast_to(np.zeros(64, F), (5, 64))), ValueError,
     "rows must not overlap"),
    (dict(k_codes=np.zeros((26, 5), np.uint8).T), ValueError, "each row must be contiguous"),
    (dict(softcap=-1.0), ValueError, "softcap (-1.0) finite and >= 0"),
    (dict(scale="0.1"), TypeError, "scale and softcap must be numbers, got str"),
])
def test_bad_input_is_named_before_the_call(change, error, words):
    with pytest.raises(error, match=re.escape(words)):
        native.Attention(**_bad(**change))


def test_rows_may_lie_apart():
    """Code, mask and term rows sliced out of wider rows (the loop's strides) give what their copies give."""
    rng = np.random.default_rng(9)
    q, kc, vc, mask = _case(rng, "tq3t", "tq4", 4, 64, 21)
    mask[:, 0] = 0
    qb = rng.standard_normal((4, 32)).astype(F)
    kb = rng.standard_normal((21, 32)).astype(F)
    wide = lambda a, extra: np.concatenate([a, np.zeros((a.shape[0], extra), a.dtype)], axis=1)[:, :a.shape[1]]
    apart = Call(q, wide(kc, 7), wide(vc, 3), "tq3t", "tq4", wide(mask, 5), bias=(wide(qb, 32), wide(kb, 1)))
    packed = Call(q, kc, vc, "tq3t", "tq4", mask, bias=(qb, kb))
    assert apart.k_codes.strides[0] != packed.k_codes.strides[0]
    for got, want in zip(apart.run(), packed.run()):
        np.testing.assert_array_equal(got, want)


def test_no_keys_leave_the_state_as_it_was():
    """An empty key range (a split with nothing left) is a call that changes nothing."""
    rng = np.random.default_rng(6)
    q, kc, vc, mask = _case(rng, "tq3", "tq4", 2, 64, 0)
    call = Call(q, kc, vc, "tq3", "tq4", mask, bias=(np.ones((2, 32), F), np.ones((0, 32), F)))
    M, S, acc = call.run()
    assert (M == -np.inf).all() and not S.any() and not acc.any() and acc.shape == (2, 64)
    assert not call.output().any()
