"""Exceptions of tq_llamacpp.

Every error is a TqError, and also the builtin that fits, so `except ValueError` keeps working:
bad values (lengths, sizes, type names, NaN) are TqValueError, wrong Python or NumPy types are
TqTypeError, and an instruction set this CPU or build lacks is TqIsaError.
"""
from __future__ import annotations

from ._native import ffi, lib


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


def check(status: int, context: str = "") -> None:
    """Raise the exception for a tq_status, with the C library's own wording; return on TQ_OK."""
    if status == lib.TQ_OK:
        return
    message = ffi.string(lib.tq_strerror(status)).decode()
    if context:
        message = f"{context}: {message}"
    raise _BY_STATUS.get(status, TqError)(message, status)


_BY_STATUS = {
    lib.TQ_ERR_TYPE: TqValueError,
    lib.TQ_ERR_LENGTH: TqValueError,
    lib.TQ_ERR_DIM: TqValueError,
    lib.TQ_ERR_NONFINITE: TqValueError,
    lib.TQ_ERR_BITS: TqValueError,
    lib.TQ_ERR_ISA: TqIsaError,
}
