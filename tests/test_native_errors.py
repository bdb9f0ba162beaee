"""Bad input raises the documented exception and never crashes; odd values behave as turboquant.h says."""
import zlib

import numpy as np
import pytest

from tq_llamacpp import native
from tq_llamacpp._native import ffi, lib
from tq_llamacpp.errors import TqError, TqIsaError, TqTypeError, TqValueError, check

F = np.float32
GOOD = np.linspace(-1, 1, 128, dtype=F)


def codes_of(type, n=128):
    return native.quantize(np.linspace(-1, 1, n, dtype=F), type)


def test_exception_hierarchy():
    assert issubclass(TqValueError, ValueError) and issubclass(TqValueError, TqError)
    assert issubclass(TqTypeError, TypeError) and issubclass(TqTypeError, TqError)
    assert issubclass(TqIsaError, RuntimeError) and issubclass(TqIsaError, TqError)


# ---- the Python checks: (call, exception, words the message must hold) ----

BAD_CALLS = {
    "float64": (lambda: native.quantize(GOOD.astype(np.float64), "tq3"), TqTypeError, "float64"),
    "float16": (lambda: native.quantize(GOOD.astype(np.float16), "tq3"), TqTypeError, "float16"),
    "big-endian": (lambda: native.quantize(GOOD.astype(">f4"), "tq3"), TqTypeError, "float32"),
    "list": (lambda: native.quantize([0.0] * 64, "tq3"), TqTypeError, "list"),
    "0-d": (lambda: native.quantize(np.array(1, F), "tq3"), TqValueError, "1-D"),
    "3-d": (lambda: native.quantize(np.zeros((2, 2, 64), F), "tq3"), TqValueError, "2-D"),
    "strided": (lambda: native.quantize(np.zeros(256, F)[::2], "tq3"), TqValueError, "C-contiguous"),
    "transposed": (lambda: native.quantize(np.zeros((64, 64), F).T, "tq3"), TqValueError, "C-contiguous"),
    "unaligned": (lambda: native.quantize(np.frombuffer(bytes(257), F, 64, 1), "tq3"), TqValueError, "aligned"),
    "length 100": (lambda: native.quantize(np.zeros(100, F), "tq3"), TqValueError, "multiple of the block size 64"),
    "length 0": (lambda: native.quantize(np.zeros((3, 0), F), "tq3"), TqValueError, "positive multiple"),
    "nan": (lambda: native.quantize(np.where(np.arange(128) == 70, np.nan, GOOD).astype(F), "tq3"),
            TqValueError, "NaN at index 70"),
    "inf": (lambda: native.quantize(np.full((2, 64), -np.inf, F), "tq3"), TqValueError, "infinity"),
    "unknown type": (lambda: native.quantize(GOOD, "tq5"), TqValueError, "tq2, tq3, tq4, tq3j, tq4j"),
    "type as int": (lambda: native.quantize(GOOD, 1), TqTypeError, "str"),
    "rms nan": (lambda: native.quantize_rms_scale(np.full(64, np.nan, F), "tq2"), TqValueError, "NaN"),
    "codes float": (lambda: native.dequantize(GOOD, "tq3"), TqTypeError, "uint8"),
    "codes str": (lambda: native.dequantize("abc", "tq3"), TqTypeError, "got str"),
    "scalar": (lambda: native.quantize(F(1), "tq3"), TqTypeError, "got numpy.float32"),
    "codes size": (lambda: native.dequantize(codes_of("tq3")[:-1], "tq3"), TqValueError, "26-byte tq3 block"),
    "codes vs n": (lambda: native.dequantize(codes_of("tq3"), "tq3", 192), TqValueError, "take 78"),
    "codes empty": (lambda: native.dequantize(b"", "tq2"), TqValueError, "positive multiple"),
    "n odd": (lambda: native.dequantize(codes_of("tq3"), "tq3", 65), TqValueError, "multiple"),
    "n float": (lambda: native.dequantize(codes_of("tq3"), "tq3", 128.0), TqTypeError, "int"),
    "n bool": (lambda: native.dequantize(codes_of("tq3"), "tq3", True), TqTypeError, "bool"),
    "codes wrong type": (lambda: native.dequantize(codes_of("tq4"), "tq3"), TqValueError, "bytes per row"),
    "dot size": (lambda: native.dot(GOOD, codes_of("tq3", 64), "tq3"), TqValueError, "take 52"),
    "dot rows": (lambda: native.dot(np.zeros((3, 128), F), np.zeros((2, 52), np.uint8), "tq3"),
                 TqValueError, "3 rows"),
    "dot nan query": (lambda: native.dot(np.full(128, np.nan, F), codes_of("tq3"), "tq3"), TqValueError, "q contains NaN"),
    "rotate 96": (lambda: native.rotate(np.zeros(96, F), seed=0), TqValueError, "power of two"),
    "rotate 2048": (lambda: native.rotate(np.zeros(2048, F), seed=0), TqValueError, "from 64 to 1024"),
    "rotate 32": (lambda: native.rotate(np.zeros(32, F), seed=0), TqValueError, "power of two"),
    "rotate 192": (lambda: native.rotate(np.zeros(192, F), seed=0), TqValueError, "power of two"),
    "seed negative": (lambda: native.rotate(GOOD, seed=-1), TqValueError, "64-bit"),
    "seed 2**64": (lambda: native.rotate(GOOD, seed=2**64), TqValueError, "64-bit"),
    "seed float": (lambda: native.rotate(GOOD, seed=1.5), TqTypeError, "seed must be an int"),
    "seed None": (lambda: native.unrotate(GOOD, seed=None), TqTypeError, "NoneType"),
    "encode 320": (lambda: native.encode(np.zeros(320, F), "tq2", seed=0), TqValueError, "power of two"),
    "encode inf": (lambda: native.encode(np.full(64, np.inf, F), "tq2", seed=0), TqValueError, "infinity"),
    "decode d": (lambda: native.decode(codes_of("tq2", 192), "tq2", seed=0), TqValueError, "power of two"),
    "decode size": (lambda: native.decode(codes_of("tq2"), "tq2", 256, seed=0), TqValueError, "bytes per row"),
    "inner_product size": (lambda: native.inner_product(np.zeros(256, F), codes_of("tq2"), "tq2", seed=0),
                           TqValueError, "bytes per row"),
    "codebook 0": (lambda: native.codebook(0), TqValueError, "1 to 4"),
    "codebook 5": (lambda: native.codebook(5), TqValueError, "1 to 4"),
    "codebook str": (lambda: native.codebook("2"), TqTypeError, "int"),
    "row_bytes": (lambda: native.row_bytes("tq2", 63), TqValueError, "multiple"),
    "type_info": (lambda: native.type_info("q4_0"), TqValueError, "valid names"),
    "isa name": (lambda: native.force_isa("sse9"), TqValueError, "portable, avx2, avx512, neon"),
}


