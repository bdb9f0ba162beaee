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


# Logits of a prompt (prefill) and of 4 single tokens after it (decode), from a tq_llamacpp.Llama in a
# subprocess (an abort there fails a test instead of ending the run) that runs outside the checkout
# (`python -c` puts the working directory first on sys.path, where the checkout's tq_llamacpp, without
# its built parts, would shadow the installed one). argv: model, type_k, type_v, Llama kwargs as JSON.
_LOGITS = r"""
import json, sys
import numpy as np
import tq_llamacpp
model, type_k, type_v, kwargs = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
llm = tq_llamacpp.Llama(model, type_k=type_k, type_v=type_v, n_ctx=512, n_batch=512, logits_all=True, seed=7,
                        verbose=True, **kwargs)
toks = llm.tokenize(b"It is a truth universally acknowledged, that a single man in possession of a good "
                    b"fortune, must be in want of a wife. However little known the feelings or views of such a man "
                    b"may be on his first entering a neighbourhood, this truth is so well fixed in the minds")
llm.eval(toks)
for t in (11, 22, 33, 44):
    llm.eval([t])
rows = [len(toks) - 1] + [len(toks) + i for i in range(4)]
sys.stderr.flush()
print(json.dumps(np.asarray(llm.scores)[rows].tolist()))
"""


def llama_logits(model, type_k: str, type_v: str, env=None, **llama_kwargs):
    """(logits of 5 positions, llama.cpp's log) from _LOGITS, with these Llama arguments."""
    import json
    import sys
    import tempfile

    import numpy as np

    proc = subprocess.run([sys.executable, "-c", _LOGITS, str(model), type_k, type_v, json.dumps(llama_kwargs)],
                          capture_output=True, text=True, timeout=600, env=env, cwd=tempfile.gettempdir())
    assert proc.returncode == 0, proc.stderr[-3000:]
    return np.array(json.loads(proc.stdout.strip().splitlines()[-1])), proc.stderr


def rel_rms(a, b) -> float:
    """Relative RMS difference of a against b."""
    import numpy as np

    return float(np.sqrt(np.mean((a - b) ** 2) / np.mean(b ** 2)))
