"""A real one-node Kubernetes cluster on this host, for tests: containerd + runc + CNI plugins from
Debian, etcd, kube-apiserver, kube-controller-manager, kube-scheduler and a kubelet built from
their Go modules (scripts/build-kube-tools.sh, scripts/setup-cluster.sh).

Everything lives under one work directory (``/tmp/dpvrn.XXXX``); nothing is ever pulled (every
registry is configured to fail fast on http://127.0.0.1:1; images are imported from archives).
Networking: a bridge ``dpvrn0`` (10.89.0.1/24) made before anything starts, the bridge +
host-local CNI plugins on it (no masquerade), the API server bound to the bridge address, and
instead of kube-proxy one DNAT rule in our own nat chain ``DPVRN-SERVICES``: the ``kubernetes``
service (10.0.0.1:443) to the API server, which is all the pods here need.

``RealNode.stop()`` undoes what the cluster changed on the host, also after a failed start: it
stops the kubelet, kills every container of its containerd and the shims of exactly that
containerd, stops the control plane, unmounts everything under the work directory and the
runtime's state, and removes the bridge, the pods' network namespaces, the iptables chains and
rules the kubelet and we added (IPv4 and IPv6), the kubepods cgroups, the fixed paths the
kubelet and containerd create whatever their root directories (only those that did not exist
before) and restores the sysctls the kubelet and the CNI plugins set. ``HostState`` is what is
compared before and after (tests/realnode/test_realnode.py checks it).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shlex
import shutil
import socket
import subprocess
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from kube.controlplane import (
    Proc,
    _cert,
    _key,
    _write_key,
    etcd_argv,
    free_ports,
    start,
    tools_dir,
)
from kubernetes import client as k8s_client

NODE_NAME = "dpvrn-node"
BRIDGE = "dpvrn0"
POD_SUBNET = "10.89.0.0/24"
GATEWAY = "10.89.0.1"
SERVICE_CIDR = "10.0.0.0/24"
KUBERNETES_SERVICE_IP = "10.0.0.1"
NAT_CHAIN = "DPVRN-SERVICES"
CNI_BIN = Path("/usr/lib/cni")
# Set by the kubelet (and the bridge plugin: ip_forward); restored at stop.
SYSCTLS = ("vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic", "kernel/panic_on_oops",
           "kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes", "net/ipv4/ip_forward")
# Created by the kubelet, containerd or CNI at fixed places whatever their configured directories.
FIXED_PATHS = ("/var/lib/kubelet", "/var/log/containers", "/var/log/pods", "/var/lib/cni", "/run/containerd",
               "/run/udev", "/etc/cni", "/opt/cni", "/usr/libexec/kubernetes", "/var/lib/containerd",
               "/opt/containerd", "/etc/kubernetes")
# Of those, the ones this cluster only ever leaves as empty directories (the node DaemonSet's /run/udev
# hostPath...): removed with rmdir, so a file another program put there keeps them (and is reported).
EMPTY_ONLY = frozenset(("/run/udev", "/etc/cni", "/opt/cni", "/usr/libexec/kubernetes", "/etc/kubernetes"))
CGROUP_ROOT = Path("/sys/fs/cgroup")
IPTABLES = ("iptables", "ip6tables")
TABLES = ("filter", "nat", "mangle")
OURS = ("KUBE-", "DPVRN-", "CNI-")
# `make test` sets this: a missing piece is then a failure, never a silent skip
REQUIRED = os.environ.get("DIRECTPV_REALNODE_REQUIRED") == "1"


def skip_or_fail(reason: str) -> None:
    """Skip the test for ``reason``, or fail it when the run requires the real node."""
    import pytest  # only when a test calls it: bench/cluster_bench.py imports this module too

    if REQUIRED:
        pytest.fail(f"{reason} (DIRECTPV_REALNODE_REQUIRED=1: make cluster-setup image)")
    pytest.skip(reason)


def _run(*argv: str, check: bool = True, timeout: float = 60) -> str:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {proc.returncode}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout


def missing_requirements() -> List[str]:
    """What this host lacks for a real node (empty: it can run one)."""
    out = []
    if os.geteuid() != 0:
        out.append("root")
    tools = tools_dir()
    for name in ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet"):
        if not (tools / name).exists():
            out.append(f"{tools / name} (make cluster-setup)")
    for name in ("pause", "csi-provisioner", "csi-resizer"):
        if not (tools / "images" / f"{name}.oci.tar").exists():
            out.append(f"{tools / 'images' / name}.oci.tar (make cluster-setup)")
    for cmd in ("containerd", "ctr", "runc", "iptables", "ip6tables", "iptables-save"):
        if shutil.which(cmd) is None:
            out.append(f"{cmd} (make cluster-setup)")
    if not (CNI_BIN / "bridge").exists():
        out.append("containernetworking-plugins (make cluster-setup)")
    return out


def busy_reasons() -> List[str]:
    """Another kubelet or containerd on this host, or its leftovers: the fixture would clash."""
    out = []
    for name in ("kubelet", "containerd"):
        if subprocess.run(["pgrep", "-x", name], capture_output=True, check=False).returncode == 0:
            out.append(f"a {name} is running")
    if Path(f"/sys/class/net/{BRIDGE}").exists():
        out.append(f"bridge {BRIDGE} exists")
    if any((d / "kubepods").exists() for d in _cgroup_dirs()):
        out.append("kubepods cgroups exist")
    return out


def image_ref(archive: Path) -> str:
    """The image name an OCI archive's index gives (io.containerd.image.name)."""
    with tarfile.open(archive) as tar:
        member = tar.extractfile("index.json")
        assert member is not None
        index = json.load(member)
    annotations = index["manifests"][0].get("annotations", {})
    return str(annotations.get("io.containerd.image.name") or annotations["org.opencontainers.image.ref.name"])


