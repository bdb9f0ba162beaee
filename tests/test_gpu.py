"""The tq types on an NVIDIA GPU (a build with CMAKE_ARGS="-DTQ_CUDA=ON"): every tq case of
test-backend-ops on CUDA0 against the CPU, the ops a llama.cpp graph needs for a tq cache all claimed
by CUDA (so the scheduler puts none of them on the CPU when every layer is offloaded), and a model
running fully offloaded from Python. Skipped without a CUDA build and device; CI has none, the GPU
machine runs them (benchmarks/gpu_bench.sh runs the same test-backend-ops checks)."""
from __future__ import annotations

import re
import subprocess
from functools import lru_cache

import pytest

from tq_llamacpp._libs import tool

pytestmark = pytest.mark.gpu

TQ_TYPE = r"=tq[234]j?[,)]"
# cases per op on CUDA0: those with an F32 source (F16/BF16 -> tq has no CUDA kernel: llama.cpp
# writes the cache from F32), measured on an H200 on 2026-11-28
CASES = {
    "SET_ROWS": (TQ_TYPE, 70),
    "CPY": (TQ_TYPE, 45),
    "GET_ROWS": (TQ_TYPE, 40),
    "FLASH_ATTN_EXT": ("type_[KV]=tq", 218),
}
# what a graph with a tq cache runs: the KV write (SET_ROWS from F32), the K-shift (CPY F32 <-> tq)
# and attention
GRAPH_OPS = {
    "SET_ROWS": r"type_src=f32,type_dst=tq[234]j?,",
    "CPY": r"type_src=f32,type_dst=tq[234]j?,|type_src=tq[234]j?,type_dst=f32,",
    "FLASH_ATTN_EXT": r"type_[KV]=tq",
}


def _run(*args: str, timeout: int = 900) -> str:
    proc = subprocess.run([str(tool("test-backend-ops")), *args], capture_output=True, text=True, timeout=timeout)
    return proc.stdout + proc.stderr


@lru_cache(maxsize=1)
def _have_cuda() -> bool:
    try:
        out = _run("support", "-b", "CUDA0", "-o", "GET_ROWS", "-p", "type=tq3,", timeout=120)
    except (FileNotFoundError, RuntimeError, subprocess.TimeoutExpired):
        return False
    return "Backend 1/" in out and "CUDA0" in out and "SUPPORTED" in out


@pytest.fixture(autouse=True)
def _needs_cuda():
    if not _have_cuda():
        pytest.skip("no CUDA build of the tq llama.cpp or no CUDA device")


@pytest.mark.parametrize("op", CASES)
def test_backend_ops_cuda(op):
    pattern, expected = CASES[op]
    out = _run("test", "-b", "CUDA0", "-o", op, "-p", pattern)
    m = re.search(r"(\d+)/(\d+) tests passed", out)
    assert m, out[-3000:]
    passed, total = int(m.group(1)), int(m.group(2))
    assert passed == total == expected, out[-3000:]
    # the decode pairs built by default read the codes directly: no f16-conversion fallback
    fallbacks = set(re.findall(r"no FlashAttention vector kernel compiled for K/V types (\S+)", out))
    assert fallbacks <= {"tq3j-tq3j", "tq4j-tq4j", "tq4j-tq3"}, fallbacks


@pytest.mark.parametrize("op", GRAPH_OPS)
def test_graph_ops_stay_on_gpu(op):
    out = _run("support", "-b", "CUDA0", "-o", op, "-p", GRAPH_OPS[op], timeout=300)
    listed = re.findall(r"^\s+%s\(.*\): .*SUPPORTED" % op, out, flags=re.M)
    assert listed, out[-2000:]
    assert "NOT SUPPORTED" not in out, [line for line in out.splitlines() if "NOT SUPPORTED" in line][:10]


@pytest.mark.model
def test_llama_fully_offloaded():
    import tq_llamacpp
    import tq_llamacpp.llama  # noqa: F401
    from tq_llamacpp.data import model_path

    llm = tq_llamacpp.Llama(model_path("smollm2"), n_gpu_layers=-1, type_k="tq3", type_v="tq3", n_ctx=512,
                            seed=7, verbose=False)
    try:
        out = llm("The capital of France is", max_tokens=8, temperature=0)
        assert out["choices"][0]["text"].strip()
    finally:
        llm.close()
