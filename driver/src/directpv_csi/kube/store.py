"""Kubernetes store: the Store port (store/base.py) on custom resources in ``directpv.dev``.

The kube/ package is the only place in the driver that imports the Kubernetes client:
objects.py (names, labels, conversions), informer.py (the watch-backed cache), crds.py,
errors.py (the one ApiException translation), events.py (the Event recorder), nodes.py (the
node agents: DirectPVNode report, init requests) and this adapter.

Objects (CRDs in deploy/crds/, all cluster-scoped, version v1beta1)
  * ``DirectPVDrive`` (name = drive id): ``spec`` holds what the operator decides (node,
    schedulable, accessTier, labels), ``status`` what the node reports (kernel name, total,
    health...) and the allocation ledger ``status.volumes``: one record ``{size, projectID,
    reservedAt, parameters}`` per volume reserved on the drive. ``status.allocated`` and
    ``status.volumeCount`` are always recomputed from that ledger.
  * ``DirectPVVolume`` (name = CSI volume id): ``spec`` the reservation (driveID, node, size,
    projectID, parameters, labels, createdAt), ``status`` what the node did (status,
    stagingPath, targetPaths, readOnlyTargets). Labels ``directpv.dev/node`` and
    ``directpv.dev/drive`` make ``kubectl get dpvv -l directpv.dev/node=n1`` work.

Reads: a watch-backed cache per kind (informer-style: LIST, then WATCH from its
resourceVersion, re-LIST on 410 Gone), indexed by node and by drive. get_*/list_* never call
the API. Every write goes to the API server and its answer is applied to the cache at once
(read-your-writes); watch events older than what the cache holds are ignored (resourceVersions
are opaque: kube/informer.py waits for the exact version a write returned).

Generations: ``generation`` is ``metadata.generation`` (spec changes, the API server's) plus
``status.writes`` (every status write of the store bumps it); never the resourceVersion. A write
that names an expected generation is checked against the object read and sent with that
object's resourceVersion as precondition, so the API server itself answers 409 when it is stale.

reserve_volume (never over-commits, crash consistent)
  1. Add the volume's record to the drive's ``status.volumes`` with ``replace_status`` carrying
     the resourceVersion just read; the check (Ready, schedulable, free >= size) and the choice
     of the smallest unused project id happen on that same version. 409 -> re-read, retry
     (bounded). The drive object alone now proves the allocation.
  2. Create the DirectPVVolume object. A crash between 1 and 2 leaves a ledger record without
     an object: capacity is held, never double-booked. A retry of the same request on the same
     drive finds its record and completes step 2 with the recorded project id;
     :meth:`KubeStore.reconcile` releases records older than a grace period whose volume object
     does not exist.
  delete_volume deletes the object first, then releases the ledger record (a crash in between
  leaks capacity until reconcile, and never frees space still holding data). expand_volume
  grows the ledger record first, then spec.size; both steps are no-ops when already done.

Finalizer ``directpv.dev/data-protection`` on drives and volumes: only this store removes it
(delete_volume; delete_drive once the ledger is empty), so a stray ``kubectl delete`` leaves the
object Terminating instead of forgetting data that still exists.

Events: the transitions decided here (volume provisioned / expanded / released; a drive added,
lost, failed, recovered or removed, from its cached status before the write and the new one) are
reported as ``events.k8s.io/v1`` Events by a background recorder (kube/events.py lists the
reasons); they never slow down or fail the operation. ``KubeStore(..., events=False)`` turns them off.
"""

from __future__ import annotations

import contextlib
import logging
import random
import socket
import time
import uuid
from typing import Any, Callable, List, Optional, Sequence, Set, Tuple, cast

from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from ..core.errors import (
    AlreadyExists,
    Conflict,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OutOfRange,
)
from ..core.models import (
    DRIVE_ERROR,
    DRIVE_LOST,
    DRIVE_READY,
    DRIVE_REMOVED,
    VOLUME_PENDING,
    Drive,
    Tombstone,
    Volume,
)
from ..core.reservation import check_reservable, check_same_request, smallest_unused
from ..core.units import format_size
from ..store.base import (
    check_drive_changes,
    check_new_drive,
    check_new_volume,
    check_restored_volume,
    check_volume_changes,
    restored_already,
)
from . import events as ev
from .crds import apply_crds, load_crds
from .errors import ApiConflict, translated
from .informer import Informer
from .objects import (
    DRIVES,
    FINALIZER,
    GROUP,
    LABEL_DRIVE,
    LABEL_DRIVE_NAME,
    LABEL_NODE,
    LABEL_TIER,
    STATUS_WRITES,
    VERSION,
    VOLUMES,
    Obj,
    check_name,
    drive_meta_labels,
    drive_of,
    drive_status_body,
    generation_of,
    label_value,
    label_values,
    object_name,
    resource_name,
    rv_of,
    tomb_key,
    tombstones_of,
    used_project_ids,
    volume_of,
)

log = logging.getLogger("directpv_csi.kube.store")

__all__ = ["DRIVES", "FINALIZER", "GROUP", "VERSION", "VOLUMES", "KubeStore", "apply_crds", "load_crds",
           "object_name"]

