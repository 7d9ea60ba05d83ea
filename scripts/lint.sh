#!/usr/bin/env bash
# Everything `make lint` checks. Each step prints its wall time; the first failure stops the run.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"

step() { local name=$1; shift; local t0=$SECONDS; echo "=== lint: $name"; "$@"; echo "=== lint: $name: ok in $((SECONDS - t0)) s"; }

step "module_utils links (one home for device code)" bash scripts/link-module-utils.sh --check
step "ruff" ruff check .
step "mypy --strict (driver, tests/kube)" mypy
step "ansible-lint (production profile)" bash scripts/ansible-lint.sh
step "ansible-test sanity" bash scripts/ansible-sanity.sh
