"""Identity of a device: a staleness token over its probed state, and a hardware ID.

``state_token`` is what the operator sees as ID in `directpv-csi devices` and what a
format plan carries: when anything that matters about the device changes (size,
holders, mounts, filesystem, partitions...), the token changes, and a format planned
on the old state is refused. ``hardware_id`` names the physical drive across
renames before we format it (after formatting, the filesystem UUID we assign is the
drive's identity). Pure: no OS imports.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any, Dict

from .models import Device


def canonical_state(device: Device) -> Dict[str, Any]:
    """The fields the state token covers, in a canonical form (lists sorted; udev data and the
    counted contents excluded; whose drive it is included once known)."""
    state: Dict[str, Any] = {
        "name": device.name,
        "majmin": device.majmin,
        "size": device.size,
        "logical_sector_size": device.logical_sector_size,
        "read_only": device.read_only,
        "removable": device.removable,
        "hidden": device.hidden,
        "holders": sorted(device.holders),
        "slaves": sorted(device.slaves),
        "partitions": sorted(device.partitions),
        "partition_table": device.partition_table,
        "mountpoints": sorted(device.mountpoints),
        "swap": device.swap,
        "cdrom": device.cdrom,
        "dm_name": device.dm_name,
        "dm_uuid": device.dm_uuid,
        "md_level": device.md_level,
        "fs_type": device.fs_type,
        "fs_uuid": device.fs_uuid,
        "fs_label": device.fs_label,
        "loop_backing_file": device.loop_backing_file,
        "serial": device.serial,
        "wwn": device.wwn,
    }
    if device.drive_kind:
        state["drive_kind"] = device.drive_kind
    return state


def state_token(device: Device) -> str:
    """``"<maj>:<min>$<urlsafe base64 of sha256(canonical state)>"`` (padding stripped)."""
    blob = json.dumps(canonical_state(device), sort_keys=True, separators=(",", ":")).encode("utf-8")
    digest = base64.urlsafe_b64encode(hashlib.sha256(blob).digest()).decode("ascii").rstrip("=")
    return f"{device.majmin}${digest}"


def token_majmin(token: str) -> str:
    """The ``maj:min`` part of a state token ("" when it has none)."""
    head, sep, _rest = token.partition("$")
    return head if sep else ""


def hardware_id(device: Device) -> str:
    """A name of the physical drive that survives renames: WWN, else serial, else a by-id link name, else ""."""
    if device.wwn:
        return device.wwn
    if device.serial:
        return device.serial
    if device.by_id:
        return sorted(link.rsplit("/", 1)[-1] for link in device.by_id)[0]
    return ""


# --- whose drive is it ---------------------------------------------------------------------
#
# MinIO DirectPV labels its XFS drives "DIRECTPV", and so did directpv-csi before format version
# 2: the label alone cannot tell them apart. Drives formatted now carry OUR_LABEL, which DirectPV
# never writes, so they are recognised from the superblock alone. A "DIRECTPV"-labelled drive is
# told apart by its files (read without writing, device/ondisk.py): ours wrote
# ``.directpv/meta.json``; DirectPV writes ``.directpv/meta.info`` and a ``.FSUUID.<uuid>`` link to
# ``.``. A drive carrying DirectPV's marks is DirectPV's even when a meta.json sits beside them
# (versions before 2 wrote one while "adopting" such drives), unless that meta.json records an
# import (``"imported_from": "minio-directpv"``): the room left for the migration from DirectPV,
# which takes such drives over in place.

OUR_LABEL = "DIRECTPV-CSI"  # 12 characters: the most an XFS label holds
LEGACY_LABEL = "DIRECTPV"  # MinIO DirectPV's label, and ours before format version 2
IMPORTED_FROM_DIRECTPV = "minio-directpv"  # meta.json "imported_from" of a drive migrated in place

KIND_OURS = "directpv-csi"  # formatted by us (our label)
KIND_OURS_V1 = "directpv-csi-v1"  # formatted by an earlier version of ours (label DIRECTPV + meta.json)
KIND_IMPORTED = "directpv-csi-imported"  # a DirectPV drive the migration took over (meta.json says so)
KIND_DIRECTPV = "minio-directpv"  # MinIO DirectPV's drive: never ours
KIND_UNVERIFIED = "unverified"  # labelled DIRECTPV, but its files could not be read: whose is unknown
KIND_UNCLAIMED = "unclaimed"  # labelled DIRECTPV with neither our metadata nor DirectPV's marks
OUR_KINDS = frozenset({KIND_OURS, KIND_OURS_V1, KIND_IMPORTED})


def classify_drive(
    fs_type: str,
    label: str,
    *,
    meta: Any = None,
    directpv_marks: bool = False,
    our_label: str = OUR_LABEL,
) -> str:
    """Who made an XFS filesystem, from its label and (for LEGACY_LABEL) what its root holds.

    ``meta`` is the parsed ``.directpv/meta.json`` (None when absent); ``directpv_marks`` is True
    when ``.directpv/meta.info`` or a ``.FSUUID.*`` link exists. Returns a KIND_* value, or ""
    for a filesystem that is none of these.
    """
    if fs_type != "xfs":
        return ""
    if label == our_label and label != LEGACY_LABEL:
        return KIND_OURS
    if label != LEGACY_LABEL:
        return ""
    imported = isinstance(meta, dict) and meta.get("imported_from") == IMPORTED_FROM_DIRECTPV
    if directpv_marks:
        return KIND_IMPORTED if imported else KIND_DIRECTPV
    if isinstance(meta, dict):
        return KIND_OURS_V1
    return KIND_UNCLAIMED


def is_our_kind(kind: str) -> bool:
    return kind in OUR_KINDS