EVENT_TIMEOUT_S = 5.0  # one events.k8s.io call (the recorder's thread waits, never the operation)
MAX_ATTEMPTS = 400  # optimistic retries of one write under contention (each costs one GET)
PING_TIMEOUT_S = 3.0  # readiness must answer before the kubelet's probe gives up
ORPHAN_GRACE_S = 300.0  # ledger records younger than this may belong to a reservation in flight


class _Api:
    """The custom-objects calls of the store; every failure leaves as a domain error (kube_errors)."""

    def __init__(self, api_client: k8s.ApiClient) -> None:
        self._api = k8s.CustomObjectsApi(api_client)

    def get(self, plural: str, name: str) -> Obj:
        with translated("get", resource_name(plural), name):
            return cast(Obj, self._api.get_cluster_custom_object(GROUP, VERSION, plural, name))

    def create(self, plural: str, body: Obj) -> Obj:
        with translated("create", resource_name(plural), body["metadata"]["name"]):
            return cast(Obj, self._api.create_cluster_custom_object(GROUP, VERSION, plural, body))

    def replace(self, plural: str, name: str, body: Obj, status: bool = False) -> Obj:
        with translated("update", resource_name(plural, status), name):
            if status:
                return cast(Obj, self._api.replace_cluster_custom_object_status(GROUP, VERSION, plural, name, body))
            return cast(Obj, self._api.replace_cluster_custom_object(GROUP, VERSION, plural, name, body))

    def delete(self, plural: str, name: str, resource_version: str) -> None:
        with translated("delete", resource_name(plural), name):
            self._api.delete_cluster_custom_object(
                GROUP, VERSION, plural, name,
                body=k8s.V1DeleteOptions(preconditions=k8s.V1Preconditions(resource_version=resource_version)))


class _EventSink:
    """The recorder's way to the API server: ``events.k8s.io/v1`` on a connection pool of its own."""

    def __init__(self, api_client: k8s.ApiClient) -> None:
        self.client = k8s.ApiClient(api_client.configuration)
        self._api = k8s.EventsV1Api(self.client)

    def create(self, namespace: str, body: Obj) -> None:
        event = k8s.EventsV1Event.from_dict(body)
        if event is None:
            raise ValueError(f"not an event: {body!r}")
        self._api.create_namespaced_event(namespace, event, _request_timeout=EVENT_TIMEOUT_S)

    def patch_series(self, namespace: str, name: str, series: Obj) -> None:
        self._api.patch_namespaced_event(name, namespace, {"series": series},
                                         _content_type="application/merge-patch+json",
                                         _request_timeout=EVENT_TIMEOUT_S)



def _volume_object(volume: Volume, node: str, project_id: int, uid: str, params: dict[str, str]) -> Obj:
    """The DirectPVVolume object of a reserved or restored volume (its ledger record is on the drive)."""
    return {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "DirectPVVolume",
        "metadata": {"name": object_name(volume.name), "finalizers": [FINALIZER],
                     "labels": label_values({LABEL_NODE: node, LABEL_DRIVE: volume.drive_id})},
        "spec": {"name": volume.name, "driveID": volume.drive_id, "node": node, "size": volume.size,
                 "projectID": project_id, "parameters": params, "labels": dict(volume.labels),
                 "createdAt": volume.created_at or time.time(), **({"uid": uid} if uid else {})},
    }

