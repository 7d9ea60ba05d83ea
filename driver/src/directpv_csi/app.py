"""The composition root: one builder per role constructs every collaborator and passes it in.

    settings = Settings(role="node", ...)        # cmd/* parse the flags into these, nothing more
    app = build_node(settings)                    # or build_controller / build_standalone
    address = app.start()                         # threads, sockets, watches: in a fixed order
    ...
    app.stop()

``run(settings)`` does the whole life of a server process: checks the flags that need more
than argparse, takes the state directory's lock (every role but the controller), builds, starts,
serves until SIGTERM/SIGINT and stops. Every collaborator is made once, here, and handed to
what uses it through its constructor: the per-volume in-flight table the controller and node
services share, the controller's ``on_delete`` (the node purges the volume's directory), the
drive registry's ``on_probe``/``on_orphans`` (the DirectPVNode report), the uevent monitor and
the init-request watcher (both wake the registry), the kubelet registration, the observe
endpoints with the CSI call counter (a gRPC server interceptor) and the reconcile loop. Nothing is
patched onto an object after it is made.

Modules with heavy imports (the Kubernetes client, pyudev) are imported only by the roles that
use them: `standalone` on the embedded store never loads the Kubernetes client.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Dict, List, Mapping, Optional, Protocol, Sequence, Tuple, Union

from .concurrency.inflight import InFlight
from .core.errors import DirectPVError, FailedPrecondition, InvalidArgument
from .core.models import Device, Volume
from .csi.controller import ControllerServicer
from .csi.identity import IdentityServicer
from .csi.node import NodeServicer
from .node.config import NodeConfig
from .node.registry import DriveRegistry, ProbeFn, default_probe
from .store.base import Store

if TYPE_CHECKING:  # imported at run time only by the roles that use them
    import grpc

    from .csi.registration import KubeletRegistration
    from .kube.nodes import InitRequestWatcher, NodeReporter
    from .kube.store import KubeStore
    from .node.uevents import UeventMonitor
    from .observe.endpoints import ObserveServer
    from .observe.metrics import CallCounter, ReconcileMetrics
    from .observe.reconcile import ReconcileLoop

log = logging.getLogger("directpv_csi.standalone")

Servicer = Union[IdentityServicer, ControllerServicer, NodeServicer]


class ServedStore(Store, Protocol):
    """The Store port as a server uses it: both adapters answer ``ping`` (Identity.Probe, /readyz)."""

    def ping(self) -> bool: ...

LOCK_FILE = "lock"


@dataclass(frozen=True)
class Settings:
    """What the flags of a role say (cmd/standalone.py: ``settings(args)``)."""

    role: str  # standalone | controller | node
    state_dir: str
    endpoint: str = ""  # "" = unix://STATE_DIR/csi.sock
    store: str = "embedded"  # embedded | kube
    kubeconfig: str = ""  # "" = the pod's service account
    workers: int = 16
    metrics_address: str = ""  # "" disables /metrics, /healthz, /readyz
    reconcile_interval: float = 0.0  # the controller side on the kube store; 0 disables
    reconcile_grace: Optional[float] = None
    serve_controller: bool = True
    serve_node: bool = True
    # the node side
    node_id: str = ""  # "" = the host name
    allow_loop: bool = False
    kubelet_dirs: Tuple[str, ...] = ()  # () = /var/lib/kubelet
    sync_interval: float = 10.0
    topology: Tuple[str, ...] = ()  # directpv.dev/<key>=<value>
    max_volumes_per_node: int = 0
    devices: Tuple[str, ...] = ()  # () = every drive formatted by us
    synchronous: str = "FULL"  # embedded store durability
    # the node role: registration with the kubelet (csi/registration.py)
    registration_dir: str = ""
    kubelet_registration_path: str = ""

    @property
    def csi_endpoint(self) -> str:
        return self.endpoint or "unix://" + os.path.join(os.path.abspath(self.state_dir), "csi.sock")

    @property
    def host_node(self) -> str:
        return self.node_id or socket.gethostname()


@dataclass
class App:
    """One server process's collaborators, built and wired; ``start`` and ``stop`` run them in order."""

    settings: Settings
    store: ServedStore
    identity: IdentityServicer
    servicers: List[Servicer]
    registry: Optional[DriveRegistry] = None
    observe: Optional[ObserveServer] = None
    calls: Optional[CallCounter] = None  # counts the CSI calls for /metrics (a server interceptor)
    reconciler: Optional[ReconcileLoop] = None
    reporter: Optional[NodeReporter] = None
    initializer: Optional[InitRequestWatcher] = None
    uevents: Optional[UeventMonitor] = None
    registration: Optional[KubeletRegistration] = None
    lock_fd: int = -1
    _started: List[Callable[[], None]] = field(default_factory=list)  # stop() of what started, in order
    _stopped: bool = False

    def start(self) -> Tuple[grpc.Server, str]:
        """Start the watches, the registry (one sync in the caller), the uevent monitor and the gRPC
        server; returns (server, address). A failure stops what already started and re-raises."""
        from .csi.server import create_server

        try:
            if self.registration is not None:
                self.registration.start()  # registers once the CSI socket answers
                self._started.append(self.registration.stop)  # the socket goes: the kubelet deregisters
            if self.reporter is not None:
                self.reporter.start()
                self._started.append(self.reporter.stop)
            if self.initializer is not None:
                self.initializer.start()
                self._started.append(self.initializer.stop)
            if self.registry is not None:
                self.registry.start(self.settings.sync_interval)
                self._started.append(self.registry.stop)
            if self.uevents is not None:
                if self.uevents.start():
                    self._started.append(self.uevents.stop)
                else:
                    self.uevents = None  # the periodic scan (--sync-interval) stays, alone
            return create_server(self.settings.csi_endpoint, *self.servicers, max_workers=self.settings.workers,
                                 interceptors=[self.calls] if self.calls is not None else [])
        except BaseException:
            self.stop()
            raise

    def serving(self, address: str) -> None:
        """The gRPC server answers on ``address``: the observe endpoints and the reconcile loop start."""
        if self.observe is not None:
            self.observe.start(grpc_address=address)
        if self.reconciler is not None:
            self.reconciler.start()
            self._started.append(self.reconciler.stop)
            log.info("reconciling allocation ledgers every %.0f s", self.reconciler.interval_s)

    def stop(self) -> None:
        """Stop what started (last started first), then the observe server, the store and the lock.
        Idempotent."""
        while self._started:
            self._started.pop()()
        if self._stopped:
            return
        self._stopped = True
        if self.observe is not None:
            self.observe.stop()  # bound at build time: closed even when never started
        self.store.close()
        if self.lock_fd >= 0:
            os.close(self.lock_fd)
            self.lock_fd = -1


