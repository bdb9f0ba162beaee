"""The tq types on an NVIDIA GPU (a build with CMAKE_ARGS="-DTQ_CUDA=ON"): every tq case of
test-backend-ops on CUDA0 against the CPU, the ops a llama.cpp graph needs for a tq cache all claimed
by CUDA (so the scheduler puts none of them on the CPU when every layer is offloaded), and a model
running fully offloaded from Python. Skipped without a CUDA build and device; CI has none, the GPU
machine runs them (benchmarks/gpu_bench.sh runs the same test-backend-ops checks)."""
from __future__ import annotations

import os
import re
import subprocess
from functools import lru_cache

import pytest

from conftest import backend_ops, backend_ops_test, llama_logits, rel_rms

pytestmark = pytest.mark.gpu

TQ_TYPE = r"=tq[234][jt]?[,)]"
# op -> (the case filter, the fewest cases it runs on CUDA0, the cases CUDA may leave to the CPU: a
# tq destination from F16/BF16 and a permuted tq -> tq copy, neither of which llama.cpp asks for: it
# writes the cache from F32 and shifts it through F32)
CASES = {
    "SET_ROWS": (TQ_TYPE, 50, r"SET_ROWS\(type_src=b?f16,"),
    "CPY": (TQ_TYPE, 30, r"CPY\(type_src=(b?f16|tq[234][jt]?),type_dst=tq[234][jt]?,"),
    "GET_ROWS": (TQ_TYPE, 20, None),
    "FLASH_ATTN_EXT": ("type_[KV]=tq", 200, None),
}
# what a graph with a tq cache runs: the KV write (SET_ROWS from F32), the K-shift (CPY F32 <-> tq)
# and attention
GRAPH_OPS = {
    "SET_ROWS": r"type_src=f32,type_dst=tq[234][jt]?,",
    "CPY": r"type_src=f32,type_dst=tq[234][jt]?,|type_src=tq[234][jt]?,type_dst=f32,",
    "FLASH_ATTN_EXT": r"type_[KV]=tq",
}


def _run(*args: str, timeout: int = 900) -> str:
    return backend_ops(*args, timeout=timeout)


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
    pattern, at_least, may_skip = CASES[op]
    r = backend_ops_test("CUDA0", op, pattern)
    assert r.passed == r.total >= at_least, r.output[-3000:]
    assert all(may_skip and re.search(may_skip, line) for line in r.not_supported), r.not_supported[:10]
    # the decode pairs built by default read the codes directly: no f16-conversion fallback
    fallbacks = set(re.findall(r"no FlashAttention vector kernel compiled for K/V types ([\w-]+)", r.output))
    assert fallbacks <= {"tq3j-tq3j", "tq4j-tq4j", "tq4j-tq3"}, fallbacks


@pytest.mark.parametrize("op", GRAPH_OPS)
def test_graph_ops_stay_on_gpu(op):
    out = _run("support", "-b", "CUDA0", "-o", op, "-p", GRAPH_OPS[op], timeout=300)
    listed = re.findall(r"^\s+%s\(.*\): .*SUPPORTED" % op, out, flags=re.M)
    assert listed, out[-2000:]
    assert "NOT SUPPORTED" not in out, [line for line in out.splitlines() if "NOT SUPPORTED" in line][:10]


def _gpu_test_model() -> str:
    # a GGUF of any llama-architecture model (gpu_bench.sh makes a synthetic SmolLM2-shaped one:
    # the real models do not fit the GPU machine's 64 MiB of carried files), else SmolLM2
    path = os.environ.get("TQ_GPU_TEST_MODEL")
    if path:
        return path
    from tq_llamacpp.data import model_path

    return str(model_path("smollm2"))


def _logits(model: str, type_k: str, type_v: str, gpu: bool, **kw):
    # on the GPU with every layer offloaded, or on the CPU alone (no device visible, so that no op is
    # offloaded either)
    env = dict(os.environ)
    if not gpu:
        env["CUDA_VISIBLE_DEVICES"] = ""
    return llama_logits(model, type_k, type_v, env=env, n_gpu_layers=-1 if gpu else 0, **kw)


def _splits(log: str) -> str:
    m = re.findall(r"graph(?: \(pp[^)]*\))?: nodes = [^,]+, splits = ([0-9 /]+),", log)
    assert m, log[-2000:]
    return m[-1].strip()


@pytest.mark.model
@pytest.mark.parametrize("types", [("tq3", "tq3"), ("tq4", "tq3"), ("q8_0", "tq3"),
                                   ("tq3", "tq3", "layers=k0:tq4;v1:tq2")])
def test_llama_fully_offloaded(types):
    """A model fully offloaded with a tq cache: the cache in CUDA memory, the graph split exactly as
    with an f16 cache (a tq op on the CPU would add splits), and logits that match the CPU's; also
    with per-layer types, one layer of which (tq3 K, tq2 V) is not a pair of the tq decode kernel."""
    import numpy as np

    model = _gpu_test_model()
    # keys centred after RoPE on both: the CPU's default centres them before RoPE, which the CUDA
    # kernels do not do yet (rope=auto picks after RoPE there)
    kw = {"kv_options": ",".join(["rope=post", *types[2:]])}
    ref16, log16 = _logits(model, "f16", "f16", gpu=True)
    gpu, log = _logits(model, *types[:2], gpu=True, **kw)
    cpu, _ = _logits(model, *types[:2], gpu=False, **kw)
    assert re.search(r"CUDA0 KV buffer size", log), log[-2000:]
    assert not re.search(r"\bCPU KV buffer size", log), log[-2000:]
    assert _splits(log) == _splits(log16), (_splits(log), _splits(log16))
    assert np.isfinite(gpu).all() and np.isfinite(cpu).all()
    # GPU vs CPU, same cache type: a code can differ where float rounding moves a value across a
    # decision boundary, so the two differ, but by far less than the cache differs from f16
    rel, rel16 = rel_rms(gpu, cpu), rel_rms(gpu, ref16)
    print(f"{types}: logits GPU vs CPU rel RMS {rel:.2e}; vs an f16 cache on the GPU {rel16:.2e}")
    assert rel < max(0.3 * rel16, 2e-3), (rel, rel16)
    assert (gpu.argmax(axis=1) == cpu.argmax(axis=1)).mean() >= 0.8
