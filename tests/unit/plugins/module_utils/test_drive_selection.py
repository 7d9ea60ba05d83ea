"""Pure selection (core/selection.py, shipped as module_utils/_directpv/core/selection.py).

Devices are built as the probe would report them; verdicts come from the real judge.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Dict, List

import pytest
from ansible_collections.directpv.csi.plugins.module_utils._directpv.core import selection as sel
from ansible_collections.directpv.csi.plugins.module_utils._directpv.core.errors import InvalidArgument
from ansible_collections.directpv.csi.plugins.module_utils._directpv.core.judge import JudgePolicy, judge
from ansible_collections.directpv.csi.plugins.module_utils._directpv.core.models import Contents, Device

GiB = 1024**3


def dev(name: str, **kw: Any) -> Device:
    base: Dict[str, Any] = {"major": 259, "minor": len(name), "size": 100 * GiB, "transport": "nvme"}
    base.update(kw)
    return Device(name=name, path="/dev/" + name, **base)


def host() -> List[Device]:
    return [
        dev("vda", major=254, minor=0, transport="virtio", partitions=("vda1",), rotational=True),
        dev("vda1", major=254, minor=1, is_partition=True, parent="vda", mountpoints=("/",), fs_type="ext4"),
        dev("nvme0n1", minor=1, serial="S4EWNX0R1", wwn="eui.0025385b71b2c3d4", vendor="", model="Samsung SSD 980"),
        dev("nvme1n1", minor=2, serial="S4EWNX0R2", by_id=("/dev/disk/by-id/nvme-Samsung_SSD_980_S4EWNX0R2",)),
        dev("nvme2n1", minor=3, fs_type="ext4", fs_uuid="1111", contents=Contents(walked=True)),  # empty ext4
        dev("nvme3n1", minor=4, fs_type="xfs", fs_label="DIRECTPV-CSI", fs_uuid="2222", mountpoints=("/var/lib/x",)),
        dev("sdb", major=8, minor=16, transport="sata", rotational=True, size=4000 * GiB, vendor="ATA", model="ST4000"),
        dev("sdc", major=8, minor=32, transport="sata", size=GiB // 4),
        dev("loop0", major=7, minor=0, transport="loop"),
    ]


DEFAULT_POLICY = JudgePolicy()


def run(devices: List[Device], policy: JudgePolicy = DEFAULT_POLICY, **kw: Any) -> sel.Selection:
    return sel.select(devices, judge(devices, policy), node="worker01", **kw)


def names(items: Any) -> List[str]:
    return [i.name for i in items]


def test_explicit_names_paths_serial_wwn_and_by_id_select_exactly_those() -> None:
    reqs = sel.parse_requests(["nvme0n1", "/dev/disk/by-id/nvme-Samsung_SSD_980_S4EWNX0R2"])
    s = run(host(), requests=reqs)
    assert s.ok, s.problems
    assert names(s.selected) == ["nvme0n1", "nvme1n1"]
    assert {c.action for c in s.selected} == {sel.ACTION_FORMAT}
    rejected = {r.name: r for r in s.rejected}
    assert "nvme2n1" in rejected and rejected["nvme2n1"].codes[0] == sel.REJECT_NOT_SELECTED
    assert "has-filesystem" in rejected["nvme2n1"].codes
    for ref in ("S4EWNX0R1", "0x0025385b71b2c3d4", "eui.0025385b71b2c3d4", "/dev/nvme0n1"):
        s = run(host(), requests=sel.parse_requests([ref]))
        assert names(s.selected) == ["nvme0n1"], ref


def test_path_resolution_from_the_host_wins() -> None:
    s = run(host(), requests=sel.parse_requests(["/dev/mapper/odd"]), resolved={"/dev/mapper/odd": "8:16"})
    assert names(s.selected) == ["sdb"]


@pytest.mark.parametrize(
    ("refs", "resolved", "expect"),
    [
        (["nvme9n9"], {}, "'nvme9n9' on node worker01: no such block device"),
        (
            ["/dev/disk/by-id/missing"],
            {"/dev/disk/by-id/missing": "/dev/disk/by-id/missing does not exist"},
            "not exist",
        ),
        (["/etc/hostname"], {"/etc/hostname": "/etc/hostname is a regular file, not a block device"}, "regular file"),
        (["nvme0n1", "S4EWNX0R1"], {}, "device nvme0n1 is listed twice (also as 'nvme0n1')"),
        (["vda"], {}, "holds the root/boot filesystem"),
        (["loop0"], {}, "loop device"),
        (["nvme2n1"], {}, "refusing to format /dev/nvme2n1: has a filesystem: ext4"),
        (["sdc"], {}, "too small"),
    ],
)
def test_named_unusable_device_is_an_error_naming_it(refs: List[str], resolved: Dict[str, str], expect: str) -> None:
    s = run(host(), requests=sel.parse_requests(refs), resolved=resolved)
    assert not s.ok
    text = " | ".join(str(p) for p in s.problems)
    assert expect in text
    assert "worker01" in text


def test_filesystem_needs_force_and_says_how() -> None:
    s = run(host(), requests=sel.parse_requests(["nvme2n1"]))
    assert "force: true" in s.problems[0].hint
    s = run(host(), requests=sel.parse_requests([{"device": "nvme2n1", "force": True}]))
    assert s.ok and s.selected[0].force is True
    s = run(host(), requests=sel.parse_requests(["nvme2n1"]), force=True)
    assert s.ok and s.selected[0].force is True


def test_ours_is_adopted_even_when_mounted() -> None:
    s = run(host(), requests=sel.parse_requests(["nvme3n1"]))
    assert s.ok and s.selected[0].action == sel.ACTION_ADOPT


def test_loop_allowed_by_policy() -> None:
    s = run(host(), JudgePolicy(allow_loop=True), requests=sel.parse_requests(["loop0"]))
    assert names(s.selected) == ["loop0"]


def test_filters_select_only_with_auto_select_and_never_force_in_safe_mode() -> None:
    filters = sel.parse_filters({"transport": ["nvme"], "min_size": "50Gi", "exclude": ["nvme3*"]})
    s = run(host(), filters=filters, auto_select=False)
    assert s.selected == () and s.ok
    s = run(host(), filters=filters, auto_select=True, force=True)
    assert s.ok
    assert names(s.selected) == ["nvme0n1", "nvme1n1"]  # nvme2n1 has ext4: needs force, safe mode refuses
    rejected = {r.name: r for r in s.rejected}
    assert rejected["nvme2n1"].codes[0] == sel.REJECT_NEEDS_FORCE
    assert rejected["nvme3n1"].codes[0] == sel.REJECT_FILTERED_OUT
    assert "exclude pattern" in rejected["nvme3n1"].reasons[0]
    assert rejected["sdb"].codes[0] == sel.REJECT_FILTERED_OUT
    s = run(host(), filters=filters, auto_select=True, force=True, safe_mode=False)
    assert names(s.selected) == ["nvme0n1", "nvme1n1", "nvme2n1"]


@pytest.mark.parametrize(
    "contents",
    [None, Contents(files=2, directories=1, data_bytes=8192, walked=True), Contents(walked=True, truncated=True)],
    ids=["not-counted", "files", "walk-cut-short"],
)
def test_a_filter_never_picks_a_filesystem_holding_files(contents: Any) -> None:
    devices = [d if d.name != "nvme2n1" else replace(d, contents=contents) for d in host()]
    filters = sel.parse_filters({"include": ["nvme2n1"]})
    s = run(devices, filters=filters, auto_select=True, force=True, safe_mode=False)
    assert s.selected == ()
    rejected = {r.name: r for r in s.rejected}
    assert rejected["nvme2n1"].codes[0] == sel.REJECT_NEEDS_NAMED
    # Named, with force, it is selected (the format plan then lists what it destroys).
    s = run(devices, requests=sel.parse_requests([{"device": "nvme2n1", "force": True}]))
    assert names(s.selected) == ["nvme2n1"] and s.selected[0].force


def test_filter_matching_nothing_is_an_error() -> None:
    s = run(host(), filters=sel.parse_filters({"include": ["xvd*"]}), auto_select=True)
    assert not s.ok
    assert "match no device" in str(s.problems[0]) and "worker01" in str(s.problems[0])


@pytest.mark.parametrize(
    ("flt", "dev_kw", "why"),
    [
        ({"max_size": "1Ti"}, {"size": 2000 * GiB}, "above max_size"),
        ({"vendor": "ACME*"}, {"vendor": "ATA"}, "vendor"),
        ({"model": "*980*"}, {"model": "X"}, "model"),
        ({"rotational": False}, {"rotational": True}, "rotational"),
        ({"include": ["sd*"]}, {}, "include"),
    ],
)
def test_each_filter_explains_a_mismatch(flt: Dict[str, Any], dev_kw: Dict[str, Any], why: str) -> None:
    f = sel.parse_filters(flt)
    assert why in f.mismatch(dev("nvme5n1", **dev_kw))


@pytest.mark.parametrize(
    "bad",
    [
        {"min_size": "lots"},
        {"colour": "red"},
        {"min_size": "2Ti", "max_size": "1Ti"},
        {"include": "nvme*", "exclude": [1]},
        {"rotational": "sometimes"},
    ],
)
def test_bad_filters_raise_invalid_argument(bad: Dict[str, Any]) -> None:
    with pytest.raises(InvalidArgument):
        sel.parse_filters(bad)


@pytest.mark.parametrize(
    "bad", ["nvme0n1", [3], [{"force": True}], [""], ["/dev/../etc/passwd"], [{"device": "a", "x": 1}]]
)
def test_bad_drive_lists_raise(bad: Any) -> None:
    with pytest.raises(InvalidArgument):
        sel.parse_requests(bad)


def test_drives_yaml_round_trip_selects_this_nodes_yes_entries() -> None:
    devices = host()
    verdicts = judge(devices)
    rows = [sel.device_row(d, verdicts[d.name], "worker01", f"{d.majmin}$x") for d in devices]
    node = sel.drives_yaml_node("worker01", rows)
    assert {d["name"] for d in node["drives"]} == {"nvme0n1", "nvme1n1", "sdb"}  # available only
    doc = sel.drives_yaml_document([node, {"name": "worker02", "drives": [{"name": "sdb", "select": "yes"}]}])
    for d in doc["nodes"][0]["drives"]:
        d["select"] = "yes" if d["name"] == "nvme1n1" else "no"
    reqs = sel.requests_from_drives_yaml(doc, "worker01")
    assert [r.ref for r in reqs] == ["nvme1n1"]
    s = sel.select(devices, verdicts, requests=reqs, node="worker01")
    assert names(s.selected) == ["nvme1n1"] and s.selected[0].source == sel.SOURCE_YAML


def test_drives_yaml_detects_a_changed_device() -> None:
    doc: Dict[str, Any] = {
        "version": "v1", "nodes": [{"name": "w", "drives": [{"name": "nvme0n1", "id": "9:9$abc", "select": "yes"}]}]
    }
    s = run(host(), requests=sel.requests_from_drives_yaml(doc, "w"))
    assert "drives.yaml id says 9:9" in str(s.problems[0])
    doc["nodes"][0]["drives"][0].update(id="", size=1)
    s = run(host(), requests=sel.requests_from_drives_yaml(doc, "w"))
    assert "drives.yaml says 1 B" in str(s.problems[0])


@pytest.mark.parametrize(
    ("doc", "expect"),
    [
        ([], "not a mapping"),
        ({"version": "v2", "nodes": []}, "version is 'v2'"),
        ({"version": "v1", "nodes": {}}, "'nodes' must be a list"),
        ({"version": "v1", "nodes": [{"drives": []}]}, "nodes[0] has no name"),
        ({"version": "v1", "nodes": [{"name": "a"}, {"name": "a"}]}, "listed twice"),
        (
            {"version": "v1", "nodes": [{"name": "a", "drives": [{"name": "x", "select": "maybe"}]}]},
            "select is 'maybe'",
        ),
        ({"version": "v1", "nodes": [{"name": "a", "drives": [{"name": "x", "size": "big"}]}]}, "(x)"),
    ],
)
def test_malformed_drives_yaml_names_the_problem(doc: Any, expect: str) -> None:
    with pytest.raises(InvalidArgument) as exc:
        sel.validate_drives_yaml(doc, "drives.yaml")
    assert expect in str(exc.value)


def test_table_has_directpv_columns() -> None:
    devices = host()
    verdicts = judge(devices)
    rows = [sel.device_row(d, verdicts[d.name], "worker01", d.majmin) for d in devices]
    text = sel.format_table([sel.table_cells(r) for r in rows])
    lines = text.splitlines()
    assert lines[0].split() == list(sel.TABLE_HEADER)
    by_name = {line.split()[2]: line for line in lines[1:]}
    assert " YES " in by_name["nvme0n1"]
    assert " OURS " in by_name["nvme3n1"]
    assert " FORCE " in by_name["nvme2n1"]
    assert "root/boot" in by_name["vda"]


def test_a_named_directpv_drive_is_an_error_saying_what_it_is() -> None:
    held = Contents(used_bytes=5 * 2**20, volume_dirs=3)
    theirs = dev("nvme4n1", minor=5, fs_type="xfs", fs_label="DIRECTPV", drive_kind="minio-directpv", contents=held)
    devices = [*host(), theirs]
    for force in (False, True):
        s = run(devices, requests=sel.parse_requests([{"device": "nvme4n1", "force": force}]), force=force)
        assert s.selected == () and len(s.problems) == 1
        text = str(s.problems[0])
        assert "MinIO DirectPV drive" in text and "3 volume directories" in text and "migration" in text
        assert "force" not in text.split("cannot be used")[1].replace("not formatted", "")
