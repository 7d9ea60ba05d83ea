#!/usr/bin/python
# Copyright: directpv.csi maintainers
# Apache License 2.0 (see LICENSE)
"""directpv.csi.drive_select: which devices of a host the inventory selects, and why the rest are not."""

# ruff: noqa: E402  (Ansible layout: DOCUMENTATION, EXAMPLES and RETURN come before the imports)
from __future__ import annotations

DOCUMENTATION = r"""
---
module: drive_select
short_description: Select a host's drives from inventory variables, filters or a DirectPV drives.yaml
version_added: 0.1.0
description:
  - Probes the host's block devices and selects the ones the inventory asks for, from three sources
    (all optional, combined) - explicit references in O(drives) (kernel names, C(/dev/...) and
    C(/dev/disk/by-id/...) paths, serials, WWNs), the entries of this node in a DirectPV C(drives.yaml)
    (O(drives_yaml), C(version v1), C(select "yes")), and O(filters) when O(auto_select=true).
  - Returns every selected device with the action to take (C(format) or C(adopt) for a device already ours)
    and every other device with all the reasons it was not selected.
  - A device the user named that cannot be used is an error naming the device, the node and the reason,
    never a silent skip. So are an unknown device, a path that is not a block device, a device listed twice,
    the root disk, and filters that match nothing.
  - Read-only; runs the same in check mode.
author:
  - directpv.csi maintainers (@directpv-csi)
extends_documentation_fragment:
  - directpv.csi.device_policy
attributes:
  check_mode:
    support: full
    description: Read-only; check mode changes nothing either way.
  diff_mode:
    support: none
    description: Read-only.
options:
  drives:
    description:
      - Explicit selection. Each entry is a reference string (C(nvme0n1), C(/dev/nvme0n1),
        C(/dev/disk/by-id/nvme-...), a serial or a WWN) or a mapping with the keys C(device) (a reference) and C(force).
      - C(force) on an entry allows formatting that device over an existing filesystem or partition table.
    type: list
    elements: raw
    default: []
  drives_yaml:
    description:
      - A parsed DirectPV C(drives.yaml) document (C(version v1)); the C(select "yes") entries of
        O(node) are selected. Size and C(maj:min) are checked against the device; with O(strict_ids=true)
        the whole ID (state token) must match.
    type: dict
  filters:
    description:
      - Criteria for auto-selection, used only with O(auto_select=true).
      - Keys C(min_size), C(max_size) (sizes with units), C(vendor), C(model) (globs, case-insensitive),
        C(rotational) (bool), C(transport) (list, e.g. C([nvme, sata])), C(include) and C(exclude)
        (kernel name globs, e.g. C([nvme*]), C([loop*, dm-*])).
    type: dict
    default: {}
  auto_select:
    description:
      - Select every available device matching O(filters). Off by default - nothing is selected
        that is not named.
    type: bool
    default: false
  force:
    description:
      - Allow formatting over an existing filesystem or partition table for every named device.
      - With O(safe_mode=true) it never applies to devices only a filter picked.
    type: bool
    default: false
  safe_mode:
    description:
      - Refuse implicitly destructive selections - a filter-picked device holding a filesystem is
        rejected even with O(force).
      - Whatever this option, a filter never picks a device whose filesystem holds files (counted read-only)
        or could not be read - only a device named in O(drives) with C(force) is formatted over its contents.
    type: bool
    default: true
  strict_ids:
    description:
      - Require the C(drives.yaml) ID of each entry to equal the device's current state token.
    type: bool
    default: false
"""

EXAMPLES = r"""
- name: Select by name (one NVMe drive per worker, from host_vars)
  directpv.csi.drive_select:
    drives: "{{ directpv_drives }}"
  register: directpv_selection

- name: Select every empty NVMe drive of at least 1 TB
  directpv.csi.drive_select:
    auto_select: true
    filters:
      min_size: 1T
      transport: [nvme]
      exclude: ["nvme0n1"]

- name: Select what a DirectPV drives.yaml selects for this node
  directpv.csi.drive_select:
    drives_yaml: "{{ lookup('ansible.builtin.file', 'drives.yaml') | ansible.builtin.from_yaml }}"
    node: "{{ inventory_hostname }}"
"""

