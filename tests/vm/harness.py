"""QEMU harness: run a selection of the project's pytest suite on a real Debian kernel.

The host kernel of our machines has no XFS quota support, no partition tables and
no udevd. This harness boots Debian's stock kernel under QEMU (TCG: KVM is a nested
build that fails here), shares the host root read-only and a work directory
read-write over 9p, ``switch_root``s into the host root and runs pytest with the
project's venv. Results (junit xml + exit code per suite) come back through the work
share; a boot failure, a timeout or a failing guest test makes ``run()`` return
non-zero and print the guest console log.

Cache (outside the repo, keyed by kernel version): ``~/.cache/directpv-csi/vm/``
  debs/                      the two downloaded packages (kernel, udev)
  kernel-<kver>/vmlinuz      the stock kernel
  kernel-<kver>/root/lib/modules/<kver>/   all its modules, depmod'ed (bound over
                             /lib/modules in the guest so on-demand loading works)
  kernel-<kver>/initramfs-<hash>.cpio.gz   busybox + /init + the boot modules
  udev-<version>/            Debian's udev package, extracted (never installed)
  runs/<id>/                 one run's work share: sparse disk images, results, console
                             log (removed after a passing run, kept after a failure)

Guest <-> host control: a guest test may ask the host to run a QMP command (disk
hot-unplug/plug) by writing ``ctl/req-<n>.json``; the host answers ``ctl/resp-<n>.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import gzip
import hashlib
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
GUEST_DIR = HERE / "guest"
CACHE = Path(os.environ.get("DIRECTPV_VM_CACHE", Path.home() / ".cache" / "directpv-csi" / "vm"))

# Modules the initramfs loads before switch_root (their dependencies are added from
# modules.dep). Everything else loads on demand from the full tree bound in the guest.
BOOT_MODULES = (
    "virtio_pci",
    "virtio_blk",
    "virtio_scsi",
    "sd_mod",
    "nvme",
    "9pnet_virtio",
    "9p",
    "loop",
    "crc32c_generic",
    "xfs",
)

SKIP_EXIT = 0  # a skip (no qemu / no kernel package) is not a failure unless required
REQUIRED_ENV = "DIRECTPV_VM_REQUIRED"  # "1": a skip becomes a failure (CI)


class Skip(Exception):
    """The harness cannot run here (no qemu, no kernel package): a clear reason, no failure."""


class HarnessError(Exception):
    """The harness itself failed (build, boot, timeout)."""


def log(msg: str) -> None:
    print(f"[vm] {msg}", flush=True)


def sh(cmd: Sequence[str], cwd: Optional[Path] = None) -> str:
    proc = subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise HarnessError(f"command failed ({proc.returncode}): {shlex.join(cmd)}\n{proc.stdout}{proc.stderr}")
    return proc.stdout


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Serialise cache builds between concurrent runs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# --- packages -----------------------------------------------------------------------


def kernel_package() -> str:
    """The versioned package ``linux-image-amd64`` depends on, e.g. linux-image-6.1.0-56-amd64.

    Without package lists (a fresh machine), runs ``apt-get update`` once when root."""
    if shutil.which("apt-cache") is None or shutil.which("apt-get") is None:
        raise Skip("no apt-cache/apt-get: the stock kernel comes from Debian's package repository")
    for attempt in (1, 2):
        proc = subprocess.run(["apt-cache", "depends", "linux-image-amd64"], capture_output=True, text=True)
        if proc.returncode == 0 and "Depends:" in proc.stdout:
            return parse_kernel_depends(proc.stdout)
        if attempt == 1 and os.geteuid() == 0:
            log("apt-cache knows no linux-image-amd64: apt-get update")
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True)
    raise Skip(f"cannot resolve the Debian kernel package (apt-cache depends linux-image-amd64): {proc.stderr.strip()}")


def parse_kernel_depends(text: str) -> str:
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("Depends:"):
            name = line.split(":", 1)[1].strip()
            if name.startswith("linux-image-") and name != "linux-image-amd64":
                return name
    raise Skip("apt-cache depends linux-image-amd64 names no versioned linux-image package")


def download(package: str, dest: Path) -> Path:
    """``apt-get download`` exactly one package into ``dest`` (reused when present)."""
    dest.mkdir(parents=True, exist_ok=True)
    have = sorted(dest.glob(f"{package}_*.deb"))
    if have:
        return have[-1]
    log(f"apt-get download {package}")
    proc = subprocess.run(["apt-get", "download", package], cwd=dest, capture_output=True, text=True)
    have = sorted(dest.glob(f"{package}_*.deb"))
    if proc.returncode != 0 or not have:
        raise Skip(f"cannot download {package} with apt-get: {proc.stderr.strip()}")
    return have[-1]


# --- kernel + initramfs -------------------------------------------------------------


def module_closure(modules_dep: str, wanted: Sequence[str]) -> List[str]:
    """Relative .ko paths for ``wanted`` and their dependencies, dependencies first.

    ``modules_dep`` is the text of modules.dep (``kernel/a.ko: kernel/b.ko ...``).
    Built-in or unknown modules raise HarnessError unless built in (then skipped by caller).
    """
    deps: Dict[str, List[str]] = {}
    by_name: Dict[str, str] = {}
    for line in modules_dep.splitlines():
        if ":" not in line:
            continue
        path, rest = line.split(":", 1)
        path = path.strip()
        deps[path] = rest.split()
        base = path.rsplit("/", 1)[-1].split(".ko", 1)[0]
        by_name[base.replace("-", "_")] = path
    order: List[str] = []

    def visit(path: str, stack: Tuple[str, ...]) -> None:
        if path in order:
            return
        if path in stack:
            raise HarnessError(f"module dependency cycle: {' -> '.join((*stack, path))}")
        for dep in deps.get(path, []):
            visit(dep, (*stack, path))
        order.append(path)

    for name in wanted:
        key = name.replace("-", "_")
        if key not in by_name:
            raise HarnessError(f"module {name} not in modules.dep")
        visit(by_name[key], ())
    return order


@dataclass
class Kernel:
    version: str  # e.g. 6.1.0-56-amd64
    vmlinuz: Path
    modules_root: Path  # contains lib/modules/<version>
    initramfs: Path


INIT_SCRIPT = HERE / "init.sh"


def ensure_kernel(cache: Path = CACHE) -> Kernel:
    pkg = kernel_package()
    version = pkg[len("linux-image-") :]
    kdir = cache / f"kernel-{version}"
    with locked(cache / ".lock"):
        if not (kdir / ".complete").exists():
            t0 = time.monotonic()
            deb = download(pkg, cache / "debs")
            shutil.rmtree(kdir, ignore_errors=True)
            tmp = Path(tempfile.mkdtemp(prefix="kernel-", dir=cache))
            log(f"extracting {deb.name}")
            sh(["dpkg-deb", "-x", str(deb), str(tmp / "pkg")])
            (tmp / "root" / "lib").mkdir(parents=True)
            shutil.move(str(tmp / "pkg" / "lib" / "modules"), str(tmp / "root" / "lib" / "modules"))
            shutil.move(str(tmp / "pkg" / "boot" / f"vmlinuz-{version}"), str(tmp / "vmlinuz"))
            shutil.rmtree(tmp / "pkg")
            sh(["depmod", "-b", str(tmp / "root"), version])
            (tmp / ".complete").write_text(pkg + "\n")
            tmp.rename(kdir)
            deb.unlink()  # 70 MB; the extracted tree is what we keep
            log(f"kernel {version} ready in {time.monotonic() - t0:.1f} s")
        initramfs = build_initramfs(kdir, version)
    return Kernel(version, kdir / "vmlinuz", kdir / "root", initramfs)


def build_initramfs(kdir: Path, version: str) -> Path:
    busybox = shutil.which("busybox") or "/bin/busybox"
    if not Path(busybox).exists():
        raise Skip("busybox (busybox-static) is not installed: make setup installs it")
    moddir = kdir / "root" / "lib" / "modules" / version
    order = module_closure((moddir / "modules.dep").read_text(), BOOT_MODULES)
    h = hashlib.sha256()
    h.update(INIT_SCRIPT.read_bytes())
    h.update("\n".join(order).encode())
    h.update(Path(busybox).read_bytes())
    out = kdir / f"initramfs-{h.hexdigest()[:16]}.cpio.gz"
    if out.exists():
        return out
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="initramfs-") as td:
        root = Path(td)
        for d in ("bin", "dev", "proc", "sys", "newroot", "work", "lib/modules"):
            (root / d).mkdir(parents=True)
        shutil.copy2(busybox, root / "bin" / "busybox")
        for applet in (
            "sh",
            "mount",
            "umount",
            "insmod",
            "switch_root",
            "poweroff",
            "mkdir",
            "cat",
            "echo",
            "sleep",
            "ls",
            "uname",
        ):
            (root / "bin" / applet).symlink_to("busybox")
        lines = []
        for rel in order:
            dst = root / "lib" / "modules" / Path(rel).name
            shutil.copy2(moddir / rel, dst)
            lines.append(Path(rel).name)
        (root / "modules.load").write_text("\n".join(lines) + "\n")
        shutil.copy2(INIT_SCRIPT, root / "init")
        (root / "init").chmod(0o755)
        files = sh(["find", ".", "-print0"], cwd=root)
        cpio = subprocess.run(
            ["cpio", "--null", "-o", "-H", "newc", "--quiet"], cwd=root, input=files.encode(), capture_output=True
        )
        if cpio.returncode != 0:
            raise HarnessError(f"cpio failed: {cpio.stderr.decode()}")
        tmp_out = out.with_suffix(".tmp")
        with gzip.open(tmp_out, "wb", compresslevel=1) as f:
            f.write(cpio.stdout)
        tmp_out.rename(out)
    for old in kdir.glob("initramfs-*.cpio.gz"):
        if old != out:
            old.unlink()
    log(f"initramfs built in {time.monotonic() - t0:.1f} s ({len(order)} modules)")
    return out


def ensure_udev(cache: Path = CACHE) -> Path:
    """Debian's udev package extracted into the cache: returns the tree (has bin/udevadm, lib/udev)."""
    with locked(cache / ".lock"):
        for d in sorted(cache.glob("udev-*/.complete")):
            return d.parent
        deb = download("udev", cache / "debs")
        version = deb.name.split("_")[1].replace("~", "_").replace(":", "_")
        tmp = Path(tempfile.mkdtemp(prefix="udev-", dir=cache))
        sh(["dpkg-deb", "-x", str(deb), str(tmp)])
        (tmp / ".complete").write_text(deb.name + "\n")
        dest = cache / f"udev-{version}"
        shutil.rmtree(dest, ignore_errors=True)
        tmp.rename(dest)
        deb.unlink()
        return dest


