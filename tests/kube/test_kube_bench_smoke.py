"""Smoke run of bench/kube_bench.py --quick (its own private control plane, small numbers): the
benchmark runs to the end and every figure it prints parses as a positive number. No timing
threshold: speed is what the benchmark reports, not what a test asserts."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from .controlplane import find_binaries

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow

NUM = r"(\d+(?:\.\d+)?)"


@pytest.mark.skipif(None in find_binaries(), reason="needs etcd and kube-apiserver (scripts/build-kube-tools.sh)")
def test_kube_bench_quick_prints_positive_figures() -> None:
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "kube_bench.py"), "--quick"],
                          capture_output=True, text=True, timeout=600, cwd=REPO)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]

    creates = re.findall(rf"^   (kube|embedded), (\d+) clients?: {NUM} volumes/s, p50 {NUM} ms, p99 {NUM} ms",
                         out, re.M)
    assert sorted((store, int(c)) for store, c, *_ in creates) == \
        [("embedded", 1), ("embedded", 4), ("kube", 1), ("kube", 4)], out
    for _, _, rate, p50, p99 in creates:
        assert float(rate) > 0 and 0 < float(p50) <= float(p99), out
    ratios = re.findall(rf"^   ratio kube/embedded, \d+ clients?: throughput {NUM}x, p50 {NUM}x, p99 {NUM}x",
                        out, re.M)
    assert len(ratios) == 2 and all(float(x) > 0 for r in ratios for x in r), out
    assert re.search(rf"^   kube DeleteVolume, 4 clients: {NUM} volumes/s", out, re.M), out

    base = re.search(rf"^   baseline, 0 drives: VmRSS {NUM} MiB, VmHWM {NUM} MiB", out, re.M)
    held = re.search(rf"^   200 drives: VmRSS {NUM} MiB, VmHWM {NUM} MiB", out, re.M)
    per = re.search(r"^   per drive: (-?\d+) bytes", out, re.M)
    emb = re.search(rf"embedded standalone \(--no-node\) holding the same 200 drives: VmRSS {NUM} MiB", out)
    assert base and held and per and emb, out
    assert all(float(x) > 0 for x in (*base.groups(), *held.groups(), emb.group(1))), out
    # the per-drive figure is a difference of two process sizes: printed, signed, not asserted positive
    # (200 drives are within the noise of the interpreter's allocator)
