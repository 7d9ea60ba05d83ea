# Copyright: directpv.csi maintainers
# Apache License 2.0 (see LICENSE)
"""Action directpv.csi.show_devices: one readable table of the devices drive_info found on every host."""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from ansible import constants as C
from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase
from ansible.utils.display import Display
from ansible_collections.directpv.csi.plugins.module_utils._directpv.core.selection import format_table, table_cells

display = Display()

# Stdout callbacks that print plain text: the table is written as is under the task's banner.
_TEXT_CALLBACKS = ("default", "ansible.builtin.default", "minimal", "ansible.builtin.minimal")
_NEEDED = ("id", "node", "name", "size_human", "filesystem", "make", "available", "ours", "available_with_force")


def summary_line(rows: List[Dict[str, Any]], hidden: int, hosts: int) -> str:
    """Counts over the rows shown (and how many were left out), one line."""
    ours = sum(1 for r in rows if r["ours"])
    available = sum(1 for r in rows if r["available"])
    forceable = sum(1 for r in rows if not r["available"] and not r["ours"] and r["available_with_force"])
    unusable = len(rows) - ours - available - forceable
    line = (
        f"{hosts} host(s), {len(rows)} device(s) shown: {available} available, {forceable} only with force, "
        f"{ours} DirectPV drive(s), {unusable} not usable"
    )
    if hidden:
        line += f"; {hidden} more not shown (loop devices, or unusable ones without include_unavailable)"
    return line


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(("devices", "hidden", "hosts"))

    def run(self, tmp: Optional[str] = None, task_vars: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        result: Dict[str, Any] = super().run(tmp, task_vars)
        args = self._task.args
        devices = args.get("devices") or []
        if not isinstance(devices, list) or not all(isinstance(d, dict) for d in devices):
            raise AnsibleActionFail("devices must be the list of devices drive_info returned")
        for d in devices:
            missing = [k for k in _NEEDED if k not in d]
            if missing:
                raise AnsibleActionFail(f"devices: an entry lacks {', '.join(missing)} (pass drive_info's devices)")
        try:
            hidden = int(args.get("hidden") or 0)
            hosts = int(args.get("hosts") or len({d["node"] for d in devices}))
        except (TypeError, ValueError) as exc:
            raise AnsibleActionFail(f"hidden and hosts must be integers: {exc}") from None
        table = format_table([table_cells(d) for d in devices])
        line = summary_line(devices, hidden, hosts)
        if C.config.get_config_value("DEFAULT_STDOUT_CALLBACK") in _TEXT_CALLBACKS:
            display.display(table + "\n" + line)
        result.update(changed=False, table=table, lines=table.splitlines(), msg=line)
        return result