# --- disks --------------------------------------------------------------------------


@dataclass
class Disk:
    """One virtual disk. ``bus``: virtio | scsi | nvme. ``attach``: False = backend only
    (a guest test hot-plugs it through the control channel)."""

    id: str
    bus: str
    size: str = "1G"
    serial: str = ""
    wwn: str = ""
    vendor: str = ""
    product: str = ""
    attach: bool = True
    extra: Dict[str, str] = field(default_factory=dict)

    @staticmethod
    def from_dict(d: Dict[str, Any]) -> Disk:
        known = {"id", "bus", "size", "serial", "wwn", "vendor", "product", "attach"}
        unknown = set(d) - known
        if unknown:
            raise HarnessError(f"disk {d.get('id')!r}: unknown keys {sorted(unknown)}")
        disk = Disk(**{k: v for k, v in d.items() if k in known})
        if disk.bus not in ("virtio", "scsi", "nvme"):
            raise HarnessError(f"disk {disk.id!r}: bus must be virtio, scsi or nvme, not {disk.bus!r}")
        if (disk.wwn or disk.vendor or disk.product) and disk.bus != "scsi":
            raise HarnessError(f"disk {disk.id!r}: wwn/vendor/product need bus scsi")
        return disk

    def device_args(self) -> Dict[str, str]:
        """Properties of the ``-device`` (also used for a QMP device_add)."""
        driver = {"virtio": "virtio-blk-pci", "scsi": "scsi-hd", "nvme": "nvme"}[self.bus]
        args = {"driver": driver, "drive": self.id, "id": f"dev-{self.id}"}
        if self.bus == "scsi":
            args["bus"] = "scsi0.0"
        for key in ("serial", "wwn", "vendor", "product"):
            value = getattr(self, key)
            if value:
                args[key] = value
        return args


