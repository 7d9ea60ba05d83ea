"""The one translator from domain errors (core/errors.py) to gRPC status codes.

Every servicer method (identity, controller, node) is wrapped with :func:`rpc`:
it logs one line per call and ends a failing call with ``context.abort(code,
message)`` — never ``set_code`` followed by an empty response.

Mapping (docs/CSI.md, STYLE.md): invalid -> INVALID_ARGUMENT, missing -> NOT_FOUND,
name taken with other properties -> ALREADY_EXISTS, in flight -> ABORTED, no drive
with room -> RESOURCE_EXHAUSTED, size out of range -> OUT_OF_RANGE, state conflict
-> FAILED_PRECONDITION, missing kernel feature -> FAILED_PRECONDITION (the operator
must change the host), lost optimistic race -> ABORTED (the caller retries),
refused by the API server (RBAC) -> PERMISSION_DENIED, API server unreachable or failing
-> UNAVAILABLE (the CO retries),
path errors of hostile requests (ENAMETOOLONG, ELOOP) -> INVALID_ARGUMENT, anything else
-> INTERNAL (logged with its traceback).

Every message is bounded: request strings are cut by ``core.errors.clip`` where they are
echoed, and the whole message (which is also what is logged) to MAX_MESSAGE_BYTES here.
gRPC carries it percent-encoded in the ``grpc-message`` trailer, and a client refuses
trailers past its metadata limit (8 KiB by default): 2 KiB, tripled by the encoding of
non-ASCII bytes, stays below it.
"""

from __future__ import annotations

import errno
import functools
import logging
import time
from typing import Any, Callable, Dict, NoReturn, Tuple, Type, TypeVar

import grpc

from ..core import errors as e

log = logging.getLogger("directpv_csi.csi")

# Most specific first: DeviceRefused is a FailedPrecondition, and so on.
CODES: Dict[Type[e.DirectPVError], grpc.StatusCode] = {
    e.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    e.NotFound: grpc.StatusCode.NOT_FOUND,
    e.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    e.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    e.OutOfRange: grpc.StatusCode.OUT_OF_RANGE,
    e.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    e.Aborted: grpc.StatusCode.ABORTED,
    e.Conflict: grpc.StatusCode.ABORTED,
    e.Unsupported: grpc.StatusCode.FAILED_PRECONDITION,
    e.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    e.Unavailable: grpc.StatusCode.UNAVAILABLE,
    e.CommandFailed: grpc.StatusCode.INTERNAL,
}


def code_of(exc: BaseException) -> grpc.StatusCode:
    """The gRPC code for ``exc`` (INTERNAL for anything not a known domain error)."""
    for cls in type(exc).__mro__:
        code = CODES.get(cls)
        if code is not None:
            return code
    return grpc.StatusCode.INTERNAL


MAX_MESSAGE_BYTES = 2048
_HINT_BYTES = 512

# OS errors that only a malformed (hostile) path can cause: INVALID_ARGUMENT, not INTERNAL.
_INVALID_PATH_ERRNOS = (errno.ENAMETOOLONG, errno.ELOOP)


def translate(exc: BaseException) -> Tuple[grpc.StatusCode, str]:
    """``(code, message)`` for ``exc``; the message carries the hint; at most MAX_MESSAGE_BYTES."""
    if isinstance(exc, e.DirectPVError):
        hint = e.clip(exc.hint, _HINT_BYTES)
        text = e.clip(exc.message, MAX_MESSAGE_BYTES - len(hint.encode()) - 40)
        return code_of(exc), e.clip(f"{text}; {hint}" if hint else text, MAX_MESSAGE_BYTES)
    if isinstance(exc, OSError) and exc.errno in _INVALID_PATH_ERRNOS:
        return grpc.StatusCode.INVALID_ARGUMENT, e.clip(
            f"{exc.strerror or exc} ({e.clip(exc.filename or '')}); pass a shorter path without symlinks",
            MAX_MESSAGE_BYTES)
    return grpc.StatusCode.INTERNAL, e.clip(f"internal error: {type(exc).__name__}: {exc}", MAX_MESSAGE_BYTES)


def abort(context: grpc.ServicerContext, exc: BaseException) -> NoReturn:
    code, message = translate(exc)
    context.abort(code, message)
    raise AssertionError("context.abort returned")  # pragma: no cover - abort always raises


def _already_aborted(context: grpc.ServicerContext) -> bool:
    """True when the method itself called ``context.abort`` (grpc raised a bare Exception)."""
    get_code = getattr(context, "code", None)
    try:
        return callable(get_code) and get_code() not in (None, grpc.StatusCode.OK)
    except Exception:  # pragma: no cover - very old grpc without ServicerContext.code()
        return False


F = TypeVar("F", bound=Callable[..., Any])


def rpc(method: F) -> F:
    """Decorator for a servicer method ``(self, request, context) -> response``.

    Domain errors become ``context.abort(code, message)``; unexpected exceptions
    are logged with their traceback and become INTERNAL. One log line per call:
    method, outcome, milliseconds (DEBUG on success, WARNING on failure).
    """
    name = method.__name__

    @functools.wraps(method)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        t0 = time.perf_counter()
        try:
            response = method(self, request, context)
        except e.DirectPVError as exc:
            code, message = translate(exc)
            log.warning("%s: %s %s (%.2f ms)", name, code.name, message, (time.perf_counter() - t0) * 1e3)
        except Exception as exc:
            if _already_aborted(context):
                raise
            code, message = translate(exc)
            if code == grpc.StatusCode.INTERNAL:
                log.exception("%s: unexpected error", name)
            else:
                log.warning("%s: %s %s (%.2f ms)", name, code.name, message, (time.perf_counter() - t0) * 1e3)
        else:
            if log.isEnabledFor(logging.DEBUG):
                log.debug("%s: OK (%.2f ms)", name, (time.perf_counter() - t0) * 1e3)
            return response
        context.abort(code, message)

    return wrapper  # type: ignore[return-value]
