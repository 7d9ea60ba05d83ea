#!/usr/bin/env bash
# Builds the Go test tools that exist nowhere else into a cache outside the
# repository (never committed), and reuses them when already built.
#   TOOLS_DIR   where binaries go   (default: ~/.cache/directpv-csi/tools)
# Usage: scripts/build-tools.sh [csi-sanity] ...   (no argument: all)
set -euo pipefail

TOOLS_DIR=${TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/directpv-csi/tools}
export GOPATH=${GOPATH:-${XDG_CACHE_HOME:-$HOME/.cache}/directpv-csi/gopath}
export GOCACHE=${GOCACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/directpv-csi/gocache}
export GOFLAGS=${GOFLAGS:--mod=mod}
export CGO_ENABLED=0
mkdir -p "$TOOLS_DIR"

CSI_SANITY_VERSION=v5.4.0

build_csi_sanity() {
  local out="$TOOLS_DIR/csi-sanity-$CSI_SANITY_VERSION"
  if [ -x "$out" ]; then echo "csi-sanity: cached at $out"; else
    command -v go >/dev/null || { echo "build-tools: go not found; it is needed to build csi-sanity" >&2; return 1; }
    echo "csi-sanity: building $CSI_SANITY_VERSION"
    GOBIN="$TOOLS_DIR/.bin-csi-sanity" go install "github.com/kubernetes-csi/csi-test/v5/cmd/csi-sanity@$CSI_SANITY_VERSION"
    mv "$TOOLS_DIR/.bin-csi-sanity/csi-sanity" "$out"
    rmdir "$TOOLS_DIR/.bin-csi-sanity"
  fi
  ln -sfn "$out" "$TOOLS_DIR/csi-sanity"
}

targets=("$@")
[ "${#targets[@]}" -gt 0 ] || targets=(csi-sanity)
for t in "${targets[@]}"; do
  case "$t" in
    csi-sanity) build_csi_sanity ;;
    *) echo "build-tools: unknown tool '$t' (known: csi-sanity)" >&2; exit 2 ;;
  esac
done
