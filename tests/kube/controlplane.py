"""A real Kubernetes control plane for tests: etcd + kube-apiserver as processes.

No container runtime, no kubelet, no controller-manager, no scheduler: the way
envtest runs it. Both binaries are built from their Go modules by
``scripts/build-kube-tools.sh`` into ``$TOOLS_DIR`` (default
``~/.cache/directpv-csi/tools``); when they are absent the fixture skips and
says how to build them.

What the fixture sets up, all on 127.0.0.1 with free ports and data in a tmp dir:

- certificates it generates (``cryptography``): a CA, a serving certificate for
  127.0.0.1/localhost, a service-account signing key pair, and an admin client
  certificate in group ``system:masters`` (so RBAC lets the tests do anything);
- etcd (``--unsafe-no-fsync``: its data dir is thrown away anyway);
- kube-apiserver with RBAC authorization, the ServiceAccount admission plugin
  disabled (nothing creates the ``default`` service accounts without the
  controller-manager, as in envtest), waited for until ``/readyz`` answers ok;
- a kubeconfig file and a ``kubernetes.client.ApiClient`` for it.

Consequences of having no controller-manager that tests must live with: a
deleted namespace stays ``Terminating`` (use unique names), no garbage
collection of owned objects, no service-account tokens.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Dict, Iterator, List, Optional, Sequence, Tuple

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from kubernetes import client as k8s_client

from testsupport import stop_process

SERVICE_CIDR = "10.0.0.0/24"
READY_TIMEOUT_S = float(os.environ.get("KUBE_READY_TIMEOUT", "120"))


def tools_dir() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME", str(Path.home() / ".cache"))) / "directpv-csi" / "tools"
    return Path(os.environ.get("TOOLS_DIR", str(default)))


def find_binaries() -> Tuple[Optional[Path], Optional[Path]]:
    """(etcd, kube-apiserver) from $ETCD_BIN/$KUBE_APISERVER_BIN or $TOOLS_DIR; None when absent."""
    found: List[Optional[Path]] = []
    for name, env in (("etcd", "ETCD_BIN"), ("kube-apiserver", "KUBE_APISERVER_BIN")):
        path = Path(os.environ.get(env, str(tools_dir() / name)))
        found.append(path if path.is_file() and os.access(path, os.X_OK) else None)
    return found[0], found[1]


# --- certificates -------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    ca_cert: Path
    serving_cert: Path
    serving_key: Path
    sa_public: Path
    sa_private: Path
    admin_cert: Path
    admin_key: Path


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    path.chmod(0o600)


def _cert(
    subject: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool = False,
    usages: Sequence[x509.ObjectIdentifier] = (),
    sans: Sequence[x509.GeneralName] = (),
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=ca,
                crl_sign=ca,
                content_commitment=False,
                key_encipherment=not ca,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    )
    if usages:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(usages)), critical=False)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def make_pki(directory: Path) -> Pki:
    """A throw-away CA and everything kube-apiserver and its admin client need."""
    directory.mkdir(parents=True, exist_ok=True)
    pem = serialization.Encoding.PEM
    ca_key = _key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "directpv-test-ca")])
    ca = _cert(ca_name, ca_key.public_key(), ca_name, ca_key, ca=True)

    serving_key = _key()
    serving = _cert(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]),
        serving_key.public_key(),
        ca_name,
        ca_key,
        usages=[ExtendedKeyUsageOID.SERVER_AUTH],
        sans=[
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(next(ipaddress.IPv4Network(SERVICE_CIDR).hosts())),
            x509.DNSName("localhost"),
            x509.DNSName("kubernetes.default.svc"),
        ],
    )
    admin_key = _key()
    admin = _cert(
        x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:masters"),
                x509.NameAttribute(NameOID.COMMON_NAME, "directpv-test-admin"),
            ]
        ),
        admin_key.public_key(),
        ca_name,
        ca_key,
        usages=[ExtendedKeyUsageOID.CLIENT_AUTH],
    )
    sa_key = _key()

    pki = Pki(
        ca_cert=directory / "ca.crt",
        serving_cert=directory / "apiserver.crt",
        serving_key=directory / "apiserver.key",
        sa_public=directory / "sa.pub",
        sa_private=directory / "sa.key",
        admin_cert=directory / "admin.crt",
        admin_key=directory / "admin.key",
    )
    pki.ca_cert.write_bytes(ca.public_bytes(pem))
    pki.serving_cert.write_bytes(serving.public_bytes(pem))
    _write_key(pki.serving_key, serving_key)
    pki.admin_cert.write_bytes(admin.public_bytes(pem))
    _write_key(pki.admin_key, admin_key)
    _write_key(pki.sa_private, sa_key)
    pki.sa_public.write_bytes(sa_key.public_key().public_bytes(pem, serialization.PublicFormat.SubjectPublicKeyInfo))
    return pki


# --- processes ----------------------------------------------------------------------------


def free_ports(count: int) -> List[int]:
    """``count`` distinct free TCP ports on 127.0.0.1 (all held open while choosing, so no duplicates)."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    _log_file: IO[bytes] = field(repr=False)

    def tail(self, lines: int = 30) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(text[-lines:])

    def stop(self, grace_s: float = 10.0) -> None:
        """Terminate this exact process, then kill it if it outlives ``grace_s``."""
        stop_process(self.popen, grace_s)
        self._log_file.close()