# --------------------------------------------------------------------------------- checks

def check(settings: Settings) -> None:
    """Refuse bad flags before anything is opened, created or read (InvalidArgument)."""
    from .observe.endpoints import parse_address

    if settings.metrics_address:
        parse_address(settings.metrics_address)
    for name, value in (("--reconcile-interval", settings.reconcile_interval),
                        ("--reconcile-grace", settings.reconcile_grace)):
        if value is not None and value < 0:
            raise InvalidArgument(f"{name} {value} is negative", f"give {name} in seconds (0 disables the interval)")
    topology(settings.topology)
    if settings.kubelet_registration_path and not settings.registration_dir:
        raise InvalidArgument("--kubelet-registration-path needs --registration-dir",
                              "give the kubelet's plugins_registry directory")


def topology(items: Sequence[str]) -> Dict[str, str]:
    """``--topology`` segments as a dict; a bad one -> InvalidArgument."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.startswith("directpv.dev/") or key == "directpv.dev/node" or not value:
            raise InvalidArgument(f"--topology {item!r} is not directpv.dev/<key>=<value>",
                                  "write e.g. --topology directpv.dev/zone=z1 (the node key is set from --node-id)")
        out[key] = value
    return out


def lock_state_dir(state_dir: str) -> int:
    """Take the state directory's exclusive lock (held until the returned fd is closed or the
    process exits). Another holder -> FailedPrecondition naming its pid; nothing is changed."""
    import fcntl

    state = os.path.abspath(state_dir)
    os.makedirs(state, exist_ok=True)
    path = os.path.join(state, LOCK_FILE)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
        os.close(fd)
        raise FailedPrecondition(
            f"another directpv-csi server (pid {holder}) is using state directory {state}",
            "stop it first, or give this server its own --state-dir (two servers on one state "
            "directory would both hand out the same drive space)") from None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


# --------------------------------------------------------------------------------- builders

def build_controller(settings: Settings, *, lock_fd: int = -1) -> App:
    """Identity + Controller on the kube store (the controller Deployment); no drive registry."""
    kube = _kube_store(settings, instance=os.environ.get("POD_NAME") or socket.gethostname())
    return _build(settings, kube, kube, lock_fd)


def build_node(settings: Settings, *, lock_fd: int = -1) -> App:
    """Identity + Node and this node's drive registry on the kube store (the node DaemonSet): the
    store lists and watches only this node's objects."""
    node = settings.host_node
    kube = _kube_store(settings, instance=node, node=node)
    return _build(settings, kube, kube, lock_fd)


