#!/usr/bin/env bash
# The whole test suite: what `make test` and CI run. Each phase prints its wall time.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
export TOOLS_DIR=${TOOLS_DIR:-$HOME/.cache/directpv-csi/tools}

phase() { local name=$1; shift; local t0=$SECONDS; echo "=== $name"; "$@"; echo "=== $name: ok in $((SECONDS - t0)) s"; }

phase "pytest (driver + collection)" .venv/bin/pytest -q -p no:cacheprovider driver/tests tests
phase "QEMU guest: real kernel (XFS quota, partitions, udev, renames)" bash tests/vm/run.sh
phase "molecule: localhost, and three hosts in network namespaces over ssh" bash scripts/molecule.sh
