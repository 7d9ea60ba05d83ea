"""Per-volume in-flight table: a second call on a volume that is already being
worked on ends with ABORTED (CSI spec: "an operation pending for the volume"),
instead of racing the first one.

Use the :class:`InFlight` table directly::

    with self.inflight.hold(request.volume_id):
        ...

or decorate a servicer method (the servicer has an ``inflight`` attribute)::

    @rpc
    @serialized(lambda request: request.volume_id)
    def NodeStageVolume(self, request, context): ...

``serialized`` raises :class:`~directpv_csi.core.errors.Aborted`; put it *under*
``@rpc`` (errors.rpc) so the translator turns it into the gRPC code. An empty
key (missing volume id) is not held: the method's own validation reports it.
"""

from __future__ import annotations

import functools
import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Set, TypeVar

from ..core.errors import Aborted


class InFlight:
    """A thread-safe set of keys (volume ids, or names) being worked on."""

    def __init__(self, kind: str = "volume") -> None:
        self._kind = kind
        self._lock = threading.Lock()
        self._keys: Set[str] = set()

    def try_acquire(self, key: str) -> bool:
        with self._lock:
            if key in self._keys:
                return False
            self._keys.add(key)
            return True

    def release(self, key: str) -> None:
        with self._lock:
            self._keys.discard(key)

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._keys

    def __len__(self) -> int:
        with self._lock:
            return len(self._keys)

    @contextmanager
    def hold(self, key: str) -> Iterator[None]:
        """Hold ``key`` for the block; raise Aborted when another call holds it."""
        if not key:
            yield
            return
        if not self.try_acquire(key):
            raise Aborted(
                f"an operation on {self._kind} {key!r} is already in progress",
                "retry after it completes (the container orchestrator retries with backoff)",
            )
        try:
            yield
        finally:
            self.release(key)


F = TypeVar("F", bound=Callable[..., Any])


def serialized(key: Callable[[Any], str], attr: str = "inflight") -> Callable[[F], F]:
    """Decorator: hold ``key(request)`` in ``getattr(self, attr)`` (an InFlight) during the call."""

    def decorate(method: F) -> F:
        @functools.wraps(method)
        def wrapper(self: Any, request: Any, context: Any) -> Any:
            table: InFlight = getattr(self, attr)
            with table.hold(key(request)):
                return method(self, request, context)

        return wrapper  # type: ignore[return-value]

    return decorate