@pytest.mark.parametrize("case", BAD_CALLS)
def test_bad_input(case):
    call, exc, words = BAD_CALLS[case]
    with pytest.raises(exc) as info:
        call()
    assert words in str(info.value)


def test_isa_not_available():
    missing = [n for n in native.ISA_NAMES if n not in native.isa_available()]
    assert missing  # no CPU has both NEON and AVX2
    with pytest.raises(TqIsaError, match="not available"):
        native.force_isa(missing[0])


def test_force_isa_restores():
    before = native.isa_active()
    with native.force_isa("portable"):
        assert native.isa_active() == "portable"
    assert native.isa_active() == before
    native.force_isa("portable")
    native.reset_isa()
    assert native.isa_active() == before


# ---- C's own checks, the second line, called past the Python layer ----

STATUS_CLASS = {
    lib.TQ_ERR_NULL: TqError, lib.TQ_ERR_TYPE: TqValueError, lib.TQ_ERR_LENGTH: TqValueError,
    lib.TQ_ERR_DIM: TqValueError, lib.TQ_ERR_NONFINITE: TqValueError, lib.TQ_ERR_ISA: TqIsaError,
    lib.TQ_ERR_BITS: TqValueError, 99: TqError,
}


@pytest.mark.parametrize("status", STATUS_CLASS)
def test_check_maps_status(status):
    with pytest.raises(STATUS_CLASS[status]) as info:
        check(status, "ctx")
    assert str(info.value) == "ctx: " + ffi.string(lib.tq_strerror(status)).decode()
    assert info.value.status == status
    check(lib.TQ_OK)