class KubeStore:
    """The Store port on DirectPVDrive/DirectPVVolume objects (see the module docstring).

    ``reporting_instance`` names this process in its Events (the node name for a node plugin, the
    pod name for a controller; default: the host name, which is the pod name in a pod);
    ``events=False`` sends none (benchmarks); ``events_namespace`` is where they go (see
    kube/events.py for why ``default``).

    ``node`` (a node plugin's store): list, watch and cache only the drives and volumes of that
    node (label selector ``directpv.dev/node=<node>``), so another node's changes never reach this
    process; a drive of another node is still found by :meth:`get_drive` (one GET on a miss, not
    cached), and :meth:`read_volume` reads any volume. A node name that is no valid label value
    (longer than 63 characters...) cannot be selected: that store watches the whole cluster, as the
    controller's does (None)."""

    def __init__(self, api_client: k8s.ApiClient, sync_timeout_s: float = 30.0, *, events: bool = True,
                 reporting_instance: Optional[str] = None, events_namespace: str = ev.DEFAULT_NAMESPACE,
                 node: Optional[str] = None) -> None:
        self._client = api_client
        self._event_sink = _EventSink(api_client)
        self.events = ev.EventRecorder(self._event_sink, reporting_instance or socket.gethostname(),
                                       namespace=events_namespace, enabled=events)
        self._api = _Api(api_client)
        # watches get their own connection pool: close() drops it, which ends the blocking reads
        self._watch_client = k8s.ApiClient(api_client.configuration)
        watch_api = k8s.CustomObjectsApi(self._watch_client)
        self.node_scope = node if node is not None and label_value(node) else None
        if node is not None and self.node_scope is None:
            log.warning("node %r is not a label value: watching the drives and volumes of every node", node)
        selector = f"{LABEL_NODE}={self.node_scope}" if self.node_scope else ""
        in_scope = self._in_scope if self.node_scope else None
        self._drives = Informer(watch_api, DRIVES, {"node": lambda o: (o.get("spec") or {}).get("node", "")},
                                selector, in_scope)
        self._volumes = Informer(watch_api, VOLUMES, {
            "node": lambda o: o["spec"]["node"], "drive": lambda o: o["spec"]["driveID"]}, selector, in_scope)
        self._closed = False
        try:
            self._drives.start(sync_timeout_s)
            self._volumes.start(sync_timeout_s)
        except BaseException:
            self.close()  # no thread or connection outlives a store that failed to start
            raise

    def _in_scope(self, obj: Obj) -> bool:
        return (obj["metadata"].get("labels") or {}).get(LABEL_NODE) == self.node_scope

    @classmethod
    def from_kubeconfig(cls, path: Optional[str] = None, pool_size: Optional[int] = None,
                        **kwargs: Any) -> KubeStore:
        """A store from a kubeconfig file (None: in-cluster); ``kwargs`` go to the constructor.
        ``pool_size``: HTTP connections kept per pool (the client's default is 5 per CPU: fewer than
        the gRPC workers of a small host, so connections were opened and thrown away under load);
        pass the number of threads that call the store."""
        from kubernetes import config

        cfg = k8s.Configuration()
        if pool_size is not None:
            cfg.connection_pool_maxsize = max(1, pool_size)
        if path is None:
            config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
        else:
            config.load_kube_config(config_file=path, client_configuration=cfg)  # type: ignore[no-untyped-call]
        return cls(k8s.ApiClient(cfg), **kwargs)

    @property
    def api_client(self) -> k8s.ApiClient:
        """The API client this store writes through (for the node's DirectPVNode report)."""
        return self._client

    # ------------------------------------------------------------------ API helpers
    def _get(self, plural: str, name: str) -> Optional[Obj]:
        try:
            obj = self._api.get(plural, name)
        except NotFound:
            return None
        (self._drives if plural == DRIVES else self._volumes).apply(obj)
        return obj

    def _write(self, plural: str, obj: Obj, status: bool = False) -> Obj:
        """Replace ``obj`` (its metadata.resourceVersion is the precondition); 409 raises ApiConflict.
        A status write bumps ``status.writes`` (the generation's part that status changes move)."""
        if status:
            obj = dict(obj, status=dict(obj["status"], **{STATUS_WRITES: self._status_writes(plural, obj) + 1}))
        out = self._api.replace(plural, obj["metadata"]["name"], obj, status=status)
        (self._drives if plural == DRIVES else self._volumes).apply(out)
        return out

    def _status_writes(self, plural: str, obj: Obj) -> int:
        """``status.writes`` of the version ``obj`` was made from (a new status body lacks it: the
        cache's copy of that exact version has it, else the server's; another version -> 409)."""
        if STATUS_WRITES in obj["status"]:
            return int(obj["status"][STATUS_WRITES])
        rv = rv_of(obj)
        cur = (self._drives if plural == DRIVES else self._volumes).get(obj["metadata"]["name"])
        if cur is None or rv_of(cur) != rv:
            cur = self._api.get(plural, obj["metadata"]["name"])
            if rv_of(cur) != rv:
                raise ApiConflict(f"{plural} {obj['metadata']['name']} changed since it was read", "re-read it")
        return int((cur.get("status") or {}).get(STATUS_WRITES) or 0)

    def _create(self, plural: str, obj: Obj) -> Obj:
        out = self._api.create(plural, obj)
        (self._drives if plural == DRIVES else self._volumes).apply(out)
        return out

    def _retry(self, what: str, fn: Callable[[int], Any]) -> Any:
        """Run ``fn(attempt)`` until it returns without a 409, at most MAX_ATTEMPTS times. Other
        API failures leave as the domain errors kube_errors gives them (InvalidArgument for a
        refused object is prefixed with ``what``)."""
        for attempt in range(MAX_ATTEMPTS):
            try:
                return fn(attempt)
            except InvalidArgument as e:
                if isinstance(e.__cause__, ApiException):
                    raise InvalidArgument(f"{what}: {e.message}", e.hint) from e.__cause__
                raise
            except ApiConflict:
                time.sleep(random.uniform(0, min(0.05, 0.002 * (attempt + 1))))
        raise Conflict(f"{what}: still conflicting after {MAX_ATTEMPTS} attempts", "retry later")

    def _drive_obj(self, drive_id: str, attempt: int) -> Optional[Obj]:
        """The cached drive on a first attempt, a fresh read after a conflict."""
        if attempt == 0:
            cached = self._drives.get(drive_id)
            if cached is not None:
                return cached
        return self._get(DRIVES, drive_id)

    def _volume_obj(self, name: str, attempt: int) -> Optional[Obj]:
        if attempt == 0:
            cached = self._volumes.get(object_name(name))
            if cached is not None:
                return cached
        return self._get(VOLUMES, object_name(name))

    # ------------------------------------------------------------------ events
    def _volume_event(self, obj: Obj, reason: str, action: str, note: str) -> None:
        meta = obj["metadata"]
        self.events.emit(ev.Regarding("DirectPVVolume", meta["name"], meta.get("uid", "")), ev.NORMAL, reason,
                         action, note)

    def _drive_transition(self, before: Optional[str], obj: Obj) -> None:
        """The event for a drive whose status went from ``before`` (None: it had none) to ``obj``'s."""
        d = drive_of(obj)
        if not obj.get("status") or before == d.status:
            return
        where = f"drive {d.drive_id}{f' ({d.name})' if d.name else ''} on node {d.node}"
        if d.status == DRIVE_READY:
            if before is None:
                reason, note = ev.DRIVE_ADDED, f"{where}: {format_size(d.total)} ready for volumes"
            else:
                reason, note = ev.DRIVE_RECOVERED, f"{where} is Ready again (was {before})"
            type_, action = ev.NORMAL, "Register"
        elif d.status == DRIVE_LOST:
            reason, type_, action = ev.DRIVE_LOST, ev.WARNING, "Probe"
            note = f"{where} is lost, {d.volume_count} volume(s) on it: {d.message}"
        elif d.status == DRIVE_ERROR:
            reason, type_, action = ev.drive_error_reason(d.message), ev.WARNING, "Probe"
            note = f"{where} failed, {d.volume_count} volume(s) on it: {d.message}"
        elif d.status == DRIVE_REMOVED:
            reason, type_, action = ev.DRIVE_REMOVED, ev.NORMAL, "Remove"
            note = f"{where} removed: no new volumes ({d.volume_count} remain)"
        else:
            return
        meta = obj["metadata"]
        self.events.emit(ev.Regarding("DirectPVDrive", meta["name"], meta.get("uid", "")), type_, reason, action,
                         note)

    # ------------------------------------------------------------------ drives
    def put_drive(self, drive: Drive) -> Drive:
        check_new_drive(drive)
        check_name("drive", drive.drive_id)

        before: List[Optional[str]] = [None]  # the status this attempt started from

        def op(attempt: int) -> Obj:
            cur = self._drive_obj(drive.drive_id, attempt)
            before[0] = ((cur or {}).get("status") or {}).get("status")
            if cur is None:
                body: Obj = {
                    "apiVersion": f"{GROUP}/{VERSION}", "kind": "DirectPVDrive",
                    "metadata": {"name": drive.drive_id, "finalizers": [FINALIZER],
                                 "labels": drive_meta_labels(drive.node, drive.name, drive.access_tier)},
                    "spec": {"node": drive.node, "schedulable": drive.schedulable, "accessTier": drive.access_tier,
                             "labels": dict(drive.labels)},
                }
                cur = self._create(DRIVES, body)  # 409 if someone registered it meanwhile: retried as update
            spec = cur.get("spec") or {}
            have = cur["metadata"].get("labels") or {}
            if spec.get("node") != drive.node or have.get(LABEL_DRIVE_NAME) != label_value(drive.name) or \
                    have.get(LABEL_NODE) != label_value(drive.node):
                cur = dict(cur, spec=dict(spec, node=drive.node), metadata=dict(
                    cur["metadata"], labels=dict(cur["metadata"].get("labels") or {},
                                                 **drive_meta_labels(drive.node, drive.name,
                                                                      spec.get("accessTier", "Default")))))
                if label_value(drive.name) is None:
                    cur["metadata"]["labels"].pop(LABEL_DRIVE_NAME, None)
                cur = self._write(DRIVES, cur)
            st = cur.get("status") or {}
            new_status = drive_status_body(drive, dict(st.get("volumes") or {}), dict(st.get("tombstones") or {}))
            if st and {k: st.get(k) for k in new_status} == new_status:
                return cur  # nothing changed: no write, no new generation
            return self._write(DRIVES, dict(cur, status=new_status), status=True)

        out: Obj = self._retry(f"drive {drive.drive_id}", op)
        self._drive_transition(before[0], out)
        return drive_of(out)

    def get_drive(self, drive_id: str) -> Optional[Drive]:
        obj = self._drives.get(drive_id)
        if obj is None and self.node_scope:  # another node's drive (a clone, a moved disk): ask
            obj = self._get(DRIVES, drive_id)
        return None if obj is None or not obj.get("status") else drive_of(obj)

    def list_drives(self, node: Optional[str] = None) -> Sequence[Drive]:
        objs = self._drives.all() if node is None else self._drives.by("node", node)
        return [drive_of(o) for o in objs if o.get("status")]

    def nodes(self) -> Sequence[str]:
        return [n for n in self._drives.keys("node") if any(o.get("status") for o in self._drives.by("node", n))]

    def update_drive(self, drive_id: str, expected_generation: Optional[int] = None, **changes: object) -> Drive:
        check_drive_changes(drive_id, changes)
        spec_changes: Obj = {}
        if "schedulable" in changes:
            spec_changes["schedulable"] = bool(changes["schedulable"])
        if "access_tier" in changes:
            spec_changes["accessTier"] = changes["access_tier"]
        if "labels" in changes:
            spec_changes["labels"] = dict(changes["labels"])  # type: ignore[call-overload]
        status_changes = {k: changes[k] for k in ("status", "message") if k in changes}

        before: List[Optional[str]] = [None]

        def op(attempt: int) -> Obj:
            cur = self._drive_obj(drive_id, attempt)
            if cur is None or not cur.get("status"):
                raise NotFound(f"drive {drive_id} not found", "list drives to see the known ids")
            before[0] = cur["status"].get("status")
            if expected_generation is not None and (attempt > 0 or generation_of(cur) != expected_generation):
                raise Conflict(f"drive {drive_id} changed (generation {generation_of(cur)}, expected "
                               f"{expected_generation})", "re-read the drive and retry")
            if spec_changes or not status_changes:
                meta = dict(cur["metadata"])
                meta["labels"] = dict(meta.get("labels") or {})
                if "accessTier" in spec_changes:
                    meta["labels"][LABEL_TIER] = spec_changes["accessTier"]
                cur = self._write(DRIVES, dict(cur, metadata=meta, spec=dict(cur["spec"], **spec_changes)))
            if status_changes:
                cur = self._write(DRIVES, dict(cur, status=dict(cur["status"], **status_changes)), status=True)
            return cur

        out: Obj = self._retry(f"drive {drive_id}", op)
        self._drive_transition(before[0], out)
        return drive_of(out)

    def delete_drive(self, drive_id: str) -> None:
        def op(attempt: int) -> None:
            cur = self._drive_obj(drive_id, attempt)
            if cur is None:
                return
            ledger = (cur.get("status") or {}).get("volumes") or {}
            living = {volume_of(o).name for o in self._volumes.by("drive", drive_id)} | set(ledger)
            if living:
                raise FailedPrecondition(f"drive {drive_id} still holds {len(living)} volume(s)",
                                         "delete its volumes first")
            self._unprotect_and_delete(DRIVES, cur)

        self._retry(f"drive {drive_id}", op)

    def _unprotect_and_delete(self, plural: str, cur: Obj) -> Obj:
        """Drop our finalizer (a write carrying ``cur``'s resourceVersion: 409 if it changed), then
        delete on exactly that version; returns the object as last written."""
        meta = dict(cur["metadata"], finalizers=[f for f in cur["metadata"].get("finalizers") or []
                                                  if f != FINALIZER])
        cur = self._write(plural, dict(cur, metadata=meta))
        name = cur["metadata"]["name"]
        with contextlib.suppress(NotFound):  # gone already
            self._api.delete(plural, name, cur["metadata"]["resourceVersion"])
        (self._drives if plural == DRIVES else self._volumes).forget(name, cur["metadata"].get("uid", ""))
        return cur

    # ------------------------------------------------------------------ volumes
    def _existing(self, volume: Volume, obj: Obj) -> Volume:
        existing = volume_of(obj)
        check_same_request(volume.name, existing.size, existing.parameters, volume.size, volume.size,
                           volume.parameters)
        return existing

    def reserve_volume(self, volume: Volume, expected_drive_generation: Optional[int] = None) -> Volume:
        check_new_volume(volume)
        cached = self._volumes.get(object_name(volume.name))
        if cached is not None:
            return self._existing(volume, cached)
        params = dict(volume.parameters)

        # step 1: the ledger record on the drive, on the version the checks were made on
        def reserve(attempt: int) -> Tuple[Obj, int, str, bool]:
            cur = self._drive_obj(volume.drive_id, attempt)
            st = (cur or {}).get("status") or {}
            ledger: Obj = dict(st.get("volumes") or {})
            rec = ledger.get(volume.name)
            if cur is not None and st and rec is not None:  # an earlier attempt of this request got this far
                check_same_request(volume.name, int(rec["size"]), dict(rec.get("parameters") or {}), volume.size,
                                   volume.size, params, f" (being reserved on drive {volume.drive_id})")
                return cur, int(rec["projectID"]), str(rec.get("uid", "")), False
            d = check_reservable(drive_of(cur) if cur is not None and st else None, volume.drive_id, volume.size,
                                 expected_drive_generation, reread=attempt > 0)
            assert cur is not None
            pid = smallest_unused(used_project_ids(st))
            uid = uuid.uuid4().hex
            ledger[volume.name] = {"size": volume.size, "projectID": pid, "reservedAt": time.time(),
                                   "parameters": params, "uid": uid}
            out = self._write(DRIVES, dict(cur, status=drive_status_body(d, ledger, st.get("tombstones"))), status=True)
            return out, pid, uid, True

        drive_obj, pid, uid, added = self._retry(f"reserving volume {volume.name}", reserve)
        node = drive_obj["spec"]["node"]
        body = _volume_object(volume, node, pid, uid, params)
        # step 2: the volume object
        try:
            out = self._create(VOLUMES, body)
        except ApiConflict as e:
            other = self._get(VOLUMES, object_name(volume.name))
            if other is not None and other["spec"]["driveID"] == volume.drive_id and \
                    int(other["spec"]["projectID"]) == pid:
                return volume_of(other)  # our own earlier attempt created it
            if added:
                self._release(volume.drive_id, volume.name, None)  # the name went to another reservation
            if other is None:
                raise Conflict(f"volume {volume.name} was created and deleted meanwhile", "retry") from e
            return self._existing(volume, other)
        drive_name = (drive_obj.get("status") or {}).get("name", "")
        self._volume_event(out, ev.VOLUME_PROVISIONED, "Provision",
                           f"volume {volume.name}: {format_size(volume.size)} reserved on drive {volume.drive_id}"
                           f"{f' ({drive_name})' if drive_name else ''} on node {node}, project id {pid}")
        if volume.status != VOLUME_PENDING or volume.staging_path or volume.target_paths:
            out = self._write(VOLUMES, dict(out, status={
                "status": volume.status, "stagingPath": volume.staging_path,
                "targetPaths": list(volume.target_paths), "readOnlyTargets": list(volume.read_only_targets)}),
                status=True)
        return volume_of(out)

    def get_volume(self, name: str) -> Optional[Volume]:
        obj = self._volumes.get(object_name(name))
        return None if obj is None else volume_of(obj)

    def read_volume(self, name: str) -> Optional[Volume]:
        """The cached volume; on a miss, a GET (this replica's watch may not have seen another's create)."""
        obj = self._volumes.get(object_name(name)) or self._get(VOLUMES, object_name(name))
        return None if obj is None else volume_of(obj)

    def list_volumes(self, drive_id: Optional[str] = None, node: Optional[str] = None,
                     start_after: str = "", limit: int = 0) -> Sequence[Volume]:
        if drive_id is not None:
            objs = self._volumes.by("drive", drive_id)
        elif node is not None:
            objs = self._volumes.by("node", node)
        else:
            objs = self._volumes.all()
        vols = sorted((volume_of(o) for o in objs), key=lambda v: v.name)
        vols = [v for v in vols if (node is None or v.node == node) and v.name > start_after]
        return vols[:limit] if limit > 0 else vols

    def update_volume(self, name: str, expected_generation: Optional[int] = None, **changes: object) -> Volume:
        check_volume_changes(name, changes)
        status_changes: Obj = {}
        for key, field in (("status", "status"), ("staging_path", "stagingPath")):
            if key in changes:
                status_changes[field] = changes[key]
        for key, field in (("target_paths", "targetPaths"), ("read_only_targets", "readOnlyTargets")):
            if key in changes:
                status_changes[field] = list(changes[key])  # type: ignore[call-overload]

        def op(attempt: int) -> Obj:
            cur = self._volume_obj(name, attempt)
            if cur is None:
                raise NotFound(f"volume {name} not found", "create it first")
            if expected_generation is not None and (attempt > 0 or generation_of(cur) != expected_generation):
                raise Conflict(f"volume {name} changed (generation {generation_of(cur)}, expected "
                               f"{expected_generation})",
                               "re-read the volume and retry")
            if "labels" in changes or not status_changes:
                spec = dict(cur["spec"])
                if "labels" in changes:
                    spec["labels"] = dict(changes["labels"])  # type: ignore[call-overload]
                cur = self._write(VOLUMES, dict(cur, spec=spec))
            if status_changes:
                cur = self._write(VOLUMES, dict(cur, status=dict(cur.get("status") or {}, **status_changes)),
                                  status=True)
            return cur

        return volume_of(self._retry(f"volume {name}", op))

    def expand_volume(self, name: str, new_size: int) -> Volume:
        first = self._volume_obj(name, 0)
        if first is None:
            raise NotFound(f"volume {name} not found", "create it first")
        if new_size <= int(first["spec"]["size"]):
            return volume_of(first)  # retry of an expansion already done, or a shrink: never reserve twice
        drive_id = first["spec"]["driveID"]

        def grow_ledger(attempt: int) -> None:
            cur = self._drive_obj(drive_id, attempt)
            if cur is None or not cur.get("status"):
                raise FailedPrecondition(f"volume {name}: its drive {drive_id} is not registered",
                                         "restore the drive, then retry")
            ledger: Obj = dict(cur["status"].get("volumes") or {})
            rec = ledger.get(name)
            if rec is None:
                raise FailedPrecondition(f"volume {name}: drive {drive_id} holds no reservation for it",
                                         "run the store's reconcile, then retry")
            if int(rec["size"]) >= new_size:
                return  # an earlier attempt grew the ledger already
            d = drive_of(cur)
            delta = new_size - int(rec["size"])
            if d.free < delta:
                raise OutOfRange(
                    f"volume {name}: drive {drive_id} on node {d.node} has {d.free} bytes free, "
                    f"growing to {new_size} needs {delta} more",
                    "ask for less, or free space on that drive (volumes cannot move between drives)",
                )
            ledger[name] = dict(rec, size=new_size)
            self._write(DRIVES, dict(cur, status=drive_status_body(d, ledger, cur["status"].get("tombstones"))),
                        status=True)

        self._retry(f"expanding volume {name}", grow_ledger)

        grown_from: List[int] = []  # the size this call grew the object from (empty: it did not)

        def grow_volume(attempt: int) -> Obj:
            cur = first if attempt == 0 else self._get(VOLUMES, object_name(name))
            if cur is None:
                raise NotFound(f"volume {name} was deleted while growing", "create it again")
            if int(cur["spec"]["size"]) >= new_size:
                return cur
            out = self._write(VOLUMES, dict(cur, spec=dict(cur["spec"], size=new_size)))
            grown_from[:] = [int(cur["spec"]["size"])]
            return out

        out: Obj = self._retry(f"expanding volume {name}", grow_volume)
        if grown_from:
            self._volume_event(out, ev.VOLUME_EXPANDED, "Expand",
                               f"volume {name}: grown from {format_size(grown_from[0])} to "
                               f"{format_size(new_size)} on drive {drive_id} on node {out['spec']['node']}")
        return volume_of(out)

    def _release(self, drive_id: str, name: str, max_reserved_at: Optional[float],
                 tombstone: Optional[str] = None) -> bool:
        """Drop ``name``'s ledger record from its drive (only if reserved before ``max_reserved_at``).
        ``tombstone`` (the volume's uid; "" for a record made before uids): in the same write, leave
        a tombstone holding its project id, so its node removes the directory (delete_volume)."""
        def op(attempt: int) -> bool:
            cur = self._drive_obj(drive_id, attempt)
            if cur is None or not cur.get("status"):
                return False
            ledger: Obj = dict(cur["status"].get("volumes") or {})
            tombs: Obj = dict(cur["status"].get("tombstones") or {})
            rec = ledger.get(name)
            if rec is None or (max_reserved_at is not None and float(rec.get("reservedAt", 0)) > max_reserved_at):
                return False
            del ledger[name]
            if tombstone is not None:
                uid = tombstone or str(rec.get("uid", ""))
                tombs[tomb_key(name, uid)] = {"name": name, "uid": uid, "projectID": int(rec["projectID"]),
                                                "size": int(rec["size"]), "deletedAt": time.time()}
            self._write(DRIVES, dict(cur, status=drive_status_body(drive_of(cur), ledger, tombs)), status=True)
            return True

        result: bool = self._retry(f"releasing volume {name} on drive {drive_id}", op)
        return result

    def delete_volume(self, name: str) -> Optional[Volume]:
        def op(attempt: int) -> Optional[Obj]:
            cur = self._volume_obj(name, attempt)
            if cur is None:
                return None
            return self._unprotect_and_delete(VOLUMES, cur)

        gone: Optional[Obj] = self._retry(f"volume {name}", op)
        if gone is None:
            return None
        old = volume_of(gone)
        self._release(old.drive_id, name, None, tombstone=old.uid)
        self._volume_event(gone, ev.VOLUME_RELEASED, "Release",
                           f"volume {name}: {format_size(old.size)} released on drive {old.drive_id} "
                           f"on node {old.node}")
        return old

    # ------------------------------------------------------------------ tombstones
    def list_tombstones(self, drive_id: Optional[str] = None) -> Sequence[Tombstone]:
        if drive_id is not None:
            obj = self._drives.get(drive_id)
            return tombstones_of(obj) if obj is not None else []
        return sorted((t for o in self._drives.all() for t in tombstones_of(o)), key=lambda t: (t.name, t.uid))

    def add_tombstone(self, tombstone: Tombstone) -> Tombstone:
        if not tombstone.drive_id or not tombstone.name:
            raise InvalidArgument("a tombstone needs a drive id and a volume name", "name the orphan to remove")
        out: List[Tombstone] = []

        def op(attempt: int) -> None:
            cur = self._drive_obj(tombstone.drive_id, attempt)
            if cur is None or not cur.get("status"):
                raise NotFound(f"drive {tombstone.drive_id} not found", "list drives to see the known ids")
            st = cur["status"]
            live = self.read_volume(tombstone.name)
            rec: Obj = (st.get("volumes") or {}).get(tombstone.name) or {}
            live_uids = {str(rec.get("uid", "")) if rec else None,
                         live.uid if live is not None and live.drive_id == tombstone.drive_id else None} - {None}
            if live_uids and (not tombstone.uid or tombstone.uid in live_uids or "" in live_uids):
                raise FailedPrecondition(f"volume {tombstone.name} is recorded on drive {tombstone.drive_id}",
                                         "delete it with DeleteVolume (delete its PVC), not as an orphan")
            tombs: Obj = dict(st.get("tombstones") or {})
            key = tomb_key(tombstone.name, tombstone.uid)
            new = Tombstone(drive_id=tombstone.drive_id, node=(cur.get("spec") or {}).get("node", ""),
                            name=tombstone.name, uid=tombstone.uid, project_id=tombstone.project_id,
                            size=tombstone.size, deleted_at=tombstone.deleted_at or time.time())
            out[:] = [new]
            if key in tombs:
                return
            tombs[key] = {"name": new.name, "uid": new.uid, "projectID": new.project_id, "size": new.size,
                          "deletedAt": new.deleted_at}
            self._write(DRIVES, dict(cur, status=dict(st, tombstones=tombs)), status=True)

        self._retry(f"tombstone {tombstone.name} on drive {tombstone.drive_id}", op)
        return out[0]

    def clear_tombstone(self, drive_id: str, name: str, uid: str) -> bool:
        def op(attempt: int) -> bool:
            cur = self._drive_obj(drive_id, attempt)
            if cur is None or not cur.get("status"):
                return False
            tombs: Obj = dict(cur["status"].get("tombstones") or {})
            if tombs.pop(tomb_key(name, uid), None) is None:
                return False
            st = dict(cur["status"])
            if tombs:
                st["tombstones"] = tombs
            else:
                st.pop("tombstones", None)
            self._write(DRIVES, dict(cur, status=st), status=True)
            return True

        result: bool = self._retry(f"clearing the tombstone of {name} on drive {drive_id}", op)
        return result

    def restore_volume(self, volume: Volume) -> Volume:
        check_restored_volume(volume)
        existing = restored_already(self.read_volume(volume.name), volume)
        if existing is not None:
            return existing
        params = dict(volume.parameters)

        def ledger_op(attempt: int) -> Obj:
            cur = self._drive_obj(volume.drive_id, attempt)
            if cur is None or not cur.get("status"):
                raise NotFound(f"drive {volume.drive_id} is not registered", "register the drive first")
            st = cur["status"]
            ledger: Obj = dict(st.get("volumes") or {})
            rec = ledger.get(volume.name)
            if rec is not None:
                if str(rec.get("uid", "")) == volume.uid:
                    return cur  # an earlier attempt got this far
                raise AlreadyExists(f"volume {volume.name} is reserved on drive {volume.drive_id} with another uid",
                                    "both are kept; rename or remove one of them by hand")
            if volume.project_id in used_project_ids(st):
                raise Conflict(f"volume {volume.name}: project id {volume.project_id} is taken on drive "
                               f"{volume.drive_id}", "both are kept; look at the drive's volumes")
            ledger[volume.name] = {"size": volume.size, "projectID": volume.project_id, "reservedAt": time.time(),
                                   "parameters": params, "uid": volume.uid}
            return self._write(DRIVES, dict(cur, status=drive_status_body(drive_of(cur), ledger, st.get("tombstones"))),
                               status=True)

        drive_obj = self._retry(f"restoring volume {volume.name}", ledger_op)
        node = drive_obj["spec"]["node"]
        body = _volume_object(volume, node, volume.project_id, volume.uid, params)
        try:
            out = self._create(VOLUMES, body)
        except ApiConflict as e:
            other = self._get(VOLUMES, object_name(volume.name))
            if other is not None and volume_of(other).uid == volume.uid:
                return volume_of(other)
            raise AlreadyExists(f"volume {volume.name} was recorded meanwhile", "both are kept") from e
        self._volume_event(out, ev.VOLUME_RESTORED, "Restore",
                           f"volume {volume.name}: {format_size(volume.size)} restored on drive {volume.drive_id} "
                           f"on node {node} from its on-drive metadata, project id {volume.project_id}")
        return volume_of(out)

    def report_orphans(self, drive_id: str, names: Sequence[str]) -> None:
        obj = self._drives.get(drive_id)
        if obj is None or not names:
            return
        meta = obj["metadata"]
        shown = ", ".join(list(names)[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
        self.events.emit(ev.Regarding("DirectPVDrive", meta["name"], meta.get("uid", "")), ev.WARNING,
                         ev.ORPHAN_VOLUMES, "Probe",
                         f"drive {drive_id} on node {(obj.get('spec') or {}).get('node', '')} holds {len(names)} "
                         f"volume director{'y' if len(names) == 1 else 'ies'} no volume record describes ({shown}): "
                         "kept; restore their records, or remove them with the orphans clean (check mode first)")

    # ------------------------------------------------------------------ upkeep
    def check(self) -> List[str]:
        """Problems found by comparing every drive's ledger with the volume objects ([] = consistent)."""
        problems: List[str] = []
        volumes = {v.name: v for v in (volume_of(o) for o in self._volumes.all())}
        seen: Set[str] = set()
        for obj in self._drives.all():
            d = drive_of(obj)
            ledger: Obj = (obj.get("status") or {}).get("volumes") or {}
            for vname, rec in ledger.items():
                seen.add(vname)
                v = volumes.get(vname)
                if v is None:
                    problems.append(f"drive {d.drive_id}: ledger holds {vname} ({rec['size']} bytes), no volume object")
                elif v.drive_id != d.drive_id or v.size != int(rec["size"]) or v.project_id != int(rec["projectID"]):
                    problems.append(f"volume {vname}: object and drive {d.drive_id}'s ledger disagree")
            if d.allocated > d.total:
                problems.append(f"drive {d.drive_id}: over-committed ({d.allocated} > {d.total})")
        for vname, v in volumes.items():
            if vname not in seen:
                problems.append(f"volume {vname}: no record in drive {v.drive_id}'s ledger")
        return problems

    def reconcile(self, grace_s: float = ORPHAN_GRACE_S) -> List[str]:
        """Release ledger records older than ``grace_s`` whose volume object does not exist (a crash
        between the two writes of reserve_volume or delete_volume). Returns the released names."""
        released: List[str] = []
        horizon = time.time() - grace_s
        for obj in self._drives.all():
            for vname in list((obj.get("status") or {}).get("volumes") or {}):
                if self._get(VOLUMES, object_name(vname)) is None and \
                        self._release(obj["metadata"]["name"], vname, horizon, tombstone=""):
                    released.append(vname)
        return released

    def ping(self) -> bool:
        try:
            k8s.VersionApi(self._client).get_code(_request_timeout=PING_TIMEOUT_S)
        except Exception:
            return False
        return not self._closed

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._drives.stop()
        self._volumes.stop()
        self._watch_client.rest_client.pool_manager.clear()
        self.events.close()
        self._event_sink.client.rest_client.pool_manager.clear()
