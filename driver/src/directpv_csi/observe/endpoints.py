"""One small HTTP server per process: ``/metrics``, ``/healthz`` (liveness), ``/readyz`` (readiness).

- ``/metrics`` (also ``/directpv/metrics``, DirectPV's path): the process's Prometheus registry,
  text format (OpenMetrics when the scraper asks for it).
- ``/readyz``: 200 ``ok`` when ``IdentityServicer.not_ready()`` is empty (the same checks as the
  CSI Probe: the store answers; on a node, the drive registry has synced once); otherwise 503
  with one failing check per line.
- ``/healthz``: 200 when the gRPC server answers a ``grpc.health.v1.Health/Check`` on its real
  unix socket within a timeout with SERVING. That call runs on the same worker pool as every
  CSI call, so a wedged or stopped server fails it; it does not touch the store, so an API
  server outage makes the pod unready (``/readyz``) without kubelet restarting it in a loop
  (a CSI Probe would: it pings the store, which can hang as long as the API server does).

``parse_address`` reads ``--metrics-address``: ``HOST:PORT``, ``:PORT`` (every interface),
``[v6]:PORT``; port 0 binds a free port (``ObserveServer.address`` tells which).
"""

from __future__ import annotations

import logging
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, List, Optional, Tuple, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from ..core.errors import FailedPrecondition, InvalidArgument

log = logging.getLogger("directpv_csi.observe")

LivenessCheck = Callable[[], Tuple[bool, str]]
ReadinessCheck = Callable[[], List[str]]

METRICS_PATHS = ("/metrics", "/directpv/metrics")
WORK_TIMEOUT_S = 20.0  # a scrape or readiness check that takes longer is answered 503
HEALTH_TIMEOUT_S = 3.0  # below the probes' timeoutSeconds (5) in roles/install


def parse_address(text: str) -> Tuple[str, int]:
    """``"127.0.0.1:0"`` -> ``("127.0.0.1", 0)``; ``":10443"`` -> ``("", 10443)`` (every interface);
    ``"[::1]:9000"`` -> ``("::1", 9000)``. Anything else -> InvalidArgument."""
    hint = "write HOST:PORT, e.g. :10443 (every interface), 127.0.0.1:0 (a free port), [::1]:9000; '' disables"
    host, sep, port_s = text.strip().rpartition(":")
    if not sep or not port_s.isdigit() or int(port_s) > 65535:
        raise InvalidArgument(f"--metrics-address {text!r} is not HOST:PORT", hint)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise InvalidArgument(f"--metrics-address {text!r}: an IPv6 host needs brackets", hint)
    return host, int(port_s)


class GrpcLiveness:
    """``grpc.health.v1.Health/Check("")`` on the server's own socket (see the module docstring)."""

    def __init__(self, address: str, timeout_s: float = HEALTH_TIMEOUT_S) -> None:
        self.address = address
        self.timeout_s = timeout_s
        self._channel = grpc.insecure_channel(address)
        self._stub = health_pb2_grpc.HealthStub(self._channel)

    def __call__(self) -> Tuple[bool, str]:
        try:
            resp = self._stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=self.timeout_s)
        except grpc.RpcError as exc:
            code = exc.code().name if callable(getattr(exc, "code", None)) else "ERROR"
            return False, f"the gRPC server on {self.address} did not answer a health check: {code}"
        if resp.status != health_pb2.HealthCheckResponse.SERVING:
            status = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
            return False, f"the gRPC server on {self.address} is {status}"
        return True, "ok"

    def close(self) -> None:
        self._channel.close()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, host: str, port: int, observe: ObserveServer) -> None:
        self.observe = observe
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        super().__init__((host, port), _Handler)

    def server_bind(self) -> None:
        if self.address_family == socket.AF_INET6:
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if self.server_address[0] == "::"
                                   else 1)
        super().server_bind()


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = 30  # a stuck client never holds a thread for long
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self._answer(body=True)

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def _answer(self, body: bool) -> None:
        path = self.path.split("?", 1)[0]
        obs = self.server.observe
        ctype = "text/plain; charset=utf-8"
        try:
            if path in METRICS_PATHS:
                encoder, ctype = choose_encoder(self.headers.get("Accept", ""))
                status, data = 200, obs.run(obs.metrics_worker, lambda: encoder(obs.registry))
            elif path == "/healthz":
                ok, message = obs.live()
                status, data = (200 if ok else 503), (message + "\n").encode()
            elif path == "/readyz":
                failing = obs.run(obs.ready_worker, obs.not_ready)
                status = 503 if failing else 200
                text = "not ready:\n" + "".join(f"- {f}\n" for f in failing) if failing else "ok\n"
                data = text.encode()
            else:
                status, data = 404, b"not found: try /metrics, /healthz or /readyz\n"
        except FutureTimeout:
            status, data = 503, f"{path}: no answer within {WORK_TIMEOUT_S:.0f} s (is the store reachable?)\n".encode()
        except Exception as exc:  # a failing collector or check: answer 500, keep serving
            log.exception("%s failed", path)
            status, data = 500, f"{path} failed: {type(exc).__name__}: {exc}\n".encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        log.debug("%s %s", self.address_string(), format % args)


