"""Registration with the kubelet, without the node-driver-registrar sidecar.

The kubelet's plugin watcher looks for unix sockets in ``<kubelet root>/plugins_registry``. For
each new one it calls ``GetInfo`` (pluginregistration v1, proto/pluginregistration.proto), dials
the CSI endpoint the answer names, calls NodeGetInfo there, and reports the outcome with
``NotifyRegistrationStatus``. Removing the socket deregisters the plugin.

``KubeletRegistration`` serves that API on ``<registration dir>/csi.directpv.dev-reg.sock``. It
opens the socket only once the CSI socket answers (the kubelet calls NodeGetInfo at once and does
not retry a failed registration by itself), and when the kubelet reports a failure it re-creates
the socket after ``retry_interval`` seconds, which makes the kubelet try again.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from concurrent import futures
from typing import Any, Optional

import grpc

from ..core.errors import DirectPVError, InvalidArgument
from .proto import pluginregistration_pb2 as pb
from .proto import pluginregistration_pb2_grpc as pb_grpc
from .server import _clear_stale_socket

log = logging.getLogger("directpv_csi.registration")

DRIVER_NAME = "csi.directpv.dev"
CSI_PLUGIN = "CSIPlugin"
SUPPORTED_VERSIONS = ("1.0.0",)


def registration_socket(registration_dir: str, driver: str = DRIVER_NAME) -> str:
    """``<dir>/<driver>-reg.sock``: the name node-driver-registrar uses, so switching between it and
    the built-in registration replaces one socket with the other."""
    return os.path.join(registration_dir, f"{driver}-reg.sock")


def socket_answers(path: str) -> bool:
    """True when something accepts connections on the unix socket ``path``."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        return False
    finally:
        probe.close()
    return True


class _Servicer(pb_grpc.RegistrationServicer):  # type: ignore[misc]
    def __init__(self, owner: KubeletRegistration) -> None:
        self.owner = owner

    def GetInfo(self, request: pb.InfoRequest, context: Any) -> pb.PluginInfo:
        return pb.PluginInfo(type=CSI_PLUGIN, name=self.owner.driver, endpoint=self.owner.kubelet_endpoint,
                             supported_versions=list(SUPPORTED_VERSIONS))

    def NotifyRegistrationStatus(self, request: pb.RegistrationStatus, context: Any) -> pb.RegistrationStatusResponse:
        self.owner._notified(bool(request.plugin_registered), str(request.error))
        return pb.RegistrationStatusResponse()


class KubeletRegistration:
    """The plugin-registration server of one CSI driver.

    ``kubelet_endpoint`` is the CSI socket path as the kubelet sees it (on the host);
    ``csi_socket`` the same socket as this process sees it (in the container), waited for before
    registering; ``registration_dir`` the kubelet's plugins_registry as this process sees it.
    """

    def __init__(self, registration_dir: str, kubelet_endpoint: str, csi_socket: str = "",
                 driver: str = DRIVER_NAME, retry_interval: float = 5.0) -> None:
        for what, path in (("registration directory", registration_dir),
                           ("kubelet registration path", kubelet_endpoint)):
            if not path.startswith("/") or "\0" in path:
                raise InvalidArgument(f"{what} {path!r} is not an absolute path",
                                      "give e.g. --registration-dir /var/lib/kubelet/plugins_registry and "
                                      "--kubelet-registration-path /var/lib/kubelet/plugins/csi.directpv.dev/csi.sock")
        self.registration_dir = registration_dir
        self.kubelet_endpoint = kubelet_endpoint
        self.csi_socket = csi_socket
        self.driver = driver
        self.retry_interval = retry_interval
        self.path = registration_socket(registration_dir, driver)
        self.registered = False
        self.last_error = ""
        self.notifications = 0
        self.opened = 0  # sockets opened so far (a refused registration opens a new one)
        self._server: Optional[grpc.Server] = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._retry = threading.Event()
        self._notified_event = threading.Event()
        self._thread: Optional[threading.Thread] = None

    # --- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        """Wait (in a thread) for the CSI socket, then open the registration socket."""
        if not os.path.isdir(self.registration_dir):
            raise InvalidArgument(f"registration directory {self.registration_dir} does not exist",
                                  "mount the kubelet's plugins_registry directory (or its root dir) into the container")
        self._thread = threading.Thread(target=self._run, name="kubelet-registration", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Close the socket and remove it: the kubelet deregisters the plugin."""
        self._stop.set()
        self._retry.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._close()

    def wait_notified(self, timeout: float) -> bool:
        """True once the kubelet reported a registration outcome (see ``registered``, ``last_error``)."""
        return self._notified_event.wait(timeout)

    # --- internals -------------------------------------------------------------------------
    def _run(self) -> None:
        while self.csi_socket and not self._stop.is_set() and not socket_answers(self.csi_socket):
            self._stop.wait(0.1)
        while not self._stop.is_set():
            try:
                self._open()
            except DirectPVError as exc:  # e.g. a node-driver-registrar still serves the same socket
                log.error("kubelet registration: %s (retrying in %.0f s)", exc, self.retry_interval)
                self._stop.wait(self.retry_interval)
                continue
            self._retry.wait()
            self._retry.clear()
            if self._stop.is_set():
                return
            # the kubelet refused: a new socket makes its plugin watcher try again
            self._close()
            self._stop.wait(self.retry_interval)

    def _open(self) -> None:
        with self._lock:
            _clear_stale_socket(self.path)
            server = grpc.server(futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="registration"),
                                 options=[("grpc.so_reuseport", 0)])
            pb_grpc.add_RegistrationServicer_to_server(_Servicer(self), server)
            server.add_insecure_port("unix://" + self.path)
            server.start()
            self._server = server
            self.opened += 1
        log.info("kubelet registration: serving on %s (CSI endpoint %s)", self.path, self.kubelet_endpoint)

    def _close(self) -> None:
        with self._lock:
            server, self._server = self._server, None
            if server is not None:
                server.stop(1).wait()
            self.registered = False
            try:
                _clear_stale_socket(self.path)  # our socket, nobody answers on it any more
            except DirectPVError as exc:
                log.warning("kubelet registration: %s", exc)

    def _notified(self, registered: bool, error: str) -> None:
        self.notifications += 1
        self.registered = registered
        self.last_error = error
        self._notified_event.set()
        if registered:
            log.info("kubelet registration: registered as %s", self.driver)
        else:
            log.error("kubelet registration failed: %s (retrying in %.0f s)", error or "no reason given",
                      self.retry_interval)
            self._retry.set()
