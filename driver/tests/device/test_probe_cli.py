"""`directpv-csi devices` (the console script in the venv) on real loop devices this test attaches."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List

import pytest

from testsupport import needs_root, needs_tool

CLI = Path(sys.executable).parent / "directpv-csi"


def _cli(*args: str) -> subprocess.CompletedProcess:  # type: ignore[type-arg]
    if not CLI.exists():
        pytest.skip(f"{CLI} not installed (make setup installs the driver package)")
    return subprocess.run([str(CLI), "devices", *args], capture_output=True, text=True, timeout=60)


def _json(*args: str) -> Dict[str, Dict[str, Any]]:
    proc = _cli(*args, "--json")
    assert proc.returncode == 0, proc.stderr
    records: List[Dict[str, Any]] = json.loads(proc.stdout)
    return {r["name"]: r for r in records}


@needs_root
@needs_tool("mkfs.xfs")
def test_devices_json_reports_our_loop_devices(loopdev: Callable[..., str], tmp_path: Path) -> None:
    empty, small, ro, xfs, mounted = (
        loopdev("600M"),
        loopdev("100M"),
        loopdev("600M", read_only=True),
        loopdev("600M"),
        loopdev("600M"),
    )
    for dev in (xfs, mounted):
        subprocess.run(["mkfs.xfs", "-q", dev], check=True)
    target = tmp_path / "mnt"
    target.mkdir()
    subprocess.run(["mount", mounted, str(target)], check=True)
    try:
        got = _json("--all", "--allow-loop")
    finally:
        subprocess.run(["umount", str(target)], check=True)

    def rec(dev: str) -> Dict[str, Any]:
        return got[os.path.basename(dev)]

    def codes(dev: str) -> List[str]:
        return [r["code"] for r in rec(dev)["reasons"]]

    assert rec(empty)["size"] == 600 * 2**20 and rec(small)["size"] == 100 * 2**20
    assert rec(empty)["available"] and codes(empty) == []
    assert codes(small) == ["too-small"]
    assert codes(ro) == ["read-only"] and rec(ro)["read_only"]
    assert codes(xfs) == ["has-filesystem"] and rec(xfs)["fs_type"] == "xfs" and rec(xfs)["available_with_force"]
    assert codes(mounted) == ["mounted", "has-filesystem"] and rec(mounted)["mountpoints"] == [str(target)]
    r = rec(empty)
    assert r["state_token"].startswith(r["majmin"] + "$") and r["transport"] == "loop"
    assert r["loop_backing_file"].startswith(str(tmp_path))
    assert all(set(x) == {"code", "text", "forceable"} and x["text"] for x in rec(mounted)["reasons"])

    # Without --allow-loop every loop device is refused; without --all only available ones are listed.
    assert "loop" in [x["code"] for x in _json("--all")[os.path.basename(empty)]["reasons"]]
    avail = _json("--allow-loop")
    assert os.path.basename(empty) in avail and os.path.basename(small) not in avail
    assert all(x["available"] for x in avail.values())
    assert "too-small" not in [x["code"] for x in _json("--all", "--allow-loop", "--min-size", "50Mi")[
        os.path.basename(small)]["reasons"]]  # fmt: skip


@needs_root
def test_devices_table(loopdev: Callable[..., str]) -> None:
    dev = loopdev("600M")
    proc = _cli("--all", "--allow-loop")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["ID", "NAME", "SIZE", "FILESYSTEM", "MAKE", "AVAILABLE", "DESCRIPTION"]
    row = [line for line in lines if line.split()[1] == os.path.basename(dev)]
    assert len(row) == 1
    cells = row[0].split()
    assert cells[2:4] == ["600", "MiB"] and cells[-1] == "-" and "YES" in cells


def test_bad_min_size_is_a_usage_error() -> None:
    proc = _cli("--min-size", "lots")
    assert proc.returncode == 2
    assert "--min-size" in proc.stderr and "not a size" in proc.stderr
