"""The one translation of the Kubernetes client's failures into domain errors (core/errors.py).

Every call the kube store makes to the API server goes through :func:`translated` (or
:func:`api_error`), so no ``ApiException`` (and no urllib3 connection error) leaves the adapter:
an RBAC refusal reaches the CO as PERMISSION_DENIED naming the verb and the resource, an
unreachable or failing API server as UNAVAILABLE (csi/errors.py maps the codes).

=========================  ===================================================
API answer                 domain error
=========================  ===================================================
401                        PermissionDenied (credentials not accepted)
403                        PermissionDenied (names the verb and the resource)
404                        NotFound
409                        ApiConflict (a Conflict: the caller's retry loop re-reads)
400, 413, 422              InvalidArgument
429, 5xx, no answer        Unavailable
anything else              DirectPVError (INTERNAL)
=========================  ===================================================
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from typing import Iterator

import urllib3
from kubernetes.client.exceptions import ApiException

from ..core.errors import (
    Conflict,
    DirectPVError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unavailable,
)

RBAC_HINT = ("grant it in the ClusterRole of this process's service account "
             "(roles/install/templates/clusterrole-*.yaml.j2)")


class ApiConflict(Conflict):
    """The API server answered 409: the object changed since it was read (a stale
    resourceVersion) or a create found the name taken. Distinct from the store's own Conflicts
    (a drive that cannot take a volume), which are never retried."""


def status_of(exc: BaseException) -> int:
    """The HTTP status of an ApiException (0: none, e.g. a connection error)."""
    return int(getattr(exc, "status", 0) or 0) if isinstance(exc, ApiException) else 0


def reason_of(exc: ApiException) -> str:
    """The API server's own message (the Status object's ``message``), else the HTTP reason."""
    try:
        return str(json.loads(exc.body or "")["message"])
    except (TypeError, ValueError, KeyError):
        return str(exc.reason or "")


def api_error(exc: BaseException, verb: str, resource: str, name: str = "") -> DirectPVError:
    """The domain error for ``exc`` raised by ``verb`` (get, list, watch, create, update, delete,
    patch) on ``resource`` (a plural such as ``directpvdrives.directpv.dev``), object ``name``."""
    what = f"{resource} {name}" if name else resource
    if not isinstance(exc, ApiException):
        return Unavailable(f"cannot {verb} {what}: the API server cannot be reached ({type(exc).__name__}: {exc})",
                           "check that the API server runs and this host reaches it; the request may be retried")
    code = status_of(exc)
    reason = reason_of(exc)
    if code == 401:
        return PermissionDenied(f"cannot {verb} {what}: the API server did not accept this process's credentials "
                                f"({reason})", "check the service account token or the kubeconfig")
    if code == 403:
        return PermissionDenied(f"the API server refused to {verb} {what} ({reason})",
                                f"this process needs the verb {verb!r} on {resource}: {RBAC_HINT}")
    if code == 404:
        return NotFound(f"cannot {verb} {what}: not found ({reason})",
                        "check that it exists (and that the CRDs in deploy/crds are installed)")
    if code == 409:
        return ApiConflict(f"cannot {verb} {what}: it changed meanwhile ({reason})", "re-read it and retry")
    if code in (400, 413, 422):
        return InvalidArgument(f"the API server refused to {verb} {what} ({reason})",
                               "fix the value named in the message")
    if code == 429 or code >= 500 or code == 0:
        return Unavailable(f"cannot {verb} {what}: the API server answered {code or 'nothing'} ({reason})",
                           "the API server is overloaded or failing; the request may be retried")
    return DirectPVError(f"cannot {verb} {what}: the API server answered {code} ({reason})",
                         "look at the API server's log")


# What a call to the API server can raise besides ApiException: connection refused/reset,
# timeouts, TLS failures (urllib3 wraps most of them; a socket error may come through bare).
TRANSPORT_ERRORS = (ApiException, urllib3.exceptions.HTTPError, OSError)


@contextmanager
def translated(verb: str, resource: str, name: str = "") -> Iterator[None]:
    """Run the API call(s) in the block; any client failure leaves as a domain error."""
    try:
        yield
    except TRANSPORT_ERRORS as exc:
        raise api_error(exc, verb, resource, name) from exc
