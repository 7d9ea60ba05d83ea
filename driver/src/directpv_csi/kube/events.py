"""Kubernetes Events (``events.k8s.io/v1``) for the store's important transitions.

The store (kube/store.py) decides when something worth telling an operator happened and calls
:meth:`EventRecorder.emit`; this module owns what follows. It imports no Kubernetes client:
the API calls go through a :class:`Sink` that kube.py provides (the one module allowed to
import ``kubernetes``), so the queueing, aggregation and error handling here are plain code.

Reasons (``kubectl get events --field-selector involvedObject.kind=DirectPVDrive``), named after
DirectPV's own where one exists:

=======================  =======  ===================  ========================================
reason                   type     regarding            when
=======================  =======  ===================  ========================================
VolumeProvisioned        Normal   DirectPVVolume       reserve_volume created the volume object
VolumeExpanded           Normal   DirectPVVolume       expand_volume grew spec.size
VolumeReleased           Normal   DirectPVVolume       delete_volume deleted it and freed its space
VolumeRestored           Normal   DirectPVVolume       restore_volume recorded it from its on-drive metadata
OrphanVolumes            Warning  DirectPVDrive        a node found volume directories no record describes
DriveAdded               Normal   DirectPVDrive        a drive is registered (first status, Ready)
DriveRecovered           Normal   DirectPVDrive        Lost/Error -> Ready
DriveRemoved             Normal   DirectPVDrive        -> Removed
DriveLost                Warning  DirectPVDrive        -> Lost (device not found)
DriveHasIOError          Warning  DirectPVDrive        -> Error, message starts with "I/O error"
DriveHasMultipleMatches  Warning  DirectPVDrive        -> Error, message starts with "multiple matches"
DriveHasError            Warning  DirectPVDrive        -> Error, any other message
DeviceFormatted          Normal   DirectPVInitRequest  a node formatted one of its devices
DeviceInitPlanned        Normal   DirectPVInitRequest  a dry run planned one
InitError                Warning  DirectPVInitRequest  a device was refused or its format failed
=======================  =======  ===================  ========================================

DirectPV says ``DriveMounted`` when a node mounts a drive; we say ``DriveAdded`` when the drive
object gets its first status, which is the moment it becomes usable for volumes.

Namespace: every DirectPV object is cluster-scoped, and Events are namespaced. Like client-go's
``tools/events`` recorder (which uses ``metav1.NamespaceDefault`` when the regarding object has
no namespace), events go to ``default``; the API server accepts only ``default`` (or none) for
events about cluster-scoped objects, so no other namespace would do.

Never slows down or fails the operation: :meth:`emit` puts the event on a bounded queue and
returns; one background thread, started on the first event, sends them. The queue holds at most
``queue_size`` *distinct* events: a repeat of one still queued (same regarding object, reason, type
and action) is folded into it (its count grows, ``coalesced``), so a burst of repeats never fills
it. Only a new distinct event arriving at a full queue is shed; it is counted per reason
(``shed``, ``shed_by_reason``) and reported in a log line with the counts (at most one line per
``log_every_s``; the counts are cumulative, so none is lost between lines). A failed API call is
logged the same way and the event dropped (``failed``). :meth:`stats` gives every counter.

Aggregation, as client-go does it: events with the same regarding object (uid), reason, type and
action, each less than ``window_s`` (6 minutes, client-go's) after the previous one, are one
series. The first is created; the repeats only increment a counter in memory, and the thread
patches ``series: {count, lastObservedTime}`` at most once per ``series_flush_s`` per series (and
at close). A drive that flaps between Ready and Lost a thousand times makes two Events and a few
patches, not 2,000 objects in etcd.

Similar events, as client-go's ``EventAggregator`` combines them: Normal events with the same kind
of regarding object, reason and action but about *different* objects (a StatefulSet's volumes
provisioned one after another) are sent one by one up to ``similar_max`` (10, client-go's) within
``similar_window_s`` (10 minutes, client-go's; the window runs on while similar events keep coming).
Past that, each becomes one occurrence of a single combined series per (kind, reason, action): its
Event regards the first object combined, its note starts ``(combined from similar events):`` and its
``series.count`` is the number of occurrences; every combined occurrence is counted (``combined``).
So the Events a provisioning burst costs the API server do not grow with the burst (at 300 volumes/s
they would double its writes), and none is lost: the count says how many, the DirectPVVolume objects
and the provisioner's PVC events say which. Warnings are never combined: each stays its own Event.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Dict, Optional, Protocol, Set, Tuple

log = logging.getLogger("directpv_csi.store.events")  # the name operators filter on (kept from store/)

REPORTING_CONTROLLER = "csi.directpv.dev"
DEFAULT_NAMESPACE = "default"
API_VERSION = "directpv.dev/v1beta1"

NORMAL = "Normal"
WARNING = "Warning"

VOLUME_PROVISIONED = "VolumeProvisioned"
VOLUME_EXPANDED = "VolumeExpanded"
VOLUME_RELEASED = "VolumeReleased"
VOLUME_RESTORED = "VolumeRestored"
ORPHAN_VOLUMES = "OrphanVolumes"
DRIVE_ADDED = "DriveAdded"
DRIVE_RECOVERED = "DriveRecovered"
DRIVE_REMOVED = "DriveRemoved"
DRIVE_LOST = "DriveLost"
DRIVE_HAS_IO_ERROR = "DriveHasIOError"
DRIVE_HAS_MULTIPLE_MATCHES = "DriveHasMultipleMatches"
DRIVE_HAS_ERROR = "DriveHasError"
DEVICE_FORMATTED = "DeviceFormatted"
DEVICE_INIT_PLANNED = "DeviceInitPlanned"
INIT_ERROR = "InitError"

NOTE_MAX = 1024  # the API server refuses longer notes (events.k8s.io/v1 validation)
WINDOW_S = 360.0  # client-go: isomorphic events within 6 minutes form one series
SERIES_FLUSH_S = 30.0
QUEUE_SIZE = 1000
SIMILAR_MAX = 10  # client-go EventAggregator: defaultAggregateMaxEvents
SIMILAR_WINDOW_S = 600.0  # client-go EventAggregator: defaultAggregateIntervalInSeconds
COMBINED_PREFIX = "(combined from similar events): "
LOG_EVERY_S = 60.0

Obj = Dict[str, Any]


class Sink(Protocol):
    """Where events go (kube.py: ``events.k8s.io/v1`` through the API client). Any exception is
    the recorder's to log and drop."""

    def create(self, namespace: str, body: Obj) -> None: ...

    def patch_series(self, namespace: str, name: str, series: Obj) -> None: ...


