"""What the end-to-end suite (tests/test_e2e.py, docs/e2e.md) needs besides the cluster itself.

- `Kubectl`: the cluster's own kubectl, run as a user runs it (`kubectl --kubeconfig DIR/kubeconfig ...`).
- `install_chart()`: the Helm chart's objects, rendered by Helm's engine (support/chart.py), applied to the
  real API server with its CRDs; the webhook configuration's `service` is rewritten to a loopback `url`
  (as envtest does: there is no Service routing here), and the webhook's TLS Secret is made beforehand
  with `cogtrain.certs` for the Service's names plus 127.0.0.1, which the API server dials. The operator
  keeps that Secret (it serves the names it needs) and writes its CA into the configuration's caBundle.
- `OperatorProcess`: `.venv/bin/cogtrain operator` as its own process, with the arguments and environment
  of the chart's Deployment, authenticated by a token of the chart's ServiceAccount (TokenRequest API), so
  the chart's RBAC is what the API server enforces.
- `push_model()`: a Cog model folder as an image in a test registry (its schema label) and mapped to that
  folder for the node agent, so the operator reads the schema from the registry and the Pod runs the model.
- Reading Trainings and waiting for them, each wait bounded.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client

from cogtrain import certs
from cogtrain.local import free_port
from support.chart import FULLNAME, NAMESPACE, operator_container, render_chart, service_account_name
from support.control_plane import Cluster
from support.paths import ROOT
from support.registry_server import Registry

VENV_BIN = ROOT / ".venv" / "bin"
CRDS = ROOT / "crds"
CHART_CRDS = ROOT / "charts" / "cog-training-operator" / "crds"
DRIVER_IMAGE = "cogtrain.test/cogtrain:e2e"  # any image: the node agent runs a `cogtrain` command from .venv
WEBHOOK_SECRET = f"{FULLNAME}-webhook-tls"
GROUP, VERSION, PLURAL = "cog.run", "v1alpha1", "trainings"


def wait_for(what: str, check: Callable[[], Any], timeout: float = 60, interval: float = 0.25) -> Any:
    """Poll `check` until it returns something truthy; an API error counts as "not yet" until the end."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = check()
        except client.ApiException as error:
            last = error
        else:
            if last:
                return last
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g} s (last: {last!r})")
        time.sleep(interval)


# --- kubectl --------------------------------------------------------------------------------------------------