# --- host state ---------------------------------------------------------------------------------


def _cgroup_dirs() -> List[Path]:
    try:
        return [d for d in CGROUP_ROOT.iterdir() if d.is_dir() and not d.is_symlink()]
    except OSError:
        return []


def _iptables_rules() -> Dict[str, List[str]]:
    out: Dict[str, List[str]] = {}
    for cmd in IPTABLES:
        for table in TABLES:
            text = _run(cmd, "-w", "-t", table, "-S", check=False)
            out[f"{cmd} {table}"] = text.splitlines()
    return out


@dataclass
class HostState:
    """What the cluster may change on the host, as comparable data."""

    iptables: Dict[str, List[str]]
    sysctls: Dict[str, str]
    fixed_paths: Dict[str, bool]
    kubepods: List[str]
    netns: List[str]
    links: List[str]
    mounts: List[str]
    processes: List[str]

    @classmethod
    def take(cls, work: Optional[Path] = None) -> HostState:
        sysctls = {}
        for key in SYSCTLS:
            try:
                sysctls[key] = Path("/proc/sys", key).read_text().strip()
            except OSError:
                continue
        try:  # only what the CNI plugins make (other tests on the host make their own namespaces)
            netns = sorted(n for n in os.listdir("/run/netns") if n.startswith("cni-"))
        except OSError:
            netns = []
        links = sorted(p.name for p in Path("/sys/class/net").iterdir()
                       if p.name.startswith((BRIDGE, "veth")))
        roots = [str(work)] if work else []
        roots += ["/run/containerd", "/var/lib/kubelet", "/run/netns/cni-"]
        with open("/proc/self/mountinfo", encoding="utf-8") as f:
            mounts = sorted({point for point in (line.split()[4] for line in f)
                             if any(point == r or point.startswith(r if r.endswith("-") else r + "/") for r in roots)})
        # what a real node runs (the control plane's binaries also serve other tests' sessions; ours
        # are stopped by their own process handles)
        procs = [n for n in ("kubelet", "containerd", "containerd-shim-runc-v2")
                 if subprocess.run(["pgrep", "-x", n], capture_output=True, check=False).returncode == 0]
        return cls(iptables=_iptables_rules(), sysctls=sysctls,
                   fixed_paths={p: os.path.lexists(p) for p in FIXED_PATHS},
                   kubepods=sorted(str(d / "kubepods") for d in _cgroup_dirs() if (d / "kubepods").exists()),
                   netns=netns, links=links, mounts=mounts, processes=procs)

    def differences(self, other: HostState) -> List[str]:
        """What ``other`` (after) has that this (before) had not, or lacks."""
        out = []
        for key in sorted(set(self.iptables) | set(other.iptables)):
            before, after = set(self.iptables.get(key, [])), set(other.iptables.get(key, []))
            out += [f"{key}: added {r}" for r in sorted(after - before)]
            out += [f"{key}: removed {r}" for r in sorted(before - after)]
        for name in ("sysctls", "fixed_paths", "kubepods", "netns", "links", "mounts", "processes"):
            a, b = getattr(self, name), getattr(other, name)
            if a != b:
                out.append(f"{name}: before {a}, after {b}")
        return out


