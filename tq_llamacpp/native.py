"""Typed NumPy interface to the TurboQuant C library (native/include/turboquant.h).

Arguments are checked here, before any C call, so a bad input raises an exception that names
the problem (tq_llamacpp.errors) and never reaches C; C's own checks stay as a second line.
Float input must already be float32, C-contiguous, aligned and finite: nothing is converted
silently, since a hidden float64 -> float32 copy changes both cost and precision.

Shapes: a 1-D array is one row; a 2-D array is a batch of rows. Codes are np.uint8 arrays of
whole blocks (row_bytes(type, n) bytes for n values); bytes, bytearray and memoryview are read as codes
too. Types are named "tq2", "tq3", "tq4", "tq3j", "tq4j", "tq2t", "tq3t", "tq2ts", "tq3ts" (TYPE_NAMES; case ignored,
as everywhere).
"""
from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Union

import numpy as np

from ._native import ffi, lib
from .errors import TqIsaError, TqTypeError, TqValueError, check

__all__ = [
    "BLOCK", "TYPE_NAMES", "ISA_NAMES", "TypeInfo", "version", "type_info", "block_bytes", "bits_per_value",
    "row_bytes", "codebook", "quantize", "quantize_rms_scale", "dequantize", "dot", "rotate", "unrotate",
    "encode", "decode", "inner_product", "Attention", "isa_available", "isa_active", "force_isa", "reset_isa",
]

BLOCK: int = lib.TQ_BLOCK
MIN_DIM, MAX_DIM = 64, 1024  # rotation sizes: powers of two in this range (TQ_ERR_DIM)
_MAX_LENGTH = 1 << 48  # far past any real row, and row_bytes() of it still fits size_t

Codes = Union[np.ndarray, bytes, bytearray, memoryview]


@dataclass(frozen=True)
class TypeInfo:
    name: str
    id: int  # the tq_type value
    code_bits: int  # bits of the MSE code per value
    qjl: bool  # + one residual sign bit per value (unbiased inner products)
    block_bytes: int  # bytes per BLOCK values
    bits_per_value: float  # every byte counted, scales included


def _load_types() -> dict[str, TypeInfo]:
    types = {}
    for t in range(lib.TQ_TYPE_COUNT):
        name = ffi.string(lib.tq_type_name(t)).decode()
        types[name] = TypeInfo(name, t, lib.tq_code_bits(t), bool(lib.tq_is_qjl(t)), lib.tq_block_bytes(t),
                               lib.tq_bits_per_value(t))
    return types


_TYPES = _load_types()
TYPE_NAMES: tuple[str, ...] = tuple(_TYPES)
_ISA_BITS = {ffi.string(lib.tq_isa_name(b)).decode(): b
             for b in (lib.TQ_ISA_PORTABLE, lib.TQ_ISA_AVX2, lib.TQ_ISA_AVX512, lib.TQ_ISA_NEON)}
ISA_NAMES: tuple[str, ...] = tuple(_ISA_BITS)


def version() -> str:
    return ffi.string(lib.tq_version()).decode()


# ---- argument checks ----

def _typename(v) -> str:
    t = type(v)
    return t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"


def _type(type: str) -> TypeInfo:
    # names as everywhere in the package (cache_types.cache_type): case and surrounding spaces ignored
    if not isinstance(type, str):
        raise TqTypeError(f"type must be a str, one of {', '.join(TYPE_NAMES)}; got {_typename(type)}")
    info = _TYPES.get(type.strip().lower())
    if info is None:
        raise TqValueError(f"unknown TurboQuant type {type!r}; valid names: {', '.join(TYPE_NAMES)}")
    return info


def _int(value, what: str) -> int:
    if isinstance(value, bool):
        raise TqTypeError(f"{what} must be an int, got bool")
    try:
        return operator.index(value)
    except TypeError:
        raise TqTypeError(f"{what} must be an int, got {_typename(value)}") from None


def _length(n, what: str = "n") -> int:
    n = _int(n, what)
    if n <= 0 or n % BLOCK:
        raise TqValueError(f"{what} = {n} is not a positive multiple of the block size {BLOCK}")
    if n >= _MAX_LENGTH:
        raise TqValueError(f"{what} = {n} is too large (limit 2**48)")
    return n