@dataclass
class Kubectl:
    binary: Path
    kubeconfig: Path

    def run(self, *args: str, stdin: str | None = None, check: bool = True,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([str(self.binary), "--kubeconfig", str(self.kubeconfig), *args], input=stdin,
                              capture_output=True, text=True, timeout=timeout, check=False)
        if check and done.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} exited {done.returncode}:\n{done.stderr}{done.stdout}")
        return done

    def apply(self, manifests: str | dict[str, Any] | list[dict[str, Any]], *args: str,
              check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """`kubectl apply -f -` of YAML text, one object, or several (a List)."""
        if isinstance(manifests, dict):
            manifests = [manifests]
        text = manifests if isinstance(manifests, str) else yaml.safe_dump_all(manifests, sort_keys=False)
        return self.run("apply", "-f", "-", *args, stdin=text, check=check, timeout=timeout)


def kubectl_for(cluster: Cluster) -> Kubectl:
    return Kubectl(cluster.control_plane.kubectl, cluster.kubeconfig)


# --- images ---------------------------------------------------------------------------------------------------


def cog_labels_of(folder: Path) -> dict[str, str]:
    """The labels `cog build` puts on an image of this Cog model folder (as support/registries.cog_labels)."""
    config = yaml.safe_load((folder / "cog.yaml").read_text())
    return {"run.cog.openapi_schema": (folder / ".cog" / "openapi_schema.json").read_text(),
            "run.cog.config": json.dumps(config), "run.cog.version": "0.23.1"}


def push_model(cluster: Cluster, registry: Registry, name: str, folder: Path, tag: str = "1.0") -> str:
    """Push `folder` as `HOST/e2e/NAME:TAG` and map that repository to the folder on the nodes; the image."""
    repository = f"e2e/{name}"
    registry.push_image(repository, tag, cog_labels_of(folder))
    cluster.add_model(f"{registry.host}/{repository}", folder)
    return f"{registry.host}/{repository}:{tag}"


# --- the chart ------------------------------------------------------------------------------------------------


@dataclass
class Installation:
    """The chart as installed: its release namespace, ServiceAccount and loopback webhook."""

    namespace: str
    service_account: str
    webhook_port: int
    ca: bytes
    objects: list[dict[str, Any]]
    deployment: dict[str, Any]
    dry_run: str = ""  # what `kubectl apply --dry-run=server` said of the Deployment
    crds_refused: dict[str, str] = field(default_factory=dict)  # file name -> the API server's message


def loopback_webhooks(objects: list[dict[str, Any]], port: int) -> list[dict[str, Any]]:
    """The objects with each webhook's `clientConfig.service` replaced by https://127.0.0.1:PORT/PATH."""
    objects = copy.deepcopy(objects)
    for obj in objects:
        if obj["kind"] != "ValidatingWebhookConfiguration":
            continue
        for hook in obj["webhooks"]:
            service = hook["clientConfig"].pop("service")
            hook["clientConfig"]["url"] = f"https://127.0.0.1:{port}{service.get('path', '/')}"
    return objects


def install_crds(kubectl: Kubectl) -> dict[str, str]:
    """crds/ (the Training CRD) and the chart's kopf peering CRDs, as `helm install` puts them in first.

    Returns what the API server refused, by file name. A CRD refused for declaring more than `type: object`
    for `metadata`, or for CEL rules that do not compile, is applied again without those (so the rest of the
    suite can run); the refusal is kept for the test that checks the CRD as it is.
    """
    files = [CRDS / "cog.run_trainings.yaml", *sorted(CHART_CRDS.glob("kopf.dev_*.yaml"))]
    refused: dict[str, str] = {}
    for path in files:
        crd = yaml.safe_load(path.read_text())
        for _ in range(10):
            done = kubectl.apply(crd, "--server-side", check=False)
            if done.returncode == 0:
                break
            message = done.stderr.strip()
            refused[path.name] = refused.get(path.name, "") + message + "\n"
            if not _reduce_refused(crd, message):
                raise AssertionError(f"the API server refused {path}:\n{message}")
        else:
            raise AssertionError(f"the API server kept refusing {path}:\n{refused[path.name]}")
    for path in files:
        name = yaml.safe_load(path.read_text())["metadata"]["name"]
        kubectl.run("wait", "--for=condition=Established", f"crd/{name}", "--timeout=30s", timeout=40)
    return refused


def _reduce_refused(crd: dict[str, Any], message: str) -> bool:
    """Take out of `crd` what the API server's message names: a `metadata` schema, CEL rules of `spec`."""
    changed = False
    for version in crd["spec"]["versions"]:
        schema = version["schema"]["openAPIV3Schema"]
        if "properties[metadata]: Forbidden" in message and schema["properties"].get("metadata") != {"type": "object"}:
            schema["properties"]["metadata"] = {"type": "object"}
            changed = True
        bad = {int(i) for i in re.findall(r"properties\[spec\]\.x-kubernetes-validations\[(\d+)\]\.rule", message)}
        rules = schema["properties"]["spec"].get("x-kubernetes-validations") or []
        if bad:
            schema["properties"]["spec"]["x-kubernetes-validations"] = [
                rule for index, rule in enumerate(rules) if index not in bad]
            changed = True
    return changed


def webhook_tls_secret(service: str, namespace: str) -> tuple[dict[str, Any], bytes]:
    """The Secret the operator keeps its self-signed TLS in, made for the Service's names and 127.0.0.1."""
    bundle = certs.generate([*certs.dns_names(service, namespace), "127.0.0.1"])
    secret = {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
              "metadata": {"name": WEBHOOK_SECRET, "namespace": namespace},
              "data": {"ca.crt": base64.b64encode(bundle.ca).decode(),
                       "tls.crt": base64.b64encode(bundle.cert).decode(),
                       "tls.key": base64.b64encode(bundle.key).decode()}}
    return secret, bundle.ca


def install_chart(kubectl: Kubectl, values: dict[str, Any] | None = None) -> Installation:
    """The chart's templates applied (the Deployment only checked by a server-side dry run: the operator runs
    as a process here), after the release namespace, the CRDs and the webhook's TLS Secret."""
    refused = install_crds(kubectl)
    kubectl.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})
    port = free_port()
    objects = loopback_webhooks(render_chart(values), port)
    deployment = next(o for o in objects if o["kind"] == "Deployment")
    rest = [o for o in objects if o["kind"] != "Deployment"]
    service = next(o["metadata"]["name"] for o in objects if o["kind"] == "Service" and "webhook" in o["metadata"]["name"])
    secret, ca = webhook_tls_secret(service, NAMESPACE)
    kubectl.apply([secret, *rest])
    dry_run = kubectl.apply(deployment, "--dry-run=server")
    return Installation(NAMESPACE, service_account_name(values), port, ca, rest, deployment,
                        dry_run.stdout + dry_run.stderr, refused)