def test_c_checks():
    x = ffi.new("float[]", 1024)
    y = ffi.new("uint8_t[]", 4096)
    out = ffi.new("float *")
    nan = ffi.new("float[]", [float("nan")] * 64)
    assert lib.tq_quantize(lib.TQ_TYPE_COUNT, x, y, 64) == lib.TQ_ERR_TYPE
    assert lib.tq_quantize(2**32 - 1, x, y, 64) == lib.TQ_ERR_TYPE
    assert lib.tq_quantize(0, ffi.NULL, y, 64) == lib.TQ_ERR_NULL
    assert lib.tq_quantize(0, x, y, 0) == lib.TQ_ERR_LENGTH
    assert lib.tq_quantize(0, x, y, 65) == lib.TQ_ERR_LENGTH
    assert lib.tq_quantize(0, nan, y, 64) == lib.TQ_ERR_NONFINITE
    assert lib.tq_quantize_rms_scale(0, nan, y, 64) == lib.TQ_ERR_NONFINITE
    assert lib.tq_dequantize(1, y, ffi.NULL, 64) == lib.TQ_ERR_NULL
    assert lib.tq_dot(2, x, y, 64, ffi.NULL) == lib.TQ_ERR_NULL
    assert lib.tq_rotate(x, x, 96, 0) == lib.TQ_ERR_DIM
    assert lib.tq_unrotate(x, x, 2048, 0) == lib.TQ_ERR_DIM
    assert lib.tq_encode(3, nan, y, 64, 0) == lib.TQ_ERR_NONFINITE
    assert lib.tq_decode(lib.TQ_TYPE_COUNT, y, x, 64, 0) == lib.TQ_ERR_TYPE
    assert lib.tq_inner_product(4, x, y, 32, 0, out) == lib.TQ_ERR_DIM
    assert lib.tq_codebook(0, x, 16) == lib.TQ_ERR_BITS
    assert lib.tq_codebook(4, x, 15) == lib.TQ_ERR_LENGTH
    assert lib.tq_force_isa(8) == lib.TQ_ERR_ISA
    assert lib.tq_type_name(lib.TQ_TYPE_COUNT) == ffi.NULL and lib.tq_block_bytes(lib.TQ_TYPE_COUNT) == 0
    assert lib.tq_type_from_name(b"tq9") == -1 and lib.tq_type_from_name(ffi.NULL) == -1
    assert ffi.string(lib.tq_strerror(1234)) == b"unknown status"


def test_names_and_code_buffers_as_everywhere():
    """One rule for type names in the package (case and spaces ignored, as Llama(type_k="TQ3")),
    and codes from any contiguous byte buffer: bytes, bytearray, memoryview."""
    codes = native.quantize(GOOD, "tq3")
    np.testing.assert_array_equal(native.quantize(GOOD, " TQ3 "), codes)
    want = native.dequantize(codes, "tq3")
    for buf in (codes.tobytes(), bytearray(codes.tobytes()), memoryview(codes.tobytes()), memoryview(codes)):
        np.testing.assert_array_equal(native.dequantize(buf, "Tq3"), want)
    with pytest.raises(TqValueError, match="not C-contiguous"):
        native.dequantize(memoryview(np.repeat(codes, 2))[::2], "tq3")


# ---- documented results for unusual values (turboquant.h) ----

@pytest.mark.parametrize("type", native.TYPE_NAMES)
def test_zero_vector_codes_to_zero_bytes(type):
    zero = np.zeros((2, 128), F)
    assert not native.quantize(zero, type).any()
    assert not native.quantize_rms_scale(zero, type).any()
    assert not native.encode(zero, type, seed=3).any()


@pytest.mark.parametrize("type", native.TYPE_NAMES)
def test_zero_vector_decodes_to_zeros(type):
    zero = np.zeros(128, F)
    assert not native.dequantize(native.quantize(zero, type), type).any()
    assert not native.decode(native.encode(zero, type, seed=3), type, seed=3).any()
    assert not native.dequantize(np.zeros(native.row_bytes(type, 128), np.uint8), type).any()
    assert native.dot(GOOD, native.quantize(zero, type), type) == 0.0


