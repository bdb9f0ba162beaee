"""Where the patched llama.cpp lives, and importing llama_cpp so that it loads it.

llama-cpp-python's Python layer loads libllama from $LLAMA_CPP_LIB_PATH at import time; this
package installs its own patched build in tq_llamacpp/lib and points it there first.
"""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

# where the build installed the package's binaries: next to the cffi module, which an editable
# install keeps in site-packages while the .py files stay in the checkout
_PKG = Path(importlib.util.find_spec("tq_llamacpp._native").origin).resolve().parent

from .errors import LibraryNotFound

__all__ = ["LibraryNotFound", "lib_dir", "tool", "import_llama_cpp"]


def lib_dir() -> Path:
    """The folder with libllama.so and libggml*.so (TQ_LLAMACPP_LIB_DIR overrides)."""
    d = Path(os.environ.get("TQ_LLAMACPP_LIB_DIR", _PKG / "lib"))
    if not (d / "libllama.so").exists() and not (d / "libllama.dylib").exists():
        raise LibraryNotFound(
            f"the patched llama.cpp libraries are not in {d}: install the package with its llama.cpp "
            "build (`pip install .`, TQ_BUILD_LLAMA=ON) or set TQ_LLAMACPP_LIB_DIR to a folder holding libllama.so"
        )
    return d


def tool(name: str) -> Path:
    """Path of an installed llama.cpp executable (llama-perplexity, llama-bench, test-backend-ops)."""
    d = Path(os.environ.get("TQ_LLAMACPP_BIN_DIR", _PKG / "bin"))
    p = d / name
    if not p.exists():
        raise LibraryNotFound(f"{name} is not in {d}: it is built by `pip install .` (TQ_BUILD_LLAMA=ON)")
    return p


def import_llama_cpp():
    """Import llama_cpp bound to our libraries; refuse if it was already loaded from elsewhere."""
    d = lib_dir()
    mod = sys.modules.get("llama_cpp")
    if mod is None:
        if sys.platform.startswith("linux") and (d / "libggml-cuda.so").exists():
            # libggml-cuda.so as nvcc links it carries (and exports) its own copy of parts of libstdc++;
            # loaded from Python, which has no libstdc++ of its own in the global scope, libllama's
            # iostream calls bind to that copy and crash (seen on an H200 with CUDA 13, in print_info).
            # The system libstdc++ loaded globally first takes those symbols back.
            import ctypes  # noqa: PLC0415
            import ctypes.util  # noqa: PLC0415

            ctypes.CDLL(ctypes.util.find_library("stdc++") or "libstdc++.so.6", mode=ctypes.RTLD_GLOBAL)
        os.environ["LLAMA_CPP_LIB_PATH"] = str(d)
        import llama_cpp as mod  # noqa: PLC0415
    loaded = Path(getattr(mod.llama_cpp._lib, "_name", "") or "").resolve().parent
    if loaded != d.resolve():
        raise LibraryNotFound(
            f"llama_cpp was imported before tq_llamacpp and uses {loaded}, which has no tq cache types; "
            "import tq_llamacpp first (or set LLAMA_CPP_LIB_PATH to " + str(d) + ")"
        )
    return mod