def uninstall_chart(kubectl: Kubectl, installation: Installation) -> None:
    """What install_chart made that would affect other tests of the session: the webhook configuration first."""
    hooks = [o for o in installation.objects if o["kind"] == "ValidatingWebhookConfiguration"]
    others = [o for o in installation.objects if o["kind"] != "ValidatingWebhookConfiguration"]
    for group in (hooks, others):
        kubectl.run("delete", "--ignore-not-found", "--wait=false", "-f", "-",
                    stdin=yaml.safe_dump_all(group), check=False)


def service_account_kubeconfig(api: client.ApiClient, cluster: Cluster, namespace: str, account: str,
                               path: Path, seconds: int = 3600) -> Path:
    """A kubeconfig authenticating with a token of the ServiceAccount (TokenRequest API), as a Pod's would."""
    token = client.CoreV1Api(api).create_namespaced_service_account_token(
        account, namespace, {"spec": {"expirationSeconds": seconds}}).status.token
    config = {
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "e2e", "cluster": {"server": cluster.control_plane.server,
                                                 "certificate-authority": str(cluster.control_plane.ca.cert_path)}}],
        "users": [{"name": account, "user": {"token": token}}],
        "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": account, "namespace": namespace}}],
        "current-context": "e2e",
    }
    path.write_text(json.dumps(config, indent=2) + "\n")
    path.chmod(0o600)
    return path


# --- the operator as its own process ------------------------------------------------------------------------


def chart_operator_command(values: dict[str, Any] | None, *, liveness_port: int, webhook_port: int,
                           metrics_port: int, driver_image: str) -> tuple[list[str], dict[str, str]]:
    """The chart Deployment's `args` and plain `env`, with its ports moved to free loopback ones (the Pod's
    network would keep them apart) and the driver image replaced by one the node agent runs."""
    container = operator_container(values)
    args = []
    for arg in container["args"]:
        if arg.startswith("--liveness="):
            arg = f"--liveness=http://127.0.0.1:{liveness_port}/healthz"
        elif arg.startswith("--webhook-port="):
            arg = f"--webhook-port={webhook_port}"
        elif arg.startswith("--metrics-port="):
            arg = f"--metrics-port={metrics_port}"
        args.append(arg)
    env = {item["name"]: item["value"] for item in container["env"] if "value" in item}
    for item in container["env"]:  # the downward API: POD_NAMESPACE
        if (item.get("valueFrom") or {}).get("fieldRef", {}).get("fieldPath") == "metadata.namespace":
            env[item["name"]] = NAMESPACE
    env["COGTRAIN_DRIVER_IMAGE"] = driver_image
    return [*args, f"--driver-image={driver_image}"], env


