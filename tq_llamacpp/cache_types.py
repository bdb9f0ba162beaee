"""The one table of KV-cache type names: user name <-> ggml type id <-> block layout.

The tq ids (160+) are the values patches/ gives the new ggml types: far above upstream's next
free ids so that upstream's future types cannot collide with them (state files store type ids).
tests/test_llama_api.py checks every row against the built libggml.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Union

import numpy as np

from .errors import TqTypeError, TqValueError


@dataclass(frozen=True)
class CacheType:
    name: str
    ggml_id: int
    block: int  # values per block
    block_bytes: int  # bytes per block, scales included

    @property
    def bits_per_value(self) -> float:
        return 8.0 * self.block_bytes / self.block

    @property
    def quantized(self) -> bool:
        return self.name not in ("f32", "f16", "bf16")

    @property
    def turboquant(self) -> bool:
        return self.name.startswith("tq")

    def row_bytes(self, n: int) -> int:
        if n % self.block:
            raise TqValueError(f"{self.name} codes blocks of {self.block} values; a row of {n} does not divide")
        return n // self.block * self.block_bytes


# the KV-cache types llama.cpp accepts (common/arg.cpp kv_cache_types), then ours
CACHE_TYPES: dict[str, CacheType] = {
    t.name: t
    for t in (
        CacheType("f32", 0, 1, 4),
        CacheType("f16", 1, 1, 2),
        CacheType("bf16", 30, 1, 2),
        CacheType("q8_0", 8, 32, 34),
        CacheType("q5_1", 7, 32, 24),
        CacheType("q5_0", 6, 32, 22),
        CacheType("q4_1", 3, 32, 20),
        CacheType("q4_0", 2, 32, 18),
        CacheType("iq4_nl", 20, 32, 18),
        CacheType("tq4", 162, 64, 34),
        CacheType("tq3", 161, 64, 26),
        CacheType("tq2", 160, 64, 18),
        CacheType("tq4j", 164, 64, 36),
        CacheType("tq3j", 163, 64, 28),
        CacheType("tq3t", 166, 64, 26),
        CacheType("tq2t", 165, 64, 18),
        CacheType("tq3ts", 168, 64, 25),
        CacheType("tq2ts", 167, 64, 17),
    )
}
_BY_ID = {t.ggml_id: t for t in CACHE_TYPES.values()}


def cache_type(value: Union[str, int, CacheType]) -> CacheType:
    """Resolve a cache type given by name ("tq3", case-insensitive) or ggml id; ValueError otherwise."""
    if isinstance(value, CacheType):
        return value
    if isinstance(value, str):
        key = value.strip().lower()
        if key in CACHE_TYPES:
            return CACHE_TYPES[key]
        if key.isdigit():  # "161", as a command line or a JSON config gives an id
            return cache_type(int(key))
        raise TqValueError(f"unknown KV cache type {value!r}; valid names: {', '.join(CACHE_TYPES)}")
    if isinstance(value, (bool, np.bool_)):  # bool is an int: refuse it rather than read True as f16
        raise TqTypeError(f"cache type must be a name or a ggml type id, not {value!r}")
    try:
        ident = operator.index(value)  # int, numpy integers
    except TypeError:
        raise TqTypeError(f"cache type must be a name or a ggml type id, not {type(value).__name__}") from None
    if ident in _BY_ID:
        return _BY_ID[ident]
    raise TqValueError(f"unknown KV cache type id {ident}; valid ids: "
                       + ", ".join(f"{t.ggml_id} ({t.name})" for t in CACHE_TYPES.values()))


def parse_pair(spec: str) -> tuple[CacheType, CacheType]:
    """'tq3' -> (tq3, tq3); 'q8_0/tq3' -> K q8_0, V tq3."""
    parts = spec.split("/")
    if len(parts) == 1:
        t = cache_type(parts[0])
        return t, t
    if len(parts) == 2:
        return cache_type(parts[0]), cache_type(parts[1])
    raise TqValueError(f"cache type pair must be 'K' or 'K/V', got {spec!r}")


def pair_name(k: CacheType, v: CacheType) -> str:
    return k.name if k == v else f"{k.name}/{v.name}"