def _dim(d, what: str = "d") -> int:
    d = _int(d, what)
    if not (MIN_DIM <= d <= MAX_DIM) or d & (d - 1):
        raise TqValueError(f"rotation size {what} = {d} is not a power of two from {MIN_DIM} to {MAX_DIM}")
    return d


def _seed(seed) -> int:
    seed = _int(seed, "seed")
    if not 0 <= seed < 1 << 64:
        raise TqValueError(f"seed = {seed} is outside the unsigned 64-bit range")
    return seed


def _ndarray(a, what: str, dtype: type) -> np.ndarray:
    if not isinstance(a, np.ndarray):
        raise TqTypeError(f"{what} must be a numpy.ndarray of {np.dtype(dtype)}, got {_typename(a)}")
    if a.dtype != dtype:
        raise TqTypeError(f"{what} must have dtype {np.dtype(dtype)}, got {a.dtype} (convert it explicitly)")
    return a


def _array(a, what: str, dtype: type) -> np.ndarray:
    a = _ndarray(a, what, dtype)
    if a.ndim not in (1, 2):
        raise TqValueError(f"{what} must be 1-D (one row) or 2-D (rows), got shape {a.shape}")
    if not a.flags.c_contiguous:
        raise TqValueError(f"{what} must be C-contiguous (np.ascontiguousarray makes a copy that is)")
    if not a.flags.aligned:
        raise TqValueError(f"{what} is not aligned to its {a.itemsize}-byte dtype")
    return a


def _floats(x, what: str, rotation: bool = False) -> np.ndarray:
    x = _array(x, what, np.float32)
    if rotation:
        _dim(x.shape[-1], f"{what}.shape[-1]")
    else:
        _length(x.shape[-1], f"{what}.shape[-1]")
    _finite(x, what)
    return x


def _finite(x: np.ndarray, what: str, inf_ok: bool = False) -> None:
    """Raise for the first NaN (or infinity, unless inf_ok) in x, naming where it is."""
    bad = np.isnan(x) if inf_ok else ~np.isfinite(x)
    if bad.any():
        at = tuple(int(i) for i in np.argwhere(bad)[0])
        kind = "NaN" if np.isnan(x[at]) else "infinity"
        raise TqValueError(f"{what} contains {kind} at index {at if x.ndim > 1 else at[0]} "
                           f"({int(bad.sum())} {'NaN' if inf_ok else 'non-finite'} values)")


def _codes(codes: Codes, what: str = "codes") -> np.ndarray:
    if isinstance(codes, memoryview):
        if not codes.c_contiguous:
            raise TqValueError(f"{what}: the memoryview is not C-contiguous")
        codes = codes.cast("B")
    if isinstance(codes, (bytes, bytearray, memoryview)):
        codes = np.frombuffer(codes, dtype=np.uint8)
    return _array(codes, what, np.uint8)


def _code_rows(codes: np.ndarray, info: TypeInfo, n: int) -> int:
    """Rows held by `codes` for rows of n values; a size mismatch raises."""
    rb = lib.tq_row_bytes(info.id, n)
    have = codes.shape[-1]
    if have != rb:
        raise TqValueError(f"codes hold {have} bytes per row, but {n} values of {info.name} take {rb} "
                           f"({n // BLOCK} blocks of {info.block_bytes} bytes)")
    return 1 if codes.ndim == 1 else codes.shape[0]


def _infer_n(codes: np.ndarray, info: TypeInfo) -> int:
    have = codes.shape[-1]
    if have == 0 or have % info.block_bytes:
        raise TqValueError(f"codes hold {have} bytes per row, not a positive multiple of the "
                           f"{info.block_bytes}-byte {info.name} block")
    return have // info.block_bytes * BLOCK


def _pair_rows(a: np.ndarray, b: np.ndarray, rows_a: int, rows_b: int) -> int:
    if a.ndim == 2 and b.ndim == 2 and rows_a != rows_b:
        raise TqValueError(f"queries have {rows_a} rows but codes have {rows_b}")
    return rows_b if b.ndim == 2 else rows_a


def _ptr(ctype: str, a: np.ndarray):
    return ffi.from_buffer(ctype, a)


# ---- the type table ----

def type_info(type: str) -> TypeInfo:
    return _type(type)