@dataclass(frozen=True)
class Regarding:
    """The DirectPV object an event is about (``regarding`` of the Event)."""

    kind: str  # DirectPVDrive | DirectPVVolume
    name: str
    uid: str
    api_version: str = API_VERSION


Key = Tuple[str, str, str, str]


@dataclass
class Event:
    regarding: Regarding
    type: str  # Normal | Warning
    reason: str
    action: str
    note: str
    at: float = field(default_factory=time.time)
    count: int = 1  # occurrences this queued event stands for (repeats folded in while it waited)
    last: float = 0.0  # when the last of them happened (0: ``at``)
    key: Optional[Key] = None  # its series (None: key_of its regarding object, reason, type, action)


def key_of(regarding: Regarding, type_: str, reason: str, action: str) -> Key:
    """What makes two events one series: the regarding object (its uid, else kind/name), reason, type, action."""
    return (regarding.uid or f"{regarding.kind}/{regarding.name}", reason, type_, action)


@dataclass
class _Similar:
    """The distinct objects seen for one (kind, reason, action) of Normal events in the window."""

    last: float
    keys: Set[Key] = field(default_factory=set)


@dataclass
class _Series:
    name: str
    first: float
    last: float
    count: int = 1
    dirty: bool = False  # count grew since the last patch


def drive_error_reason(message: str) -> str:
    """The Warning reason of a drive in Error, from the message the node wrote (node/registry.py)."""
    text = message.lower()
    if text.startswith("i/o error"):
        return DRIVE_HAS_IO_ERROR
    if text.startswith("multiple matches"):
        return DRIVE_HAS_MULTIPLE_MATCHES
    return DRIVE_HAS_ERROR


