# directpv.csi — see README.md. Every target that runs code depends on the setup it needs and
# nothing more: `make demo` installs a few Debian packages and a small venv (ansible-core + the
# driver's deps, no Go builds); `make test` sets up everything. Setup targets are idempotent and
# stamped (a second `make` skips what is already there). One setup target per need: add yours.
SHELL := /bin/bash
VENV := .venv
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export TOOLS_DIR ?= $(HOME)/.cache/directpv-csi/tools

.PHONY: setup setup-demo setup-test setup-system setup-system-demo setup-system-test \
	setup-venv setup-venv-demo setup-venv-dev tools \
	demo test test-unit test-vm lint collection changelog bench clean

# --- setup, one target per need --------------------------------------------------------------
# Debian packages (scripts/setup-system.sh: demo = xfsprogs, util-linux, e2fsprogs, python3-venv,
# git; test = those + QEMU, busybox, cpio, kmod, sshd, iproute2, gdisk, parted).
setup-system-demo:
	bash scripts/setup-system.sh demo
setup-system-test:
	bash scripts/setup-system.sh test

# .venv from PyPI (pins: requirements-demo.txt ⊂ requirements-dev.txt, constraints.txt for all).
setup-venv-demo:
	bash scripts/setup-venv.sh demo
setup-venv-dev:
	bash scripts/setup-venv.sh dev

# Go-built test tools into ~/.cache/directpv-csi/tools (reused once built): csi-sanity, the real
# control plane (kube-apiserver, etcd, kube-controller-manager) and the CSI sidecars
# (csi-provisioner, csi-resizer) for tests/kube. About 30 CPU-minutes cold; only `make test` needs them.
tools:
	bash scripts/build-tools.sh
	bash scripts/build-kube-tools.sh

setup-demo: setup-system-demo setup-venv-demo
setup-test: setup-system-test setup-venv-dev tools
setup: setup-test
# older names
setup-system: setup-system-test
setup-venv: setup-venv-dev

# --- what runs -------------------------------------------------------------------------------
demo: setup-demo
	bash scripts/demo.sh

test: setup-test cluster-setup image
	bash scripts/test.sh

# pytest alone: no Go tools (tests that need them skip and say so), no QEMU.
test-unit: setup-system-demo setup-venv-dev
	$(VENV)/bin/pytest -q -p no:cacheprovider driver/tests tests

test-vm: setup-test
	bash tests/vm/run.sh

# ruff, mypy, ansible-lint, changelog fragments, the collection built, installed offline and
# sanity-tested as shipped. No Go tools.
lint: setup-system-demo setup-venv-dev
	bash scripts/lint.sh

# The collection tarball as users get it (dist/directpv-csi-VERSION.tar.gz).
collection: setup-venv-demo
	bash scripts/build-collection.sh dist

# CHANGELOG.rst from changelogs/ (a release: antsibull-changelog release --version X.Y.Z).
changelog: setup-venv-dev
	$(VENV)/bin/antsibull-changelog generate

bench: setup-test
	bash bench/run.sh

clean:
	rm -rf build dist tests/output .pytest_cache .mypy_cache .ruff_cache

# --- the real one-node cluster (tests/realnode) and the driver image ---------------------------
.PHONY: cluster-setup image test-cluster demo-cluster
# containerd, runc, CNI plugins, buildah, debootstrap from Debian; kube-scheduler and kubelet built
# like the other tools; the pause image and the Go-built sidecars packed as images.
cluster-setup: setup
	bash scripts/setup-cluster.sh

# The driver image (deploy/Containerfile), buildah on a Debian base made here, no registry pull:
# ~/.cache/directpv-csi/image/directpv-csi.oci.tar (the base is cached between runs).
image: cluster-setup
	bash scripts/build-image.sh

# tests/realnode alone (scripts/test.sh runs it as the last stage of `make test`).
test-cluster: cluster-setup image
	DIRECTPV_REALNODE=1 $(VENV)/bin/pytest -q -p no:cacheprovider -m realnode tests/realnode

# The whole product on a real one-node cluster, shown step by step, then removed.
demo-cluster: cluster-setup image
	bash scripts/demo-cluster.sh
