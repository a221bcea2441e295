"""A real Kubernetes control plane on loopback for end-to-end tests (docs/cluster.md).

`ControlPlane(DIR).start()` generates a CA and certificates, then starts etcd, kube-apiserver,
kube-controller-manager and kube-scheduler (the binaries `scripts/build-k8s` builds), each on free
loopback ports, with their logs in DIR/logs/. It returns once /readyz is ok, the controller manager
and scheduler are healthy, and the `default` ServiceAccount exists. DIR/kubeconfig is cluster-admin
(a client certificate in `system:masters`). `stop()` ends every process it started (SIGTERM, then
SIGKILL) and may be called any number of times.

`Cluster` is a control plane plus node agents (support/node_agent.py, each its own process), and
`cluster_fixture()` makes a session-scoped pytest fixture of it. `scripts/cluster up|down DIR`
uses the same code and records the processes in DIR/processes.json so that `down` can end them.
Standard library, `cryptography` and (for the fixtures' clients) `kubernetes` only.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import json
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cogtrain.local import free_port

ROOT = Path(__file__).resolve().parents[2]
BUILD_K8S = ROOT / "scripts" / "build-k8s"
NODE_AGENT = Path(__file__).resolve().parent / "node_agent.py"
BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")
SERVICE_CIDR = "10.0.0.0/24"
PROCESSES_FILE = "processes.json"


def k8s_binaries(timeout: float = 3600) -> Path:
    """The folder holding the five binaries: KUBEBUILDER_ASSETS, or scripts/build-k8s's cache (built on first use)."""
    done = subprocess.run([str(BUILD_K8S)], stdout=subprocess.PIPE, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"scripts/build-k8s failed (exit {done.returncode}); see its messages above")
    folder = Path(done.stdout.strip().splitlines()[-1])
    missing = [b for b in BINARIES if not os.access(folder / b, os.X_OK)]
    if missing:
        raise RuntimeError(f"{folder} lacks {', '.join(missing)}")
    return folder


# --- certificates -----------------------------------------------------------------------------------------------


@dataclass
class CertificateAuthority:
    """A self-signed CA (ECDSA P-256: quick to generate) that issues the cluster's certificates."""

    folder: Path
    cert_path: Path = field(init=False)
    key_path: Path = field(init=False)

    def __post_init__(self) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        self.folder.mkdir(parents=True, exist_ok=True)
        self.cert_path, self.key_path = self.folder / "ca.crt", self.folder / "ca.key"
        if self.cert_path.exists() and self.key_path.exists():
            self._load()
            return
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cogtrain-test-ca")])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        _write_key(self.key_path, key)
        self.cert_path.write_bytes(cert.public_bytes(_pem()))
        self._key, self._cert = key, cert

    def _load(self) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        self._cert = x509.load_pem_x509_certificate(self.cert_path.read_bytes())
        self._key = load_pem_private_key(self.key_path.read_bytes(), None)

    def issue(self, stem: str, common_name: str, organizations: tuple[str, ...] = (), *, server: bool = False,
              hosts: tuple[str, ...] = ()) -> tuple[Path, Path]:
        """A leaf certificate and key, written as FOLDER/STEM.crt and FOLDER/STEM.key."""
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        cert_path, key_path = self.folder / f"{stem}.crt", self.folder / f"{stem}.key"
        if cert_path.exists() and key_path.exists():
            return cert_path, key_path
        key = ec.generate_private_key(ec.SECP256R1())
        attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, org) for org in organizations]
        attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateBuilder().subject_name(x509.Name(attributes)).issuer_name(self._cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False, key_cert_sign=False,
                                         crl_sign=False, content_commitment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server
                                                  else ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), critical=False)
        )
        if hosts:
            names: list[x509.GeneralName] = []
            for host in hosts:
                try:
                    names.append(x509.IPAddress(ipaddress.ip_address(host)))
                except ValueError:
                    names.append(x509.DNSName(host))
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        _write_key(key_path, key)
        cert_path.write_bytes(cert.public_bytes(_pem()))
        return cert_path, key_path


