# directpv.csi — see README.md. Every target that runs code depends on setup,
# so a newcomer on a fresh machine needs only `make demo` or `make test`.
SHELL := /bin/bash
VENV := .venv
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export TOOLS_DIR ?= $(HOME)/.cache/directpv-csi/tools

.PHONY: setup setup-system setup-venv tools test test-unit test-vm lint bench demo clean

setup: setup-system setup-venv tools

setup-system:
	bash scripts/setup-system.sh

setup-venv:
	bash scripts/setup-venv.sh

# Go-built test tools into ~/.cache/directpv-csi/tools (reused once built): csi-sanity, the real
# control plane (kube-apiserver, etcd, kube-controller-manager) and the CSI sidecars
# (csi-provisioner, csi-resizer) for tests/kube (the end-to-end PVC test needs all of them).
tools:
	bash scripts/build-tools.sh
	bash scripts/build-kube-tools.sh

test: setup
	bash scripts/test.sh

test-unit: setup-venv
	$(VENV)/bin/pytest -q driver/tests tests

test-vm: setup
	bash tests/vm/run.sh

lint: setup
	bash scripts/lint.sh

bench: setup
	bash bench/run.sh

demo: setup
	bash scripts/demo.sh

clean:
	rm -rf build dist tests/output .pytest_cache .mypy_cache .ruff_cache
