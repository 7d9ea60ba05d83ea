#!/usr/bin/python
# Copyright: directpv.csi maintainers
# Apache License 2.0 (see LICENSE)
"""directpv.csi.drive: make a device a DirectPV drive (format or adopt), or release it."""

# ruff: noqa: E402  (Ansible layout: DOCUMENTATION, EXAMPLES and RETURN come before the imports)
from __future__ import annotations

DOCUMENTATION = r"""
---
module: drive
short_description: Make a block device a DirectPV drive, or release it
version_added: 0.1.0
description:
  - O(state=present) formats the device as a DirectPV drive (C(mkfs.xfs) with a new drive ID as filesystem
    UUID and the C(DIRECTPV-CSI) label, then writes C(.directpv/meta.json)), or adopts it unchanged when it
    already is one of ours (also a drive of an earlier version - label C(DIRECTPV) with our C(.directpv/meta.json)).
  - A MinIO DirectPV drive (label C(DIRECTPV), C(.FSUUID.*) link, C(.directpv/meta.info)) is never adopted,
    and never formatted while it holds volume directories, even with O(force). Its files are read without
    writing (an existing mount, or a private read-only mount without log replay).
  - A device whose filesystem holds files is formatted only with O(force); the plan (RV(plan.destroys)) says
    what is destroyed - filesystem, label, files and directories counted read-only, bytes.
  - O(state=absent) releases a drive of ours - unmounts it and, only with O(wipe=true), erases our XFS
    signature (C(wipefs --all --types xfs)). It refuses while volumes live on the drive, while it carries any
    per-volume metadata (C(.directpv/volumes/)), and while the store holds volumes on it (O(store_volumes)).
  - Changes block devices - needs root (C(become)); fails early with a hint otherwise.
  - Refuses, naming every reason, a device that is mounted, held, swap, the root disk, read-only,
    too small, a loop device without O(allow_loop), or that changed since O(expected_token) was taken.
    A device holding a filesystem or partition table is formatted only with O(force).
  - Check mode returns the plan (the exact commands) and runs nothing. Diff mode shows the device before and
    after (filesystem, label, drive ID). Idempotent - a drive already ours reports no change.
author:
  - directpv.csi maintainers (@directpv-csi)
extends_documentation_fragment:
  - directpv.csi.device_policy
attributes:
  check_mode:
    support: full
    description: Returns the plan and runs nothing.
  diff_mode:
    support: full
    description: Filesystem, label and drive ID before and after.
options:
  device:
    description:
      - The device - kernel name (C(nvme0n1)), C(/dev/...) path or C(/dev/disk/by-id/...) link.
    type: str
    required: true
  state:
    description:
      - V(present) - a DirectPV drive (format, or adopt one already ours). V(absent) - released.
    type: str
    choices: [present, absent]
    default: present
  force:
    description:
      - Format over an existing filesystem or partition table. Never overrides a mounted, held,
        swap, root, read-only or stale device.
    type: bool
    default: false
  safe_mode:
    description:
      - Refuse implicitly destructive operations.
      - With O(state=present) and O(force=true), a format over existing data needs O(expected_token),
        so that force applies only to the device state that was reviewed.
      - With O(state=absent) and O(wipe=true), refuse when the drive holds anything but our metadata.
    type: bool
    default: true
  expected_token:
    description:
      - The device's state token as discovered (C(id) from M(directpv.csi.drive_info), C(token) from
        M(directpv.csi.drive_select)). The format is refused when the device changed since.
    type: str
  drive_id:
    description:
      - The drive ID (filesystem UUID) to give a new drive. Default - a random UUID.
    type: str
  label:
    description:
      - Filesystem label marking our drives (at most 12 characters). C(DIRECTPV) is refused - MinIO DirectPV
        uses it.
    type: str
    default: DIRECTPV-CSI
  reflink:
    description:
      - Make the filesystem with reflink on or off. Default - on when C(mkfs.xfs) supports it.
    type: bool
  wipe:
    description:
      - With O(state=absent), erase our XFS signature after unmounting, so the device is free again.
    type: bool
    default: false
  store_volumes:
    description:
      - With O(state=absent) and O(wipe=true) - the names of the volumes the store (the cluster's
        C(DirectPVVolume) objects, or the embedded store) holds on this drive, as the
        P(directpv.csi.drives#role) role reads them. The wipe is refused while it is not empty - a reserved
        volume that was never staged has no directory yet.
      - With O(safe_mode=true), O(wipe=true) needs it or O(store_state_dir) (an empty list when the store holds none).
    type: list
    elements: str
  store_state_dir:
    description:
      - With O(state=absent) and O(wipe=true) - the state directory of a standalone node on this host. Its
        embedded store (C(store.sqlite), opened read-only) is asked which volumes and pending deletions it holds
        on the drive; the wipe is refused while there are any.
    type: path
"""