# --- PKI ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NodePki:
    directory: Path

    def path(self, name: str) -> Path:
        return self.directory / name


def make_node_pki(directory: Path) -> NodePki:
    """CA; API server serving cert (127.0.0.1, the bridge address, the kubernetes service IP);
    admin (system:masters: tests, Ansible, controller-manager, scheduler, the API server's kubelet
    client); the kubelet's identity (system:node:<name> in system:nodes); the service-account keys."""
    directory.mkdir(parents=True, exist_ok=True)
    pem = serialization.Encoding.PEM
    ca_key = _key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "directpv-realnode-ca")])
    ca = _cert(ca_name, ca_key.public_key(), ca_name, ca_key, ca=True)
    (directory / "ca.crt").write_bytes(ca.public_bytes(pem))
    _write_key(directory / "ca.key", ca_key)

    def issue(name: str, cn: str, org: str = "", server: bool = False) -> None:
        key = _key()
        attrs = ([x509.NameAttribute(NameOID.ORGANIZATION_NAME, org)] if org else []) + [
            x509.NameAttribute(NameOID.COMMON_NAME, cn)]
        sans: List[x509.GeneralName] = []
        if server:
            sans = [x509.IPAddress(ipaddress.ip_address(a)) for a in ("127.0.0.1", GATEWAY, KUBERNETES_SERVICE_IP)]
            sans += [x509.DNSName(n) for n in ("localhost", "kubernetes", "kubernetes.default",
                                               "kubernetes.default.svc", "kubernetes.default.svc.cluster.local")]
        usages = [ExtendedKeyUsageOID.SERVER_AUTH] if server else [ExtendedKeyUsageOID.CLIENT_AUTH]
        cert = _cert(x509.Name(attrs), key.public_key(), ca_name, ca_key, usages=usages, sans=sans)
        (directory / f"{name}.crt").write_bytes(cert.public_bytes(pem))
        _write_key(directory / f"{name}.key", key)

    issue("apiserver", "kube-apiserver", server=True)
    issue("admin", "directpv-realnode-admin", "system:masters")
    issue("kubelet", f"system:node:{NODE_NAME}", "system:nodes")
    sa = _key()
    _write_key(directory / "sa.key", sa)
    public = sa.public_key().public_bytes(pem, serialization.PublicFormat.SubjectPublicKeyInfo)
    (directory / "sa.pub").write_bytes(public)
    return NodePki(directory)


def write_kubeconfig(path: Path, server: str, pki: NodePki, user: str) -> None:
    path.write_text(
        "apiVersion: v1\nkind: Config\n"
        f"clusters:\n- name: realnode\n  cluster:\n    server: {server}\n"
        f"    certificate-authority: {pki.path('ca.crt')}\n"
        f"users:\n- name: {user}\n  user:\n    client-certificate: {pki.path(user + '.crt')}\n"
        f"    client-key: {pki.path(user + '.key')}\n"
        f"contexts:\n- name: realnode\n  context:\n    cluster: realnode\n    user: {user}\n"
        "current-context: realnode\n",
        encoding="utf-8",
    )


