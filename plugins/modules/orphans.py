#!/usr/bin/python
# Copyright: directpv.csi maintainers
# Apache License 2.0 (see LICENSE)
"""directpv.csi.orphans: list orphan volume directories of a node, or have chosen ones removed."""

# ruff: noqa: E402  (Ansible layout: DOCUMENTATION, EXAMPLES and RETURN come before the imports)
from __future__ import annotations

DOCUMENTATION = r"""
---
module: orphans
short_description: List orphan volume directories on a node's DirectPV drives, or remove chosen ones
version_added: 0.1.0
description:
  - An orphan is a volume directory on a drive the store knows that has neither a volume record nor
    a tombstone (the store's mark that a deleted volume's data may go). The node keeps orphans and
    never removes them by itself.
  - With O(state=present) (the default) the module only lists them (files and bytes counted read-only).
  - With O(state=absent) it records a tombstone in the store for each chosen orphan (O(names), or
    every orphan with O(all=true)); the node holding the drive then moves it to the drive's trash
    at its next sync, as it does for a volume deleted through DeleteVolume.
  - In check mode it returns the orphans that would be removed and records nothing.
  - Runs C(directpv-csi client orphans) on the managed host (the one home of the orphan logic), so the
    driver's command must be installed there, or reachable through O(command).
author:
  - directpv.csi maintainers (@directpv-csi)
attributes:
  check_mode:
    support: full
    description: Lists what would be removed; records nothing.
  diff_mode:
    support: none
    description: The returned list is the plan.
options:
  state:
    description:
      - V(present) lists the orphans; V(absent) has the chosen ones removed.
    type: str
    choices: [present, absent]
    default: present
  names:
    description:
      - Orphans to remove (volume names). A name that is a live volume fails the task and records
        nothing; a name no longer on the drives is no change.
    type: list
    elements: str
    default: []
  all:
    description:
      - With O(state=absent), remove every orphan found (review the list in check mode first).
    type: bool
    default: false
  drive:
    description:
      - Only orphans on this drive id.
    type: str
  state_dir:
    description:
      - The node's state directory (its drives are mounted under C(mnt/)).
    type: path
    default: /var/lib/directpv-csi
  kubeconfig:
    description:
      - Kubeconfig of the cluster whose store the node uses; without it, the standalone store
        C(STATE_DIR/store.sqlite).
    type: path
  command:
    description:
      - The driver's command line prefix (for example C([directpv-csi]), or a C(kubectl exec) into the node pod).
    type: list
    elements: str
    default: [directpv-csi]
notes:
  - Needs root on the node (the drives' mounts).
"""

EXAMPLES = r"""
- name: Preview which orphans would go
  directpv.csi.orphans:
    state: absent
    names: [pvc-0b6c1d5e-0000-4000-8000-000000000001]
  check_mode: true
  register: directpv_orphans_plan

- name: Remove them
  directpv.csi.orphans:
    state: absent
    names: [pvc-0b6c1d5e-0000-4000-8000-000000000001]
"""

RETURN = r"""
orphans:
  description: The orphans listed, or removed (would be removed in check mode).
  returned: always
  type: list
  elements: dict
  contains:
    drive_id: {description: Drive id, type: str}
    node: {description: Node of the drive, type: str}
    name: {description: Volume directory name, type: str}
    path: {description: Path on the node, type: str}
    files: {description: Regular files under it, type: int}
    bytes_used: {description: Bytes allocated under it, type: int}
    has_metadata: {description: Whether its on-drive volume metadata file exists, type: bool}
command:
  description: The command run.
  returned: always
  type: list
  elements: str
"""

import json
from typing import Any, Dict, List

from ansible.module_utils.basic import AnsibleModule


def argspec() -> Dict[str, Any]:
    return {
        "state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
        "names": {"type": "list", "elements": "str", "default": []},
        "all": {"type": "bool", "default": False},
        "drive": {"type": "str"},
        "state_dir": {"type": "path", "default": "/var/lib/directpv-csi"},
        "kubeconfig": {"type": "path"},
        "command": {"type": "list", "elements": "str", "default": ["directpv-csi"]},
    }


def build_command(params: Dict[str, Any], check_mode: bool) -> List[str]:
    cmd = [*params["command"], "client", "orphans", "--json", "--state-dir", params["state_dir"]]
    if params.get("kubeconfig"):
        cmd += ["--kubeconfig", params["kubeconfig"]]
    if params.get("drive"):
        cmd += ["--drive", params["drive"]]
    if params["state"] == "absent":
        for name in params["names"]:
            cmd += ["--clean", name]
        if params["all"]:
            cmd.append("--clean-all")
        if check_mode:
            cmd.append("--check")
    return cmd


def main() -> None:
    module = AnsibleModule(argument_spec=argspec(), supports_check_mode=True)
    params = module.params
    if params["state"] == "absent" and not params["names"] and not params["all"]:
        module.fail_json(msg="state=absent needs names (the orphans to remove) or all=true; "
                             "run with state=present to list them first")
    cmd = build_command(params, module.check_mode)
    rc, out, err = module.run_command(cmd)
    if rc != 0:
        module.fail_json(msg=(err or out).strip() or f"{cmd[0]} exited with {rc}", rc=rc, command=cmd)
    try:
        result = json.loads(out)
    except ValueError:
        module.fail_json(msg=f"unexpected output of {' '.join(cmd)}: {out[:500]}", command=cmd)
    would_remove = module.check_mode and params["state"] == "absent" and bool(result.get("orphans"))
    module.exit_json(changed=bool(result.get("changed")) or would_remove,
                     orphans=result.get("orphans", []), command=cmd)


if __name__ == "__main__":
    main()
