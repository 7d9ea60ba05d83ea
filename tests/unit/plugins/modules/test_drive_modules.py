"""Module tests, ANSIBLE_MODULE_ARGS style: each module's main() runs in-process with its
arguments, over real loop devices this test attaches (the ``loopdev`` fixture).

Asserted: argument handling, ``changed``, that check mode runs nothing mutating (the
device's signature is unchanged and execute_format is never reached), and error messages.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any, Callable, Dict, Iterator

import pytest
from ansible.module_utils.testing import patch_module_args
from ansible_collections.directpv.csi.plugins.modules import drive, drive_info, drive_select

from testsupport import make_directpv_drive, needs_root, needs_tool, sha256_device

pytestmark = [needs_root, needs_tool("mkfs.xfs")]


def call(module: Any, args: Dict[str, Any], capsys: pytest.CaptureFixture[str]) -> Dict[str, Any]:
    with patch_module_args(args), pytest.raises(SystemExit):
        module.main()
    out = capsys.readouterr().out
    result: Dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def blkid(dev: str) -> Dict[str, str]:
    out = subprocess.run(["blkid", "-p", "-o", "export", dev], capture_output=True, text=True, check=False).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


@pytest.fixture
def blank(loopdev: Callable[..., str]) -> str:
    return loopdev("600M")


@pytest.fixture
def ext4(loopdev: Callable[..., str]) -> str:
    d = loopdev("600M")
    subprocess.run(["mkfs.ext4", "-q", "-F", d], check=True)
    return d


@pytest.fixture
def no_execute(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Fail the test if the module reaches execute_format (check mode must not)."""

    def boom(*_a: Any, **_k: Any) -> None:
        raise AssertionError("execute_format called in check mode")

    monkeypatch.setattr(drive, "execute_format", boom)
    yield


def test_required_and_choices(capsys: pytest.CaptureFixture[str]) -> None:
    r = call(drive, {}, capsys)
    assert r["failed"] and "missing required arguments: device" in r["msg"]
    r = call(drive, {"device": "loop0", "state": "gone"}, capsys)
    assert r["failed"] and "state" in r["msg"] and "present, absent" in r["msg"]


def test_check_mode_plans_and_runs_nothing(blank: str, no_execute: None, capsys: pytest.CaptureFixture[str]) -> None:
    r = call(drive, {"device": blank, "allow_loop": True, "_ansible_check_mode": True, "_ansible_diff": True}, capsys)
    assert r["changed"] is True
    cmd = r["plan"]["commands"][0]
    assert cmd[0] == "mkfs.xfs" and cmd[-1] == blank and "DIRECTPV-CSI" in cmd
    assert r["diff"]["before"]["filesystem"] == "" and r["diff"]["after"]["filesystem"] == "xfs"
    assert r["diff"]["after"]["fs_uuid"] == r["drive"]["drive_id"]
    assert blkid(blank) == {}, "check mode must leave the device untouched"


def test_format_then_adopt_is_idempotent(blank: str, capsys: pytest.CaptureFixture[str]) -> None:
    r = call(drive, {"device": blank, "allow_loop": True}, capsys)
    assert r["changed"] is True and r["plan"]["action"] == "format"
    props = blkid(blank)
    assert props["TYPE"] == "xfs" and props["LABEL"] == "DIRECTPV-CSI"
    assert props["UUID"] == r["drive"]["drive_id"]
    assert r["drive"]["capacity"] > 0
    again = call(drive, {"device": blank, "allow_loop": True}, capsys)
    assert again["changed"] is False and again["plan"]["action"] == "adopt"
    assert again["drive"]["drive_id"] == r["drive"]["drive_id"]


def test_loop_refused_without_allow_loop(blank: str, capsys: pytest.CaptureFixture[str]) -> None:
    r = call(drive, {"device": blank}, capsys)
    assert r["failed"] and blank in r["msg"] and "loop" in r["msg"]
    assert blkid(blank) == {}


