"""Exceptions of tq_llamacpp.

Every error the package raises is a TqError, and also the builtin that fits, so `except ValueError`
keeps working: bad values (lengths, sizes, type names, NaN) are TqValueError, wrong Python or NumPy
types TqTypeError, an instruction set this CPU or build lacks TqIsaError, a file that is not a
usable GGUF model GGUFError, a model, text or source archive that cannot be fetched FetchError, the
patched llama.cpp build missing LibraryNotFound, llama.cpp refusing a request LlamaError, and an
RPC server that cannot be reached or lacks the tq types RpcError.

This module imports nothing of the package: the fetcher (_registry.py) uses it at build time,
before the C extension exists.
"""
from __future__ import annotations


class TqError(Exception):
    """Base class. `status` is the C library's tq_status when the error came from C."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class TqValueError(TqError, ValueError):
    """An argument has the right type but a bad value."""


class TqTypeError(TqError, TypeError):
    """An argument has the wrong Python type or NumPy dtype."""


class TqIsaError(TqError, RuntimeError):
    """The requested instruction set is not available on this CPU or in this build."""


class GGUFError(TqValueError):
    """A model file is not a GGUF file llama.cpp can load (bad magic, truncated, absurd sizes)."""


class FetchError(TqError, RuntimeError):
    """A model, text or source archive is not cached and cannot be fetched (no network, bad checksum)."""


class LibraryNotFound(TqError, ImportError):
    """The patched llama.cpp libraries or tools are not where the package installed them."""


class LlamaError(TqError, RuntimeError):
    """llama.cpp refused a request (e.g. a saved state that does not fit this cache); the message
    carries llama.cpp's own reason."""


class RpcError(TqError, ConnectionError):
    """An RPC server (rpc_servers) cannot be reached, speaks another protocol version, or lacks
    the tq cache types."""


def check(status: int, context: str = "") -> None:
    """Raise the exception for a tq_status, with the C library's own wording; return on TQ_OK."""
    from ._native import ffi, lib  # noqa: PLC0415  (see the module docstring)

    if status == lib.TQ_OK:
        return
    message = ffi.string(lib.tq_strerror(status)).decode()
    if context:
        message = f"{context}: {message}"
    by_status = {
        lib.TQ_ERR_TYPE: TqValueError,
        lib.TQ_ERR_LENGTH: TqValueError,
        lib.TQ_ERR_DIM: TqValueError,
        lib.TQ_ERR_NONFINITE: TqValueError,
        lib.TQ_ERR_BITS: TqValueError,
        lib.TQ_ERR_ISA: TqIsaError,
    }
    raise by_status.get(status, TqError)(message, status)