def load_disks(path: Path) -> List[Disk]:
    data = json.loads(path.read_text())
    disks = [Disk.from_dict(d) for d in data]
    ids = [d.id for d in disks]
    if len(set(ids)) != len(ids):
        raise HarnessError(f"{path}: duplicate disk ids")
    return disks


def qemu_argv(
    kernel: Kernel,
    work: Path,
    disks: Sequence[Disk],
    memory_mb: int = 2048,
    smp: int = 2,
    qemu: str = "qemu-system-x86_64",
) -> List[str]:
    argv = [
        qemu,
        "-accel",
        "tcg",
        "-cpu",
        "max",
        "-m",
        str(memory_mb),
        "-smp",
        str(smp),
        "-nographic",
        "-no-reboot",
        "-nic",
        "none",
        "-kernel",
        str(kernel.vmlinuz),
        "-initrd",
        str(kernel.initramfs),
        "-append",
        "console=ttyS0 panic=-1 loglevel=4 rdinit=/init",
        "-virtfs",
        "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
        "-virtfs",
        f"local,path={work},mount_tag=work,security_model=none,multidevs=remap",
        "-qmp",
        f"unix:{work / 'qmp.sock'},server=on,wait=off",
    ]
    if any(d.bus == "scsi" for d in disks):
        argv += ["-device", "virtio-scsi-pci,id=scsi0"]
    for d in disks:
        img = work / "disks" / f"{d.id}.img"
        # -blockdev (not -drive): the backend survives a device_del, so a test can re-plug it.
        argv += [
            "-blockdev",
            f"driver=file,filename={img},node-name=f-{d.id}",
            "-blockdev",
            f"driver=raw,file=f-{d.id},node-name={d.id}",
        ]
        if d.attach:
            dev = d.device_args()
            argv += ["-device", ",".join([dev.pop("driver")] + [f"{k}={v}" for k, v in dev.items()])]
    return argv


