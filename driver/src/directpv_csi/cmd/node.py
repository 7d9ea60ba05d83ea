"""`directpv-csi node`: the node DaemonSet's CSI server (Identity + Node) and this node's
drive registry, on the Kubernetes store (CRDs in directpv.dev).

    directpv-csi node --node-id "$NODE_NAME" --endpoint unix:///csi/csi.sock \\
        --state-dir /var/lib/directpv-csi --kubelet-dir /var/lib/kubelet [--kubeconfig FILE] \
        [--metrics-address :10443]

The registry finds the drives formatted by us on this node, mounts them under
STATE_DIR/mnt/<drive id> and records them (Ready / Lost / Error) in the store. Like
`standalone`, it first takes STATE_DIR/lock: a second node server on the same state
directory exits at once, having changed nothing. Target directories it creates are
recorded in STATE_DIR/made (the only ones NodeUnpublishVolume ever removes). /metrics on
--metrics-address carries DirectPV's volume and drive series (observe/metrics.py).
"""

from __future__ import annotations

import argparse

from . import standalone

HELP = "serve CSI Identity + Node for this node on the Kubernetes store (the node DaemonSet)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    standalone.add_arguments(p, role="node")
    p.add_argument("--registration-dir", default="", metavar="DIR",
                   help="register with the kubelet through its plugin-registration API on a socket in DIR "
                        "(<kubelet dir>/plugins_registry); '' (default): a node-driver-registrar does it")
    p.add_argument("--kubelet-registration-path", default="", metavar="PATH",
                   help="the CSI socket as the kubelet sees it on the host (default: the --endpoint path)")


def run(args: argparse.Namespace) -> int:
    return standalone.run(args)  # app.build_node, with the kubelet registration when asked for
