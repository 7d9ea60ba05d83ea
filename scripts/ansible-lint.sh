#!/usr/bin/env bash
# ansible-lint (production profile, .ansible-lint) over the whole collection from the repository
# root, no path arguments: roles, playbooks, molecule scenarios, galaxy.yml, meta/ and the other
# YAML files (.ansible-lint's exclude_paths keeps out the captured /dev and /sys fixture trees,
# whose symlinks loop). This working tree is installed as directpv.csi so FQCNs resolve.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
export PATH="$REPO/.venv/bin:$PATH"
work=$(mktemp -d "${TMPDIR:-/tmp}/directpv-lint.XXXXXX")
trap 'rm -rf "$work"' EXIT INT TERM
mkdir -p "$work/ansible_collections/directpv"
ln -s "$REPO" "$work/ansible_collections/directpv/csi"
export ANSIBLE_COLLECTIONS_PATH="$work"
export ANSIBLE_HOME="$work/ansible-home"
ansible-lint --offline --profile production "$@"
