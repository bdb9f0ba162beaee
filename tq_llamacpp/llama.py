"""`Llama`: llama-cpp-python's Llama with KV-cache types by name and the checks they need."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Union

from ._libs import import_llama_cpp
from .cache_types import CACHE_TYPES, CacheType, cache_type
from .gguf_meta import attention_shape, read_metadata

llama_cpp = import_llama_cpp()

TypeArg = Optional[Union[str, int, CacheType]]


def _check_model(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    return attention_shape(read_metadata(path))


def check_cache_types(model_path: Union[str, Path], type_k: TypeArg, type_v: TypeArg) -> tuple[CacheType, CacheType]:
    """Resolve the two cache types and check the model's head sizes fit their blocks."""
    shape = _check_model(Path(model_path))
    k = cache_type(type_k if type_k is not None else "f16")
    v = cache_type(type_v if type_v is not None else "f16")
    for which, t, hd in (("K", k, shape["head_dim_k"]), ("V", v, shape["head_dim_v"])):
        if hd % t.block:
            raise ValueError(
                f"{Path(model_path).name} has head size {hd} for {which}, which the {t.name} cache cannot code: "
                f"{t.name} needs a multiple of {t.block}; use one of "
                + ", ".join(n for n, c in CACHE_TYPES.items() if hd % c.block == 0)
            )
    return k, v


# kv_center -> LLAMA_KV_CENTER, read by the patched llama.cpp when it creates the cache
_KV_CENTER = {None: None, "auto": "auto", True: "k", "k": "k", "kv": "kv", False: "0", "off": "0"}


class Llama(llama_cpp.Llama):
    """llama_cpp.Llama with type_k / type_v given as names ("tq3", "q8_0", ...) or ggml ids.

    Flash attention is switched on when the cache needs it (a quantized V, or a tq K); passing
    flash_attn=False with such a cache raises ValueError instead of failing inside llama.cpp.

    kv_center: how the cache stores K (and V) relative to per-head means fixed by the first ubatch
    (README, "Centring"; K's mean and channel factors weighted per RoPE pair for the positions the
    cache will hold): "auto" (the default: K of a tq cache, centred and equalized), True / "k" (K of
    any quantized cache), "kv" (K and V), False / "off".
    """

    def __init__(self, model_path: Union[str, Path], *, type_k: TypeArg = None, type_v: TypeArg = None,
                 flash_attn: Optional[bool] = None, kv_center: Union[None, bool, str] = None, **kwargs: Any) -> None:
        if kv_center not in _KV_CENTER:
            raise ValueError(f"kv_center must be one of auto, k, kv, off, True or False, not {kv_center!r}")
        k, v = check_cache_types(model_path, type_k, type_v)
        needs_fa = v.quantized or k.turboquant
        if flash_attn is None:
            flash_attn = needs_fa
        elif not flash_attn and needs_fa:
            why = f"a quantized V cache ({v.name})" if v.quantized else f"the {k.name} K cache"
            raise ValueError(f"{why} needs flash attention: pass flash_attn=True or leave flash_attn unset")
        self.cache_type_k, self.cache_type_v = k, v
        env, saved = _KV_CENTER[kv_center], os.environ.get("LLAMA_KV_CENTER")
        if env is not None:
            os.environ["LLAMA_KV_CENTER"] = env
        try:
            super().__init__(str(model_path), type_k=k.ggml_id, type_v=v.ggml_id, flash_attn=flash_attn, **kwargs)
        finally:
            if env is not None:
                if saved is None:
                    del os.environ["LLAMA_KV_CENTER"]
                else:
                    os.environ["LLAMA_KV_CENTER"] = saved

    def close(self) -> None:
        # llama_cpp.Llama.__del__ calls close(); after a refused __init__ there is nothing to close
        if hasattr(self, "_stack"):
            super().close()


def kv_bytes(model_path: Union[str, Path], type_k: TypeArg = "f16", type_v: TypeArg = None, n_ctx: int = 4096,
             n_ubatch: int = 512) -> int:
    """Bytes of KV cache llama.cpp allocates for one sequence of n_ctx tokens (sliding-window layers
    keep only window + ubatch cells, as llama.cpp sizes them)."""
    if not Path(model_path).is_file():
        raise FileNotFoundError(f"model file not found: {model_path}")
    meta = read_metadata(model_path)
    shape = attention_shape(meta)
    k = cache_type(type_k)
    v = cache_type(type_v if type_v is not None else type_k)
    pad = lambda n: (n + 255) // 256 * 256  # noqa: E731  llama.cpp pads cache sizes to 256 cells
    full = pad(n_ctx)
    swa = swa_layers(meta, shape)
    total = 0
    for il in range(shape["n_layer"]):
        cells = min(full, pad(shape["sliding_window"] + n_ubatch)) if swa[il] else full
        nkv = shape["n_head_kv"][il]
        if nkv == 0:
            continue
        total += cells * (k.row_bytes(nkv * shape["head_dim_k"]) + v.row_bytes(nkv * shape["head_dim_v"]))
    return total


# architectures whose sliding-window pattern llama.cpp hard-codes when the GGUF does not carry it
_SWA_PERIOD = {"gemma3": 6, "gemma2": 2, "cohere2": 4}


def swa_layers(meta: dict[str, Any], shape: dict[str, Any]) -> list[bool]:
    """Which layers llama.cpp gives a sliding-window cache."""
    n = shape["n_layer"]
    if not shape["sliding_window"]:
        return [False] * n
    pattern = meta.get(f"{shape['arch']}.attention.sliding_window_pattern", _SWA_PERIOD.get(shape["arch"]))
    if isinstance(pattern, list):
        return [bool(p) for p in pattern[:n]]
    if not pattern:
        return [False] * n
    return [il % pattern < pattern - 1 for il in range(n)]
