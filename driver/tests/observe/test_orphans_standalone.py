"""Orphans and tombstones in a real `directpv-csi standalone` process on a loop drive formatted by
us: an orphan directory is kept and reported (``directpv_orphan_volumes``, `directpv-csi client
orphans`), the check-mode clean only previews, the clean makes the node remove it; DeleteVolume
through the real CSI socket removes the volume's data (its tombstone), nothing else."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Callable

import grpc
import pytest
from csi.csi_helpers import (
    MiB,
    Standalone,
    create_req,
    format_loop_drive,
    mount_cap,
    unmount_under,
)
from directpv_csi.csi.proto import csi_pb2 as pb
from directpv_csi.csi.proto import csi_pb2_grpc as pbg
from observe.observe_helpers import metrics_url, one, scrape, wait_for

from testsupport import PYTHON

pytestmark = [pytest.mark.root, pytest.mark.slow]

NODE = "orphan-node"


def orphans_cli(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYTHON, "-m", "directpv_csi.cmd.main", "client", "orphans", "--state-dir", str(state),
                           *args], capture_output=True, text=True, timeout=60)


def _tree_digest(path: Path) -> str:
    h = hashlib.sha256()
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for f in sorted(files):
            p = os.path.join(root, f)
            h.update(os.path.relpath(p, path).encode() + b"\0" + Path(p).read_bytes())
    return h.hexdigest()


def test_orphan_reported_kept_and_cleaned_tombstone_purges(loopdev: Callable[..., str], short_dir: Path) -> None:
    dev = loopdev("400M")
    drive = format_loop_drive(dev)
    kubelet = short_dir / "kubelet"
    kubelet.mkdir()
    state = short_dir / "state"
    server = Standalone(state, devices=[dev], kubelet_dir=kubelet, node_id=NODE,
                        extra=["--metrics-address", "127.0.0.1:0"])
    try:
        server.start()
        base = metrics_url(server.log)
        mnt = state / "mnt" / drive
        assert one(scrape(base), "directpv_orphan_volumes", drive=drive, node=NODE) == 0
        orphan = mnt / "pvc-orphan"
        orphan.mkdir()
        (orphan / "data.bin").write_bytes(os.urandom(3 * MiB))
        digest = _tree_digest(orphan)
        wait_for("the orphan reported", lambda: one(scrape(base), "directpv_orphan_volumes", drive=drive,
                                                    node=NODE) == 1, log=server.log)
        listed = json.loads(orphans_cli(state, "--json").stdout)["orphans"]
        assert [(o["name"], o["drive_id"], o["node"], o["files"]) for o in listed] == [("pvc-orphan", drive, NODE, 1)]
        assert listed[0]["bytes_used"] >= 3 * MiB

        # the preview: what would go, nothing recorded, nothing removed
        res = orphans_cli(state, "--clean", "pvc-orphan", "--check")
        assert res.returncode == 0, res.stderr
        assert "pvc-orphan" in res.stdout and "would be removed" in res.stdout
        time.sleep(2.5)  # two sync rounds
        assert _tree_digest(orphan) == digest
        assert one(scrape(base), "directpv_tombstones", drive=drive, node=NODE) == 0

        with grpc.insecure_channel(server.endpoint) as ch:
            ctrl, node = pbg.ControllerStub(ch), pbg.NodeStub(ch)
            ctrl.CreateVolume(create_req("pvc-live", 32 * MiB), timeout=30)
            staging = kubelet / "plugins" / "pvc-live"
            staging.mkdir(parents=True)
            node.NodeStageVolume(pb.NodeStageVolumeRequest(volume_id="pvc-live", staging_target_path=str(staging),
                                                           volume_capability=mount_cap()), timeout=30)
            (staging / "live.bin").write_bytes(b"live" * 1024)
            # a live volume is not an orphan: refused, nothing recorded
            res = orphans_cli(state, "--clean", "pvc-live")
            assert res.returncode == 2 and "not an orphan" in res.stderr

            res = orphans_cli(state, "--clean", "pvc-orphan")
            assert res.returncode == 0, res.stderr
            wait_for("the orphan removed", lambda: not orphan.exists(), log=server.log)
            wait_for("no orphan reported", lambda: one(scrape(base), "directpv_orphan_volumes", drive=drive,
                                                       node=NODE) == 0, log=server.log)
            assert orphans_cli(state, "--clean", "pvc-orphan").returncode == 0  # gone: no change
            assert (mnt / "pvc-live" / "live.bin").read_bytes() == b"live" * 1024
            assert json.loads((mnt / ".directpv" / "volumes" / "pvc-live.json").read_text())["name"] == "pvc-live"

            # DeleteVolume: the tombstone removes the volume's directory and metadata, nothing else
            node.NodeUnstageVolume(pb.NodeUnstageVolumeRequest(volume_id="pvc-live",
                                                               staging_target_path=str(staging)), timeout=30)
            ctrl.DeleteVolume(pb.DeleteVolumeRequest(volume_id="pvc-live"), timeout=30)
            wait_for("the deleted volume's directory removed", lambda: not (mnt / "pvc-live").exists(),
                     log=server.log)
            assert not (mnt / ".directpv" / "volumes" / "pvc-live.json").exists()
            assert (mnt / ".directpv" / "meta.json").is_file()
            assert one(scrape(base), "directpv_tombstones", drive=drive, node=NODE) == 0
    finally:
        server.stop()
        unmount_under(short_dir)
