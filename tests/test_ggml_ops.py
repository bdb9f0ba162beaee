"""llama.cpp's own op tests for the tq types (patches/0003): test-backend-ops in test mode with
-b CPU compares the CPU backend against the CPU reference mode, where the patch makes tq tensors use
the portable quantizer and an f32 dot of the decoded keys. So SET_ROWS/CPY check the SIMD quantizer
against the portable one, FLASH_ATTN_EXT the code-domain K dot against the decoder, for head sizes
64/128/256 and mixed K/V pairs."""
from __future__ import annotations

import pytest

from conftest import backend_ops_test

# `type_dst=tq` alone would also match ggml's ternary types tq1_0/tq2_0
TQ_TYPE = r"=tq[234](j|t|ts)?[,)]"
# op -> (the case filter, the fewest cases patches/0003 adds for it: a lost loop shows as fewer)
CASES = {
    "SET_ROWS": (TQ_TYPE, 100),
    "CPY": (TQ_TYPE, 50),
    "GET_ROWS": (TQ_TYPE, 20),
    "FLASH_ATTN_EXT": ("type_[KV]=tq", 200),
}


@pytest.mark.parametrize("op", CASES)
def test_backend_ops(op):
    pattern, at_least = CASES[op]
    r = backend_ops_test("CPU", op, pattern)
    assert r.passed == r.total >= at_least and not r.not_supported, r.output[-3000:]


def test_key_bias_cases():
    """Flash attention with a score term per key (keys centred before RoPE,
    ggml_flash_attn_ext_add_key_bias): the CPU's tiled prompt path, its split-KV decode and the
    codec's loop against the reference mode's one-chunk loop, every tq type, streams and GQA."""
    r = backend_ops_test("CPU", "FLASH_ATTN_EXT", "key_bias=1")
    assert r.passed == r.total >= 28 and not r.not_supported, r.output[-3000:]


def test_key_offset_cases():
    """The same term as an offset of the keys (ggml_flash_attn_ext_add_key_offset, a prompt's ubatch
    with keys centred before RoPE): the tiled path adds it to the keys it decodes, the split-KV
    decode and the codec's loop score q's own rows against it; every tq type against the reference
    mode's one-chunk loop."""
    r = backend_ops_test("CPU", "FLASH_ATTN_EXT", "key_offset=1")
    assert r.passed == r.total >= 36 and not r.not_supported, r.output[-3000:]
