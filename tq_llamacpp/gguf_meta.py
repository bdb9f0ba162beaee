"""A model's GGUF metadata (the key/value section, not the tensors), to check a model before
llama.cpp loads it and to size its KV cache. Format: gguf's constants, ggml-org/ggml docs/gguf.md.

llama.cpp aborts the whole process (GGML_ASSERT) on some values a file can hold, e.g. more layers
than LLAMA_MAX_LAYERS; such values are refused here with a GGUFError that names the file and the key.
"""
from __future__ import annotations

import mmap
import os
import struct
from pathlib import Path
from typing import Any, Union

from gguf import GGUF_MAGIC, GGUFValueType

from .errors import GGUFError

# src/llama-hparams.h of the pinned llama.cpp: LLAMA_MAX_LAYERS and LLAMA_MAX_EXPERTS (GGML_ASSERTs)
MAX_LAYERS = 512
MAX_EXPERTS = 1024
# the CPU flash-attention path of the tq types keeps one K row of at most this many values on the stack
MAX_HEAD_DIM_TQ = 1024


# gguf's GGUFReader builds a numpy view per string of the vocabulary: 12.8 s for Qwen2.5's 151k
# tokens on a 2-core machine, at every Llama() (measured 2026-12-02). This reader takes the metadata
# alone in milliseconds, seeking past long arrays; the value types are gguf's own enum.
_SCALARS = {
    GGUFValueType.UINT8: "<B", GGUFValueType.INT8: "<b", GGUFValueType.UINT16: "<H", GGUFValueType.INT16: "<h",
    GGUFValueType.UINT32: "<I", GGUFValueType.INT32: "<i", GGUFValueType.FLOAT32: "<f", GGUFValueType.BOOL: "<?",
    GGUFValueType.UINT64: "<Q", GGUFValueType.INT64: "<q", GGUFValueType.FLOAT64: "<d",
}
_KEEP_ARRAYS_UP_TO = 4096  # longer arrays (the vocabulary) are read past and stored as None
_U64 = struct.Struct("<Q")


class _Reader:
    """Offsets into the mapped file; every length is checked against what is left before it is used."""

    def __init__(self, buf: mmap.mmap, path: Path) -> None:
        self.buf, self.path, self.pos = buf, path, 0

    def need(self, n: int, what: str) -> None:
        left = len(self.buf) - self.pos
        if n > left:
            raise GGUFError(f"{self.path} is truncated or damaged: {what} needs {n} bytes at offset {self.pos}, "
                            f"the file has {left} left")

    def unpack(self, fmt: str, what: str):
        n = struct.calcsize(fmt)
        self.need(n, what)
        out = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += n
        return out

    def string(self, what: str, keep: bool = True) -> str | None:
        (n,) = self.unpack("<Q", what)
        self.need(n, what)
        self.pos += n
        return self.buf[self.pos - n:self.pos].decode("utf-8", errors="replace") if keep else None

    def value(self, vtype: int, what: str, keep: bool = True) -> Any:
        if vtype in _SCALARS:
            return self.unpack(_SCALARS[vtype], what)[0]
        if vtype == GGUFValueType.STRING:
            return self.string(what, keep)
        if vtype == GGUFValueType.ARRAY:
            (etype,) = self.unpack("<I", what)
            (n,) = self.unpack("<Q", what)
            keep = keep and n <= _KEEP_ARRAYS_UP_TO
            if etype in _SCALARS:
                size = struct.calcsize(_SCALARS[etype])
                self.need(n * size, what)
                self.pos += n * size
                return list(struct.unpack_from(f"<{n}{_SCALARS[etype][1]}", self.buf, self.pos - n * size)) \
                    if keep else None
            if etype == GGUFValueType.STRING and not keep:  # the vocabulary: lengths only, in a tight loop
                pos, end, length = self.pos, len(self.buf), _U64.unpack_from
                for _ in range(n):
                    if pos + 8 > end:
                        break
                    pos += 8 + length(self.buf, pos)[0]
                self.need(pos - self.pos, what)
                self.pos = pos
                return None
            out = [self.value(etype, what, keep) for _ in range(n)]
            return out if keep else None
        raise GGUFError(f"{self.path}: {what} has unknown GGUF value type {vtype}")


