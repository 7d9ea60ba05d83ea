#!/usr/bin/env bash
# ansible-test sanity ON THE BUILT ARTIFACT AS SHIPPED, offline, without containers:
#   1. build the tarball (scripts/build-collection.sh: galaxy.yml's build_ignore decides its content);
#   2. install it offline into an empty path (`ansible-galaxy collection install --offline --no-deps`;
#      sys.path scanning off so the venv's development link does not count as installed;
#      kubernetes.core, its one dependency, is not needed to install or sanity-test it);
#   3. run `ansible-test sanity --venv` in the installed copy (.../ansible_collections/directpv/csi),
#      with the ignore file the tarball itself carries (tests/sanity/ignore-<ansible-core>.txt).
# ansible-test wants its content under version control to list files: the installed copy becomes a
# git repository of exactly the installed files (nothing added, nothing removed).
# ansible-test bootstraps each venv with a get-pip script from the internet (blocked here): an
# offline stand-in (ensurepip, then pip with the given arguments) is placed at the cache path it
# reads first.
#
#   scripts/ansible-sanity.sh [ansible-test sanity arguments...]   e.g. --test validate-modules
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
export PATH="$REPO/.venv/bin:$PATH"
PY=${ANSIBLE_SANITY_PYTHON:-3.11}

work=$(mktemp -d "${TMPDIR:-/tmp}/directpv-sanity.XXXXXX")
trap 'rm -rf "$work"' EXIT INT TERM

t0=$SECONDS
tarball=$(bash scripts/build-collection.sh "$work/dist" | tail -n1)
ANSIBLE_HOME="$work/home" ANSIBLE_COLLECTIONS_SCAN_SYS_PATH=false ANSIBLE_COLLECTIONS_PATH="$work/installed" \
  ansible-galaxy collection install --offline --no-deps --force -p "$work/installed" "$tarball" >/dev/null
dest=$work/installed/ansible_collections/directpv/csi
echo "sanity: built and installed $(basename "$tarball") ($(du -k "$tarball" | cut -f1) KiB) into an empty path in $((SECONDS - t0)) s"

git -C "$dest" init -q
# ansible-test's own output (tests/output/, with its venvs) must not count as content: the shipped
# tarball carries no .gitignore, so the exclusion lives in the repository's info/exclude.
echo "tests/output/" >> "$dest/.git/info/exclude"
git -C "$dest" -c user.name=sanity -c user.email=sanity@localhost add -A
git -C "$dest" -c user.name=sanity -c user.email=sanity@localhost commit -q -m "installed artifact"

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