def build_standalone(settings: Settings, *, lock_fd: int = -1) -> App:
    """Identity + Controller (+ Node unless ``serve_node`` is off) for one host: the embedded store
    in STATE_DIR, or the kube store (``store="kube"``)."""
    if settings.store == "kube":
        kube = _kube_store(settings, instance=settings.host_node)
        return _build(settings, kube, kube, lock_fd)
    from .store.embedded import EmbeddedStore

    state = Path(os.path.abspath(settings.state_dir))
    state.mkdir(parents=True, exist_ok=True)
    return _build(settings, EmbeddedStore(str(state / "store.sqlite"), synchronous=settings.synchronous), None,
                  lock_fd)


BUILDERS: Dict[str, Callable[..., App]] = {
    "controller": build_controller, "node": build_node, "standalone": build_standalone,
}


def _kube_store(settings: Settings, *, instance: str, node: Optional[str] = None) -> KubeStore:
    """The kube store; events name ``instance`` (the node, or the controller's pod); ``node`` scopes
    its lists and watches to that node's objects."""
    from .kube.store import KubeStore

    try:
        return KubeStore.from_kubeconfig(settings.kubeconfig or None, reporting_instance=instance, node=node,
                                         pool_size=settings.workers + 4)  # + reconcile, probes, agents
    except Exception as exc:  # config and connection errors of the client library
        where = settings.kubeconfig or "the in-cluster service account"
        raise FailedPrecondition(f"cannot use the Kubernetes API through {where}: {exc}",
                                 "pass --kubeconfig FILE (or set KUBECONFIG), or run inside the cluster") from exc


def _build(settings: Settings, store: ServedStore, kube: Optional[KubeStore], lock_fd: int) -> App:
    """Every collaborator of one process on ``store`` (``kube``: the same store when it is the kube
    store: the node agents and the reconcile loop use it); the store is closed if anything fails."""
    try:
        return _wire(settings, store, kube, lock_fd)
    except BaseException:
        store.close()
        raise


