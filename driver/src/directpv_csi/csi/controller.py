"""CSI Controller service: volumes as reservations on drives, recorded in the store.

validate (core/validation.py) -> choose (core/scheduler.py) -> reserve atomically
(store.reserve_volume) -> respond. Errors are domain errors; csi/errors.py maps them.

CreateVolume walks the topology in CSI order: each ``preferred`` segment in turn,
then the remaining ``requisite`` segments (or every drive when there is no
requisite). A segment naming ``directpv.dev/node`` reads only that node's drives
from the store's per-node index. When the atomic reservation loses a race
(Conflict), the drive list is re-read and the choice made again (bounded).
"""

from __future__ import annotations

import threading
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Set, Tuple

import grpc

from ..concurrency.inflight import InFlight
from ..core.errors import (
    Aborted,
    AlreadyExists,
    Conflict,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    clip,
)
from ..core.models import DRIVE_READY, Drive, Volume
from ..core.reservation import SAME_REQUEST_HINT, check_same_request, request_difference
from ..core.scheduler import Refusal, Request, choose, refusal_reason, summarize
from ..core.units import format_size
from ..core.validation import (
    DEFAULT_VOLUME_SIZE,
    MAX_PARAMETERS,
    PARAM_CLAIM,
    PREFIX,
    TOPOLOGY_NODE,
    Capability,
    capability_problem,
    check_capabilities,
    check_expand,
    check_parameters_size,
    check_volume_id,
    check_volume_name,
    parse_parameters,
    volume_size,
)
from ..store.base import Store
from .errors import rpc
from .proto import csi_pb2, csi_pb2_grpc

CONTEXT_DRIVE_ID = PREFIX + "drive-id"
CONTEXT_NODE = PREFIX + "node"
TOKEN_PREFIX = "after:"
MAX_RESERVE_ATTEMPTS = 8

_RPC = csi_pb2.ControllerServiceCapability.RPC
CAPABILITIES = (
    _RPC.CREATE_DELETE_VOLUME,
    _RPC.EXPAND_VOLUME,
    _RPC.GET_CAPACITY,
    _RPC.LIST_VOLUMES,
    _RPC.SINGLE_NODE_MULTI_WRITER,
)


def mode_name(cap: csi_pb2.VolumeCapability) -> str:
    """The access mode's enum name; ``UNKNOWN(<n>)`` for a number this proto does not define
    (never an exception: capability_problem refuses it as an unsupported mode)."""
    if not cap.HasField("access_mode"):
        return ""
    number = cap.access_mode.mode
    try:
        return str(csi_pb2.VolumeCapability.AccessMode.Mode.Name(number))
    except ValueError:
        return f"UNKNOWN({number})"


def capability_of(cap: csi_pb2.VolumeCapability) -> Capability:
    """Plain ``(access type, fs_type, access mode name)`` of a protobuf capability."""
    kind = cap.WhichOneof("access_type") or ""
    fs_type = cap.mount.fs_type if kind == "mount" else ""
    return kind, fs_type, mode_name(cap)


Segments = Mapping[str, str]


def _plain(segments: Segments) -> Dict[str, str]:
    """A protobuf map as a dict (``dict(m)`` goes through the Mapping mixins: twice as slow)."""
    return {k: segments[k] for k in segments}


def _drive_topology(drive: Drive) -> Dict[str, str]:
    topo = {k: v for k, v in drive.topology.items() if k.startswith(PREFIX)}
    topo[TOPOLOGY_NODE] = drive.node
    return topo


def _matches(drive: Drive, segments: Segments) -> bool:
    topo = _drive_topology(drive)
    return all(topo.get(k) == v for k, v in segments.items())


