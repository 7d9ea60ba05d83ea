#!/usr/bin/env bash
# ansible-test sanity for the directpv.csi collection, offline, without containers.
#
# ansible-test needs the collection to really sit at .../ansible_collections/directpv/csi/
# (a symlink is resolved and rejected) inside a git repository, so this copies the
# collection's files (git-tracked and new, not ignored; symlinks kept as symlinks) into a
# temporary tree, commits them there and runs `ansible-test sanity --venv` in it.
# ansible-test bootstraps each venv with a get-pip script from the internet (blocked here):
# an offline stand-in (ensurepip, then pip with the given arguments) is placed at the cache
# path it reads first.
#
# The Ansible content is tested: plugins/, roles/, playbooks/, meta/, tests/ of the collection,
# and the driver's core/ and device/ files that plugins/module_utils/_directpv/ links to. The
# rest of driver/ (the CSI driver payload) is linted by ruff and mypy (scripts/lint.sh).
#
#   scripts/ansible-sanity.sh [ansible-test sanity arguments...]   e.g. --test validate-modules
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
export PATH="$REPO/.venv/bin:$PATH"
PY=${ANSIBLE_SANITY_PYTHON:-3.11}

work=$(mktemp -d "${TMPDIR:-/tmp}/directpv-sanity.XXXXXX")
trap 'rm -rf "$work"' EXIT INT TERM
dest=$work/ansible_collections/directpv/csi
mkdir -p "$dest"

# Files of the collection (tracked or new, not ignored, still present).
git ls-files -z --cached --others --exclude-standard -- \
    .gitignore galaxy.yml meta plugins roles playbooks docs README.md LICENSE tests/sanity tests/config.yml \
    tests/unit/plugins tests/playbooks driver/src/directpv_csi/core driver/src/directpv_csi/device \
  | while IFS= read -r -d '' f; do [ -e "$f" ] || [ -L "$f" ] && printf '%s\0' "$f"; done \
  | tar --null -T - -cf - | tar -xf - -C "$dest"

# ansible-test wants a git repository with the files tracked.
git -C "$dest" init -q
git -C "$dest" -c user.name=sanity -c user.email=sanity@localhost add -A
git -C "$dest" -c user.name=sanity -c user.email=sanity@localhost commit -q -m sanity

# Offline stand-in for https://ci-files.testing.ansible.com/ansible-test/get-pip-<ver>.py, at the
# cache path ansible-test reads first (ansible_test/_util/target/setup/requirements.py).
pipver=$(python - <<'PY'
import re, ansible_test, pathlib
src = (pathlib.Path(ansible_test.__file__).parent / "_internal" / "python_requirements.py").read_text()
print(re.search(r"pip='([0-9.]+)'", src).group(1))
PY
)
cache=$HOME/.ansible/test/cache
mkdir -p "$cache"
cat > "$cache/get_pip_${pipver//./_}.py" <<'PY'
"""Offline stand-in for get-pip.py (ansible-test bootstrap): ensurepip, then pip with the given
arguments from the package index (get-pip-only flags dropped)."""
import subprocess
import sys

subprocess.check_call([sys.executable, "-m", "ensurepip", "--upgrade", "--default-pip"])
args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel", "--disable-pip-version-check")]
if args:
    subprocess.check_call([sys.executable, "-m", "pip", "install", "--disable-pip-version-check", *args])
PY

cd "$dest"
ansible-test sanity --venv --python "$PY" --color no "$@"
