"""The drives workflow end to end: the venv's real ansible-playbook against inventory hosts on
this machine (local connection), each host with its own loop devices. Loop devices are
explicitly allowed (directpv_allow_loop) because they are the only block devices a test
may create here.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import uuid
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Optional, Tuple

import pytest
import yaml

from testsupport import needs_root, needs_tool

from .playbook_helpers import Run, blkid

pytestmark = [needs_root, needs_tool("mkfs.xfs"), needs_tool("mkfs.ext4"), pytest.mark.slow]

FormatCheck = Callable[[str], bool]


def is_ours(dev: str) -> bool:
    p = blkid(dev)
    return p.get("TYPE") == "xfs" and p.get("LABEL") == "DIRECTPV-CSI"


def ext4_with_data(dev: str, mnt: Path) -> str:
    """mkfs.ext4 + one file; returns the filesystem UUID."""
    subprocess.run(["mkfs.ext4", "-q", "-F", dev], check=True)
    mnt.mkdir(exist_ok=True)
    subprocess.run(["mount", dev, str(mnt)], check=True)
    (mnt / "precious.txt").write_text("keep me")
    subprocess.run(["umount", str(mnt)], check=True)
    return blkid(dev)["UUID"]


def test_done_when_three_hosts_one_drive_each(
    loopdev: Callable[..., str], inventory: Callable[..., Path], playbook: Callable[..., Run], tmp_path: Path
) -> None:
    chosen = {f"worker0{i}": loopdev("600M") for i in (1, 2, 3)}
    spare = loopdev("600M")  # never selected
    data = loopdev("600M")  # holds a filesystem with a file
    data_uuid = ext4_with_data(data, tmp_path / "data")
    mounted = loopdev("600M")
    mounted_uuid = ext4_with_data(mounted, tmp_path / "m")
    mnt = tmp_path / "mounted"
    mnt.mkdir()
    subprocess.run(["mount", mounted, str(mnt)], check=True)
    try:
        inv = inventory({h: {"directpv_drives": [os.path.basename(d)]} for h, d in chosen.items()})

        check = playbook("drives.yml", inv, "--check", "--diff")
        assert check.rc == 0, check.failures() or check.stderr
        plans = check.results("Show the plan (check mode)")
        for host, dev in chosen.items():
            assert check.changed(host) >= 1
            assert plans[host]["msg"][dev][0][0] == "mkfs.xfs" and plans[host]["msg"][dev][0][-1] == dev
            assert blkid(dev) == {}, f"check mode formatted {dev}"

        first = playbook("drives.yml", inv)
        assert first.rc == 0, first.failures() or first.stderr
        for host, dev in chosen.items():
            assert first.changed(host) == 1, host
            assert is_ours(dev), dev
        assert blkid(spare) == {}
        assert blkid(data)["UUID"] == data_uuid and blkid(data)["TYPE"] == "ext4"
        assert blkid(mounted)["UUID"] == mounted_uuid and os.path.ismount(mnt)
        assert (mnt / "precious.txt").read_text() == "keep me"

        second = playbook("drives.yml", inv)
        assert second.rc == 0, second.failures() or second.stderr
        assert {h: second.changed(h) for h in chosen} == {h: 0 for h in chosen}
        ids = {h: r["drive"]["drive_id"] for h, r in _per_host_drive(second).items()}
        assert ids == {h: blkid(d)["UUID"] for h, d in chosen.items()}
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True, check=False)


def _per_host_drive(run: Run) -> Dict[str, Dict[str, Any]]:
    res = run.results("Format or adopt each selected drive")
    return {h: r["results"][0] for h, r in res.items()}


def test_filesystem_refused_with_how_to_force_and_nothing_formatted_anywhere(
    loopdev: Callable[..., str], inventory: Callable[..., Path], playbook: Callable[..., Run], tmp_path: Path
) -> None:
    blank = loopdev("600M")
    data = loopdev("600M")
    data_uuid = ext4_with_data(data, tmp_path / "d")
    inv = inventory({"w1": {"directpv_drives": [blank]}, "w2": {"directpv_drives": [data]}})
    run = playbook("drives.yml", inv)
    assert run.rc != 0
    msgs = run.messages("w2")
    assert any(data in m and "ext4" in m and "force: true" in m and "node w2" in m for m in msgs), msgs
    assert any("nothing is formatted on any host" in m for m in run.messages("w1"))
    assert blkid(blank) == {}, "w1's drive must not be formatted when w2's selection failed"
    assert blkid(data)["UUID"] == data_uuid

    inv = inventory({"w1": {"directpv_drives": [blank]}, "w2": {"directpv_drives": [{"device": data, "force": True}]}})
    run = playbook("drives.yml", inv)
    assert run.rc == 0, run.failures()
    assert is_ours(blank) and is_ours(data)


@pytest.fixture
def by_id_link(loopdev: Callable[..., str]) -> Iterator[tuple[str, str]]:
    """A /dev/disk/by-id link to a fresh loop device (what udev would create), removed after."""
    dev = loopdev("600M")
    d = Path("/dev/disk/by-id")
    created = [p for p in (d.parent, d) if not p.exists()]
    d.mkdir(parents=True, exist_ok=True)
    link = d / f"directpv-test-{uuid.uuid4().hex[:12]}"
    link.symlink_to(f"../../{os.path.basename(dev)}")
    try:
        yield str(link), dev
    finally:
        link.unlink()
        for p in reversed(created):
            with contextlib.suppress(OSError):  # someone else put something there meanwhile
                p.rmdir()


def test_select_by_id_path(
    by_id_link: tuple[str, str], inventory: Callable[..., Path], playbook: Callable[..., Run]
) -> None:
    link, dev = by_id_link
    run = playbook("drives.yml", inventory({"w1": {"directpv_drives": [link]}}))
    assert run.rc == 0, run.failures()
    assert is_ours(dev)


# host -> (its variables, the text of its drives.yaml or None, what its failure must say)
BAD: Dict[str, Tuple[Dict[str, Any], Optional[str], str]] = {
    "unknown-device": (
        {"directpv_drives": ["nvme9n9"]},
        None,
        "'nvme9n9' on node unknown-device: no such block device",
    ),
    "filter-matches-nothing": (
        {"directpv_drive_auto_select": True, "directpv_drive_filters": {"include": ["directpv-nomatch*"]}},
        None,
        "directpv_drive_filters on node filter-matches-nothing match no device",
    ),
    "missing-by-id": (
        {"directpv_drives": ["/dev/disk/by-id/nvme-DOES_NOT_EXIST_123"]},
        None,
        "/dev/disk/by-id/nvme-DOES_NOT_EXIST_123 does not exist",
    ),
    "yaml-syntax": (
        {},
        "version: v1\nnodes:\n  - name: w2\n    drives: [ {name: x\n",
        "host yaml-syntax: {file} is not valid YAML at line",
    ),
    "yaml-version": ({}, "version: v2\nnodes: []\n", "host yaml-syntax: {file}: version is 'v2'"),
    "yaml-select": (
        {},
        "version: v1\nnodes:\n  - name: yaml-select\n    drives:\n      - {name: loop0, select: maybe}\n",
        "host yaml-select: {file}: nodes[0] (yaml-select): drives[0] (loop0): select is 'maybe'",
    ),
    "filters-without-auto-select": (
        {"directpv_drive_filters": {"min_size": "1Gi"}, "directpv_drives": ["loop0"]},
        None,
        "host filters-without-auto-select: directpv_drive_filters is set ({{'min_size': '1Gi'}}) but "
        "directpv_drive_auto_select is false",
    ),
    "drives-not-a-list": (
        {"directpv_drives": "loop0"},
        None,
        "host drives-not-a-list: directpv_drives must be a list of devices",
    ),
    "misspelled": (
        {"directpv_drive": ["loop0"]},
        None,
        "host misspelled selects no drive: directpv_drives, directpv_drives_yaml and directpv_drive_auto_select "
        "are all unset. directpv_drive is set: did you mean directpv_drives?",
    ),
    "nothing-set": ({}, None, "host nothing-set selects no drive"),
    "label-of-directpv": (
        {"directpv_drives": ["loop0"], "directpv_drive_label": "DIRECTPV"},
        None,
        "host label-of-directpv: directpv_drive_label DIRECTPV cannot be used",
    ),
}
# Each bad host's message says only what is wrong with it (not the other rules).
NOT_SAID = {
    "filters-without-auto-select": "must be a list",
    "drives-not-a-list": "directpv_drive_filters",
    "misspelled": "must be a list",
}


def test_bad_inventory_fails_naming_host_and_problem_and_formats_nothing(
    loopdev: Callable[..., str], inventory: Callable[..., Path], playbook: Callable[..., Run], tmp_path: Path
) -> None:
    """One run, one good host and one host per kind of mistake: each bad host fails with its own
    message, and the good host formats nothing because another host failed."""
    good = loopdev("600M")
    hosts: Dict[str, Dict[str, object]] = {"good": {"directpv_drives": [good]}}
    expect: Dict[str, str] = {}
    for host, (hv, text, message) in BAD.items():
        hv = dict(hv)
        f = tmp_path / f"{host}-drives.yaml"
        if text is not None:
            f.write_text(text)
            hv["directpv_drives_yaml"] = str(f)
        hosts[host] = hv
        expect[host] = message.replace("host yaml-syntax", f"host {host}").format(file=f)
    run = playbook("drives.yml", inventory(hosts))
    assert run.rc != 0
    for host, message in expect.items():
        mine = run.messages(host)
        assert any(message in m for m in mine), (host, message, mine)
        if host in NOT_SAID:
            assert not any(NOT_SAID[host] in m for m in mine), (host, mine)
    assert any("nothing is formatted on any host" in m for m in run.messages("good"))
    assert blkid(good) == {}, "bad inventories elsewhere must leave the good host's drive untouched"


def test_discover_then_drives_yaml_round_trip(
    loopdev: Callable[..., str], inventory: Callable[..., Path], playbook: Callable[..., Run], tmp_path: Path
) -> None:
    mine = {"w1": [loopdev("600M"), loopdev("600M")], "w2": [loopdev("600M")]}
    names = {h: [os.path.basename(d) for d in devs] for h, devs in mine.items()}
    out = tmp_path / "drives.yaml"
    inv = inventory({h: {} for h in mine})
    disc = playbook("discover.yml", inv, "-e", f"directpv_discover_output={out}")
    assert disc.rc == 0, disc.failures()
    (shown,) = disc.results("Show the devices of every host").values()  # one table for every host
    lines = shown["lines"]
    assert lines[0].split() == ["ID", "NODE", "DRIVE", "SIZE", "FILESYSTEM", "MAKE", "AVAILABLE", "DESCRIPTION"]
    assert shown["table"] == "\n".join(lines)
    for host, devs in names.items():
        assert any(line.split()[1:3] == [host, devs[0]] for line in lines[1:]), (host, lines)
    # The summary counts exactly the rows shown.
    counted = [int(n) for n in re.findall(r"(\d+) (?:device|available|only|DirectPV|not usable)", shown["msg"])]
    assert shown["msg"].startswith("2 host(s), ") and counted[0] == len(lines) - 1 == sum(counted[1:]), shown["msg"]

    doc = yaml.safe_load(out.read_text())
    assert doc["version"] == "v1" and [n["name"] for n in doc["nodes"]] == ["w1", "w2"]
    assert '"yes"' in out.read_text() or "'yes'" in out.read_text(), "select must stay a quoted string"
    # The operator's review: keep only this test's devices; select the first of each host.
    for n in doc["nodes"]:
        n["drives"] = [d for d in n["drives"] if d["name"] in names[n["name"]]]
        assert sorted(d["name"] for d in n["drives"]) == sorted(names[n["name"]])
        for d in n["drives"]:
            d["select"] = "yes" if d["name"] == names[n["name"]][0] else "no"
    out.write_text(yaml.safe_dump(doc))

    run = playbook("drives.yml", inventory({h: {} for h in mine}, {"directpv_drives_yaml": str(out)}))
    assert run.rc == 0, run.failures()
    assert is_ours(mine["w1"][0]) and is_ours(mine["w2"][0])
    assert blkid(mine["w1"][1]) == {}


def test_an_empty_host_on_purpose(
    loopdev: Callable[..., str], inventory: Callable[..., Path], playbook: Callable[..., Run]
) -> None:
    dev = loopdev("600M")
    inv = inventory({"w1": {"directpv_drives": [dev]}, "spare": {"directpv_allow_empty": True}})
    run = playbook("drives.yml", inv)
    assert run.rc == 0, run.failures()
    assert is_ours(dev)


def test_check_mode_shows_the_drive_id_the_format_uses(
    loopdev: Callable[..., str], inventory: Callable[..., Path], playbook: Callable[..., Run]
) -> None:
    dev = loopdev("600M")
    inv = inventory({"w1": {"directpv_drives": [dev]}})
    run = playbook("drives.yml", inv)
    assert run.rc == 0, run.failures()
    planned = run.results("Plan each selected drive")["w1"]["results"][0]
    done = _per_host_drive(run)["w1"]
    assert planned["drive"]["drive_id"] == done["drive"]["drive_id"] == blkid(dev)["UUID"]
    assert planned["plan"]["commands"][0][4] == "uuid=" + blkid(dev)["UUID"]


def test_release_wipe_refused_while_the_embedded_store_holds_a_reservation(
    loopdev: Callable[..., str], inventory: Callable[..., Path], playbook: Callable[..., Run], tmp_path: Path
) -> None:
    from directpv_csi.core.models import Drive, Volume
    from directpv_csi.store.embedded import EmbeddedStore

    dev = loopdev("600M")
    run = playbook("drives.yml", inventory({"w1": {"directpv_drives": [dev]}}))
    assert run.rc == 0, run.failures()
    drive_id = blkid(dev)["UUID"]
    state = tmp_path / "state"
    state.mkdir()
    store = EmbeddedStore(str(state / "store.sqlite"))
    try:
        store.put_drive(Drive(drive_id=drive_id, node="w1", name=os.path.basename(dev), total=500 << 20))
        # Reserved, never staged: no directory on the drive, only the store knows it.
        store.reserve_volume(Volume(name="pvc-reserved", drive_id=drive_id, node="w1", size=64 << 20, project_id=0))
    finally:
        store.close()
    release = {
        "directpv_allow_empty": True,
        "directpv_release_drives": [dev],
        "directpv_release_wipe": True,
        "directpv_store": "embedded",
        "directpv_state_dir": str(state),
    }
    run = playbook("drives.yml", inventory({"w1": release}))
    assert run.rc != 0
    msgs = [str(r.get("msg", "")) for r in run.results("Release each drive")["w1"]["results"]]
    assert any("pvc-reserved" in m and "the store holds 1 volume" in m for m in msgs), msgs
    assert blkid(dev)["UUID"] == drive_id, "the drive was wiped while the store held a reservation on it"

    store = EmbeddedStore(str(state / "store.sqlite"))
    try:
        store.delete_volume("pvc-reserved")
        for t in store.list_tombstones(drive_id):
            store.clear_tombstone(t.drive_id, t.name, t.uid)
    finally:
        store.close()
    run = playbook("drives.yml", inventory({"w1": release}))
    assert run.rc == 0, run.failures()
    assert blkid(dev) == {}, "released and wiped once the store holds nothing on it"


def test_release_wipe_refused_while_the_cluster_holds_a_reservation(
    loopdev: Callable[..., str], inventory: Callable[..., Path], playbook: Callable[..., Run], kube_store_cluster: Any
) -> None:
    """The role asks the real API server (kubernetes.core.k8s_info from the control node) which
    DirectPVVolume objects the drive holds, and the module refuses the wipe while there are any."""
    import importlib.util

    if importlib.util.find_spec("ansible_collections.kubernetes.core") is None:
        pytest.skip("needs the kubernetes.core collection (make setup installs it)")
    from directpv_csi.core.models import Drive, Volume
    from directpv_csi.kube.store import KubeStore

    dev = loopdev("600M")
    run = playbook("drives.yml", inventory({"w1": {"directpv_drives": [dev]}}))
    assert run.rc == 0, run.failures()
    drive_id = blkid(dev)["UUID"]
    volume = f"pvc-{uuid.uuid4().hex[:12]}"
    store = KubeStore(kube_store_cluster.new_client(), events=False)
    try:
        store.put_drive(Drive(drive_id=drive_id, node="w1", name=os.path.basename(dev), total=500 << 20))
        store.reserve_volume(Volume(name=volume, drive_id=drive_id, node="w1", size=64 << 20, project_id=0))
        release = {
            "directpv_allow_empty": True,
            "directpv_release_drives": [dev],
            "directpv_release_wipe": True,
            "directpv_store": "kube",
            "directpv_kubeconfig": str(kube_store_cluster.control_plane.kubeconfig),
        }
        run = playbook("drives.yml", inventory({"w1": release}))
        assert run.rc != 0
        msgs = [str(r.get("msg", "")) for r in run.results("Release each drive")["w1"]["results"]]
        assert any("the store holds 1 volume" in m for m in msgs), msgs
        assert blkid(dev)["UUID"] == drive_id, "the drive was wiped while the cluster held a reservation on it"
    finally:
        store.close()
        kube_store_cluster.wipe()
    run = playbook("drives.yml", inventory({"w1": release}))
    assert run.rc == 0, run.failures()
    assert blkid(dev) == {}


def test_discover_prints_a_plain_text_table(
    loopdev: Callable[..., str], inventory: Callable[..., Path], playbook: Callable[..., Run]
) -> None:
    dev = loopdev("600M")
    run = playbook("discover.yml", inventory({"w1": {}}), env={"ANSIBLE_STDOUT_CALLBACK": "default"})
    assert run.rc == 0, run.stdout[-2000:]
    header = next(line for line in run.stdout.splitlines() if line.startswith("ID "))
    assert header.split() == ["ID", "NODE", "DRIVE", "SIZE", "FILESYSTEM", "MAKE", "AVAILABLE", "DESCRIPTION"]
    assert any(line.split()[1:3] == ["w1", os.path.basename(dev)] for line in run.stdout.splitlines())
    assert '"ID ' not in run.stdout, "the table is printed as text, not as a JSON list of strings"


def test_a_plan_reviewed_in_check_mode_is_the_one_formatted(
    loopdev: Callable[..., str], inventory: Callable[..., Path], playbook: Callable[..., Run], tmp_path: Path
) -> None:
    dev, changed = loopdev("600M"), loopdev("600M")
    plan_file = tmp_path / "plan.yml"
    hosts = {"w1": {"directpv_drives": [dev]}, "w2": {"directpv_drives": [{"device": changed, "force": True}]}}
    inv = inventory(hosts, {"directpv_plan_file": str(plan_file)})
    check = playbook("drives.yml", inv, "--check")
    assert check.rc == 0, check.failures()
    assert blkid(dev) == {} and blkid(changed) == {}
    plans = yaml.safe_load(plan_file.read_text())
    planned_id = plans["w1"][dev]["drive_id"]
    assert plans["w1"][dev]["commands"][0][4] == f"uuid={planned_id}"
    # The drive id check mode showed is the one the real run gives the filesystem.
    subprocess.run(["mkfs.ext4", "-q", "-F", changed], check=True)  # w2's device changes after the review
    run = playbook("drives.yml", inv)
    assert blkid(dev).get("UUID") == planned_id
    assert run.rc != 0 and blkid(changed)["TYPE"] == "ext4", "a device changed since the reviewed plan is refused"
    stale = [str(r.get("msg", "")) for r in run.results("Plan each selected drive")["w2"]["results"]]
    assert any("changed since" in m for m in stale), stale
