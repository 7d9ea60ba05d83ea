"""The rules of a reservation, one home for every caller. Pure: plain data in, a verdict out.

Both store adapters (store/embedded.py, kube/store.py) and the controller (csi/controller.py)
decide with these functions:

* :func:`request_difference` / :func:`check_same_request`: "is this the same request" — an
  existing volume of the name answers a request when its size is in the requested range and its
  parameters are equal (the stores ask for exactly their recorded size: ``required == limit``);
  otherwise AlreadyExists.
* :func:`reservation_refusal` / :func:`check_reservable`: may this drive take ``size`` more
  bytes now — Ready, schedulable (not cordoned), the generation the caller read, ``free >= size``;
  otherwise Conflict (the caller picks again). The drive's part is the scheduler's own rule
  (core/scheduler.py ``drive_refusal``, asked about the size only): a drive the controller chose
  is re-checked by the store with the same test.
* :func:`smallest_unused`: the project ID of a new volume — the smallest integer > 0 that no
  volume or tombstone of the drive holds.
"""

from __future__ import annotations

from typing import Iterable, Mapping, Optional

from .errors import AlreadyExists, Conflict
from .models import Drive
from .scheduler import drive_refusal
from .validation import size_fits

SAME_REQUEST_HINT = "use another name, or repeat the original request"


def request_difference(size: int, parameters: Mapping[str, str], required: int, limit: int,
                       wanted: Mapping[str, str]) -> str:
    """What keeps a volume of ``size`` bytes and ``parameters`` from answering a request for
    ``required..limit`` bytes (0 = no bound) with parameters ``wanted``; "" when it answers it."""
    if not size_fits(size, required, limit):
        if required == limit:
            return f"exists with {size} bytes, requested {required}"
        return f"exists with {size} bytes, outside the requested range {required}..{limit}"
    if dict(parameters) != dict(wanted):
        return f"exists with other parameters ({dict(parameters)}), requested {dict(wanted)}"
    return ""


def check_same_request(name: str, size: int, parameters: Mapping[str, str], required: int, limit: int,
                       wanted: Mapping[str, str], where: str = "") -> None:
    """AlreadyExists when the recorded volume ``name`` (``size``, ``parameters``) does not answer
    the request (see :func:`request_difference`). ``where``: e.g. " (being reserved on drive d1)"."""
    problem = request_difference(size, parameters, required, limit, wanted)
    if problem:
        raise AlreadyExists(f"volume {name}{where} {problem}", SAME_REQUEST_HINT)


def reservation_refusal(drive: Drive, size: int) -> str:
    """Why ``drive`` cannot take a reservation of ``size`` bytes now ("" when it can):
    :func:`~.scheduler.drive_refusal` in the stores' wording (sizes in bytes)."""
    return drive_refusal(drive, size, exact=True)


def check_reservable(drive: Optional[Drive], drive_id: str, size: int,
                     expected_generation: Optional[int] = None, *, reread: bool = False) -> Drive:
    """``drive`` when it may take ``size`` bytes, else Conflict (the caller picks again).

    ``expected_generation``: the generation the caller's choice was made on; a drive at another
    generation (or any re-read of it, ``reread=True``, when one was expected) has changed since.
    The status (and cordon) is told before a changed generation, a changed generation before the room."""
    if drive is None:
        raise Conflict(f"drive {drive_id} is not registered", "pick another drive")
    refusal = reservation_refusal(drive, 0)
    if refusal:
        raise Conflict(f"drive {drive.drive_id} {refusal}", "pick another drive")
    if expected_generation is not None and (reread or drive.generation != expected_generation):
        raise Conflict(f"drive {drive.drive_id} changed since it was read", "re-read and pick again")
    refusal = reservation_refusal(drive, size)
    if refusal:
        raise Conflict(f"drive {drive.drive_id} {refusal}", "pick another drive")
    return drive


def smallest_unused(used: Iterable[int]) -> int:
    """The smallest integer > 0 not in ``used`` (project IDs of a drive's volumes and tombstones)."""
    taken = set(used)
    pid = 1
    while pid in taken:
        pid += 1
    return pid
