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
from typing import AbstractSet, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

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


def refusal_reason(drive: Drive, request: Request, claimed: AbstractSet[str] = frozenset()) -> str:
    """Why ``drive`` cannot take ``request`` ("" when it can). ``claimed``: drive ids that
    already hold a volume of ``request.claim``."""
    if drive.status != DRIVE_READY:
        return f"is {drive.status}" + (f" ({drive.message})" if drive.message else "")
    if not drive.schedulable:
        return "cordoned"
    if request.access_tier and drive.access_tier.lower() != request.access_tier.lower():
        return f"access tier {drive.access_tier}, wants {request.access_tier}"
    for key, want in request.labels.items():
        have = drive.labels.get(key)
        if have != want:
            return f"label {key}={want} wanted, has " + ("none" if have is None else f"{key}={have}")
    if request.claim and drive.drive_id in claimed:
        return f"already holds a volume of claim {request.claim}"
    if drive.free < request.size:
        return f"has {format_size(drive.free)} free, needs {format_size(request.size)}"
    return ""


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
    One cheap pass keeps the drives that fit; reasons are worked out only for the
    refused ones, so a decision over many drives stays fast."""
    size, tier, labels = request.size, request.access_tier.lower(), request.labels
    claim = request.claim
    fits: List[Drive] = []
    others: List[Drive] = []
    for d in candidates:
        if d.drive_id in exclude:
            continue
        if (d.status == DRIVE_READY and d.schedulable and d.total - d.allocated >= size
                and (not tier or d.access_tier.lower() == tier)
                and (not labels or all(d.labels.get(k) == v for k, v in labels.items()))
                and (not claim or d.drive_id not in claimed)):
            fits.append(d)
        else:
            others.append(d)
    refusals = tuple(Refusal(d.drive_id, d.node, refusal_reason(d, request, claimed)) for d in others)
    if not fits:
        return Decision(None, refusals)
    return Decision(min(fits, key=_key(request.placement)), refusals)


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