class ControllerServicer(csi_pb2_grpc.ControllerServicer):  # type: ignore[misc]
    def __init__(self, store: Store, *, default_size: int = DEFAULT_VOLUME_SIZE,
                 on_delete: Optional[Callable[[Volume], None]] = None,
                 inflight: Optional[InFlight] = None) -> None:
        self.store = store
        self.default_size = default_size
        self.on_delete = on_delete  # standalone: let the node purge the volume's directory
        # shared with the node side in one process (standalone): one table per volume for both
        self.inflight = inflight if inflight is not None else InFlight()
        self._claim_locks: Dict[str, threading.Lock] = {}
        self._claim_guard = threading.Lock()

    # ---------------------------------------------------------------- helpers
    def _drives_for(self, segments: Segments) -> List[Drive]:
        node = segments.get(TOPOLOGY_NODE)
        drives = self.store.list_drives(node) if node is not None else self.store.list_drives()
        if len(segments) == (1 if node is not None else 0):
            return list(drives)
        return [d for d in drives if _matches(d, segments)]

    def _tiers(self, req: Optional[csi_pb2.TopologyRequirement]) -> List[Segments]:
        """Topology segments in the order they are tried (an empty dict = every drive)."""
        if req is None:
            return [{}]
        if len(req.requisite) + len(req.preferred) > MAX_PARAMETERS:
            raise InvalidArgument(f"accessibility requirements name {len(req.requisite) + len(req.preferred)} "
                                  "topologies", f"pass at most {MAX_PARAMETERS}")
        requisite = [_plain(t.segments) for t in req.requisite]  # each protobuf map read once
        offered = [_plain(t.segments) for t in req.preferred]
        for segments in (*requisite, *offered):
            check_parameters_size(segments, "a topology's segments")
        # the volume MUST be reachable from a requisite segment: a preferred one outside them is ignored
        preferred = [s for s in offered if not requisite or s in requisite]
        tiers: List[Segments] = list(preferred)
        rest = [s for s in requisite if s not in preferred] if requisite else [{}]
        tiers.extend(rest)
        return tiers or [{}]

    def _claim_lock(self, claim: str) -> threading.Lock:
        with self._claim_guard:
            return self._claim_locks.setdefault(claim, threading.Lock())

    def _claimed(self, claim: str, drives: Iterable[Drive]) -> Set[str]:
        """Drive ids among ``drives`` that already hold a volume of ``claim``."""
        out: Set[str] = set()
        for d in drives:
            if d.volume_count and any(v.parameters.get(PARAM_CLAIM) == claim
                                      for v in self.store.list_volumes(drive_id=d.drive_id)):
                out.add(d.drive_id)
        return out

    def _fill_volume(self, out: csi_pb2.Volume, vol: Volume) -> None:
        """Describe ``vol`` in ``out``, the response's own Volume field (filled in place: a message
        built apart would be copied into the response)."""
        topo: Dict[str, str] = {TOPOLOGY_NODE: vol.node}
        drive = self.store.get_drive(vol.drive_id)
        if drive is not None:
            topo.update(_drive_topology(drive))
        out.volume_id = vol.name
        out.capacity_bytes = vol.size
        out.volume_context[CONTEXT_DRIVE_ID] = vol.drive_id
        out.volume_context[CONTEXT_NODE] = vol.node
        out.accessible_topology.add().segments.update(topo)

    def _created(self, vol: Volume) -> csi_pb2.CreateVolumeResponse:
        resp = csi_pb2.CreateVolumeResponse()
        self._fill_volume(resp.volume, vol)
        return resp

    def _place(self, name: str, request: Request, parameters: Dict[str, str], tiers: Sequence[Segments]) -> Volume:
        refusals: List[Refusal] = []
        lost: Set[str] = set()
        attempts = 0
        for segments in tiers:
            while True:
                drives = self._drives_for(segments)
                if lost:
                    drives = [d for d in drives if d.drive_id not in lost]
                claimed = self._claimed(request.claim, drives) if request.claim else set()
                decision = choose(drives, request, claimed)
                if decision.drive is None:
                    seen = {r.drive_id for r in refusals}
                    refusals.extend(r for r in decision.refusals if r.drive_id not in seen)
                    break
                attempts += 1
                try:
                    return self.store.reserve_volume(Volume(
                        name=name, drive_id=decision.drive.drive_id, node=decision.drive.node,
                        size=request.size, project_id=0, parameters=parameters,
                    ))
                except Conflict as exc:
                    if attempts >= MAX_RESERVE_ATTEMPTS:
                        raise ResourceExhausted(
                            f"volume {name}: gave up after {attempts} lost reservation races ({exc.message})",
                            "retry: drives are being filled concurrently",
                        ) from exc
                    fresh = self.store.get_drive(decision.drive.drive_id)
                    if fresh is None or refusal_reason(fresh, request, claimed):
                        lost.add(decision.drive.drive_id)
                        if fresh is not None:
                            refusals.append(Refusal(fresh.drive_id, fresh.node,
                                                    refusal_reason(fresh, request, claimed)))
        raced = self.store.get_volume(name)  # a concurrent call with the same name may have won
        if raced is not None:
            return raced
        where = "" if tiers == [{}] else " on the requested topology"
        raise ResourceExhausted(
            f"no drive can hold volume {name} ({format_size(request.size)}){where}: {summarize(refusals)}",
            "add or free drives on those nodes, uncordon drives, or relax the StorageClass parameters",
        )

    # ---------------------------------------------------------------- RPCs
    @rpc
    def CreateVolume(self, request: csi_pb2.CreateVolumeRequest,
                     context: grpc.ServicerContext) -> csi_pb2.CreateVolumeResponse:
        name = check_volume_name(request.name)
        check_capabilities([capability_of(c) for c in request.volume_capabilities])
        if request.HasField("volume_content_source"):
            raise InvalidArgument(f"volume {name}: a content source (snapshot or clone) is not supported",
                                  "create an empty volume")
        required = request.capacity_range.required_bytes
        limit = request.capacity_range.limit_bytes
        size = volume_size(required, limit, self.default_size)
        parameters = dict(request.parameters)
        check_parameters_size(parameters)
        sched = parse_parameters(parameters, size)
        tiers = self._tiers(request.accessibility_requirements
                            if request.HasField("accessibility_requirements") else None)

        existing = self.store.get_volume(name)
        if existing is not None:
            return self._created(self._compatible(existing, required, limit, parameters, request))

        if sched.claim:
            with self._claim_lock(sched.claim):
                vol = self._place(name, sched, parameters, tiers)
        else:
            vol = self._place(name, sched, parameters, tiers)
        if request_difference(vol.size, vol.parameters, size, size, parameters):  # lost a same-name race
            vol = self._compatible(vol, required, limit, parameters, request)
        return self._created(vol)

    def _compatible(self, vol: Volume, required: int, limit: int, parameters: Dict[str, str],
                    request: csi_pb2.CreateVolumeRequest) -> Volume:
        check_same_request(vol.name, vol.size, vol.parameters, required, limit, parameters)
        if request.HasField("accessibility_requirements") and request.accessibility_requirements.requisite:
            drive = self.store.get_drive(vol.drive_id)
            node_only = Drive(drive_id=vol.drive_id, node=vol.node, name="", total=0)
            if not any(_matches(drive or node_only, t.segments) for t in request.accessibility_requirements.requisite):
                raise AlreadyExists(f"volume {vol.name} exists on node {vol.node}, outside the requisite topology",
                                    SAME_REQUEST_HINT)
        return vol

    @rpc
    def DeleteVolume(self, request: csi_pb2.DeleteVolumeRequest,
                     context: grpc.ServicerContext) -> csi_pb2.DeleteVolumeResponse:
        name = check_volume_id(request.volume_id)
        with self.inflight.hold(name):
            vol = self.store.read_volume(name)  # never answer OK for a volume another replica just made
            if vol is None:
                return csi_pb2.DeleteVolumeResponse()
            if vol.staging_path or vol.target_paths:
                where = ", ".join(([f"staged at {vol.staging_path}"] if vol.staging_path else [])
                                  + [f"published at {p}" for p in vol.target_paths])
                raise FailedPrecondition(f"volume {name} is in use on node {vol.node}: {where}",
                                         "unpublish and unstage it first (delete the pod using it)")
            deleted = self.store.delete_volume(name)
            if deleted is not None and self.on_delete is not None:
                self.on_delete(deleted)
        return csi_pb2.DeleteVolumeResponse()

    @rpc
    def ControllerExpandVolume(self, request: csi_pb2.ControllerExpandVolumeRequest,
                               context: grpc.ServicerContext) -> csi_pb2.ControllerExpandVolumeResponse:
        name = check_volume_id(request.volume_id)
        if not request.HasField("capacity_range"):
            raise InvalidArgument(f"volume {name}: capacity range is missing", "pass required_bytes for the new size")
        if request.HasField("volume_capability"):
            check_capabilities([capability_of(request.volume_capability)])
        with self.inflight.hold(name):
            vol = self.store.read_volume(name)
            if vol is None:
                raise NotFound(f"volume {name} not found", "check the volume id")
            new = check_expand(request.capacity_range.required_bytes, request.capacity_range.limit_bytes, vol.size)
            vol = self.store.expand_volume(name, new)
        return csi_pb2.ControllerExpandVolumeResponse(capacity_bytes=vol.size, node_expansion_required=True)

    @rpc
    def ValidateVolumeCapabilities(self, request: csi_pb2.ValidateVolumeCapabilitiesRequest,
                                   context: grpc.ServicerContext) -> csi_pb2.ValidateVolumeCapabilitiesResponse:
        name = check_volume_id(request.volume_id)
        if not request.volume_capabilities:
            raise InvalidArgument("volume capabilities are missing", "pass at least one volume capability")
        if self.store.read_volume(name) is None:
            raise NotFound(f"volume {name} not found", "check the volume id")
        for cap in request.volume_capabilities:
            problem = capability_problem(capability_of(cap))
            if problem:
                return csi_pb2.ValidateVolumeCapabilitiesResponse(message=f"{problem[0]}; {problem[1]}")
        check_parameters_size(dict(request.parameters))
        check_parameters_size(dict(request.volume_context), "volume_context")
        if request.parameters:
            try:
                parse_parameters(dict(request.parameters), 1)
            except InvalidArgument as exc:
                return csi_pb2.ValidateVolumeCapabilitiesResponse(message=str(exc))
        confirmed = csi_pb2.ValidateVolumeCapabilitiesResponse.Confirmed(
            volume_context=request.volume_context,
            volume_capabilities=request.volume_capabilities,
            parameters=request.parameters,
            mutable_parameters=request.mutable_parameters,
        )
        return csi_pb2.ValidateVolumeCapabilitiesResponse(confirmed=confirmed)

    @rpc
    def ListVolumes(self, request: csi_pb2.ListVolumesRequest,
                    context: grpc.ServicerContext) -> csi_pb2.ListVolumesResponse:
        if request.max_entries < 0:
            raise InvalidArgument(f"max_entries {request.max_entries} is negative", "pass 0 (all) or a positive number")
        after = ""
        if request.starting_token:
            token = request.starting_token
            if not token.startswith(TOKEN_PREFIX) or len(token) == len(TOKEN_PREFIX):
                raise Aborted(f"starting_token {clip(token)!r} was not issued by this plugin",
                              "restart the listing without a token")
            after = token[len(TOKEN_PREFIX):]
        limit = request.max_entries
        vols = self.store.list_volumes(start_after=after, limit=limit + 1 if limit else 0)
        next_token = ""
        if limit and len(vols) > limit:
            vols = vols[:limit]
            next_token = TOKEN_PREFIX + vols[-1].name
        resp = csi_pb2.ListVolumesResponse(next_token=next_token)
        for v in vols:
            self._fill_volume(resp.entries.add().volume, v)
        return resp

    @rpc
    def GetCapacity(self, request: csi_pb2.GetCapacityRequest,
                    context: grpc.ServicerContext) -> csi_pb2.GetCapacityResponse:
        for cap in request.volume_capabilities:
            if capability_problem(capability_of(cap)):
                return csi_pb2.GetCapacityResponse(available_capacity=0)
        check_parameters_size(dict(request.parameters))
        sched = parse_parameters(dict(request.parameters), 0)
        segments = dict(request.accessible_topology.segments) if request.HasField("accessible_topology") else {}
        check_parameters_size(segments, "accessible_topology segments")
        total, largest = capacity(self._drives_for(segments), sched)
        resp = csi_pb2.GetCapacityResponse(available_capacity=total)
        resp.maximum_volume_size.value = largest
        return resp

    @rpc
    def ControllerGetCapabilities(self, request: csi_pb2.ControllerGetCapabilitiesRequest,
                                  context: grpc.ServicerContext) -> csi_pb2.ControllerGetCapabilitiesResponse:
        return csi_pb2.ControllerGetCapabilitiesResponse(capabilities=[
            csi_pb2.ControllerServiceCapability(rpc=_RPC(type=t)) for t in CAPABILITIES
        ])


def capacity(drives: Iterable[Drive], request: Request) -> Tuple[int, int]:
    """(total free, largest single free) of the Ready, schedulable drives that match ``request``
    (tier and labels; the size is ignored)."""
    total = largest = 0
    probe = Request(size=0, access_tier=request.access_tier, labels=request.labels)
    for d in drives:
        if d.status != DRIVE_READY or not d.schedulable or refusal_reason(d, probe):
            continue
        total += d.free
        largest = max(largest, d.free)
    return total, largest
