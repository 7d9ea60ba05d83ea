"""The HTTP server in-process against a real gRPC server on a temporary socket: /healthz follows
the gRPC server (200 while it answers, 503 once it stopped), /readyz follows the Identity checks,
a wildcard address answers on IPv4 loopback, stop() closes the port."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Iterator, List

import pytest
from directpv_csi.csi.identity import IdentityServicer
from directpv_csi.csi.server import create_server
from directpv_csi.observe.endpoints import ObserveServer
from observe.observe_helpers import get
from prometheus_client import CollectorRegistry


@pytest.fixture(name="sock_dir")
def sock_dir_fixture() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="dpvobs", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_health_follows_the_grpc_server_readiness_the_checks(sock_dir: Path) -> None:
    state = {"synced": False}
    identity = IdentityServicer([("store", lambda: True), ("drive registry synced", lambda: state["synced"])])
    server, address = create_server("unix://" + str(sock_dir / "csi.sock"), identity)
    obs = ObserveServer(":0", CollectorRegistry(), identity.not_ready)  # every interface
    try:
        obs.start(grpc_address=address)
        port = obs.url.rsplit(":", 1)[1]
        base = f"http://127.0.0.1:{port}"  # IPv4 loopback reaches the wildcard (dual-stack) socket
        assert get(base + "/healthz") == (200, "ok\n")
        assert get(base + "/readyz") == (503, "not ready:\n- drive registry synced\n")
        state["synced"] = True
        assert get(base + "/readyz") == (200, "ok\n")
        assert get(base + "/metrics")[0] == 200

        server.stop(None).wait()
        status, body = get(base + "/healthz")
        assert status == 503 and f"the gRPC server on {address} did not answer" in body
    finally:
        obs.stop()
        server.stop(None)
    with pytest.raises(OSError):
        get(base + "/healthz", timeout=5)


def test_a_failing_check_is_named_not_fatal(sock_dir: Path) -> None:
    def broken() -> bool:
        raise RuntimeError("store exploded")

    identity = IdentityServicer([("store", broken)])
    seen: List[str] = []
    obs = ObserveServer("127.0.0.1:0", CollectorRegistry(), identity.not_ready)
    try:
        obs.start(live=lambda: (seen.append("live") is None, "ok"))  # type: ignore[func-returns-value]
        assert get(obs.url + "/readyz") == (503, "not ready:\n- store\n")
        assert get(obs.url + "/healthz") == (200, "ok\n") and seen == ["live"]
    finally:
        obs.stop()