def _pem() -> Any:
    from cryptography.hazmat.primitives.serialization import Encoding

    return Encoding.PEM


def _write_key(path: Path, key: Any) -> None:
    from cryptography.hazmat.primitives.serialization import NoEncryption, PrivateFormat

    path.write_bytes(key.private_bytes(_pem(), PrivateFormat.PKCS8, NoEncryption()))
    path.chmod(0o600)


def _service_account_keys(folder: Path) -> tuple[Path, Path]:
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import PublicFormat

    private, public = folder / "sa.key", folder / "sa.pub"
    if not (private.exists() and public.exists()):
        key = ec.generate_private_key(ec.SECP256R1())
        _write_key(private, key)
        public.write_bytes(key.public_key().public_bytes(_pem(), PublicFormat.SubjectPublicKeyInfo))
    return private, public


def write_kubeconfig(path: Path, server: str, ca: Path, cert: Path, key: Path, user: str) -> Path:
    """A kubeconfig (JSON is YAML) with one cluster, one client-certificate user and one current context."""
    config = {
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "cogtrain-test", "cluster": {"server": server, "certificate-authority": str(ca)}}],
        "users": [{"name": user, "user": {"client-certificate": str(cert), "client-key": str(key)}}],
        "contexts": [{"name": "cogtrain-test", "context": {"cluster": "cogtrain-test", "user": user}}],
        "current-context": "cogtrain-test",
    }
    path.write_text(json.dumps(config, indent=2) + "\n")
    path.chmod(0o600)
    return path


# --- processes --------------------------------------------------------------------------------------------------


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path


def _start_process(name: str, args: list[str], logs: Path, env: dict[str, str] | None = None) -> Process:
    log = logs / f"{name}.log"
    with log.open("ab") as out:
        popen = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                 start_new_session=True, env=env, close_fds=True)
    return Process(name, popen, log)


def _start_time(pid: int) -> str | None:
    """The process's start time (field 22 of /proc/PID/stat): with the pid, it names one process for good."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def terminate(pids: list[int], grace: float = 10.0) -> None:
    """SIGTERM each, wait up to `grace` seconds for all, then SIGKILL the rest."""
    alive = []
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
            alive.append(pid)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [pid for pid in alive if _alive(pid)]
    for pid in alive:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 5
    while any(_alive(pid) for pid in alive) and time.monotonic() < deadline:
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    """True while the process runs and is not a zombie; reaps our own children."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    except ChildProcessError:
        pass
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def _get(url: str, context: ssl.SSLContext | None, timeout: float = 2) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, context=context, timeout=timeout) as response:
            return response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(errors="replace")


