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
from typing import AbstractSet, Dict, Iterable, List, Optional, Sequence, Tuple

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


def _better(a: Drive, b: Drive, placement: str) -> bool:
    """True when ``a`` is a better choice than ``b``."""
    if placement == PLACEMENT_BIN_PACK:
        ka: Tuple[int, ...] = (a.free,)
        kb: Tuple[int, ...] = (b.free,)
    elif placement == PLACEMENT_SPREAD:
        ka, kb = (a.volume_count, -a.free), (b.volume_count, -b.free)
    else:
        ka, kb = (-a.free, a.volume_count), (-b.free, b.volume_count)
    if ka != kb:
        return ka < kb
    return a.drive_id < b.drive_id


def choose(candidates: Iterable[Drive], request: Request, claimed: AbstractSet[str] = frozenset(),
           exclude: AbstractSet[str] = frozenset()) -> Decision:
    """The best drive among ``candidates`` for ``request``, or every refusal.

    ``exclude``: drive ids already tried and lost in this request (not reported)."""
    best: Optional[Drive] = None
    refusals: List[Refusal] = []
    for drive in candidates:
        if drive.drive_id in exclude:
            continue
        reason = refusal_reason(drive, request, claimed)
        if reason:
            refusals.append(Refusal(drive.drive_id, drive.node, reason))
        elif best is None or _better(drive, best, request.placement):
            best = drive
    return Decision(best, tuple(refusals))


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