@dataclass
class OperatorProcess:
    """`cogtrain operator` with the chart's arguments; restartable; its output in `folder/operator-N.log`."""

    folder: Path
    kubeconfig: Path
    args: list[str]
    env: dict[str, str]
    liveness_port: int
    webhook_port: int
    metrics_port: int
    popen: subprocess.Popen[bytes] | None = None
    starts: int = 0
    logs: list[Path] = field(default_factory=list)

    @classmethod
    def from_chart(cls, installation: Installation, folder: Path, kubeconfig: Path,
                   values: dict[str, Any] | None = None, driver_image: str = DRIVER_IMAGE) -> OperatorProcess:
        liveness, metrics = free_port(), free_port()
        args, env = chart_operator_command(values, liveness_port=liveness, webhook_port=installation.webhook_port,
                                           metrics_port=metrics, driver_image=driver_image)
        return cls(folder, kubeconfig, args, env, liveness, installation.webhook_port, metrics)

    def start(self, timeout: float = 60) -> OperatorProcess:
        assert self.popen is None or self.popen.poll() is not None, "already running"
        self.starts += 1
        log = self.folder / f"operator-{self.starts}.log"
        self.logs.append(log)
        environ = {k: v for k, v in os.environ.items()
                   if not k.startswith(("KUBERNETES_", "COGTRAIN_")) and k != "KUBECONFIG"}
        environ.update(self.env, KUBECONFIG=str(self.kubeconfig), PYTHONUNBUFFERED="1")
        with log.open("wb") as out:
            self.popen = subprocess.Popen([str(VENV_BIN / "cogtrain"), *self.args], stdin=subprocess.DEVNULL,
                                          stdout=out, stderr=subprocess.STDOUT, env=environ,
                                          start_new_session=True, cwd=self.folder)
        wait_for("the operator's liveness endpoint and webhook port", self._up, timeout)
        return self

    def _up(self) -> bool:
        assert self.popen is not None
        if self.popen.poll() is not None:
            raise AssertionError(f"the operator exited with {self.popen.returncode}:\n{self.log_tail()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.liveness_port}/healthz", timeout=2) as answer:
                if answer.status != 200:
                    return False
        except (urllib.error.URLError, OSError):
            return False
        try:
            socket.create_connection(("127.0.0.1", self.webhook_port), timeout=1).close()
        except OSError:
            return False
        return True

    def check_running(self) -> None:
        """Fail with the operator's last words if it is not running."""
        assert self.popen is not None, "the operator was never started"
        code = self.popen.poll()
        assert code is None, f"the operator exited with {code}; its log ends:\n{self.log_tail()}"

    def kill(self) -> None:
        """SIGKILL, as the kernel's OOM killer or a node failure would end it: no clean-up of any kind."""
        assert self.popen is not None
        self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(timeout=10)

    def stop(self) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(timeout=10)

    def log_text(self) -> str:
        return "".join(path.read_text(errors="replace") for path in self.logs if path.exists())

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])


# --- Trainings ------------------------------------------------------------------------------------------------


def training_manifest(name: str, model: str, inputs: dict[str, Any], destination: str,
                      **spec: Any) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Training", "metadata": {"name": name},
            "spec": {"model": model, "input": inputs, "destination": destination, **spec}}


def read_training(api: client.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    found: dict[str, Any] = client.CustomObjectsApi(api).get_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, name)
    return found


def condition(training: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in (training.get("status") or {}).get("conditions") or [] if c["type"] == kind), {})


def wait_phase(api: client.ApiClient, namespace: str, name: str, phases: str | Iterable[str],
               timeout: float = 90) -> dict[str, Any]:
    wanted = {phases} if isinstance(phases, str) else set(phases)

    def reached() -> dict[str, Any] | None:
        training = read_training(api, namespace, name)
        return training if (training.get("status") or {}).get("phase") in wanted else None
    try:
        return wait_for(f"Training {namespace}/{name} to be {'/'.join(sorted(wanted))}", reached, timeout)
    except AssertionError as error:
        status = (read_training(api, namespace, name).get("status") or {})
        status.pop("kopf", None)
        conditions = [(c["type"], c["status"], c.get("reason"), c.get("message", "")[:200])
                      for c in status.pop("conditions", None) or []]
        raise AssertionError(f"{error}; its status: {json.dumps(status)[:1000]}; conditions: {conditions}") from None


def jobs_of(api: client.ApiClient, namespace: str, training: str | None = None) -> list[client.V1Job]:
    selector = "app.kubernetes.io/managed-by=cog-training-operator"
    if training is not None:
        selector += f",cog.run/training={training}"
    return list(client.BatchV1Api(api).list_namespaced_job(namespace, label_selector=selector).items)


