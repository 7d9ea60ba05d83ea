"""The controller's periodic reconcile of the kube store's allocation ledgers.

``KubeStore.reconcile(grace_s)`` releases ledger records older than the grace period whose
volume object does not exist (a crash between the two writes of reserve_volume or
delete_volume, docs/KUBE-STORE.md). ``ReconcileLoop`` calls it in a thread: a first round at
start (a previous replica may have crashed), then every ``interval_s`` seconds. What it released
is logged; a failing round is logged and counted, never fatal: the next round retries.
Several controller replicas may run it at once: each release is a resourceVersion-checked
update of the drive object that re-checks the record's age, so nothing is released twice and a
reservation younger than the grace period is never touched.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable, List, Optional

from .metrics import ReconcileMetrics

log = logging.getLogger("directpv_csi.reconcile")

ReconcileFn = Callable[..., List[str]]


class ReconcileLoop:
    def __init__(self, reconcile: ReconcileFn, interval_s: float, grace_s: Optional[float] = None,
                 metrics: Optional[ReconcileMetrics] = None) -> None:
        """``reconcile``: ``store.reconcile``; ``grace_s`` None uses the store's default."""
        if interval_s <= 0:
            raise ValueError(f"interval_s must be positive, not {interval_s}")
        self._reconcile = reconcile
        self.interval_s = interval_s
        self.grace_s = grace_s
        self.metrics = metrics
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def run_once(self) -> List[str]:
        """One round: the names released ([] also when the round failed; the error is logged)."""
        try:
            released = self._reconcile() if self.grace_s is None else self._reconcile(self.grace_s)
        except Exception as exc:  # the API server may be away: log, count, retry next round
            log.warning("reconcile failed (retried in %.0f s): %s: %s", self.interval_s, type(exc).__name__, exc)
            if self.metrics is not None:
                self.metrics.runs.labels("error").inc()
            return []
        if released:
            log.info("reconcile released %d ledger record(s) without a volume object: %s",
                     len(released), ", ".join(released))
        else:
            log.debug("reconcile: every ledger record has its volume object (or is within the grace period)")
        if self.metrics is not None:
            self.metrics.released.inc(len(released))
            self.metrics.runs.labels("ok").inc()
        return released

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="reconcile", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            self.run_once()
            if self._stop.wait(self.interval_s):
                return

    def stop(self) -> None:
        self._stop.set()
        t, self._thread = self._thread, None
        if t is not None:
            t.join(timeout=30)
