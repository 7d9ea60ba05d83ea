"""The rest of a cluster around our driver, as processes: kube-controller-manager (the
PersistentVolume binder, expander and protection controllers), csi-provisioner and csi-resizer.

All three are the real upstream programs built from their Go modules by
``scripts/build-kube-tools.sh`` into ``$TOOLS_DIR``; a test that needs one skips, naming the
command that builds it, when it is absent. They talk to the API server of
tests/kube/controlplane.py through its admin kubeconfig (group ``system:masters``).

What still does not exist here and is played by the test itself: the scheduler (it would set
the ``volume.kubernetes.io/selected-node`` annotation) and kubelet (CSINode, the Node's
topology labels, NodeStage/NodePublish/NodeExpand, the PVC's resized status).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import pytest

from .controlplane import free_ports, tools_dir

# kube-controller-manager controllers a PVC's life needs; nothing else runs (no scheduler, no
# kubelet, no service-account tokens): `kube-controller-manager --help` lists the names.
KCM_CONTROLLERS = (
    "persistentvolume-binder-controller",
    "persistentvolume-expander-controller",
    "persistentvolume-protection-controller",
    "persistentvolumeclaim-protection-controller",
)
TOOLS = ("kube-controller-manager", "csi-provisioner", "csi-resizer")


def find_tool(name: str) -> Optional[Path]:
    path = tools_dir() / name
    return path if path.is_file() and os.access(path, os.X_OK) else None


def require_tools(names: Sequence[str] = TOOLS) -> Dict[str, Path]:
    """Paths of ``names``; skips the test (saying how to build them) when one is missing."""
    found: Dict[str, Path] = {}
    missing: List[str] = []
    for name in names:
        path = find_tool(name)
        if path is None:
            missing.append(name)
        else:
            found[name] = path
    if missing:
        pytest.skip(f"{', '.join(missing)} not built in {tools_dir()}: run "
                    f"scripts/build-kube-tools.sh {' '.join(missing)} (make setup does)")
    return found


def kcm_argv(binary: Path, kubeconfig: Path, cert_dir: Path) -> List[str]:
    (port,) = free_ports(1)
    return [
        str(binary),
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        f"--controllers={','.join(KCM_CONTROLLERS)}",
        "--leader-elect=false",
        "--use-service-account-credentials=false",
        "--bind-address=127.0.0.1",
        f"--secure-port={port}",
        f"--cert-dir={cert_dir}",
        "--pvclaimbinder-sync-period=2s",
        "--v=2",
    ]


def provisioner_argv(binary: Path, kubeconfig: Path, socket: Path, namespace: str) -> List[str]:
    """csi-provisioner as roles/install's controller Deployment runs it, with short periods."""
    return [
        str(binary),
        f"--csi-address={socket}",
        f"--kubeconfig={kubeconfig}",
        "--strict-topology",
        "--immediate-topology=false",
        "--enable-capacity",
        "--capacity-ownerref-level=-1",  # no owning Deployment here
        "--capacity-poll-interval=2s",
        "--extra-create-metadata",
        "--default-fstype=xfs",
        "--leader-election",
        f"--leader-election-namespace={namespace}",
        "--retry-interval-start=1s",
        "--retry-interval-max=5s",
        "--timeout=60s",
        "--v=4",
    ]


def resizer_argv(binary: Path, kubeconfig: Path, socket: Path, namespace: str) -> List[str]:
    return [
        str(binary),
        f"--csi-address={socket}",
        f"--kubeconfig={kubeconfig}",
        "--leader-election",
        f"--leader-election-namespace={namespace}",
        "--retry-interval-start=1s",
        "--retry-interval-max=5s",
        "--timeout=60s",
        "--v=4",
    ]
