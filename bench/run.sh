#!/usr/bin/env bash
# `make bench`: every benchmark, one after another, each printing its figures and
# the ratio to its target. Needs root (loop devices, mounts).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
status=0
# kube_bench and watch_bench start their own etcd + kube-apiserver (and skip, saying how to build them, when
# they are absent);
# cluster_bench a real one-node cluster (make cluster-setup and make image first, or it says so and skips)
for b in probe_bench mount_bench node_bench csi_bench playbook_bench kube_bench watch_bench cluster_bench; do
  [ -f "bench/$b.py" ] || { echo "=== bench/$b.py: not present"; continue; }
  echo "=== bench/$b.py"
  "$PY" "bench/$b.py" || { echo "=== bench/$b.py FAILED (exit $?)"; status=1; }
done
exit $status
