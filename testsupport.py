"""Helpers shared by every test tree (driver/tests, tests/): import them from here,
never from a conftest module (several conftest.py files exist; ``from conftest import``
would get whichever was imported first).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import IO, Any, Callable, Dict, Optional, Sequence, TypeVar

import pytest

REPO = Path(__file__).resolve().parent
FIXTURES = REPO / "tests" / "fixtures"
PYTHON = str(REPO / ".venv" / "bin" / "python") if (REPO / ".venv" / "bin" / "python").exists() else sys.executable


def is_root() -> bool:
    return os.geteuid() == 0


needs_root = pytest.mark.skipif(not is_root(), reason="needs root (loop devices, mounts); CI runs as root")


def needs_tool(name: str) -> pytest.MarkDecorator:
    return pytest.mark.skipif(shutil.which(name) is None, reason=f"needs {name} on PATH (make setup installs it)")


def backing_file(dev: str) -> str:
    """The file a loop device is attached to now ("" when detached)."""
    try:
        with open(f"/sys/block/{os.path.basename(dev)}/loop/backing_file", encoding="utf-8") as f:
            return f.read().strip()
    except OSError:
        return ""


def sha256_device(dev: str) -> str:
    """sha256 of a whole block device: the proof that a refusal changed nothing."""
    h = hashlib.sha256()
    with open(dev, "rb") as f:
        for chunk in iter(lambda: f.read(4 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def make_directpv_drive(dev: str, mount: Callable[[str], Path], volumes: int = 2) -> str:
    """Lay ``dev`` out as MinIO DirectPV's initDevice + NodeStageVolume leave a drive (reference §3/§5):
    ``mkfs.xfs -i maxpct=50 -m uuid=<uuid> -L DIRECTPV``, a ``.FSUUID.<uuid>`` link to ``.``,
    ``.directpv/meta.info`` and ``volumes`` volume directories holding 2 MiB each. ``mount(dev)``
    mounts it and returns the mount point; it is unmounted before returning. Returns the FSUUID."""
    fsuuid = str(uuid.uuid4())
    subprocess.run(["mkfs.xfs", "-q", "-i", "maxpct=50", "-m", f"uuid={fsuuid}", "-L", "DIRECTPV", dev], check=True)
    mp = mount(dev)
    try:
        os.symlink(".", mp / f".FSUUID.{fsuuid}")
        (mp / ".directpv").mkdir()
        (mp / ".directpv" / "meta.info").write_text(f"APP_NAME=directpv\nAPP_VERSION=v4.1.6\nFSUUID={fsuuid}\n")
        for i in range(volumes):
            vol = mp / f".FSUUID.{fsuuid}" / f"pvc-{i:04d}-e7a1"  # the data path DirectPV stages
            vol.mkdir()
            (vol / "object.bin").write_bytes(os.urandom(2 << 20))
    finally:
        subprocess.run(["umount", str(mp)], check=True)
    return fsuuid


def eventually(check: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    """Poll ``check`` every 50 ms until it holds or ``timeout_s`` passes; its last answer."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return check()


# --- child processes ---------------------------------------------------------------------


def stop_process(proc: subprocess.Popen[bytes], grace_s: float = 20.0) -> None:
    """SIGTERM this exact process; SIGKILL when it outlives ``grace_s``. Never signals anything else."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(grace_s)


P = TypeVar("P", bound="DriverProcess")


class DriverProcess:
    """``directpv-csi ROLE --endpoint unix://SOCKET ARGS...`` as a child process (the real entry
    point), its output in ``log``, a client channel to its socket, stopped by its own pid.

    ``start()`` launches it; ``wait_ready()`` waits until its CSI Probe says ready (and ``check``
    holds, if given), failing with the log's tail when it exits or times out."""

    def __init__(self, role: str, socket: Path, args: Sequence[str] = (), *, log: Optional[Path] = None,
                 env: Optional[Dict[str, str]] = None) -> None:
        self.role = role
        self.socket = socket
        self.endpoint = "unix://" + str(socket)
        self.log = log if log is not None else socket.with_suffix(".log")
        self.args = [PYTHON, "-m", "directpv_csi.cmd.main", role, "--endpoint", self.endpoint, *args]
        self.env = env
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self._channel: Any = None

    def start(self: P) -> P:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        out: IO[bytes]
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(self.args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=None if self.env is None else {**os.environ, **self.env})
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None, "start() it first"
        return self.proc.pid

    def tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    @property
    def channel(self) -> Any:
        """A grpc.Channel to the socket (made on first use, closed by stop())."""
        import grpc

        if self._channel is None:
            self._channel = grpc.insecure_channel(self.endpoint)
        return self._channel

    def wait_ready(self: P, timeout_s: float = 60.0, check: Optional[Callable[[], bool]] = None) -> P:
        import grpc
        from directpv_csi.csi.proto import csi_pb2 as pb
        from directpv_csi.csi.proto import csi_pb2_grpc as pbg

        assert self.proc is not None, "start() it first"
        deadline = time.monotonic() + timeout_s
        last = "no socket yet"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.role} exited {self.proc.returncode}:\n{self.tail()}")
            if self.socket.exists():
                try:
                    if pbg.IdentityStub(self.channel).Probe(pb.ProbeRequest(), timeout=5).ready.value:
                        if check is None or check():
                            return self
                        last = "ready, check not met yet"
                    else:
                        last = "Probe: not ready"
                except grpc.RpcError as e:
                    last = f"{e.code().name}: {e.details()}"
            time.sleep(0.05)
        raise AssertionError(f"{self.role} not ready after {timeout_s:.0f} s ({last}):\n{self.tail()}")

    def stop(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        if self.proc is not None:
            stop_process(self.proc)

    def kill9(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
