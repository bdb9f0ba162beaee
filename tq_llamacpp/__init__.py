"""TurboQuant KV-cache types for llama.cpp.

`from tq_llamacpp import Llama` gives llama-cpp-python's Llama bound to the patched llama.cpp, with
cache types by name; the codec itself is `tq_llamacpp.native`.
"""
from . import native

__version__ = native.version()
__all__ = ["Llama", "kv_bytes", "cache_type", "CACHE_TYPES", "native", "__version__"]


def __getattr__(name: str):
    # llama_cpp loads libllama at import: only when asked for, so the codec works without llama.cpp
    if name in ("Llama", "kv_bytes"):
        from . import llama

        return getattr(llama, name)
    if name in ("cache_type", "CACHE_TYPES"):
        from . import cache_types

        return getattr(cache_types, name)
    raise AttributeError(f"module 'tq_llamacpp' has no attribute {name!r}")