def _wait(what: str, check: Callable[[], bool], timeout: float, processes: list[Process], interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while True:
        for process in processes:
            if process.popen.poll() is not None:
                tail = "\n".join(process.log.read_text(errors="replace").splitlines()[-20:])
                raise RuntimeError(f"{process.name} exited with {process.popen.returncode} while waiting for {what}; "
                                   f"its log ({process.log}) ends:\n{tail}")
        try:
            if check():
                return
        except (OSError, ssl.SSLError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not ready within {timeout:.0f} s; logs in {processes[0].log.parent}")
        time.sleep(interval)


# --- the control plane ------------------------------------------------------------------------------------------


class ControlPlane:
    """etcd, kube-apiserver, kube-controller-manager and kube-scheduler on loopback, state and logs in `folder`."""

    def __init__(self, folder: Path, binaries: Path | None = None, *, node_monitor_grace: str = "20s",
                 extra_apiserver_args: tuple[str, ...] = ()) -> None:
        self.folder = Path(folder).resolve()
        self.binaries = binaries
        self.node_monitor_grace = node_monitor_grace
        self.extra_apiserver_args = extra_apiserver_args
        self.pki = self.folder / "pki"
        self.logs = self.folder / "logs"
        self.kubeconfig = self.folder / "kubeconfig"
        self.processes: list[Process] = []
        self.timings: dict[str, float] = {}
        self.api_port = 0
        self._ca: CertificateAuthority | None = None

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.api_port}"

    @property
    def ca(self) -> CertificateAuthority:
        assert self._ca is not None, "start() first"
        return self._ca

    @property
    def kubectl(self) -> Path:
        assert self.binaries is not None
        return self.binaries / "kubectl"

    def client_kubeconfig(self, name: str, common_name: str, organizations: tuple[str, ...] = ()) -> Path:
        """A kubeconfig authenticating as `common_name` in `organizations` (a client certificate from the CA)."""
        cert, key = self.ca.issue(name, common_name, organizations)
        return write_kubeconfig(self.folder / f"{name}.kubeconfig", self.server, self.ca.cert_path, cert, key,
                                common_name)

    def start(self, timeout: float = 120) -> ControlPlane:
        began = time.monotonic()
        try:
            self._start(timeout)
        except BaseException:
            self.stop()
            raise
        self.timings["total"] = time.monotonic() - began
        return self

    def _start(self, timeout: float) -> None:
        """etcd and the API server start together (it retries etcd); the controller manager and the scheduler
        once the API server is ready."""
        began = time.monotonic()
        if self.binaries is None:
            self.binaries = k8s_binaries()
        bins = self.binaries
        self.logs.mkdir(parents=True, exist_ok=True)
        self.timings["binaries"] = time.monotonic() - began

        mark = time.monotonic()
        self._ca = CertificateAuthority(self.pki)
        serving_cert, serving_key = self.ca.issue("apiserver", "kube-apiserver", server=True, hosts=(
            "127.0.0.1", "localhost", "10.0.0.1", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local"))
        kubelet_client = self.ca.issue("apiserver-kubelet-client", "kube-apiserver-kubelet-client", ("system:masters",))
        sa_key, sa_pub = _service_account_keys(self.pki)
        admin_cert, admin_key = self.ca.issue("admin", "cogtrain-test-admin", ("system:masters",))
        etcd_port, peer_port, self.api_port = free_port(), free_port(), free_port()
        kcm_port, scheduler_port = free_port(), free_port()
        write_kubeconfig(self.kubeconfig, self.server, self.ca.cert_path, admin_cert, admin_key, "cogtrain-test-admin")
        kcm_kubeconfig = self.client_kubeconfig("kube-controller-manager", "system:kube-controller-manager")
        scheduler_kubeconfig = self.client_kubeconfig("kube-scheduler", "system:kube-scheduler")
        self.timings["certificates"] = time.monotonic() - mark

        mark = time.monotonic()
        etcd_url = f"http://127.0.0.1:{etcd_port}"
        etcd = _start_process("etcd", [
            str(bins / "etcd"), "--name=default", f"--data-dir={self.folder / 'etcd'}",
            f"--listen-client-urls={etcd_url}", f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
            f"--initial-cluster=default=http://127.0.0.1:{peer_port}",
            "--unsafe-no-fsync=true", "--log-level=warn", "--quota-backend-bytes=2147483648",
        ], self.logs)
        self.processes.append(etcd)
        apiserver = _start_process("kube-apiserver", [
            str(bins / "kube-apiserver"),
            f"--etcd-servers={etcd_url}",
            f"--secure-port={self.api_port}", "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
            f"--cert-dir={self.pki}", f"--tls-cert-file={serving_cert}", f"--tls-private-key-file={serving_key}",
            f"--client-ca-file={self.ca.cert_path}",
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction",
            f"--service-account-issuer=https://127.0.0.1:{self.api_port}",
            f"--service-account-key-file={sa_pub}", f"--service-account-signing-key-file={sa_key}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--allow-privileged=true",
            "--endpoint-reconciler-type=none",
            # The node agent serves container logs (kubectl logs); its certificate is self-signed.
            f"--kubelet-client-certificate={kubelet_client[0]}", f"--kubelet-client-key={kubelet_client[1]}",
            "--kubelet-preferred-address-types=InternalIP,Hostname",
            "--profiling=false",
            # Pods tolerate a NotReady or unreachable node for 5 s, not the default 300 s
            # (DefaultTolerationSeconds): the tests see the taint eviction of a lost node in seconds.
            "--default-not-ready-toleration-seconds=5", "--default-unreachable-toleration-seconds=5",
            *self.extra_apiserver_args,
        ], self.logs)
        self.processes.append(apiserver)

        _wait("etcd", lambda: _get(f"{etcd_url}/health", None)[0] == 200, timeout, self.processes, interval=0.05)
        self.timings["etcd"] = time.monotonic() - mark
        context = ssl.create_default_context(cafile=str(self.ca.cert_path))
        context.load_cert_chain(str(admin_cert), str(admin_key))
        _wait("kube-apiserver /readyz", lambda: _get(f"{self.server}/readyz", context)[0] == 200, timeout,
              self.processes, interval=0.1)
        self.timings["kube-apiserver"] = time.monotonic() - mark
        # These two exit at once if RBAC's bootstrap roles are not there yet: they start when /readyz is ok.
        kcm = _start_process("kube-controller-manager", [
            str(bins / "kube-controller-manager"),
            f"--kubeconfig={kcm_kubeconfig}",
            f"--authentication-kubeconfig={kcm_kubeconfig}", f"--authorization-kubeconfig={kcm_kubeconfig}",
            "--bind-address=127.0.0.1", f"--secure-port={kcm_port}", f"--cert-dir={self.pki / 'kcm'}",
            "--leader-elect=false",
            "--use-service-account-credentials=true",
            f"--service-account-private-key-file={sa_key}",
            f"--root-ca-file={self.ca.cert_path}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            # Every on-by-default controller: job, garbage-collector, namespace, serviceaccount(-token),
            # ttl-after-finished, node-lifecycle, taint-eviction, disruption, pod-garbage-collector, ...
            "--controllers=*",
            "--node-monitor-period=2s", f"--node-monitor-grace-period={self.node_monitor_grace}",
            # The default 20 requests/s paces the start of ~40 controllers (each makes its own credentials).
            "--kube-api-qps=200", "--kube-api-burst=400",
            "--profiling=false",
        ], self.logs)
        scheduler = _start_process("kube-scheduler", [
            str(bins / "kube-scheduler"),
            f"--kubeconfig={scheduler_kubeconfig}",
            f"--authentication-kubeconfig={scheduler_kubeconfig}", f"--authorization-kubeconfig={scheduler_kubeconfig}",
            "--bind-address=127.0.0.1", f"--secure-port={scheduler_port}", f"--cert-dir={self.pki / 'scheduler'}",
            "--leader-elect=false", "--profiling=false",
        ], self.logs)
        self.processes += [kcm, scheduler]
        insecure = ssl.create_default_context()
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE
        for name, port in (("kube-controller-manager", kcm_port), ("kube-scheduler", scheduler_port)):
            _wait(f"{name} /healthz", lambda port=port: _get(f"https://127.0.0.1:{port}/healthz", insecure)[0] == 200,
                  timeout, self.processes)
        _wait("the default ServiceAccount",
              lambda: _get(f"{self.server}/api/v1/namespaces/default/serviceaccounts/default", context)[0] == 200,
              timeout, self.processes, interval=0.1)
        self.timings["controllers"] = time.monotonic() - mark
        self.record()

    def record(self, extra: dict[str, Any] | None = None) -> None:
        """DIR/processes.json: what `scripts/cluster down` (stop_recorded) ends."""
        path = self.folder / PROCESSES_FILE
        data = json.loads(path.read_text()) if path.exists() else {}
        data["control_plane"] = [{"name": p.name, "pid": p.popen.pid, "start": _start_time(p.popen.pid)}
                                 for p in self.processes]
        data["api_port"] = self.api_port
        data.update(extra or {})
        path.write_text(json.dumps(data, indent=2) + "\n")

    def stop(self) -> None:
        """SIGTERM every process (the API server before etcd), then SIGKILL what is left; idempotent."""
        processes, self.processes = self.processes, []
        order = {"kube-scheduler": 0, "kube-controller-manager": 0, "kube-apiserver": 1, "etcd": 2}
        for rank in (0, 1, 2):
            group = [p for p in processes if order.get(p.name, 0) == rank and p.popen.poll() is None]
            terminate([p.popen.pid for p in group])
            for p in group:
                try:
                    p.popen.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass

    def kubernetes_client(self, kubeconfig: Path | None = None) -> Any:
        """A `kubernetes.client.ApiClient` for DIR/kubeconfig (or another kubeconfig)."""
        from kubernetes import client, config

        configuration = client.Configuration()
        config.load_kube_config(config_file=str(kubeconfig or self.kubeconfig), client_configuration=configuration)
        return client.ApiClient(configuration)


# --- a cluster: control plane + node agents, in this process or recorded for `scripts/cluster down` -------------


@dataclass
class NodeProcess:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    folder: Path

    def set_ready(self, ready: bool) -> None:
        """Ready=False (and no more Lease renewals) on SIGUSR1; Ready again on SIGUSR2."""
        os.kill(self.popen.pid, signal.SIGUSR2 if ready else signal.SIGUSR1)


class Cluster:
    """A ControlPlane and node agents; `start()` returns when every node is Ready."""

    def __init__(self, folder: Path, *, nodes: tuple[str, ...] = ("node-1",),
                 models: Path | dict[str, str] | None = None, gpus: int = 4, forward_ports: tuple[int, ...] = (),
                 binaries: Path | None = None) -> None:
        """`models` maps image repositories (`host:port/path`) to Cog model folders or "host" (see node_agent.py):
        a JSON file, or a dict written to DIR/models.json."""
        self.folder = Path(folder).resolve()
        self.control_plane = ControlPlane(self.folder, binaries)
        self.node_names = nodes
        self.models = self.folder / "models.json"
        self._models: dict[str, str] = {}
        base = ROOT
        if isinstance(models, Path | str):
            base = Path(models).resolve().parent
            models = json.loads(Path(models).read_text())
        for repository, target in (models or {}).items():
            self._models[repository] = target if target == "host" else _absolute(target, base)
        self.gpus = gpus
        self.forward_ports = forward_ports
        self.nodes: dict[str, NodeProcess] = {}
        self.timings: dict[str, float] = {}

    @property
    def kubeconfig(self) -> Path:
        return self.control_plane.kubeconfig

    def start(self, timeout: float = 120) -> Cluster:
        began = time.monotonic()
        self._write_models()
        try:
            self.control_plane.start(timeout)
            mark = time.monotonic()
            for name in self.node_names:
                self.nodes[name] = self._start_node(name, provisioner=name == self.node_names[0])
            self._record_nodes()
            for node in self.nodes.values():
                self.wait_node_ready(node.name, timeout)
            self.timings["nodes"] = time.monotonic() - mark
        except BaseException:
            self.stop()
            raise
        self.timings.update(self.control_plane.timings)
        self.timings["total"] = time.monotonic() - began
        return self

    def add_model(self, repository: str, target: str | Path) -> None:
        """Map an image repository (`host:port/path`, no tag) to a Cog model folder or "host"; the node agents
        read DIR/models.json again when it changes, so this applies to containers started from now on."""
        self._models[repository] = "host" if str(target) == "host" else _absolute(str(target), ROOT)
        self._write_models()

    def _write_models(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        temporary = self.models.with_suffix(".tmp")
        temporary.write_text(json.dumps(self._models, indent=2) + "\n")
        temporary.replace(self.models)

    def _record_nodes(self) -> None:
        self.control_plane.record({"nodes": [
            {"name": n.name, "pid": n.popen.pid, "start": _start_time(n.popen.pid), "folder": str(n.folder)}
            for n in self.nodes.values()]})

    def add_node(self, name: str, timeout: float = 60) -> NodeProcess:
        """Another node agent; returns when its node is Ready."""
        node = self.nodes[name] = self._start_node(name, provisioner=False)
        self._record_nodes()
        self.wait_node_ready(name, timeout)
        return node

    def stop_node(self, name: str, delete: bool = True) -> None:
        """End a node agent (its containers are killed) and, with `delete`, remove its Node object."""
        node = self.nodes.pop(name)
        terminate([node.popen.pid], grace=30)
        with contextlib.suppress(subprocess.TimeoutExpired):
            node.popen.wait(timeout=5)
        self._record_nodes()
        if delete:
            from kubernetes import client

            with contextlib.suppress(client.ApiException):
                client.CoreV1Api(self.api_client()).delete_node(name)

    def api_client(self) -> Any:
        """A `kubernetes.client.ApiClient` with cluster-admin rights."""
        return self.control_plane.kubernetes_client()

    def _start_node(self, name: str, provisioner: bool) -> NodeProcess:
        cp = self.control_plane
        kubeconfig = cp.client_kubeconfig(f"node-{name}", f"system:node:{name}", ("system:nodes",))
        folder = self.folder / "nodes" / name
        folder.mkdir(parents=True, exist_ok=True)
        args = [sys.executable, str(NODE_AGENT), "--kubeconfig", str(kubeconfig), "--node-name", name,
                "--dir", str(folder), "--pvc-root", str(self.folder / "pvc"), "--gpus", str(self.gpus),
                "--forward-ports", ",".join(str(p) for p in (cp.api_port, *self.forward_ports)),
                "--forward-ports-file", str(self.folder / "forward-ports")]
        args += ["--models", str(self.models)]
        if provisioner:
            args += ["--admin-kubeconfig", str(cp.kubeconfig)]
        process = _start_process(f"node-agent-{name}", args, cp.logs)
        return NodeProcess(name, process.popen, process.log, folder)

    def wait_node_ready(self, name: str, timeout: float = 60) -> None:
        cp = self.control_plane
        cert, key = cp.ca.issue("admin", "cogtrain-test-admin", ("system:masters",))
        context = ssl.create_default_context(cafile=str(cp.ca.cert_path))
        context.load_cert_chain(str(cert), str(key))

        def ready() -> bool:
            status, body = _get(f"{cp.server}/api/v1/nodes/{name}", context)
            if status != 200:
                return False
            conditions = json.loads(body).get("status", {}).get("conditions") or []
            return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

        node = self.nodes.get(name)
        watched = [Process(node.name, node.popen, node.log)] if node else []
        _wait(f"node {name} Ready", ready, timeout, watched or cp.processes, interval=0.2)

    def add_forward_port(self, port: int) -> None:
        """Pods started from now on reach 127.0.0.1:PORT of this machine at 127.0.0.1:PORT of their own loopback."""
        with (self.folder / "forward-ports").open("a") as out:
            out.write(f"{port}\n")

    def stop(self) -> None:
        nodes, self.nodes = list(self.nodes.values()), {}
        terminate([n.popen.pid for n in nodes if n.popen.poll() is None], grace=30)
        for node in nodes:
            try:
                node.popen.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        self.control_plane.stop()
        cleanup_node_leftovers(self.folder)


def _absolute(target: str, base: Path) -> str:
    path = Path(target)
    if not path.is_absolute():
        path = base / path if (base / path).exists() else ROOT / path
    if not (path / "cog.yaml").exists():
        raise ValueError(f"{path} is not a Cog model folder (no cog.yaml)")
    return str(path.resolve())


def cleanup_node_leftovers(folder: Path) -> None:
    """What a killed node agent may leave: its Pods' processes and network namespaces (named in its folder)."""
    for node in (folder / "nodes").glob("*") if (folder / "nodes").exists() else []:
        stragglers = []
        for record in node.glob("pods/*/processes/*.json"):
            try:
                entry = json.loads(record.read_text())
            except (OSError, ValueError):
                continue
            if entry.get("start") and _start_time(int(entry["pid"])) == entry["start"]:
                stragglers.append(int(entry["pid"]))
        if stragglers:
            terminate(stragglers, grace=2)
        for record in node.glob("pods/*/netns"):
            name = record.read_text().strip()
            if name and Path("/run/netns", name).exists():
                subprocess.run(["ip", "netns", "delete", name], check=False, capture_output=True, timeout=30)


def stop_recorded(folder: Path) -> list[str]:
    """End the processes DIR/processes.json names (nodes first), if they are still the same processes."""
    folder = Path(folder).resolve()
    path = folder / PROCESSES_FILE
    if not path.exists():
        return []
    data = json.loads(path.read_text())
    stopped = []
    for group, grace in (("nodes", 30.0), ("control_plane", 10.0)):
        entries = [e for e in data.get(group, []) if e.get("start") and _start_time(e["pid"]) == e["start"]]
        if group == "control_plane":
            order = {"kube-scheduler": 0, "kube-controller-manager": 0, "kube-apiserver": 1, "etcd": 2}
            for rank in (0, 1, 2):
                terminate([e["pid"] for e in entries if order.get(e["name"], 0) == rank], grace)
        else:
            terminate([e["pid"] for e in entries], grace)
        stopped += [e["name"] for e in entries]
    cleanup_node_leftovers(folder)
    path.unlink()
    return stopped


# --- pytest ---------------------------------------------------------------------------------------------------


def cluster_fixture(name: str = "cluster", **options: Any) -> Any:
    """A session-scoped pytest fixture that starts a Cluster once per session and stops it at the end.

    In conftest.py: `cluster = cluster_fixture()` (options: nodes=, models=, gpus=, forward_ports=).
    """
    import pytest

    @pytest.fixture(scope="session", name=name)
    def _cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
        # A short folder: unix socket paths and netns names stay short, and logs are easy to find.
        folder = tmp_path_factory.mktemp("cluster")
        cluster = Cluster(folder, **options)
        try:
            cluster.start()
        except BaseException:
            cluster.stop()
            raise
        try:
            yield cluster
        finally:
            cluster.stop()

    return _cluster


# --- scripts/cluster ------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="scripts/cluster", description="A Kubernetes control plane and node "
                                     "agents on loopback, in the background (docs/cluster.md).")
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="start; returns when every node is Ready")
    up.add_argument("dir", type=Path)
    up.add_argument("--models", type=Path, help='JSON: image repository -> Cog model folder or "host"')
    up.add_argument("--nodes", type=int, default=1)
    up.add_argument("--gpus", type=int, default=4, help="nvidia.com/gpu per node")
    up.add_argument("--forward-port", type=int, action="append", default=[],
                    help="a loopback port of this machine that Pods reach at the same address (repeatable)")
    down = commands.add_parser("down", help="stop what `up` started")
    down.add_argument("dir", type=Path)
    args = parser.parse_args(argv)
    folder = args.dir.resolve()
    if args.command == "down":
        stopped = stop_recorded(folder)
        print(f"stopped {', '.join(stopped)}" if stopped else f"nothing running for {folder}")
        return 0
    if (folder / PROCESSES_FILE).exists() and any(
            _start_time(e["pid"]) == e.get("start")
            for e in json.loads((folder / PROCESSES_FILE).read_text()).get("control_plane", [])):
        print(f"a cluster already runs in {folder}; `scripts/cluster down {args.dir}` first", file=sys.stderr)
        return 1
    folder.mkdir(parents=True, exist_ok=True)
    models = args.models.resolve() if args.models else None
    cluster = Cluster(folder, nodes=tuple(f"node-{i}" for i in range(1, args.nodes + 1)), models=models,
                      gpus=args.gpus, forward_ports=tuple(args.forward_port))
    try:
        cluster.start()
    except BaseException as error:
        print(f"the cluster did not start: {error}", file=sys.stderr)
        return 1
    timings = ", ".join(f"{k} {v:.1f} s" for k, v in cluster.timings.items() if k not in ("binaries", "total"))
    print(f"cluster up in {cluster.timings['total']:.1f} s ({timings})")
    print(f"  export KUBECONFIG={cluster.kubeconfig}")
    print(f"  kubectl: {cluster.control_plane.kubectl}")
    print(f"  logs: {cluster.control_plane.logs}/")
    print(f"  stop: scripts/cluster down {args.dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
