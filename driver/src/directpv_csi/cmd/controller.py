"""`directpv-csi controller`: the controller Deployment's CSI server (Identity + Controller)
on the Kubernetes store (CRDs in directpv.dev).

    directpv-csi controller --endpoint unix:///csi/csi.sock [--kubeconfig FILE]

Several replicas are safe without leader election: every reservation is an optimistic
update of the drive object (resourceVersion precondition, bounded retries on 409), so two
replicas racing for the same drive cannot over-commit it (driver/tests/store/test_kube*.py
runs reservations through several store replicas under real conflicts). The csi-provisioner
and csi-resizer sidecars elect their own leader, so one replica answers at a time anyway.
"""

from __future__ import annotations

import argparse

from . import standalone

HELP = "serve CSI Identity + Controller on the Kubernetes store (the controller Deployment)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    standalone.add_arguments(p, role="controller")


def run(args: argparse.Namespace) -> int:
    return standalone.run(args)