# --- the cluster --------------------------------------------------------------------------------


CONTAINERD_CONFIG = """version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "{socket}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"
  restrict_oom_score_adj = true
  disable_apparmor = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{cni_bin}"
    conf_dir = "{cni_conf}"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "{certs}"
"""

KUBELET_CONFIG = """apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
failSwapOn: false
address: {address}
port: {port}
healthzBindAddress: 127.0.0.1
healthzPort: {healthz_port}
readOnlyPort: 0
containerRuntimeEndpoint: unix://{containerd_socket}
authentication:
  anonymous: {{enabled: false}}
  webhook: {{enabled: false}}
  x509: {{clientCAFile: {ca}}}
authorization: {{mode: AlwaysAllow}}
clusterDomain: cluster.local
podLogsDir: {pod_logs}
volumePluginDir: {volume_plugins}
serializeImagePulls: false
maxPods: 250
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {{memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%"}}
syncFrequency: 10s
fileCheckFrequency: 10s
"""


@dataclass
class RealNode:
    """What the fixture yields."""

    work: Path
    url: str = ""
    kubeconfig: Path = Path()
    api_client: Optional[k8s_client.ApiClient] = None
    containerd_socket: Path = Path()
    kubelet_dir: Path = Path()
    state_dir: Path = Path()
    log_dir: Path = Path()
    procs: Dict[str, Proc] = field(default_factory=dict)
    before: Optional[HostState] = None
    start_seconds: float = 0.0
    _steps: List[str] = field(default_factory=list)
    _sysctls: Dict[str, str] = field(default_factory=dict)

    # --- start ----------------------------------------------------------------------------------
    def start(self, timeout_s: float = 180) -> None:
        t0 = time.monotonic()
        self.before = HostState.take()
        self._sysctls = dict(self.before.sysctls)
        self.log_dir = self.work / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.kubelet_dir = self.work / "kubelet"
        self.state_dir = self.work / "state"
        self._network()
        self._containerd()
        self._control_plane(timeout_s)
        self._kubelet(timeout_s)
        self.start_seconds = time.monotonic() - t0

    def _network(self) -> None:
        self._steps.append("bridge")
        _run("ip", "link", "add", BRIDGE, "type", "bridge")
        _run("ip", "addr", "add", f"{GATEWAY}/24", "dev", BRIDGE)
        _run("ip", "link", "set", BRIDGE, "up")
        # the bridge plugin turns forwarding on; it is restored at stop with the other sysctls
        cni = self.work / "cni" / "net.d"
        cni.mkdir(parents=True)
        conf = {"cniVersion": "1.0.0", "name": "dpvrn", "plugins": [{
            "type": "bridge", "bridge": BRIDGE, "isGateway": True, "ipMasq": False, "hairpinMode": True,
            "ipam": {"type": "host-local", "dataDir": str(self.work / "cni" / "ipam"),
                     "ranges": [[{"subnet": POD_SUBNET, "rangeStart": "10.89.0.10", "gateway": GATEWAY}]],
                     "routes": [{"dst": "0.0.0.0/0"}]}}]}
        (cni / "10-dpvrn.conflist").write_text(json.dumps(conf, indent=1))

    def _containerd(self) -> None:
        base = self.work / "containerd"
        certs = base / "certs.d"
        for host in ("_default", "docker.io", "registry.k8s.io", "ghcr.io", "quay.io", "localhost"):
            (certs / host).mkdir(parents=True)
            # every registry fails fast on loopback: nothing is ever pulled from a network
            (certs / host / "hosts.toml").write_text(
                'server = "http://127.0.0.1:1"\n[host."http://127.0.0.1:1"]\n  capabilities = ["pull", "resolve"]\n')
        self.containerd_socket = base / "containerd.sock"
        pause = image_ref(tools_dir() / "images" / "pause.oci.tar")
        config = base / "config.toml"
        config.write_text(CONTAINERD_CONFIG.format(
            root=base / "root", state=base / "state", socket=self.containerd_socket, pause=pause,
            cni_bin=CNI_BIN, cni_conf=self.work / "cni" / "net.d", certs=certs))
        self._steps.append("containerd")
        self.procs["containerd"] = start("containerd", [shutil.which("containerd") or "containerd",
                                                        "--config", str(config)], self.log_dir)
        deadline = time.monotonic() + 60
        while not self._ctr_ok():
            if self.procs["containerd"].popen.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"containerd did not start:\n{self.procs['containerd'].tail()}")
            time.sleep(0.2)
        self.import_image(tools_dir() / "images" / "pause.oci.tar")  # the rest: directpv.csi.image

    def ctr(self, *args: str, check: bool = True, timeout: float = 300) -> str:
        return _run("ctr", "--address", str(self.containerd_socket), "-n", "k8s.io", *args, check=check,
                    timeout=timeout)

    def _ctr_ok(self) -> bool:
        if not self.containerd_socket.exists():
            return False
        proc = subprocess.run(["ctr", "--address", str(self.containerd_socket), "version"],
                              capture_output=True, check=False, timeout=10)
        return proc.returncode == 0

    def import_image(self, archive: Path) -> None:
        self.ctr("images", "import", str(archive))

    def images(self) -> List[str]:
        return [line.split()[0] for line in self.ctr("images", "ls", "-q").splitlines() if line.strip()]

    def _control_plane(self, timeout_s: float) -> None:
        tools = tools_dir()
        pki = make_node_pki(self.work / "pki")
        etcd_port, peer_port = free_ports(2)
        self.procs["etcd"] = start("etcd", etcd_argv(tools / "etcd", self.work / "etcd", etcd_port, peer_port),
                                   self.log_dir)
        api_port = _free_port(GATEWAY)
        self.url = f"https://{GATEWAY}:{api_port}"
        self.procs["kube-apiserver"] = start("kube-apiserver", [
            str(tools / "kube-apiserver"),
            f"--etcd-servers=http://127.0.0.1:{etcd_port}",
            f"--cert-dir={self.work / 'apiserver-certs'}",
            f"--secure-port={api_port}", f"--bind-address={GATEWAY}", f"--advertise-address={GATEWAY}",
            f"--tls-cert-file={pki.path('apiserver.crt')}", f"--tls-private-key-file={pki.path('apiserver.key')}",
            f"--client-ca-file={pki.path('ca.crt')}",
            f"--kubelet-client-certificate={pki.path('admin.crt')}", f"--kubelet-client-key={pki.path('admin.key')}",
            f"--service-cluster-ip-range={SERVICE_CIDR}", "--allow-privileged=true",
            "--authorization-mode=Node,RBAC", "--enable-admission-plugins=NodeRestriction",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki.path('sa.pub')}",
            f"--service-account-signing-key-file={pki.path('sa.key')}",
            "--v=1",
        ], self.log_dir)
        self.kubeconfig = self.work / "admin.kubeconfig"
        write_kubeconfig(self.kubeconfig, self.url, pki, "admin")
        self._wait_api(pki, timeout_s)
        self.api_client = _api_client(self.url, pki)
        self._service_endpoint(api_port)
        self.procs["kube-controller-manager"] = start("kube-controller-manager", [
            str(tools / "kube-controller-manager"), f"--kubeconfig={self.kubeconfig}",
            f"--root-ca-file={pki.path('ca.crt')}", f"--service-account-private-key-file={pki.path('sa.key')}",
            "--leader-elect=false", "--bind-address=127.0.0.1", f"--secure-port={free_ports(1)[0]}",
            f"--flex-volume-plugin-dir={self.work / 'volume-plugins'}",
            "--controllers=*,-nodeipam,-service-lb-controller,-cloud-node-lifecycle", "--v=1",
        ], self.log_dir)
        self.procs["kube-scheduler"] = start("kube-scheduler", [
            str(tools / "kube-scheduler"), f"--kubeconfig={self.kubeconfig}", "--leader-elect=false",
            "--bind-address=127.0.0.1", f"--secure-port={free_ports(1)[0]}", "--v=1",
        ], self.log_dir)

    def _service_endpoint(self, api_port: int) -> None:
        """The ``kubernetes`` service (10.0.0.1:443) reaches the API server through one DNAT rule
        (what kube-proxy would do for this one service; pods need no other)."""
        self._steps.append("dnat")
        _run("iptables", "-w", "-t", "nat", "-N", NAT_CHAIN)
        _run("iptables", "-w", "-t", "nat", "-A", NAT_CHAIN, "-d", f"{KUBERNETES_SERVICE_IP}/32", "-p", "tcp",
             "--dport", "443", "-j", "DNAT", "--to-destination", f"{GATEWAY}:{api_port}")
        _run("iptables", "-w", "-t", "nat", "-I", "PREROUTING", "-j", NAT_CHAIN)
        _run("iptables", "-w", "-t", "nat", "-I", "OUTPUT", "-d", f"{KUBERNETES_SERVICE_IP}/32", "-j", NAT_CHAIN)

    def _wait_api(self, pki: NodePki, timeout_s: float) -> None:
        import ssl
        import urllib.request

        ctx = ssl.create_default_context(cafile=str(pki.path("ca.crt")))
        ctx.load_cert_chain(str(pki.path("admin.crt")), str(pki.path("admin.key")))
        deadline = time.monotonic() + timeout_s
        last = ""
        while time.monotonic() < deadline:
            for p in self.procs.values():
                if p.popen.poll() is not None:
                    raise RuntimeError(f"{p.name} exited ({p.popen.returncode}):\n{p.tail()}")
            try:
                with urllib.request.urlopen(self.url + "/readyz", context=ctx, timeout=5) as resp:
                    if resp.status == 200:
                        return
            except OSError as exc:
                last = str(exc)
            time.sleep(0.3)
        raise RuntimeError(f"kube-apiserver not ready: {last}\n{self.procs['kube-apiserver'].tail()}")

    def _kubelet(self, timeout_s: float) -> None:
        pki = NodePki(self.work / "pki")
        self.kubelet_dir.mkdir()
        self.state_dir.mkdir()
        # the driver's state dir is mounted Bidirectional into the node plugin: it must be a shared mount
        self._steps.append("state-mount")
        _run("mount", "--bind", str(self.state_dir), str(self.state_dir))
        _run("mount", "--make-rshared", str(self.state_dir))
        kubeconfig = self.work / "kubelet.kubeconfig"
        write_kubeconfig(kubeconfig, self.url, pki, "kubelet")
        config = self.work / "kubelet.yaml"
        port, healthz = free_ports(2)
        config.write_text(KUBELET_CONFIG.format(
            address=GATEWAY, port=port, healthz_port=healthz, containerd_socket=self.containerd_socket,
            ca=pki.path("ca.crt"),
            pod_logs=self.work / "pod-logs", volume_plugins=self.work / "volume-plugins"))
        self._steps.append("kubelet")
        self.procs["kubelet"] = start("kubelet", [
            str(tools_dir() / "kubelet"), f"--config={config}", f"--kubeconfig={kubeconfig}",
            f"--root-dir={self.kubelet_dir}", f"--hostname-override={NODE_NAME}", f"--node-ip={GATEWAY}", "--v=1",
        ], self.log_dir)
        core = k8s_client.CoreV1Api(self.api_client)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.procs["kubelet"].popen.poll() is not None:
                raise RuntimeError(f"kubelet exited:\n{self.procs['kubelet'].tail(50)}")
            try:
                node = core.read_node(NODE_NAME)
                ready = [c for c in (node.status.conditions or []) if c.type == "Ready"]
                if ready and ready[0].status == "True":
                    return
            except k8s_client.ApiException as exc:
                if exc.status != 404:
                    raise
            time.sleep(0.5)
        raise RuntimeError(f"node {NODE_NAME} not Ready after {timeout_s:.0f} s:\n{self.procs['kubelet'].tail(50)}")

    # --- stop -----------------------------------------------------------------------------------
    def stop(self) -> List[str]:
        """Undo everything; returns what could not be undone (empty when the host is as before)."""
        problems: List[str] = []

        def attempt(what: str, fn: Any, *args: Any) -> None:
            try:
                fn(*args)
            except Exception as exc:  # keep going: every later step still has to run
                problems.append(f"{what}: {exc}")

        if self.api_client is not None:
            attempt("api client", self.api_client.close)
        attempt("kubelet", self._stop_proc, "kubelet")
        attempt("containers", self._kill_containers)
        for name in ("kube-scheduler", "kube-controller-manager", "kube-apiserver", "etcd"):
            attempt(name, self._stop_proc, name)
        attempt("containerd", self._stop_proc, "containerd")
        attempt("shims", self._kill_shims)
        attempt("mounts", self._unmount_all)
        attempt("network namespaces", self._remove_netns)
        attempt("bridge", self._remove_links)
        attempt("iptables", self._restore_iptables)
        attempt("sysctls", self._restore_sysctls)
        attempt("cgroups", self._remove_cgroups)
        attempt("fixed paths", self._remove_fixed_paths)
        if self.before is not None:
            after = HostState.take()
            problems += after.differences(self.before)
        return problems

    def _stop_proc(self, name: str) -> None:
        proc = self.procs.pop(name, None)
        if proc is not None:
            proc.stop(grace_s=20)

    def _kill_containers(self) -> None:
        if "containerd" not in self.procs or not self._ctr_ok():
            return
        for line in self.ctr("tasks", "ls", "-q", check=False).splitlines():
            task = line.strip()
            if task:
                self.ctr("tasks", "kill", "-a", "-s", "SIGKILL", task, check=False)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            out = self.ctr("tasks", "ls", check=False).splitlines()[1:]
            if all("STOPPED" in line for line in out):
                break
            time.sleep(0.3)
        for line in self.ctr("tasks", "ls", "-q", check=False).splitlines():
            if line.strip():
                self.ctr("tasks", "rm", "-f", line.strip(), check=False)
        for line in self.ctr("containers", "ls", "-q", check=False).splitlines():
            if line.strip():
                self.ctr("containers", "rm", line.strip(), check=False)

    def _kill_shims(self) -> None:
        """The runc shims of exactly this containerd (their command line names its socket)."""
        needle = str(self.containerd_socket).encode()
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"containerd-shim" in cmdline.split(b"\0")[0] and needle in cmdline:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), 9)

    def _unmount_all(self) -> None:
        """Every mount under the work dir or the runtime state (/run/containerd), deepest first."""
        roots = [str(self.work)]
        if self.before is not None and not self.before.fixed_paths.get("/run/containerd"):
            roots.append("/run/containerd")
        for _ in range(5):
            with open("/proc/self/mountinfo", encoding="utf-8") as f:
                points = [line.split()[4].replace("\\040", " ") for line in f]
            ours = [p for p in points if any(p == r or p.startswith(r + "/") for r in roots)]
            if not ours:
                return
            for p in sorted(set(ours), key=len, reverse=True):
                subprocess.run(["umount", "-l", p], capture_output=True, check=False)
        raise RuntimeError(f"still mounted: {ours}")

    def _remove_netns(self) -> None:
        before = set(self.before.netns if self.before else [])
        try:
            names = os.listdir("/run/netns")
        except OSError:
            return
        for name in names:
            if name.startswith("cni-") and name not in before:
                _run("ip", "netns", "delete", name, check=False)

    def _remove_links(self) -> None:
        before = set(self.before.links if self.before else [])
        for link in Path("/sys/class/net").iterdir():
            if (link.name == BRIDGE or link.name.startswith("veth")) and link.name not in before:
                _run("ip", "link", "delete", link.name, check=False)

    def _restore_iptables(self) -> None:
        """Rules and chains that appeared since start and are ours (KUBE-*, CNI-*, DPVRN-*) go;
        anything else that changed is reported by ``stop`` and left alone."""
        before = self.before.iptables if self.before else {}
        for cmd in IPTABLES:
            for table in TABLES:
                key = f"{cmd} {table}"
                old = set(before.get(key, []))
                now = _run(cmd, "-w", "-t", table, "-S", check=False).splitlines()
                for rule in now:  # rules first (jumps into our chains), then the chains
                    if rule.startswith("-A ") and rule not in old and any(o in rule for o in OURS):
                        _run(cmd, "-w", "-t", table, *shlex.split("-D " + rule[3:]), check=False)
                chains = [r.split()[1] for r in now if r.startswith("-N ") and r not in old
                          and r.split()[1].startswith(OURS)]
                for chain in chains:
                    _run(cmd, "-w", "-t", table, "-F", chain, check=False)
                for chain in chains:
                    _run(cmd, "-w", "-t", table, "-X", chain, check=False)

    def _restore_sysctls(self) -> None:
        for key, value in self._sysctls.items():
            path = Path("/proc/sys", key)
            try:
                if path.read_text().strip() != value:
                    path.write_text(value + "\n")
            except OSError:
                continue

    def _remove_cgroups(self) -> None:
        before = set(self.before.kubepods if self.before else [])
        for d in _cgroup_dirs():
            top = d / "kubepods"
            if not top.exists() or str(top) in before:
                continue
            for sub in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
                _rmdir_cgroup(sub)
            _rmdir_cgroup(top)

    def _remove_fixed_paths(self) -> None:
        """Paths the kubelet/containerd/CNI created at fixed places: only when they did not exist
        before and nothing is mounted below them (runtime state of this cluster, no user data)."""
        existed = self.before.fixed_paths if self.before else {p: True for p in FIXED_PATHS}
        with open("/proc/self/mountinfo", encoding="utf-8") as f:
            points = [line.split()[4] for line in f]
        left = []
        for path in FIXED_PATHS:
            if existed.get(path, True) or not os.path.lexists(path):
                continue
            if any(p == path or p.startswith(path + "/") for p in points):
                left.append(f"{path} (mounts below it)")
                continue
            try:
                if path in EMPTY_ONLY:  # empty directories only: a file inside is someone else's
                    for sub, _dirs, _files in sorted(os.walk(path), key=lambda w: len(w[0]), reverse=True):
                        os.rmdir(sub)
                elif os.path.isdir(path):
                    shutil.rmtree(path)  # the kubelet's, containerd's or CNI's runtime state of this cluster
                else:
                    os.unlink(path)
            except OSError as exc:
                left.append(f"{path} ({exc})")
        if left:
            raise RuntimeError(f"left in place: {', '.join(left)}")

def _rmdir_cgroup(path: Path) -> None:
    for _ in range(50):
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.1)  # tasks still leaving
    path.rmdir()


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _api_client(url: str, pki: NodePki) -> k8s_client.ApiClient:
    cfg = k8s_client.Configuration()
    cfg.host = url
    cfg.ssl_ca_cert = str(pki.path("ca.crt"))
    cfg.cert_file = str(pki.path("admin.crt"))
    cfg.key_file = str(pki.path("admin.key"))
    return k8s_client.ApiClient(cfg)


def new_work_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="dpvrn.", dir="/tmp"))


def launch(work: Path, timeout_s: float = 180) -> RealNode:
    """Start a node; on failure stop what started and raise with the teardown's problems too."""
    node = RealNode(work)
    try:
        node.start(timeout_s)
    except BaseException as exc:
        problems = node.stop()
        raise RuntimeError(f"real node did not start: {exc}\nteardown: {problems or 'clean'}") from exc
    return node

