"""Block-device uevents: the node hears of a new, removed, resized or renamed drive at once.

A pyudev netlink monitor on subsystem ``block`` turns the kernel's uevents into one call of
``on_change`` (the drive registry's ``request_sync``) per burst: a disk and its partitions, or a
loop device's attach (several ``change`` events), come as a burst. Debounced: the call comes
``debounce_s`` after the last event of a burst, and at most ``max_delay_s`` after its first (an
endless stream of events cannot starve the registry). The registry's periodic scan stays as the
fallback for whatever no event announces (a drive reformatted in place, a monitor that could not
start, a missed event).

Source: ``udev`` when udevd runs on this host (``/run/udev/control``): its events come after udev
wrote its database, so a probe triggered by them sees the serial and WWN udev adds. Without udevd
(minimal hosts, containers without ``/run/udev``): ``kernel``, the kernel's own events, which arrive
without any daemon (the probe reads sysfs, which is current when the event is sent).

Kernel uevents are sent to the host's network namespace only: a node pod needs
``hostNetwork: true`` to hear them (docs/INSTALL.md). In another namespace the monitor starts and
hears nothing; the periodic scan still finds every change.

pyudev is the ``udev`` extra of the driver package; without it the monitor says so and does
nothing (the periodic scan remains).
"""

from __future__ import annotations

import logging
import os
import select
import threading
import time
from collections import deque
from typing import Any, Callable, Optional

log = logging.getLogger("directpv_csi.uevents")

UDEV_CONTROL = "/run/udev/control"


def default_source(udev_control: str = UDEV_CONTROL) -> str:
    """``udev`` when udevd runs here (its control socket exists), else ``kernel``."""
    return "udev" if os.path.exists(udev_control) else "kernel"


class UeventMonitor:
    """Calls ``on_change()`` once per burst of block-device uevents, from its own thread.

    ``start()`` returns False (and logs why) when no monitor can run here: pyudev missing, or
    the netlink socket refused. ``stop()`` ends the thread promptly (a self-pipe wakes it).
    ``events`` and ``triggers`` count what was heard and how many calls it became; ``seen`` keeps
    the latest (action, kernel name) pairs.
    """

    def __init__(
        self,
        on_change: Callable[[], object],
        *,
        debounce_s: float = 0.25,
        max_delay_s: float = 2.0,
        source: Optional[str] = None,
        subsystem: str = "block",
    ) -> None:
        if debounce_s < 0 or max_delay_s < debounce_s:
            raise ValueError(f"need 0 <= debounce_s ({debounce_s}) <= max_delay_s ({max_delay_s})")
        self.on_change = on_change
        self.debounce_s = debounce_s
        self.max_delay_s = max_delay_s
        self.source = source or default_source()
        self.subsystem = subsystem
        self.events = 0
        self.triggers = 0
        self.last_event: Optional[tuple[str, str]] = None  # (action, kernel name)
        self.seen: deque[tuple[str, str]] = deque(maxlen=256)  # the latest events, oldest first
        self._monitor: Any = None
        self._thread: Optional[threading.Thread] = None
        self._wake_r = -1
        self._wake_w = -1
        self._stopping = False

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> bool:
        if self._thread is not None:
            return True
        try:
            import pyudev
        except ImportError:
            log.warning("block-device uevents not monitored: pyudev is not installed (the driver's 'udev' "
                        "extra); new and removed drives are found by the periodic scan only")
            return False
        try:
            monitor = pyudev.Monitor.from_netlink(pyudev.Context(), source=self.source)
            monitor.filter_by(self.subsystem)
            monitor.start()
        except (OSError, ValueError) as exc:
            log.warning("block-device uevents not monitored (netlink %s monitor: %s); new and removed drives "
                        "are found by the periodic scan only", self.source, exc)
            return False
        self._monitor = monitor
        self._wake_r, self._wake_w = os.pipe()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="uevent-monitor", daemon=True)
        self._thread.start()
        log.info("listening to %s block-device uevents (debounce %.2f s)", self.source, self.debounce_s)
        return True

    def stop(self) -> None:
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stopping = True
        os.write(self._wake_w, b"x")
        thread.join(timeout=5)
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)
        self._wake_r = self._wake_w = -1
        self._monitor = None  # pyudev closes the netlink socket when the monitor is collected

    def _drain(self) -> int:
        """Read every event queued on the socket now; returns how many."""
        n = 0
        while True:
            try:
                device = self._monitor.poll(timeout=0)
            except OSError as exc:  # ENOBUFS: the kernel dropped events; a sync covers them all
                log.debug("uevent socket: %s", exc)
                return n + 1
            if device is None:
                return n
            n += 1
            self.last_event = (str(device.action), str(device.sys_name))
            self.seen.append(self.last_event)

    def _run(self) -> None:
        fd = self._monitor.fileno()
        first: Optional[float] = None  # first event of the burst waiting for its call
        last = 0.0
        while not self._stopping:
            timeout = None
            if first is not None:
                timeout = max(0.0, min(last + self.debounce_s, first + self.max_delay_s) - time.monotonic())
            try:
                ready = select.select([fd, self._wake_r], [], [], timeout)[0]
            except OSError as exc:
                log.warning("uevent monitor stopped (%s); the periodic scan remains", exc)
                return
            if self._wake_r in ready:
                return
            now = time.monotonic()
            if fd in ready:
                n = self._drain()
                if n:
                    self.events += n
                    last = now
                    if first is None:
                        first = now
            if first is not None and (now >= last + self.debounce_s or now >= first + self.max_delay_s):
                first = None
                self.triggers += 1
                log.debug("block-device uevents (last: %s %s): syncing drives now", *(self.last_event or ("", "")))
                try:
                    self.on_change()
                except Exception:  # the registry's own errors are its business; keep listening
                    log.exception("uevent callback failed")