EXAMPLES = r"""
- name: Make nvme0n2 a DirectPV drive
  directpv.csi.drive:
    device: nvme0n2

- name: Format a reviewed device over its old filesystem
  directpv.csi.drive:
    device: /dev/disk/by-id/nvme-VMware_Virtual_NVMe_Disk_VMWare_NVME_0000
    force: true
    expected_token: "259:3$vKn1G3ntpurBUVN_Vg57Blr3Xu0iIjzEsmR60LncxaA"

- name: Release a drive and free the device
  directpv.csi.drive:
    device: nvme0n2
    state: absent
    wipe: true
"""

RETURN = r"""
plan:
  description: What the module runs (or would run in check mode).
  returned: always
  type: dict
  contains:
    commands:
      description: The commands, each a list of arguments. Unmounts are shown as C(umount MOUNTPOINT) (done by syscall).
      type: list
      elements: list
    action:
      description: C(format), C(adopt), C(release) or C(none).
      type: str
    metadata:
      description: The metadata written to C(.directpv/meta.json) (format only).
      type: dict
    destroys:
      description:
        - What the format erases, counted read-only - C(filesystem), C(label), C(fs_uuid), C(files),
          C(directories), C(data_bytes), C(used_bytes), C(summary). Empty when the device holds no filesystem.
      type: dict
drive:
  description: The drive after the run (O(state=present)).
  returned: when state is present
  type: dict
  contains:
    drive_id:
      description: Drive ID (the filesystem UUID).
      type: str
    device:
      description: Device path.
      type: str
    capacity:
      description: Usable bytes, from the XFS superblock (absent in check mode).
      type: int
    adopted:
      description: The drive already was ours.
      type: bool
device:
  description: Device path.
  returned: always
  type: str
"""

import contextlib
import os
import time
from typing import Any, Dict, List, Optional, Tuple

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.directpv.csi.plugins.module_utils._common import (
    DEVICE_POLICY_ARGS,
    node_name,
    run,
)
from ansible_collections.directpv.csi.plugins.module_utils._directpv.core.errors import (
    CommandFailed,
    FailedPrecondition,
    Unsupported,
)
from ansible_collections.directpv.csi.plugins.module_utils._directpv.core.identity import KIND_DIRECTPV, OUR_LABEL
from ansible_collections.directpv.csi.plugins.module_utils._directpv.core.judge import is_ours
from ansible_collections.directpv.csi.plugins.module_utils._directpv.core.models import Device
from ansible_collections.directpv.csi.plugins.module_utils._directpv.core.units import format_size, parse_size
from ansible_collections.directpv.csi.plugins.module_utils._directpv.device import mount as _mount
from ansible_collections.directpv.csi.plugins.module_utils._directpv.device import ondisk
from ansible_collections.directpv.csi.plugins.module_utils._directpv.device.format import (
    META_DIR,
    execute_format,
    find_our_drives,
    plan_format,
)
from ansible_collections.directpv.csi.plugins.module_utils._directpv.device.probe import probe_one

WIPE = ["wipefs", "--all", "--types", "xfs"]
# Hidden entries the driver keeps at a drive's root (node/volumes.py): never volumes, never user data.
OUR_ENTRIES = (META_DIR, ".deleted")


def argspec() -> Dict[str, Any]:
    spec = dict(DEVICE_POLICY_ARGS)
    spec.update(
        device={"type": "str", "required": True},
        state={"type": "str", "choices": ["present", "absent"], "default": "present"},
        force={"type": "bool", "default": False},
        safe_mode={"type": "bool", "default": True},
        expected_token={"type": "str", "no_log": False},
        drive_id={"type": "str"},
        label={"type": "str", "default": OUR_LABEL},
        reflink={"type": "bool"},
        wipe={"type": "bool", "default": False},
        store_volumes={"type": "list", "elements": "str"},
        store_state_dir={"type": "path"},
    )
    return spec


def snapshot(dev: Device, label: str) -> Dict[str, Any]:
    """What the diff shows of a device."""
    return {
        "device": dev.dev_path,
        "filesystem": dev.fs_type,
        "label": dev.fs_label,
        "fs_uuid": dev.fs_uuid,
        "directpv_drive": is_ours(dev, label),
        "mountpoints": list(dev.mountpoints),
    }


XFSPROGS = (
    "install xfsprogs on this host - Debian/Ubuntu: apt-get install xfsprogs; "
    "RHEL/Rocky/Alma/Fedora: dnf install xfsprogs"
)