def _wire(settings: Settings, store: ServedStore, kube: Optional[KubeStore], lock_fd: int) -> App:
    registration = _registration(settings)  # bad paths refused before a port is bound
    inflight = InFlight("volume")  # one table per volume for the controller and node services
    registry: Optional[DriveRegistry] = None
    reporter: Optional[NodeReporter] = None
    initializer: Optional[InitRequestWatcher] = None
    uevents: Optional[UeventMonitor] = None
    checks: List[Tuple[str, Callable[[], bool]]] = [("store", store.ping)]
    if settings.serve_node:
        state = Path(os.path.abspath(settings.state_dir))
        state.mkdir(parents=True, exist_ok=True)
        node_id = settings.host_node
        config = NodeConfig(
            node_id=node_id,
            topology={"directpv.dev/node": node_id, **topology(settings.topology)},
            state_dir=state,
            kubelet_dirs=tuple(Path(d) for d in settings.kubelet_dirs) or (Path("/var/lib/kubelet"),),
            allow_loop=settings.allow_loop,
            max_volumes_per_node=settings.max_volumes_per_node,
        )
        # the registry and the node report call each other: the reporter's refresh request reaches
        # the registry built right after it (read when an operator asks, never before start())
        built: List[DriveRegistry] = []

        def refresh() -> None:
            for r in built:
                r.request_sync()

        if kube is not None:
            reporter = _node_reporter(kube, config, on_refresh=refresh)
        registry = DriveRegistry(config, store, inflight=inflight,
                                 probe=_device_filter(settings.devices) if settings.devices else None,
                                 on_probe=reporter.report if reporter is not None else None,
                                 on_orphans=_orphan_report(reporter) if reporter is not None else None)
        built.append(registry)
        if kube is not None:
            initializer = _init_requests(kube, config, on_formatted=registry.request_sync)
        uevents = _uevents(registry.request_sync)
        checks.append(("drive registry synced", _synced(registry)))
    identity = IdentityServicer(checks)
    servicers: List[Servicer] = [identity]
    if settings.serve_controller:
        servicers.append(ControllerServicer(store, inflight=inflight,
                                            on_delete=_purge(registry) if registry is not None else None))
    if registry is not None:
        servicers.append(NodeServicer(registry.config, store, registry, inflight=inflight))
    reconciles = settings.serve_controller and settings.reconcile_interval > 0 and kube is not None
    observe, calls, reconcile_metrics = None, None, None
    if settings.metrics_address:  # binds now: a taken port fails here, before anything starts
        observe, calls, reconcile_metrics = _observe(settings, store, registry, identity, reconciles,
                                                     kube.events.stats if kube is not None else None)
    reconciler = None
    if reconciles and kube is not None:
        reconciler = _reconciler(kube, settings, reconcile_metrics)
    return App(settings=settings, store=store, identity=identity, servicers=servicers, registry=registry,
               observe=observe, calls=calls, reconciler=reconciler, reporter=reporter, initializer=initializer,
               uevents=uevents, registration=registration, lock_fd=lock_fd)


def _orphan_report(reporter: NodeReporter) -> Callable[[Dict[str, Tuple[str, ...]]], object]:
    """The registry's orphans, whenever they change, into the DirectPVNode report."""
    def report(found: Dict[str, Tuple[str, ...]]) -> bool:
        return reporter.report_orphans({drive: names for drive, names in found.items()})

    return report


def _synced(registry: DriveRegistry) -> Callable[[], bool]:
    return lambda: registry.synced_once


def _purge(registry: DriveRegistry) -> Callable[[Volume], None]:
    """DeleteVolume purges the volume's directory at once (the controller holds the volume in the
    shared in-flight table); the registry's periodic gc catches anything this misses."""
    def purge(volume: Volume) -> None:
        registry.release_volume(volume, caller_holds=True)

    return purge


def _device_filter(devices: Sequence[str]) -> ProbeFn:
    """A probe for the drive registry that sees only ``devices`` (paths or kernel names)."""
    names = {os.path.basename(os.path.realpath(d if d.startswith("/") else "/dev/" + d)) for d in devices}

    def probe(errors: Dict[str, str]) -> Sequence[Device]:
        return [d for d in default_probe(errors) if d.name in names]

    return probe


def _uevents(on_change: Callable[[], None]) -> UeventMonitor:
    """Block-device uevents make the registry sync at once (node/uevents.py); the periodic scan
    (--sync-interval) stays as the fallback, and alone when no monitor can run here."""
    from .node.uevents import UeventMonitor

    return UeventMonitor(on_change)


def _node_reporter(kube: KubeStore, config: NodeConfig, on_refresh: Callable[[], None]) -> NodeReporter:
    """On the kube store, a node keeps its DirectPVNode's device report true (kube/nodes.py):
    every full probe of the registry goes into it; ``spec.refresh`` asks the registry to probe now."""
    from .core.judge import JudgePolicy
    from .kube.nodes import NodeReporter

    return NodeReporter(kube.api_client, config.node_id, JudgePolicy(allow_loop=config.allow_loop),
                        on_refresh=on_refresh)