def block_bytes(type: str) -> int:
    return _type(type).block_bytes


def bits_per_value(type: str) -> float:
    return _type(type).bits_per_value


def row_bytes(type: str, n: int) -> int:
    """Bytes of the code of n values (n a positive multiple of BLOCK)."""
    return lib.tq_row_bytes(_type(type).id, _length(n))


def codebook(bits: int) -> np.ndarray:
    """The 2**bits Lloyd-Max centroids at unit variance, ascending (bits 1..4)."""
    bits = _int(bits, "bits")
    if not 1 <= bits <= 4:
        raise TqValueError(f"no codebook for {bits} bits; bit widths 1 to 4 exist")
    out = np.empty(1 << bits, dtype=np.float32)
    check(lib.tq_codebook(bits, _ptr("float[]", out), out.size), "codebook")
    return out


# ---- rows of already-rotated values ----

def _quantize(fn, x: np.ndarray, type: str, name: str) -> np.ndarray:
    info = _type(type)
    x = _floats(x, "x")
    n = x.shape[-1]
    out = np.empty(x.shape[:-1] + (lib.tq_row_bytes(info.id, n),), dtype=np.uint8)
    if x.size:  # blocks are independent, so all rows go in one call
        check(fn(info.id, _ptr("float[]", x), _ptr("uint8_t[]", out), x.size), name)
    return out


def quantize(x: np.ndarray, type: str) -> np.ndarray:
    """Code rows of float32 values (last dimension a multiple of BLOCK) with the type's own scale: for
    tq2/tq3/tq4/tq2t/tq3t the unbiased one (<x, x_hat> = <x, x> per block), for tq3j/tq4j least squares;
    tq2ts/tq3ts round the unbiased scale to their 8-bit code."""
    return _quantize(lib.tq_quantize, x, type, "quantize")


def quantize_rms_scale(x: np.ndarray, type: str) -> np.ndarray:
    """As quantize, with each block's scale set to its RMS (the paper's norm scaling)."""
    return _quantize(lib.tq_quantize_rms_scale, x, type, "quantize_rms_scale")


def dequantize(codes: Codes, type: str, n: int | None = None) -> np.ndarray:
    """Decode rows of codes to float32; n, the values per row, is inferred from the size if omitted."""
    info = _type(type)
    codes = _codes(codes)
    n = _infer_n(codes, info) if n is None else _length(n)
    rows = _code_rows(codes, info, n)
    out = np.empty(codes.shape[:-1] + (n,), dtype=np.float32)
    if out.size:
        check(lib.tq_dequantize(info.id, _ptr("uint8_t[]", codes), _ptr("float[]", out), rows * n), "dequantize")
    return out


def dot(q: np.ndarray, codes: Codes, type: str) -> float | np.ndarray:
    """<q, row> for coded rows. One query and one row give a float; a 2-D side is a batch
    (row i of a 2-D q meets row i of 2-D codes; a 1-D side is shared by every row)."""
    info = _type(type)
    q = _floats(q, "q")
    codes = _codes(codes)
    n = q.shape[-1]
    rows_c = _code_rows(codes, info, n)
    rows_q = 1 if q.ndim == 1 else q.shape[0]
    rows = _pair_rows(q, codes, rows_q, rows_c)
    rb = codes.shape[-1]
    qp, cp = _ptr("float[]", q), _ptr("uint8_t[]", codes)
    res = ffi.new("float *")
    out = np.empty(rows, dtype=np.float32)
    for i in range(rows):
        qi = qp + (i * n if q.ndim == 2 else 0)
        ci = cp + (i * rb if codes.ndim == 2 else 0)
        check(lib.tq_dot(info.id, qi, ci, n, res), "dot")
        out[i] = res[0]
    return float(out[0]) if q.ndim == 1 and codes.ndim == 1 else out


# ---- the seeded rotation and the full transform ----

