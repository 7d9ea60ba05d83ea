#!/usr/bin/env bash
# Builds a real Kubernetes control plane for tests (kube-apiserver, etcd,
# kube-controller-manager for the PersistentVolume controllers) and the CSI sidecars (csi-provisioner, csi-resizer) from their Go modules into a cache
# outside the repository (never committed). Each binary is stored under a
# versioned name with a stable symlink; a versioned binary that exists is reused.
#   TOOLS_DIR   where binaries go          (default: ~/.cache/directpv-csi/tools)
#   GOPATH, GOCACHE                        (default: ~/.cache/directpv-csi/{gopath,gocache})
#   KUBE_WORK   wrapper modules (go.mod)   (default: ~/.cache/directpv-csi/kube-work)
# Usage: scripts/build-kube-tools.sh [kube-apiserver|etcd|kube-controller-manager|csi-provisioner|csi-resizer] ...
#        (no argument: all five). Builds run under `nice -n 19`; CGO is off.
#        The real node (tests/realnode, scripts/setup-cluster.sh) adds kube-scheduler, kubelet and
#        kube-proxy, built the same way as kube-apiserver: name them (scripts/setup-cluster.sh does).
#
# kube-apiserver, kube-controller-manager and etcd cannot be `go install`ed: their go.mod files point
# their sibling modules at local directories (`replace k8s.io/api =>
# ./staging/src/k8s.io/api`). We generate a wrapper module that requires the
# release and replaces every such sibling with its published version
# (k8s.io/<m> v0.X.Y for Kubernetes v1.X.Y; go.etcd.io/etcd/<m>/v3 at the same
# tag for etcd). The list of siblings is read from the release's own go.mod, so
# changing a version below is the only edit a bump needs.
set -euo pipefail

CACHE_ROOT=${XDG_CACHE_HOME:-$HOME/.cache}/directpv-csi
TOOLS_DIR=${TOOLS_DIR:-$CACHE_ROOT/tools}
KUBE_WORK=${KUBE_WORK:-$CACHE_ROOT/kube-work}
export GOPATH=${GOPATH:-$CACHE_ROOT/gopath}
export GOCACHE=${GOCACHE:-$CACHE_ROOT/gocache}
export GOFLAGS="-mod=mod -buildvcs=false"
export GOTOOLCHAIN=local
export CGO_ENABLED=0
mkdir -p "$TOOLS_DIR" "$KUBE_WORK"
# one build at a time per TOOLS_DIR (wrapper dirs and *.tmp outputs are shared)
exec 9>"$TOOLS_DIR/.build-kube-tools.lock"
flock 9

KUBE_VERSION=v1.36.3                  # k8s.io/kubernetes; staging modules at v0.36.3
ETCD_VERSION=v3.6.16                  # go.etcd.io/etcd/server/v3 (and its siblings)
PROVISIONER_VERSION=v6.3.0            # github.com/kubernetes-csi/external-provisioner/v6 (v6.4.0 needs
                                      # sig-storage-lib-external-provisioner v13.1.0: not on the proxy)
RESIZER_VERSION=v2.3.0                # github.com/kubernetes-csi/external-resizer/v2

NICE=(nice -n 19)

need_go() {
  command -v go >/dev/null || { echo "build-kube-tools: go not found; it is needed to build $1 (install Go >= 1.25)" >&2; return 1; }
}

# publish NAME VERSIONED_PATH: stable symlink NAME -> versioned file
publish() { ln -sfn "$(basename "$2")" "$TOOLS_DIR/$1"; }

# mod_file MODULE@VERSION: path of that release's go.mod in the module cache
mod_file() { "${NICE[@]}" go mod download -json "$1" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",*$/\1/p'; }

# local_replaces GO_MOD: module paths that GO_MOD replaces with a local
# directory (lines like `k8s.io/api => ./staging/src/k8s.io/api`), except the
# guards that point at ./FORBIDDEN_DEPENDENCY (etcd's way to reject an import)
local_replaces() {
  awk '{ for (i = 2; i < NF; i++) if ($i == "=>" && $(i+1) ~ /^\.\.?\// && $(i+1) !~ /FORBIDDEN/) {
           m = $(i-1); if (m ~ /^v[0-9]/) m = $(i-2); print m } }' "$1" | sort -u
}

