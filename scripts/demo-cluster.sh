#!/usr/bin/env bash
# `make demo-cluster`: the whole product on a real one-node cluster on this machine, the story a
# user lives through, printed as it goes (pods, PVCs, drives, volumes): the driver image built here
# and side-loaded with the sidecars by directpv.csi.image, loop drives formatted by the drives
# playbook, install.yml until Ready, a StatefulSet of three pods writing through the kubelet, a pod
# re-created finding its data, a PVC expanded, a read-only mount refusing writes, PVCs deleted and
# their space returned, uninstall. It is tests/realnode/test_e2e.py run with its output shown; the
# cluster, the loop drives and every change to the host are removed at the end. Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
base=$(mktemp -d /tmp/directpv-demo-cluster.XXXXXX)
trap 'rm -rf --one-file-system "$base"' EXIT
DIRECTPV_REALNODE=1 .venv/bin/pytest -q -s -p no:cacheprovider --basetemp "$base/pytest" \
  -m realnode tests/realnode/test_e2e.py