S8_TYPES = ("tq2ts", "tq3ts")  # an 8-bit scale code (255: non-finite, 254: the top, 0: zero) in place of fp16


def _scale_bits(codes: np.ndarray, type: str, block: int) -> int:
    b = native.block_bytes(type)
    if type in S8_TYPES:
        return int(codes[block * b])
    return int(codes[block * b: block * b + 2].view("<u2")[0])


@pytest.mark.parametrize("type", native.TYPE_NAMES)
@pytest.mark.parametrize("suffix", ["_ref", ""])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_row_function_nan_block(type, suffix, bad):
    """The ggml row functions cannot refuse: a block with NaN/inf gets d = NaN and decodes to NaNs,
    and the other blocks are untouched."""
    x = np.linspace(-2, 2, 192, dtype=F)
    x[100] = bad
    codes = np.zeros(native.row_bytes(type, 192), np.uint8)
    getattr(lib, f"tq_ggml_quantize_row_{type}{suffix}")(ffi.from_buffer("float[]", x),
                                                      ffi.from_buffer("uint8_t[]", codes), 192)
    if type in S8_TYPES:
        assert _scale_bits(codes, type, 1) == 255
    else:
        assert _scale_bits(codes, type, 1) & 0x7c00 == 0x7c00 and _scale_bits(codes, type, 1) & 0x3ff
    out = native.dequantize(codes, type)
    assert np.isnan(out[64:128]).all()
    good = np.delete(np.arange(192), np.s_[64:128])
    np.testing.assert_array_equal(out[good], native.dequantize(native.quantize(x[good], type), type))


@pytest.mark.parametrize("type", native.TYPE_NAMES)
def test_nan_scale_decodes_to_nan(type):
    codes = codes_of(type)
    if type in S8_TYPES:
        codes[0] = 255  # block 0: the non-finite code (there is no infinite one)
    else:
        codes[:2] = np.array([0x7e00], "<u2").view(np.uint8)  # block 0: d = fp16 NaN
    out = native.dequantize(codes, type)
    assert np.isnan(out[:64]).all() and np.isfinite(out[64:]).all()
    assert np.isnan(native.dot(GOOD, codes, type))
    if type in S8_TYPES:
        return
    codes[:2] = np.array([0x7c00], "<u2").view(np.uint8)  # d = +inf
    assert np.isinf(native.dequantize(codes, type)[:64]).all()


@pytest.mark.parametrize("type", native.TYPE_NAMES)
def test_scale_saturates_at_fp16_max(type):
    x = np.where(np.arange(64) % 2, 1e6, -3e6).astype(F)
    codes = native.quantize(x, type)
    assert _scale_bits(codes, type, 0) == (254 if type in S8_TYPES else 0x7bff)  # 65504, or the 8-bit code's top
    out = native.dequantize(codes, type)
    assert np.isfinite(out).all() and np.abs(out).max() < 1e6


@pytest.mark.parametrize("type", native.TYPE_NAMES)
def test_tiny_scale_flushes_to_zero(type):
    x = np.where(np.arange(64) % 2, 1e-9, -1e-9).astype(F)
    codes = native.quantize(x, type)
    assert _scale_bits(codes, type, 0) == 0
    assert not native.dequantize(codes, type).any()


# ---- fuzz: anything goes in, only documented exceptions come out ----

DTYPES = [np.float32, np.float64, np.float16, np.int32, np.uint8, np.int8, np.complex64, np.bool_, ">f4"]
SIZES = [0, 1, 3, 32, 63, 64, 65, 96, 128, 192, 256, 1024, 2048]


def _random_array(rng):
    dtype = DTYPES[rng.integers(len(DTYPES))] if rng.random() < 0.4 else np.float32
    ndim = int(rng.choice([0, 1, 1, 1, 2, 2, 3]))
    shape = tuple(int(rng.choice(SIZES)) if i == ndim - 1 else int(rng.integers(0, 4)) for i in range(ndim))
    with np.errstate(all="ignore"):
        a = (rng.standard_normal(shape) * 10.0 ** rng.integers(-8, 8)).astype(dtype)
    if a.size and rng.random() < 0.15 and a.dtype.kind == "f":
        a.flat[rng.integers(a.size)] = rng.choice([np.nan, np.inf, -np.inf])
    if a.ndim >= 1 and a.shape[-1] > 1 and rng.random() < 0.1:
        a = a[..., ::2]
    return a