def _rotation(fn, x: np.ndarray, seed: int, name: str) -> np.ndarray:
    x = _floats(x, "x", rotation=True)
    seed = _seed(seed)
    d = x.shape[-1]
    out = np.empty_like(x)
    xp, yp = _ptr("float[]", x), _ptr("float[]", out)
    for i in range(x.size // d):
        check(fn(xp + i * d, yp + i * d, d, seed), name)
    return out


def rotate(x: np.ndarray, *, seed: int) -> np.ndarray:
    """The seeded randomized Hadamard rotation of each row (d = last dimension, a power of two 64..1024)."""
    return _rotation(lib.tq_rotate, x, seed, "rotate")


def unrotate(y: np.ndarray, *, seed: int) -> np.ndarray:
    """The inverse of rotate with the same seed."""
    return _rotation(lib.tq_unrotate, y, seed, "unrotate")


def encode(x: np.ndarray, type: str, *, seed: int) -> np.ndarray:
    """Rotate each row with `seed`, then code it: tq_encode."""
    info = _type(type)
    x = _floats(x, "x", rotation=True)
    seed = _seed(seed)
    d = x.shape[-1]
    rb = lib.tq_row_bytes(info.id, d)
    out = np.empty(x.shape[:-1] + (rb,), dtype=np.uint8)
    xp, yp = _ptr("float[]", x), _ptr("uint8_t[]", out)
    for i in range(x.size // d):
        check(lib.tq_encode(info.id, xp + i * d, yp + i * rb, d, seed), "encode")
    return out


def decode(codes: Codes, type: str, d: int | None = None, *, seed: int) -> np.ndarray:
    """Decode each row and undo the rotation: tq_decode. d is inferred from the size if omitted."""
    info = _type(type)
    codes = _codes(codes)
    d = _dim(_infer_n(codes, info) if d is None else d)
    seed = _seed(seed)
    rows = _code_rows(codes, info, d)
    rb = codes.shape[-1]
    out = np.empty(codes.shape[:-1] + (d,), dtype=np.float32)
    cp, xp = _ptr("uint8_t[]", codes), _ptr("float[]", out)
    for i in range(rows):
        check(lib.tq_decode(info.id, cp + i * rb, xp + i * d, d, seed), "decode")
    return out


def inner_product(q: np.ndarray, codes: Codes, type: str, *, seed: int) -> float | np.ndarray:
    """<q, x> estimated from encode(x, type, seed=seed); rows pair up as in dot()."""
    info = _type(type)
    q = _floats(q, "q", rotation=True)
    codes = _codes(codes)
    seed = _seed(seed)
    d = q.shape[-1]
    rows_c = _code_rows(codes, info, d)
    rows = _pair_rows(q, codes, 1 if q.ndim == 1 else q.shape[0], rows_c)
    rb = codes.shape[-1]
    qp, cp = _ptr("float[]", q), _ptr("uint8_t[]", codes)
    res = ffi.new("float *")
    out = np.empty(rows, dtype=np.float32)
    for i in range(rows):
        qi = qp + (i * d if q.ndim == 2 else 0)
        ci = cp + (i * rb if codes.ndim == 2 else 0)
        check(lib.tq_inner_product(info.id, qi, ci, d, seed, res), "inner_product")
        out[i] = res[0]
    return float(out[0]) if q.ndim == 1 and codes.ndim == 1 else out


# ---- the CPU attention loop ----

def _rows(a, what: str, dtype: type, n_rows: int | None, row_len: int | None) -> np.ndarray:
    """A 2-D array of rows, each row contiguous; the rows themselves may lie further apart (a slice
    of wider rows), since the loop takes a stride between them."""
    a = _ndarray(a, what, dtype)
    if a.ndim != 2:
        raise TqValueError(f"{what} must be 2-D (rows), got shape {a.shape}")
    if n_rows is not None and a.shape[0] != n_rows:
        raise TqValueError(f"{what} has {a.shape[0]} rows, expected {n_rows}")
    if row_len is not None and a.shape[1] != row_len:
        raise TqValueError(f"{what} rows hold {a.shape[1]} values, expected {row_len}")
    if a.size and (a.strides[1] != a.itemsize or (a.shape[0] > 1 and a.strides[0] < a.shape[1] * a.itemsize)):
        raise TqValueError(f"{what}: each row must be contiguous and rows must not overlap "
                           f"(strides {a.strides}; np.ascontiguousarray makes a copy that is)")
    if not a.flags.aligned:
        raise TqValueError(f"{what} is not aligned to its {a.itemsize}-byte dtype")
    return a


class Attention:
    """The CPU attention loop over tq K/V codes (tq_ggml_attn_f32, native/src/tq_attn.h): what
    llama.cpp's CPU backend runs for the query rows that share one KV head. For query row r and key
    j: s = scale * (<q[r], k_j> + <query_term[r], key_term[j]>), soft-capped if softcap, plus
    slope[r] * mask[r, j] (a key at -inf is skipped); the result is kept as ggml keeps it, a running
    max M, sum S = sum_j exp(s_j - M) and unnormalized output acc = sum_j exp(s_j - M) v_j, so the
    keys may come in several calls (set M, S and acc from the previous call's before run()).

    q: [rows, dk] float32, 1 to 16 rows, dk a multiple of 64 up to 512, in the basis of the stored
    keys (rotated as the cache rotates them). k_codes: [n_kv, row_bytes(k_type, dk)] and v_codes:
    [n_kv, row_bytes(v_type, dv)] uint8; dv follows from v_codes. mask: [rows, n_kv] float16 or None.
    slope: [rows] float32 or None (1). query_term [rows, nb] and key_term [n_kv, nb], float32, both
    or neither (nb a multiple of 32 up to 512): the part of q.k that keys centred before RoPE do not
    hold. Code, term and mask rows may lie further apart than their length (slices of wider rows).
    The arrays are referenced, not copied: run() reads them as they are then.
    """

    MAX_ROWS: int = lib.TQ_ATTN_MAX_ROWS
    MAX_DIM: int = lib.TQ_ATTN_MAX_DIM

    def __init__(self, q: np.ndarray, k_codes: np.ndarray, v_codes: np.ndarray, k_type: str, v_type: str, *,
                 mask: np.ndarray | None = None, slope: np.ndarray | None = None, scale: float | None = None,
                 softcap: float = 0.0, query_term: np.ndarray | None = None,
                 key_term: np.ndarray | None = None) -> None:
        ki, vi = _type(k_type), _type(v_type)
        q = _rows(q, "q", np.float32, None, None)
        nr, dk = q.shape
        if not 1 <= nr <= self.MAX_ROWS:
            raise TqValueError(f"q has {nr} rows; the loop takes 1 to {self.MAX_ROWS}")
        _length(dk, "q.shape[1]")
        if dk > self.MAX_DIM:
            raise TqValueError(f"head size q.shape[1] = {dk} is larger than {self.MAX_DIM}")
        _finite(q, "q")
        k_codes = _rows(k_codes, "k_codes", np.uint8, None, lib.tq_row_bytes(ki.id, dk))
        n_kv = k_codes.shape[0]
        v_codes = _rows(v_codes, "v_codes", np.uint8, n_kv, None)
        dv = _infer_n(v_codes, vi)
        if dv > self.MAX_DIM:
            raise TqValueError(f"v_codes hold rows of {dv} values, more than {self.MAX_DIM}")
        if mask is not None:
            mask = _rows(mask, "mask", np.float16, nr, n_kv)
            _finite(mask, "mask", inf_ok=True)
        if slope is not None:
            slope = _array(slope, "slope", np.float32)
            if slope.shape != (nr,):
                raise TqValueError(f"slope must have shape ({nr},), got {slope.shape}")
            _finite(slope, "slope")
        if (query_term is None) != (key_term is None):
            raise TqValueError("query_term and key_term come together: give both or neither")
        nb = 0
        if query_term is not None:
            query_term = _rows(query_term, "query_term", np.float32, nr, None)
            nb = query_term.shape[1]
            if nb <= 0 or nb % 32 or nb > self.MAX_DIM:
                raise TqValueError(f"query_term rows hold {nb} values; the loop takes a multiple of 32 "
                                   f"up to {self.MAX_DIM}")
            key_term = _rows(key_term, "key_term", np.float32, n_kv, nb)
            _finite(query_term, "query_term")
            _finite(key_term, "key_term")
        for v in (scale, softcap):
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating))):
                raise TqTypeError(f"scale and softcap must be numbers, got {_typename(scale)} and "
                                  f"{_typename(softcap)}")
        scale = dk ** -0.5 if scale is None else float(scale)
        softcap = float(softcap)
        if not (np.isfinite(scale) and np.isfinite(softcap)) or softcap < 0:
            raise TqValueError(f"scale ({scale}) must be finite and softcap ({softcap}) finite and >= 0")

        self.q, self.k_codes, self.v_codes, self.mask = q, k_codes, v_codes, mask
        self.query_term, self.key_term = query_term, key_term
        self.M = np.full(nr, -np.inf, np.float32)
        self.S = np.zeros(nr, np.float32)
        self.acc = np.zeros((nr, dv), np.float32)
        a = ffi.new("tq_attn_args *")
        a.k_type, a.v_type, a.dk, a.dv, a.n_rows = ki.id, vi.id, dk, dv, nr
        for r in range(nr):
            a.q[r] = ffi.cast("const float *", q[r].ctypes.data)
            a.mask[r] = ffi.cast("const uint16_t *", mask[r].ctypes.data) if mask is not None else ffi.NULL
            a.slope[r] = 1.0 if slope is None else float(slope[r])
            if query_term is not None:
                a.qb[r] = ffi.cast("const float *", query_term[r].ctypes.data)
        # no keys: C still wants non-NULL row pointers (it reads none of them)
        some = self.M.ctypes.data
        a.k = ffi.cast("void *", k_codes.ctypes.data if n_kv else some)
        a.v = ffi.cast("void *", v_codes.ctypes.data if n_kv else some)
        a.k_stride, a.v_stride, a.n_kv = k_codes.strides[0], v_codes.strides[0], n_kv
        a.scale, a.softcap = scale, softcap
        a.M = ffi.cast("float *", self.M.ctypes.data)
        a.S = ffi.cast("float *", self.S.ctypes.data)
        a.acc = ffi.cast("float *", self.acc.ctypes.data)
        if key_term is not None:
            a.kb = ffi.cast("const float *", key_term.ctypes.data if n_kv else some)
            a.kb_stride, a.nb = key_term.strides[0], nb
        self._args = a

    def reset(self) -> None:
        """Back to no keys seen: M = -inf, S = 0, acc = 0."""
        self.M[:], self.S[:], self.acc[:] = -np.inf, 0.0, 0.0

    def run(self, isa: str | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Adds the keys to (M, S, acc) and returns them; isa runs one instruction set (force_isa)."""
        if isa is None:
            check(lib.tq_ggml_attn_f32(self._args), "attention")
        else:
            with force_isa(isa):
                check(lib.tq_ggml_attn_f32(self._args), "attention")
        return self.M, self.S, self.acc

    def output(self) -> np.ndarray:
        """acc / S per row: the attention output (zeros for a row whose keys were all masked, as ggml writes)."""
        out = np.zeros_like(self.acc)
        np.divide(self.acc, self.S[:, None], out=out, where=self.S[:, None] > 0)
        return out


# ---- CPU dispatch ----

def _isa_names(mask: int) -> tuple[str, ...]:
    return tuple(name for name, bit in _ISA_BITS.items() if bit == lib.TQ_ISA_PORTABLE or mask & bit)


def isa_available() -> tuple[str, ...]:
    """Instruction sets this CPU and this build can run, "portable" first."""
    return _isa_names(lib.tq_cpu_isa_available())


def isa_active() -> str:
    """The instruction set the kernels use now."""
    return ffi.string(lib.tq_isa_name(lib.tq_isa_active())).decode()


def reset_isa() -> None:
    """Back to the best instruction set available."""
    lib.tq_reset_isa()


class force_isa:
    """Run the kernels on one instruction set (tests, benchmarks). Takes effect at once; used as a
    context manager it restores the previous one on exit, otherwise reset_isa() does."""

    def __init__(self, name: str) -> None:
        if not isinstance(name, str) or name not in _ISA_BITS:
            raise TqValueError(f"unknown instruction set {name!r}; valid names: {', '.join(ISA_NAMES)}")
        if name not in isa_available():
            raise TqIsaError(f"instruction set {name!r} is not available here; available: "
                             f"{', '.join(isa_available())}")
        self.name = name
        self._previous = lib.tq_isa_active()
        check(lib.tq_force_isa(_ISA_BITS[name]), f"force_isa({name!r})")

    def __enter__(self) -> force_isa:
        return self

    def __exit__(self, *exc) -> None:
        check(lib.tq_force_isa(self._previous), "force_isa: restoring the previous instruction set")