def micro_time(t: float) -> str:
    """A Kubernetes MicroTime (RFC 3339 with microseconds, UTC)."""
    return datetime.fromtimestamp(t, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def event_body(ev: Event, namespace: str, instance: str) -> Obj:
    """The ``events.k8s.io/v1`` Event for ``ev`` (name ``<object>.<hex ns>``, as client-go names them)."""
    note = ev.note if len(ev.note) <= NOTE_MAX else ev.note[: NOTE_MAX - 3] + "..."
    return {
        "apiVersion": "events.k8s.io/v1", "kind": "Event",
        "metadata": {"name": f"{ev.regarding.name}.{int(ev.at * 1e9):x}", "namespace": namespace},
        "eventTime": micro_time(ev.at),
        "reportingController": REPORTING_CONTROLLER, "reportingInstance": instance,
        "action": ev.action, "reason": ev.reason, "type": ev.type, "note": note,
        "regarding": {"apiVersion": ev.regarding.api_version, "kind": ev.regarding.kind,
                      "name": ev.regarding.name, "uid": ev.regarding.uid},
    }


_STOP = object()


class EventRecorder:
    """Queues events and sends them from one background thread (see the module docstring).

    ``instance`` is the reporting instance (node name, or pod name: the process identity);
    ``enabled=False`` makes :meth:`emit` a no-op (benchmarks)."""

    def __init__(self, sink: Sink, instance: str, namespace: str = DEFAULT_NAMESPACE, enabled: bool = True,
                 queue_size: int = QUEUE_SIZE, window_s: float = WINDOW_S, series_flush_s: float = SERIES_FLUSH_S,
                 log_every_s: float = LOG_EVERY_S, similar_max: int = SIMILAR_MAX,
                 similar_window_s: float = SIMILAR_WINDOW_S) -> None:
        if not instance:
            raise ValueError("an event recorder needs a reporting instance (the node or pod name)")
        self.enabled = enabled
        self.instance = instance[:128]  # the API server's limit for reportingInstance
        self.namespace = namespace
        self._sink = sink
        # distinct queued events by key (repeats fold into them); the queue carries their keys in
        # order (and _STOP), never more than queue_size + 1 items
        self._max_queued = max(1, queue_size)
        self._pending: Dict[Key, Event] = {}
        self._queue: queue.Queue[object] = queue.Queue()
        self._window_s = window_s
        self._flush_s = series_flush_s
        self._log_every_s = log_every_s
        self._series: Dict[Key, _Series] = {}
        self._similar_max = similar_max  # 0: never combine
        self._similar_window_s = similar_window_s
        self._similar: Dict[Tuple[str, str, str], _Similar] = {}
        self._lock = threading.Lock()
        self._log_lock = threading.Lock()
        self._thread: Optional[threading.Thread] = None
        self._closed = False
        self._last_log = 0.0
        self._unlogged = 0
        # counters (tests, metrics): events created, repeats folded into a series (``coalesced``: of
        # them, folded while still queued), events about other objects folded into a combined series
        # (``combined``), series patches sent, distinct events shed because the queue was full
        # (``dropped`` is the same number, its old name), API calls that failed
        self.created = 0
        self.aggregated = 0
        self.coalesced = 0
        self.combined = 0
        self.patched = 0
        self.shed = 0
        self.shed_by_reason: Dict[str, int] = {}
        self.failed = 0

    @property
    def dropped(self) -> int:
        return self.shed

    def stats(self) -> Dict[str, int]:
        """Every counter (for metrics and log lines)."""
        with self._lock:
            return {"created": self.created, "aggregated": self.aggregated, "coalesced": self.coalesced,
                    "combined": self.combined, "patched": self.patched, "shed": self.shed, "failed": self.failed,
                    "queued": len(self._pending)}

    def emit(self, regarding: Regarding, type_: str, reason: str, action: str, note: str) -> None:
        """Queue an event; never blocks, never raises."""
        if not self.enabled or self._closed:
            return
        key = key_of(regarding, type_, reason, action)
        now = time.time()
        with self._lock:
            if type_ == NORMAL and self._similar_max > 0 and self._combines(key, regarding.kind, reason, action, now):
                self.combined += 1
                key = (f"{COMBINED_PREFIX}{regarding.kind}", reason, type_, action)
                note = COMBINED_PREFIX + note
            queued = self._pending.get(key)
            if queued is not None:  # a repeat of a queued event: one more occurrence of it
                queued.count += 1
                queued.last = now
                self.coalesced += 1
                return
            if len(self._pending) >= self._max_queued:
                self.shed += 1
                self.shed_by_reason[reason] = self.shed_by_reason.get(reason, 0) + 1
                shed = dict(self.shed_by_reason)
            else:
                self._pending[key] = Event(regarding, type_, reason, action, note, at=now, key=key)
                shed = None
        if shed is not None:
            self._log_failure(f"event queue full ({self._max_queued} distinct events waiting): shed {reason} "
                              f"for {regarding.kind} {regarding.name}; shed so far by reason: "
                              + ", ".join(f"{r} {n}" for r, n in sorted(shed.items()))
                              + f"; {self.coalesced} repeat(s) coalesced into queued events")
            return
        self._queue.put_nowait(key)
        self._start()

    def _combines(self, key: Key, kind: str, reason: str, action: str, now: float) -> bool:
        """Whether this Normal event joins its combined series: ``similar_max`` other objects had
        one like it within the window (client-go's EventAggregator rule). Called under the lock."""
        sim_key = (kind, reason, action)
        sim = self._similar.get(sim_key)
        if sim is None or now - sim.last >= self._similar_window_s:
            sim = self._similar[sim_key] = _Similar(last=now)
        sim.last = now
        if key in sim.keys:
            return False  # a repeat about the same object: its own series
        if len(sim.keys) < self._similar_max:
            sim.keys.add(key)
            return False
        return True

    def _start(self) -> None:
        with self._lock:
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(target=self._run, name="event-recorder", daemon=True)
                self._thread.start()

    def close(self, timeout_s: float = 2.0) -> None:
        """Send what is queued and the pending series counts (for at most ``timeout_s``), then stop."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
        if thread is None:
            return
        deadline = time.monotonic() + timeout_s
        self._queue.put_nowait(_STOP)
        thread.join(max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            log.warning("event recorder: still sending after %.1f s at close; %d event(s) not sent",
                        timeout_s, len(self._pending))
        elif self.shed:  # the shed ones are not on the API server: say how many, whatever the rate limit
            log.warning("event recorder closed: %s", ", ".join(f"{k} {v}" for k, v in self.stats().items()))

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Wait until every queued event was handled (sent or dropped); True if so in time."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._queue.unfinished_tasks == 0:
                return True
            time.sleep(0.01)
        return self._queue.unfinished_tasks == 0

    # -- the thread --
    def _run(self) -> None:
        next_flush = time.monotonic() + self._flush_s
        while True:
            try:
                item = self._queue.get(timeout=max(0.0, next_flush - time.monotonic()))
            except queue.Empty:
                item = None
            try:
                if item is _STOP:
                    self._flush_series(time.time())
                    return
                if isinstance(item, tuple):
                    with self._lock:
                        event = self._pending.pop(item, None)
                    if event is not None:
                        self._handle(event)
                if time.monotonic() >= next_flush:
                    self._flush_series(time.time())
                    next_flush = time.monotonic() + self._flush_s
            except Exception as e:  # never let the thread die: the store keeps running without it
                self.failed += 1
                self._log_failure(f"event recorder: {e!r}")
            finally:
                if item is not None:
                    self._queue.task_done()

    def _handle(self, ev: Event) -> None:
        key = ev.key or key_of(ev.regarding, ev.type, ev.reason, ev.action)
        last = ev.last or ev.at
        cur = self._series.get(key)
        if cur is not None and ev.at - cur.last < self._window_s:
            cur.count += ev.count
            cur.last = last
            cur.dirty = True
            self.aggregated += ev.count
            return
        body = event_body(ev, self.namespace, self.instance)
        try:
            self._sink.create(self.namespace, body)
        except Exception as e:
            self.failed += 1
            self._log_failure(f"could not create event {ev.reason} for {ev.regarding.kind} {ev.regarding.name} "
                              f"in namespace {self.namespace}: {e}")
            return
        self.created += 1
        self.aggregated += ev.count - 1  # repeats folded in while it was queued: the series counts them
        self._series[key] = _Series(name=body["metadata"]["name"], first=ev.at, last=last, count=ev.count,
                                    dirty=ev.count > 1)

    def _flush_series(self, now: float) -> None:
        for key, s in list(self._series.items()):
            if s.dirty:
                s.dirty = False
                try:
                    self._sink.patch_series(self.namespace, s.name,
                                            {"count": s.count, "lastObservedTime": micro_time(s.last)})
                    self.patched += 1
                except Exception as e:
                    self.failed += 1
                    self._log_failure(f"could not update event {s.name} (count {s.count}) in namespace "
                                      f"{self.namespace}: {e}")
            if now - s.last >= self._window_s:
                del self._series[key]

    def _log_failure(self, message: str) -> None:
        with self._log_lock:
            now = time.monotonic()
            if self._last_log and now - self._last_log < self._log_every_s:
                self._unlogged += 1
                return
            more = f" (and {self._unlogged} more since the last report)" if self._unlogged else ""
            self._last_log = now
            self._unlogged = 0
        log.warning("%s%s; events are best effort, the store carries on", message, more)