def _init_requests(kube: KubeStore, config: NodeConfig, on_formatted: Callable[[], None]) -> InitRequestWatcher:
    """On the kube store, a node formats the devices DirectPVInitRequests name on it (node/initreq.py:
    the Ansible drive module's format code and refusals; every device needs its reviewed id)."""
    from .kube.nodes import InitRequestWatcher, Obj
    from .node.initreq import init_device

    def handle(request: Obj, entry: Obj) -> Obj:
        spec = request.get("spec") or {}
        return dict(init_device(config.node_id, str(entry.get("name", "")), str(entry.get("id") or ""),
                                force=bool(spec.get("force")), dry_run=bool(spec.get("dryRun")),
                                allow_loop=config.allow_loop, owner=f"initrequest/{request['metadata']['name']}"))

    return InitRequestWatcher(kube.api_client, config.node_id, handle, on_formatted=on_formatted,
                              events=kube.events)


def _registration(settings: Settings) -> Optional[KubeletRegistration]:
    """The node role's registration with the kubelet's plugin-registration API (csi/registration.py)."""
    if not settings.registration_dir:
        return None
    from .csi.registration import KubeletRegistration
    from .csi.server import socket_path

    csi = socket_path(settings.csi_endpoint)
    return KubeletRegistration(settings.registration_dir, settings.kubelet_registration_path or csi, csi)


def _observe(settings: Settings, store: ServedStore, registry: Optional[DriveRegistry], identity: IdentityServicer,
             reconciles: bool, event_stats: Optional[Callable[[], Mapping[str, int]]] = None,
             ) -> Tuple[ObserveServer, CallCounter, Optional[ReconcileMetrics]]:
    """The metrics/health HTTP server (bound, not started) with the process metrics; the CSI call
    counter (the gRPC server's interceptor); on a node, the volume and drive series; in the
    controller, the reconcile counters; on the kube store, the Event recorder's counters."""
    from .observe import metrics
    from .observe.endpoints import ObserveServer

    reg = metrics.new_registry()
    calls = metrics.CallCounter(metrics.call_counter(reg))
    if registry is not None:
        reg.register(metrics.NodeCollector(registry.config.node_id, store, registry))
    if event_stats is not None:
        reg.register(metrics.EventCollector(event_stats))
    reconcile_metrics = metrics.ReconcileMetrics(reg) if reconciles else None
    return ObserveServer(settings.metrics_address, reg, identity.not_ready), calls, reconcile_metrics


def _reconciler(kube: KubeStore, settings: Settings, metrics: Optional[ReconcileMetrics]) -> ReconcileLoop:
    from .observe.reconcile import ReconcileLoop

    return ReconcileLoop(kube.reconcile, settings.reconcile_interval, settings.reconcile_grace, metrics)


# --------------------------------------------------------------------------------- run

def run(settings: Settings, log_level: str = "INFO") -> int:
    """Check, lock, build, start and serve one role until SIGTERM/SIGINT; 1 (with the reason on
    stderr, nothing started) when the flags, the state directory, the store or a port refuse."""
    logging.basicConfig(level=log_level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from .csi.server import serve

    app: Optional[App] = None
    lock_fd = -1
    try:
        check(settings)  # bad flags: refused before the state directory is even created
        if settings.role != "controller":  # before anything in the state directory is read or written
            lock_fd = lock_state_dir(settings.state_dir)
        app = BUILDERS[settings.role](settings, lock_fd=lock_fd)
        server, address = app.start()
    except DirectPVError as exc:
        print(f"directpv-csi {settings.role}: {exc}", file=sys.stderr)
        if app is not None:
            app.stop()
        elif lock_fd >= 0:
            os.close(lock_fd)
        return 1
    drives = list(app.store.list_drives())
    log.info("serving %s on %s (%d drive(s) in the store)", "csi.directpv.dev", address, len(drives))
    print(f"directpv-csi {settings.role}: serving on {address}", flush=True)
    app.serving(address)
    if app.observe is not None:
        log.info("metrics and health on %s (/metrics, /healthz, /readyz)", app.observe.url)
        print(f"directpv-csi {settings.role}: metrics and health on {app.observe.url} (bound {app.observe.address})",
              flush=True)
    serve(server, on_stop=app.stop)
    return 0