def test_filesystem_refused_names_device_and_force(ext4: str, capsys: pytest.CaptureFixture[str]) -> None:
    before = blkid(ext4)["UUID"]
    r = call(drive, {"device": ext4, "allow_loop": True}, capsys)
    assert r["failed"] and ext4 in r["msg"] and "ext4" in r["msg"] and "force" in r["msg"]
    assert r["error"] == "DeviceRefused" and "has-filesystem" in r["reasons"]
    # safe mode: force alone is not enough without the reviewed state token
    r = call(drive, {"device": ext4, "allow_loop": True, "force": True}, capsys)
    assert r["failed"] and "expected_token" in r["msg"]
    assert blkid(ext4)["UUID"] == before
    # a stale token is refused too
    r = call(drive, {"device": ext4, "allow_loop": True, "force": True, "expected_token": "7:0$stale"}, capsys)
    assert r["failed"] and "changed since" in r["msg"]
    info = call(drive_info, {"allow_loop": True, "include_unavailable": True}, capsys)
    token = next(d["id"] for d in info["devices"] if d["path"] == ext4)
    r = call(drive, {"device": ext4, "allow_loop": True, "force": True, "expected_token": token}, capsys)
    assert r["changed"] is True and blkid(ext4)["TYPE"] == "xfs"