def start(name: str, argv: Sequence[str], log_dir: Path, env: Optional[Dict[str, str]] = None) -> Proc:
    """Start ``argv`` logging to ``log_dir/name.log``; ``env`` is added to this process's environment.

    The child dies with SIGKILL if pytest dies without tearing down (killed, crashed): SIGKILL, not
    SIGTERM, since a kube-apiserver told to stop while its etcd stops too waits for etcd for minutes.
    The parent-death signal is set by ``setpriv --pdeathsig`` (util-linux) in the child just before
    it execs, not by a ``preexec_fn``: a preexec_fn makes Python fork() instead of vfork(), and a
    fork() of a process with live gRPC channels (this pytest, by the time the kube tests run) can
    crash the child before exec (grpcio >= 1.80, grpc/grpc#43055: epoll_wait EBADF, SIGABRT).
    """
    log = log_dir / f"{name}.log"
    f = open(log, "wb")  # noqa: SIM115 - closed by Proc.stop
    setpriv = shutil.which("setpriv")
    prefix = [setpriv, "--pdeathsig", "KILL", "--"] if setpriv else []
    popen = subprocess.Popen(
        [*prefix, *argv], stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        env=None if env is None else {**os.environ, **env},
    )
    return Proc(name, popen, log, f)


def etcd_argv(etcd: Path, data_dir: Path, client_port: int, peer_port: int) -> List[str]:
    client = f"http://127.0.0.1:{client_port}"
    peer = f"http://127.0.0.1:{peer_port}"
    return [
        str(etcd),
        "--name=default",
        f"--data-dir={data_dir}",
        f"--listen-client-urls={client}",
        f"--advertise-client-urls={client}",
        f"--listen-peer-urls={peer}",
        f"--initial-advertise-peer-urls={peer}",
        f"--initial-cluster=default={peer}",
        "--unsafe-no-fsync",
        "--log-level=warn",
    ]


def apiserver_argv(apiserver: Path, pki: Pki, etcd_port: int, port: int, cert_dir: Path) -> List[str]:
    return [
        str(apiserver),
        f"--etcd-servers=http://127.0.0.1:{etcd_port}",
        f"--cert-dir={cert_dir}",
        f"--secure-port={port}",
        "--bind-address=127.0.0.1",
        "--advertise-address=127.0.0.1",
        f"--tls-cert-file={pki.serving_cert}",
        f"--tls-private-key-file={pki.serving_key}",
        f"--client-ca-file={pki.ca_cert}",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        "--allow-privileged=true",
        "--authorization-mode=RBAC",
        "--disable-admission-plugins=ServiceAccount",
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        f"--service-account-key-file={pki.sa_public}",
        f"--service-account-signing-key-file={pki.sa_private}",
        "--v=1",
    ]


def write_kubeconfig(path: Path, server: str, pki: Pki) -> None:
    path.write_text(
        "apiVersion: v1\nkind: Config\n"
        f"clusters:\n- name: test\n  cluster:\n    server: {server}\n    certificate-authority: {pki.ca_cert}\n"
        f"users:\n- name: admin\n  user:\n    client-certificate: {pki.admin_cert}\n"
        f"    client-key: {pki.admin_key}\n"
        "contexts:\n- name: test\n  context:\n    cluster: test\n    user: admin\n"
        "current-context: test\n",
        encoding="utf-8",
    )


