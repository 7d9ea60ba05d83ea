"""Fixtures for the node side: real loop drives formatted by our format code, a real
SQLite store, a registry that only sees this test's drives. Imported as ``node.node_helpers``;
its fixtures are registered for every test by the root conftest.py's ``pytest_plugins``.

The registry's probe is the real one, filtered to the loop devices whose backing
file lives in this test's tmp_path: other engineers' tests format loop drives on
the same kernel at the same time, and a registry must never touch those.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Sequence

import pytest
from directpv_csi.core.models import Device
from directpv_csi.node.config import NodeConfig
from directpv_csi.node.registry import DriveRegistry
from directpv_csi.store.embedded import EmbeddedStore

from testsupport import backing_file


@dataclass
class OurDrive:
    dev: str  # /dev/loopN (changes when re-attached)
    drive_id: str
    backing: Path


def _mountinfo_points() -> List[str]:
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        return [line.split()[4].encode().decode("unicode_escape") for line in f]


def unmount_under(root: Path) -> None:
    """Lazily unmount every mount point at or below ``root`` (deepest first): exactly the
    mounts this test created, since ``root`` is the test's own tmp_path."""
    prefix = str(root).rstrip("/") + "/"
    for _ in range(5):
        points = [p for p in _mountinfo_points() if p.startswith(prefix)]
        if not points:
            return
        for p in sorted(set(points), key=len, reverse=True):
            subprocess.run(["umount", "-l", p], capture_output=True)


def attach(backing: Path) -> str:
    return subprocess.run(
        ["losetup", "--find", "--show", str(backing)], check=True, capture_output=True, text=True
    ).stdout.strip()


def detach(dev: str) -> None:
    subprocess.run(["losetup", "--detach", dev], check=True, capture_output=True)


@pytest.fixture(name="node_env")
def node_env_fixture(tmp_path: Path) -> Iterator[Dict[str, Path]]:
    state = tmp_path / "state"
    kubelet = tmp_path / "kubelet"
    state.mkdir()
    kubelet.mkdir()
    try:
        yield {"root": tmp_path, "state": state, "kubelet": kubelet}
    finally:
        unmount_under(tmp_path)


@pytest.fixture(name="make_drive")
def make_drive_fixture(loopdev: Callable[..., str], tmp_path: Path) -> Iterator[Callable[..., OurDrive]]:
    """``make_drive(size="400M") -> OurDrive``: a loop device formatted as one of our drives."""
    from directpv_csi.device.format import format_drive

    extra: List[str] = []

    def make(size: str = "400M") -> OurDrive:
        dev = loopdev(size)
        res = format_drive(dev, allow_loop=True, node="node-a", min_size=300 * 2**20)
        backing = Path(
            subprocess.run(
                ["losetup", "--noheadings", "-O", "BACK-FILE", dev], check=True, capture_output=True, text=True
            ).stdout.strip()
        )
        return OurDrive(dev=dev, drive_id=res.drive_id, backing=backing)

    make.reattached = extra  # type: ignore[attr-defined]
    yield make
    # Devices re-attached by tests under new names (the loopdev fixture detaches its own): only while
    # each is still attached to a file under this test's tmp_path (the number may be another's by now).
    prefix = str(tmp_path).rstrip("/") + "/"
    for dev in extra:
        if backing_file(dev).startswith(prefix):
            subprocess.run(["losetup", "--detach", dev], capture_output=True)


def only_under(root: Path) -> Callable[[Dict[str, str]], Sequence[Device]]:
    """The real probe, restricted to loop devices backed by files under ``root``."""
    from directpv_csi.device.probe import probe

    prefix = str(root).rstrip("/") + "/"

    def run(errors: Dict[str, str]) -> Sequence[Device]:
        return [d for d in probe(errors=errors) if d.loop_backing_file.startswith(prefix)]

    return run


@pytest.fixture(name="store")
def store_fixture(tmp_path: Path) -> Iterator[EmbeddedStore]:
    s = EmbeddedStore(str(tmp_path / "store.db"), synchronous="NORMAL")
    try:
        yield s
    finally:
        s.close()


@pytest.fixture(name="config")
def config_fixture(node_env: Dict[str, Path]) -> NodeConfig:
    return NodeConfig(
        node_id="node-a", state_dir=node_env["state"], kubelet_dirs=(node_env["kubelet"],), allow_loop=True
    )


@pytest.fixture(name="registry")
def registry_fixture(config: NodeConfig, store: EmbeddedStore, node_env: Dict[str, Path]) -> Iterator[DriveRegistry]:
    reg = DriveRegistry(config, store, probe=only_under(node_env["root"]))
    try:
        yield reg
    finally:
        reg.stop()


@dataclass
class NodeServer:
    """A real gRPC server (unix socket) serving our NodeServicer over real loop drives."""

    stub: Any  # csi_pb2_grpc.NodeStub (grpc is untyped)
    servicer: object  # NodeServicer
    store: EmbeddedStore
    registry: DriveRegistry
    config: NodeConfig
    drive: OurDrive
    kubelet: Path
    root: Path
    channel: object

    def staging(self, name: str = "vol") -> str:
        p = self.kubelet / "plugins" / "staging" / name
        p.mkdir(parents=True, exist_ok=True)
        return str(p)

    def target(self, name: str = "vol", pod: str = "pod1") -> str:
        parent = self.kubelet / "pods" / pod / "volumes"
        parent.mkdir(parents=True, exist_ok=True)
        return str(parent / name)

    def volume(self, name: str, size: int = 64 * 2**20, node: str = "node-a", drive_id: str = "") -> object:
        from directpv_csi.core.models import Volume

        return self.store.reserve_volume(
            Volume(name=name, drive_id=drive_id or self.drive.drive_id, node=node, size=size, project_id=0)
        )


@pytest.fixture(name="node_server")
def node_server_fixture(
    config: NodeConfig,
    store: EmbeddedStore,
    registry: DriveRegistry,
    make_drive: Callable[..., OurDrive],
    node_env: Dict[str, Path],
) -> Iterator[NodeServer]:
    import shutil
    import tempfile

    import grpc
    from directpv_csi.csi.node import NodeServicer
    from directpv_csi.csi.proto import csi_pb2_grpc
    from directpv_csi.csi.server import create_server

    drive = make_drive()
    registry.sync()
    servicer = NodeServicer(config, store, registry)
    sockdir = tempfile.mkdtemp(prefix="dpv-node-")  # short: unix socket paths are limited to 107 bytes
    server, address = create_server(f"unix://{sockdir}/csi.sock", servicer, max_workers=8)
    channel = grpc.insecure_channel(address)
    try:
        yield NodeServer(
            stub=csi_pb2_grpc.NodeStub(channel),
            servicer=servicer,
            store=store,
            registry=registry,
            config=config,
            drive=drive,
            kubelet=node_env["kubelet"],
            root=node_env["root"],
            channel=channel,
        )
    finally:
        channel.close()
        server.stop(None).wait()
        shutil.rmtree(sockdir, ignore_errors=True)
        unmount_under(node_env["root"])
