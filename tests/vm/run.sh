#!/usr/bin/env bash
# Entry point of the QEMU guest tests (`make test-vm`). See tests/vm/README.md.
#   bash tests/vm/run.sh                  boot once, run tests/vm/guest (+ the device layer's vm tests)
#   bash tests/vm/run.sh --self-test      prove a failing guest test fails the run
#   bash tests/vm/run.sh -v -- PYTEST...  stream the console, run only these pytest args in the guest
# Exit status: non-zero if the guest fails to boot, times out or any guest test fails.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=.venv/bin/python
[ -x "$PY" ] || PY=python3
exec "$PY" tests/vm/harness.py "$@"
