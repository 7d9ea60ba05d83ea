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
    """The fields the state token covers, in a canonical form (lists sorted; udev data excluded)."""
    return {
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