# --- QMP control channel ------------------------------------------------------------


class Qmp:
    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(30)
        self.sock.connect(str(path))
        self.buf = b""
        self._read()  # greeting
        self.command("qmp_capabilities")

    def _read(self) -> Dict[str, Any]:
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise HarnessError("QMP connection closed")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        msg: Dict[str, Any] = json.loads(line)
        return msg

    def command(self, execute: str, arguments: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        req: Dict[str, Any] = {"execute": execute}
        if arguments:
            req["arguments"] = arguments
        self.sock.sendall(json.dumps(req).encode() + b"\n")
        while True:
            msg = self._read()
            if "return" in msg or "error" in msg:
                return msg

    def close(self) -> None:
        self.sock.close()


def serve_control(work: Path, qmp: Optional[Qmp], served: set[str]) -> Optional[Qmp]:
    """Answer the guest's pending ``ctl/req-*.json`` requests; returns the (lazily opened) QMP client."""
    ctl = work / "ctl"
    for req in sorted(ctl.glob("req-*.json")):
        if req.name in served:
            continue
        try:
            body = json.loads(req.read_text())
        except json.JSONDecodeError:
            continue  # still being written; the guest renames a complete file into place
        served.add(req.name)
        if qmp is None:
            qmp = Qmp(work / "qmp.sock")
        reply = qmp.command(body["execute"], body.get("arguments"))
        log(
            f"control: {body['execute']} {json.dumps(body.get('arguments', {}))} -> "
            f"{'ok' if 'return' in reply else reply.get('error')}"
        )
        resp = ctl / req.name.replace("req-", "resp-")
        tmp = resp.with_suffix(".tmp")
        tmp.write_text(json.dumps(reply))
        tmp.rename(resp)
    return qmp


# --- results ------------------------------------------------------------------------


@dataclass
class SuiteResult:
    name: str
    exit_code: Optional[int]  # None: the guest never wrote it (crash, timeout)
    tests: int = 0
    failures: int = 0
    errors: int = 0
    skipped: int = 0  # skips and xfails, as junit counts them
    failed_names: List[str] = field(default_factory=list)
    skipped_names: List[str] = field(default_factory=list)  # real skips (pytest.skip), not xfail

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and self.failures == 0 and self.errors == 0 and self.tests > 0


def read_suite(results: Path, name: str) -> SuiteResult:
    """Read ``<name>.rc`` and ``<name>.xml`` written by the guest. Missing files mean failure."""
    rc_file = results / f"{name}.rc"
    rc: Optional[int] = None
    if rc_file.exists():
        text = rc_file.read_text().strip()
        rc = int(text) if text.lstrip("-").isdigit() else None
    res = SuiteResult(name, rc)
    xml = results / f"{name}.xml"
    if xml.exists():
        try:
            root = ET.parse(xml).getroot()
        except ET.ParseError:
            res.errors += 1
            return res
        suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
        for s in suites:
            res.tests += int(s.get("tests", 0))
            res.failures += int(s.get("failures", 0))
            res.errors += int(s.get("errors", 0))
            res.skipped += int(s.get("skipped", 0))
            for case in s.iter("testcase"):
                cname = f"{case.get('classname')}::{case.get('name')}"
                if case.find("failure") is not None or case.find("error") is not None:
                    res.failed_names.append(cname)
                skip = case.find("skipped")
                if skip is not None and skip.get("type") != "pytest.xfail":
                    res.skipped_names.append(f"{cname} ({skip.get('message', '')})")
    return res


# --- run ----------------------------------------------------------------------------


@dataclass
class Suite:
    name: str
    args: List[str]  # pytest arguments (paths relative to the repo, options)
    # A canary: this suite must fail, with exactly one failing test whose name contains this.
    expect_failure: str = ""
    background: bool = False  # run alongside the others (its output goes to its .out file only)


def write_guest_env(work: Path, suites: Sequence[Suite], udev: Optional[Path], kernel: Kernel) -> None:
    python = REPO / ".venv" / "bin" / "python"
    if not python.exists():
        python = Path(sys.executable)
    env = {
        "REPO": str(REPO),
        "WORK": str(work),
        "PYTHON": str(python),
        "KROOT": str(kernel.modules_root),
        "UDEV": str(udev) if udev else "",
        "SUITES": " ".join(s.name for s in suites if not s.background),
        "BG_SUITES": " ".join(s.name for s in suites if s.background),
    }
    lines = [f"{k}={shlex.quote(v)}" for k, v in env.items()]
    for s in suites:
        lines.append(f"ARGS_{s.name}={shlex.quote(shlex.join(s.args))}")
    (work / "guest.env").write_text("\n".join(lines) + "\n")


def boot(kernel: Kernel, work: Path, disks: Sequence[Disk], timeout: float, verbose: bool) -> Tuple[int, float]:
    """Run QEMU until it powers off; serve control requests meanwhile. Returns (qemu rc, seconds)."""
    argv = qemu_argv(kernel, work, disks)
    (work / "qemu.argv").write_text(shlex.join(argv) + "\n")
    t0 = time.monotonic()
    with open(work / "console.log", "wb") as console:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert proc.stdout is not None
        os.set_blocking(proc.stdout.fileno(), False)
        qmp: Optional[Qmp] = None
        served: set[str] = set()

        def pump() -> None:
            assert proc.stdout is not None
            chunk = proc.stdout.read()
            if chunk:
                console.write(chunk)
                console.flush()
                if verbose:
                    sys.stdout.buffer.write(chunk)
                    sys.stdout.flush()

        try:
            while True:
                pump()
                if proc.poll() is not None:
                    pump()
                    break
                if time.monotonic() - t0 > timeout:
                    raise HarnessError(f"guest timed out after {timeout:.0f} s (qemu killed)")
                try:
                    qmp = serve_control(work, qmp, served)
                except (OSError, HarnessError) as e:
                    log(f"control channel error: {e}")
                time.sleep(0.1)
        finally:
            if qmp is not None:
                qmp.close()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
                pump()
    return proc.returncode, time.monotonic() - t0


def print_console(work: Path) -> None:
    path = work / "console.log"
    text = path.read_text(errors="replace") if path.exists() else "(no console output)"
    print("=" * 30 + " guest console log " + "=" * 30)
    print(text.rstrip())
    print("=" * 79, flush=True)


def vm_marked_files(repo: Path = REPO) -> List[str]:
    """Test files outside tests/vm that mark tests ``vm`` (``pytest.mark.vm``): the project's own
    real-kernel tests (e.g. driver/tests/device/test_quota_enforced.py), run in the same boot."""
    found = []
    for top in ("driver/tests", "tests"):
        for path in sorted((repo / top).rglob("test_*.py")):
            rel = path.relative_to(repo)
            if rel.parts[:2] == ("tests", "vm") or any(p in (".venv", "output") for p in rel.parts):
                continue
            if "mark.vm" in path.read_text(errors="replace"):
                found.append(str(rel))
    return found


def default_suites() -> List[Suite]:
    args = ["tests/vm/guest", "--ignore=tests/vm/guest/selftest", *vm_marked_files()]
    return [Suite("guest", args), canary_suite()]


def canary_suite() -> Suite:
    """Runs in every default boot: the deliberately broken guest test must be reported."""
    return Suite(
        "canary",
        ["tests/vm/guest/selftest/test_selftest_fail.py"],
        expect_failure="test_deliberately_broken",
        background=True,
    )


def self_test_suites() -> List[Suite]:
    return [
        Suite("pass", ["tests/vm/guest/selftest/test_selftest_pass.py"]),
        Suite("fail", ["tests/vm/guest/selftest/test_selftest_fail.py"]),
    ]


def judge(
    results: Sequence[SuiteResult], suites: Optional[Sequence[Suite]] = None, allow_skips: bool = False
) -> List[str]:
    """Problems with the run (empty: success). A canary suite (``expect_failure``) must
    have failed with exactly its one broken test: otherwise failures are being swallowed.
    A test that skips inside the guest is a problem too (unless ``allow_skips``): the guest
    exists to provide what tests skip for on the host, so a skip there means nothing was tested."""
    expected = {s.name: s.expect_failure for s in suites or ()}
    problems = []
    for res in results:
        broken = expected.get(res.name, "")
        if res.exit_code is None:
            problems.append(f"suite {res.name}: the guest wrote no exit code (crashed or stopped early)")
        elif broken:
            if not (
                res.exit_code == 1
                and res.failures == 1
                and res.errors == 0
                and len(res.failed_names) == 1
                and broken in res.failed_names[0]
            ):
                problems.append(
                    f"canary suite {res.name}: the deliberately broken test {broken} was not reported as its one "
                    f"failure (exit {res.exit_code}, {res.failures} failed, {res.errors} errors): guest failures "
                    "would be swallowed"
                )
        elif res.skipped_names and not allow_skips:
            problems.append(
                f"suite {res.name}: {len(res.skipped_names)} test(s) skipped inside the guest: "
                + "; ".join(res.skipped_names)
            )
        if res.exit_code is None or broken:
            continue
        if not res.ok:
            if res.tests == 0 and res.exit_code == 0:
                problems.append(f"suite {res.name}: no test ran")
            else:
                problems.append(
                    f"suite {res.name}: exit code {res.exit_code}, {res.failures} failed, "
                    f"{res.errors} errors: {', '.join(res.failed_names) or '(see log)'}"
                )
    return problems


def run(
    suites: Sequence[Suite],
    disks: Sequence[Disk],
    *,
    timeout: float,
    use_udev: bool,
    verbose: bool,
    keep: bool = False,
    keep_failed: bool = True,
    allow_skips: bool = False,
) -> Tuple[int, List[SuiteResult]]:
    """Boot once, run every suite in the guest. Returns (0 if everything passed else 1, per-suite results)."""
    t_start = time.monotonic()
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None:
        raise Skip("qemu-system-x86_64 is not installed (apt qemu-system-x86; make setup installs it)")
    kernel = ensure_kernel()
    udev = ensure_udev() if use_udev else None
    t_built = time.monotonic()
    (CACHE / "runs").mkdir(parents=True, exist_ok=True)
    for old in (CACHE / "runs").iterdir():  # work dirs kept by failed runs: a day is enough to look
        with contextlib.suppress(OSError):
            if time.time() - old.stat().st_mtime > 86400:
                shutil.rmtree(old, ignore_errors=True)
    work = Path(tempfile.mkdtemp(prefix=time.strftime("%Y%m%d-%H%M%S-"), dir=CACHE / "runs"))
    (work / "results").mkdir()
    (work / "ctl").mkdir()
    (work / "disks").mkdir()
    for d in disks:
        subprocess.run(["truncate", "-s", d.size, str(work / "disks" / f"{d.id}.img")], check=True)
    write_guest_env(work, suites, udev, kernel)
    log(f"kernel {kernel.version}, {len(disks)} disks, udev={'on' if udev else 'off'}, work {work}")
    log(f"suites: {'; '.join(f'{s.name}: pytest {shlex.join(s.args)}' for s in suites)}")
    try:
        qemu_rc, seconds = boot(kernel, work, disks, timeout, verbose)
    except HarnessError as e:
        print_console(work)
        log(f"FAIL: {e}; work dir kept: {work}")
        return 1, []
    results = [read_suite(work / "results", s.name) for s in suites]
    problems = judge(results, suites, allow_skips=allow_skips)
    if qemu_rc != 0:
        problems.append(f"qemu exited with {qemu_rc}")
    if problems or verbose:
        if not verbose:
            print_console(work)
    else:
        for s in suites:
            out = work / "results" / f"{s.name}.out"
            if out.exists() and not s.expect_failure:
                print(out.read_text(errors="replace").rstrip())
    for r, s in zip(results, suites):
        log(
            f"suite {r.name}: exit {r.exit_code}, {r.tests} tests, {r.failures} failed, {r.errors} errors, "
            f"{r.skipped} skipped/xfail"
            + (f" (canary: {s.expect_failure} must be its one failure)" if s.expect_failure else "")
        )
    total = time.monotonic() - t_start
    log(f"wall time {total:.1f} s (cache {t_built - t_start:.1f} s, guest {seconds:.1f} s)")
    if problems:
        for p in problems:
            log(f"FAIL: {p}")
        if keep_failed:
            log(f"work dir kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
        return 1, results
    if not keep:
        shutil.rmtree(work, ignore_errors=True)
    log("PASS")
    return 0, results


def self_test(timeout: float, verbose: bool) -> int:
    """A passing and a deliberately failing guest suite: the run must fail, for exactly that test."""
    log("self-test: one guest test below is broken on purpose; its failure is the expected outcome")
    rc, results = run(self_test_suites(), [], timeout=timeout, use_udev=False, verbose=verbose, keep_failed=False)
    by_name = {r.name: r for r in results}
    checks = [
        (rc != 0, f"run() returned {rc} although a guest test failed: the harness swallows failures"),
        ("pass" in by_name and by_name["pass"].ok, "the passing guest suite did not pass"),
        (
            "fail" in by_name
            and by_name["fail"].exit_code == 1
            and by_name["fail"].failures == 1
            and any("test_deliberately_broken" in n for n in by_name["fail"].failed_names),
            "the broken guest test was not reported as the one failure of its suite",
        ),
    ]
    bad = [msg for ok, msg in checks if not ok]
    for msg in bad:
        log(f"SELF-TEST FAIL: {msg}")
    if not bad:
        log("SELF-TEST PASS: a failing guest test makes the harness fail (the failure above was expected)")
    return 1 if bad else 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument(
        "--self-test",
        action="store_true",
        help="boot with one passing and one deliberately failing guest test; succeed only if the "
        "harness reports the failure",
    )
    p.add_argument("--timeout", type=float, default=float(os.environ.get("DIRECTPV_VM_TIMEOUT", 1200)))
    p.add_argument("--no-udev", action="store_true", help="do not start udevd in the guest")
    p.add_argument("--allow-skips", action="store_true", help="do not fail the run when a test skips inside the guest")
    p.add_argument(
        "--no-canary", action="store_true", help="do not run the deliberately broken canary test in the same boot"
    )
    p.add_argument("-v", "--verbose", action="store_true", help="stream the guest console")
    p.add_argument("--keep", action="store_true", help="keep the work dir after a passing run")
    p.add_argument("pytest_args", nargs="*", help="run these pytest args in the guest instead of the default suite")
    a = p.parse_args(argv)
    try:
        if a.self_test:
            return self_test(a.timeout, a.verbose)
        suites = [Suite("guest", list(a.pytest_args))] if a.pytest_args else default_suites()
        if a.no_canary:
            suites = [s for s in suites if not s.expect_failure]
        disks = load_disks(GUEST_DIR / "disks.json")
        rc, _ = run(
            suites,
            disks,
            timeout=a.timeout,
            use_udev=not a.no_udev,
            verbose=a.verbose,
            keep=a.keep,
            allow_skips=a.allow_skips,
        )
        return rc
    except Skip as e:
        if os.environ.get(REQUIRED_ENV) == "1":
            log(f"FAIL (skip not allowed: {REQUIRED_ENV}=1): {e}")
            return 1
        log(f"SKIP: {e}")
        return SKIP_EXIT
    except HarnessError as e:
        log(f"FAIL: {e}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
