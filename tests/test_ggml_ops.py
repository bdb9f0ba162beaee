"""llama.cpp's own op tests for the tq types (patches/0003): test-backend-ops in test mode with
-b CPU compares the CPU backend against the CPU reference mode, where the patch makes tq tensors use
the portable quantizer and an f32 dot of the decoded keys. So SET_ROWS/CPY check the SIMD quantizer
against the portable one, FLASH_ATTN_EXT the code-domain K dot against the decoder, for head sizes
64/128/256 and mixed K/V pairs."""
from __future__ import annotations

import re
import subprocess

import pytest

from tq_llamacpp._libs import tool

# `type_dst=tq` alone would also match ggml's ternary types tq1_0/tq2_0
TQ_TYPE = r"=tq[234]j?[,)]"
CASES = {
    "SET_ROWS": (TQ_TYPE, 140),
    "CPY": (TQ_TYPE, 80),
    "GET_ROWS": (TQ_TYPE, 40),
    "FLASH_ATTN_EXT": ("type_[KV]=tq", 218),
}


@pytest.mark.parametrize("op", CASES)
def test_backend_ops(op):
    pattern, expected = CASES[op]
    proc = subprocess.run([str(tool("test-backend-ops")), "test", "-b", "CPU", "-o", op, "-p", pattern],
                          capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    m = re.search(r"(\d+)/(\d+) tests passed", out)
    assert proc.returncode == 0 and m, out[-3000:]
    passed, total = int(m.group(1)), int(m.group(2))
    assert passed == total == expected, out[-3000:]
