"""The node's device report on the Kubernetes store: one ``DirectPVNode`` per node (name = node id).

The node server writes into ``status`` every block device its drive registry probed and the
verdict on each one, the same verdict the Ansible side gives (core/judge.py, rows of
core/selection.device_row): available, available only with force, or why not.
``kubectl get directpvnodes`` then shows how many devices each node has and how many could
become drives; ``-o yaml`` shows every device with its reasons (DirectPV's ``discover``).
``status.orphans`` lists the orphan volume directories on the node's drives (no record, no
tombstone: kept; node/orphans.py), ``status.orphanCount`` counts them (a printer column).

Writes happen only when the report changed (a device came, went, or its verdict changed), so a
quiet node writes nothing. ``spec.refresh: true`` (set by an operator: ``kubectl patch dpvn n1
--type merge -p '{"spec":{"refresh":true}}'``) makes the node probe again at once; the node then
writes the report with a new ``refreshedAt`` and sets ``spec.refresh`` back to false. A watch on
this one object (field selector on its name) hears the request: no polling.

The object carries no data, so no finalizer; losing it loses nothing (the watch sees the deletion
and the node writes it again at once). Errors are logged and retried on the next report: the report never disturbs the
registry that calls it.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from kubernetes import client as k8s

from ..core.errors import Conflict, NotFound
from ..core.identity import hardware_id, state_token
from ..core.judge import JudgePolicy, judge
from ..core.models import Device
from ..core.selection import device_row
from . import events as ev
from .errors import ApiConflict, translated
from .objects import GROUP, LABEL_NODE, VERSION, label_value
from .watch import ListWatch

NODES = "directpvnodes"
NODES_RESOURCE = f"{NODES}.{GROUP}"
WATCH_TIMEOUT_S = 300
REQUEST_TIMEOUT_S = 10.0

log = logging.getLogger("directpv_csi.node.report")

Obj = Dict[str, Any]


def device_reports(devices: Sequence[Device], policy: JudgePolicy, node: str) -> List[Obj]:
    """``status.devices`` of a DirectPVNode: one entry per device, sorted by kernel name."""
    verdicts = judge(devices, policy)
    out: List[Obj] = []
    for dev in sorted(devices, key=lambda d: d.name):
        row = device_row(dev, verdicts[dev.name], node, state_token(dev))
        out.append({
            "name": dev.name, "majMin": dev.majmin, "size": dev.size, "make": dev.make,
            "fsType": dev.fs_type, "fsUUID": dev.fs_uuid, "available": row["available"],
            "availableWithForce": row["available_with_force"],
            "reasons": [f"{r['code']}: {r['text']}" for r in row["reasons"]],
            "id": row["id"],  # the state token of the discover table: changes when the device does
            "hardwareID": hardware_id(dev),  # serial/WWN based, survives reformatting; "" without one (loops)
        })
    return out


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class NodeReporter:
    """Keeps ``DirectPVNode/<node>``'s status equal to the last probe (see the module docstring).

    ``report(devices)`` is the registry's ``on_probe`` hook; ``on_refresh`` is called (from the
    watch thread) when an operator sets ``spec.refresh``: the registry probes again at once."""

    def __init__(self, api_client: k8s.ApiClient, node: str, policy: JudgePolicy,
                 on_refresh: Optional[Callable[[], None]] = None) -> None:
        self.node = node
        self.policy = policy
        self.on_refresh = on_refresh
        self._api: Any = k8s.CustomObjectsApi(api_client)  # answers are plain dicts
        self._lock = threading.Lock()
        self._last: Optional[List[Obj]] = None  # the devices last written
        self._orphans: List[Obj] = []  # [{drive, name}] as the registry last reported them
        self._orphans_written: Optional[List[Obj]] = None
        self._refresh_pending = False
        self._answered_generation = 0  # metadata.generation of the last refresh request answered
        self._stop = threading.Event()
        self._watch: Optional[ListWatch] = None
        self.writes = 0  # status writes made (tests)

    # -- the report --
    def report(self, devices: Sequence[Device]) -> bool:
        """Write the report if it changed (or a refresh is pending); True when written.
        Never raises: an API error is logged and the next probe tries again."""
        rows = device_reports(devices, self.policy, self.node)
        with self._lock:
            if rows == self._last and not self._refresh_pending and self._orphans == self._orphans_written:
                return False
            try:
                self._write(rows)
            except Exception as exc:
                log.warning("cannot write the device report of node %s (DirectPVNode %s): %s; retrying on the "
                            "next probe", self.node, self.node, exc)
                self._last = None
                return False
            self._last = rows
            self._orphans_written = list(self._orphans)
            self.writes += 1
            return True

    def report_orphans(self, orphans: Dict[str, Sequence[str]]) -> bool:
        """The registry's ``on_orphans`` hook: ``{drive id: orphan names}``; written with the last
        device rows when it changed (True). Never raises."""
        wanted = [{"drive": d, "name": n} for d in sorted(orphans) for n in sorted(orphans[d])]
        with self._lock:
            self._orphans = wanted
            if self._last is None or wanted == self._orphans_written:
                return False  # the next report() writes it with the devices
            try:
                self._write(self._last)
            except Exception as exc:
                log.warning("cannot write the orphans of node %s (DirectPVNode %s): %s; retrying on the next "
                            "probe", self.node, self.node, exc)
                self._orphans_written = None
                return False
            self._orphans_written = list(wanted)
            self.writes += 1
            return True

    def _write(self, rows: List[Obj]) -> None:
        available = sum(1 for r in rows if r["available"])
        status = {"deviceCount": len(rows), "availableCount": available, "refreshedAt": _now(), "devices": rows,
                  "orphanCount": len(self._orphans), "orphans": list(self._orphans)}
        for _ in range(8):  # optimistic: a 409 means the object changed meanwhile (an operator's refresh)
            obj = self._get()
            if obj is None:
                try:
                    with translated("create", NODES_RESOURCE, self.node):
                        obj = self._api.create_cluster_custom_object(GROUP, VERSION, NODES, {
                            "apiVersion": f"{GROUP}/{VERSION}", "kind": "DirectPVNode",
                            "metadata": {"name": self.node, "labels": {"directpv.dev/node": self.node}},
                            "spec": {"refresh": False}}, _request_timeout=REQUEST_TIMEOUT_S)
                except ApiConflict:
                    continue
            assert obj is not None
            refresh = bool((obj.get("spec") or {}).get("refresh"))
            if refresh:  # before the writes: their watch events must not ask for this refresh again
                self._answered_generation = int(obj["metadata"].get("generation") or 0)
            try:
                with translated("update", f"{NODES}/status.{GROUP}", self.node):
                    out = self._api.replace_cluster_custom_object_status(
                        GROUP, VERSION, NODES, self.node, dict(obj, status=status),
                        _request_timeout=REQUEST_TIMEOUT_S)
                if refresh:  # answered: clear the request on the version just written
                    with translated("update", NODES_RESOURCE, self.node):
                        self._api.replace_cluster_custom_object(
                            GROUP, VERSION, NODES, self.node,
                            dict(out, spec=dict(out.get("spec") or {}, refresh=False)),
                            _request_timeout=REQUEST_TIMEOUT_S)
            except ApiConflict:
                continue
            self._refresh_pending = False
            return
        raise Conflict(f"DirectPVNode {self.node} kept changing during 8 attempts", "the next probe writes it again")

    def _get(self) -> Optional[Obj]:
        try:
            with translated("get", NODES_RESOURCE, self.node):
                obj: Obj = self._api.get_cluster_custom_object(GROUP, VERSION, NODES, self.node,
                                                               _request_timeout=REQUEST_TIMEOUT_S)
        except NotFound:
            return None
        return obj

    # -- refresh requests --
    def start(self) -> None:
        """Watch this node's object for ``spec.refresh`` in a thread (kube/watch.py: the one loop)."""
        if self._watch is None:
            self._watch = ListWatch(self._api, NODES, self._on_list, self._on_event,
                                    field_selector=f"metadata.name={self.node}", watch_timeout_s=WATCH_TIMEOUT_S,
                                    request_timeout_s=REQUEST_TIMEOUT_S, min_backoff_s=2.0, max_backoff_s=10.0,
                                    name="node-report-watch")
            self._watch.start()

    def stop(self) -> None:
        self._stop.set()
        if self._watch is not None:
            self._watch.stop()

    def _on_list(self, items: List[Obj], rv: str) -> None:
        for obj in items:
            self._on_event("ADDED", obj)

    def _on_event(self, kind: str, obj: Obj) -> None:
        if self._stop.is_set():
            return
        if kind == "DELETED":  # someone deleted the report: write it again at once
            with self._lock:
                self._last = None
                self._refresh_pending = True
                self._answered_generation = 0
            log.info("DirectPVNode %s was deleted; writing it again", self.node)
            if self.on_refresh is not None:
                self.on_refresh()
            return
        if kind not in ("ADDED", "MODIFIED") or not (obj.get("spec") or {}).get("refresh"):
            return
        generation = int((obj.get("metadata") or {}).get("generation") or 0)
        with self._lock:  # report() holds it while writing: it sees the answered generation
            if generation == self._answered_generation:
                return  # our own status write, before we cleared the request
            self._refresh_pending = True
            log.info("DirectPVNode %s: refresh requested; probing again", self.node)
            if self.on_refresh is not None:
                self.on_refresh()


