"""The watch-backed cache of one kind (informer-style): LIST, then WATCH from its resourceVersion,
re-LIST on 410 Gone; indexed; the kube store's reads never call the API."""

from __future__ import annotations

import threading
from typing import Any, Callable, Dict, List, Optional, Set

from kubernetes import watch as k8s_watch
from kubernetes.client.exceptions import ApiException

from ..core.errors import FailedPrecondition, PermissionDenied
from .errors import TRANSPORT_ERRORS, api_error
from .objects import GROUP, VERSION, Obj, resource_name, rv_of


class Informer:
    """Objects of one kind: LIST, then WATCH from its resourceVersion; re-LIST on 410 Gone.

    ``index`` maps an index name to a function giving an object's key in it. ``selector`` (a label
    selector, e.g. ``directpv.dev/node=n1``) limits the list, the watch and the cache to the objects
    it selects; ``in_scope`` says whether an object is one of them (objects a write or a GET
    returns outside the scope are not cached: no watch would keep them fresh)."""

    def __init__(self, api: Any, plural: str, index: Dict[str, Callable[[Obj], str]], selector: str = "",
                 in_scope: Optional[Callable[[Obj], bool]] = None) -> None:
        self._api = api
        self._plural = plural
        self._index_fns = index
        self.selector = selector
        self._in_scope = in_scope
        self._lock = threading.Lock()
        self.items: Dict[str, Obj] = {}
        self.index: Dict[str, Dict[str, Set[str]]] = {k: {} for k in index}
        self._tombstones: Dict[str, int] = {}  # deleted locally: ignore older events for them
        self._synced = threading.Event()
        self._stop = threading.Event()
        self._error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._run, name=f"informer-{plural}", daemon=True)
        self.relists = 0
        self.received = 0  # ADDED/MODIFIED/DELETED events the watch delivered (bookmarks not counted)

    # -- cache mutation (caller holds no lock) --
    def _unindex(self, name: str) -> None:
        old = self.items.pop(name, None)
        if old is None:
            return
        for key, fn in self._index_fns.items():
            bucket = self.index[key].get(fn(old))
            if bucket is not None:
                bucket.discard(name)
                if not bucket:
                    del self.index[key][fn(old)]

    def _put(self, obj: Obj) -> None:
        name = obj["metadata"]["name"]
        # managedFields (server-side apply bookkeeping) are most of a small object's size and never
        # read here; a replace without them leaves the server's copy unchanged
        obj["metadata"].pop("managedFields", None)
        self._unindex(name)
        self.items[name] = obj
        for key, fn in self._index_fns.items():
            self.index[key].setdefault(fn(obj), set()).add(name)

    def apply(self, obj: Obj) -> None:
        """An object as the API server returned or announced it: kept unless the cache holds newer."""
        name = obj["metadata"]["name"]
        if self._in_scope is not None and not self._in_scope(obj):
            self.forget(name, rv_of(obj))  # it left the scope (or never was in it)
            return
        with self._lock:
            cur = self.items.get(name)
            if cur is not None and rv_of(cur) >= rv_of(obj):
                return
            if name in self._tombstones and rv_of(obj) <= self._tombstones[name]:
                return
            self._tombstones.pop(name, None)
            self._put(obj)

    def forget(self, name: str, rv: int) -> None:
        """``name`` is gone (deleted by us at or after ``rv``, or announced DELETED)."""
        with self._lock:
            cur = self.items.get(name)
            if cur is not None and rv_of(cur) > rv:
                return  # re-created since
            self._unindex(name)
            self._tombstones[name] = max(rv, self._tombstones.get(name, 0))

    def get(self, name: str) -> Optional[Obj]:
        with self._lock:
            return self.items.get(name)

    def by(self, key: str, value: str) -> List[Obj]:
        with self._lock:
            return [self.items[n] for n in self.index[key].get(value, ())]

    def all(self) -> List[Obj]:
        with self._lock:
            return list(self.items.values())

    def keys(self, key: str) -> List[str]:
        with self._lock:
            return sorted(k for k, v in self.index[key].items() if v)

    # -- the loop --
    def start(self, timeout_s: float) -> None:
        self._thread.start()
        if not self._synced.wait(timeout_s):
            self._stop.set()
            if self._error is not None and isinstance(self._error, TRANSPORT_ERRORS):
                refused = api_error(self._error, "list", resource_name(self._plural))
                if isinstance(refused, PermissionDenied):
                    raise refused from self._error
            raise FailedPrecondition(f"could not list {self._plural}.{GROUP} within {timeout_s:.0f} s ({self._error})",
                           "check that the API server answers and the CRDs are installed (deploy/crds)")

    def stop(self) -> None:
        self._stop.set()

    def _list(self) -> str:
        lst = self._api.list_cluster_custom_object(GROUP, VERSION, self._plural, label_selector=self.selector)
        rv: str = lst["metadata"]["resourceVersion"]
        fresh = {o["metadata"]["name"]: o for o in lst.get("items", [])}
        with self._lock:
            for name in list(self.items):
                if name not in fresh and rv_of(self.items[name]) <= int(rv):
                    self._unindex(name)
            for obj in fresh.values():
                cur = self.items.get(obj["metadata"]["name"])
                if cur is None or rv_of(cur) < rv_of(obj):
                    self._put(obj)
            self._tombstones = {k: v for k, v in self._tombstones.items() if v > int(rv)}
        self.relists += 1
        self._synced.set()
        return rv

    def watch_from(self, rv: str, timeout_s: int = 30) -> Optional[str]:
        """Apply events from ``rv`` until the server ends the watch: the last resourceVersion seen,
        or None when ``rv`` expired (410 Gone: the caller lists again)."""
        w = k8s_watch.Watch()  # type: ignore[no-untyped-call]
        stream = w.stream(  # type: ignore[no-untyped-call]
            self._api.list_cluster_custom_object, GROUP, VERSION, self._plural,
            resource_version=rv, allow_watch_bookmarks=True, timeout_seconds=timeout_s,
            label_selector=self.selector)
        try:
            for ev in stream:
                if self._stop.is_set():
                    break
                kind, obj = ev["type"], ev["object"]
                if kind == "ERROR":
                    if int(obj.get("code", 0)) == 410:
                        return None
                    raise ApiException(status=int(obj.get("code", 0)), reason=str(obj.get("message", "")))
                rv = obj["metadata"]["resourceVersion"]
                if kind != "BOOKMARK":
                    self.received += 1
                if kind in ("ADDED", "MODIFIED"):
                    self.apply(obj)
                elif kind == "DELETED":
                    self.forget(obj["metadata"]["name"], rv_of(obj))
        except ApiException as e:
            if int(getattr(e, "status", 0) or 0) == 410:
                return None
            raise
        finally:
            w.stop()  # type: ignore[no-untyped-call]
        return rv

    def _run(self) -> None:
        rv: Optional[str] = None
        while not self._stop.is_set():
            try:
                if rv is None:
                    rv = self._list()
                rv = self.watch_from(rv)
            except Exception as e:  # connection closed on stop, server restarting...
                self._error = e
                self._stop.wait(0.5)
