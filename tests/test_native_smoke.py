"""The extension module loads, agrees with the C headers, and answers one call."""
import re
from pathlib import Path

import numpy as np

import tq_llamacpp
from tq_llamacpp import cli, native
from tq_llamacpp._native import ffi, lib

ROOT = Path(__file__).resolve().parents[1]
INCLUDE = ROOT / "native" / "include"
CDEF = ROOT / "tq_llamacpp" / "_native.cdef.txt"  # a build input, not in the wheel


def test_version():
    header = (INCLUDE / "turboquant.h").read_text()
    assert native.version() == re.search(r'#define TQ_VERSION_STRING "([^"]+)"', header).group(1)
    assert tq_llamacpp.__version__ == native.version()


def test_one_call():
    x = np.linspace(-1, 1, 64, dtype=np.float32)
    codes = native.quantize(x, "tq4")
    assert codes.dtype == np.uint8 and codes.shape == (native.block_bytes("tq4"),)
    assert np.abs(native.dequantize(codes, "tq4") - x).max() < 0.1


def test_constants():
    assert native.BLOCK == 64
    assert native.TYPE_NAMES == ("tq2", "tq3", "tq4", "tq3j", "tq4j", "tq2t", "tq3t", "tq2ts", "tq3ts")
    assert [native.bits_per_value(t) for t in native.TYPE_NAMES] == [2.25, 3.25, 4.25, 3.5, 4.5, 2.25, 3.25, 2.125, 3.125]
    for t in native.TYPE_NAMES:
        info = native.type_info(t)
        assert ffi.sizeof(f"block_{t}") == info.block_bytes  # cffi checked the field layout at load
        assert lib.tq_type_from_name(t.encode()) == info.id
        assert native.row_bytes(t, 256) == 4 * info.block_bytes


def test_cdef_declares_every_api_function():
    """The cdef is written by hand: it must not fall behind the headers."""
    api = set(re.findall(r"TQ_API[^;(]*?\b(tq_\w+)\s*\(", (INCLUDE / "turboquant.h").read_text()))
    ggml = (INCLUDE / "tq-ggml.h").read_text()
    api |= set(re.findall(r"TQ_API[^;(]*?\b(tq_\w+)\s*\(", ggml))
    for t in re.findall(r"^TQ_GGML_DECLARE\((\w+)\)", ggml, re.M):
        api |= {a + t + b for a, b in re.findall(r"\b(tq_ggml_\w*?)##t(?:##(\w+))?", ggml)}
    declared = set(re.findall(r"\b(tq_\w+)\s*\(", CDEF.read_text()))
    assert len(api) > 40
    assert api <= declared, sorted(api - declared)
    assert all(hasattr(lib, name) for name in api)


def test_isa():
    assert "portable" in native.isa_available()
    assert native.isa_active() in native.isa_available()


def test_cli_info(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert native.version() in out and native.isa_active() in out


def test_tq_isa_environment_caps_the_dispatch():
    """TQ_ISA measures a smaller CPU's kernels on this one (also inside llama.cpp's tools); a name
    the CPU cannot run is said on stderr and the best ISA stays."""
    import os
    import subprocess
    import sys
    import tempfile

    code = "from tq_llamacpp import native; print(native.isa_active())"

    def active(value):
        env = {**os.environ, "TQ_ISA": value}
        r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True,
                           cwd=tempfile.gettempdir())
        return r.stdout.strip(), r.stderr

    best = native.isa_active()
    for isa in native.isa_available():
        assert active(isa) == (isa, "")
    out, err = active("sse9")
    assert out == best and "TQ_ISA=sse9 is not an instruction set" in err
