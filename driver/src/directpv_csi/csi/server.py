"""The gRPC server: CSI services plus the standard gRPC health service on a unix socket.

``create_server(endpoint, *servicers)`` builds and starts a server and returns it
with the socket address, so tests run a real server on a temporary socket;
``serve(server)`` blocks until SIGTERM/SIGINT.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import stat
import threading
from concurrent import futures
from typing import Any, Callable, Optional, Sequence, Tuple

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from ..core.errors import FailedPrecondition, InvalidArgument
from .proto import csi_pb2_grpc

log = logging.getLogger("directpv_csi.server")

_ADDERS: Tuple[Tuple[type, Callable[[Any, grpc.Server], None], str], ...] = (
    (csi_pb2_grpc.IdentityServicer, csi_pb2_grpc.add_IdentityServicer_to_server, "csi.v1.Identity"),
    (csi_pb2_grpc.ControllerServicer, csi_pb2_grpc.add_ControllerServicer_to_server, "csi.v1.Controller"),
    (csi_pb2_grpc.NodeServicer, csi_pb2_grpc.add_NodeServicer_to_server, "csi.v1.Node"),
)


def socket_path(endpoint: str) -> str:
    """``unix:///run/csi.sock`` | ``unix:/run/csi.sock`` | ``/run/csi.sock`` -> ``/run/csi.sock``."""
    if endpoint.startswith("unix://"):
        path = endpoint[len("unix://"):]
    elif endpoint.startswith("unix:"):
        path = endpoint[len("unix:"):]
    elif "://" in endpoint:
        raise InvalidArgument(f"endpoint {endpoint!r} is not a unix socket", "use unix:///path/to/csi.sock")
    else:
        path = endpoint
    if not path.startswith("/"):
        raise InvalidArgument(f"endpoint {endpoint!r} is not an absolute path", "use unix:///path/to/csi.sock")
    return path


def _clear_stale_socket(path: str) -> None:
    """Remove a socket file left by a dead server; refuse when a server still answers."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise FailedPrecondition(f"{path} exists and is not a socket", "remove it or choose another endpoint")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)  # nobody listens: stale
        return
    finally:
        probe.close()
    raise FailedPrecondition(f"another server listens on {path}", "stop it or choose another endpoint")


def create_server(endpoint: str, *servicers: Any, max_workers: int = 16, start: bool = True,
                  interceptors: Sequence[grpc.ServerInterceptor] = ()) -> Tuple[grpc.Server, str]:
    """A server on the unix socket of ``endpoint`` serving each servicer (Identity,
    Controller, Node: any subset) and grpc.health.v1 ("" and each CSI service); ``interceptors``
    see every call (observe/metrics.py: CallCounter)."""
    path = socket_path(endpoint)
    os.makedirs(os.path.dirname(path) or "/", exist_ok=True)
    _clear_stale_socket(path)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="csi"),
                         options=[("grpc.so_reuseport", 0)], interceptors=list(interceptors) or None)
    health_servicer = health.HealthServicer()
    names = []
    for servicer in servicers:
        for base, add, name in _ADDERS:
            if isinstance(servicer, base):
                add(servicer, server)
                names.append(name)
                break
        else:
            raise InvalidArgument(f"{type(servicer).__name__} is not a CSI servicer",
                                  "pass Identity, Controller or Node servicers")
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ["", *names]:
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    address = "unix://" + path
    server.add_insecure_port(address)
    if start:
        server.start()
    setattr(server, "directpv_health", health_servicer)  # noqa: B010 - for serve() at shutdown
    return server, address


def serve(server: grpc.Server, grace: float = 5.0, on_stop: Optional[Callable[[], None]] = None) -> None:
    """Block until SIGTERM or SIGINT, then stop the server (``grace`` seconds for calls in flight)."""
    stop = threading.Event()

    def handler(signum: int, frame: object) -> None:
        log.info("signal %d: stopping", signum)
        stop.set()

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        while not stop.wait(3600):
            pass
    finally:
        hs = getattr(server, "directpv_health", None)
        if hs is not None:
            hs.enter_graceful_shutdown()
        server.stop(grace).wait()
        if on_stop is not None:
            on_stop()
        for s, h in old.items():
            signal.signal(s, h)