def present(module: Any) -> Dict[str, Any]:
    p = module.params
    plan = plan_format(
        p["device"],
        force=p["force"],
        allow_loop=p["allow_loop"],
        expected_token=p["expected_token"] or None,
        drive_id=p["drive_id"],
        label=p["label"],
        owner=node_name(p),
        reflink=p["reflink"],
        min_size=parse_size(p["min_size"]),
        node=node_name(p),
        safe_mode=p["safe_mode"],  # the format safety policy decides (core/judge.py format_permission)
    )
    dev = plan.device
    before = snapshot(dev, p["label"])
    result: Dict[str, Any] = {"device": dev.dev_path, "plan": dict(plan.to_dict(), action="adopt")}
    if plan.adopt:
        drive: Dict[str, Any] = {"drive_id": plan.drive_id, "device": dev.dev_path, "adopted": True}
        changed = False
        if not module.check_mode:
            started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 1))
            formatted = execute_format(plan)
            drive.update(capacity=formatted.capacity, metadata=formatted.metadata)
            # An adoption writes metadata only when it was missing (an interrupted format): a change.
            changed = str(formatted.metadata.get("adopted_at", "")) >= started
        result.update(changed=changed, drive=drive)
        if module._diff:
            result["diff"] = {"before": before, "after": before}
        return result
    result["plan"]["action"] = "format"
    if not module.get_bin_path("mkfs.xfs"):
        raise Unsupported("mkfs.xfs is not installed on this host (searched PATH and the sbin directories)", XFSPROGS)
    after = dict(before, filesystem="xfs", label=plan.label, fs_uuid=plan.drive_id, directpv_drive=True)
    drive = {"drive_id": plan.drive_id, "device": dev.dev_path, "adopted": False}
    if not module.check_mode:
        formatted = execute_format(plan)
        drive.update(capacity=formatted.capacity, metadata=formatted.metadata)
    result.update(changed=True, drive=drive)
    if module._diff:
        result["diff"] = {"before": before, "after": after}
    return result


def drive_content(dev: Device) -> Tuple[List[str], List[str], List[str]]:
    """(volume directories, per-volume metadata files, other entries) at the root of a drive of
    ours, read through its mount or a private read-only mount (the log replayed: it is ours, and
    an entry only the log holds must count)."""
    with ondisk.readonly_root(dev, replay_log=True) as root:
        entries = sorted(os.listdir(root))
        volumes = [e for e in entries if not e.startswith(".") and os.path.isdir(os.path.join(root, e))]
        other = [e for e in entries if e not in OUR_ENTRIES and e not in volumes]
        try:
            vmeta = sorted(os.listdir(os.path.join(root, META_DIR, ondisk.VOLUME_META_DIR)))
        except FileNotFoundError:
            vmeta = []
    return volumes, vmeta, other


STORE_FILE = "store.sqlite"  # the embedded store of a standalone node (driver: store/embedded.py)


def embedded_store_volumes(state_dir: str, drive_id: str) -> List[str]:
    """Volumes and pending deletions (tombstones) the embedded store holds on ``drive_id``, read-only.

    Reads the tables ``volumes`` and ``tombstones`` of the driver's schema (store/embedded.py)."""
    import sqlite3

    path = os.path.join(state_dir, STORE_FILE)
    if not os.path.isfile(path):
        raise FailedPrecondition(
            f"no embedded store at {path}",
            "set store_state_dir (role: directpv_state_dir) to the node's state dir, or use the cluster's store",
        )
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
        try:
            names = [r[0] for r in con.execute("SELECT name FROM volumes WHERE drive_id = ?", (drive_id,))]
            with contextlib.suppress(sqlite3.OperationalError):  # a store from before tombstones
                names += [
                    f"{r[0]} (pending deletion)"
                    for r in con.execute("SELECT name FROM tombstones WHERE drive_id = ?", (drive_id,))
                ]
        finally:
            con.close()
    except sqlite3.Error as exc:
        raise FailedPrecondition(f"cannot read the embedded store {path}: {exc}", "check the state dir") from None
    return sorted(names)


def ours(dev: Device, label: str) -> Optional[Device]:
    found = find_our_drives([dev], label=label)
    return found[0] if found else None


