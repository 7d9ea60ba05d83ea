"""`directpv-csi client` against a real `directpv-csi standalone` process."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Callable, List

import pytest
from csi.csi_helpers import (
    Standalone,
    format_loop_drive,
    unmount_under,
)
from directpv_csi.core.models import Drive
from directpv_csi.store.embedded import EmbeddedStore

from testsupport import PYTHON

GiB = 1024**3


def client(server: Standalone, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYTHON, "-m", "directpv_csi.cmd.main", "client", "--endpoint", server.endpoint, *args],
                          capture_output=True, text=True, timeout=60)


def ok(server: Standalone, *args: str) -> str:
    res = client(server, *args)
    assert res.returncode == 0, res.stderr
    return res.stdout


def test_controller_actions_and_errors(short_dir: Path) -> None:
    state = short_dir / "state"
    state.mkdir()
    seed = EmbeddedStore(str(state / "store.sqlite"))
    seed.put_drive(Drive(drive_id="d1", node="n1", name="sdb", total=4 * GiB))
    seed.put_drive(Drive(drive_id="d2", node="n2", name="sdc", total=2 * GiB))
    seed.close()
    server = Standalone(state, no_node=True).start()
    try:
        assert ok(server, "create", "v1", "--size", "1GiB", "--node", "n2") == \
            "volume v1: 1 GiB on node n2, drive d2\n"
        assert "on node n1, drive d1" in ok(server, "create", "v2", "--size", "512Mi",
                                            "--param", "directpv.dev/placement=most-free")
        listing = ok(server, "list").splitlines()
        assert listing[0].split() == ["VOLUME", "SIZE", "NODE", "DRIVE"]
        assert [line.split()[0] for line in listing[1:]] == ["v1", "v2"]
        assert ok(server, "capacity") == "available 4.5 GiB, largest volume 3.5 GiB\n"
        assert ok(server, "capacity", "--node", "n2") == "available 1 GiB, largest volume 1 GiB\n"
        assert ok(server, "expand", "v1", "--size", "2GiB") == "volume v1: 2 GiB reserved\n"
        info = ok(server, "info", "--state-dir", str(state))
        assert "plugin csi.directpv.dev" in info and "ready" in info
        drive_lines = [line.split() for line in info.splitlines() if line.startswith(("n1 ", "n2 "))]
        assert [(f[0], f[1], f[2]) for f in drive_lines] == [("n1", "sdb", "d1"), ("n2", "sdc", "d2")]
        assert any(line.startswith("v1 ") and "created" in line for line in info.splitlines())

        bad = client(server, "create", "v3", "--size", "100GiB")
        assert bad.returncode == 1 and "RESOURCE_EXHAUSTED" in bad.stderr and "drive d1" in bad.stderr
        bad = client(server, "create", "v3", "--param", "nokey")
        assert bad.returncode == 2 and "KEY=VALUE" in bad.stderr
        bad = client(server, "create", "v3", "--size", "lots")
        assert bad.returncode == 2 and "not a size" in bad.stderr

        assert ok(server, "delete", "v1") == "volume v1: deleted\n"
        assert ok(server, "delete", "v1") == "volume v1: deleted\n"  # idempotent
    finally:
        server.stop()


@pytest.mark.root
def test_full_volume_lifecycle(loopdev: Callable[..., str], short_dir: Path) -> None:
    dev = loopdev("400M")
    drive_id = format_loop_drive(dev)
    kubelet = short_dir / "kubelet"
    state = short_dir / "state"
    server = Standalone(state, devices=[dev], kubelet_dir=kubelet, extra=["--topology", "directpv.dev/zone=z1"])
    staging, target = str(kubelet / "plugins" / "v" / "globalmount"), str(kubelet / "pods" / "p" / "v")
    try:
        server.start()
        assert f"drive {drive_id}" in ok(server, "create", "v", "--size", "64MiB")
        ok(server, "stage", "v", "--staging-path", staging)
        ok(server, "publish", "v", "--staging-path", staging, "--target-path", target)
        with open(os.path.join(target, "hello"), "wb") as f:
            f.write(b"x" * (5 * 2**20))
        stats = ok(server, "stats", "v", "--path", target)
        assert "bytes used" in stats and "condition normal" in stats
        info = ok(server, "info", "--state-dir", str(state))
        assert "node test-node, topology {'directpv.dev/node': 'test-node', 'directpv.dev/zone': 'z1'}" in info
        vol_line: List[str] = next(line for line in info.splitlines() if line.startswith("v ")).split()
        assert vol_line[-1] == target and "published" in vol_line
        busy = client(server, "delete", "v")
        assert busy.returncode == 1 and "FAILED_PRECONDITION" in busy.stderr
        ok(server, "unpublish", "v", "--target-path", target)
        ok(server, "unstage", "v", "--staging-path", staging)
        ok(server, "delete", "v")
        assert "no volumes" in ok(server, "list")
    finally:
        server.stop()
        unmount_under(short_dir)