def pods_of(api: client.ApiClient, namespace: str, training: str) -> list[client.V1Pod]:
    return list(client.CoreV1Api(api).list_namespaced_pod(
        namespace, label_selector=f"cog.run/training={training}").items)


def events_of(api: client.ApiClient, namespace: str, name: str) -> list[client.CoreV1Event]:
    return list(client.CoreV1Api(api).list_namespaced_event(
        namespace, field_selector=f"involvedObject.name={name}").items)


# --- a lagging watch --------------------------------------------------------------------------------------------


class LaggingProxy:
    """An HTTPS proxy in front of the API server that delivers the chunks of Pod watches `delay` seconds late.

    Kubernetes promises no order between two watches: an informer of Pods may be seconds behind one of Jobs
    on a busy operator. Pointing the operator's kubeconfig here makes that lag certain. Every request is
    forwarded as it came (its bearer token included) with `Connection: close`, so each connection carries
    one request and its response ends with the connection.
    """

    def __init__(self, cluster: Cluster, folder: Path, delay: float) -> None:
        import ssl
        import threading

        cp = cluster.control_plane
        cert, key = cp.ca.issue("e2e-lagging-proxy", "e2e-lagging-proxy", server=True, hosts=("127.0.0.1",))
        self.server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.server_context.load_cert_chain(str(cert), str(key))
        self.upstream_context = ssl.create_default_context(cafile=str(cp.ca.cert_path))
        self.upstream = ("127.0.0.1", cp.api_port)
        self.delay = delay
        self.folder = folder
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.delayed_requests = 0
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="lagging-proxy", daemon=True)
        self._thread.start()

    def kubeconfig(self, like: Path) -> Path:
        """A copy of kubeconfig `like` (a token user) that reaches the API server through this proxy."""
        config = json.loads(like.read_text())
        config["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{self.port}"
        path = self.folder / f"lagging-{like.name}"
        path.write_text(json.dumps(config, indent=2) + "\n")
        path.chmod(0o600)
        return path

    def stop(self) -> None:
        self._stopping.set()
        self.listener.close()

    def _accept(self) -> None:
        import threading

        while not self._stopping.is_set():
            try:
                raw, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        try:
            downstream = self.server_context.wrap_socket(raw, server_side=True)
        except OSError:
            raw.close()
            return
        try:
            head, rest = self._read_head(downstream)
            if head is None:
                return
            lines = head.split(b"\r\n")
            request_line = lines[0].decode("latin-1")
            headers = [line for line in lines[1:] if line and not line.lower().startswith(b"connection:")]
            length = next((int(line.split(b":", 1)[1]) for line in headers
                           if line.lower().startswith(b"content-length:")), 0)
            body = rest
            while len(body) < length:
                chunk = downstream.recv(65536)
                if not chunk:
                    return
                body += chunk
            upstream = self.upstream_context.wrap_socket(socket.create_connection(self.upstream, timeout=30),
                                                         server_hostname="127.0.0.1")
            upstream.settimeout(None)
            upstream.sendall(b"\r\n".join([lines[0], *headers, b"Connection: close", b"", b""]) + body)
            method, target = request_line.split(" ")[:2]
            lag = self.delay if method == "GET" and re.search(r"/pods(\?|$)", target) and "watch=" in target else 0
            if lag:
                self.delayed_requests += 1
            self._relay(upstream, downstream, lag)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                downstream.close()

    @staticmethod
    def _read_head(sock: Any) -> tuple[bytes | None, bytes]:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                return None, b""
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        return head, rest

    def _relay(self, upstream: Any, downstream: Any, lag: float) -> None:
        import queue
        import threading

        pending: queue.Queue[tuple[float, bytes]] = queue.Queue()

        def send() -> None:
            while True:
                due, chunk = pending.get()
                time.sleep(max(0.0, due - time.monotonic()))
                if not chunk:
                    break
                try:
                    downstream.sendall(chunk)
                except OSError:
                    break
            with contextlib.suppress(OSError):
                upstream.close()

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        try:
            while not self._stopping.is_set():
                chunk = upstream.recv(65536)
                pending.put((time.monotonic() + lag, chunk))
                if not chunk:
                    break
        except OSError:
            pending.put((time.monotonic(), b""))
        sender.join(timeout=lag + 35)
