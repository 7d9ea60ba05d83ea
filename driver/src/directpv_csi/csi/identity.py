"""CSI Identity service: who we are, what we offer, and whether we are ready.

``Probe`` is real readiness: the store answers and every readiness check passes
(standalone mode adds "the drive registry has synced once").
"""

from __future__ import annotations

from typing import Callable, Sequence, Tuple

import grpc

from .. import DRIVER_NAME, __version__
from .errors import rpc
from .proto import csi_pb2, csi_pb2_grpc

ReadyCheck = Callable[[], bool]

_SERVICE = csi_pb2.PluginCapability.Service
_EXPANSION = csi_pb2.PluginCapability.VolumeExpansion


class IdentityServicer(csi_pb2_grpc.IdentityServicer):  # type: ignore[misc]
    def __init__(self, ready_checks: Sequence[Tuple[str, ReadyCheck]] = (), *, controller: bool = True,
                 name: str = DRIVER_NAME, version: str = __version__) -> None:
        self.ready_checks = list(ready_checks)
        self.controller = controller
        self.name = name
        self.version = version

    def not_ready(self) -> list[str]:
        """Names of the readiness checks that fail now ([] = ready)."""
        failing = []
        for label, check in self.ready_checks:
            try:
                ok = check()
            except Exception:
                ok = False
            if not ok:
                failing.append(label)
        return failing

    @rpc
    def GetPluginInfo(self, request: csi_pb2.GetPluginInfoRequest,
                      context: grpc.ServicerContext) -> csi_pb2.GetPluginInfoResponse:
        return csi_pb2.GetPluginInfoResponse(name=self.name, vendor_version=self.version)

    @rpc
    def GetPluginCapabilities(self, request: csi_pb2.GetPluginCapabilitiesRequest,
                              context: grpc.ServicerContext) -> csi_pb2.GetPluginCapabilitiesResponse:
        caps = [csi_pb2.PluginCapability(service=_SERVICE(type=_SERVICE.VOLUME_ACCESSIBILITY_CONSTRAINTS)),
                csi_pb2.PluginCapability(volume_expansion=_EXPANSION(type=_EXPANSION.ONLINE))]
        if self.controller:
            caps.insert(0, csi_pb2.PluginCapability(service=_SERVICE(type=_SERVICE.CONTROLLER_SERVICE)))
        return csi_pb2.GetPluginCapabilitiesResponse(capabilities=caps)

    @rpc
    def Probe(self, request: csi_pb2.ProbeRequest, context: grpc.ServicerContext) -> csi_pb2.ProbeResponse:
        resp = csi_pb2.ProbeResponse()
        resp.ready.value = not self.not_ready()
        return resp