def test_mounted_device_refused_even_with_force(ext4: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", ext4, str(mnt)], check=True)
    try:
        r = call(drive, {"device": ext4, "allow_loop": True, "force": True, "safe_mode": False}, capsys)
        assert r["failed"] and "mounted" in r["msg"] and ext4 in r["msg"]
        assert blkid(ext4)["TYPE"] == "ext4"
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_absent_refuses_while_volumes_live_then_wipes(
    blank: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    call(drive, {"device": blank, "allow_loop": True}, capsys)
    mnt = tmp_path / "drive"
    mnt.mkdir()
    subprocess.run(["mount", blank, str(mnt)], check=True)
    try:
        (mnt / "pvc-1234").mkdir()
        r = call(drive, {"device": blank, "state": "absent", "wipe": True}, capsys)
        assert r["failed"] and "store_volumes" in r["msg"], "safe mode: a wipe needs the store's answer"
        gone = {"device": blank, "state": "absent", "wipe": True, "store_volumes": []}
        r = call(drive, gone, capsys)
        assert r["failed"] and "pvc-1234" in r["msg"] and "volume" in r["msg"]
        (mnt / "pvc-1234").rmdir()
        (mnt / "notes.txt").write_text("x")
        r = call(drive, gone, capsys)
        assert r["failed"] and "safe_mode" in r["msg"] and "notes.txt" in r["msg"]
        os.unlink(mnt / "notes.txt")
        # A reservation in the store (a volume never staged: no directory yet) blocks the wipe.
        r = call(drive, dict(gone, store_volumes=["pvc-reserved"]), capsys)
        assert r["failed"] and "pvc-reserved" in r["msg"] and "store holds 1 volume" in r["msg"]
        # So does any per-volume metadata on the drive.
        (mnt / ".directpv" / "volumes").mkdir()
        (mnt / ".directpv" / "volumes" / "pvc-9.json").write_text("{}")
        r = call(drive, gone, capsys)
        assert r["failed"] and "pvc-9.json" in r["msg"] and "metadata" in r["msg"]
        (mnt / ".directpv" / "volumes" / "pvc-9.json").unlink()
        (mnt / ".directpv" / "volumes").rmdir()
        r = call(drive, dict(gone, _ansible_check_mode=True), capsys)
        assert r["changed"] is True and ["umount", str(mnt)] in r["plan"]["commands"]
        assert os.path.ismount(mnt) and blkid(blank)["TYPE"] == "xfs", "check mode must not unmount or wipe"
        r = call(drive, gone, capsys)
        assert r.get("changed") is True, r
        assert not os.path.ismount(mnt)
        assert blkid(blank) == {}
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True, check=False)
    r = call(drive, gone, capsys)
    assert r["changed"] is False and "not a DirectPV drive" in r["msg"]


@pytest.fixture
def directpv_drive(loopdev: Callable[..., str], tmp_path: Path) -> str:
    """A MinIO DirectPV drive as its initDevice and NodeStageVolume leave it, with two volumes holding data."""
    d = loopdev("600M")

    def mount(dev: str) -> Path:
        mp = tmp_path / "dpv"
        mp.mkdir()
        subprocess.run(["mount", dev, str(mp)], check=True)
        return mp

    make_directpv_drive(d, mount, volumes=2)
    return d


def test_directpv_drive_is_refused_with_and_without_force(
    directpv_drive: str, capsys: pytest.CaptureFixture[str]
) -> None:
    before = sha256_device(directpv_drive)
    info = call(drive_info, {"allow_loop": True, "include_unavailable": True}, capsys)
    row = next(d for d in info["devices"] if d["path"] == directpv_drive)
    assert not row["available"] and not row["ours"] and [r["code"] for r in row["reasons"]] == ["directpv-drive"]
    base = {"device": directpv_drive, "allow_loop": True}
    for extra in ({}, {"force": True}, {"force": True, "safe_mode": False}, {"_ansible_check_mode": True}):
        r = call(drive, dict(base, **extra), capsys)
        assert r["failed"] and r["reasons"] == ["directpv-drive"], extra
        assert "MinIO DirectPV drive" in r["msg"] and "2 volume directories" in r["msg"] and "migration" in r["msg"]
        assert "set force" not in r["msg"] and "format it anyway" not in r["msg"]
    r = call(drive, dict(base, force=True, expected_token=row["id"]), capsys)
    assert r["failed"] and r["reasons"] == ["directpv-drive"]
    r = call(drive, {"device": directpv_drive, "state": "absent", "wipe": True, "store_volumes": []}, capsys)
    assert r["failed"] and "MinIO DirectPV drive" in r["msg"] and "never wiped here" in r["msg"]
    r = call(drive, {"device": directpv_drive, "state": "absent"}, capsys)
    assert r["changed"] is False and "MinIO DirectPV drive" in r["msg"]
    assert sha256_device(directpv_drive) == before, "the module changed a DirectPV drive"


SYSTEM_PYTHON = "/usr/bin/python3"


def run_unprivileged(module: str, args: Dict[str, Any], tmp_path: Path) -> Dict[str, Any]:
    """Run a module as user nobody (setpriv), with the system Python: the venv's interpreter lives under
    /root, which nobody cannot enter; the venv's site-packages (ansible, this collection) are readable."""
    import sys
    import sysconfig

    if not os.path.exists(SYSTEM_PYTHON):
        pytest.skip(f"needs {SYSTEM_PYTHON} to run a module as an unprivileged user")
    ver = subprocess.run(
        [SYSTEM_PYTHON, "-c", "import sys; print(sys.version_info[:2])"], capture_output=True, text=True, check=True
    ).stdout.strip()
    if ver != str(sys.version_info[:2]):
        pytest.skip(f"{SYSTEM_PYTHON} is {ver}, the venv's site-packages are built for {sys.version_info[:2]}")
    import shutil
    import tempfile

    share = tempfile.mkdtemp(prefix="directpv-unpriv-")  # pytest's tmp_path sits under a 0700 directory
    try:
        os.chmod(share, 0o755)
        argfile = os.path.join(share, "args.json")
        with open(argfile, "w", encoding="utf-8") as f:
            json.dump({"ANSIBLE_MODULE_ARGS": args}, f)
        os.chmod(argfile, 0o644)
        env = {"PATH": "/usr/bin:/bin", "HOME": share, "PYTHONPATH": sysconfig.get_paths()["purelib"]}
        cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", SYSTEM_PYTHON, "-m"]
        cmd += [f"ansible_collections.directpv.csi.plugins.modules.{module}", argfile]
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=share, check=False)
    finally:
        shutil.rmtree(share, ignore_errors=True)
    assert out.stdout.strip(), out.stderr
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def test_drive_info_without_root_reports_unreadable_devices(ext4: str, tmp_path: Path) -> None:
    r = run_unprivileged("drive_info", {"allow_loop": True, "include_unavailable": True}, tmp_path)
    assert not r.get("failed"), r
    row = next(d for d in r["devices"] if d["path"] == ext4)
    assert row["available"] is False and row["available_with_force"] is False
    assert [x["code"] for x in row["reasons"]] == ["unreadable"]
    assert "become" in row["description"]
    assert r["summary"]["unreadable"] >= 1 and r["summary"]["available"] == 0
    warnings = json.dumps(r.get("warnings"))
    assert os.path.basename(ext4) in warnings and "unreadable" in warnings
    assert os.path.basename(ext4) not in [d["name"] for d in r["drives_yaml"]["drives"]]


