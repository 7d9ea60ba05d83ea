#!/usr/bin/env bash
# Creates .venv at the repository root with the pinned dependencies, installs the
# driver package (editable) and makes the collection importable/usable from it
# (a development link: .venv/.../site-packages/ansible_collections/directpv/csi -> repo).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
PY=${PYTHON:-python3}
stamp=.venv/.setup-stamp
want=$(cat requirements-dev.txt constraints.txt driver/pyproject.toml | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "venv: up to date"
else
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -r requirements-dev.txt -c constraints.txt
  .venv/bin/python -m pip install -q --no-deps -e driver
  echo "$want" > "$stamp"
fi
site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
mkdir -p "$site/ansible_collections/directpv"
ln -sfn "$REPO" "$site/ansible_collections/directpv/csi"
echo "venv: ready ($(.venv/bin/python --version), collection linked at $site/ansible_collections/directpv/csi)"
