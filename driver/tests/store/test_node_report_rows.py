"""kube/nodes.device_reports: the DirectPVNode status rows, on hand-made devices (pure: the
function only combines core/judge.py's verdicts with core/selection.device_row)."""

from __future__ import annotations

from typing import Any

from directpv_csi.core.judge import OUR_LABEL, JudgePolicy
from directpv_csi.core.models import Device
from directpv_csi.kube.nodes import device_reports

GiB = 2**30


def disk(name: str, **kw: Any) -> Device:
    base = dict(name=name, major=8, minor=len(name), size=10 * GiB, transport="sata", serial=f"S-{name}")
    base.update(kw)
    return Device(**base)  # type: ignore[arg-type]


def test_rows_carry_the_verdict_and_every_reason_sorted_by_name() -> None:
    devices = [
        disk("sdc", fs_type="xfs", fs_uuid="0a1b", fs_label=OUR_LABEL),
        disk("sda"),
        disk("sdb", fs_type="ext4", fs_uuid="77"),
        disk("loop0", transport="loop", major=7),
    ]
    rows = {r["name"]: r for r in device_reports(devices, JudgePolicy(), "n1")}
    assert [r["name"] for r in device_reports(devices, JudgePolicy(), "n1")] == ["loop0", "sda", "sdb", "sdc"]
    assert rows["sda"]["available"] is True and rows["sda"]["reasons"] == []
    assert rows["sda"]["majMin"] == "8:3" and rows["sda"]["size"] == 10 * GiB and rows["sda"]["id"]
    assert rows["sdb"]["available"] is False and rows["sdb"]["availableWithForce"] is True
    assert [r.split(":")[0] for r in rows["sdb"]["reasons"]] == ["has-filesystem"]
    assert rows["sdc"]["available"] is False and rows["sdc"]["fsUUID"] == "0a1b"
    assert rows["sdc"]["reasons"][0].startswith("ours: already a DirectPV drive")
    assert rows["loop0"]["available"] is False  # loops only when the policy allows them
    allowed = {r["name"]: r for r in device_reports(devices, JudgePolicy(allow_loop=True), "n1")}
    assert allowed["loop0"]["available"] is True


def test_id_is_the_discover_state_token_and_hardware_id_survives_reformatting() -> None:
    before = device_reports([disk("sda")], JudgePolicy(), "n1")[0]
    after = device_reports([disk("sda", fs_type="ext4", fs_uuid="1")], JudgePolicy(), "n1")[0]
    assert before["id"].startswith("8:3$") and after["id"] != before["id"]  # stale ids are detectable
    assert before["hardwareID"] and after["hardwareID"] == before["hardwareID"]  # same device
    assert device_reports([disk("sda", serial="OTHER")], JudgePolicy(), "n1")[0]["hardwareID"] != before["hardwareID"]
