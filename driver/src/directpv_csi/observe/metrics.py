"""Prometheus metrics with DirectPV's names, collected at scrape time.

Per published volume of this node (labels ``tenant``, ``volumeID``, ``node``):

- ``directpv_stats_bytes_used``: bytes the volume uses, measured the way NodeGetVolumeStats
  measures it (``node/volumes.usage`` on the volume's directory: statfs of the project with
  prjquota, the volume's own files without);
- ``directpv_stats_bytes_total``: bytes the volume may use (its quota limit / reservation).

Per drive of this node (labels ``drive`` = drive id, ``node``):

- ``directpv_stats_drive_ready``: 1 when the drive is Ready, mounted by this node and its
  block device answers; else 0 (Lost, Error, removed, device gone);
- ``directpv_stats_drive_total_read_bytes`` / ``_total_write_bytes``: bytes read/written since
  boot, ``directpv_stats_drive_read_latency_seconds`` / ``_write_latency_seconds``: time spent
  on reads/writes since boot, ``directpv_stats_drive_wait_time_seconds``: weighted time in
  queue since boot, all from ``/sys/class/block/<dev>/stat`` (``device/sysfs.read_block_stat``);
- ``directpv_orphan_volumes``: volume directories on the drive that no record and no tombstone
  describes (kept, never removed automatically; node/orphans.py), as the registry's last check
  found them; ``directpv_tombstones``: volumes deleted in the store whose directories the node
  has still to move to the trash.

They are exposed as gauges, as DirectPV does: prometheus_client appends ``_total`` to a counter's
name, which would break dashboards written for DirectPV's names. They only grow (until the
device is re-attached), so ``rate()`` applies.

Nothing here lists the API: volumes come from ``store.list_volumes(node=...)`` (the kube store's
watch cache, the embedded store's node index) and drive mounts from the registry's memory.

Every process also exposes process/platform/GC metrics, ``directpv_csi_calls_total{method,code}``
(every CSI call by its gRPC code) and, in the controller, ``directpv_reconcile_*``. A process on
the kube store exposes its Event recorder's counters (kube/events.py): ``directpv_events_total``
by ``outcome`` (created, aggregated, coalesced, combined, patched, shed, failed: an Event that was
not sent is counted as ``shed`` or ``failed``, never gone without a trace) and
``directpv_events_queued``.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Iterable, Iterator, List, Mapping, Optional

import grpc
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from ..core.models import DRIVE_READY, Volume
from ..csi.proto import csi_pb2
from ..device.sysfs import read_block_stat
from ..node import volumes as _volumes
from ..node.registry import DriveRegistry
from ..store.base import Store

log = logging.getLogger("directpv_csi.observe")

TENANT_KEY = "directpv.dev/tenant"
PVC_NAMESPACE_KEY = "csi.storage.k8s.io/pvc/namespace"  # sent by external-provisioner --extra-create-metadata
VOLUME_LABELS = ("tenant", "volumeID", "node")
DRIVE_LABELS = ("drive", "node")


def tenant_of(volume: Volume) -> str:
    """The volume's tenant: its label ``directpv.dev/tenant`` when set, else the namespace of
    its PVC (the CreateVolume parameter external-provisioner adds with --extra-create-metadata,
    which the install role enables), else "". (A ``directpv.dev/`` StorageClass parameter would
    be a drive-label requirement, core/validation.py, so the tenant is not read from there.)"""
    return volume.labels.get(TENANT_KEY) or volume.parameters.get(PVC_NAMESPACE_KEY) or ""


class NodeCollector(Collector):
    """Volume and drive series of one node, read at scrape time (see the module docstring)."""

    def __init__(self, node_id: str, store: Store, registry: DriveRegistry, sysfs_root: str = "/sys") -> None:
        self.node_id = node_id
        self.store = store
        self.registry = registry
        self.sysfs_root = sysfs_root

    def collect(self) -> Iterable[Metric]:
        return list(self._volume_metrics()) + list(self._drive_metrics())

    def _volume_metrics(self) -> Iterator[Metric]:
        used = GaugeMetricFamily("directpv_stats_bytes_used", "Total number of bytes used by the volume",
                                 labels=VOLUME_LABELS)
        total = GaugeMetricFamily("directpv_stats_bytes_total", "Total number of bytes allocated to the volume",
                                  labels=VOLUME_LABELS)
        for vol in self.store.list_volumes(node=self.node_id):
            if not vol.target_paths:
                continue  # published volumes only (DirectPV's rule)
            md = self.registry.mounted(vol.drive_id)
            if md is None:
                continue  # drive not ready here: drive_ready says so
            try:
                u = _volumes.usage(_volumes.volume_path(md.mount, vol.name), size=vol.size, quota=md.quota)
            except OSError as exc:
                log.warning("metrics: cannot read usage of volume %s on drive %s: %s", vol.name, vol.drive_id, exc)
                continue
            labels = [tenant_of(vol), vol.name, vol.node]
            used.add_metric(labels, u.bytes_used)
            total.add_metric(labels, u.bytes_total)
        yield used
        yield total

    def _drive_metrics(self) -> Iterator[Metric]:
        def family(name: str, doc: str) -> GaugeMetricFamily:
            return GaugeMetricFamily("directpv_stats_drive_" + name, doc, labels=DRIVE_LABELS)

        ready = family("ready", "1 when the drive is Ready, mounted and its device answers, else 0")
        rbytes = family("total_read_bytes", "Total number of bytes read from the drive")
        wbytes = family("total_write_bytes", "Total number of bytes written to the drive")
        rlat = family("read_latency_seconds", "Total time spent reading from the drive (seconds)")
        wlat = family("write_latency_seconds", "Total time spent writing to the drive (seconds)")
        wait = family("wait_time_seconds", "Weighted time I/O requests spent queued or in flight (seconds)")
        orphans = GaugeMetricFamily("directpv_orphan_volumes", "Volume directories on the drive with neither a "
                                    "record nor a tombstone (kept; remove them with the explicit orphans clean)",
                                    labels=DRIVE_LABELS)
        tombs = GaugeMetricFamily("directpv_tombstones", "Volumes deleted in the store whose directories the node "
                                  "has still to move to the trash", labels=DRIVE_LABELS)
        found = self.registry.orphans()
        for drive in self.store.list_drives(node=self.node_id):
            labels = [drive.drive_id, drive.node]
            md = self.registry.mounted(drive.drive_id)
            stat = read_block_stat(md.name, self.sysfs_root) if md is not None else None
            ready.add_metric(labels, 1 if drive.status == DRIVE_READY and stat is not None else 0)
            if md is not None:
                orphans.add_metric(labels, len(found.get(drive.drive_id, ())))
                tombs.add_metric(labels, len(self.store.list_tombstones(drive.drive_id)))
            if stat is None:
                continue
            rbytes.add_metric(labels, stat.read_bytes)
            wbytes.add_metric(labels, stat.write_bytes)
            rlat.add_metric(labels, stat.read_ticks_ms / 1000)
            wlat.add_metric(labels, stat.write_ticks_ms / 1000)
            wait.add_metric(labels, stat.time_in_queue_ms / 1000)
        yield from (ready, rbytes, wbytes, rlat, wlat, wait, orphans, tombs)


def new_registry() -> CollectorRegistry:
    """A registry with the process, platform and GC collectors (each server has its own)."""
    reg = CollectorRegistry()
    ProcessCollector(registry=reg)
    PlatformCollector(registry=reg)
    GCCollector(registry=reg)
    return reg


# --- CSI calls by method and code --------------------------------------------------------

def call_counter(registry: CollectorRegistry) -> Counter:
    return Counter("directpv_csi_calls", "CSI calls served, by method and gRPC status code",
                   ("method", "code"), registry=registry)


class CallCounter(grpc.ServerInterceptor):  # type: ignore[misc]
    """Counts every CSI call the server answers in ``calls`` (labels method, code): OK, or the code
    the call ended with (``@rpc`` aborts with the domain error's code; unimplemented methods set
    UNIMPLEMENTED). A server interceptor (``create_server(..., interceptors=[...])``): the servicers
    stay as they were made. grpc.health.v1 calls are not counted."""

    def __init__(self, calls: Counter) -> None:
        self.calls = calls
        self._handlers: dict[str, Any] = {}  # method -> counting handler (one per method)

    def intercept_service(self, continuation: Callable[[Any], Any], details: Any) -> Any:
        method: str = details.method
        counted = self._handlers.get(method)
        if counted is not None:
            return counted
        handler = continuation(details)
        if handler is None or not method.startswith(_CSI_PREFIX) or handler.unary_unary is None:
            return handler  # unknown method, health checks: as they are
        counted = grpc.unary_unary_rpc_method_handler(
            _counted(method.rsplit("/", 1)[-1], handler.unary_unary, self.calls),
            request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer)
        self._handlers[method] = counted
        return counted


_CSI_PREFIX = "/" + csi_pb2.DESCRIPTOR.package + "."  # "/csi.v1.": every CSI call is unary-unary


def _counted(name: str, fn: Callable[[Any, grpc.ServicerContext], Any], calls: Counter) -> Callable[..., Any]:
    ok: List[Any] = []  # the method's OK series, looked up at its first OK call (not made before)

    def wrapper(request: Any, context: grpc.ServicerContext) -> Any:
        try:
            response = fn(request, context)
        except BaseException:
            calls.labels(name, _code_name(context)).inc()
            raise
        if not ok:
            ok.append(calls.labels(name, "OK"))  # two first calls at once: the same series twice
        ok[0].inc()
        return response

    wrapper.__name__ = name
    return wrapper


def _code_name(context: grpc.ServicerContext) -> str:
    try:
        code: Optional[grpc.StatusCode] = context.code()
    except Exception:  # a context without code(): count it, never break the call
        code = None
    return code.name if code is not None else "UNKNOWN"


class EventCollector(Collector):
    """The Event recorder's counters at scrape time (``stats``: kube.events.EventRecorder.stats)."""

    def __init__(self, stats: Callable[[], Mapping[str, int]]) -> None:
        self._stats = stats

    def collect(self) -> Iterable[Metric]:
        got = dict(self._stats())
        queued = got.pop("queued", 0)
        total = CounterMetricFamily("directpv_events", "Kubernetes Events of this process by outcome: created, "
                                    "aggregated into a series, coalesced while queued, combined with similar "
                                    "events, series patched, shed at a full queue, failed API calls",
                                    labels=("outcome",))
        for outcome, n in sorted(got.items()):
            total.add_metric((outcome,), n)
        yield total
        yield GaugeMetricFamily("directpv_events_queued", "Distinct Events waiting to be sent", value=queued)


class ReconcileMetrics:
    """Counters of the controller's periodic reconcile (observe/reconcile.py)."""

    def __init__(self, registry: Optional[CollectorRegistry] = None) -> None:
        self.runs = Counter("directpv_reconcile_runs", "Ledger reconcile rounds, by outcome (ok, error)",
                            ("outcome",), registry=registry)
        self.released = Counter("directpv_reconcile_released",
                                "Ledger records released because their volume object did not exist",
                                registry=registry)

