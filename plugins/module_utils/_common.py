# Copyright: directpv.csi maintainers
# Apache License 2.0 (see LICENSE)
"""Shared pieces of the directpv.csi modules: argument specs and the one place where
domain errors (core/errors.py) become ``fail_json``.

Each argument dict here is documented by the doc fragment of the same name in
plugins/doc_fragments/ (kubernetes.core style), so modules and docs never drift.
"""

from __future__ import annotations

import socket
from typing import Any, Callable, Dict, List, Tuple

from ansible_collections.directpv.csi.plugins.module_utils._directpv.core.errors import DeviceRefused, DirectPVError
from ansible_collections.directpv.csi.plugins.module_utils._directpv.core.judge import (
    DEFAULT_MIN_SIZE,
    JudgePolicy,
    judge,
)
from ansible_collections.directpv.csi.plugins.module_utils._directpv.core.models import Device, Verdict
from ansible_collections.directpv.csi.plugins.module_utils._directpv.core.units import parse_size

# Documented by doc_fragments/device_policy.py
DEVICE_POLICY_ARGS: Dict[str, Any] = {
    "allow_loop": {"type": "bool", "default": False},
    "min_size": {"type": "str", "default": "512Mi"},
    "node": {"type": "str"},
}


def node_name(params: Dict[str, Any]) -> str:
    """The node name used in messages, tables and drives.yaml (default: the host name)."""
    return params.get("node") or socket.gethostname()


def policy_from(params: Dict[str, Any]) -> JudgePolicy:
    min_size = parse_size(params.get("min_size") or DEFAULT_MIN_SIZE)
    return JudgePolicy(min_size=min_size, allow_loop=bool(params.get("allow_loop")))


def judged(devices: List[Device], params: Dict[str, Any]) -> Tuple[List[Device], Dict[str, Verdict]]:
    return devices, judge(devices, policy_from(params))


def device_facts(dev: Device) -> Dict[str, Any]:
    """The probed facts of one device as plain data."""
    return {
        "vendor": dev.vendor,
        "model": dev.model,
        "serial": dev.serial,
        "wwn": dev.wwn,
        "transport": dev.transport,
        "rotational": dev.rotational,
        "removable": dev.removable,
        "read_only": dev.read_only,
        "is_partition": dev.is_partition,
        "parent": dev.parent,
        "partitions": list(dev.partitions),
        "holders": list(dev.holders),
        "mountpoints": list(dev.mountpoints),
        "fs_uuid": dev.fs_uuid,
        "fs_label": dev.fs_label,
        "partition_table": dev.partition_table,
        "by_id": list(dev.by_id),
        "loop_backing_file": dev.loop_backing_file,
    }


def error_result(exc: DirectPVError) -> Dict[str, Any]:
    """fail_json keyword arguments for a domain error: message + hint, error kind, reasons."""
    out: Dict[str, Any] = {"msg": str(exc), "error": type(exc).__name__, "hint": exc.hint}
    if isinstance(exc, DeviceRefused):
        out["reasons"] = list(exc.reasons)
    return out


def run(module: Any, work: Callable[[], Dict[str, Any]]) -> None:
    """Run ``work()`` and exit: its dict becomes exit_json; a domain error becomes fail_json.

    This is the only place modules turn domain errors into failures.
    """
    try:
        result = work()
    except DirectPVError as exc:
        module.fail_json(**error_result(exc))
        return
    if result.pop("failed", False):
        module.fail_json(**result)
        return
    module.exit_json(**result)
