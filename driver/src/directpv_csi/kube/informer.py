"""The watch-backed cache of one kind (informer-style): LIST, then WATCH from its resourceVersion,
re-LIST on 410 Gone (the loop is kube/watch.py); indexed; the kube store's reads never call the API."""

from __future__ import annotations

import threading
from typing import Any, Callable, Dict, List, Optional, Set

from ..core.errors import FailedPrecondition, PermissionDenied
from .errors import TRANSPORT_ERRORS, api_error
from .objects import GROUP, Obj, resource_name, rv_of
from .watch import Gone, ListWatch


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
        self._lw = ListWatch(api, plural, self._on_list, self._on_event, label_selector=selector,
                             name=f"informer-{plural}")

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

    # -- the loop (kube/watch.py) --
    @property
    def relists(self) -> int:
        return self._lw.relists

    @property
    def received(self) -> int:
        """ADDED/MODIFIED/DELETED events the watch delivered (bookmarks not counted)."""
        return self._lw.received

    def start(self, timeout_s: float) -> None:
        self._lw.start()
        if not self._synced.wait(timeout_s):
            self._lw.stop()
            error = self._lw.error
            if error is not None and isinstance(error, TRANSPORT_ERRORS):
                refused = api_error(error, "list", resource_name(self._plural))
                if isinstance(refused, PermissionDenied):
                    raise refused from error
            raise FailedPrecondition(f"could not list {self._plural}.{GROUP} within {timeout_s:.0f} s ({error})",
                           "check that the API server answers and the CRDs are installed (deploy/crds)")

    def stop(self) -> None:
        self._lw.stop()

    def _list(self) -> str:
        return self._lw.list()

    def _on_list(self, items: List[Obj], rv: str) -> None:
        fresh = {o["metadata"]["name"]: o for o in items}
        with self._lock:
            for name in list(self.items):
                if name not in fresh and rv_of(self.items[name]) <= int(rv):
                    self._unindex(name)
            for obj in fresh.values():
                cur = self.items.get(obj["metadata"]["name"])
                if cur is None or rv_of(cur) < rv_of(obj):
                    self._put(obj)
            self._tombstones = {k: v for k, v in self._tombstones.items() if v > int(rv)}
        self._synced.set()

    def _on_event(self, kind: str, obj: Obj) -> None:
        if kind in ("ADDED", "MODIFIED"):
            self.apply(obj)
        elif kind == "DELETED":
            self.forget(obj["metadata"]["name"], rv_of(obj))

    def watch_from(self, rv: str, timeout_s: int = 30) -> Optional[str]:
        """Apply events from ``rv`` until the server ends the watch: the last resourceVersion seen,
        or None when ``rv`` expired (410 Gone: the caller lists again)."""
        try:
            return self._lw.watch(rv, timeout_s)
        except Gone:
            return None
