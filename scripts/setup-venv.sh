#!/usr/bin/env bash
# Creates .venv at the repository root with the pinned dependencies of one profile, installs the
# driver package (editable) and links this checkout into the venv's ansible_collections/ as
# directpv.csi (a development link: .venv/.../site-packages/ansible_collections/directpv/csi -> repo).
#
#   scripts/setup-venv.sh demo   requirements-demo.txt: ansible-core + the driver's runtime deps
#   scripts/setup-venv.sh dev    requirements-dev.txt (a superset): tests, lint, benchmarks
#
# One stamp per profile in .venv/, holding a hash of the files that decide its contents: a second
# run with nothing changed does nothing. `dev` includes `demo`, so its stamp satisfies both.
# PIP_NO_CACHE_DIR / PIP_CACHE_DIR and PYTHON (default python3) are honoured.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
PY=${PYTHON:-python3}
profile=${1:-dev}
case "$profile" in
  demo) req=requirements-demo.txt; inputs=(requirements-demo.txt constraints.txt driver/pyproject.toml) ;;
  dev) req=requirements-dev.txt; inputs=(requirements-dev.txt requirements-demo.txt constraints.txt driver/pyproject.toml) ;;
  *) echo "setup-venv: unknown profile '$profile' (demo or dev)" >&2; exit 2 ;;
esac

hash_of() { cat "$@" | sha256sum | cut -d' ' -f1; }
want=$(hash_of "${inputs[@]}")
dev_want=$(hash_of requirements-dev.txt requirements-demo.txt constraints.txt driver/pyproject.toml)
stamp=.venv/.stamp-$profile
if { [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; } \
   || { [ "$profile" = demo ] && [ -f .venv/.stamp-dev ] && [ "$(cat .venv/.stamp-dev)" = "$dev_want" ]; }; then
  echo "venv ($profile): up to date"
else
  if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv || { echo "setup-venv: '$PY -m venv' failed; on Debian: apt-get install python3-venv (make setup-system)" >&2; exit 1; }
  fi
  t0=$SECONDS
  .venv/bin/python -m pip install -q --disable-pip-version-check -r "$req" -c constraints.txt
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e driver 2>/dev/null \
    || .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -e driver
  rm -f .venv/.setup-stamp  # the single stamp of older checkouts
  echo "$want" > "$stamp"
  echo "venv ($profile): installed $req in $((SECONDS - t0)) s"
fi
site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
mkdir -p "$site/ansible_collections/directpv"
ln -sfn "$REPO" "$site/ansible_collections/directpv/csi"
echo "venv ($profile): ready ($(.venv/bin/python --version), collection linked at $site/ansible_collections/directpv/csi)"
