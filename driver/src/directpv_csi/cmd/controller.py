"""`directpv-csi controller`: the controller Deployment's CSI server (Identity + Controller)
on the Kubernetes store (CRDs in directpv.dev).

    directpv-csi controller --endpoint unix:///csi/csi.sock [--kubeconfig FILE] \
        [--metrics-address :30443] [--reconcile-interval 300] [--reconcile-grace 300]

Several replicas are safe without leader election: every reservation is an optimistic
update of the drive object (resourceVersion precondition, bounded retries on 409), so two
replicas racing for the same drive cannot over-commit it (driver/tests/store/test_kube*.py
runs reservations through several store replicas under real conflicts). The csi-provisioner
and csi-resizer sidecars elect their own leader, so one replica answers at a time anyway.

Every replica serves /metrics, /healthz and /readyz on --metrics-address (observe/endpoints.py)
and calls KubeStore.reconcile every --reconcile-interval seconds (observe/reconcile.py): ledger
records older than the grace period whose volume object does not exist are released.
"""

from __future__ import annotations

import argparse

from . import standalone

HELP = "serve CSI Identity + Controller on the Kubernetes store (the controller Deployment)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    standalone.add_arguments(p, role="controller")


def run(args: argparse.Namespace) -> int:
    return standalone.run(args)  # app.build_controller
