#!/usr/bin/env bash
# Builds the collection tarball as users get it: `ansible-galaxy collection build` over the
# collection's files (git-tracked and new, not ignored; symlinks kept as symlinks), so local
# leftovers (.venv, caches, scratch files) can never slip in; galaxy.yml's build_ignore decides
# the rest. Prints the tarball's path on the last line.
#   scripts/build-collection.sh [OUTPUT_DIR]   (default: dist)
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
export PATH="$REPO/.venv/bin:$PATH"
out=${1:-dist}
mkdir -p "$out"
out=$(cd "$out" && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/directpv-build.XXXXXX")
trap 'rm -rf "$work"' EXIT INT TERM
git ls-files -z --cached --others --exclude-standard \
  | while IFS= read -r -d '' f; do [ -e "$f" ] || [ -L "$f" ] && printf '%s\0' "$f"; done \
  | tar --null --no-recursion -T - -cf - | { mkdir -p "$work/src"; tar -xf - -C "$work/src"; }
ANSIBLE_HOME="$work/home" ansible-galaxy collection build --force --output-path "$out" "$work/src" >&2
version=$(python3 -c 'import sys, re; print(re.search(r"(?m)^version:\s*(\S+)", open(sys.argv[1]).read()).group(1))' galaxy.yml)
echo "$out/directpv-csi-$version.tar.gz"
