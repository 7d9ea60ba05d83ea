"""/metrics, /readyz and /healthz of a real `directpv-csi standalone` process on loop drives
formatted by us: volumes created, staged and published through the real CSI socket (the test
plays kubelet), data written into a published volume, every series read over HTTP and parsed
with prometheus_client's parser."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Callable, Tuple

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
from observe.observe_helpers import get, metrics_url, one, scrape, series, wait_for

pytestmark = [pytest.mark.root, pytest.mark.slow]

NODE = "obs-node"
TENANT_PARAM = "csi.storage.k8s.io/pvc/namespace"  # what external-provisioner's --extra-create-metadata sends


def _publish(ch: grpc.Channel, kubelet: Path, name: str) -> Tuple[str, str]:
    node = pbg.NodeStub(ch)
    staging = kubelet / "plugins" / name / "globalmount"
    target = kubelet / "pods" / name / "volumes" / "mount"
    staging.mkdir(parents=True)
    target.parent.mkdir(parents=True)
    node.NodeStageVolume(pb.NodeStageVolumeRequest(volume_id=name, staging_target_path=str(staging),
                                                   volume_capability=mount_cap()), timeout=30)
    node.NodePublishVolume(pb.NodePublishVolumeRequest(volume_id=name, staging_target_path=str(staging),
                                                       target_path=str(target), volume_capability=mount_cap()),
                           timeout=30)
    return str(staging), str(target)


def _write(path: str, size: int) -> None:
    with open(path, "wb") as f:
        chunk = os.urandom(MiB)
        for _ in range(size // MiB):
            f.write(chunk)
        f.flush()
        os.fsync(f.fileno())


def test_volume_and_drive_series(loopdev: Callable[..., str], short_dir: Path) -> None:
    devs = [loopdev("400M") for _ in range(2)]
    drive_ids = [format_loop_drive(d) for d in devs]
    kubelet = short_dir / "kubelet"
    kubelet.mkdir()
    server = Standalone(short_dir / "state", devices=devs, kubelet_dir=kubelet, node_id=NODE,
                        extra=["--metrics-address", "127.0.0.1:0"])
    try:
        server.start()
        base = metrics_url(server.log)
        assert get(base + "/readyz") == (200, "ok\n")
        assert get(base + "/healthz") == (200, "ok\n")
        assert get(base + "/nothing")[0] == 404

        before = scrape(base)
        for d in drive_ids:  # both drives found, mounted, their devices answering
            assert one(before, "directpv_stats_drive_ready", drive=d, node=NODE) == 1
        assert series(before, "directpv_stats_bytes_used") == []  # nothing published yet

        with grpc.insecure_channel(server.endpoint) as ch:
            ctrl = pbg.ControllerStub(ch)
            vol = ctrl.CreateVolume(create_req("obs-a", 64 * MiB, params={TENANT_PARAM: "tenant-a"}),
                                    timeout=30).volume
            ctrl.CreateVolume(create_req("obs-b", 32 * MiB), timeout=30)  # created, never published
            drive = vol.volume_context["directpv.dev/drive-id"]
            dev = devs[drive_ids.index(drive)]
            _staging, target = _publish(ch, kubelet, "obs-a")
            with pytest.raises(grpc.RpcError):  # counted under its code
                ctrl.DeleteVolume(pb.DeleteVolumeRequest(volume_id="obs-a"), timeout=30)

            published = scrape(base)
            labels = {"tenant": "tenant-a", "volumeID": "obs-a", "node": NODE}
            used0 = one(published, "directpv_stats_bytes_used", **labels)
            assert one(published, "directpv_stats_bytes_total", **labels) == 64 * MiB
            assert series(published, "directpv_stats_bytes_used", volumeID="obs-b") == []  # only published ones
            written0 = one(published, "directpv_stats_drive_total_write_bytes", drive=drive, node=NODE)
            # scrapes hold no resources: each HTTP request has its own thread, the store reads do not
            fds = one(scrape(base), "process_open_fds")
            for _ in range(30):
                scrape(base)
                get(base + "/readyz")
            assert one(scrape(base), "process_open_fds") <= fds + 2

            _write(os.path.join(target, "data"), 16 * MiB)
            subprocess.run(["blockdev", "--flushbufs", dev], check=True)  # the loop device's writes reach stat
            after = scrape(base)
            used1 = one(after, "directpv_stats_bytes_used", **labels)
            assert used1 - used0 >= 16 * MiB, (used0, used1)
            written1 = one(after, "directpv_stats_drive_total_write_bytes", drive=drive, node=NODE)
            assert written1 - written0 >= 16 * MiB, (written0, written1)
            assert one(after, "directpv_stats_drive_write_latency_seconds", drive=drive, node=NODE) > 0
            assert one(after, "directpv_stats_drive_total_read_bytes", drive=drive, node=NODE) > 0  # mount read it
            assert one(after, "directpv_stats_drive_wait_time_seconds", drive=drive, node=NODE) >= 0

            # the CSI calls of this test, by method and gRPC code
            assert one(after, "directpv_csi_calls_total", method="CreateVolume", code="OK") == 2
            assert one(after, "directpv_csi_calls_total", method="NodePublishVolume", code="OK") == 1
            assert one(after, "directpv_csi_calls_total", method="DeleteVolume", code="FAILED_PRECONDITION") == 1
            assert one(after, "process_resident_memory_bytes") > 0

            # the drive under the volume goes away: drive_ready drops to 0, the other drive stays 1
            other = drive_ids[1 - drive_ids.index(drive)]
            unmount_under(kubelet)
            subprocess.run(["umount", "-l", str(short_dir / "state" / "mnt" / drive)], check=True)
            subprocess.run(["losetup", "--detach", dev], check=True)
            lost = wait_for("drive_ready 0 after the device left", lambda: (
                (s := scrape(base)) and one(s, "directpv_stats_drive_ready", drive=drive, node=NODE) == 0 and s),
                log=server.log)
            assert isinstance(lost, dict)
            assert one(lost, "directpv_stats_drive_ready", drive=other, node=NODE) == 1
            assert series(lost, "directpv_stats_drive_total_write_bytes", drive=drive) == []
            assert series(lost, "directpv_stats_bytes_used", volumeID="obs-a") == []
            assert get(base + "/healthz") == (200, "ok\n")  # alive: the server answers
    finally:
        server.stop()
        unmount_under(short_dir)


def test_bad_and_taken_addresses_fail_clearly(short_dir: Path) -> None:
    bad = Standalone(short_dir / "bad", no_node=True, extra=["--metrics-address", "localhost"])
    with pytest.raises(AssertionError, match="exited 1"):
        bad.start()
    assert "--metrics-address 'localhost' is not HOST:PORT" in bad.log.read_text()

    first = Standalone(short_dir / "a", no_node=True, extra=["--metrics-address", "127.0.0.1:0"])
    try:
        first.start()
        base = metrics_url(first.log)
        taken = Standalone(short_dir / "b", no_node=True, extra=["--metrics-address", base.split("//")[1]])
        with pytest.raises(AssertionError, match="exited 1"):
            taken.start()
        text = taken.log.read_text()
        assert "cannot listen on" in text and "choose another --metrics-address" in text
        assert get(base + "/readyz") == (200, "ok\n")  # the first one is untouched
    finally:
        first.stop()
