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
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # app.py imports grpc and the servicers: only when a server runs
    from ..app import Settings

HELP = "serve the CSI Identity, Controller and Node services for this host (embedded store)"

# DirectPV serves node metrics on :10443 and controller readiness on :30443; standalone is off by
# default (tests and demos start many on one host).
METRICS_DEFAULTS = {"standalone": "", "controller": ":30443", "node": ":10443"}


def add_arguments(p: argparse.ArgumentParser, role: str = "standalone") -> None:
    """Arguments of `standalone`, or of the Kubernetes roles `controller` and `node` (cmd/controller.py,
    cmd/node.py), which are this command with the kube store and one side of the services.
    ``settings(args)`` turns them into ``app.Settings``; the builders of app.py do the rest."""
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


def settings(args: argparse.Namespace) -> Settings:
    """The flags of any server role (``args.role``) as the composition root takes them (app.py)."""
    from ..app import Settings

    return Settings(
        role=args.role,
        state_dir=args.state_dir,
        endpoint=args.endpoint,
        store=args.store,
        kubeconfig=args.kubeconfig,
        workers=args.workers,
        metrics_address=args.metrics_address,
        reconcile_interval=getattr(args, "reconcile_interval", 0.0),  # the node role has none
        reconcile_grace=getattr(args, "reconcile_grace", None),
        serve_controller=not args.no_controller,
        serve_node=not args.no_node,
        node_id=getattr(args, "node_id", ""),  # the controller role has no node side
        allow_loop=getattr(args, "allow_loop", False),
        kubelet_dirs=tuple(getattr(args, "kubelet_dir", ())),
        sync_interval=getattr(args, "sync_interval", 10.0),
        topology=tuple(args.topology),
        max_volumes_per_node=getattr(args, "max_volumes_per_node", 0),
        devices=tuple(args.device),
        synchronous=getattr(args, "synchronous", "FULL"),
        registration_dir=getattr(args, "registration_dir", ""),  # the node role only
        kubelet_registration_path=getattr(args, "kubelet_registration_path", ""),
    )


def run(args: argparse.Namespace) -> int:
    from .. import app

    return app.run(settings(args), log_level=args.log_level)


def lock_state_dir(state_dir: str) -> int:
    """The state directory's lock (app.lock_state_dir: its home)."""
    from ..app import lock_state_dir as lock

    return lock(state_dir)
