#!/usr/bin/python
# Copyright: directpv.csi maintainers
# Apache License 2.0 (see LICENSE)
"""directpv.csi.drive_info: every block device of a host, with availability and reasons."""

# ruff: noqa: E402  (Ansible layout: DOCUMENTATION, EXAMPLES and RETURN come before the imports)
from __future__ import annotations

DOCUMENTATION = r"""
---
module: drive_info
short_description: List a host's block devices with their availability as DirectPV drives
version_added: 0.1.0
description:
  - Probes every block device of the managed host from sysfs, C(/proc) and the devices' own
    signatures (no udevd needed) and judges each one - available, available only with force
    (it holds a filesystem or a partition table), already a DirectPV drive, or unusable.
  - Every unavailable device carries all of its reasons (mounted, held, root disk, too small, ...).
  - Returns the devices, a DirectPV-style table (C(ID NODE DRIVE SIZE FILESYSTEM MAKE AVAILABLE DESCRIPTION))
    and this node's entry of a DirectPV C(drives.yaml).
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
  include_loop:
    description:
      - List loop devices. They are listed anyway when O(allow_loop=true).
    type: bool
    default: false
  include_unavailable:
    description:
      - List devices that cannot be used (with their reasons), not only available ones.
      - Devices already formatted by us are always listed.
    type: bool
    default: false
notes:
  - Runs without root. A device it cannot read (no permission) is reported as unreadable - never available -
    with a warning; run it with C(become) to see what such devices hold.
"""

EXAMPLES = r"""
- name: Discover the drives of every host
  directpv.csi.drive_info:
    include_unavailable: true
  register: directpv_discovery

- name: Show the table
  ansible.builtin.debug:
    msg: "{{ directpv_discovery.table.splitlines() }}"
"""

RETURN = r"""
devices:
  description: The listed devices, in kernel order.
  returned: always
  type: list
  elements: dict
  contains:
    id:
      description: State token C(<maj:min>$<hash>); changes when anything that matters about the device changes.
      type: str
    name:
      description: Kernel name.
      type: str
      sample: nvme0n2
    path:
      description: Device path.
      type: str
    size:
      description: Size in bytes.
      type: int
    size_human:
      description: Size for people.
      type: str
    filesystem:
      description: Filesystem type found on the device (empty when none).
      type: str
    make:
      description: Vendor and model.
      type: str
    available:
      description: Usable without force.
      type: bool
    available_with_force:
      description: Usable with force (only forceable reasons such as an existing filesystem).
      type: bool
    ours:
      description: Already a DirectPV drive.
      type: bool
    drive_id:
      description: The drive ID (filesystem UUID) when RV(devices[].ours) is true; otherwise empty.
      type: str
    description:
      description: All reasons, joined.
      type: str
    reasons:
      description: Every reason, with a stable C(code), a C(text) and whether it is C(forceable).
      type: list
      elements: dict
    hardware_id:
      description: WWN, else serial, else a by-id link name.
      type: str
  sample:
    - id: "259:3$vKn1G3ntpurBUVN_Vg57Blr3Xu0iIjzEsmR60LncxaA"
      name: nvme0n2
      size: 21474836480
      available: true
table:
  description: DirectPV-style table of the listed devices.
  returned: always
  type: str
drives_yaml:
  description: This node's entry of a DirectPV C(drives.yaml) (available devices, C(select "yes")).
  returned: always
  type: dict
summary:
  description: Counts of the devices listed (what the table shows), and how many were probed but not listed.
  returned: always
  type: dict
  contains:
    total:
      description: Devices probed.
      type: int
    listed:
      description: Devices listed.
      type: int
    hidden:
      description: Devices probed but not listed (loop devices, or unavailable ones without O(include_unavailable)).
      type: int
    available:
      description: Available devices among those listed.
      type: int
    ours:
      description: DirectPV drives among those listed.
      type: int
    unreadable:
      description: Devices that could not be read (not available; run with become to read them), listed or not.
      type: int
node:
  description: The node name used.
  returned: always
  type: str
tools:
  description:
    - Paths of the tools the other modules run on this host (C(mkfs.xfs), C(wipefs)), found like
      C(get_bin_path) - PATH and the sbin directories; empty when missing (install xfsprogs / util-linux).
  returned: always
  type: dict
"""

from typing import Any, Callable, Dict

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.directpv.csi.plugins.module_utils._common import (
    DEVICE_POLICY_ARGS,
    device_facts,
    judged,
    node_name,
    run,
)
from ansible_collections.directpv.csi.plugins.module_utils._directpv.core.identity import hardware_id, state_token
from ansible_collections.directpv.csi.plugins.module_utils._directpv.core.selection import (
    device_row,
    drives_yaml_node,
    format_table,
    table_cells,
)
from ansible_collections.directpv.csi.plugins.module_utils._directpv.device.probe import probe


def argspec() -> Dict[str, Any]:
    spec = dict(DEVICE_POLICY_ARGS)
    spec.update(
        include_loop={"type": "bool", "default": False},
        include_unavailable={"type": "bool", "default": False},
    )
    return spec


TOOLS = ("mkfs.xfs", "wipefs")


def discover(
    params: Dict[str, Any],
    warn: Callable[[str], None] = lambda _msg: None,
    bin_path: Callable[[str], Any] = lambda _name: None,
) -> Dict[str, Any]:
    node = node_name(params)
    devices, verdicts = judged(probe(), params)
    include_loop = params["include_loop"] or params["allow_loop"]
    rows = []
    summary = {"total": len(devices), "listed": 0, "available": 0, "ours": 0, "unreadable": 0}
    unreadable = [d.name for d in devices if d.read_error]
    summary["unreadable"] = len(unreadable)
    if unreadable:
        warn(
            "{} device(s) could not be read and are reported as unreadable, not available: {} "
            "(run with become: true to read them)".format(len(unreadable), ", ".join(unreadable[:20]))
        )
    for dev in devices:
        verdict = verdicts[dev.name]
        row = device_row(dev, verdict, node, state_token(dev))
        if dev.name.startswith("loop") and not include_loop:
            continue
        if not (row["available"] or row["ours"] or params["include_unavailable"]):
            continue
        row["drive_id"] = dev.fs_uuid if row["ours"] else ""
        row["hardware_id"] = hardware_id(dev)
        row.update(device_facts(dev))
        rows.append(row)
        summary["available"] += int(row["available"])
        summary["ours"] += int(row["ours"])
    summary["listed"] = len(rows)
    summary["hidden"] = len(devices) - len(rows)
    return {
        "changed": False,
        "node": node,
        "devices": rows,
        "table": format_table([table_cells(r) for r in rows]),
        "drives_yaml": drives_yaml_node(node, rows),
        "summary": summary,
        "tools": {t: bin_path(t) or "" for t in TOOLS},
    }


def main() -> None:
    module = AnsibleModule(argument_spec=argspec(), supports_check_mode=True)
    run(module, lambda: discover(module.params, module.warn, module.get_bin_path))


if __name__ == "__main__":
    main()