def _random_codes(rng):
    r = rng.random()
    if r < 0.15:
        return bytes(rng.integers(0, 256, int(rng.choice(SIZES)), dtype=np.uint8))
    if r < 0.25:
        return _random_array(rng)
    n = int(rng.choice([18, 26, 28, 34, 36, 52, 104, 136, 0, 1, 27]))
    shape = (n,) if rng.random() < 0.7 else (int(rng.integers(0, 4)), n)
    return rng.integers(0, 256, shape, dtype=np.uint8)


def _codes_for(rng, q, type):
    """Codes that fit q half of the time, so that the fuzz reaches C."""
    if rng.random() < 0.5 and type in native.TYPE_NAMES and isinstance(q, np.ndarray) and q.ndim in (1, 2):
        n = q.shape[-1] // 64 * native.block_bytes(type)
        return rng.integers(0, 256, q.shape[:-1] + (n,) if rng.random() < 0.5 else (n,), dtype=np.uint8)
    return _random_codes(rng)


def _pair(rng, fn, **kw):
    q, type = _random_array(rng), _random_type(rng)
    return fn(q, _codes_for(rng, q, type), type, **kw)


def _random_scalar(rng, good):
    return [good, good, good, -1, 0, 65, 2**64, 2**63, 1.5, None, "x", True][rng.integers(12)]


def _random_type(rng):
    return [*native.TYPE_NAMES, *native.TYPE_NAMES, "tq5", "", "TQ2", 3, None][rng.integers(15)]


ENTRY_POINTS = {
    "quantize": lambda r: native.quantize(_random_array(r), _random_type(r)),
    "quantize_rms_scale": lambda r: native.quantize_rms_scale(_random_array(r), _random_type(r)),
    "dequantize": lambda r: native.dequantize(_random_codes(r), _random_type(r), _random_scalar(r, None)),
    "dot": lambda r: _pair(r, native.dot),
    "rotate": lambda r: native.rotate(_random_array(r), seed=_random_scalar(r, 7)),
    "unrotate": lambda r: native.unrotate(_random_array(r), seed=_random_scalar(r, 7)),
    "encode": lambda r: native.encode(_random_array(r), _random_type(r), seed=_random_scalar(r, 7)),
    "decode": lambda r: native.decode(_random_codes(r), _random_type(r), _random_scalar(r, None),
                                      seed=_random_scalar(r, 7)),
    "inner_product": lambda r: _pair(r, native.inner_product, seed=_random_scalar(r, 7)),
    "codebook": lambda r: native.codebook(_random_scalar(r, 3)),
    "row_bytes": lambda r: native.row_bytes(_random_type(r), _random_scalar(r, 128)),
}


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_fuzz_entry_points(entry):
    rng = np.random.default_rng(zlib.crc32(entry.encode()))
    ok = 0
    for _ in range(600):
        try:
            ENTRY_POINTS[entry](rng)
            ok += 1
        except (TqValueError, TqTypeError):
            pass
    assert ok > 0 or entry == "codebook"  # the fuzz must also reach C, not only the checks


@pytest.mark.parametrize("type", native.TYPE_NAMES)
def test_decoding_random_bytes_never_crashes(type):
    """Any byte string of the right size is a valid code: NaN/inf scales decode to NaN/inf, nothing
    raises, nothing reads or writes out of bounds (scripts/sanitize.sh runs this under ASan)."""
    rng = np.random.default_rng(17)
    for d in (64, 128, 256, 1024):
        codes = rng.integers(0, 256, (50, native.row_bytes(type, d)), dtype=np.uint8)
        q = rng.standard_normal((50, d)).astype(F)
        assert native.dequantize(codes, type).shape == (50, d)
        assert native.decode(codes, type, seed=int(rng.integers(2**63)), d=d).shape == (50, d)
        assert native.dot(q, codes, type).shape == (50,)
        assert native.inner_product(q, codes, type, seed=1).shape == (50,)
        for isa in native.isa_available():
            with native.force_isa(isa):
                native.dequantize(codes, type)
                native.dot(q[0], codes, type)