def absent(module: Any) -> Dict[str, Any]:
    p = module.params
    dev = probe_one(p["device"])
    before = snapshot(dev, p["label"])
    result: Dict[str, Any] = {"device": dev.dev_path}
    drive = ours(dev, p["label"])
    if drive is None:
        if dev.drive_kind == KIND_DIRECTPV:
            c = dev.contents
            usage = f"{c.volume_dirs} volume director(ies), {format_size(c.used_bytes)} in use" if c else "?"
            what = f"{dev.dev_path} is a MinIO DirectPV drive ({usage}), not one of ours"
            if p["wipe"]:
                raise FailedPrecondition(
                    f"refusing to wipe {what}",
                    "it is released through DirectPV (or taken over by the migration path), never wiped here",
                )
            result.update(changed=False, plan={"action": "none", "commands": []}, msg=f"{what}: nothing to release")
            return result
        result.update(
            changed=False,
            plan={"action": "none", "commands": []},
            msg=f"{dev.dev_path} is not a DirectPV drive; nothing to release",
        )
        return result
    held = list(p["store_volumes"] or [])
    if p["wipe"] and p["store_state_dir"]:
        held += embedded_store_volumes(p["store_state_dir"], drive.fs_uuid)
    if p["wipe"] and held:
        names = sorted(held)
        raise FailedPrecondition(
            f"refusing to wipe drive {drive.fs_uuid} ({dev.dev_path}): the store holds {len(names)} volume(s) on it: "
            + ", ".join(names[:10]),
            "delete those volumes (their PVCs) first; a reserved volume has no directory until it is first used",
        )
    if p["wipe"] and p["store_volumes"] is None and not p["store_state_dir"] and p["safe_mode"]:
        raise FailedPrecondition(
            f"safe_mode: refusing to wipe drive {drive.fs_uuid} ({dev.dev_path}) without the store's answer",
            "pass store_volumes (the volumes the store holds on the drive; the directpv.csi.drives role reads "
            "them), or set safe_mode: false",
        )
    volumes, vmeta, other = drive_content(drive)
    if volumes:
        raise FailedPrecondition(
            f"drive {drive.fs_uuid} ({dev.dev_path}) still holds {len(volumes)} volume(s): {', '.join(volumes[:10])}",
            "delete those volumes (their PVCs) first; the drive is released only when empty",
        )
    if p["wipe"] and vmeta:
        raise FailedPrecondition(
            f"refusing to wipe drive {drive.fs_uuid} ({dev.dev_path}): it carries metadata of {len(vmeta)} volume(s) "
            f"in {META_DIR}/{ondisk.VOLUME_META_DIR}: {', '.join(vmeta[:10])}",
            "those volumes can be restored from it; delete them through the cluster first",
        )
    if p["wipe"] and other and p["safe_mode"]:
        raise FailedPrecondition(
            "safe_mode: drive {} ({}) holds files other than DirectPV metadata: {}".format(
                drive.fs_uuid, dev.dev_path, ", ".join(other[:10])
            ),
            "move them off the drive first: they are no volumes and nothing else keeps them",
        )
    commands = [["umount", mp] for mp in sorted(dev.mountpoints, key=len, reverse=True)]
    if p["wipe"]:
        commands.append([*WIPE, dev.dev_path])
    result["plan"] = {"action": "release" if commands else "none", "commands": commands}
    result["changed"] = bool(commands)
    if module._diff:
        after = dict(before, mountpoints=[])
        if p["wipe"]:
            after.update(filesystem="", label="", fs_uuid="", directpv_drive=False)
        result["diff"] = {"before": before, "after": after}
    if module.check_mode or not commands:
        return result
    for cmd in commands:
        if cmd[0] == "umount":
            _mount.unmount(cmd[1])
            continue
        # Wipe only what is still our XFS (checked again right before).
        if ours(probe_one(dev.dev_path), p["label"]) is None:
            raise FailedPrecondition(
                f"{dev.dev_path} changed while it was being released: no longer our XFS", "inspect it"
            )
        exe = module.get_bin_path(cmd[0])
        if not exe:
            raise Unsupported(f"{cmd[0]} is not installed on this host", "install util-linux")
        rc, out, err = module.run_command([exe, *cmd[1:]], environ_update={"LC_ALL": "C"})
        if rc != 0:
            raise CommandFailed(
                f"{' '.join(cmd)} failed (exit {rc}): {(err or out).strip()}",
                "check that nothing opened the device",
                tuple(cmd),
                rc,
                err,
            )
    return result


def main() -> None:
    module = AnsibleModule(argument_spec=argspec(), supports_check_mode=True)
    if os.geteuid() != 0:
        module.fail_json(
            msg=f"directpv.csi.drive reads and changes block devices and needs root (running as uid {os.geteuid()})",
            hint="run the task with become: true (the playbooks: -e directpv_become=true, or --become)",
            error="NotRoot",
        )
        return
    if module.params["state"] == "present":
        run(module, lambda: present(module))
    else:
        run(module, lambda: absent(module))


if __name__ == "__main__":
    main()
