"""Read a GGUF file's key/value metadata (not its tensors), to check a model before llama.cpp
loads it and to size its KV cache. Format: github.com/ggml-org/ggml docs/gguf.md (v2/v3)."""
from __future__ import annotations

import struct
from pathlib import Path
from typing import Any, BinaryIO

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


class GGUFError(ValueError):
    pass


def _read(f: BinaryIO, n: int) -> bytes:
    b = f.read(n)
    if len(b) != n:
        raise GGUFError("truncated GGUF header")
    return b


def _string(f: BinaryIO) -> str:
    (n,) = struct.unpack("<Q", _read(f, 8))
    return _read(f, n).decode("utf-8", errors="replace")


def _value(f: BinaryIO, vtype: int, keep: bool) -> Any:
    if vtype in _SCALARS:
        fmt = _SCALARS[vtype]
        return struct.unpack(fmt, _read(f, struct.calcsize(fmt)))[0]
    if vtype == _STRING:
        return _string(f)
    if vtype == _ARRAY:
        (etype,) = struct.unpack("<I", _read(f, 4))
        (n,) = struct.unpack("<Q", _read(f, 8))
        if etype in _SCALARS:
            size = struct.calcsize(_SCALARS[etype])
            raw = _read(f, n * size)
            return list(struct.unpack(f"<{n}{_SCALARS[etype][1]}", raw)) if keep else None
        out = [_value(f, etype, keep) for _ in range(n)]
        return out if keep else None
    raise GGUFError(f"unknown GGUF value type {vtype}")


def read_metadata(path: str | Path, keep_arrays_over: int = 4096) -> dict[str, Any]:
    """All metadata keys; arrays longer than `keep_arrays_over` (the vocabulary) are read past and
    stored as None."""
    path = Path(path)
    with path.open("rb") as f:
        if _read(f, 4) != b"GGUF":
            raise GGUFError(f"{path} is not a GGUF file (bad magic)")
        (version,) = struct.unpack("<I", _read(f, 4))
        if version not in (2, 3):
            raise GGUFError(f"{path}: unsupported GGUF version {version}")
        _n_tensors, n_kv = struct.unpack("<QQ", _read(f, 16))
        meta: dict[str, Any] = {}
        for _ in range(n_kv):
            key = _string(f)
            (vtype,) = struct.unpack("<I", _read(f, 4))
            if vtype == _ARRAY:
                pos = f.tell()
                (etype,) = struct.unpack("<I", _read(f, 4))
                (n,) = struct.unpack("<Q", _read(f, 8))
                f.seek(pos)
                meta[key] = _value(f, vtype, keep=n <= keep_arrays_over)
            else:
                meta[key] = _value(f, vtype, keep=True)
        return meta


def attention_shape(meta: dict[str, Any]) -> dict[str, Any]:
    """Per-model numbers the KV cache depends on, with llama.cpp's defaults for missing keys."""
    arch = meta.get("general.architecture")
    if not arch:
        raise GGUFError("GGUF metadata has no general.architecture")

    def get(key: str, default: Any = None) -> Any:
        return meta.get(f"{arch}.{key}", default)

    n_layer = get("block_count")
    n_embd = get("embedding_length")
    n_head = get("attention.head_count")
    if n_layer is None or n_embd is None or n_head is None:
        raise GGUFError(f"GGUF metadata for {arch} lacks block_count/embedding_length/attention.head_count")
    heads = n_head if isinstance(n_head, list) else [n_head] * n_layer
    n_head_kv = get("attention.head_count_kv", n_head)
    heads_kv = n_head_kv if isinstance(n_head_kv, list) else [n_head_kv] * n_layer
    head_k = get("attention.key_length", n_embd // max(heads))
    head_v = get("attention.value_length", head_k)
    return {
        "arch": arch,
        "n_layer": n_layer,
        "n_head_kv": heads_kv,
        "head_dim_k": head_k,
        "head_dim_v": head_v,
        "n_ctx_train": get("context_length"),
        "sliding_window": get("attention.sliding_window"),
    }
