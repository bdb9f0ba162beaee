"""`Llama`: llama-cpp-python's Llama with KV-cache types by name and the checks they need."""
from __future__ import annotations

import contextlib
import ctypes
import operator
import threading
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence, Union

from ._libs import import_llama_cpp
from .cache_types import CACHE_TYPES, CacheType, cache_type, parse_pair
from .errors import LlamaError, TqTypeError, TqValueError
from .gguf_meta import MAX_HEAD_DIM_TQ, attention_shape, read_metadata

llama_cpp = import_llama_cpp()
from llama_cpp import _logger as _llama_cpp_logger  # noqa: E402  (after the import that binds the libraries)

TypeArg = Optional[Union[str, int, CacheType]]
# what kv_center takes -> native/llama/tq-llama.h's `center` option
_KV_CENTER = {"auto": "auto", "k": "k", "kv": "kv", "off": "off", True: "k", False: "off"}


# ---- llama.cpp's C functions that the patched build adds (native/llama/tq-llama.h) -------------

def _c_function(name: str, restype, *argtypes):
    f = getattr(llama_cpp.llama_cpp._lib, name)
    f.restype, f.argtypes = restype, list(argtypes)
    return f


_kv_options = _c_function("llama_tq_kv_options", ctypes.c_char_p, ctypes.c_char_p)
_kv_options_check = _c_function("llama_tq_kv_options_check", ctypes.c_char_p, ctypes.c_char_p)
_kv_layer_types = _c_function("llama_tq_kv_layer_types", ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int32,
                              ctypes.c_int32, ctypes.c_int32, ctypes.POINTER(ctypes.c_int64),
                              ctypes.POINTER(ctypes.c_int64), ctypes.POINTER(ctypes.c_int32),
                              ctypes.POINTER(ctypes.c_int32))


def kv_options_string(kv_center: Union[None, bool, str] = None, kv_options: Union[None, str, dict] = None) -> str:
    """The option string for the patched llama.cpp (native/llama/tq-llama.h): `kv_options` as
    "key=value,..." or a dict, with `kv_center` as its `center`. ValueError says what is wrong."""
    if isinstance(kv_options, dict):
        parts = [f"{k}={int(v) if isinstance(v, bool) else v}" for k, v in kv_options.items()]
    elif isinstance(kv_options, str) or kv_options is None:
        parts = [kv_options] if kv_options else []
    else:
        raise TqTypeError(f"kv_options must be a str or a dict, not {type(kv_options).__name__}")
    if kv_center is not None:
        if not isinstance(kv_center, (bool, str)) or kv_center not in _KV_CENTER:
            raise TqValueError(f"kv_center must be one of auto, k, kv, off, True or False, not {kv_center!r}")
        parts.append(f"center={_KV_CENTER[kv_center]}")
    text = ",".join(parts)
    err = _kv_options_check(text.encode())
    if err is not None:
        raise TqValueError(f"KV-cache options {text!r}: {err.decode()}")
    return text


@contextlib.contextmanager
def thread_kv_options(text: str) -> Iterator[None]:
    """The KV-cache options for contexts this thread creates inside the block (thread-local in
    llama.cpp, so threads making contexts at the same time do not cross)."""
    err = _kv_options(text.encode())
    if err is not None:
        raise TqValueError(f"KV-cache options {text!r}: {err.decode()}")
    try:
        yield
    finally:
        _kv_options(None)


# ---- llama.cpp's reasons, which it only logs, attached to the exception --------------------------

def parse_spec(spec: str) -> tuple[CacheType, CacheType, Optional[str]]:
    """'q8_0/tq3@kv' -> (K type, V type, its centring or None for the default), as compare, needle
    and the benchmarks take cache types."""
    pair, at, center = spec.partition("@")
    if at:
        try:
            kv_options_string(center)
        except TqValueError:
            raise TqValueError(f"unknown centring '@{center}' in {spec!r}: use @auto, @k, @kv or @off") from None
    k, v = parse_pair(pair)
    return k, v, center or None


_capture = threading.local()
# ggml.h of the pinned llama.cpp: GGML_LOG_LEVEL_WARN = 3, GGML_LOG_LEVEL_ERROR = 4
_WARN_OR_ERROR = (3, 4)


# the capture lists open on any thread: an error logged on a thread of llama.cpp's own (the RPC
# backend's connection thread) goes to each of them
_open_captures: list = []


