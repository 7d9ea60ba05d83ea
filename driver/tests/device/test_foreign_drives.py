"""Foreign drives are never taken: MinIO DirectPV's drives, and filesystems that hold files.

Real loop devices. A DirectPV drive is made the way DirectPV's initDevice makes one (reference
§3/§5): ``mkfs.xfs -i maxpct=50 -m uuid=<uuid> -L DIRECTPV``, mounted, a ``.FSUUID.<uuid>``
symlink to ``.``, ``.directpv/meta.info``, and volume directories holding data. Every refusal is
checked to have changed nothing: sha256 of the whole device before and after, and its
directories counted through a read-only loop device mounted ``ro,norecovery``.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path
from typing import Callable, Iterator, List

import pytest
from directpv_csi.core import identity
from directpv_csi.core import models as m
from directpv_csi.core.errors import DeviceRefused
from directpv_csi.core.judge import JudgePolicy, judge
from directpv_csi.core.selection import DriveFilters, select
from directpv_csi.device import format as fmt
from directpv_csi.device import mount as mount_mod
from directpv_csi.device import ondisk
from directpv_csi.device.probe import probe, probe_one

import testsupport
from testsupport import backing_file, needs_root, needs_tool, sha256_device

pytestmark = [needs_root, needs_tool("mkfs.xfs"), needs_tool("mkfs.ext4")]
SIZE = "700M"  # above the judge's 512 MiB minimum
LOOPS = JudgePolicy(allow_loop=True)


def count_dirs_read_only(dev: str, tmp_path: Path, fstype: str = "xfs") -> List[str]:
    """Directories at the root of ``dev``'s filesystem, through a read-only loop device mounted
    ``ro,norecovery`` (``ro,noload`` for ext4): nothing here can write to ``dev``."""
    ro = subprocess.run(
        ["losetup", "--find", "--show", "--read-only", backing_file(dev)], check=True, capture_output=True, text=True
    ).stdout.strip()
    mp = tmp_path / f"ro-{os.path.basename(ro)}"
    mp.mkdir(exist_ok=True)
    try:
        opts = "ro,norecovery" if fstype == "xfs" else "ro,noload"
        subprocess.run(["mount", "-t", fstype, "-o", opts, ro, str(mp)], check=True, capture_output=True)
        try:
            return sorted(e.name for e in os.scandir(mp) if e.is_dir(follow_symlinks=False))
        finally:
            subprocess.run(["umount", str(mp)], check=True)
    finally:
        subprocess.run(["losetup", "--detach", ro], check=True)


@pytest.fixture
def mounted(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    made: List[Path] = []

    def do(dev: str) -> Path:
        mp = tmp_path / f"m{len(made)}"
        mp.mkdir()
        subprocess.run(["mount", dev, str(mp)], check=True)
        made.append(mp)
        return mp

    yield do
    for mp in reversed(made):
        subprocess.run(["umount", "-l", str(mp)], capture_output=True)


def umount(mp: Path) -> None:
    subprocess.run(["umount", str(mp)], check=True)


def make_directpv_drive(dev: str, mounted: Callable[[str], Path], volumes: int = 2) -> str:
    return testsupport.make_directpv_drive(dev, mounted, volumes)


def test_directpv_drive_is_refused_everywhere_and_left_unchanged(
    loopdev: Callable[..., str], mounted: Callable[[str], Path], tmp_path: Path
) -> None:
    dev = loopdev(SIZE)
    fsuuid = make_directpv_drive(dev, mounted, volumes=2)
    dirs_before = count_dirs_read_only(dev, tmp_path)
    assert dirs_before == [".directpv", "pvc-0000-e7a1", "pvc-0001-e7a1"]
    before = sha256_device(dev)

    # The probe tells whose drive it is (read-only) and the judge says so.
    d = probe_one(dev)
    assert d.drive_kind == identity.KIND_DIRECTPV and d.contents is not None and d.contents.volume_dirs == 2
    verdict = judge([d], LOOPS)[d.name]
    assert [(r.code, r.forceable) for r in verdict.reasons] == [(m.REASON_DIRECTPV, False)]
    assert "MinIO DirectPV drive" in verdict.description and "2 volume directories" in verdict.description

    # The format code refuses, with and without force; the message says what the drive is.
    for force in (False, True):
        with pytest.raises(DeviceRefused) as exc:
            fmt.plan_format(dev, allow_loop=True, force=force)
        text = str(exc.value)
        assert exc.value.reasons == (m.REASON_DIRECTPV,)
        assert "MinIO DirectPV drive" in text and fsuuid in text and "2 volume directories" in text
        assert "MiB in use" in text and "migration path" in text
        assert "set force" not in text and "format it anyway" not in text and "again" not in text

    # The node's DirectPVNode report (the judge's verdicts) says what it is.
    from directpv_csi.kube.nodes import device_reports

    (row,) = device_reports([d], LOOPS, "node-a")
    assert not row["available"] and not row["availableWithForce"]
    assert [r.split(":")[0] for r in row["reasons"]] == [m.REASON_DIRECTPV]
    assert "MinIO DirectPV drive" in row["reasons"][0] and "format it" not in row["reasons"][0]

    # Never one of ours: the node's registry finds nothing, whether or not the probe identified it.
    assert fmt.find_our_drives([d]) == []
    assert fmt.find_our_drives(probe(names=[d.name], identify=False)) == []
    assert fmt.find_our_drives([d], label="DIRECTPV") == []

    assert sha256_device(dev) == before, "inspecting or refusing a DirectPV drive changed it"
    assert count_dirs_read_only(dev, tmp_path) == dirs_before
    assert not [p for p in os.listdir("/tmp") if p.startswith("directpv-inspect-")], "temporary mount left behind"


def test_node_registry_never_adopts_a_directpv_drive(
    loopdev: Callable[..., str], mounted: Callable[[str], Path], tmp_path: Path
) -> None:
    from directpv_csi.node.config import NodeConfig
    from directpv_csi.node.registry import DriveRegistry
    from directpv_csi.store.embedded import EmbeddedStore

    dev = loopdev(SIZE)
    make_directpv_drive(dev, mounted, volumes=1)
    dirs_before = count_dirs_read_only(dev, tmp_path)
    before = sha256_device(dev)
    state = tmp_path / "state"
    state.mkdir()
    prefix = str(tmp_path) + "/"
    store = EmbeddedStore(str(tmp_path / "store.db"))
    config = NodeConfig(node_id="node-a", state_dir=state, kubelet_dirs=(tmp_path / "kubelet",), allow_loop=True)
    reg = DriveRegistry(
        config, store, probe=lambda e: [d for d in probe(errors=e) if d.loop_backing_file.startswith(prefix)]
    )
    try:
        assert reg.sync() == []
        assert store.list_drives() == []
        assert reg.mounted_drives() == []
    finally:
        reg.stop()
        store.close()
    assert sha256_device(dev) == before, "the node changed a DirectPV drive"
    assert count_dirs_read_only(dev, tmp_path) == dirs_before


def test_drive_adopted_by_an_old_version_beside_directpv_marks_stays_directpv(
    loopdev: Callable[..., str], mounted: Callable[[str], Path]
) -> None:
    dev = loopdev(SIZE)
    fsuuid = make_directpv_drive(dev, mounted, volumes=1)
    mp = mounted(dev)
    (mp / ".directpv" / "meta.json").write_text(json.dumps({"drive_id": fsuuid, "adopted_at": "2026-01-01T00:00:00Z"}))
    umount(mp)
    assert probe_one(dev).drive_kind == identity.KIND_DIRECTPV
    assert fmt.find_our_drives([probe_one(dev)]) == []
    # ... unless a migration recorded the import: then it is ours, in place.
    mp = mounted(dev)
    meta = {"drive_id": fsuuid, "imported_from": identity.IMPORTED_FROM_DIRECTPV}
    (mp / ".directpv" / "meta.json").write_text(json.dumps(meta))
    umount(mp)
    found = fmt.find_our_drives([probe_one(dev)])
    assert [(d.fs_uuid, d.drive_kind) for d in found] == [(fsuuid, identity.KIND_IMPORTED)]


def test_drive_of_an_earlier_version_is_still_ours(loopdev: Callable[..., str], mounted: Callable[[str], Path]) -> None:
    dev = loopdev(SIZE)
    drive_id = str(uuid.uuid4())
    subprocess.run(["mkfs.xfs", "-q", "-i", "maxpct=50", "-m", f"uuid={drive_id}", "-L", "DIRECTPV", dev], check=True)
    mp = mounted(dev)
    (mp / ".directpv").mkdir()
    (mp / ".directpv" / "meta.json").write_text(json.dumps({"drive_id": drive_id, "format_version": 1}))
    umount(mp)
    d = probe_one(dev)
    assert d.drive_kind == identity.KIND_OURS_V1
    assert [x.fs_uuid for x in fmt.find_our_drives([d])] == [drive_id]
    plan = fmt.plan_format(dev, allow_loop=True)
    assert plan.adopt and plan.drive_id == drive_id and plan.commands == []
    # A mounted one (the node mounts its drives) is read where it is mounted.
    mounted(dev)
    assert [x.fs_uuid for x in fmt.find_our_drives(probe(names=[d.name], identify=False))] == [drive_id]


def test_new_drives_carry_a_label_directpv_never_writes(loopdev: Callable[..., str]) -> None:
    dev = loopdev(SIZE)
    res = fmt.format_drive(dev, allow_loop=True)
    d = probe_one(dev)
    assert d.fs_label == identity.OUR_LABEL and d.fs_uuid == res.drive_id
    assert fmt.find_our_drives([d])[0].drive_kind == identity.KIND_OURS
    with pytest.raises(Exception, match="MinIO DirectPV's"):
        fmt.plan_format(dev, allow_loop=True, label="DIRECTPV")


def make_ext4_with_files(dev: str, mounted: Callable[[str], Path]) -> None:
    subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "photos", dev], check=True)
    mp = mounted(dev)
    for i in range(3):
        d = mp / f"album{i}"
        d.mkdir()
        for j in range(4):
            (d / f"img{j}.jpg").write_bytes(os.urandom(64 << 10))
    umount(mp)


def test_ext4_with_files_needs_force_and_the_device_named(
    loopdev: Callable[..., str], mounted: Callable[[str], Path], tmp_path: Path
) -> None:
    dev = loopdev(SIZE)
    make_ext4_with_files(dev, mounted)
    before = sha256_device(dev)

    # Without force: refused, saying what is there, and not advising to format.
    with pytest.raises(DeviceRefused) as exc:
        fmt.plan_format(dev, allow_loop=True)
    assert set(exc.value.reasons) == {m.REASON_HAS_FILESYSTEM, m.REASON_HAS_DATA}
    assert "12 file(s), 3 directories" in str(exc.value) and "set force" not in str(exc.value)

    # Picked by a filter: refused even with force and safe mode off.
    d = ondisk.inspect(probe_one(dev))
    sel = select([d], judge([d], LOOPS), filters=DriveFilters(), auto_select=True, force=True, safe_mode=False)
    assert sel.selected == () and sel.rejected[0].codes[0] == "needs-named"
    assert "only a device named in directpv_drives" in sel.rejected[0].reasons[0]
    assert sha256_device(dev) == before
    assert count_dirs_read_only(dev, tmp_path, "ext4") == ["album0", "album1", "album2", "lost+found"]

    # Named with force: the plan lists what is destroyed, counted read-only.
    plan = fmt.plan_format(dev, allow_loop=True, force=True)
    gone = plan.destroys
    assert gone["filesystem"] == "ext4" and gone["label"] == "photos"
    assert (gone["files"], gone["directories"]) == (12, 3)
    assert gone["data_bytes"] >= 12 * (64 << 10) and gone["used_bytes"] >= gone["data_bytes"]
    assert not gone["counts_are_minimums"] and "12 file(s)" in gone["summary"]
    assert plan.to_dict()["destroys"] == gone
    assert sha256_device(dev) == before, "planning changed the device"
    res = fmt.execute_format(plan)
    assert probe_one(dev).fs_label == identity.OUR_LABEL and res.drive_id == plan.drive_id


def test_empty_filesystem_needs_force_alone(loopdev: Callable[..., str]) -> None:
    dev = loopdev(SIZE)
    subprocess.run(["mkfs.ext4", "-q", "-F", dev], check=True)
    d = ondisk.inspect(probe_one(dev))
    assert d.contents is not None and d.contents.empty  # lost+found is mkfs's, not data
    sel = select([d], judge([d], LOOPS), filters=DriveFilters(), auto_select=True, force=True, safe_mode=False)
    assert [c.name for c in sel.selected] == [d.name]
    assert fmt.plan_format(dev, allow_loop=True, force=True).destroys["files"] == 0


def test_an_unchanged_drive_is_mounted_once_for_identification(
    loopdev: Callable[..., str], mounted: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    dev = loopdev(SIZE)
    make_directpv_drive(dev, mounted, volumes=1)
    calls: List[str] = []
    real = mount_mod.mount

    def counting(source: str, target: str, *a: object, **kw: object) -> None:
        calls.append(source)
        real(source, target, *a, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(mount_mod, "mount", counting)
    assert probe_one(dev).drive_kind == identity.KIND_DIRECTPV
    assert dev in calls
    calls.clear()
    again = probe_one(dev)
    assert again.drive_kind == identity.KIND_DIRECTPV and again.contents is not None
    assert again.contents.volume_dirs == 1 and calls == [], "an unchanged drive was mounted again"
    # Changed (mounted read-write, a volume added, unmounted): looked at again.
    mp = mounted(dev)
    (mp / "pvc-new").mkdir()
    umount(mp)
    calls.clear()
    assert probe_one(dev).contents.volume_dirs == 2
    assert dev in calls