# --- init requests ------------------------------------------------------------------------

INIT_REQUESTS = "directpvinitrequests"
DONE = ("Success", "Error", "Planned")


def _key(entry: Obj) -> Tuple[str, str]:
    return str(entry.get("node", "")), str(entry.get("name", ""))


def pending_devices(obj: Obj, node: str) -> List[Obj]:
    """The request's devices on ``node`` that have no result yet (each (node, name) once)."""
    done = {_key(r) for r in ((obj.get("status") or {}).get("results") or []) if r.get("status") in DONE}
    out: List[Obj] = []
    seen = set()
    for entry in (obj.get("spec") or {}).get("devices") or []:
        key = _key(entry)
        if key[0] == node and key not in done and key not in seen:
            seen.add(key)
            out.append(entry)
    return out


def merged_status(obj: Obj, results: Sequence[Obj]) -> Obj:
    """``status`` with ``results`` merged in by (node, name), in the order of ``spec.devices``:
    Pending while some device has no result, else Error if one failed, else Processed."""
    by_key: Dict[Tuple[str, str], Obj] = {_key(r): r for r in ((obj.get("status") or {}).get("results") or [])}
    by_key.update({_key(r): dict(r) for r in results})
    wanted: List[Tuple[str, str]] = []
    for entry in (obj.get("spec") or {}).get("devices") or []:
        if _key(entry) not in wanted:
            wanted.append(_key(entry))
    ordered = [by_key[k] for k in wanted if k in by_key] + [r for k, r in by_key.items() if k not in wanted]
    if any(k not in by_key or by_key[k].get("status") not in DONE for k in wanted):
        overall = "Pending"
    elif any(by_key[k]["status"] == "Error" for k in wanted):
        overall = "Error"
    else:
        overall = "Processed"
    return {"status": overall, "requested": len(wanted), "results": ordered}