@llama_cpp.llama_log_callback
def _log_callback(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    if level in _WARN_OR_ERROR:
        line = text.decode("utf-8", errors="replace").strip()
        lines = getattr(_capture, "lines", None)
        for target in [lines] if lines is not None else list(_open_captures):
            target.append(line)
    _llama_cpp_logger.llama_log_callback(level, text, user_data)  # llama-cpp-python's own printing, as before


llama_cpp.llama_log_set(_log_callback, ctypes.c_void_p(0))


@contextlib.contextmanager
def llama_reasons() -> Iterator[list]:
    """The warnings and errors llama.cpp logs on this thread inside the block."""
    saved = getattr(_capture, "lines", None)
    lines: list = []
    _capture.lines = lines
    _open_captures.append(lines)
    try:
        yield lines
    finally:
        _capture.lines = saved
        _open_captures.remove(lines)


def _with_reason(exc: Exception, lines: list, what: str) -> LlamaError:
    reasons = [ln for ln in lines if ln]
    # a lost RPC server is the cause of whatever follows it; otherwise the last lines say most
    cause = [ln for ln in reasons if ln.startswith("RPC server ")][:1]
    reasons = cause + [ln for ln in reasons if ln not in cause][-(3 - len(cause)):]
    return LlamaError(f"{what}: " + ("; ".join(reasons) if reasons else str(exc)))


# ---- checks before llama.cpp -----------------------------------------------------------------------

def _check_model(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    return attention_shape(read_metadata(path), path)


def check_cache_types(model_path: Union[str, Path], type_k: TypeArg, type_v: TypeArg) -> tuple[CacheType, CacheType]:
    """Resolve the two cache types and check the model's head sizes fit their blocks."""
    shape = _check_model(Path(model_path))
    k = cache_type(type_k if type_k is not None else "f16")
    v = cache_type(type_v if type_v is not None else "f16")
    for which, t, hd in (("K", k, shape["head_dim_k"]), ("V", v, shape["head_dim_v"])):
        if hd % t.block:
            raise TqValueError(
                f"{Path(model_path).name} has head size {hd} for {which}, which the {t.name} cache cannot code: "
                f"{t.name} needs a multiple of {t.block}; use one of "
                + ", ".join(n for n, c in CACHE_TYPES.items() if hd % c.block == 0)
            )
        if t.turboquant and hd > MAX_HEAD_DIM_TQ:
            raise TqValueError(f"{Path(model_path).name} has head size {hd} for {which}: the {t.name} cache "
                               f"codes head sizes up to {MAX_HEAD_DIM_TQ}")
    return k, v


class Llama(llama_cpp.Llama):
    """llama_cpp.Llama with type_k / type_v given as names ("tq3", "q8_0", ...) or ggml ids.

    Flash attention is switched on when the cache needs it (a quantized V, or a tq K); passing
    flash_attn=False with such a cache raises ValueError instead of failing inside llama.cpp.

    kv_center: which halves of the cache are stored mean-centred (docs/method.md, Centring):
    "auto" (the default: K of a tq cache), True / "k" (K of any quantized cache), "kv" (K and V),
    False / "off". kv_options: the other KV-cache options, "key=value,..." or a dict
    (native/llama/tq-llama.h: equalize, sink, rope, stats, calib_dir), e.g. {"stats": "first"}. The
    centring statistics are the model's, calibrated once and kept under TQ_CACHE_DIR/kv-calib.

    rpc_servers: "host:port,..." (or a list) of ggml-rpc-server hosts (`tq-llama rpc-server`): the
    layers, their KV cache and every op on them run there (docs/rpc.md). n_gpu_layers then
    defaults to -1 (all layers on the servers, then on this machine's GPUs).
    """

    def __init__(self, model_path: Union[str, Path], *, type_k: TypeArg = None, type_v: TypeArg = None,
                 flash_attn: Optional[bool] = None, kv_center: Union[None, bool, str] = None,
                 kv_options: Union[None, str, dict] = None, rpc_servers: Union[None, str, list] = None,
                 **kwargs: Any) -> None:
        _check_context_sizes(kwargs)
        options = kv_options_string(kv_center, kv_options)
        if "calib_dir=" not in options:
            from .data import calib_dir  # noqa: PLC0415

            options = ",".join(x for x in (f"calib_dir={calib_dir()}", options) if x)
        k, v = check_cache_types(model_path, type_k, type_v)
        needs_fa = v.quantized or k.turboquant
        if flash_attn is None:
            flash_attn = needs_fa
        elif not flash_attn and needs_fa:
            why = f"a quantized V cache ({v.name})" if v.quantized else f"the {k.name} K cache"
            raise TqValueError(f"{why} needs flash attention: pass flash_attn=True or leave flash_attn unset")
        self.cache_type_k, self.cache_type_v = k, v
        self.rpc_servers = None
        if rpc_servers is not None:
            from . import rpc  # noqa: PLC0415

            self.rpc_servers = rpc.parse_endpoints(rpc_servers)
            kwargs.setdefault("n_gpu_layers", -1)
            if kwargs["n_gpu_layers"] == 0:
                raise TqValueError("rpc_servers with n_gpu_layers=0 would put no layer on the servers: "
                                   "leave n_gpu_layers unset (all layers) or give a count")
            self._rpc_devices = rpc.devices(self.rpc_servers)
        with thread_kv_options(options), llama_reasons() as lines:
            try:
                super().__init__(str(model_path), type_k=k.ggml_id, type_v=v.ggml_id, flash_attn=flash_attn, **kwargs)
            except ValueError as exc:  # llama-cpp-python: "Failed to load model from file" / "... create llama_context"
                raise _with_reason(exc, lines, f"llama.cpp refused {Path(model_path).name}") from exc

    @property
    def model_params(self):
        return self.__dict__["model_params"]

    @model_params.setter
    def model_params(self, params) -> None:
        # llama_cpp.Llama.__init__ makes its llama_model_params and loads the model in one call;
        # the device list (the RPC servers') goes in as it is assigned
        devices = self.__dict__.get("_rpc_devices")
        if devices is not None:
            params.devices = ctypes.cast(devices, ctypes.c_void_p)
        self.__dict__["model_params"] = params

    def eval(self, tokens) -> None:
        """As llama_cpp.Llama.eval; a batch llama.cpp cannot evaluate raises LlamaError with its
        reason (e.g. an RPC server that went away)."""
        with llama_reasons() as lines:
            try:
                super().eval(tokens)
            except RuntimeError as exc:
                raise _with_reason(exc, lines, "llama.cpp could not evaluate the batch") from exc

    def load_state(self, state) -> None:
        """As llama_cpp.Llama.load_state; a state that does not fit this cache raises LlamaError
        with llama.cpp's reason (another cache type, other centring, a smaller context)."""
        with llama_reasons() as lines:
            try:
                super().load_state(state)
            except RuntimeError as exc:
                raise _with_reason(exc, lines, "cannot load the saved state") from exc

    def close(self) -> None:
        # llama_cpp.Llama.__del__ calls close(); after a refused __init__ there is nothing to close
        if hasattr(self, "_stack"):
            super().close()


# llama.cpp pads a cache to a multiple of 256 cells (llama_kv_cache's n_pad: llama_context sets
# cparams.n_ctx = GGML_PAD(n_ctx, 256)); tests/test_llama_api.py checks the sizes against its log
_CELL_PAD = 256


# llama_context_params holds them as uint32_t: ctypes would wrap 2**32 + 512 to 512 without a word
_CONTEXT_SIZES = {"n_ctx": 0, "n_batch": 1, "n_ubatch": 1}  # name: least value (n_ctx 0: the model's own)


def _check_context_sizes(kwargs: dict) -> None:
    for what, least in _CONTEXT_SIZES.items():
        if what in kwargs:
            _int_in(kwargs[what], what, least, 1 << 32, "llama.cpp holds it in 32 bits")


def _positive(value: Any, what: str) -> int:
    return _int_in(value, what, 1, (1 << 40) + 1)


def _int_in(value: Any, what: str, least: int, bound: int, why: str = "") -> int:
    """value as an int in [least, bound): a TqTypeError or TqValueError naming `what` otherwise."""
    if isinstance(value, bool):
        raise TqTypeError(f"{what} must be an int, not bool")
    try:
        n = operator.index(value)
    except TypeError:
        raise TqTypeError(f"{what} must be an int, not {type(value).__name__}") from None
    if n < least:
        raise TqValueError(f"{what} must be at least {least}, got {n}")
    if n >= bound:
        raise TqValueError(f"{what} = {n} is absurdly large" + (f": {why}" if why else ""))
    return n


def layer_types(n_layer: int, kv_options: Union[None, str, dict] = None, type_k: TypeArg = None,
                type_v: TypeArg = None, k_vals: Optional[Sequence[int]] = None,
                v_vals: Optional[Sequence[int]] = None) -> tuple[list, list]:
    """Per layer, the CacheType that the KV option `layers` gives its K and V (None: the cache's).
    The option `bits` chooses them from the cache's types and each layer's K and V values per token
    (k_vals, v_vals; 0 for a layer without a cache), as a context does."""
    text = kv_options_string(None, kv_options)
    k = (ctypes.c_int32 * max(n_layer, 1))()
    v = (ctypes.c_int32 * max(n_layer, 1))()
    sized = type_k is not None and k_vals is not None and v_vals is not None
    if sized and not (len(k_vals) == len(v_vals) == n_layer):
        raise TqValueError(f"k_vals and v_vals need one entry per layer ({n_layer}), not {len(k_vals)} and {len(v_vals)}")
    tk = cache_type(type_k).ggml_id if sized else -1
    tv = cache_type(type_v if type_v is not None else type_k).ggml_id if sized else -1
    kvals = (ctypes.c_int64 * max(n_layer, 1))(*k_vals) if sized else None
    vvals = (ctypes.c_int64 * max(n_layer, 1))(*v_vals) if sized else None
    err = _kv_layer_types(text.encode(), n_layer, tk, tv, kvals, vvals, k, v)
    if err is not None:
        raise TqValueError(f"KV-cache options {text!r}: {err.decode()}")
    return ([cache_type(k[i]) if k[i] >= 0 else None for i in range(n_layer)],
            [cache_type(v[i]) if v[i] >= 0 else None for i in range(n_layer)])


def kv_bytes(model_path: Union[str, Path], type_k: TypeArg = "f16", type_v: TypeArg = None, n_ctx: int = 4096,
             n_ubatch: int = 512, kv_options: Union[None, str, dict] = None) -> int:
    """Bytes of KV cache llama.cpp allocates for one sequence of n_ctx tokens (sliding-window layers
    keep only window + ubatch cells, as llama.cpp sizes them), with the per-layer types of the KV
    option `layers` (or those the option `bits` chooses) when kv_options (or LLAMA_KV_LAYERS,
    LLAMA_KV_BITS, as for a context) has it; ValueError where a context would refuse them
    (per-layer types on a cache that is not tq)."""
    n_ctx, n_ubatch = _positive(n_ctx, "n_ctx"), _positive(n_ubatch, "n_ubatch")
    path = Path(model_path)
    meta = read_metadata(path)
    shape = attention_shape(meta, path)
    k0 = cache_type(type_k)
    v0 = cache_type(type_v if type_v is not None else type_k)
    vals = [(h * shape["head_dim_k"], h * shape["head_dim_v"]) for h in shape["n_head_kv"]]
    lk, lv = layer_types(shape["n_layer"], kv_options, k0, v0, [k for k, _ in vals], [v for _, v in vals])
    for side, base, per in (("K", k0, lk), ("V", v0, lv)):  # as a context refuses them (tq-kv-center.cpp)
        if any(per) and not base.turboquant:
            raise TqValueError(f"KV-cache option layers: per-layer {side} types need a tq {side} cache, not {base.name}")
    pad = lambda n: (n + _CELL_PAD - 1) // _CELL_PAD * _CELL_PAD  # noqa: E731
    full = pad(n_ctx)
    swa = swa_layers(meta, shape)
    total = 0
    for il in range(shape["n_layer"]):
        cells = min(full, pad(shape["sliding_window"] + n_ubatch)) if swa[il] else full
        nkv = shape["n_head_kv"][il]
        if nkv == 0:
            continue
        k, v = lk[il] or k0, lv[il] or v0
        total += cells * (k.row_bytes(nkv * shape["head_dim_k"]) + v.row_bytes(nkv * shape["head_dim_v"]))
    return total


# the sliding-window pattern llama.cpp's model loader sets per architecture when the GGUF does not
# carry one (src/llama-model.cpp, hparams.set_swa_pattern(n) in load_hparams: every n-th layer full)
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