def read_metadata(path: Union[str, Path]) -> dict[str, Any]:
    """Every metadata key of the GGUF file at `path` with its value (strings decoded, arrays of up to
    4096 items as lists, longer ones as None). GGUFError names the file and what is wrong with it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    with path.open("rb") as f:
        if os.fstat(f.fileno()).st_size < 4 or f.read(4) != struct.pack("<I", GGUF_MAGIC):
            raise GGUFError(f"{path} is not a GGUF file (its first bytes are not 'GGUF')")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            r = _Reader(buf, path)
            r.pos = 4
            (version,) = r.unpack("<I", "the header")
            if version not in (2, 3):
                raise GGUFError(f"{path}: GGUF version {version}, llama.cpp reads versions 2 and 3")
            _n_tensors, n_kv = r.unpack("<QQ", "the header")
            meta: dict[str, Any] = {}
            for i in range(n_kv):
                key = r.string(f"metadata key {i}")
                (vtype,) = r.unpack("<I", f"the type of {key!r}")
                meta[key] = r.value(vtype, f"the value of {key!r}")
            return meta


def _positive_int(path: Path, key: str, value: Any, limit: int | None = None) -> None:
    values = value if isinstance(value, list) else [value]
    for v in values:
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise GGUFError(f"{path.name}: {key} = {value!r} is not a whole number")
        if limit is not None and v > limit:
            raise GGUFError(f"{path.name}: {key} = {v} is more than llama.cpp supports ({limit}); "
                            "the file is damaged or not a model llama.cpp can load")


def attention_shape(meta: dict[str, Any], path: Union[str, Path] = "model") -> dict[str, Any]:
    """Per-model numbers the KV cache depends on, with llama.cpp's defaults for missing keys; values
    llama.cpp would abort on are refused (GGUFError)."""
    path = Path(path)
    arch = meta.get("general.architecture")
    if not arch or not isinstance(arch, str):
        raise GGUFError(f"{path.name}: the GGUF metadata has no general.architecture")

    def get(key: str, default: Any = None) -> Any:
        return meta.get(f"{arch}.{key}", default)

    n_layer, n_embd, n_head = get("block_count"), get("embedding_length"), get("attention.head_count")
    missing = [k for k, v in (("block_count", n_layer), ("embedding_length", n_embd),
                              ("attention.head_count", n_head)) if v is None]
    if missing:
        raise GGUFError(f"{path.name}: the GGUF metadata for {arch} lacks {', '.join(f'{arch}.{k}' for k in missing)}")
    _positive_int(path, f"{arch}.block_count", n_layer, MAX_LAYERS)
    if n_layer == 0:
        raise GGUFError(f"{path.name}: {arch}.block_count is 0")
    _positive_int(path, f"{arch}.embedding_length", n_embd)
    _positive_int(path, f"{arch}.expert_count", get("expert_count", 0), MAX_EXPERTS)

    def per_layer(key: str, value: Any) -> list[int]:
        _positive_int(path, f"{arch}.{key}", value)
        if isinstance(value, list):
            if len(value) != n_layer:
                raise GGUFError(f"{path.name}: {arch}.{key} has {len(value)} entries for {n_layer} layers")
            return list(value)
        return [value] * n_layer

    heads = per_layer("attention.head_count", n_head)
    if max(heads) == 0:
        raise GGUFError(f"{path.name}: {arch}.attention.head_count is 0 in every layer")
    heads_kv = per_layer("attention.head_count_kv", get("attention.head_count_kv", n_head))
    head_k = get("attention.key_length", n_embd // max(heads))
    head_v = get("attention.value_length", head_k)
    for key, v in (("attention.key_length", head_k), ("attention.value_length", head_v)):
        _positive_int(path, f"{arch}.{key}", v)
    n_ctx_train = get("context_length")
    window = get("attention.sliding_window")
    for key, v in (("context_length", n_ctx_train), ("attention.sliding_window", window)):
        if v is not None:
            _positive_int(path, f"{arch}.{key}", v)
    return {
        "arch": arch,
        "n_layer": n_layer,
        "n_head_kv": heads_kv,
        "head_dim_k": head_k,
        "head_dim_v": head_v,
        "n_ctx_train": n_ctx_train,
        "sliding_window": window,
    }