def wait_ready(url: str, pki: Pki, procs: Sequence[Proc], timeout_s: float) -> None:
    """Poll ``url + /readyz`` until it answers 200 ``ok``; fail fast when a process died."""
    ctx = ssl.create_default_context(cafile=str(pki.ca_cert))
    ctx.load_cert_chain(str(pki.admin_cert), str(pki.admin_key))
    deadline = time.monotonic() + timeout_s
    last = "no answer yet"
    while time.monotonic() < deadline:
        for p in procs:
            if p.popen.poll() is not None:
                raise RuntimeError(f"{p.name} exited with {p.popen.returncode} while starting; log tail:\n{p.tail()}")
        try:
            with urllib.request.urlopen(url + "/readyz", context=ctx, timeout=5) as resp:
                body = resp.read().decode(errors="replace").strip()
                if resp.status == 200 and body == "ok":
                    return
                last = f"{resp.status} {body[:200]}"
        except urllib.error.HTTPError as e:
            last = f"{e.code} {e.read().decode(errors='replace')[-300:]}"
        except (urllib.error.URLError, OSError) as e:
            last = str(e)
        time.sleep(0.2)
    tails = "\n".join(f"--- {p.name}:\n{p.tail()}" for p in procs)
    raise RuntimeError(f"kube-apiserver not ready at {url} after {timeout_s:.0f} s (last: {last})\n{tails}")


def make_api_client(url: str, pki: Pki) -> k8s_client.ApiClient:
    """The same identity as the kubeconfig, without a kubeconfig parser in the way."""
    cfg = k8s_client.Configuration()
    cfg.host = url
    cfg.ssl_ca_cert = str(pki.ca_cert)
    cfg.cert_file = str(pki.admin_cert)
    cfg.key_file = str(pki.admin_key)
    return k8s_client.ApiClient(cfg)


@dataclass
class ControlPlane:
    """What the fixture yields: where the API server is and how to talk to it."""

    url: str
    kubeconfig: Path
    api_client: k8s_client.ApiClient
    pki: Pki
    log_dir: Path
    start_seconds: float
    procs: Dict[str, Proc]


def launch(etcd: Path, apiserver: Path, workdir: Path, timeout_s: float = READY_TIMEOUT_S) -> ControlPlane:
    """Start etcd and kube-apiserver under ``workdir``; caller stops ``procs`` (see :func:`shutdown`)."""
    t0 = time.monotonic()
    pki = make_pki(workdir / "pki")
    log_dir = workdir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    procs: Dict[str, Proc] = {}
    try:
        etcd_port, peer_port, api_port = free_ports(3)
        procs["etcd"] = start("etcd", etcd_argv(etcd, workdir / "etcd", etcd_port, peer_port), log_dir)
        url = f"https://127.0.0.1:{api_port}"
        argv = apiserver_argv(apiserver, pki, etcd_port, api_port, workdir / "apiserver-certs")
        procs["kube-apiserver"] = start("kube-apiserver", argv, log_dir)
        wait_ready(url, pki, list(procs.values()), timeout_s)
        kubeconfig = workdir / "kubeconfig"
        write_kubeconfig(kubeconfig, url, pki)
        api_client = make_api_client(url, pki)
    except BaseException:
        shutdown(procs)
        raise
    return ControlPlane(url, kubeconfig, api_client, pki, log_dir, time.monotonic() - t0, procs)


def shutdown(procs: Dict[str, Proc]) -> None:
    """Stop the API server first (it holds etcd connections), then etcd; by their exact PIDs."""
    for name in ("kube-apiserver", "etcd"):
        if name in procs:
            procs[name].stop()


@pytest.fixture(scope="session")
def kube_control_plane() -> Iterator[ControlPlane]:
    """A running etcd + kube-apiserver for the whole session (skips when the binaries are not built)."""
    etcd, apiserver = find_binaries()
    if etcd is None or apiserver is None:
        missing = [n for n, p in (("etcd", etcd), ("kube-apiserver", apiserver)) if p is None]
        pytest.skip(
            f"needs {' and '.join(missing)} in {tools_dir()} "
            "(build them with `bash scripts/build-kube-tools.sh`; make setup runs it)"
        )
    workdir = Path(tempfile.mkdtemp(prefix="directpv-kube-"))
    try:
        cp = launch(etcd, apiserver, workdir / "1")
    except RuntimeError:
        # a free port taken by someone else between choosing and binding: once more with new ports
        cp = launch(etcd, apiserver, workdir / "2")
    try:
        yield cp
    finally:
        cp.api_client.close()  # type: ignore[no-untyped-call]
        shutdown(cp.procs)
        if os.environ.get("KUBE_KEEP_WORKDIR"):
            print(f"kube control plane workdir kept at {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