RETURN = r"""
selected:
  description: The selected devices, in kernel order.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: Kernel name.
      type: str
    path:
      description: Device path.
      type: str
    size:
      description: Size in bytes.
      type: int
    action:
      description: C(format), or C(adopt) for a device that already is a DirectPV drive.
      type: str
    source:
      description: Which source selected it (C(directpv_drives), C(drives.yaml), C(directpv_drive_filters)).
      type: str
    ref:
      description: The reference that named it.
      type: str
    force:
      description: Format over an existing filesystem or partition table.
      type: bool
    token:
      description:
        - The device's state token now.
        - Pass it to M(directpv.csi.drive) as O(directpv.csi.drive#module:expected_token).
      type: str
rejected:
  description: Every device not selected, with its reason codes and texts.
  returned: always
  type: list
  elements: dict
problems:
  description: Why the selection cannot be carried out (the module fails when this is not empty).
  returned: always
  type: list
  elements: str
node:
  description: The node name used.
  returned: always
  type: str
"""

import os
import stat
from typing import Any, Dict, List

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.directpv.csi.plugins.module_utils._common import (
    DEVICE_POLICY_ARGS,
    judged,
    node_name,
    run,
)
from ansible_collections.directpv.csi.plugins.module_utils._directpv.core.errors import InvalidArgument
from ansible_collections.directpv.csi.plugins.module_utils._directpv.core.identity import state_token
from ansible_collections.directpv.csi.plugins.module_utils._directpv.core.selection import (
    DriveRequest,
    parse_filters,
    parse_requests,
    requests_from_drives_yaml,
    select,
)
from ansible_collections.directpv.csi.plugins.module_utils._directpv.device import ondisk
from ansible_collections.directpv.csi.plugins.module_utils._directpv.device.probe import probe


def argspec() -> Dict[str, Any]:
    spec = dict(DEVICE_POLICY_ARGS)
    spec.update(
        drives={"type": "list", "elements": "raw", "default": []},
        drives_yaml={"type": "dict"},
        filters={"type": "dict", "default": {}},
        auto_select={"type": "bool", "default": False},
        force={"type": "bool", "default": False},
        safe_mode={"type": "bool", "default": True},
        strict_ids={"type": "bool", "default": False},
    )
    return spec


def resolve_paths(requests: List[DriveRequest]) -> Dict[str, str]:
    """Path references -> "maj:min" of the block device they lead to, or why they do not."""
    out: Dict[str, str] = {}
    for req in requests:
        ref = req.ref
        if not ref.startswith("/") or ref in out:
            continue
        try:
            st = os.stat(ref)
        except FileNotFoundError:
            out[ref] = f"{ref} does not exist"
            continue
        except OSError as exc:
            out[ref] = f"cannot examine {ref}: {exc.strerror}"
            continue
        if stat.S_ISREG(st.st_mode):
            out[ref] = f"{ref} is a regular file, not a block device"
            continue
        if not stat.S_ISBLK(st.st_mode):
            out[ref] = f"{ref} is not a block device"
            continue
        out[ref] = f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
    return out


def choose(params: Dict[str, Any]) -> Dict[str, Any]:
    node = node_name(params)
    try:
        requests = parse_requests(params["drives"])
        if params.get("drives_yaml"):
            requests += requests_from_drives_yaml(params["drives_yaml"], node)
        filters = parse_filters(params["filters"])
    except InvalidArgument as exc:
        raise InvalidArgument(f"node {node}: {exc.message}", exc.hint) from None
    devices, verdicts = judged(probe(), params)
    if params["auto_select"]:
        # A filter may pick a device holding a filesystem only when it holds no files: count them (read-only)
        # for the candidates that need it, never for mounted or unusable devices.
        counted = [
            ondisk.inspect(d) if d.fs_type and verdicts[d.name].available_with_force and not filters.mismatch(d) else d
            for d in devices
        ]
        if counted != devices:
            devices, verdicts = judged(counted, params)
    selection = select(
        devices,
        verdicts,
        requests=requests,
        filters=filters,
        auto_select=params["auto_select"],
        force=params["force"],
        safe_mode=params["safe_mode"],
        strict_ids=params["strict_ids"],
        resolved=resolve_paths(requests),
        node=node,
    )
    tokens = {d.name: state_token(d) for d in devices}
    result: Dict[str, Any] = selection.as_dict()
    for item in result["selected"]:
        item["token"] = tokens[item["name"]]
    result.update(changed=False, node=node)
    if selection.problems:
        result["failed"] = True
        result["msg"] = "node {}: drive selection failed: {}".format(
            node,
            " | ".join(str(p) for p in selection.problems),
        )
    return result


def main() -> None:
    module = AnsibleModule(argument_spec=argspec(), supports_check_mode=True)
    run(module, lambda: choose(module.params))


if __name__ == "__main__":
    main()
