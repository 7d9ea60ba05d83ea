#!/usr/bin/env bash
# Everything `make lint` checks. Each step prints its wall time; the first failure stops the run.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"

step() { local name=$1; shift; local t0=$SECONDS; echo "=== lint: $name"; "$@"; echo "=== lint: $name: ok in $((SECONDS - t0)) s"; }

# Header policy (README.md, "Licence"): the collection is Apache-2.0 (LICENSE); every
# Python file of plugins/ that is not a link into driver/ names it in its first lines, because
# Ansible ships module and plugin files to hosts on their own, away from the LICENSE file.
headers() {
  local bad=0 f
  while IFS= read -r -d '' f; do
    head -n 5 "$f" | grep -q '^# Apache License 2.0 (see LICENSE)$' || { echo "no licence header: $f"; bad=1; }
  done < <(find plugins -name '*.py' -type f -size +0 -print0)
  return $bad
}

step "module_utils links (one home for device code)" bash scripts/link-module-utils.sh --check
step "licence headers (plugins/)" headers
step "changelog fragments (antsibull-changelog lint)" antsibull-changelog lint
step "ruff" ruff check .
step "mypy --strict (driver, plugins, tests, bench; relaxations documented in mypy.ini)" mypy
step "import-linter contracts (.importlinter: layers, only kube/ imports kubernetes)" lint-imports --no-cache
step "ansible-lint (production profile)" bash scripts/ansible-lint.sh
step "sanity ignore file lists today's driver files" python3 scripts/sanity-ignores.py --check
step "collection built, installed offline into an empty path, ansible-test sanity on it" bash scripts/ansible-sanity.sh