Handler = Callable[[Obj, Obj], Obj]  # (request object, device entry) -> result row


def init_request_body(name: str, devices: Sequence[Obj], force: bool = False, dry_run: bool = False) -> Obj:
    """A DirectPVInitRequest for ``devices`` (``{node, name, id}``). When they all are on one node the
    request carries the label ``directpv.dev/node=<node>``, so only that node's watch receives it;
    a request naming several nodes (or a node name that is no label value) stays unlabelled and
    goes to every node's watch of unlabelled requests (prefer one request per node)."""
    nodes = {str(d.get("node", "")) for d in devices}
    meta: Obj = {"name": name}
    node = nodes.pop() if len(nodes) == 1 else ""
    if node and label_value(node):
        meta["labels"] = {LABEL_NODE: node}
    spec: Obj = {"devices": [dict(d) for d in devices]}
    if force:
        spec["force"] = True
    if dry_run:
        spec["dryRun"] = True
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "DirectPVInitRequest", "metadata": meta, "spec": spec}


class InitRequestWatcher:
    """Formats the devices of DirectPVInitRequests that name this node, one at a time, recording each
    result as soon as it is known (a restart never repeats a recorded device). ``handle`` does the
    work (node/initreq.py); ``on_formatted`` runs after a device became a drive (the registry syncs).

    Node-scoped: it watches the requests labelled ``directpv.dev/node=<this node>`` (see
    :func:`init_request_body`) and, for requests made before the label existed or naming several
    nodes, the unlabelled ones (``!directpv.dev/node``); a request labelled for another node never
    reaches it. A node name that is no label value watches every request, as before."""

    def __init__(self, api_client: k8s.ApiClient, node: str, handle: Handler,
                 on_formatted: Optional[Callable[[], None]] = None,
                 events: Optional[ev.EventRecorder] = None) -> None:
        self.node = node
        self.handle = handle
        self.on_formatted = on_formatted
        self.events = events  # DeviceFormatted / DeviceInitPlanned / InitError about the request
        self._api: Any = k8s.CustomObjectsApi(api_client)  # answers are plain dicts
        self._stop = threading.Event()
        self._watches: List[ListWatch] = []
        self._busy = threading.Lock()  # one device at a time, whichever watch delivered its request
        # (request uid, node, device) recorded by this process: a watch event older than the result
        # (the request as it was before) must not hand the device to ``handle`` again
        self._recorded: Dict[Tuple[str, str, str], None] = {}
        self.handled = 0  # device results recorded (tests)

    @property
    def selectors(self) -> List[str]:
        """The label selectors of the watches: this node's requests and the unlabelled ones."""
        if not label_value(self.node):
            return [""]
        return [f"{LABEL_NODE}={self.node}", f"!{LABEL_NODE}"]

    def start(self) -> None:
        """Watch the init requests in threads (kube/watch.py: the one loop), one per selector."""
        if not self._watches:
            for i, selector in enumerate(self.selectors):
                lw = ListWatch(self._api, INIT_REQUESTS, self._on_list, self._on_event, label_selector=selector,
                               watch_timeout_s=WATCH_TIMEOUT_S, request_timeout_s=REQUEST_TIMEOUT_S,
                               min_backoff_s=2.0, max_backoff_s=10.0, name=f"init-requests-{i}")
                self._watches.append(lw)
                lw.start()

    @property
    def received(self) -> int:
        """ADDED/MODIFIED/DELETED events the watches delivered (tests)."""
        return sum(w.received for w in self._watches)

    def stop(self) -> None:
        self._stop.set()
        for w in self._watches:
            w.stop()

    def _on_list(self, items: List[Obj], rv: str) -> None:
        for obj in items:
            if self._stop.is_set():
                return
            self.process(obj)

    def _on_event(self, kind: str, obj: Obj) -> None:
        if kind in ("ADDED", "MODIFIED") and not self._stop.is_set():
            self.process(obj)

    def process(self, obj: Obj) -> int:
        """Handle this node's devices without a result; returns how many were handled."""
        with self._busy:
            return self._process(obj)

    def _process(self, obj: Obj) -> int:
        name = obj["metadata"]["name"]
        uid = str(obj["metadata"].get("uid", ""))
        count = 0
        for entry in pending_devices(obj, self.node):
            if self._stop.is_set():
                break
            done = (uid, *_key(entry))
            if done in self._recorded:
                continue
            try:
                result = self.handle(obj, entry)
            except Exception as exc:  # a bug must not leave the device Pending forever
                log.exception("init request %s: device %s", name, entry.get("name"))
                result = {"node": self.node, "name": str(entry.get("name", "")), "status": "Error",
                          "driveID": "", "message": f"internal error: {exc}"}
            self._record(name, result)
            self._recorded[done] = None
            if len(self._recorded) > 4096:
                del self._recorded[next(iter(self._recorded))]
            self._event(obj, result)
            count += 1
            self.handled += 1
            if result["status"] == "Success" and self.on_formatted is not None:
                self.on_formatted()
        return count

    def _event(self, obj: Obj, result: Obj) -> None:
        if self.events is None:
            return
        meta = obj["metadata"]
        reason, type_ = {"Success": (ev.DEVICE_FORMATTED, ev.NORMAL), "Planned": (ev.DEVICE_INIT_PLANNED, ev.NORMAL)
                         }.get(result["status"], (ev.INIT_ERROR, ev.WARNING))
        self.events.emit(ev.Regarding("DirectPVInitRequest", meta["name"], meta.get("uid", "")), type_, reason,
                         "Init", f"node {self.node}, device {result['name']}: {result['message']}")

    def _record(self, name: str, result: Obj) -> None:
        for _ in range(8):
            try:
                with translated("get", f"{INIT_REQUESTS}.{GROUP}", name):
                    cur = self._api.get_cluster_custom_object(GROUP, VERSION, INIT_REQUESTS, name,
                                                              _request_timeout=REQUEST_TIMEOUT_S)
                with translated("update", f"{INIT_REQUESTS}/status.{GROUP}", name):
                    self._api.replace_cluster_custom_object_status(
                        GROUP, VERSION, INIT_REQUESTS, name, dict(cur, status=merged_status(cur, [result])),
                        _request_timeout=REQUEST_TIMEOUT_S)
                return
            except NotFound:
                log.warning("init request %s was deleted before device %s's result was recorded: %s",
                            name, result["name"], result["message"])
                return
            except ApiConflict:
                continue
        raise Conflict(f"DirectPVInitRequest {name} kept changing during 8 attempts",
                       "the next list of the requests records it")
