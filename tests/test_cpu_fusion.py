"""The CPU backend runs a tq cache's per-token chains as one op each (patches/0001,
ggml_cpu_tq_try_fuse: a rotation and its SET_ROWS into the cache; the query's / s and its rotation),
where each op is a barrier of the threads at decode. The fused ops do the ops' arithmetic in their
order, so the logits are those of the ops one by one (TQ_CPU_FUSED=0), bit for bit, for the chains
llama builds: keys centred before RoPE and after, uncentred caches, the trellis-coded and the 8-bit-scale
types, K and V of different types, a prompt of many tokens and single decoded tokens, on 2 threads."""
from __future__ import annotations

import os

import numpy as np
import pytest

from conftest import llama_logits

WRITE = "a rotation and its SET_ROWS into a tq cache run as one op"
QUERY = "the query's DIV and its rotation run as one op"

# K, V, Llama arguments, whether the query is divided by K's channel factors (a centred K cache)
CASES = [
    ("tq3", "tq3", {}, True),
    ("tq4", "tq3t", {"kv_options": {"rope": "post"}}, True),
    ("tq3t", "tq2", {"kv_options": {"center": "off"}}, False),
    ("tq3ts", "tq2ts", {}, True),
]


@pytest.mark.parametrize("type_k,type_v,kw,div", CASES, ids=[f"{k}-{v}-{kw}" for k, v, kw, _ in CASES])
def test_fused_chains_give_the_ops_logits(smollm2, type_k, type_v, kw, div):
    fused, log = llama_logits(smollm2, type_k, type_v, n_threads=2, **kw)
    ops, log_ops = llama_logits(smollm2, type_k, type_v, env={**os.environ, "TQ_CPU_FUSED": "0"}, n_threads=2, **kw)
    assert WRITE in log and (QUERY in log) == div, log[-3000:]
    assert WRITE not in log_ops and QUERY not in log_ops
    assert fused.shape == ops.shape == (5, 49152)
    np.testing.assert_array_equal(fused, ops)
    # the cache is what the chains write: a different cache moves the logits
    f16, _ = llama_logits(smollm2, "f16", "f16", n_threads=2)
    assert np.abs(fused - f16).max() > 1e-3
