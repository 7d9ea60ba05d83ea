#!/usr/bin/env bash
# One home for device code: the collection's module_utils hold file symlinks to
# driver/src/directpv_csi/{core,device}/*.py (see docs/ARCHITECTURE.md).
#   scripts/link-module-utils.sh          (re)create the links
#   scripts/link-module-utils.sh --check  fail if a link is missing, stale or dangling
set -euo pipefail
cd "$(dirname "$0")/.."
check=0; [ "${1:-}" = "--check" ] && check=1
bad=0
for pkg in core device; do
  src=driver/src/directpv_csi/$pkg
  dst=plugins/module_utils/_directpv/$pkg
  mkdir -p "$dst"
  for f in "$src"/*.py; do
    base=$(basename "$f")
    target=../../../../$src/$base
    if [ "$check" = 1 ]; then
      [ "$(readlink "$dst/$base" 2>/dev/null)" = "$target" ] || { echo "missing or wrong link: $dst/$base -> $target"; bad=1; }
    else
      ln -sfn "$target" "$dst/$base"
    fi
  done
  for l in "$dst"/*.py; do
    [ -e "$l" ] || { echo "dangling link: $l"; if [ "$check" = 1 ]; then bad=1; else rm -f "$l"; fi; }
  done
done
[ -f plugins/module_utils/_directpv/__init__.py ] || { [ "$check" = 1 ] && { echo "missing plugins/module_utils/_directpv/__init__.py"; bad=1; } || : > plugins/module_utils/_directpv/__init__.py; }
exit $bad
