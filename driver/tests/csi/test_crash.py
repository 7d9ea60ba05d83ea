"""Crash safety: kill -9 the standalone server in the middle of a storm, restart it.

* create storm (seeded drives, Identity + Controller): the store is consistent, every
  acknowledged volume is there on the same drive, retries of every request (acknowledged
  or cut off) are answered idempotently, and deleting everything leaves no reservation.
* stage storm (real loop drives, the Node service too; root): files written into
  published volumes before the crash are there after it, the drive mounts are
  recovered, every call can be retried, and everything tears down to zero.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import grpc
import pytest
from csi.csi_helpers import (
    GiB,
    MiB,
    Standalone,
    create_req,
    format_loop_drive,
    mount_cap,
    unmount_under,
)
from directpv_csi.core.models import Drive
from directpv_csi.csi.proto import csi_pb2 as pb
from directpv_csi.csi.proto import csi_pb2_grpc as pbg
from directpv_csi.store.embedded import EmbeddedStore


def _consistent(state: Path) -> EmbeddedStore:
    store = EmbeddedStore(str(state / "store.sqlite"), read_only=True)
    assert store.check() == []
    return store


def test_kill9_during_create_storm(short_dir: Path) -> None:
    state = short_dir / "state"
    state.mkdir()
    seed = EmbeddedStore(str(state / "store.sqlite"))
    for i in range(5):
        seed.put_drive(Drive(drive_id=f"d{i}", node=f"n{i % 2}", name=f"sd{i}", total=4 * GiB))
    seed.close()

    server = Standalone(state, no_node=True).start()
    acked: Dict[str, Any] = {}
    attempted: List[Tuple[str, int]] = []
    lock = threading.Lock()
    stop = threading.Event()

    def storm(worker: int) -> None:
        with grpc.insecure_channel(server.endpoint) as ch:
            ctrl = pbg.ControllerStub(ch)
            i = 0
            while not stop.is_set():
                name, size = f"w{worker}-{i:04d}", (16 + 16 * (i % 4)) * MiB
                i += 1
                with lock:
                    attempted.append((name, size))
                try:
                    vol = ctrl.CreateVolume(create_req(name, size), timeout=10).volume
                except grpc.RpcError:
                    continue  # refused, or cut off by the kill
                with lock:
                    acked[name] = vol

    try:
        threads = [threading.Thread(target=storm, args=(w,)) for w in range(8)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 20
        while len(acked) < 150 and time.monotonic() < deadline:
            time.sleep(0.02)
        server.kill9()  # mid-storm: calls are in flight right now
        stop.set()
        for t in threads:
            t.join()
        assert len(acked) >= 150

        store = _consistent(state)
        try:
            for name, vol in acked.items():
                rec = store.get_volume(name)
                assert rec is not None, f"acknowledged volume {name} lost"
                assert (rec.drive_id, rec.size) == (vol.volume_context["directpv.dev/drive-id"], vol.capacity_bytes)
        finally:
            store.close()

        server.start()
        with grpc.insecure_channel(server.endpoint) as ch:
            ctrl = pbg.ControllerStub(ch)

            def retry(item: Tuple[str, int]) -> Tuple[str, Any]:
                try:
                    return "ok", ctrl.CreateVolume(create_req(*item), timeout=30).volume
                except grpc.RpcError as exc:
                    return exc.code().name, None

            with ThreadPoolExecutor(32) as pool:
                results = dict(zip([n for n, _ in attempted], pool.map(retry, attempted)))
            for name, (kind, vol) in results.items():
                assert kind in ("ok", "RESOURCE_EXHAUSTED"), (name, kind)
                if name in acked:
                    assert kind == "ok" and vol == acked[name]
            store = _consistent(state)
            names = [v.name for v in store.iter_all_volumes()]
            store.close()
            for name in names:
                ctrl.DeleteVolume(pb.DeleteVolumeRequest(volume_id=name), timeout=30)
        store = _consistent(state)
        try:
            assert store.list_volumes() == []
            assert [(d.allocated, d.volume_count) for d in store.list_drives()] == [(0, 0)] * 5
        finally:
            store.close()
    finally:
        stop.set()
        server.stop()


@pytest.mark.root
def test_kill9_during_stage_storm(loopdev: Callable[..., str], short_dir: Path) -> None:
    devs = [loopdev("400M") for _ in range(2)]
    for d in devs:
        format_loop_drive(d)
    kubelet = short_dir / "kubelet"
    kubelet.mkdir()
    state = short_dir / "state"
    server = Standalone(state, devices=devs, kubelet_dir=kubelet)
    n_vols = 24
    written: Dict[str, bytes] = {}
    lock = threading.Lock()

    def paths(name: str) -> Tuple[str, str]:
        staging = kubelet / "plugins" / name / "globalmount"
        target = kubelet / "pods" / name / "volumes" / "mount"
        return str(staging), str(target)

    def bring_up(ch: Any, name: str, write: bool) -> None:
        node = pbg.NodeStub(ch)
        staging, target = paths(name)
        os.makedirs(staging, exist_ok=True)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        node.NodeStageVolume(pb.NodeStageVolumeRequest(volume_id=name, staging_target_path=staging,
                                                       volume_capability=mount_cap()), timeout=30)
        node.NodePublishVolume(pb.NodePublishVolumeRequest(volume_id=name, staging_target_path=staging,
                                                           target_path=target, volume_capability=mount_cap()),
                               timeout=30)
        if write:
            data = os.urandom(4096) + name.encode()
            with open(os.path.join(target, "data"), "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            with lock:
                written[name] = data

    try:
        server.start()
        names = [f"st-{i:02d}" for i in range(n_vols)]
        with grpc.insecure_channel(server.endpoint) as ch:
            ctrl = pbg.ControllerStub(ch)
            for name in names:
                ctrl.CreateVolume(create_req(name, 8 * MiB), timeout=30)

            def up(name: str) -> None:
                with contextlib.suppress(grpc.RpcError):  # cut off by the kill
                    bring_up(ch, name, write=True)

            with ThreadPoolExecutor(6) as pool:
                futures = [pool.submit(up, n) for n in names]
                deadline = time.monotonic() + 60
                while len(written) < n_vols // 2 and time.monotonic() < deadline:
                    time.sleep(0.005)
                server.kill9()
                for f in futures:
                    f.result()
        assert written, "nothing was written before the kill"
        _consistent(state).close()

        server.start()  # the registry re-finds and re-mounts the drives; calls are retried as kubelet would
        with grpc.insecure_channel(server.endpoint) as ch:
            for name in names:
                bring_up(ch, name, write=False)
            for name, data in written.items():
                with open(os.path.join(paths(name)[1], "data"), "rb") as fh:
                    assert fh.read() == data, f"data of {name} changed across the crash"
            node, ctrl = pbg.NodeStub(ch), pbg.ControllerStub(ch)
            for name in names:
                staging, target = paths(name)
                node.NodeUnpublishVolume(pb.NodeUnpublishVolumeRequest(volume_id=name, target_path=target),
                                         timeout=30)
                node.NodeUnstageVolume(pb.NodeUnstageVolumeRequest(volume_id=name, staging_target_path=staging),
                                       timeout=30)
                ctrl.DeleteVolume(pb.DeleteVolumeRequest(volume_id=name), timeout=30)
        store = _consistent(state)
        try:
            assert store.list_volumes() == []
            assert all(d.allocated == 0 and d.status == "Ready" for d in store.list_drives())
            assert len(store.list_drives()) == 2
        finally:
            store.close()
    finally:
        server.stop()
        unmount_under(short_dir)
