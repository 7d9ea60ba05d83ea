#!/usr/bin/env bash
# Molecule scenarios of the collection (molecule/default: localhost; molecule/multihost:
# network namespaces running sshd). Needs root (loop devices, namespaces).
#   scripts/molecule.sh                 both scenarios (`molecule test`)
#   scripts/molecule.sh multihost       one scenario
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
export PATH="$REPO/.venv/bin:$PATH"
work=$(mktemp -d "${TMPDIR:-/tmp}/directpv-molecule.XXXXXX")
trap 'rm -rf "$work"' EXIT INT TERM
mkdir -p "$work/ansible_collections/directpv"
ln -s "$REPO" "$work/ansible_collections/directpv/csi"
export ANSIBLE_COLLECTIONS_PATH="$work"
export DIRECTPV_VENV_PYTHON="$REPO/.venv/bin/python"
export ANSIBLE_SSH_ARGS="-o ControlMaster=no"
scenarios=("$@")
[ "${#scenarios[@]}" -gt 0 ] || scenarios=(default multihost)
for s in "${scenarios[@]}"; do
  t0=$SECONDS
  echo "=== molecule test -s $s"
  molecule test -s "$s"
  echo "=== molecule $s: ok in $((SECONDS - t0)) s"
done
