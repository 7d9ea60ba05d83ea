"""Domain errors. Pure: every layer raises these; each edge translates them once.

The CSI layer maps them to gRPC codes in one place (csi/errors.py); the Ansible
modules turn them into ``fail_json`` in one place. The ``hint`` says what to do.
"""

from __future__ import annotations

# Request strings echoed in messages and logs are cut to this many bytes (clip()): a
# hostile 10 KB id must not push a reply past gRPC's metadata limits.
CLIP_BYTES = 200


def clip(value: object, limit: int = CLIP_BYTES) -> str:
    """``repr``-free text of ``value`` cut to at most ``limit`` UTF-8 bytes (plus a marker
    saying how long it was). The one helper for echoing request strings."""
    text = value if isinstance(value, str) else str(value)
    raw = text.encode("utf-8", "surrogateescape")
    if len(raw) <= limit:
        return text
    marker = f"...({len(raw)} bytes)"
    cut = raw[:max(0, limit - len(marker))].decode("utf-8", "ignore")
    return cut + marker


class DirectPVError(Exception):
    """Base of every error this project raises on purpose."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}; {self.hint}" if self.hint else self.message


class InvalidArgument(DirectPVError):
    """The request or input is malformed (gRPC INVALID_ARGUMENT)."""


class NotFound(DirectPVError):
    """The named object does not exist (gRPC NOT_FOUND)."""


class AlreadyExists(DirectPVError):
    """An object of that name exists with incompatible properties (gRPC ALREADY_EXISTS)."""


class ResourceExhausted(DirectPVError):
    """No drive has room on the requested topology (gRPC RESOURCE_EXHAUSTED)."""


class OutOfRange(DirectPVError):
    """A size is outside what is supported (gRPC OUT_OF_RANGE)."""


class FailedPrecondition(DirectPVError):
    """The object is in a state that forbids the operation (gRPC FAILED_PRECONDITION)."""


class Aborted(DirectPVError):
    """Another operation on the same object is in flight (gRPC ABORTED)."""


class Conflict(DirectPVError):
    """An optimistic-concurrency write lost a race; the caller may retry."""


class PermissionDenied(DirectPVError):
    """The API server (or another authority) refused this process the operation (gRPC PERMISSION_DENIED)."""


class Unavailable(DirectPVError):
    """A service this process depends on (the API server) cannot be reached or is overloaded; the
    caller may retry (gRPC UNAVAILABLE)."""


class Unsupported(DirectPVError):
    """The kernel or tools lack a feature (for example XFS quota support)."""


class DeviceRefused(FailedPrecondition):
    """A device may not be formatted/used; ``reasons`` lists every reason code."""

    def __init__(self, message: str, hint: str = "", reasons: tuple[str, ...] = ()) -> None:
        super().__init__(message, hint)
        self.reasons = reasons


class CommandFailed(DirectPVError):
    """An external command (mkfs.xfs, blkid, ...) failed."""

    def __init__(self, message: str, hint: str = "", cmd: tuple[str, ...] = (), rc: int = 0, stderr: str = "") -> None:
        super().__init__(message, hint)
        self.cmd = cmd
        self.rc = rc
        self.stderr = stderr
