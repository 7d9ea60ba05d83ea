"""CSI conformance over a real unix socket: Identity and Controller capabilities, the
idempotency of every call, and the error code of every bad input."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import grpc
import pytest
from csi.csi_helpers import (
    Csi,
    GiB,
    MiB,
    block_cap,
    create_req,
    make_csi,
    mount_cap,
    node_topo,
    rpc_error,
)
from directpv_csi import DRIVER_NAME, __version__
from directpv_csi.core.models import DRIVE_ERROR, DRIVE_LOST
from directpv_csi.csi.proto import csi_pb2 as pb
from grpc_health.v1 import health_pb2, health_pb2_grpc

Mode = pb.VolumeCapability.AccessMode
RPC = pb.ControllerServiceCapability.RPC
INVALID = grpc.StatusCode.INVALID_ARGUMENT

# --- identity ------------------------------------------------------------------------


def test_plugin_info_and_capabilities(csi: Csi) -> None:
    info = csi.identity.GetPluginInfo(pb.GetPluginInfoRequest())
    assert (info.name, info.vendor_version) == (DRIVER_NAME, __version__)
    caps = csi.identity.GetPluginCapabilities(pb.GetPluginCapabilitiesRequest()).capabilities
    services = {c.service.type for c in caps if c.WhichOneof("type") == "service"}
    assert services == {pb.PluginCapability.Service.CONTROLLER_SERVICE,
                        pb.PluginCapability.Service.VOLUME_ACCESSIBILITY_CONSTRAINTS}
    expansion = [c.volume_expansion.type for c in caps if c.WhichOneof("type") == "volume_expansion"]
    assert expansion == [pb.PluginCapability.VolumeExpansion.ONLINE]


def test_probe_reports_real_readiness(short_dir: Path) -> None:
    state = {"synced": False}
    c = make_csi(short_dir, checks=[("registry", lambda: state["synced"])])
    try:
        assert c.identity.Probe(pb.ProbeRequest()).ready.value is False
        state["synced"] = True
        assert c.identity.Probe(pb.ProbeRequest()).ready.value is True
        c.identity_servicer.ready_checks.append(("store", c.store.ping))
        c.store.close()  # the store stops answering
        assert c.identity.Probe(pb.ProbeRequest()).ready.value is False
    finally:
        c.channel.close()
        c.server.stop(None).wait()


def test_health_service(csi: Csi) -> None:
    stub = health_pb2_grpc.HealthStub(csi.channel)
    for service in ("", "csi.v1.Identity", "csi.v1.Controller"):
        resp = stub.Check(health_pb2.HealthCheckRequest(service=service))
        assert resp.status == health_pb2.HealthCheckResponse.SERVING
    err = rpc_error(stub.Check, health_pb2.HealthCheckRequest(service="csi.v1.Node"))
    assert err.code() == grpc.StatusCode.NOT_FOUND


def test_controller_capabilities(csi: Csi) -> None:
    caps = csi.controller.ControllerGetCapabilities(pb.ControllerGetCapabilitiesRequest()).capabilities
    assert {c.rpc.type for c in caps} == {RPC.CREATE_DELETE_VOLUME, RPC.EXPAND_VOLUME, RPC.GET_CAPACITY,
                                         RPC.LIST_VOLUMES, RPC.SINGLE_NODE_MULTI_WRITER}


@pytest.mark.parametrize("method, request_", [
    ("ControllerPublishVolume", pb.ControllerPublishVolumeRequest(volume_id="v", node_id="n")),
    ("CreateSnapshot", pb.CreateSnapshotRequest(name="s", source_volume_id="v")),
    ("ControllerGetVolume", pb.ControllerGetVolumeRequest(volume_id="v")),
])
def test_unadvertised_rpcs_are_unimplemented(csi: Csi, method: str, request_: Any) -> None:
    assert rpc_error(getattr(csi.controller, method), request_).code() == grpc.StatusCode.UNIMPLEMENTED


# --- CreateVolume ----------------------------------------------------------------------


def test_create_volume_returns_topology_context_and_size(csi: Csi) -> None:
    csi.add_drive("d1", "n1", 4 * GiB)
    vol = csi.controller.CreateVolume(create_req("pvc-1", 512 * MiB)).volume
    assert (vol.volume_id, vol.capacity_bytes) == ("pvc-1", 512 * MiB)
    assert [dict(t.segments) for t in vol.accessible_topology] == [node_topo("n1")]
    assert vol.volume_context["directpv.dev/drive-id"] == "d1"
    assert csi.store.get_drive("d1").allocated == 512 * MiB
    assert csi.store.get_volume("pvc-1").project_id == 1


def test_create_volume_default_and_limit_sizes(csi: Csi) -> None:
    csi.add_drive("d1", "n1", 10 * GiB)
    assert csi.controller.CreateVolume(create_req("a", 0)).volume.capacity_bytes == GiB  # documented default
    assert csi.controller.CreateVolume(create_req("b", 0, limit=300 * MiB)).volume.capacity_bytes == 300 * MiB
    assert csi.controller.CreateVolume(create_req("c", 200 * MiB, limit=300 * MiB)).volume.capacity_bytes == 200 * MiB
    assert csi.store.get_drive("d1").allocated == GiB + 500 * MiB  # never the whole drive


def test_create_volume_is_idempotent(csi: Csi) -> None:
    csi.add_drive("d1", "n1", 4 * GiB)
    csi.add_drive("d2", "n1", 4 * GiB)
    params = {"directpv.dev/placement": "spread"}
    first = csi.controller.CreateVolume(create_req("v", GiB, params=params)).volume
    again = csi.controller.CreateVolume(create_req("v", GiB, params=params)).volume
    assert first == again
    assert sum(d.allocated for d in csi.store.list_drives()) == GiB
    # a range the existing volume satisfies is the same request
    assert csi.controller.CreateVolume(create_req("v", GiB // 2, limit=2 * GiB, params=params)).volume == first


@pytest.mark.parametrize("change", [
    {"size": 2 * GiB},  # bigger than existing
    {"size": GiB // 4, "limit": GiB // 2},  # existing above the limit
    {"params": {"directpv.dev/placement": "bin-pack"}},
    {"requisite": [node_topo("n2")]},
])
def test_create_volume_incompatible_is_already_exists(csi: Csi, change: dict[str, Any]) -> None:
    csi.add_drive("d1", "n1", 4 * GiB)
    csi.add_drive("d2", "n2", 4 * GiB)
    csi.controller.CreateVolume(create_req("v", GiB, params={"directpv.dev/placement": "spread"},
                                           requisite=[node_topo("n1")]))
    kw: dict[str, Any] = {"size": GiB, "params": {"directpv.dev/placement": "spread"}}
    kw.update(change)
    assert rpc_error(csi.controller.CreateVolume, create_req("v", **kw)).code() == grpc.StatusCode.ALREADY_EXISTS
    assert sum(d.allocated for d in csi.store.list_drives()) == GiB


@pytest.mark.parametrize("request_, code", [
    (create_req(""), INVALID),
    (create_req("a/b"), INVALID),
    (create_req("x" * 129), INVALID),
    (create_req("v", caps=[]), INVALID),
    (create_req("v", caps=[block_cap()]), INVALID),
    (create_req("v", caps=[mount_cap(fs_type="ext4")]), INVALID),
    (create_req("v", caps=[mount_cap(Mode.MULTI_NODE_MULTI_WRITER)]), INVALID),
    (create_req("v", caps=[mount_cap(Mode.MULTI_NODE_READER_ONLY)]), INVALID),
    (create_req("v", caps=[mount_cap(Mode.UNKNOWN)]), INVALID),
    (create_req("v", caps=[pb.VolumeCapability(access_mode=Mode(mode=Mode.SINGLE_NODE_WRITER))]), INVALID),
    (create_req("v", 2 * GiB, limit=GiB), grpc.StatusCode.OUT_OF_RANGE),
    (create_req("v", -1), INVALID),
    (create_req("v", params={"directpv.dev/placement": "random"}), INVALID),
    (create_req("v", params={"directpv.dev/access-tier": "Lukewarm"}), INVALID),
    (create_req("v", params={"directpv.dev/bad key": "x"}), INVALID),
    (pb.CreateVolumeRequest(name="v", volume_capabilities=[mount_cap()],
                            volume_content_source=pb.VolumeContentSource(
                                snapshot=pb.VolumeContentSource.SnapshotSource(snapshot_id="s"))), INVALID),
])
def test_create_volume_bad_input(csi: Csi, request_: Any, code: grpc.StatusCode) -> None:
    csi.add_drive("d1", "n1", 10 * GiB)
    err = rpc_error(csi.controller.CreateVolume, request_)
    assert err.code() == code, err.details()
    assert err.details()  # a message, with a hint
    assert csi.store.list_volumes() == [] and csi.store.get_drive("d1").allocated == 0  # no side effect


@pytest.mark.parametrize("mode", [Mode.SINGLE_NODE_WRITER, Mode.SINGLE_NODE_READER_ONLY,
                                  Mode.SINGLE_NODE_SINGLE_WRITER, Mode.SINGLE_NODE_MULTI_WRITER])
def test_create_volume_single_node_modes(csi: Csi, mode: pb.VolumeCapability.AccessMode.Mode) -> None:
    csi.add_drive("d1")
    assert csi.controller.CreateVolume(create_req("v", caps=[mount_cap(mode, "xfs")])).volume.volume_id == "v"


def test_resource_exhausted_names_every_refused_drive(csi: Csi) -> None:
    csi.add_drive("d1", "n1", 100 * MiB)
    csi.add_drive("d2", "n1", 10 * GiB, schedulable=False)
    csi.add_drive("d3", "n1", 10 * GiB, status=DRIVE_LOST, message="device missing")
    csi.add_drive("d4", "n1", 10 * GiB, status=DRIVE_ERROR, message="I/O error")
    err = rpc_error(csi.controller.CreateVolume, create_req("v", GiB))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    text = err.details()
    for piece in ("node n1", "drive d1 has 100 MiB free, needs 1 GiB", "drive d2 cordoned",
                  "drive d3 is Lost (device missing)", "drive d4 is Error (I/O error)"):
        assert piece in text, text


def test_no_drives_is_resource_exhausted(csi: Csi) -> None:
    err = rpc_error(csi.controller.CreateVolume, create_req("v"))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "no drives" in err.details()


def test_topology_preferred_order_then_requisite(csi: Csi) -> None:
    csi.add_drive("big", "n1", 100 * GiB)
    csi.add_drive("mid", "n2", 10 * GiB)
    csi.add_drive("small", "n3", 2 * GiB)
    req = create_req("a", GiB, requisite=[node_topo("n1"), node_topo("n2"), node_topo("n3")],
                     preferred=[node_topo("n3"), node_topo("n2")])
    assert csi.controller.CreateVolume(req).volume.volume_context["directpv.dev/node"] == "n3"
    # n3 is now too small for 2 GiB: the next preferred node wins, not the biggest drive
    req = create_req("b", 2 * GiB, requisite=[node_topo("n1"), node_topo("n2"), node_topo("n3")],
                     preferred=[node_topo("n3"), node_topo("n2")])
    assert csi.controller.CreateVolume(req).volume.volume_context["directpv.dev/node"] == "n2"
    # requisite only: the chosen drive must be on a requisite node
    req = create_req("c", GiB, requisite=[node_topo("n3")])
    assert csi.controller.CreateVolume(req).volume.volume_context["directpv.dev/node"] == "n3"
    err = rpc_error(csi.controller.CreateVolume, create_req("d", 5 * GiB, requisite=[node_topo("n3")]))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "drive small" in err.details()
    assert "big" not in err.details()
    err = rpc_error(csi.controller.CreateVolume, create_req("e", GiB, requisite=[node_topo("n9")]))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # a preferred segment outside the requisite ones is ignored: the volume must be reachable from a requisite one
    req = create_req("g", GiB, requisite=[node_topo("n2")], preferred=[node_topo("n1"), node_topo("n2")])
    assert csi.controller.CreateVolume(req).volume.volume_context["directpv.dev/node"] == "n2"
    # no topology at all: most free anywhere
    assert csi.controller.CreateVolume(create_req("f", GiB)).volume.volume_context["directpv.dev/node"] == "n1"


def test_zone_topology(csi: Csi) -> None:
    csi.add_drive("a", "n1", 10 * GiB, topology={"directpv.dev/zone": "z1"})
    csi.add_drive("b", "n2", 20 * GiB, topology={"directpv.dev/zone": "z2"})
    vol = csi.controller.CreateVolume(create_req("v", GiB, requisite=[{"directpv.dev/zone": "z1"}])).volume
    assert [dict(t.segments) for t in vol.accessible_topology] == [{"directpv.dev/node": "n1",
                                                                   "directpv.dev/zone": "z1"}]
    req = pb.GetCapacityRequest()
    req.accessible_topology.segments["directpv.dev/zone"] = "z1"
    assert csi.controller.GetCapacity(req).available_capacity == 9 * GiB
    err = rpc_error(csi.controller.CreateVolume, create_req("w", GiB, requisite=[{"directpv.dev/zone": "z9"}]))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_parameters_select_drives(csi: Csi) -> None:
    csi.add_drive("hot", "n1", 10 * GiB, access_tier="Hot")
    csi.add_drive("r1", "n1", 20 * GiB, labels={"rack": "r1"})
    csi.add_drive("plain", "n1", 30 * GiB)
    ctx = "directpv.dev/drive-id"
    assert csi.controller.CreateVolume(create_req("a", params={"directpv.dev/access-tier": "hot"})).volume \
        .volume_context[ctx] == "hot"
    assert csi.controller.CreateVolume(create_req("b", params={"directpv.dev/rack": "r1"})).volume \
        .volume_context[ctx] == "r1"
    err = rpc_error(csi.controller.CreateVolume, create_req("c", params={"directpv.dev/rack": "r9"}))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "label rack=r9 wanted" in err.details()


def test_placement_policies_over_grpc(csi: Csi) -> None:
    csi.add_drive("a", "n1", 10 * GiB)
    csi.add_drive("b", "n1", 3 * GiB)
    ctx = "directpv.dev/drive-id"
    assert csi.controller.CreateVolume(create_req("mf", GiB)).volume.volume_context[ctx] == "a"
    assert csi.controller.CreateVolume(create_req("bp", GiB, params={"directpv.dev/placement": "bin-pack"})) \
        .volume.volume_context[ctx] == "b"
    # spread: b holds 1 volume, a holds 1: tie on count -> more free (a); then b has fewer
    assert csi.controller.CreateVolume(create_req("s1", GiB, params={"directpv.dev/placement": "spread"})) \
        .volume.volume_context[ctx] == "a"
    assert csi.controller.CreateVolume(create_req("s2", GiB, params={"directpv.dev/placement": "spread"})) \
        .volume.volume_context[ctx] == "b"


def test_claim_id_puts_one_volume_per_drive(csi: Csi) -> None:
    for i in range(3):
        csi.add_drive(f"d{i}", "n1", 10 * GiB)
    params = {"directpv.dev/volume-claim-id": "minio-0"}
    drives = {csi.controller.CreateVolume(create_req(f"v{i}", GiB, params=params)).volume
              .volume_context["directpv.dev/drive-id"] for i in range(3)}
    assert drives == {"d0", "d1", "d2"}
    err = rpc_error(csi.controller.CreateVolume, create_req("v3", GiB, params=params))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "already holds a volume of claim minio-0" in err.details()
    # another claim still fits
    assert csi.controller.CreateVolume(create_req("w", GiB, params={"directpv.dev/volume-claim-id": "other"}))


# --- DeleteVolume ----------------------------------------------------------------------


def test_delete_volume_is_idempotent_and_releases(csi: Csi) -> None:
    csi.add_drive("d1", "n1", 4 * GiB)
    csi.controller.CreateVolume(create_req("v", GiB))
    csi.controller.DeleteVolume(pb.DeleteVolumeRequest(volume_id="v"))
    csi.controller.DeleteVolume(pb.DeleteVolumeRequest(volume_id="v"))
    csi.controller.DeleteVolume(pb.DeleteVolumeRequest(volume_id="never-existed"))
    assert csi.store.get_volume("v") is None and csi.store.get_drive("d1").allocated == 0


def test_delete_volume_errors(csi: Csi) -> None:
    csi.add_drive("d1", "n1", 4 * GiB)
    assert rpc_error(csi.controller.DeleteVolume, pb.DeleteVolumeRequest()).code() == INVALID
    csi.controller.CreateVolume(create_req("v", GiB))
    csi.store.update_volume("v", staging_path="/var/lib/kubelet/x/globalmount")
    err = rpc_error(csi.controller.DeleteVolume, pb.DeleteVolumeRequest(volume_id="v"))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and "staged" in err.details()
    csi.store.update_volume("v", staging_path="", target_paths=["/var/lib/kubelet/pods/p/mount"])
    err = rpc_error(csi.controller.DeleteVolume, pb.DeleteVolumeRequest(volume_id="v"))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and "published" in err.details()
    assert csi.store.get_volume("v") is not None


# --- ControllerExpandVolume --------------------------------------------------------------


def expand_req(name: str, size: int, limit: int = 0) -> Any:
    return pb.ControllerExpandVolumeRequest(volume_id=name,
                                            capacity_range=pb.CapacityRange(required_bytes=size, limit_bytes=limit))


def test_expand_volume_is_idempotent(csi: Csi) -> None:
    csi.add_drive("d1", "n1", 4 * GiB)
    csi.controller.CreateVolume(create_req("v", GiB))
    for _ in range(3):
        resp = csi.controller.ControllerExpandVolume(expand_req("v", 2 * GiB))
        assert (resp.capacity_bytes, resp.node_expansion_required) == (2 * GiB, True)
    assert csi.store.get_drive("d1").allocated == 2 * GiB
    assert csi.controller.ControllerExpandVolume(expand_req("v", GiB)).capacity_bytes == 2 * GiB  # no shrink


def test_expand_volume_errors(csi: Csi) -> None:
    csi.add_drive("d1", "n1", 4 * GiB)
    csi.controller.CreateVolume(create_req("v", GiB))
    cases = [
        (pb.ControllerExpandVolumeRequest(capacity_range=pb.CapacityRange(required_bytes=GiB)), INVALID),
        (pb.ControllerExpandVolumeRequest(volume_id="v"), INVALID),
        (expand_req("missing", 2 * GiB), grpc.StatusCode.NOT_FOUND),
        (expand_req("v", 5 * GiB), grpc.StatusCode.OUT_OF_RANGE),
        (expand_req("v", 3 * GiB, limit=2 * GiB), grpc.StatusCode.OUT_OF_RANGE),
        (pb.ControllerExpandVolumeRequest(volume_id="v", capacity_range=pb.CapacityRange(required_bytes=2 * GiB),
                                          volume_capability=block_cap()), INVALID),
    ]
    for req, code in cases:
        assert rpc_error(csi.controller.ControllerExpandVolume, req).code() == code
    assert csi.store.get_volume("v").size == GiB and csi.store.get_drive("d1").allocated == GiB


# --- ValidateVolumeCapabilities ------------------------------------------------------------


def test_validate_volume_capabilities(csi: Csi) -> None:
    csi.add_drive("d1")
    csi.controller.CreateVolume(create_req("v"))
    ok = csi.controller.ValidateVolumeCapabilities(pb.ValidateVolumeCapabilitiesRequest(
        volume_id="v", volume_capabilities=[mount_cap()], volume_context={"a": "b"}))
    assert ok.HasField("confirmed") and list(ok.confirmed.volume_capabilities) == [mount_cap()]
    for cap in (block_cap(), mount_cap(Mode.MULTI_NODE_MULTI_WRITER), mount_cap(fs_type="ext4")):
        bad = csi.controller.ValidateVolumeCapabilities(pb.ValidateVolumeCapabilitiesRequest(
            volume_id="v", volume_capabilities=[cap]))
        assert not bad.HasField("confirmed") and bad.message
    validate = csi.controller.ValidateVolumeCapabilities
    assert rpc_error(validate, pb.ValidateVolumeCapabilitiesRequest(volume_capabilities=[mount_cap()])).code() \
        == INVALID
    assert rpc_error(validate, pb.ValidateVolumeCapabilitiesRequest(volume_id="v")).code() == INVALID
    assert rpc_error(validate, pb.ValidateVolumeCapabilitiesRequest(
        volume_id="nope", volume_capabilities=[mount_cap()])).code() == grpc.StatusCode.NOT_FOUND


# --- GetCapacity --------------------------------------------------------------------------


def test_get_capacity_per_segment(csi: Csi) -> None:
    csi.add_drive("a", "n1", 10 * GiB)
    csi.add_drive("b", "n1", 4 * GiB, access_tier="Hot")
    csi.add_drive("c", "n2", 7 * GiB)
    csi.add_drive("cordoned", "n2", 50 * GiB, schedulable=False)
    csi.add_drive("lost", "n2", 50 * GiB, status=DRIVE_LOST)
    csi.controller.CreateVolume(create_req("v", 3 * GiB, requisite=[node_topo("n1")]))  # lands on a

    def cap(topo: Any = None, **kw: Any) -> tuple[int, int]:
        req = pb.GetCapacityRequest(**kw)
        if topo is not None:
            req.accessible_topology.segments.update(topo)
        r = csi.controller.GetCapacity(req)
        return r.available_capacity, r.maximum_volume_size.value

    assert cap() == (18 * GiB, 7 * GiB)
    assert cap(node_topo("n1")) == (11 * GiB, 7 * GiB)
    assert cap(node_topo("n2")) == (7 * GiB, 7 * GiB)
    assert cap(node_topo("n9")) == (0, 0)
    assert cap(node_topo("n1"), parameters={"directpv.dev/access-tier": "Hot"}) == (4 * GiB, 4 * GiB)
    assert cap(volume_capabilities=[block_cap()]) == (0, 0)
    err = rpc_error(csi.controller.GetCapacity, pb.GetCapacityRequest(parameters={"directpv.dev/placement": "x"}))
    assert err.code() == INVALID


# --- ListVolumes ----------------------------------------------------------------------------


def test_list_volumes_paginates(csi: Csi) -> None:
    csi.add_drive("d1", "n1", 100 * GiB)
    names = [f"v{i:02d}" for i in range(7)]
    for n in names:
        csi.controller.CreateVolume(create_req(n, MiB))
    seen: list[str] = []
    token = ""
    while True:
        resp = csi.controller.ListVolumes(pb.ListVolumesRequest(max_entries=3, starting_token=token))
        assert len(resp.entries) <= 3
        seen += [e.volume.volume_id for e in resp.entries]
        if not resp.next_token:
            break
        token = resp.next_token
        csi.controller.DeleteVolume(pb.DeleteVolumeRequest(volume_id=seen[-1]))  # token stays valid
    assert seen == names
    all_ = csi.controller.ListVolumes(pb.ListVolumesRequest()).entries
    assert [e.volume.capacity_bytes for e in all_] == [MiB] * len(all_)
    assert rpc_error(csi.controller.ListVolumes, pb.ListVolumesRequest(starting_token="invalid-token")).code() \
        == grpc.StatusCode.ABORTED
    assert rpc_error(csi.controller.ListVolumes, pb.ListVolumesRequest(max_entries=-1)).code() == INVALID


# --- concurrency on one volume --------------------------------------------------------------


class _SlowStore:
    """The real store, with volume reads held until released: a call stays in flight."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.entered = threading.Event()
        self.release = threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def get_volume(self, name: str) -> Any:
        self.entered.set()
        self.release.wait(10)
        return self.inner.get_volume(name)

    def read_volume(self, name: str) -> Any:
        self.entered.set()
        self.release.wait(10)
        return self.inner.read_volume(name)


def test_concurrent_call_on_same_volume_is_aborted(short_dir: Path) -> None:
    from directpv_csi.store.embedded import EmbeddedStore

    slow = _SlowStore(EmbeddedStore(str(short_dir / "s.sqlite"), synchronous="NORMAL"))
    c = make_csi(short_dir, store=slow)
    try:
        first = c.controller.DeleteVolume.future(pb.DeleteVolumeRequest(volume_id="v"))
        assert slow.entered.wait(5)
        err = rpc_error(c.controller.DeleteVolume, pb.DeleteVolumeRequest(volume_id="v"))
        assert err.code() == grpc.StatusCode.ABORTED and "in progress" in err.details()
        slow.release.set()
        first.result(timeout=10)
        c.controller.DeleteVolume(pb.DeleteVolumeRequest(volume_id="v"))  # free again
    finally:
        slow.release.set()
        c.channel.close()
        c.server.stop(None).wait()
        slow.inner.close()
