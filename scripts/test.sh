#!/usr/bin/env bash
# The whole test suite: what `make test` and CI run. Each phase prints its wall time.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
export TOOLS_DIR=${TOOLS_DIR:-$HOME/.cache/directpv-csi/tools}

phase() { local name=$1; shift; local t0=$SECONDS; echo "=== $name"; "$@"; echo "=== $name: ok in $((SECONDS - t0)) s"; }

# A private base temp dir: pytest's default (/tmp/pytest-of-USER) is shared with every other
# pytest session, and each session deletes old ones — possibly while a test's mount lives there.
BASETEMP=$(mktemp -d /tmp/directpv-test.XXXXXX)
trap 'rm -rf --one-file-system "$BASETEMP"' EXIT
phase "pytest (driver + collection)" .venv/bin/pytest -q -p no:cacheprovider --basetemp "$BASETEMP/pytest" driver/tests tests
phase "QEMU guest: real kernel (XFS quota, partitions, udev, renames)" bash tests/vm/run.sh
phase "molecule: localhost, and three hosts in network namespaces over ssh" bash scripts/molecule.sh
phase "demo (scripts/demo.sh: what make demo runs after setup)" bash scripts/demo.sh
# Last and on its own: a real kubelet + containerd on this host (tests/realnode), whose bridge and
# iptables rules must not meet the network-namespace and QEMU tests above. `make test` runs
# cluster-setup and image first (scripts/setup-cluster.sh, scripts/build-image.sh).
phase "real node: the whole product under a real kubelet (tests/realnode)" \
  env DIRECTPV_REALNODE=1 DIRECTPV_REALNODE_REQUIRED=1 .venv/bin/pytest -q -p no:cacheprovider --basetemp "$BASETEMP/realnode" -m realnode tests/realnode
