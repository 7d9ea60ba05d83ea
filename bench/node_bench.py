"""NodeStage + NodePublish (and NodeUnpublish + NodeUnstage) over the real unix socket.

    .venv/bin/python bench/node_bench.py [--volumes 300] [--synchronous FULL|NORMAL]   (root)

Sets up one loop-backed XFS drive formatted by our format code, the embedded
(SQLite) store, the drive registry and the Node service on a temporary socket,
reserves ``--volumes`` volumes in the store, then for each volume times, from the
client: NodeStageVolume + NodePublishVolume (one figure per volume), then
NodeUnpublishVolume + NodeUnstageVolume. Also times a no-op RPC
(NodeGetCapabilities) on the same channel as the floor. Prints p50/p99 and the
ratio to the target: stage + publish p50 <= 3 ms. Exit status 1 when missed.
Cleans up its mounts (by exact path under its temp dir) and its loop device.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "driver" / "src"))

import grpc
from directpv_csi.core.models import Device, Volume
from directpv_csi.csi.node import NodeServicer
from directpv_csi.csi.proto import csi_pb2, csi_pb2_grpc
from directpv_csi.csi.server import create_server
from directpv_csi.device.format import format_drive
from directpv_csi.device.probe import probe
from directpv_csi.node.config import NodeConfig
from directpv_csi.node.registry import DriveRegistry
from directpv_csi.store.embedded import EmbeddedStore

TARGET_P50_MS = 3.0


def pct(xs: List[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


def show(name: str, xs: List[float]) -> None:
    print(f"  {name:<34} n={len(xs):<5} p50 {statistics.median(xs):7.3f} ms   p99 {pct(xs, 99):7.3f} ms"
          f"   mean {statistics.fmean(xs):7.3f} ms")


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1000.0


class TimedStore:
    """The real store, with each update_volume (one SQLite commit) timed."""

    def __init__(self, store: EmbeddedStore) -> None:
        self._store = store
        self.write_ms: List[float] = []

    def update_volume(self, *a: object, **k: object) -> object:
        t0 = time.perf_counter()
        try:
            return self._store.update_volume(*a, **k)  # type: ignore[arg-type]
        finally:
            self.write_ms.append((time.perf_counter() - t0) * 1000.0)

    def __getattr__(self, name: str) -> object:
        return getattr(self._store, name)


def unmount_under(root: Path) -> None:
    prefix = str(root).rstrip("/") + "/"
    for _ in range(5):
        with open("/proc/self/mountinfo", encoding="utf-8") as f:
            points = [ln.split()[4].encode().decode("unicode_escape") for ln in f]
        points = [p for p in points if p.startswith(prefix)]
        if not points:
            return
        for p in sorted(set(points), key=len, reverse=True):
            subprocess.run(["umount", "-l", p], capture_output=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--volumes", type=int, default=300)
    ap.add_argument("--synchronous", default="FULL", choices=("FULL", "NORMAL"),
                    help="SQLite synchronous mode of the store (standalone mode uses FULL)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("node_bench: needs root (loop device, mounts)")
        return 2

    root = Path(tempfile.mkdtemp(prefix="dpv-nb-"))
    dev = ""
    server = None
    try:
        img = root / "drive.img"
        subprocess.run(["truncate", "-s", "1G", str(img)], check=True)
        dev = subprocess.run(["losetup", "--find", "--show", str(img)], check=True, capture_output=True,
                             text=True).stdout.strip()
        format_drive(dev, allow_loop=True, min_size=300 * 2**20, node="bench")
        kubelet = root / "kubelet"
        (kubelet / "staging").mkdir(parents=True)
        (kubelet / "pods").mkdir(parents=True)
        config = NodeConfig(node_id="bench", state_dir=root / "state", kubelet_dirs=(kubelet,), allow_loop=True)
        store = EmbeddedStore(str(root / "store.db"), synchronous=args.synchronous)
        prefix = str(root) + "/"

        def ours(errors: Dict[str, str]) -> Sequence[Device]:
            return [d for d in probe(errors=errors) if d.loop_backing_file.startswith(prefix)]

        registry = DriveRegistry(config, store, probe=ours)
        drives = registry.sync()
        drive_id = drives[0].drive_id
        timed_store = TimedStore(store)
        servicer = NodeServicer(config, timed_store, registry)  # type: ignore[arg-type]
        server, address = create_server(f"unix://{root}/csi.sock", servicer)
        channel = grpc.insecure_channel(address)
        stub = csi_pb2_grpc.NodeStub(channel)
        cap = csi_pb2.VolumeCapability(
            mount=csi_pb2.VolumeCapability.MountVolume(fs_type="xfs"),
            access_mode=csi_pb2.VolumeCapability.AccessMode(
                mode=csi_pb2.VolumeCapability.AccessMode.SINGLE_NODE_WRITER),
        )
        names = [f"pvc-bench-{i:05d}" for i in range(args.volumes)]
        for n in names:
            store.reserve_volume(Volume(name=n, drive_id=drive_id, node="bench", size=2**20, project_id=0))
            (kubelet / "staging" / n).mkdir()
            (kubelet / "pods" / n).mkdir()

        noop = [timed(lambda: stub.NodeGetCapabilities(csi_pb2.NodeGetCapabilitiesRequest()))
                for _ in range(max(200, args.volumes))]
        stage_pub: List[float] = []
        stage_only: List[float] = []
        teardown: List[float] = []
        for n in names:
            staging = str(kubelet / "staging" / n)
            target = str(kubelet / "pods" / n / "mount")
            t0 = time.perf_counter()
            stub.NodeStageVolume(csi_pb2.NodeStageVolumeRequest(volume_id=n, staging_target_path=staging,
                                                                volume_capability=cap))
            t1 = time.perf_counter()
            stub.NodePublishVolume(csi_pb2.NodePublishVolumeRequest(
                volume_id=n, staging_target_path=staging, target_path=target, volume_capability=cap))
            t2 = time.perf_counter()
            stage_only.append((t1 - t0) * 1000.0)
            stage_pub.append((t2 - t0) * 1000.0)
        for n in names:
            staging = str(kubelet / "staging" / n)
            target = str(kubelet / "pods" / n / "mount")
            t0 = time.perf_counter()
            stub.NodeUnpublishVolume(csi_pb2.NodeUnpublishVolumeRequest(volume_id=n, target_path=target))
            stub.NodeUnstageVolume(csi_pb2.NodeUnstageVolumeRequest(volume_id=n, staging_target_path=staging))
            teardown.append((time.perf_counter() - t0) * 1000.0)
        channel.close()

        quota = registry.mounted(drive_id).quota  # type: ignore[union-attr]
        print(f"node_bench: {args.volumes} volumes on one loop XFS drive, store synchronous={args.synchronous}, "
              f"project quota {'on' if quota else 'off (kernel without XFS quota)'}")
        show("no-op RPC (NodeGetCapabilities)", noop)
        show("NodeStage", stage_only)
        show("NodeStage + NodePublish", stage_pub)
        show("NodeUnpublish + NodeUnstage", teardown)
        show(f"  of which one store commit ({args.synchronous})", timed_store.write_ms)
        p50 = statistics.median(stage_pub)
        floor = statistics.median(noop)
        ok = p50 <= TARGET_P50_MS
        print(f"  stage+publish p50 {p50:.3f} ms vs target {TARGET_P50_MS:.1f} ms: "
              f"{p50 / TARGET_P50_MS:.2f}x of target ({'MET' if ok else 'MISSED'}); "
              f"{p50 / floor:.1f}x a no-op RPC ({floor:.3f} ms), i.e. 2 RPCs >= {2 * floor:.3f} ms")
        return 0 if ok else 1
    finally:
        if server is not None:
            server.stop(None).wait()
        unmount_under(root)
        if dev:
            subprocess.run(["losetup", "--detach", dev], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
