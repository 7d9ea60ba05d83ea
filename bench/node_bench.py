"""NodeStage + NodePublish (and NodeUnpublish + NodeUnstage) over the real unix socket.

    .venv/bin/python bench/node_bench.py [--volumes 300] [--synchronous FULL|NORMAL|both]   (root)

Sets up one loop-backed XFS drive formatted by our format code. A server process
(like the standalone driver: embedded SQLite store, drive registry, Node service
on a unix socket) reserves ``--volumes`` volumes; this process is the client
(like kubelet) and times, per volume, NodeStageVolume + NodePublishVolume, then
NodeUnpublishVolume + NodeUnstageVolume, plus a no-op RPC (NodeGetCapabilities)
as the floor. The server reports the time of its store commits (one per call).
Runs once per SQLite synchronous mode (standalone's default is FULL).

Target: stage + publish p50 <= 3 ms. Exit status 1 when the FULL run misses it.
Cleans up its mounts (by exact path under its temp dir) and its loop device.
"""

from __future__ import annotations

import argparse
import json
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

from directpv_csi.core.models import Device, Volume
from directpv_csi.store.embedded import EmbeddedStore

TARGET_P50_MS = 3.0


def pct(xs: List[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


def show(name: str, xs: List[float]) -> None:
    print(f"  {name:<36} n={len(xs):<5} p50 {statistics.median(xs):7.3f} ms   p99 {pct(xs, 99):7.3f} ms"
          f"   mean {statistics.fmean(xs):7.3f} ms")


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


def _timed_method(fn: Callable[..., object], into: List[float]) -> Callable[..., object]:
    def timed(request: object, context: object) -> object:
        t0 = time.perf_counter()
        try:
            return fn(request, context)
        finally:
            into.append((time.perf_counter() - t0) * 1000.0)

    return timed


def names_for(count: int) -> List[str]:
    return [f"pvc-bench-{i:05d}" for i in range(count)]


def serve(root: Path, volumes: int, synchronous: str) -> int:
    """The server process: store + registry + Node service; reserves the volumes, prints
    READY, serves until stdin closes, then prints its store-commit times as JSON."""
    from directpv_csi.csi.node import NodeServicer
    from directpv_csi.csi.server import create_server
    from directpv_csi.device.probe import probe
    from directpv_csi.node.config import NodeConfig
    from directpv_csi.node.registry import DriveRegistry

    kubelet = root / "kubelet"
    config = NodeConfig(node_id="bench", state_dir=root / f"state-{synchronous}", kubelet_dirs=(kubelet,),
                        allow_loop=True)
    store = EmbeddedStore(str(root / f"store-{synchronous}.db"), synchronous=synchronous)
    prefix = str(root) + "/"

    def ours(errors: Dict[str, str]) -> Sequence[Device]:
        return [d for d in probe(errors=errors) if d.loop_backing_file.startswith(prefix)]

    registry = DriveRegistry(config, store, probe=ours)
    drive = registry.sync()[0]
    md = registry.mounted(drive.drive_id)
    for n in names_for(volumes):
        store.reserve_volume(Volume(name=n, drive_id=drive.drive_id, node="bench", size=2**20, project_id=0))
    timed_store = TimedStore(store)
    servicer = NodeServicer(config, timed_store, registry)  # type: ignore[arg-type]
    method_ms: Dict[str, List[float]] = {}
    for method in ("NodeStageVolume", "NodePublishVolume", "NodeUnpublishVolume", "NodeUnstageVolume"):
        setattr(servicer, method, _timed_method(getattr(servicer, method), method_ms.setdefault(method, [])))
    server, address = create_server(f"unix://{root}/csi-{synchronous}.sock", servicer)
    print(json.dumps({"address": address, "quota": bool(md and md.quota)}), flush=True)
    sys.stdin.read()  # the client closes stdin when done
    server.stop(None).wait()
    print(json.dumps({"write_ms": timed_store.write_ms, "method_ms": method_ms}), flush=True)
    store.close()
    return 0


def measure(root: Path, volumes: int, synchronous: str) -> float:
    """Start a server process, time the calls from here; returns the stage+publish p50."""
    import grpc
    from directpv_csi.csi.proto import csi_pb2, csi_pb2_grpc

    kubelet = root / "kubelet"
    for n in names_for(volumes):
        (kubelet / "staging" / synchronous / n).mkdir(parents=True)
        (kubelet / "pods" / synchronous / n).mkdir(parents=True)
    child = subprocess.Popen([sys.executable, __file__, "--serve", str(root), "--volumes", str(volumes),
                              "--synchronous", synchronous], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True)
    try:
        assert child.stdout is not None and child.stdin is not None
        hello = json.loads(child.stdout.readline())
        channel = grpc.insecure_channel(hello["address"])
        stub = csi_pb2_grpc.NodeStub(channel)
        cap = csi_pb2.VolumeCapability(
            mount=csi_pb2.VolumeCapability.MountVolume(fs_type="xfs"),
            access_mode=csi_pb2.VolumeCapability.AccessMode(
                mode=csi_pb2.VolumeCapability.AccessMode.SINGLE_NODE_WRITER),
        )
        noop: List[float] = []
        for _ in range(max(200, volumes)):
            t0 = time.perf_counter()
            stub.NodeGetCapabilities(csi_pb2.NodeGetCapabilitiesRequest())
            noop.append((time.perf_counter() - t0) * 1000.0)
        stage_only: List[float] = []
        stage_pub: List[float] = []
        teardown: List[float] = []
        paths = {n: (str(kubelet / "staging" / synchronous / n), str(kubelet / "pods" / synchronous / n / "mount"))
                 for n in names_for(volumes)}
        for n, (staging, target) in paths.items():
            t0 = time.perf_counter()
            stub.NodeStageVolume(csi_pb2.NodeStageVolumeRequest(volume_id=n, staging_target_path=staging,
                                                                volume_capability=cap))
            t1 = time.perf_counter()
            stub.NodePublishVolume(csi_pb2.NodePublishVolumeRequest(
                volume_id=n, staging_target_path=staging, target_path=target, volume_capability=cap))
            t2 = time.perf_counter()
            stage_only.append((t1 - t0) * 1000.0)
            stage_pub.append((t2 - t0) * 1000.0)
        for n, (staging, target) in paths.items():
            t0 = time.perf_counter()
            stub.NodeUnpublishVolume(csi_pb2.NodeUnpublishVolumeRequest(volume_id=n, target_path=target))
            stub.NodeUnstageVolume(csi_pb2.NodeUnstageVolumeRequest(volume_id=n, staging_target_path=staging))
            teardown.append((time.perf_counter() - t0) * 1000.0)
        channel.close()
        child.stdin.close()
        report = json.loads(child.stdout.readline())
        writes = report["write_ms"]
        child.wait(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()

    print(f"node_bench: {volumes} volumes on one loop XFS drive, server in its own process, store "
          f"synchronous={synchronous}, project quota {'on' if hello['quota'] else 'off (kernel without XFS quota)'}")
    show("no-op RPC (NodeGetCapabilities)", noop)
    show("NodeStage", stage_only)
    show("NodeStage + NodePublish", stage_pub)
    show("NodeUnpublish + NodeUnstage", teardown)
    for method, xs in report["method_ms"].items():
        show(f"  server: {method}", xs)
    server_pair = [a + b for a, b in zip(report["method_ms"]["NodeStageVolume"],
                                         report["method_ms"]["NodePublishVolume"])]
    show("  server: NodeStage + NodePublish", server_pair)
    show(f"  server: one store commit ({synchronous})", writes)
    p50 = statistics.median(stage_pub)
    floor = statistics.median(noop)
    print(f"  stage+publish p50 {p50:.3f} ms vs target {TARGET_P50_MS:.1f} ms: {p50 / TARGET_P50_MS:.2f}x of target "
          f"({'MET' if p50 <= TARGET_P50_MS else 'MISSED'}); inside the server {statistics.median(server_pair):.3f} ms "
          f"(of which 2 commits {2 * statistics.median(writes):.3f} ms); 2 no-op RPCs {2 * floor:.3f} ms")
    return p50


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--volumes", type=int, default=300)
    ap.add_argument("--synchronous", default="both", choices=("FULL", "NORMAL", "both"),
                    help="SQLite synchronous mode(s) of the store (standalone mode uses FULL)")
    ap.add_argument("--serve", metavar="ROOT", help=argparse.SUPPRESS)  # internal: the server process
    args = ap.parse_args()
    if args.serve:
        return serve(Path(args.serve), args.volumes, args.synchronous)
    if os.geteuid() != 0:
        print("node_bench: needs root (loop device, mounts)")
        return 2
    from directpv_csi.device.format import format_drive

    modes = ("FULL", "NORMAL") if args.synchronous == "both" else (args.synchronous,)
    root = Path(tempfile.mkdtemp(prefix="dpv-nb-"))
    dev = ""
    results = {}
    try:
        img = root / "drive.img"
        subprocess.run(["truncate", "-s", "1G", str(img)], check=True)
        dev = subprocess.run(["losetup", "--find", "--show", str(img)], check=True, capture_output=True,
                             text=True).stdout.strip()
        format_drive(dev, allow_loop=True, min_size=300 * 2**20, node="bench")
        for mode in modes:
            results[mode] = measure(root, args.volumes, mode)
    finally:
        unmount_under(root)
        if dev:
            subprocess.run(["losetup", "--detach", dev], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)
    judged = results.get("FULL", next(iter(results.values())))
    return 0 if judged <= TARGET_P50_MS else 1


if __name__ == "__main__":
    sys.exit(main())
