"""`directpv-csi standalone`: Identity + Controller + Node for one host, embedded store.

    directpv-csi standalone --state-dir /var/lib/directpv-csi --endpoint unix:///run/directpv-csi/csi.sock

The store is ``STATE_DIR/store.sqlite``; drives formatted by us are found by the
node's drive registry and mounted under ``STATE_DIR/mnt/<drive id>``. Any CSI
orchestrator (or `directpv-csi client`) can use the socket.

One server per state directory: `standalone` and `node` take an exclusive ``flock`` on
``STATE_DIR/lock`` before anything in it is read or written; a second server on the same
directory exits with a message naming the first one's pid and changes nothing. Read-only
users (`client info --state-dir`) open the store read-only and take no lock.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from typing import Any, Dict, List, Sequence, Tuple

HELP = "serve the CSI Identity, Controller and Node services for this host (embedded store)"

log = logging.getLogger("directpv_csi.standalone")

# DirectPV serves node metrics on :10443 and controller readiness on :30443; standalone is off by
# default (tests and demos start many on one host).
METRICS_DEFAULTS = {"standalone": "", "controller": ":30443", "node": ":10443"}


def add_arguments(p: argparse.ArgumentParser, role: str = "standalone") -> None:
    """Arguments of `standalone`, or of the Kubernetes roles `controller` and `node` (cmd/controller.py,
    cmd/node.py), which are this command with the kube store and one side of the services."""
    p.set_defaults(role=role, no_controller=(role == "node"))
    if role == "standalone":
        p.add_argument("--state-dir", required=True, help="directory for store.sqlite and drive mounts")
        p.add_argument("--endpoint", default="", help="unix socket (default: unix://STATE_DIR/csi.sock)")
        p.add_argument("--store", choices=("embedded", "kube"), default="embedded",
                       help="embedded: SQLite in STATE_DIR (default); kube: CRDs in directpv.dev on the API server")
    else:
        p.add_argument("--endpoint", default="unix:///csi/csi.sock", help="unix socket (default %(default)s)")
        p.set_defaults(store="kube", state_dir="/var/lib/directpv-csi")
        if role == "node":
            p.add_argument("--state-dir", default="/var/lib/directpv-csi",
                           help="drive mounts live under STATE_DIR/mnt (default %(default)s)")
    p.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG", ""),
                   help="kube store: kubeconfig file (default $KUBECONFIG; empty: the pod's service account)")
    p.add_argument("--workers", type=int, default=16, help="gRPC worker threads")
    p.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    p.add_argument("--metrics-address", default=METRICS_DEFAULTS[role], metavar="HOST:PORT",
                   help="serve /metrics, /healthz and /readyz over HTTP here (:PORT = every interface, "
                        "port 0 = a free port; '' disables; default %(default)r)")
    if role != "node":
        p.add_argument("--reconcile-interval", type=float, default=300.0, metavar="S",
                       help="kube store: seconds between releases of orphaned ledger records (0 disables; "
                            "default %(default)s)")
        p.add_argument("--reconcile-grace", type=float, default=None, metavar="S",
                       help="kube store: release only records older than this (default: the store's, 300 s)")
    if role == "controller":
        p.set_defaults(no_node=True, topology=[], device=[])
        return
    p.add_argument("--node-id", default="", help="this node's name (default: the host name)")
    p.add_argument("--allow-loop", action="store_true", help="accept drives on loop devices (tests, demos)")
    p.add_argument("--kubelet-dir", action="append", default=[], metavar="DIR",
                   help="allowed root of staging/target paths (repeatable; default /var/lib/kubelet)")
    p.add_argument("--sync-interval", type=float, default=10.0, metavar="S",
                   help="seconds between drive re-scans (default 10)")
    p.add_argument("--topology", action="append", default=[], metavar="KEY=VALUE",
                   help="extra topology segment of this node, e.g. directpv.dev/zone=z1 (repeatable)")
    p.add_argument("--max-volumes-per-node", type=int, default=0, help="advertised in NodeGetInfo (0: no limit)")
    p.add_argument("--device", action="append", default=[], metavar="DEV",
                   help="serve only these devices (repeatable; default: every drive formatted by us)")
    if role == "node":
        p.set_defaults(no_node=False, synchronous="FULL")
        return
    p.add_argument("--synchronous", choices=("FULL", "NORMAL"), default="FULL",
                   help="SQLite durability: FULL (default, survives power loss) or NORMAL (survives kill -9)")
    p.add_argument("--no-node", action="store_true",
                   help="serve Identity and Controller only (no drive registry, no Node service)")


def build(args: argparse.Namespace) -> Any:
    """Open the store and build the servicers; returns (store, registry, servicers, identity)."""
    from pathlib import Path

    from ..core.models import Volume
    from ..csi.controller import ControllerServicer
    from ..csi.identity import IdentityServicer
    from ..csi.node import NodeServicer
    from ..node.config import NodeConfig
    from ..node.registry import DriveRegistry
    from ..store.embedded import EmbeddedStore

    extra_topology = _topology(args.topology)  # bad input: refused before anything is opened
    state = Path(os.path.abspath(args.state_dir))
    if args.store == "kube":
        from ..core.errors import FailedPrecondition
        from ..kube.store import KubeStore

        try:
            # events name who reported them: the node, or the controller's pod (downward API POD_NAME)
            instance = (args.node_id or socket.gethostname()) if args.role != "controller" else \
                os.environ.get("POD_NAME") or socket.gethostname()
            # a node plugin lists and watches only its own node's drives and volumes
            store: Any = KubeStore.from_kubeconfig(args.kubeconfig or None, reporting_instance=instance,
                                                   node=instance if args.role == "node" else None,
                                                   pool_size=args.workers + 4)  # + reconcile, probes, agents
        except Exception as exc:  # config and connection errors of the client library
            where = args.kubeconfig or "the in-cluster service account"
            raise FailedPrecondition(f"cannot use the Kubernetes API through {where}: {exc}",
                                     "pass --kubeconfig FILE (or set KUBECONFIG), or run inside the cluster") from exc
    else:
        state.mkdir(parents=True, exist_ok=True)
        store = EmbeddedStore(str(state / "store.sqlite"), synchronous=args.synchronous)
    controller = ControllerServicer(store)
    if args.no_node:
        identity = IdentityServicer([("store", store.ping)])
        return store, None, [identity, controller], identity
    state.mkdir(parents=True, exist_ok=True)

    kubelet_dirs = tuple(Path(d) for d in args.kubelet_dir) or (Path("/var/lib/kubelet"),)
    node_id = args.node_id or socket.gethostname()
    config = NodeConfig(
        node_id=node_id,
        topology={"directpv.dev/node": node_id, **extra_topology},
        state_dir=state,
        kubelet_dirs=kubelet_dirs,
        allow_loop=args.allow_loop,
        max_volumes_per_node=args.max_volumes_per_node,
    )
    registry = DriveRegistry(config, store, probe=_device_filter(args.device) if args.device else None)
    node = NodeServicer(config, store, registry)
    controller.inflight = registry.inflight  # one in-flight table per volume for controller and node
    # DeleteVolume purges the volume's directory at once (the controller holds the volume in the
    # shared in-flight table); the registry's periodic gc catches anything this misses.
    def purge(volume: Volume) -> None:
        registry.release_volume(volume, caller_holds=True)

    controller.on_delete = purge
    identity = IdentityServicer([
        ("store", store.ping),
        ("drive registry synced", lambda: registry.synced_once),
    ])
    if args.no_controller:  # the node DaemonSet: the controller runs in its own Deployment
        return store, registry, [identity, node], identity
    return store, registry, [identity, controller, node], identity


LOCK_FILE = "lock"


def lock_state_dir(state_dir: str) -> int:
    """Take the state directory's exclusive lock (held until the returned fd is closed or the
    process exits). Another holder -> FailedPrecondition naming its pid; nothing is changed."""
    import fcntl

    from ..core.errors import FailedPrecondition

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


def _topology(items: List[str]) -> Dict[str, str]:
    from ..core.errors import InvalidArgument

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.startswith("directpv.dev/") or key == "directpv.dev/node" or not value:
            raise InvalidArgument(f"--topology {item!r} is not directpv.dev/<key>=<value>",
                                  "write e.g. --topology directpv.dev/zone=z1 (the node key is set from --node-id)")
        out[key] = value
    return out


def _device_filter(devices: List[str]) -> Any:
    """A probe for the drive registry that sees only ``devices`` (paths or kernel names)."""
    from ..node.registry import default_probe

    names = {os.path.basename(os.path.realpath(d if d.startswith("/") else "/dev/" + d)) for d in devices}

    def probe(errors: Dict[str, str]) -> Sequence[Any]:
        return [d for d in default_probe(errors) if d.name in names]

    return probe


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from ..core.errors import DirectPVError
    from ..csi.server import create_server, serve

    endpoint = args.endpoint or "unix://" + os.path.join(os.path.abspath(args.state_dir), "csi.sock")
    store: Any = None
    observe: Any = None
    reconcile_metrics: Any = None
    lock_fd = -1
    try:
        _check_observe_args(args)
        _topology(args.topology)  # bad flags: refused before the state directory is even created
        if args.role != "controller":  # before anything in the state directory is read or written
            lock_fd = lock_state_dir(args.state_dir)
        store, registry, servicers, identity = build(args)
        if args.metrics_address:
            # binds now: a taken port fails here, before anything starts
            observe, reconcile_metrics = _observe(args, store, registry, servicers, identity)
        reporter = _node_reporter(args, store, registry)
        initializer = _init_requests(args, store, registry)
        if registry is not None:
            registry.start(args.sync_interval)
        uevents = _uevents(registry)
        server, address = create_server(endpoint, *servicers, max_workers=args.workers)
    except DirectPVError as exc:
        print(f"directpv-csi {args.role}: {exc}", file=sys.stderr)
        if observe is not None:
            observe.stop()
        if store is not None:
            store.close()
        if lock_fd >= 0:
            os.close(lock_fd)
        return 1
    drives: List[Any] = list(store.list_drives())
    log.info("serving %s on %s (%d drive(s) in the store)", "csi.directpv.dev", address, len(drives))
    print(f"directpv-csi {args.role}: serving on {address}", flush=True)
    if observe is not None:
        observe.start(grpc_address=address)
        log.info("metrics and health on %s (/metrics, /healthz, /readyz)", observe.url)
        print(f"directpv-csi {args.role}: metrics and health on {observe.url} (bound {observe.address})",
              flush=True)
    reconciler = _reconciler(args, store, reconcile_metrics)

    def stop() -> None:
        if uevents is not None:
            uevents.stop()
        if initializer is not None:
            initializer.stop()
        if reporter is not None:
            reporter.stop()
        if reconciler is not None:
            reconciler.stop()
        if observe is not None:
            observe.stop()
        if registry is not None:
            registry.stop()
        store.close()
        if lock_fd >= 0:
            os.close(lock_fd)

    serve(server, on_stop=stop)
    return 0


def _uevents(registry: Any) -> Any:
    """Block-device uevents make the registry sync at once (node/uevents.py); the periodic scan
    (--sync-interval) stays as the fallback, and alone when no monitor can run here."""
    if registry is None:
        return None
    from ..node.uevents import UeventMonitor

    monitor = UeventMonitor(registry.request_sync)
    return monitor if monitor.start() else None


def _node_reporter(args: argparse.Namespace, store: Any, registry: Any) -> Any:
    """On the kube store, a node keeps its DirectPVNode's device report true (kube/nodes.py):
    every full probe of the registry goes into it; ``spec.refresh`` asks the registry to probe now."""
    if registry is None or args.store != "kube":
        return None
    from ..core.judge import JudgePolicy
    from ..kube.nodes import NodeReporter

    reporter = NodeReporter(store.api_client, registry.config.node_id,
                            JudgePolicy(allow_loop=registry.config.allow_loop), on_refresh=registry.request_sync)
    registry.on_probe = reporter.report
    registry.on_orphans = reporter.report_orphans
    reporter.start()
    return reporter


def _init_requests(args: argparse.Namespace, store: Any, registry: Any) -> Any:
    """On the kube store, a node formats the devices DirectPVInitRequests name on it (node/initreq.py:
    the Ansible drive module's format code and refusals; every device needs its reviewed id)."""
    if registry is None or args.store != "kube":
        return None
    from ..kube.nodes import InitRequestWatcher
    from ..node.initreq import init_device

    config = registry.config

    def handle(request: Dict[str, Any], entry: Dict[str, Any]) -> Dict[str, Any]:
        spec = request.get("spec") or {}
        return dict(init_device(config.node_id, str(entry.get("name", "")), str(entry.get("id") or ""),
                                force=bool(spec.get("force")), dry_run=bool(spec.get("dryRun")),
                                allow_loop=config.allow_loop, owner=f"initrequest/{request['metadata']['name']}"))

    watcher = InitRequestWatcher(store.api_client, config.node_id, handle, on_formatted=registry.request_sync,
                                 events=store.events)
    watcher.start()
    return watcher


def _check_observe_args(args: argparse.Namespace) -> None:
    from ..core.errors import InvalidArgument
    from ..observe.endpoints import parse_address

    if args.metrics_address:
        parse_address(args.metrics_address)
    for flag in ("reconcile_interval", "reconcile_grace"):
        value = getattr(args, flag, None)
        if value is not None and value < 0:
            name = "--" + flag.replace("_", "-")
            raise InvalidArgument(f"{name} {value} is negative", f"give {name} in seconds (0 disables the interval)")


def _observe(args: argparse.Namespace, store: Any, registry: Any, servicers: List[Any],
             identity: Any) -> Tuple[Any, Any]:
    """The metrics/health HTTP server (bound, not started): process and CSI call metrics; on a
    node, the volume and drive series; in the controller, the reconcile counters (returned too)."""
    from ..observe import metrics
    from ..observe.endpoints import ObserveServer

    reg = metrics.new_registry()
    calls = metrics.call_counter(reg)
    for servicer in servicers:
        metrics.instrument(servicer, calls)
    if registry is not None:
        reg.register(metrics.NodeCollector(registry.config.node_id, store, registry))
    reconcile_metrics = metrics.ReconcileMetrics(reg) if _reconciles(args, store) else None
    return ObserveServer(args.metrics_address, reg, identity.not_ready), reconcile_metrics


def _reconciles(args: argparse.Namespace, store: Any) -> bool:
    """The controller side on the kube store with a positive --reconcile-interval."""
    return (not args.no_controller and bool(getattr(args, "reconcile_interval", 0))
            and callable(getattr(store, "reconcile", None)))


def _reconciler(args: argparse.Namespace, store: Any, reconcile_metrics: Any) -> Any:
    if not _reconciles(args, store):
        return None
    from ..observe.reconcile import ReconcileLoop

    loop = ReconcileLoop(store.reconcile, args.reconcile_interval, args.reconcile_grace, reconcile_metrics)
    loop.start()
    log.info("reconciling allocation ledgers every %.0f s", args.reconcile_interval)
    return loop
