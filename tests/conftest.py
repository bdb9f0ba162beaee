"""Fixtures shared by the test files: the default model, the package bound to the patched llama.cpp,
and llama.cpp's test-backend-ops."""
from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass

import pytest


@pytest.fixture(scope="session")
def smollm2():
    from tq_llamacpp.data import model_path

    return model_path("smollm2")


@pytest.fixture(scope="session")
def tq():
    import tq_llamacpp
    import tq_llamacpp.llama  # noqa: F401  binds llama_cpp to the patched libraries before any test imports it

    return tq_llamacpp


@dataclass
class BackendOps:
    """What `test-backend-ops test` printed: passed / total and the cases it did not run."""
    output: str
    passed: int
    total: int
    not_supported: list[str]


def backend_ops(*args: str, timeout: int = 900) -> str:
    from tq_llamacpp._libs import tool

    proc = subprocess.run([str(tool("test-backend-ops")), *args], capture_output=True, text=True, timeout=timeout)
    return proc.stdout + proc.stderr


def backend_ops_test(backend: str, op: str, pattern: str) -> BackendOps:
    out = backend_ops("test", "-b", backend, "-o", op, "-p", pattern)
    m = re.search(r"(\d+)/(\d+) tests passed", out)
    assert m, out[-3000:]
    skipped = [line.strip() for line in out.splitlines() if re.search(r"\bnot supported\b", line)]
    return BackendOps(out, int(m.group(1)), int(m.group(2)), skipped)
