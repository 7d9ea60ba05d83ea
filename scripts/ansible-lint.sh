#!/usr/bin/env bash
# ansible-lint (production profile, .ansible-lint) over the collection's roles, playbooks and
# molecule scenarios, with this working tree installed as directpv.csi so FQCNs resolve.
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
ansible-lint --offline --profile production "$@" roles/ playbooks/ molecule/
