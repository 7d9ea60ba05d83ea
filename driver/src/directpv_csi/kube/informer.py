"""The watch-backed cache of one kind (informer-style): LIST, then WATCH from its resourceVersion,
re-LIST on 410 Gone (the loop is kube/watch.py); indexed; the kube store's reads never call the API."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

from ..core.errors import FailedPrecondition, PermissionDenied
from .errors import TRANSPORT_ERRORS, api_error
from .objects import GROUP, Obj, resource_name, rv_of
from .watch import Gone, ListWatch

PENDING_MAX_S = 60.0  # a write whose own watch event never came (see Informer) stops holding events back
SEEN_MAX = 16384  # (name, resourceVersion) pairs the watch delivered, remembered for read-your-writes


# the cache keeps slim copies (below); DIRECTPV_CSI_CACHE_SLIM=0 keeps the API's dicts as they
# came (bench/kube_bench.py measures both in one run)
SLIM = os.environ.get("DIRECTPV_CSI_CACHE_SLIM", "1") != "0"
_DROPPED_META = ("managedFields", "creationTimestamp")
_UNIQUE = frozenset(("uid", "resourceVersion", "mountpoint"))  # one value per object: nothing to share
# small containers of plain values many objects repeat (a node's topology, the finalizer list,
# a StorageClass's parameters, and every empty one): one shared copy each
_SHARED = frozenset(("topology", "finalizers", "parameters"))
_SHARED_MAX = 4  # entries of a shared container
_SHARED_POOL_MAX = 4096  # distinct shared containers remembered (the pool starts again past it)
_PLAIN = (str, int, float, bool, type(None))
_pool: Dict[Tuple[Any, ...], Any] = {}


def _shared(container: Any, key: str) -> Any:
    """``container`` (a new dict or list of interned values), or the equal one already shared."""
    values = container.values() if isinstance(container, dict) else container
    if container and (key not in _SHARED or len(container) > _SHARED_MAX
                      or not all(isinstance(v, _PLAIN) for v in values)):
        return container
    items = container.items() if isinstance(container, dict) else enumerate(container)
    pooled = (type(container), *((k, type(v), v) for k, v in items))  # types too: 1 == True == 1.0
    if len(_pool) >= _SHARED_POOL_MAX:
        _pool.clear()  # objects keep the copies they hold; new ones start sharing again
    return _pool.setdefault(pooled, container)


def _interned(value: Any, key: str = "") -> Any:
    if isinstance(value, str):
        return value if key in _UNIQUE or len(value) > 64 else sys.intern(value)
    if isinstance(value, dict):
        return _shared({sys.intern(k): _interned(v, k) for k, v in value.items()}, key)
    if isinstance(value, list):
        return _shared([_interned(v) for v in value], key)
    return value


def slim(obj: Obj) -> Obj:
    """The object as the cache keeps it: without ``managedFields`` (server-side apply bookkeeping,
    most of a small object's size) and ``creationTimestamp`` (never read here; an update without
    them keeps the server's), with the strings many objects repeat (node names, states, label
    keys and values, finalizers, apiVersion, kind) shared instead of one copy per object, and so
    are the small containers they repeat (empty ones, a node's topology, the finalizer list, a
    StorageClass's parameters). Equal to the object minus the dropped fields.

    Cached objects are never changed in place (every reader that changes one, the kube store's
    writes, copies it first), so sharing a container between objects is safe."""
    meta = {k: v for k, v in obj["metadata"].items() if k not in _DROPPED_META}
    out: Obj = _interned(dict(obj, metadata=meta))
    return out


@dataclass
class _Pending:
    """A write (or delete) of ours the watch has not announced yet: until it does, the watch's events
    for that object are older than what the cache holds."""

    rv: Optional[str]  # the resourceVersion our write returned; None: we deleted it
    uid: str
    seq: int  # local order of writes, against the start of a LIST
    at: float


class Informer:
    """Objects of one kind: LIST, then WATCH from its resourceVersion; re-LIST on 410 Gone.

    ``index`` maps an index name to a function giving an object's key in it. ``selector`` (a label
    selector, e.g. ``directpv.dev/node=n1``) limits the list, the watch and the cache to the objects
    it selects; ``in_scope`` says whether an object is one of them (objects a write or a GET
    returns outside the scope are not cached: no watch would keep them fresh).

    resourceVersions are opaque: compared for equality only, never ordered. Read-your-writes: an
    object a write (or a GET) returned is cached at once and remembered as *pending* with its exact
    resourceVersion; the watch delivers an object's events in order, so until it delivers that very
    version (or, for a delete of ours, the DELETED event of that uid) its events for the object are
    older and ignored. A version the watch already delivered is not pending (the cache holds it or
    newer). A LIST (consistent read) settles every write made before it was sent; a pending entry
    older than ``PENDING_MAX_S`` stops holding events back (a lost announcement cannot freeze it)."""

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
        self._pending: Dict[str, _Pending] = {}
        self._seen: OrderedDict[Tuple[str, str], None] = OrderedDict()  # delivered by the watch/list
        self._deleted_uids: OrderedDict[str, None] = OrderedDict()  # DELETED events delivered
        self._seq = 0
        self._list_fence = 0  # _seq when the current LIST was sent
        self._synced = threading.Event()
        self._lw = ListWatch(api, plural, self._on_list, self._on_event, label_selector=selector,
                             name=f"informer-{plural}", on_list_start=self._on_list_start,
                             transform=slim if SLIM else None)

    # -- cache mutation (caller holds the lock) --
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

    def _put(self, obj: Obj, listed: bool = False) -> None:
        name = obj["metadata"]["name"]
        if SLIM and not listed:  # listed objects were slimmed page by page (kube/watch.py)
            obj = slim(obj)
        self._unindex(name)
        self.items[name] = obj
        for key, fn in self._index_fns.items():
            self.index[key].setdefault(fn(obj), set()).add(name)

    def _mark_seen(self, name: str, rv: str) -> None:
        self._seen[(name, rv)] = None
        if len(self._seen) > SEEN_MAX:
            self._seen.popitem(last=False)

    def _hold(self, name: str, rv: Optional[str], uid: str) -> None:
        self._seq += 1
        self._pending[name] = _Pending(rv, uid, self._seq, time.monotonic())

    def apply(self, obj: Obj) -> None:
        """An object a write or a GET returned: cached, and its watch event awaited (see the class)."""
        name = obj["metadata"]["name"]
        if self._in_scope is not None and not self._in_scope(obj):
            self.forget(name, obj["metadata"].get("uid", ""))  # it left the scope (or never was in it)
            return
        rv = rv_of(obj)
        with self._lock:
            cur = self.items.get(name)
            if (name, rv) in self._seen or (cur is not None and rv_of(cur) == rv):
                return  # announced already (or listed): the cache holds it or something newer
            self._put(obj)
            self._hold(name, rv, "")

    def forget(self, name: str, uid: str) -> None:
        """We deleted ``name`` (object ``uid``), or it left our scope: gone until the watch says more."""
        with self._lock:
            self._unindex(name)
            if uid and uid in self._deleted_uids:
                self._pending.pop(name, None)  # its DELETED event came first
                return
            self._hold(name, None, uid)

    def _awaiting(self, kind: str, obj: Obj) -> bool:
        """Whether a write of ours to this object is still unannounced, so ``obj`` is older (lock held)."""
        name = obj["metadata"]["name"]
        p = self._pending.get(name)
        if p is None:
            return False
        meta = obj["metadata"]
        if p.rv is not None and p.rv == rv_of(obj):
            del self._pending[name]  # our write's own event: from here on events are newer
            return False
        if p.rv is None and kind == "DELETED" and (not p.uid or p.uid == meta.get("uid")):
            del self._pending[name]
            return False
        if time.monotonic() - p.at > PENDING_MAX_S:
            del self._pending[name]
            return False
        return True

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

    def _on_list_start(self) -> None:
        with self._lock:
            self._list_fence = self._seq

    def _on_list(self, items: List[Obj], rv: str) -> None:
        fresh = {o["metadata"]["name"]: o for o in items}
        with self._lock:
            # writes made before the LIST was sent are in it (a LIST without resourceVersion is a
            # consistent read); later ones stay pending unless the list shows their very version
            pending = {}
            for name, p in self._pending.items():
                got = fresh.get(name)
                if p.seq <= self._list_fence:
                    continue
                if p.rv is not None and got is not None and rv_of(got) == p.rv:
                    continue
                if p.rv is None and got is not None and got["metadata"].get("uid") != p.uid:
                    continue  # created again after our delete
                pending[name] = p
            self._pending = pending
            for name in list(self.items):
                if name not in fresh and name not in pending:
                    self._unindex(name)
            for name, obj in fresh.items():
                if name not in pending:
                    self._put(obj, listed=True)
        self._synced.set()

    def _on_event(self, kind: str, obj: Obj) -> None:
        name = obj["metadata"]["name"]
        with self._lock:
            self._mark_seen(name, rv_of(obj))
            if kind == "DELETED":
                uid = obj["metadata"].get("uid", "")
                if uid:
                    self._deleted_uids[uid] = None
                    if len(self._deleted_uids) > SEEN_MAX:
                        self._deleted_uids.popitem(last=False)
            if kind not in ("ADDED", "MODIFIED", "DELETED") or self._awaiting(kind, obj):
                return
            if kind == "DELETED" or (self._in_scope is not None and not self._in_scope(obj)):
                self._unindex(name)
            else:
                self._put(obj)

    def watch_from(self, rv: str, timeout_s: int = 30) -> Optional[str]:
        """Apply events from ``rv`` until the server ends the watch: the last resourceVersion seen,
        or None when ``rv`` expired (410 Gone: the caller lists again)."""
        try:
            return self._lw.watch(rv, timeout_s)
        except Gone:
            return None
