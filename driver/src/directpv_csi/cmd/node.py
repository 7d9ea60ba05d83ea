"""`directpv-csi node`: the node DaemonSet's CSI server (Identity + Node) and this node's
drive registry, on the Kubernetes store (CRDs in directpv.dev).

    directpv-csi node --node-id "$NODE_NAME" --endpoint unix:///csi/csi.sock \\
        --state-dir /var/lib/directpv-csi --kubelet-dir /var/lib/kubelet [--kubeconfig FILE] \
        [--metrics-address :10443]

The registry finds the drives formatted by us on this node, mounts them under
STATE_DIR/mnt/<drive id> and records them (Ready / Lost / Error) in the store. /metrics on
--metrics-address carries DirectPV's volume and drive series (observe/metrics.py).
"""

from __future__ import annotations

import argparse

from . import standalone

HELP = "serve CSI Identity + Node for this node on the Kubernetes store (the node DaemonSet)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    standalone.add_arguments(p, role="node")


def run(args: argparse.Namespace) -> int:
    return standalone.run(args)