T = TypeVar("T")


def _not_live() -> Tuple[bool, str]:
    return False, "starting: the gRPC server is not up yet"


class ObserveServer:
    """The HTTP server. The constructor binds (a taken port fails here, before anything starts);
    ``start(live)`` serves in a thread once the gRPC server exists; ``stop()`` ends it."""

    def __init__(self, address: str, registry: CollectorRegistry, not_ready: ReadinessCheck) -> None:
        host, port = parse_address(address)
        self.registry = registry
        self.not_ready = not_ready
        self.live: LivenessCheck = _not_live
        self._liveness: Optional[GrpcLiveness] = None
        # Store reads run on these long-lived threads, never on the per-request threads of the HTTP
        # server: the embedded store keeps one read connection per thread for the thread's life.
        self.metrics_worker = ThreadPoolExecutor(1, thread_name_prefix="observe-metrics")
        self.ready_worker = ThreadPoolExecutor(1, thread_name_prefix="observe-ready")
        try:
            self._httpd = self._bind(host, port)
        except OSError as exc:
            raise FailedPrecondition(
                f"cannot listen on {address} for metrics and health: {exc.strerror or exc}",
                "choose another --metrics-address (port 0 picks a free one), or --metrics-address '' to disable",
            ) from exc
        self._thread: Optional[threading.Thread] = None

    @staticmethod
    def run(worker: ThreadPoolExecutor, fn: Callable[[], T]) -> T:
        """``fn()`` on ``worker``; FutureTimeout after WORK_TIMEOUT_S (the call goes on and ends alone)."""
        return worker.submit(fn).result(timeout=WORK_TIMEOUT_S)

    def _bind(self, host: str, port: int) -> _Server:
        if host:
            return _Server(host, port, self)
        try:  # every interface: IPv6 and IPv4 on one dual-stack socket when the kernel has IPv6
            return _Server("::", port, self)
        except OSError:
            return _Server("0.0.0.0", port, self)

    def _bound(self) -> Tuple[str, int]:
        host, port = self._httpd.server_address[:2]
        return (host if isinstance(host, str) else bytes(host).decode()), int(port)

    @property
    def address(self) -> str:
        """``HOST:PORT`` actually bound (``[v6]:PORT`` for IPv6)."""
        host, port = self._bound()
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    @property
    def url(self) -> str:
        """A URL that reaches the server from this host (loopback for a wildcard address)."""
        host, port = self._bound()
        host = {"::": "::1", "0.0.0.0": "127.0.0.1"}.get(host, host)
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def start(self, grpc_address: str = "", live: Optional[LivenessCheck] = None) -> None:
        """Serve in a thread. Liveness: ``live``, else a health check on ``grpc_address``."""
        if live is not None:
            self.live = live
        elif grpc_address:
            self._liveness = GrpcLiveness(grpc_address)
            self.live = self._liveness
        if self._thread is None:
            self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.5},
                                            name="observe-http", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=10)
            self._thread = None
        self._httpd.server_close()
        for worker in (self.metrics_worker, self.ready_worker):
            worker.shutdown(wait=False, cancel_futures=True)
        if self._liveness is not None:
            self._liveness.close()
            self._liveness = None
