"""csi/server.py and the standalone process: sockets, shutdown, the errors translator."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import grpc
import pytest
from csi.csi_helpers import (
    Standalone,
)
from directpv_csi.concurrency.inflight import InFlight
from directpv_csi.core import errors as e
from directpv_csi.csi.errors import code_of, translate
from directpv_csi.csi.identity import IdentityServicer
from directpv_csi.csi.server import create_server, socket_path


@pytest.mark.parametrize("exc, code", [
    (e.InvalidArgument("m"), grpc.StatusCode.INVALID_ARGUMENT),
    (e.NotFound("m"), grpc.StatusCode.NOT_FOUND),
    (e.AlreadyExists("m"), grpc.StatusCode.ALREADY_EXISTS),
    (e.ResourceExhausted("m"), grpc.StatusCode.RESOURCE_EXHAUSTED),
    (e.OutOfRange("m"), grpc.StatusCode.OUT_OF_RANGE),
    (e.FailedPrecondition("m"), grpc.StatusCode.FAILED_PRECONDITION),
    (e.DeviceRefused("m"), grpc.StatusCode.FAILED_PRECONDITION),
    (e.Unsupported("m"), grpc.StatusCode.FAILED_PRECONDITION),
    (e.Aborted("m"), grpc.StatusCode.ABORTED),
    (e.Conflict("m"), grpc.StatusCode.ABORTED),
    (e.CommandFailed("m"), grpc.StatusCode.INTERNAL),
    (RuntimeError("boom"), grpc.StatusCode.INTERNAL),
])
def test_every_domain_error_has_its_code(exc: BaseException, code: grpc.StatusCode) -> None:
    assert code_of(exc) == code
    assert translate(e.NotFound("volume v not found", "check the id"))[1] == "volume v not found; check the id"


def test_inflight_table() -> None:
    t = InFlight()
    with t.hold("v"):
        assert "v" in t and len(t) == 1
        with pytest.raises(e.Aborted), t.hold("v"):
            pass
        with t.hold("w"):
            assert len(t) == 2
    assert len(t) == 0
    with t.hold(""):  # no id: nothing held (validation reports it)
        assert len(t) == 0


@pytest.mark.parametrize("endpoint, path", [("unix:///run/x.sock", "/run/x.sock"), ("unix:/run/x.sock", "/run/x.sock"),
                                            ("/run/x.sock", "/run/x.sock")])
def test_socket_path(endpoint: str, path: str) -> None:
    assert socket_path(endpoint) == path


@pytest.mark.parametrize("endpoint", ["tcp://127.0.0.1:5000", "unix://relative.sock", ""])
def test_bad_endpoints(endpoint: str) -> None:
    with pytest.raises(e.InvalidArgument):
        socket_path(endpoint)


def test_stale_socket_replaced_live_one_refused_file_refused(short_dir: Path) -> None:
    path = short_dir / "csi.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # a socket file nobody listens on
    server, _address = create_server(f"unix://{path}", IdentityServicer())
    try:
        with pytest.raises(e.FailedPrecondition, match="another server"):
            create_server(f"unix://{path}", IdentityServicer())
    finally:
        server.stop(None).wait()
    regular = short_dir / "file"
    regular.write_text("x")
    with pytest.raises(e.FailedPrecondition, match="not a socket"):
        create_server(f"unix://{regular}", IdentityServicer())
    with pytest.raises(e.InvalidArgument):
        create_server(f"unix://{path}", object())


def test_standalone_stops_gracefully_on_sigterm(short_dir: Path) -> None:
    server = Standalone(short_dir / "state", no_node=True).start()
    proc = server.proc
    assert proc is not None
    server.stop()
    assert proc.returncode == 0
    cmd = [*server.args[:3], "standalone", "--state-dir", str(short_dir / "s2"), "--no-node",
           "--endpoint", "tcp://127.0.0.1:1"]
    bad = subprocess.run(cmd, capture_output=True, text=True)
    assert bad.returncode == 1 and "not a unix socket" in bad.stderr
    cmd = [*server.args[:3], "standalone", "--state-dir", str(short_dir / "s3"), "--topology", "zone=z1"]
    bad = subprocess.run(cmd, capture_output=True, text=True)
    assert bad.returncode == 1 and "directpv.dev/<key>=<value>" in bad.stderr
    assert not (short_dir / "s3").exists()  # refused before anything was created
