"""Choosing a drive for a new volume. Pure: drives in, a decision out.

The caller (csi/controller.py) hands over only the drives of the candidate nodes
(from the store's per-node index), one preference tier at a time, so the cost of a
decision grows with the drives on those nodes, never with every drive.

Every drive is either chosen or refused with a reason; :func:`summarize` turns the
refusals into the RESOURCE_EXHAUSTED message ("node n1: drive d1 has 100 MiB free,
needs 1 GiB; drive d2 cordoned").

Placement policies (StorageClass parameter ``directpv.dev/placement``):
``most-free`` (default; the drive with the most free bytes), ``bin-pack`` (the
fullest drive that still fits: keeps large drives free for large volumes),
``spread`` (the drive with the fewest volumes, then the most free).
Ties break on the drive id, so a decision is deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import AbstractSet, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from .models import DRIVE_READY, Drive
from .units import format_size

PLACEMENT_MOST_FREE = "most-free"
PLACEMENT_BIN_PACK = "bin-pack"
PLACEMENT_SPREAD = "spread"
PLACEMENTS = (PLACEMENT_MOST_FREE, PLACEMENT_BIN_PACK, PLACEMENT_SPREAD)


@dataclass(frozen=True)
class Request:
    """What a new volume needs from its drive."""

    size: int
    access_tier: str = ""  # "" = any tier
    labels: Dict[str, str] = field(default_factory=dict)  # every one must equal the drive's label
    claim: str = ""  # one-volume-per-drive claim id ("" = none)
    placement: str = PLACEMENT_MOST_FREE


@dataclass(frozen=True)
class Refusal:
    drive_id: str
    node: str
    reason: str


@dataclass(frozen=True)
class Decision:
    drive: Optional[Drive]
    refusals: Tuple[Refusal, ...] = ()


def sift(candidates: Iterable[Drive], size: int, tier: str = "", labels: Optional[Mapping[str, str]] = None,
         claim: str = "", claimed: AbstractSet[str] = frozenset(), exclude: AbstractSet[str] = frozenset(),
         *, exact: bool = False) -> Tuple[List[Drive], List[Refusal]]:
    """The one home of "may this drive take this request": ``candidates`` split into the drives
    that may take a new volume of ``size`` bytes and a :class:`Refusal` with the reason for each
    other one (``exclude``: drive ids left out, not reported). Used by :func:`choose`, by
    :func:`drive_refusal` / :func:`refusal_reason` for one drive, and so by both stores'
    reservation check (core/reservation.py ``check_reservable``, which asks about the size only).

    A drive may when, in this order: it is Ready; schedulable (not cordoned); of access ``tier``
    ("" = any, case does not matter); every one of ``labels`` equals the drive's; it is not in
    ``claimed`` when ``claim`` is set (drive ids already holding a volume of that
    one-volume-per-drive claim); ``free >= size``. The first test that fails is the reason.
    ``exact``: the stores' wording (the status with its cordon, sizes in bytes) instead of the
    scheduler's (the drive's message, sizes rounded for people).

    The tests are written out in the loop, not called per drive: a decision over every drive of
    the cluster (no topology) stays as fast as a bare comparison."""
    fits: List[Drive] = []
    refusals: List[Refusal] = []
    want_tier, ready, fit = tier.lower(), DRIVE_READY, fits.append
    for d in candidates:
        if d.drive_id in exclude:
            continue
        if d.status != ready:
            if exact:
                reason = f"is {d.status}" + ("" if d.schedulable else ", cordoned")
            else:
                reason = f"is {d.status}" + (f" ({d.message})" if d.message else "")
        elif not d.schedulable:
            reason = "is Ready, cordoned" if exact else "cordoned"
        elif want_tier and d.access_tier.lower() != want_tier:
            reason = f"access tier {d.access_tier}, wants {tier}"
        elif labels and any(d.labels.get(k) != v for k, v in labels.items()):
            reason = _label_refusal(d, labels)
        elif claim and d.drive_id in claimed:
            reason = f"already holds a volume of claim {claim}"
        elif size > 0 and d.total - d.allocated < size:  # i.e. d.free < size, without the property
            if exact:
                reason = f"has {d.free} bytes free, needs {size}"
            else:
                reason = f"has {format_size(d.free)} free, needs {format_size(size)}"
        else:
            fit(d)
            continue
        refusals.append(Refusal(d.drive_id, d.node, reason))
    return fits, refusals


def _label_refusal(drive: Drive, labels: Mapping[str, str]) -> str:
    for key, want in labels.items():
        have = drive.labels.get(key)
        if have != want:
            return f"label {key}={want} wanted, has " + ("none" if have is None else f"{key}={have}")
    return ""


def drive_refusal(drive: Drive, size: int, tier: str = "", labels: Optional[Mapping[str, str]] = None,
                  claim: str = "", claimed: AbstractSet[str] = frozenset(), *, exact: bool = False) -> str:
    """Why ``drive`` cannot take a new volume of ``size`` bytes ("" when it can): :func:`sift`
    of the one drive."""
    refusals = sift((drive,), size, tier, labels, claim, claimed, exact=exact)[1]
    return refusals[0].reason if refusals else ""


def refusal_reason(drive: Drive, request: Request, claimed: AbstractSet[str] = frozenset()) -> str:
    """Why ``drive`` cannot take ``request`` ("" when it can; :func:`drive_refusal`). ``claimed``:
    drive ids that already hold a volume of ``request.claim``."""
    return drive_refusal(drive, request.size, request.access_tier, request.labels, request.claim, claimed)


def _key(placement: str) -> Callable[[Drive], Tuple[int, int, str]]:
    """Sort key of the best drive (smallest first) for ``placement``; ties on the drive id."""
    if placement == PLACEMENT_BIN_PACK:
        return lambda d: (d.total - d.allocated, 0, d.drive_id)
    if placement == PLACEMENT_SPREAD:
        return lambda d: (d.volume_count, d.allocated - d.total, d.drive_id)
    return lambda d: (d.allocated - d.total, d.volume_count, d.drive_id)


def choose(candidates: Iterable[Drive], request: Request, claimed: AbstractSet[str] = frozenset(),
           exclude: AbstractSet[str] = frozenset()) -> Decision:
    """The best drive among ``candidates`` for ``request``, or every refusal.

    ``exclude``: drive ids already tried and lost in this request (not reported).
    One pass over the candidates (:func:`sift`)."""
    fits, refusals = sift(candidates, request.size, request.access_tier, request.labels, request.claim,
                          claimed, exclude)
    if not fits:
        return Decision(None, tuple(refusals))
    return Decision(min(fits, key=_key(request.placement)), tuple(refusals))


def summarize(refusals: Sequence[Refusal], limit: int = 20) -> str:
    """``"node n1: drive d1 has 100 MiB free, needs 1 GiB; drive d2 cordoned; node n2: ..."``.

    Nodes in first-seen order; at most ``limit`` drives are named, the rest counted."""
    if not refusals:
        return "no drives on the requested topology"
    by_node: Dict[str, List[str]] = {}
    for r in refusals[:limit]:
        by_node.setdefault(r.node, []).append(f"drive {r.drive_id} {r.reason}")
    parts = [f"node {node}: " + "; ".join(items) for node, items in by_node.items()]
    text = "; ".join(parts)
    if len(refusals) > limit:
        text += f"; and {len(refusals) - limit} more drive(s) refused"
    return text
