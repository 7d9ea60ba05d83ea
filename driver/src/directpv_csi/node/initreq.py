"""What a node does with one device of a DirectPVInitRequest (kube/nodes.py hands it over).

The same format code as the Ansible ``directpv.csi.drive`` module (device/format.py: plan, then
execute), with the safety the request's schema promises:

- ``id`` is required: it is the device's state token from the node's DirectPVNode report (the
  discover table's id). A device that changed since the token was taken is refused (``stale``),
  so a request formats exactly the device state an operator reviewed, never another device that
  took the name.
- Mounted, held (LVM/md/dm), swap, root, read-only and too small devices are refused whatever
  ``force`` says; a filesystem or partition table is overwritten only with ``force``: the format
  safety policy of the drive module, in safe mode (core/judge.py format_permission via plan_format),
  and stricter about the token: every request carries one, not only a forced one.
- ``dryRun`` plans and runs nothing: the result is ``Planned`` with the exact command.
- A device that already is one of our drives (for example formatted by this very request before
  the node restarted and could record it) is reported ``Success`` with its drive id and left as it is.

Every outcome is a result row ``{node, name, status, driveID, message}``; errors carry their hint.
"""

from __future__ import annotations

import logging
import shlex
from typing import Dict

from ..core.errors import DeviceRefused, DirectPVError
from ..device.format import REASON_STALE, FormatPlan, execute_format, plan_format

log = logging.getLogger("directpv_csi.node.init")

SUCCESS = "Success"
ERROR = "Error"
PLANNED = "Planned"

Result = Dict[str, str]


def _result(node: str, name: str, status: str, message: str, drive_id: str = "") -> Result:
    return {"node": node, "name": name, "status": status, "driveID": drive_id, "message": message[:1024]}


def _already_ours(name: str, node: str, allow_loop: bool) -> str:
    """The drive id when ``name`` already carries our filesystem, else ""."""
    try:
        plan = plan_format(name, allow_loop=allow_loop, node=node)
    except DirectPVError:
        return ""
    return plan.drive_id if plan.adopt else ""


def init_device(node: str, name: str, token: str, *, force: bool, dry_run: bool, allow_loop: bool,
                owner: str) -> Result:
    """Format (or plan the format of) device ``name`` of this node for an init request."""
    if not token:
        return _result(node, name, ERROR,
                       f"device {name}: the request carries no id; copy the device's id from "
                       f"`kubectl get directpvnode {node} -o yaml` (status.devices[].id) so that only the "
                       "device state you reviewed can be formatted")
    try:
        plan: FormatPlan = plan_format(name, force=force, allow_loop=allow_loop, expected_token=token,
                                       owner=owner, node=node, safe_mode=True)
    except DeviceRefused as exc:
        if REASON_STALE in exc.reasons:
            drive_id = _already_ours(name, node, allow_loop)
            if drive_id:
                return _result(node, name, SUCCESS, f"device {name} already is DirectPV drive {drive_id}; "
                               "nothing was formatted", drive_id)
        return _result(node, name, ERROR, str(exc))
    except DirectPVError as exc:
        return _result(node, name, ERROR, str(exc))
    if plan.adopt:
        return _result(node, name, SUCCESS, f"device {name} already is DirectPV drive {plan.drive_id}; "
                       "nothing was formatted", plan.drive_id)
    command = " ; ".join(shlex.join(c) for c in plan.commands)
    if dry_run:
        return _result(node, name, PLANNED, f"dry run: would run {command}", plan.drive_id)
    try:
        done = execute_format(plan)
    except DirectPVError as exc:
        return _result(node, name, ERROR, str(exc))
    log.info("init request %s: formatted %s as drive %s (%s)", owner, name, done.drive_id, command)
    forced = f" (forced over: {', '.join(plan.forced_reasons)})" if plan.forced_reasons else ""
    return _result(node, name, SUCCESS, f"formatted {done.device.dev_path} as DirectPV drive {done.drive_id}{forced}",
                   done.drive_id)