def test_drive_module_without_root_fails_early_with_a_become_hint(ext4: str, tmp_path: Path) -> None:
    r = run_unprivileged("drive", {"device": ext4, "allow_loop": True, "force": True}, tmp_path)
    assert r["failed"] and "needs root" in r["msg"] and "become" in r["hint"]
    assert blkid(ext4)["TYPE"] == "ext4"


def test_absent_leaves_foreign_filesystems_alone(ext4: str, capsys: pytest.CaptureFixture[str]) -> None:
    r = call(drive, {"device": ext4, "state": "absent", "wipe": True}, capsys)
    assert r["changed"] is False
    assert blkid(ext4)["TYPE"] == "ext4"


def test_drive_info_lists_loops_with_reasons(blank: str, ext4: str, capsys: pytest.CaptureFixture[str]) -> None:
    r = call(drive_info, {"include_loop": True, "include_unavailable": True, "node": "w1"}, capsys)
    rows = {d["path"]: d for d in r["devices"]}
    assert rows[blank]["available"] is False and "loop" in [x["code"] for x in rows[blank]["reasons"]]
    r = call(drive_info, {"allow_loop": True, "node": "w1"}, capsys)
    rows = {d["path"]: d for d in r["devices"]}
    assert rows[blank]["available"] is True
    assert ext4 not in rows  # unavailable devices are listed only on request
    assert r["table"].splitlines()[0].split() == [
        "ID",
        "NODE",
        "DRIVE",
        "SIZE",
        "FILESYSTEM",
        "MAKE",
        "AVAILABLE",
        "DESCRIPTION",
    ]
    names = [d["name"] for d in r["drives_yaml"]["drives"]]
    assert os.path.basename(blank) in names and os.path.basename(ext4) not in names
    assert r["drives_yaml"]["name"] == "w1"


def test_drive_select_errors_name_node_and_device(
    blank: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    regular = tmp_path / "file.img"
    regular.write_text("")
    name = os.path.basename(blank)
    cases = [
        (["nvme9n9"], "'nvme9n9' on node w7: no such block device"),
        ([str(regular)], "is a regular file, not a block device"),
        (["/dev/disk/by-id/directpv-test-missing"], "does not exist"),
        ([name, blank], "listed twice"),
    ]
    for drives, expect in cases:
        r = call(drive_select, {"drives": drives, "allow_loop": True, "node": "w7"}, capsys)
        assert r["failed"], drives
        assert expect in r["msg"] and "node w7" in r["msg"], r["msg"]
    r = call(drive_select, {"drives": [name], "allow_loop": True, "node": "w7"}, capsys)
    assert [s["name"] for s in r["selected"]] == [name] and r["selected"][0]["token"].startswith("7:")
    r = call(drive_select, {"drives": [], "auto_select": True, "filters": {"include": ["nomatch*"]}}, capsys)
    assert r["failed"] and "match no device" in r["msg"]
    r = call(drive_select, {"drives": [], "filters": {"colour": "red"}}, capsys)
    assert r["failed"] and "unknown key(s) colour" in r["msg"]


def test_drive_select_refuses_the_root_disk(capsys: pytest.CaptureFixture[str]) -> None:
    info = call(drive_info, {"include_unavailable": True}, capsys)
    roots = [d["name"] for d in info["devices"] if "root-disk" in [x["code"] for x in d["reasons"]]]
    if not roots:
        pytest.skip("this machine shows no root disk among its block devices (root on a network or overlay fs)")
    r = call(drive_select, {"drives": [roots[0]]}, capsys)
    assert r["failed"] and roots[0] in r["msg"] and "root" in r["msg"]
