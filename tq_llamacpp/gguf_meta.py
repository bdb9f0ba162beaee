"""A model's GGUF metadata, read with the `gguf` package (llama.cpp's own reader), to check a model
before llama.cpp loads it and to size its KV cache.

llama.cpp aborts the whole process (GGML_ASSERT) on some values a file can hold, e.g. more layers
than LLAMA_MAX_LAYERS; such values are refused here with a GGUFError that names the file and the key.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Union

from .errors import GGUFError

# src/llama-hparams.h of the pinned llama.cpp: LLAMA_MAX_LAYERS and LLAMA_MAX_EXPERTS (GGML_ASSERTs)
MAX_LAYERS = 512
MAX_EXPERTS = 1024
# the CPU flash-attention path of the tq types keeps one K row of at most this many values on the stack
MAX_HEAD_DIM_TQ = 1024


def read_metadata(path: Union[str, Path]) -> dict[str, Any]:
    """Every metadata key of the GGUF file at `path` with its value (strings decoded, arrays as lists,
    the tokenizer's long arrays included). GGUFError names the file and what is wrong with it."""
    from gguf import GGUFReader, GGUFValueType  # noqa: PLC0415  (numpy and mmap: only when a model is read)

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    try:
        reader = GGUFReader(path, "r")
    except ValueError as exc:  # bad magic, unsupported version, empty file
        raise GGUFError(f"{path} is not a GGUF file llama.cpp can read: {exc}") from exc
    except (IndexError, OverflowError, MemoryError, OSError) as exc:  # lengths past the end of the file
        raise GGUFError(f"{path} is truncated or damaged: its header points past the end of the file "
                        f"({type(exc).__name__}: {exc})") from exc
    meta: dict[str, Any] = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        if field.types and field.types[0] == GGUFValueType.ARRAY and len(field.data) > 4096:
            meta[key] = None  # the vocabulary: nothing here needs it, and decoding it takes a while
            continue
        try:
            meta[key] = field.contents()
        except (UnicodeDecodeError, ValueError, IndexError) as exc:
            raise GGUFError(f"{path}: metadata key {key!r} cannot be read ({exc})") from exc
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