# published_replaces GO_MOD: GO_MOD's replace directives that point at a
# published module version (`A => B vX`), in go.mod block syntax
published_replaces() {
  awk '/^replace[[:space:]]*\($/ { blk = 1; next }
       blk && /^\)/ { blk = 0; next }
       { line = $0; sub(/\/\/.*/, "", line); sub(/[[:space:]]+$/, "", line) }
       (blk || line ~ /^replace[[:space:]]/) && line ~ /=>/ {
         sub(/^replace[[:space:]]+/, "", line); n = split(line, f, /[[:space:]]+/)
         if (f[n] ~ /^v[0-9]/ && f[n-1] !~ /^\.\.?\//) { sub(/^[[:space:]]+/, "", line); print "\t" line } }' "$1"
}

# wrapper_build NAME DIR ROOT_MODULE ROOT_VERSION PACKAGE OUT LDFLAGS REPLACE_LINES
wrapper_build() {
  local name=$1 dir=$2 root=$3 rootv=$4 pkg=$5 out=$6 ldflags=$7 replaces=$8
  rm -rf "$dir" && mkdir -p "$dir"
  {
    echo "module directpv.dev/testtools/$name"
    echo
    echo "go $(go env GOVERSION | sed -E 's/^go([0-9]+\.[0-9]+).*/\1/')"
    echo
    echo "require $root $rootv"
    echo
    echo "replace ("
    printf '%s\n' "$replaces"
    echo ")"
  } > "$dir/go.mod"
  # -mod=mod lets `go build` fill in go.sum; everything else comes from the
  # release's own requirements (minimal version selection)
  (cd "$dir" && "${NICE[@]}" go build -trimpath -ldflags "-s -w $ldflags" -o "$out.tmp" "$pkg")
  mv "$out.tmp" "$out"
}

# build_kube NAME: a k8s.io/kubernetes command (kube-apiserver, kube-controller-manager, kube-scheduler,
# kubelet, kube-proxy)
build_kube() {
  local name=$1 out="$TOOLS_DIR/$1-$KUBE_VERSION"
  if [ ! -x "$out" ]; then
    need_go "$name"
    echo "$name: building $KUBE_VERSION (wrapper module in $KUBE_WORK/$name)"
    local gomod staging_v replaces minor
    gomod=$(mod_file "k8s.io/kubernetes@$KUBE_VERSION")
    staging_v="v0.${KUBE_VERSION#v1.}"
    replaces=$(local_replaces "$gomod" | awk -v v="$staging_v" '{ print "\t" $1 " => " $1 " " v }')
    [ -n "$replaces" ] || { echo "$name: no staging replaces found in $gomod" >&2; return 1; }
    minor=${KUBE_VERSION#v1.}; minor=${minor%%.*}
    wrapper_build "$name" "$KUBE_WORK/$name" k8s.io/kubernetes "$KUBE_VERSION" \
      "k8s.io/kubernetes/cmd/$name" "$out" \
      "-X k8s.io/component-base/version.gitVersion=$KUBE_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean" \
      "$replaces"
  else echo "$name: cached at $out"; fi
  publish "$name" "$out"
}

build_etcd() {
  local out="$TOOLS_DIR/etcd-$ETCD_VERSION"
  if [ ! -x "$out" ]; then
    need_go etcd
    echo "etcd: building $ETCD_VERSION (wrapper module in $KUBE_WORK/etcd)"
    local gomod replaces
    gomod=$(mod_file "go.etcd.io/etcd/server/v3@$ETCD_VERSION")
    # every sibling is go.etcd.io/etcd/<m>/v3 tagged with the same version
    replaces=$(local_replaces "$gomod" | awk -v v="$ETCD_VERSION" '
      /\/v3$/ { print "\t" $1 " => " $1 " " v; next }
      { print "build-kube-tools: etcd sibling " $1 " is not a /v3 module; add its version by hand" > "/dev/stderr"; exit 1 }')
    wrapper_build etcd "$KUBE_WORK/etcd" go.etcd.io/etcd/server/v3 "$ETCD_VERSION" \
      go.etcd.io/etcd/server/v3 "$out" "" "$replaces"
  else echo "etcd: cached at $out"; fi
  publish etcd "$out"
}

build_csi_provisioner() {
  local out="$TOOLS_DIR/csi-provisioner-$PROVISIONER_VERSION"
  local mod=github.com/kubernetes-csi/external-provisioner/v6
  if [ ! -x "$out" ]; then
    need_go csi-provisioner
    echo "csi-provisioner: building $PROVISIONER_VERSION (wrapper module in $KUBE_WORK/csi-provisioner)"
    # its go.mod pins the k8s.io staging modules with replace directives, which
    # `go install pkg@version` refuses: carry them over into a wrapper instead
    local gomod replaces
    gomod=$(mod_file "$mod@$PROVISIONER_VERSION")
    replaces=$(published_replaces "$gomod")
    wrapper_build csi-provisioner "$KUBE_WORK/csi-provisioner" "$mod" "$PROVISIONER_VERSION" \
      "$mod/cmd/csi-provisioner" "$out" "-X main.version=$PROVISIONER_VERSION" "$replaces"
  else echo "csi-provisioner: cached at $out"; fi
  publish csi-provisioner "$out"
}

# go_install NAME PACKAGE VERSION: for modules that need no replace directives
go_install() {
  local name=$1 pkg=$2 version=$3 out="$TOOLS_DIR/$1-$3"
  if [ ! -x "$out" ]; then
    need_go "$name"
    echo "$name: building $version"
    GOBIN="$TOOLS_DIR/.bin-$name" "${NICE[@]}" go install -trimpath -ldflags "-s -w -X main.version=$version" "$pkg@$version"
    mv "$TOOLS_DIR/.bin-$name/$(basename "$pkg")" "$out"
    rmdir "$TOOLS_DIR/.bin-$name"
  else echo "$name: cached at $out"; fi
  publish "$name" "$out"
}

targets=("$@")
default=(kube-apiserver etcd kube-controller-manager csi-provisioner csi-resizer)
known=("${default[@]}" kube-scheduler kubelet kube-proxy)
[ "${#targets[@]}" -gt 0 ] || targets=("${default[@]}")
for t in "${targets[@]}"; do  # refuse a typo before spending minutes on the others
  [[ " ${known[*]} " == *" $t "* ]] || { echo "build-kube-tools: unknown tool '$t' (known: ${known[*]})" >&2; exit 2; }
done
for t in "${targets[@]}"; do
  start=$(date +%s)
  case "$t" in
    kube-apiserver|kube-controller-manager|kube-scheduler|kubelet|kube-proxy) build_kube "$t" ;;
    etcd) build_etcd ;;
    csi-provisioner) build_csi_provisioner ;;
    csi-resizer) go_install csi-resizer github.com/kubernetes-csi/external-resizer/v2/cmd/csi-resizer "$RESIZER_VERSION" ;;
  esac
  echo "$t: ready in $(( $(date +%s) - start )) s"
done
