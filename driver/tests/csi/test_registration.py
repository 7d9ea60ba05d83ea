"""csi/registration.py: the kubelet plugin-registration API (pluginregistration v1) served by the node
plugin itself, called over its real unix socket the way the kubelet's plugin watcher calls it
(GetInfo, then NotifyRegistrationStatus). The kubelet itself is exercised by tests/realnode."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from directpv_csi.core.errors import InvalidArgument
from directpv_csi.csi.proto import pluginregistration_pb2 as pb
from directpv_csi.csi.proto import pluginregistration_pb2_grpc as pb_grpc
from directpv_csi.csi.registration import KubeletRegistration, registration_socket


def _wait(cond: object, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():  # type: ignore[operator]
            return True
        time.sleep(0.02)
    return False


def _is_socket(path: str) -> bool:
    try:
        return stat.S_ISSOCK(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


def _stub(path: str) -> pb_grpc.RegistrationStub:
    return pb_grpc.RegistrationStub(grpc.insecure_channel("unix://" + path))


def test_registers_after_the_csi_socket_answers_and_retries_when_refused(short_dir: Path) -> None:
    reg_dir = short_dir / "plugins_registry"
    reg_dir.mkdir()
    csi_path = str(short_dir / "csi.sock")
    reg = KubeletRegistration(str(reg_dir), "/var/lib/kubelet/plugins/csi.directpv.dev/csi.sock", csi_path,
                              retry_interval=0.2)
    path = registration_socket(str(reg_dir))
    assert path == str(reg_dir / "csi.directpv.dev-reg.sock")  # node-driver-registrar's name
    reg.start()
    try:
        time.sleep(0.5)
        assert not os.path.exists(path), "registered before the CSI socket answered"
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(csi_path)
        listener.listen(1)
        assert _wait(lambda: _is_socket(path)), "no registration socket once the CSI socket answers"

        info = _stub(path).GetInfo(pb.InfoRequest(), timeout=5)
        assert info.type == "CSIPlugin" and info.name == "csi.directpv.dev"
        assert info.endpoint == "/var/lib/kubelet/plugins/csi.directpv.dev/csi.sock"
        assert list(info.supported_versions) == ["1.0.0"]

        assert reg.opened == 1
        _stub(path).NotifyRegistrationStatus(pb.RegistrationStatus(plugin_registered=False, error="boom"), timeout=5)
        assert reg.wait_notified(5) and not reg.registered and reg.last_error == "boom"
        # refused: a new socket makes the kubelet's watcher try again
        assert _wait(lambda: reg.opened == 2 and _is_socket(path)), "socket not re-created"
        assert _wait(lambda: _stub(path).GetInfo(pb.InfoRequest(), timeout=5).name == "csi.directpv.dev")
        _stub(path).NotifyRegistrationStatus(pb.RegistrationStatus(plugin_registered=True), timeout=5)
        assert reg.registered and reg.notifications == 2
        listener.close()
    finally:
        reg.stop()
    assert not os.path.exists(path), "socket left behind: the kubelet would keep the driver registered"


def test_bad_paths_are_refused(short_dir: Path) -> None:
    with pytest.raises(InvalidArgument, match="not an absolute path"):
        KubeletRegistration("plugins_registry", "/x/csi.sock")
    with pytest.raises(InvalidArgument, match="does not exist"):
        KubeletRegistration(str(short_dir / "missing"), "/x/csi.sock").start()


def test_node_command_refuses_registration_path_without_directory() -> None:
    proc = subprocess.run([sys.executable, "-m", "directpv_csi.cmd.main", "node", "--node-id", "n1",
                           "--kubelet-registration-path", "/var/lib/kubelet/plugins/csi.directpv.dev/csi.sock"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 1
    assert "--kubelet-registration-path needs --registration-dir" in proc.stderr
