"""The directpv.dev objects as the kube store writes them: names, labels and the conversions
between the API server's dicts and core/models.py (pure: no API calls)."""

from __future__ import annotations

import hashlib
import re
from typing import Any, Dict, List, Optional, Set

from ..core.errors import InvalidArgument
from ..core.models import DRIVE_READY, VOLUME_PENDING, Drive, Tombstone, Volume

GROUP = "directpv.dev"
VERSION = "v1beta1"
DRIVES = "directpvdrives"
VOLUMES = "directpvvolumes"
FINALIZER = "directpv.dev/data-protection"
LABEL_NODE = "directpv.dev/node"
LABEL_DRIVE = "directpv.dev/drive"
LABEL_DRIVE_NAME = "directpv.dev/drive-name"
LABEL_TIER = "directpv.dev/access-tier"

# matched with fullmatch: ``$`` would also accept a trailing newline
_NAME_RE = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")
_LABEL_VALUE_RE = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?")

Obj = Dict[str, Any]


# --- conversions --------------------------------------------------------------------------


def rv_of(obj: Obj) -> str:
    """The object's resourceVersion: opaque, compared for equality only (never ordered or parsed)."""
    return str(obj["metadata"]["resourceVersion"])


STATUS_WRITES = "writes"  # status.writes: the store's count of status writes to the object


def generation_of(obj: Obj) -> int:
    """The record's generation: ``metadata.generation`` (the API server bumps it on every spec
    change) plus ``status.writes`` (the store bumps it on every status write): grows on every
    change the store makes, and never comes from the opaque resourceVersion."""
    return int(obj["metadata"].get("generation") or 0) + int((obj.get("status") or {}).get(STATUS_WRITES) or 0)


def label_value(value: str) -> Optional[str]:
    return value if _LABEL_VALUE_RE.fullmatch(value) else None


def label_values(pairs: Dict[str, str]) -> Dict[str, str]:
    return {k: v for k, v in ((k, label_value(v)) for k, v in pairs.items()) if v is not None}


def check_name(kind: str, name: str) -> None:
    if not _NAME_RE.fullmatch(name):
        raise InvalidArgument(f"{kind} name {name!r} is not a Kubernetes object name",
                              "use lower-case letters, digits, '-' and '.' (at most 253 characters)")


def object_name(volume_name: str) -> str:
    """The DirectPVVolume object name of a CSI volume name.

    CSI names are arbitrary strings (csi-sanity uses upper case; external-provisioner's
    ``pvc-<uuid>`` are already valid): a valid object name is used as it is, any other maps to
    ``v-<sha256 hex>`` (deterministic, so get/delete find it again). The CSI name itself is kept
    in ``spec.name``."""
    if _NAME_RE.fullmatch(volume_name):  # at most 253 characters, as the pattern says
        return volume_name
    return "v-" + hashlib.sha256(volume_name.encode()).hexdigest()


def drive_of(obj: Obj) -> Drive:
    spec: Obj = obj.get("spec") or {}
    st: Obj = obj.get("status") or {}
    ledger: Obj = st.get("volumes") or {}
    return Drive(
        drive_id=obj["metadata"]["name"], node=spec.get("node", ""), name=st.get("name", ""),
        total=int(st.get("total", 0)), allocated=sum(int(r["size"]) for r in ledger.values()),
        volume_count=len(ledger), status=st.get("status", DRIVE_READY), schedulable=bool(spec.get("schedulable", True)),
        access_tier=spec.get("accessTier", "Default"), make=st.get("make", ""), mountpoint=st.get("mountpoint", ""),
        message=st.get("message", ""), labels=dict(spec.get("labels") or {}), topology=dict(st.get("topology") or {}),
        generation=generation_of(obj),
    )


def volume_of(obj: Obj) -> Volume:
    spec: Obj = obj.get("spec") or {}
    st: Obj = obj.get("status") or {}
    return Volume(
        name=spec.get("name") or obj["metadata"]["name"], drive_id=spec["driveID"], node=spec["node"],
        size=int(spec["size"]),
        project_id=int(spec["projectID"]), status=st.get("status", VOLUME_PENDING),
        parameters=dict(spec.get("parameters") or {}), staging_path=st.get("stagingPath", ""),
        target_paths=tuple(st.get("targetPaths") or ()), read_only_targets=tuple(st.get("readOnlyTargets") or ()),
        labels=dict(spec.get("labels") or {}), created_at=float(spec.get("createdAt", 0.0)),
        generation=generation_of(obj),
        uid=str(spec.get("uid") or obj["metadata"].get("uid", "")),  # objects made before uids: the object's
    )


def tombstones_of(obj: Obj) -> List[Tombstone]:
    st: Obj = obj.get("status") or {}
    node = (obj.get("spec") or {}).get("node", "")
    return sorted((Tombstone(drive_id=obj["metadata"]["name"], node=node, name=str(t["name"]),
                             uid=str(t.get("uid", "")), project_id=int(t["projectID"]), size=int(t.get("size", 0)),
                             deleted_at=float(t.get("deletedAt", 0.0)))
                   for t in (st.get("tombstones") or {}).values()), key=lambda t: (t.name, t.uid))


def tomb_key(name: str, uid: str) -> str:
    return f"{name}#{uid}"


def used_project_ids(st: Obj) -> Set[int]:
    return {int(r["projectID"]) for r in (st.get("volumes") or {}).values()} | \
        {int(t["projectID"]) for t in (st.get("tombstones") or {}).values()}


def drive_meta_labels(node: str, name: str, tier: str) -> Dict[str, str]:
    return label_values({LABEL_NODE: node, LABEL_DRIVE_NAME: name, LABEL_TIER: tier})


def drive_status_body(d: Drive, ledger: Obj, tombstones: Optional[Obj] = None) -> Obj:
    out: Obj = {
        "name": d.name, "total": d.total, "status": d.status, "make": d.make, "mountpoint": d.mountpoint,
        "message": d.message, "topology": dict(d.topology), "volumes": ledger,
        "allocated": sum(int(r["size"]) for r in ledger.values()), "volumeCount": len(ledger),
    }
    if tombstones:
        out["tombstones"] = tombstones
    return out


def resource_name(plural: str, status: bool = False) -> str:
    return f"{plural}{'/status' if status else ''}.{GROUP}"
