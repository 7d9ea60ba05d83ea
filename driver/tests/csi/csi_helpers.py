"""Helpers and fixtures of the CSI tests, imported as ``csi.csi_helpers`` (driver/tests is on
pytest's pythonpath, pytest.ini); its fixtures are registered for every test by the root
conftest.py's ``pytest_plugins``, so tests import only the helpers. A real CSI server
(Identity + Controller, embedded store) on a temporary unix socket.

Unix socket paths are limited to 108 bytes, so sockets live in a short temporary
directory under /tmp rather than in pytest's (long) tmp_path.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional, Sequence

import grpc
import pytest
from directpv_csi.core.models import DRIVE_READY, Drive
from directpv_csi.csi.controller import ControllerServicer
from directpv_csi.csi.identity import IdentityServicer
from directpv_csi.csi.proto import csi_pb2 as pb
from directpv_csi.csi.proto import csi_pb2_grpc as pbg
from directpv_csi.csi.server import create_server
from directpv_csi.store.embedded import EmbeddedStore

from testsupport import DriverProcess

GiB = 1024**3
MiB = 1024**2


def mount_cap(
    mode: pb.VolumeCapability.AccessMode.Mode = pb.VolumeCapability.AccessMode.SINGLE_NODE_WRITER, fs_type: str = ""
) -> Any:
    return pb.VolumeCapability(
        mount=pb.VolumeCapability.MountVolume(fs_type=fs_type), access_mode=pb.VolumeCapability.AccessMode(mode=mode)
    )


def block_cap() -> Any:
    return pb.VolumeCapability(
        block=pb.VolumeCapability.BlockVolume(),
        access_mode=pb.VolumeCapability.AccessMode(mode=pb.VolumeCapability.AccessMode.SINGLE_NODE_WRITER),
    )


def create_req(
    name: str,
    size: int = GiB,
    limit: int = 0,
    params: Optional[dict[str, str]] = None,
    requisite: Optional[List[dict[str, str]]] = None,
    preferred: Optional[List[dict[str, str]]] = None,
    caps: Optional[List[Any]] = None,
) -> Any:
    req = pb.CreateVolumeRequest(
        name=name, volume_capabilities=caps if caps is not None else [mount_cap()], parameters=params or {}
    )
    if size or limit:
        req.capacity_range.required_bytes = size
        req.capacity_range.limit_bytes = limit
    if requisite is not None or preferred is not None:
        for seg in requisite or []:
            req.accessibility_requirements.requisite.add(segments=seg)
        for seg in preferred or []:
            req.accessibility_requirements.preferred.add(segments=seg)
    return req


def node_topo(node: str) -> dict[str, str]:
    return {"directpv.dev/node": node}


@dataclass
class Csi:
    store: EmbeddedStore
    address: str
    server: Any
    channel: Any
    identity: Any
    controller: Any
    controller_servicer: ControllerServicer
    identity_servicer: IdentityServicer

    def add_drive(
        self,
        drive_id: str,
        node: str = "n1",
        total: int = 10 * GiB,
        *,
        status: str = DRIVE_READY,
        message: str = "",
        schedulable: bool = True,
        access_tier: str = "Default",
        labels: Optional[dict[str, str]] = None,
        topology: Optional[dict[str, str]] = None,
    ) -> Drive:
        self.store.put_drive(
            Drive(
                drive_id=drive_id,
                node=node,
                name="loop-" + drive_id,
                total=total,
                status=status,
                message=message,
                topology={"directpv.dev/node": node, **(topology or {})},
            )
        )
        changes: dict[str, Any] = {}
        if not schedulable:
            changes["schedulable"] = False
        if access_tier != "Default":
            changes["access_tier"] = access_tier
        if labels:
            changes["labels"] = labels
        if changes:
            return self.store.update_drive(drive_id, **changes)
        d = self.store.get_drive(drive_id)
        assert d is not None
        return d


@pytest.fixture(name="short_dir")
def short_dir_fixture() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="dpv", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def make_csi(
    dir_: Path, store: Optional[Any] = None, checks: Optional[List[tuple[str, Callable[[], bool]]]] = None
) -> Csi:
    st = store if store is not None else EmbeddedStore(str(dir_ / "store.sqlite"), synchronous="NORMAL")
    ctrl = ControllerServicer(st)
    ident = IdentityServicer(checks if checks is not None else [("store", st.ping)])
    server, address = create_server("unix://" + str(dir_ / "csi.sock"), ident, ctrl)
    channel = grpc.insecure_channel(address)
    return Csi(st, address, server, channel, pbg.IdentityStub(channel), pbg.ControllerStub(channel), ctrl, ident)


@pytest.fixture(name="csi")
def csi_fixture(short_dir: Path) -> Iterator[Csi]:
    c = make_csi(short_dir)
    yield c
    c.channel.close()
    c.server.stop(None).wait()
    c.store.close()


def rpc_error(fn: Callable[..., Any], *args: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        fn(*args)
    return info.value


# --- a real standalone server process -------------------------------------------------------

class Standalone(DriverProcess):
    """``directpv-csi standalone`` as a child process (the real entry point)."""

    def __init__(self, state_dir: Path, *, devices: Sequence[str] = (), kubelet_dir: Optional[Path] = None,
                 node_id: str = "test-node", no_node: bool = False, extra: Sequence[str] = ()) -> None:
        self.state_dir = state_dir
        args = ["--state-dir", str(state_dir), "--node-id", node_id, "--sync-interval", "1"]
        if no_node:
            args.append("--no-node")
        else:
            args.append("--allow-loop")
            for d in devices:
                args += ["--device", d]
            if kubelet_dir is not None:
                args += ["--kubelet-dir", str(kubelet_dir)]
        super().__init__("standalone", state_dir / "csi.sock", [*args, *extra], log=state_dir / "standalone.log")

    def start(self, timeout: float = 30.0) -> Standalone:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        super().start()
        self.wait_ready(timeout)
        return self

    def stop(self) -> None:
        super().stop()
        self.proc = None

    def kill9(self) -> None:
        super().kill9()
        self.proc = None


def unmount_under(root: Path) -> None:
    """Unmount every mount point under ``root`` (deepest first): only what this test made."""
    prefix = str(root).rstrip("/") + "/"
    points = []
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        for line in f:
            p = line.split()[4].encode().decode("unicode_escape")
            if p.startswith(prefix):
                points.append(p)
    for p in sorted(set(points), key=len, reverse=True):
        subprocess.run(["umount", "-l", p], capture_output=True)


def format_loop_drive(dev: str) -> str:
    """Format ``dev`` (a loop device the test made) as one of our drives; returns the drive id."""
    from directpv_csi.device.format import format_drive

    res = format_drive(dev, allow_loop=True, min_size=300 * MiB)
    return str(res.drive_id)
