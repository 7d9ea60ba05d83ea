"""Host-side checks of the QEMU harness's logic (cheap: no boot).

The boot itself is proven by ``bash tests/vm/run.sh --self-test`` (a deliberately
broken guest test must fail the run) and exercised by ``bash tests/vm/run.sh``.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

HERE = Path(__file__).resolve().parent


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("vm_harness", HERE / "harness.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["vm_harness"] = mod
    spec.loader.exec_module(mod)
    return mod


h = _load()

DEP = """\
kernel/fs/xfs/xfs.ko: kernel/lib/libcrc32c.ko
kernel/lib/libcrc32c.ko:
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio.ko
kernel/drivers/virtio/virtio_pci_modern_dev.ko: kernel/drivers/virtio/virtio.ko
kernel/drivers/virtio/virtio.ko:
kernel/drivers/nvme/host/nvme-core.ko:
kernel/drivers/nvme/host/nvme.ko: kernel/drivers/nvme/host/nvme-core.ko
"""


def test_kernel_package_is_the_versioned_dependency() -> None:
    text = "linux-image-amd64\n  Depends: linux-image-6.1.0-56-amd64\n"
    assert h.parse_kernel_depends(text) == "linux-image-6.1.0-56-amd64"
    with pytest.raises(h.Skip):
        h.parse_kernel_depends("linux-image-amd64\n")


def test_module_closure_puts_dependencies_first_once() -> None:
    order = h.module_closure(DEP, ["virtio_pci", "xfs", "nvme_core", "nvme"])
    assert order == [
        "kernel/drivers/virtio/virtio.ko",
        "kernel/drivers/virtio/virtio_pci_modern_dev.ko",
        "kernel/drivers/virtio/virtio_pci.ko",
        "kernel/lib/libcrc32c.ko",
        "kernel/fs/xfs/xfs.ko",
        "kernel/drivers/nvme/host/nvme-core.ko",
        "kernel/drivers/nvme/host/nvme.ko",
    ]
    with pytest.raises(h.HarnessError, match=r"not in modules\.dep"):
        h.module_closure(DEP, ["zfs"])
    with pytest.raises(h.HarnessError, match="cycle"):
        h.module_closure("a.ko: b.ko\nb.ko: a.ko\n", ["a"])


def test_boot_modules_resolve_in_the_cached_kernel() -> None:
    deps = sorted(h.CACHE.glob("kernel-*/root/lib/modules/*/modules.dep"))
    if not deps:
        pytest.skip("no kernel in the cache yet (bash tests/vm/run.sh builds it)")
    order = h.module_closure(deps[-1].read_text(), h.BOOT_MODULES)
    names = {Path(p).name for p in order}
    assert {"xfs.ko", "9p.ko", "9pnet_virtio.ko", "virtio_blk.ko", "nvme.ko", "sd_mod.ko"} <= names


def test_disk_identity_goes_on_the_device_not_the_drive(tmp_path: Path) -> None:
    disks = [
        h.Disk.from_dict({"id": "a", "bus": "virtio", "serial": "S1"}),
        h.Disk.from_dict({"id": "b", "bus": "scsi", "serial": "S2", "wwn": "0x5000c500a1b2c3d4", "vendor": "V"}),
        h.Disk.from_dict({"id": "c", "bus": "nvme", "serial": "S3"}),
        h.Disk.from_dict({"id": "d", "bus": "scsi", "serial": "S4", "attach": False}),
    ]
    kernel = h.Kernel("6.1.0-1-amd64", tmp_path / "vmlinuz", tmp_path / "root", tmp_path / "initrd")
    argv = h.qemu_argv(kernel, tmp_path, disks)
    devices = [argv[i + 1] for i, a in enumerate(argv) if a == "-device"]
    assert devices == [
        "virtio-scsi-pci,id=scsi0",
        "virtio-blk-pci,drive=a,id=dev-a,serial=S1",
        "scsi-hd,drive=b,id=dev-b,bus=scsi0.0,serial=S2,wwn=0x5000c500a1b2c3d4,vendor=V",
        "nvme,drive=c,id=dev-c,serial=S3",
    ]
    blockdevs = [argv[i + 1] for i, a in enumerate(argv) if a == "-blockdev"]
    assert len(blockdevs) == 8 and not any("serial" in b for b in blockdevs)
    assert any(b.endswith("node-name=d") for b in blockdevs)  # held ready for hot-plug
    assert argv[argv.index("-accel") + 1] == "tcg"
    assert not any(a == "-enable-kvm" for a in argv)
    shares = [argv[i + 1] for i, a in enumerate(argv) if a == "-virtfs"]
    assert "readonly=on" in shares[0] and "path=/," in shares[0]
    assert "readonly" not in shares[1]


def test_disk_spec_errors() -> None:
    with pytest.raises(h.HarnessError, match="bus"):
        h.Disk.from_dict({"id": "x", "bus": "ide"})
    with pytest.raises(h.HarnessError, match="wwn"):
        h.Disk.from_dict({"id": "x", "bus": "virtio", "wwn": "0x1"})
    with pytest.raises(h.HarnessError, match="unknown"):
        h.Disk.from_dict({"id": "x", "bus": "nvme", "colour": "red"})


def test_guest_disks_json_is_valid() -> None:
    disks = h.load_disks(HERE / "guest" / "disks.json")
    serials = [d.serial for d in disks]
    assert all(serials) and len(set(serials)) == len(serials)


def _junit(path: Path, tests: int, failures: int, name: str = "test_x") -> None:
    cases = "".join(
        f'<testcase classname="m" name="{name}{i}">'
        + ("<failure>boom</failure>" if i < failures else "")
        + "</testcase>"
        for i in range(tests)
    )
    path.write_text(
        f'<testsuites><testsuite name="pytest" tests="{tests}" failures="{failures}" errors="0" skipped="0">'
        f"{cases}</testsuite></testsuites>"
    )


@pytest.mark.parametrize(
    ("rc", "tests", "failures", "ok"),
    [
        ("0", 3, 0, True),
        ("1", 3, 1, False),  # a failing guest test
        ("0", 3, 1, False),  # the exit code lies: the junit report still fails it
        ("0", 0, 0, False),  # nothing ran
        (None, 3, 0, False),  # the guest never wrote its exit code (crash, timeout)
        ("garbage", 3, 0, False),
    ],
)
def test_guest_results_are_never_swallowed(tmp_path: Path, rc: str, tests: int, failures: int, ok: bool) -> None:
    if rc is not None:
        (tmp_path / "s.rc").write_text(rc + "\n")
    _junit(tmp_path / "s.xml", tests, failures)
    res = h.read_suite(tmp_path, "s")
    assert res.ok is ok
    assert (h.judge([res]) == []) is ok
    if failures:
        assert res.failed_names == ["m::test_x0"]


def test_missing_junit_fails(tmp_path: Path) -> None:
    (tmp_path / "s.rc").write_text("0\n")
    assert h.judge([h.read_suite(tmp_path, "s")]) != []


def test_control_request_is_answered_through_qmp(tmp_path: Path) -> None:
    class FakeQmp:
        def __init__(self) -> None:
            self.calls: list[tuple[str, object]] = []

        def command(self, execute: str, arguments: object = None) -> dict[str, object]:
            self.calls.append((execute, arguments))
            return {"return": {}}

    (tmp_path / "ctl").mkdir()
    (tmp_path / "ctl" / "req-1-1.json").write_text(json.dumps({"execute": "device_del", "arguments": {"id": "x"}}))
    fake = FakeQmp()
    served: set[str] = set()
    h.serve_control(tmp_path, fake, served)
    h.serve_control(tmp_path, fake, served)  # served once only
    assert fake.calls == [("device_del", {"id": "x"})]
    assert json.loads((tmp_path / "ctl" / "resp-1-1.json").read_text()) == {"return": {}}


@pytest.mark.parametrize(
    ("rc", "tests", "failures", "name", "ok"),
    [
        ("1", 1, 1, "test_deliberately_broken", True),  # the canary failed as it must
        ("0", 1, 0, "test_deliberately_broken", False),  # it passed: failures are swallowed
        ("1", 2, 2, "test_deliberately_broken", False),  # more than the one expected failure
        ("1", 1, 1, "test_other", False),  # another test failed instead
        (None, 1, 1, "test_deliberately_broken", False),  # no exit code
    ],
)
def test_canary_suite_must_fail_with_its_one_broken_test(
    tmp_path: Path, rc: str, tests: int, failures: int, name: str, ok: bool
) -> None:
    if rc is not None:
        (tmp_path / "canary.rc").write_text(rc + "\n")
    _junit(tmp_path / "canary.xml", tests, failures, name=name)
    suite = h.canary_suite()
    assert suite.name == "canary" and suite.expect_failure == "test_deliberately_broken"
    assert (h.judge([h.read_suite(tmp_path, "canary")], [suite]) == []) is ok


def test_default_run_includes_the_canary() -> None:
    suites = h.default_suites()
    assert [s.name for s in suites] == ["guest", "canary"]
    assert "--ignore=tests/vm/guest/selftest" in suites[0].args
    assert (h.REPO / suites[1].args[0]).exists()


def test_vm_marked_files_are_found_outside_tests_vm(tmp_path: Path) -> None:
    (tmp_path / "driver" / "tests" / "device").mkdir(parents=True)
    (tmp_path / "tests" / "vm" / "guest").mkdir(parents=True)
    (tmp_path / "driver" / "tests" / "device" / "test_q.py").write_text("pytestmark = pytest.mark.vm\n")
    (tmp_path / "driver" / "tests" / "device" / "test_plain.py").write_text("def test_x(): pass\n")
    (tmp_path / "tests" / "vm" / "guest" / "test_g.py").write_text("pytestmark = pytest.mark.vm\n")
    assert h.vm_marked_files(tmp_path) == ["driver/tests/device/test_q.py"]


def test_a_skip_inside_the_guest_fails_the_run_but_an_xfail_does_not(tmp_path: Path) -> None:
    (tmp_path / "s.rc").write_text("0\n")
    (tmp_path / "s.xml").write_text(
        '<testsuites><testsuite name="pytest" tests="3" failures="0" errors="0" skipped="2">'
        '<testcase classname="m" name="test_ok"/>'
        '<testcase classname="m" name="test_skip"><skipped type="pytest.skip" message="no quota"/></testcase>'
        '<testcase classname="m" name="test_xf"><skipped type="pytest.xfail" message="known"/></testcase>'
        "</testsuite></testsuites>"
    )
    res = h.read_suite(tmp_path, "s")
    assert res.skipped_names == ["m::test_skip (no quota)"]
    problems = h.judge([res])
    assert len(problems) == 1 and "skipped inside the guest" in problems[0] and "test_skip" in problems[0]
    assert h.judge([res], allow_skips=True) == []
