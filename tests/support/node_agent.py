"""A node agent for tests: a small kubelet that runs each container as a local process (docs/cluster.md).

    .venv/bin/python tests/support/node_agent.py --kubeconfig NODE.kubeconfig --node-name node-1 --dir DIR
        [--models MODELS.json] [--gpus 4] [--admin-kubeconfig ADMIN.kubeconfig] [--forward-ports 6443,...]

It registers a Node (cpu, memory, pods and `nvidia.com/gpu` capacity; Ready), renews its Lease in
kube-node-lease, and runs the Pods the scheduler binds to it:

- each Pod gets its own network namespace (`ip netns add`, loopback up), so two Pods can both listen on
  127.0.0.1:5000; chosen ports of this machine's loopback (the API server's, by default) are forwarded
  into it, so a Pod reaches 127.0.0.1:PORT as processes on this machine do;
- each container is a process (support/pod_exec.py) in that network namespace and in a private mount
  namespace where the volumes (emptyDir, PVC, hostPath, configMap, secret, projected, downwardAPI) and the
  termination-message file are bind-mounted at their paths; readOnlyRootFilesystem makes `/` read-only
  and dropped capabilities are dropped; runAsUser is not applied (see docs/cluster.md);
- images: `--models` maps image repositories to Cog model folders (run with Cog's server from this
  project's .venv) or to "host" (the command runs as it is); a container whose command is `cogtrain` runs
  this project's .venv/bin/cogtrain; anything else waits in ErrImagePull/ImagePullBackOff;
- native sidecars, init containers, restart policies, startup/readiness probes, termination messages,
  pods/status as the kubelet writes it, graceful deletion (SIGTERM, grace period, SIGKILL, final status,
  then delete with grace period 0), container logs for `kubectl logs` (an HTTPS endpoint on loopback).

SIGUSR1 makes the node NotReady (Ready=False, Lease no longer renewed); SIGUSR2 makes it Ready again;
SIGSTOP/SIGCONT simulate a hung kubelet; SIGTERM stops it (its containers are killed, the Pods stay).
With --admin-kubeconfig it also provisions PersistentVolumes (hostPath folders under --pvc-root) for claims
of the default StorageClass `standard` it creates.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import ctypes
import hashlib
import http.client
import json
import math
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import traceback
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = ROOT / ".venv" / "bin"
POD_EXEC = Path(__file__).resolve().parent / "pod_exec.py"
HOST_IMAGE = "cogtrain.test/host"  # always runs its command on this machine (the tests' plain Pods)
PROVISIONER = "cogtrain.test/local-path"
STORAGE_CLASS = "standard"
KUBELET_VERSION = "v1.37.2"
TERMINATION_LIMIT = 4096
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
MIRROR_LABELS = ("kubernetes.io/hostname",)


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def micro_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def log(message: str) -> None:
    sys.stderr.write(f"{datetime.now(UTC).strftime('%H:%M:%S.%f')[:-3]} {message}\n")
    sys.stderr.flush()


# --- a small REST client (stdlib: http.client with the kubeconfig's client certificate) ------------------------


class ApiError(Exception):
    def __init__(self, status: int, body: Any) -> None:
        self.status = status
        self.body = body
        message = body.get("message") if isinstance(body, dict) else str(body)[:300]
        super().__init__(f"{status}: {message}")


class Kube:
    """JSON over HTTPS to the API server, one keep-alive connection per thread."""

    def __init__(self, kubeconfig: Path) -> None:
        import yaml

        config = yaml.safe_load(Path(kubeconfig).read_text())
        context_name = config.get("current-context") or config["contexts"][0]["name"]
        context = next(c["context"] for c in config["contexts"] if c["name"] == context_name)
        cluster = next(c["cluster"] for c in config["clusters"] if c["name"] == context["cluster"])
        user = next(u["user"] for u in config["users"] if u["name"] == context["user"])
        url = urllib.parse.urlsplit(cluster["server"])
        self.host, self.port = url.hostname or "127.0.0.1", url.port or 443
        self.ssl = ssl.create_default_context(cafile=cluster.get("certificate-authority"))
        self.ssl.load_cert_chain(user["client-certificate"], user["client-key"])
        self._local = threading.local()

    def _connection(self, timeout: float) -> http.client.HTTPSConnection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = http.client.HTTPSConnection(self.host, self.port, context=self.ssl, timeout=timeout)
            self._local.connection = connection
        connection.timeout = timeout
        if connection.sock is not None:
            connection.sock.settimeout(timeout)
        return connection

    def request(self, method: str, path: str, body: Any = None, *, content_type: str = "application/json",
                timeout: float = 30, ok_missing: bool = False) -> Any:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = content_type
        for attempt in range(2):
            connection = self._connection(timeout)
            try:
                connection.request(method, path, body=data, headers=headers)
                response = connection.getresponse()
                raw = response.read()
                break
            except (OSError, http.client.HTTPException):
                connection.close()
                self._local.connection = None
                if attempt:
                    raise
        try:
            answer = json.loads(raw) if raw else None
        except ValueError:
            answer = raw.decode(errors="replace")
        if response.status == 404 and ok_missing:
            return None
        if response.status >= 400:
            raise ApiError(response.status, answer)
        return answer

    def watch(self, path: str, params: dict[str, str], timeout: int) -> Iterator[dict[str, Any]]:
        """The events of one watch request; ends when the server closes it (after `timeout` seconds)."""
        query = urllib.parse.urlencode({**params, "watch": "1", "timeoutSeconds": str(timeout),
                                        "allowWatchBookmarks": "true"})
        connection = http.client.HTTPSConnection(self.host, self.port, context=self.ssl, timeout=timeout + 15)
        try:
            connection.request("GET", f"{path}?{query}", headers={"Accept": "application/json"})
            response = connection.getresponse()
            if response.status >= 400:
                raise ApiError(response.status, response.read().decode(errors="replace"))
            while True:
                line = response.readline()
                if not line:
                    return
                if line.strip():
                    yield json.loads(line)
        finally:
            connection.close()


def path_of(pod: dict[str, Any], sub: str = "") -> str:
    meta = pod["metadata"]
    return f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}{sub}"


# --- images ---------------------------------------------------------------------------------------------------


def repository_of(image: str) -> str:
    """`host:port/path` without tag or digest."""
    name = image.split("@", 1)[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    return name[:colon] if colon > slash else name


def _normalized(repository: str) -> str:
    first = repository.split("/", 1)[0]
    if "/" not in repository:
        return f"docker.io/library/{repository}"
    if "." not in first and ":" not in first and first != "localhost":
        return f"docker.io/{repository}"
    return repository


@dataclass
class Image:
    """What runs for an image: a Cog model folder, this machine (`host`), or this project's cogtrain."""

    kind: str  # "model", "host" or "cogtrain"
    folder: Path | None = None
    train_stub: str | None = None
    predict_stub: str | None = None


def load_models(path: Path | None) -> dict[str, Image]:
    images: dict[str, Image] = {HOST_IMAGE: Image("host")}
    if path is None:
        return images
    import yaml

    base = Path(path).resolve().parent
    for repository, target in json.loads(Path(path).read_text()).items():
        if target == "host":
            images[_normalized(repository_of(repository))] = Image("host")
            continue
        folder = Path(target)
        folder = folder if folder.is_absolute() else (base / folder).resolve()
        if not folder.exists():
            folder = (ROOT / target).resolve()
        config = yaml.safe_load((folder / "cog.yaml").read_text()) or {}
        images[_normalized(repository_of(repository))] = Image(
            "model", folder, config.get("train"), config.get("predict"))
    return {_normalized(k): v for k, v in images.items()}


# --- quantities -----------------------------------------------------------------------------------------------

_SUFFIXES = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60, "n": 1e-9, "u": 1e-6,
             "m": 1e-3, "": 1, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18}


def quantity(value: str | int | float) -> float:
    match = re.fullmatch(r"([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)([a-zA-Z]*)", str(value).strip())
    if not match or match.group(2) not in _SUFFIXES:
        raise ValueError(f"not a quantity: {value!r}")
    return float(match.group(1)) * _SUFFIXES[match.group(2)]


# --- network namespaces and forwarding ------------------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000


def in_netns(netns: str | None, function: Callable[[], Any], timeout: float = 30) -> Any:
    """Run `function` on a fresh thread that has joined the network namespace (setns is per thread)."""
    if not netns:
        return function()
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns {netns}")
            finally:
                os.close(fd)
            result["value"] = function()
        except BaseException as error:  # noqa: BLE001 - handed to the caller
            result["error"] = error

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError(f"no answer within {timeout} s in {netns}")
    if "error" in result:
        raise result["error"]
    return result.get("value")


class Forwarder:
    """Listens on 127.0.0.1:PORT inside a Pod's network namespace and relays to 127.0.0.1:PORT of this machine."""

    def __init__(self, netns: str, ports: list[int]) -> None:
        self.stopping = threading.Event()
        self.listeners: list[socket.socket] = []
        for port in ports:
            def listen(port: int = port) -> socket.socket:
                sock = socket.socket()
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(("127.0.0.1", port))
                sock.listen(64)
                sock.settimeout(0.5)
                return sock
            try:
                self.listeners.append(in_netns(netns, listen))
            except OSError as error:
                log(f"cannot forward port {port} into {netns}: {error}")
        for listener in self.listeners:
            threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        port = listener.getsockname()[1]
        while not self.stopping.is_set():
            try:
                inside, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                outside = socket.create_connection(("127.0.0.1", port), timeout=10)
            except OSError:
                inside.close()
                continue
            for a, b in ((inside, outside), (outside, inside)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        source.settimeout(None)
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                sink.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)
            with contextlib.suppress(OSError):
                source.shutdown(socket.SHUT_RD)

    def stop(self) -> None:
        self.stopping.set()
        for listener in self.listeners:
            with contextlib.suppress(OSError):
                listener.close()


# --- probes ---------------------------------------------------------------------------------------------------


class Prober:
    """One probe of one container (startup, readiness or liveness), run on its own thread when due."""

    def __init__(self, kind: str, spec: dict[str, Any], run: Callable[[dict[str, Any], float], bool]) -> None:
        self.kind, self.spec, self.run_probe = kind, spec, run
        self.period = float(spec.get("periodSeconds") or 10)
        self.timeout = float(spec.get("timeoutSeconds") or 1)
        self.failure_threshold = int(spec.get("failureThreshold") or 3)
        self.success_threshold = int(spec.get("successThreshold") or 1)
        self.reset(time.monotonic())

    def reset(self, started: float) -> None:
        self.next = started + float(self.spec.get("initialDelaySeconds") or 0)
        self.successes = self.failures = 0
        self.result: bool | None = None
        self.busy = False

    def poll(self) -> None:
        if self.busy or time.monotonic() < self.next:
            return
        self.busy = True
        self.next = time.monotonic() + self.period

        def probe() -> None:
            try:
                ok = self.run_probe(self.spec, self.timeout)
            except Exception:  # noqa: BLE001 - a probe that cannot run fails
                ok = False
            if ok:
                self.successes, self.failures = self.successes + 1, 0
                if self.successes >= self.success_threshold:
                    self.result = True
            else:
                self.successes, self.failures = 0, self.failures + 1
                if self.failures >= self.failure_threshold:
                    self.result = False
            self.busy = False

        threading.Thread(target=probe, daemon=True).start()


# --- containers -----------------------------------------------------------------------------------------------


class ConfigError(Exception):
    """CreateContainerConfigError: a Secret, ConfigMap or key the container's environment needs is missing."""


class PullError(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class Container:
    spec: dict[str, Any]
    kind: str  # "init", "sidecar" or "main"
    restart_count: int = -1  # becomes 0 at the first start
    state: dict[str, Any] = field(default_factory=lambda: {"waiting": {"reason": "PodInitializing"}})
    last_state: dict[str, Any] = field(default_factory=dict)
    popen: subprocess.Popen[bytes] | None = None
    container_id: str = ""
    image_id: str = ""
    started_at: float = 0.0
    next_attempt: float = 0.0
    backoff: float = 0.0  # the next restart's delay
    delay: float = 0.0  # this restart's
    pull_failed_at: float = 0.0
    probes: dict[str, Prober] = field(default_factory=dict)
    stop_requested: bool = False
    log_path: Path | None = None
    cgroup: Path | None = None
    termination_file: Path | None = None
    error_file: Path | None = None

    @property
    def name(self) -> str:
        return str(self.spec["name"])

    @property
    def running(self) -> bool:
        return "running" in self.state

    @property
    def terminated(self) -> dict[str, Any] | None:
        return self.state.get("terminated")

    @property
    def started(self) -> bool:
        if not self.running:
            return False
        probe = self.probes.get("startup")
        return probe is None or probe.result is True

    @property
    def ready(self) -> bool:
        if not self.started:
            return False
        probe = self.probes.get("readiness")
        return probe is None or probe.result is True


def _signal_number(returncode: int) -> int:
    return -returncode if returncode < 0 else 0


# --- one Pod --------------------------------------------------------------------------------------------------


class PodWorker:
    """Runs one Pod: its sandbox (folder, network namespace, volumes), its containers and its status."""

    def __init__(self, agent: NodeAgent, pod: dict[str, Any]) -> None:
        self.agent = agent
        self.kube = agent.kube
        self.pod = pod
        self.uid = pod["metadata"]["uid"]
        meta = pod["metadata"]
        self.key = f"{meta['namespace']}/{meta['name']}"
        self.folder = agent.folder / "pods" / f"{meta['namespace']}_{meta['name']}_{self.uid[:8]}"
        self.wake = threading.Event()
        self.removed = False  # gone from the API
        self.netns: str | None = None
        self.forwarder: Forwarder | None = None
        self.mounts: dict[str, Path] = {}
        self.sandbox_ready = False
        self.sandbox_error: str | None = None
        self.sandbox_retry_at = 0.0
        self.start_time: str | None = pod.get("status", {}).get("startTime")
        spec = pod["spec"]
        self.containers: list[Container] = []
        for c in spec.get("initContainers") or []:
            self.containers.append(Container(c, "sidecar" if c.get("restartPolicy") == "Always" else "init"))
        for c in spec.get("containers") or []:
            self.containers.append(Container(c, "main"))
        for c in self.containers:
            c.state = {"waiting": {"reason": "PodInitializing" if self._has_init() else "ContainerCreating"}}
        self.readonly_volumes: set[str] = set()
        self.initialized = not any(c.kind in ("init", "sidecar") for c in self.containers)
        self.terminal_phase: str | None = None
        self.published: str = ""
        self.deleted_from_api = False
        self.thread = threading.Thread(target=self._run, name=f"pod {self.key}", daemon=True)

    def _has_init(self) -> bool:
        return any(c.kind in ("init", "sidecar") for c in self.containers)

    # -- the loop --

    def update(self, pod: dict[str, Any]) -> None:
        self.pod = pod
        self.wake.set()

    def gone(self) -> None:
        self.removed = True
        self.wake.set()

    def _run(self) -> None:
        try:
            self._loop()
        except Exception:  # noqa: BLE001 - one Pod's failure must not end the agent
            log(f"pod {self.key}: {traceback.format_exc()}")
            self._kill_all(grace=0)
        finally:
            self._teardown()
            self.agent.forget(self)

    def _loop(self) -> None:
        meta = self.pod["metadata"]
        if self.pod.get("status", {}).get("phase") in ("Succeeded", "Failed"):
            self.terminal_phase = self.pod["status"]["phase"]
        while not self.agent.stopping.is_set():
            if self.removed:
                self._kill_all(grace=2)
                return
            meta = self.pod["metadata"]
            if meta.get("deletionTimestamp"):
                self._delete()
                return
            if self.terminal_phase is None:
                if not self.sandbox_ready and time.monotonic() >= self.sandbox_retry_at:
                    self.sandbox_retry_at = time.monotonic() + 2
                    self._setup_sandbox()
                if self.sandbox_ready:
                    self._step()
                self._publish()
            self.wake.wait(0.2 if self.terminal_phase is None else 5)
            self.wake.clear()
        self._kill_all(grace=5)

    def _step(self) -> None:
        for c in self.containers:
            self._poll(c)
        restart_policy = self.pod["spec"].get("restartPolicy", "Always")
        if not self.initialized:
            for c in (c for c in self.containers if c.kind != "main"):
                if c.kind == "sidecar":
                    self._keep_running(c)
                    if not c.started:
                        return
                    continue
                done = c.terminated
                if done is not None and done["exitCode"] == 0:
                    continue
                if c.running:
                    return
                if done is not None and restart_policy == "Never":
                    self._finish()
                    return
                self._start_when_due(c)
                return
            self.initialized = True
            for c in self.containers:
                if c.kind == "main":
                    c.state = {"waiting": {"reason": "ContainerCreating"}}
        mains = [c for c in self.containers if c.kind == "main"]
        if all(c.terminated is not None for c in mains) and not any(
                restart_policy == "Always" or (restart_policy == "OnFailure" and c.terminated["exitCode"] != 0)
                for c in mains):
            self._finish()
            return
        for c in self.containers:
            if c.kind == "sidecar":
                self._keep_running(c)
        for c in mains:
            done = c.terminated
            if c.running:
                continue
            if done is None:
                self._start_when_due(c)
            elif restart_policy == "Always" or (restart_policy == "OnFailure" and done["exitCode"] != 0):
                self._start_when_due(c)

    def _keep_running(self, c: Container) -> None:
        if not c.running:
            self._start_when_due(c)

    def _start_when_due(self, c: Container) -> None:
        now_ = time.monotonic()
        if now_ >= c.next_attempt:
            self._start(c)
            return
        waiting = c.state.get("waiting") or {}
        if waiting.get("reason") == "ErrImagePull" and now_ - c.pull_failed_at > 2:
            c.state = {"waiting": {"reason": "ImagePullBackOff",
                                   "message": f'Back-off pulling image "{c.spec.get("image")}"'}}
            self.agent.event(self.pod, "Normal", "BackOff", f'Back-off pulling image "{c.spec.get("image")}"')
        elif c.terminated is not None and c.delay > 0:
            meta = self.pod["metadata"]
            c.last_state = {"terminated": c.terminated}
            c.state = {"waiting": {"reason": "CrashLoopBackOff",
                                   "message": f"back-off {int(c.delay)}s restarting failed container={c.name} "
                                              f"pod={meta['name']}_{meta['namespace']}({self.uid})"}}
            self.agent.event(self.pod, "Warning", "BackOff", "Back-off restarting failed container "
                             f"{c.name} in pod {meta['name']}_{meta['namespace']}({self.uid})")

    def _backoff(self, c: Container) -> None:
        """As the kubelet's: the first restart at once, then after 10 s, 20 s, ... up to 5 minutes."""
        c.delay = c.backoff
        c.next_attempt = time.monotonic() + c.backoff
        c.backoff = min(300.0, c.backoff * 2 if c.backoff else 10.0)

    # -- starting a container --

    def _start(self, c: Container) -> None:
        spec = c.spec
        try:
            image = self.agent.resolve_image(spec)
        except PullError as error:
            c.state = {"waiting": {"reason": error.reason, "message": str(error)}}
            c.pull_failed_at = time.monotonic()
            self._backoff(c)
            self.agent.event(self.pod, "Warning", "Failed", f"Failed to pull image \"{spec.get('image')}\": {error}")
            self.agent.event(self.pod, "Warning", "Failed", f"Error: {error.reason}")
            return
        try:
            env = self._environment(spec, image)
        except ConfigError as error:
            c.state = {"waiting": {"reason": "CreateContainerConfigError", "message": str(error)}}
            c.next_attempt = time.monotonic() + 2
            self.agent.event(self.pod, "Warning", "Failed", f"Error: {error}")
            return
        restart = c.restart_count + 1
        folder = self.folder / "containers" / c.name
        folder.mkdir(parents=True, exist_ok=True)
        cwd = spec.get("workingDir")
        if image.kind == "model":
            assert image.folder is not None
            copy = self.folder / "models" / c.name
            if not copy.exists():
                shutil.copytree(image.folder, copy, ignore=shutil.ignore_patterns("__pycache__"), symlinks=True)
            cwd = cwd or str(copy)
            argv = self._argv(spec, env, entrypoint=[], default_cmd=["python", "-m", "cog.server.http"])
        elif image.kind == "cogtrain":
            argv = self._argv(spec, env, entrypoint=[], default_cmd=[])
            argv[0] = str(VENV_BIN / "cogtrain")
        else:
            argv = self._argv(spec, env, entrypoint=[], default_cmd=[])
        if not argv:
            c.state = {"waiting": {"reason": "CreateContainerError", "message": "no command specified"}}
            c.next_attempt = time.monotonic() + 10
            return
        c.termination_file = folder / f"termination-{restart}"
        c.termination_file.write_bytes(b"")
        c.termination_file.chmod(0o666)
        c.error_file = folder / f"start-error-{restart}"
        c.error_file.unlink(missing_ok=True)
        mounts = [{"source": str(c.termination_file), "target": spec.get("terminationMessagePath")
                   or "/dev/termination-log"}]
        try:
            mounts = self._volume_mounts(spec) + mounts
            for mount in mounts:
                self.agent.ensure_mountpoint(Path(mount["target"]), Path(mount["source"]).is_dir())
        except (ConfigError, OSError) as error:
            c.state = {"waiting": {"reason": "CreateContainerConfigError", "message": str(error)}}
            c.next_attempt = time.monotonic() + 2
            return
        security = spec.get("securityContext") or {}
        capabilities = security.get("capabilities") or {}
        privileged = bool(security.get("privileged"))
        exec_spec = {
            "netns": f"/run/netns/{self.netns}" if self.netns else None,
            "mounts": mounts,
            "readOnlyRoot": bool(security.get("readOnlyRootFilesystem")) and not privileged,
            "dropCapabilities": None if privileged or not capabilities.get("drop") else capabilities["drop"],
            "keepCapabilities": capabilities.get("add") or [],
            "noNewPrivs": security.get("allowPrivilegeEscalation") is False,
            "workingDir": cwd or "/",
            "argv": argv,
            "env": env,
            "error_file": str(c.error_file),
        }
        c.cgroup = self.agent.memory_cgroup(self, c, restart)
        if c.cgroup is not None:
            exec_spec["cgroup"] = str(c.cgroup / "cgroup.procs")
        spec_file = folder / f"exec-{restart}.json"
        spec_file.write_text(json.dumps(exec_spec, indent=1))
        c.log_path = folder / f"{restart}.log"
        with c.log_path.open("wb") as out:
            c.popen = subprocess.Popen([sys.executable, "-I", "-S", str(POD_EXEC), str(spec_file)],
                                       stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                       start_new_session=True, close_fds=True)
        self.agent.record_process(self, c)
        if c.restart_count >= 0 and c.terminated:
            c.last_state = {"terminated": c.terminated}
        c.restart_count = restart
        c.started_at = time.monotonic()
        c.container_id = "containerd://" + hashlib.sha256(f"{self.uid}/{c.name}/{restart}".encode()).hexdigest()
        c.image_id = self._image_id(spec.get("image", ""))
        c.state = {"running": {"startedAt": now()}}
        c.stop_requested = False
        c.probes = {}
        for kind in ("startup", "readiness", "liveness"):
            probe = spec.get(f"{kind}Probe")
            if probe:
                c.probes[kind] = Prober(kind, probe, lambda p, t, c=c: self._probe(c, p, t))
        for reason, message in (("Pulled", f'Container image "{spec.get("image")}" already present on machine'),
                                ("Created", f"Created container: {c.name}"), ("Started", f"Started container {c.name}")):
            self.agent.event(self.pod, "Normal", reason, message)

    @staticmethod
    def _image_id(image: str) -> str:
        repository = repository_of(image)
        if "@" in image:
            return f"{repository}@{image.split('@', 1)[1]}"
        return f"{repository}@sha256:{hashlib.sha256(image.encode()).hexdigest()}"

    def _argv(self, spec: dict[str, Any], env: dict[str, str], entrypoint: list[str],
              default_cmd: list[str]) -> list[str]:
        command, args = spec.get("command"), spec.get("args")
        if command:
            argv = list(command) + list(args or [])
        elif args:
            argv = entrypoint + list(args)
        else:
            argv = entrypoint + default_cmd
        return [expand(a, env) for a in argv]

    def _environment(self, spec: dict[str, Any], image: Image) -> dict[str, str]:
        pod = self.pod
        meta = pod["metadata"]
        namespace = meta["namespace"]
        env: dict[str, str] = {}
        service = {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(self.agent.api_port),
                   "KUBERNETES_SERVICE_PORT_HTTPS": str(self.agent.api_port),
                   "KUBERNETES_PORT": f"tcp://127.0.0.1:{self.agent.api_port}"}
        for source in spec.get("envFrom") or []:
            prefix = source.get("prefix", "")
            if "configMapRef" in source:
                ref = source["configMapRef"]
                data = self.agent.get_config(namespace, "configmap", ref["name"], bool(ref.get("optional")))
            else:
                ref = source["secretRef"]
                data = self.agent.get_config(namespace, "secret", ref["name"], bool(ref.get("optional")))
            for key, value in (data or {}).items():
                env[prefix + key] = value
        for var in spec.get("env") or []:
            name = var["name"]
            if "valueFrom" not in var:
                env[name] = expand(var.get("value", ""), {**service, **env})
                continue
            source = var["valueFrom"]
            if "secretKeyRef" in source or "configMapKeyRef" in source:
                kind = "secret" if "secretKeyRef" in source else "configmap"
                ref = source.get("secretKeyRef") or source["configMapKeyRef"]
                optional = bool(ref.get("optional"))
                data = self.agent.get_config(namespace, kind, ref["name"], optional)
                if data is None:
                    continue
                if ref["key"] not in data:
                    if optional:
                        continue
                    kind_name = "Secret" if kind == "secret" else "ConfigMap"
                    raise ConfigError(f"couldn't find key {ref['key']} in {kind_name} {namespace}/{ref['name']}")
                env[name] = data[ref["key"]]
            elif "fieldRef" in source:
                env[name] = self._field(source["fieldRef"]["fieldPath"])
            elif "resourceFieldRef" in source:
                env[name] = self._resource_field(spec, source["resourceFieldRef"])
        for key, value in service.items():
            env.setdefault(key, value)
        env.setdefault("HOSTNAME", meta["name"])
        env.setdefault("HOME", "/root")
        base_path = env.get("PATH", DEFAULT_PATH)
        if image.kind in ("model", "cogtrain", "host"):
            env["PATH"] = f"{VENV_BIN}{os.pathsep}{base_path}"
        if image.kind == "model":
            if image.train_stub:
                env.setdefault("COG_TRAIN_TYPE_STUB", str(image.train_stub))
            if image.predict_stub:
                env.setdefault("COG_PREDICT_TYPE_STUB", str(image.predict_stub))
        return env

    def _field(self, path: str) -> str:
        pod = self.pod
        meta = pod["metadata"]
        match = re.fullmatch(r"metadata\.(labels|annotations)\['(.*)'\]", path)
        if match:
            return str((meta.get(match.group(1)) or {}).get(match.group(2), ""))
        values = {
            "metadata.name": meta["name"], "metadata.namespace": meta["namespace"], "metadata.uid": meta["uid"],
            "spec.nodeName": self.agent.node_name,
            "spec.serviceAccountName": pod["spec"].get("serviceAccountName", "default"),
            "status.hostIP": "127.0.0.1", "status.hostIPs": "127.0.0.1",
            "status.podIP": "127.0.0.1" if not self.netns else "",
            "status.podIPs": "127.0.0.1" if not self.netns else "",
        }
        return str(values.get(path, ""))

    def _resource_field(self, spec: dict[str, Any], ref: dict[str, Any]) -> str:
        section, _, resource = ref["resource"].partition(".")
        value = (spec.get("resources") or {}).get(section, {}).get(resource)
        if value is None:
            value = self.agent.capacity.get(resource, "0")
        divisor = quantity(ref.get("divisor") or "1")
        return str(math.ceil(quantity(value) / divisor))

    # -- volumes --

    def _volume_mounts(self, spec: dict[str, Any]) -> list[dict[str, Any]]:
        mounts = []
        for mount in spec.get("volumeMounts") or []:
            source = self.mounts.get(mount["name"])
            if source is None:
                raise ConfigError(f"volume {mount['name']} is not available")
            if mount.get("subPath"):
                source = source / mount["subPath"]
                if not source.exists():
                    source.mkdir(parents=True, exist_ok=True)
                    source.chmod(0o777)
            mounts.append({"source": str(source), "target": mount["mountPath"],
                           "readOnly": bool(mount.get("readOnly")) or mount["name"] in self.readonly_volumes})
        return mounts

    def _setup_sandbox(self) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            if not self.start_time:
                self.start_time = now()
            for volume in self.pod["spec"].get("volumes") or []:
                self.mounts[volume["name"]] = self._volume(volume)
            if not self.pod["spec"].get("hostNetwork") and self.netns is None:
                name = f"{self.agent.netns_prefix}-{self.uid[:13]}"
                (self.folder / "netns").write_text(name + "\n")
                subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True, timeout=30)
                self.netns = name
                subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True, capture_output=True,
                               timeout=30)
                ports = self.agent.forward_ports()
                if ports:
                    self.forwarder = Forwarder(name, ports)
            self.sandbox_ready = True
            self.sandbox_error = None
        except ConfigError as error:
            if self.sandbox_error != str(error):
                self.agent.event(self.pod, "Warning", "FailedMount", str(error))
            self.sandbox_error = str(error)
        except (OSError, subprocess.SubprocessError) as error:
            detail = getattr(error, "stderr", b"") or b""
            message = f"{error} {detail.decode(errors='replace').strip()}".strip()
            if self.sandbox_error != message:
                self.agent.event(self.pod, "Warning", "FailedCreatePodSandBox", message)
                log(f"pod {self.key}: sandbox: {message}")
            self.sandbox_error = message

    def _volume(self, volume: dict[str, Any]) -> Path:
        name = volume["name"]
        namespace = self.pod["metadata"]["namespace"]
        folder = self.folder / "volumes" / name
        if "emptyDir" in volume:
            folder.mkdir(parents=True, exist_ok=True)
            folder.chmod(0o777)
            return folder
        if "hostPath" in volume:
            path = Path(volume["hostPath"]["path"])
            kind = volume["hostPath"].get("type", "")
            if kind == "DirectoryOrCreate":
                path.mkdir(parents=True, exist_ok=True)
            elif kind == "FileOrCreate" and not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                path.touch()
            if not path.exists():
                raise ConfigError(f'MountVolume.SetUp failed for volume "{name}" : hostPath type check failed: '
                                  f"{path} does not exist")
            return path
        if "persistentVolumeClaim" in volume:
            claim = volume["persistentVolumeClaim"]["claimName"]
            if volume["persistentVolumeClaim"].get("readOnly"):
                self.readonly_volumes.add(name)
            return self.agent.claim_folder(namespace, claim)
        folder.mkdir(parents=True, exist_ok=True)
        self.readonly_volumes.add(name)
        files: dict[str, bytes] = {}
        if "configMap" in volume or "secret" in volume:
            files = self._key_files(volume)
        elif "projected" in volume:
            for source in volume["projected"].get("sources") or []:
                files.update(self._key_files(source))
        elif "downwardAPI" in volume:
            files = self._key_files(volume)
        else:
            raise ConfigError(f'MountVolume.SetUp failed for volume "{name}" : the node agent does not support '
                              f"this volume type ({', '.join(k for k in volume if k != 'name')})")
        for path, content in files.items():
            target = folder / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
            target.chmod(0o644)
        return folder

    def _key_files(self, source: dict[str, Any]) -> dict[str, bytes]:
        namespace = self.pod["metadata"]["namespace"]
        files: dict[str, bytes] = {}
        if "configMap" in source or "secret" in source:
            kind = "configmap" if "configMap" in source else "secret"
            ref = source.get("configMap") or source["secret"]
            name = ref.get("name") or ref.get("secretName")
            data = self.agent.get_config(namespace, kind, name, bool(ref.get("optional")))
            if data is None:
                if ref.get("optional"):
                    return {}
                raise ConfigError(f'MountVolume.SetUp failed for volume : {kind} "{name}" not found')
            items = ref.get("items") or [{"key": k, "path": k} for k in data]
            for item in items:
                if item["key"] in data:
                    files[item["path"]] = data[item["key"]].encode()
                elif not ref.get("optional"):
                    raise ConfigError(f"couldn't find key {item['key']} in {kind} {namespace}/{name}")
        if "serviceAccountToken" in source:
            token = source["serviceAccountToken"]
            files[token["path"]] = self.agent.token(self.pod, token.get("audience"),
                                                    int(token.get("expirationSeconds") or 3607)).encode()
        if "downwardAPI" in source:
            for item in source["downwardAPI"].get("items") or []:
                if "fieldRef" in item:
                    files[item["path"]] = self._field(item["fieldRef"]["fieldPath"]).encode()
        return files

    # -- probes --

    def _probe(self, c: Container, probe: dict[str, Any], timeout: float) -> bool:
        if "exec" in probe:
            spec = {**c.spec, "command": probe["exec"]["command"], "args": []}
            folder = self.folder / "containers" / c.name
            exec_spec = json.loads((folder / f"exec-{c.restart_count}.json").read_text())
            exec_spec["argv"] = [expand(a, exec_spec["env"]) for a in spec["command"]]
            exec_spec["error_file"] = str(folder / "probe-error")
            probe_file = folder / f"probe-{threading.get_ident()}.json"
            probe_file.write_text(json.dumps(exec_spec))
            try:
                done = subprocess.run([sys.executable, "-I", "-S", str(POD_EXEC), str(probe_file)],
                                      capture_output=True, timeout=timeout + 1, check=False)
                return done.returncode == 0
            except subprocess.TimeoutExpired:
                return False
            finally:
                probe_file.unlink(missing_ok=True)
        if "httpGet" in probe:
            get = probe["httpGet"]
            port = self._port(c, get["port"])
            host = get.get("host") or "127.0.0.1"

            def http_get() -> bool:
                connection_class = http.client.HTTPSConnection if get.get("scheme") == "HTTPS" \
                    else http.client.HTTPConnection
                kwargs: dict[str, Any] = {"timeout": timeout}
                if get.get("scheme") == "HTTPS":
                    kwargs["context"] = ssl._create_unverified_context()  # noqa: S323 - the kubelet does not verify
                connection = connection_class(host, port, **kwargs)
                try:
                    headers = {h["name"]: h["value"] for h in get.get("httpHeaders") or []}
                    connection.request("GET", get.get("path") or "/", headers=headers)
                    return 200 <= connection.getresponse().status < 400
                finally:
                    connection.close()
            return bool(in_netns(self.netns, http_get, timeout + 1))
        if "tcpSocket" in probe:
            port = self._port(c, probe["tcpSocket"]["port"])

            def connect() -> bool:
                with socket.create_connection((probe["tcpSocket"].get("host") or "127.0.0.1", port), timeout):
                    return True
            return bool(in_netns(self.netns, connect, timeout + 1))
        return True

    @staticmethod
    def _port(c: Container, port: int | str) -> int:
        if isinstance(port, int) or str(port).isdigit():
            return int(port)
        for p in c.spec.get("ports") or []:
            if p.get("name") == port:
                return int(p["containerPort"])
        raise ValueError(f"no port named {port}")

    # -- processes --

    def _poll(self, c: Container) -> None:
        if c.popen is None:
            return
        if c.running:
            for kind, probe in c.probes.items():
                if kind == "startup" or c.started:
                    probe.poll()
            startup = c.probes.get("startup")
            liveness = c.probes.get("liveness")
            failed = (startup and startup.result is False) or (liveness and liveness.result is False)
            if failed and not c.stop_requested:
                self.agent.event(self.pod, "Warning", "Unhealthy", f"{'Startup' if startup else 'Liveness'} probe "
                                 f"failed; container {c.name} will be restarted")
                self._signal(c, signal.SIGTERM)
                c.stop_requested = True
                grace = float(self.pod["spec"].get("terminationGracePeriodSeconds", 30))
                popen = c.popen

                def kill() -> None:  # this process only: the container may have been restarted since
                    if popen is not None and popen.poll() is None:
                        with contextlib.suppress(ProcessLookupError, PermissionError):
                            os.killpg(popen.pid, signal.SIGKILL)
                timer = threading.Timer(grace, kill)
                timer.daemon = True
                timer.start()
        code = c.popen.poll()
        if code is None or not c.running:
            return
        # The container's other processes go with it, as they would with its PID namespace.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(c.popen.pid, signal.SIGKILL)
        exit_code = code if code >= 0 else 128 + _signal_number(code)
        start_error = c.error_file.read_text().strip() if c.error_file and c.error_file.exists() else ""
        oom_killed = self.agent.release_cgroup(c.cgroup)
        c.cgroup = None
        reason = "StartError" if start_error else ("Completed" if exit_code == 0 else "Error")
        if oom_killed and exit_code != 0:
            reason = "OOMKilled"
        terminated: dict[str, Any] = {
            "exitCode": exit_code,
            "reason": reason,
            "startedAt": c.state["running"]["startedAt"] if not start_error else "1970-01-01T00:00:00Z",
            "finishedAt": now(),
            "containerID": c.container_id,
        }
        if code < 0:
            terminated["signal"] = -code
        message = start_error or self._termination_message(c, exit_code)
        if message:
            terminated["message"] = message
        c.state = {"terminated": terminated}
        c.popen = None
        self.agent.forget_process(self, c)
        self._backoff(c)
        if c.kind == "sidecar":
            # The kubelet notices exits at its PLEG relist (every second): a sidecar that exits just before the
            # regular containers is seen with them and not restarted. 0 restarts it as soon as it is seen.
            c.next_attempt = max(c.next_attempt, time.monotonic() + self.agent.sidecar_restart_delay)
        self.wake.set()

    def _termination_message(self, c: Container, exit_code: int) -> str:
        data = b""
        if c.termination_file is not None and c.termination_file.exists():
            data = c.termination_file.read_bytes()
        data = data[-TERMINATION_LIMIT:]
        if not data and exit_code != 0 and c.spec.get("terminationMessagePolicy") == "FallbackToLogsOnError" \
                and c.log_path is not None and c.log_path.exists():
            lines = c.log_path.read_bytes().splitlines(keepends=True)[-80:]
            data = b"".join(lines)[-2048:]
        return data.decode(errors="replace")

    def _signal(self, c: Container, sig: int) -> None:
        popen = c.popen
        if popen is None or popen.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if sig == signal.SIGKILL:
                os.killpg(popen.pid, sig)
            else:
                popen.send_signal(sig)

    def _stop_containers(self, containers: list[Container], deadline: float) -> None:
        """SIGTERM, then SIGKILL at the deadline; waits until they have exited (bounded)."""
        for c in containers:
            if c.running:
                self._signal(c, signal.SIGTERM)
                if c.spec.get("lifecycle", {}).get("preStop"):
                    log(f"pod {self.key}: preStop hooks are not run by the node agent")
        while any(c.running for c in containers) and time.monotonic() < deadline:
            for c in containers:
                self._poll(c)
            if not self.agent.stopping.is_set():  # a stopping agent leaves its Pods' statuses as they were
                self._publish()
            time.sleep(0.05)
        for c in containers:
            if c.running:
                self._signal(c, signal.SIGKILL)
        limit = time.monotonic() + 10
        while any(c.running for c in containers) and time.monotonic() < limit:
            for c in containers:
                self._poll(c)
            time.sleep(0.05)

    def _kill_all(self, grace: float) -> None:
        deadline = time.monotonic() + grace
        mains = [c for c in self.containers if c.kind != "sidecar"]
        self._stop_containers(mains, deadline)
        sidecars = [c for c in self.containers if c.kind == "sidecar"]
        for c in reversed(sidecars):
            self._stop_containers([c], max(deadline, time.monotonic() + 2) if grace else deadline)

    def _finish(self) -> None:
        """Every regular container is done: stop the sidecars (reverse order), tear down, become terminal."""
        grace = float(self.pod["spec"].get("terminationGracePeriodSeconds", 30))
        deadline = time.monotonic() + grace
        for c in reversed([c for c in self.containers if c.kind == "sidecar"]):
            self._stop_containers([c], deadline)
        self._stop_containers([c for c in self.containers if c.running], deadline)
        self._become_terminal()

    def _become_terminal(self) -> None:
        """As the kubelet's status manager does for a terminated Pod (TerminatePod): a regular container that
        has no terminated state gets one (ContainerStatusUnknown, 137), and the phase becomes terminal."""
        for c in self.containers:
            if c.kind == "main" and c.terminated is None:
                c.state = {"terminated": {"exitCode": 137, "reason": "ContainerStatusUnknown",
                                          "message": "The container could not be located when the pod was "
                                                     "terminated"}}
        phase = self._phase(terminal=True)
        self.terminal_phase = phase if phase in ("Succeeded", "Failed") else "Failed"
        self._teardown()
        self._publish()
        log(f"pod {self.key}: {self.terminal_phase}")

    def _delete(self) -> None:
        """Graceful deletion: SIGTERM, the grace period, SIGKILL, the final status, then delete with grace 0."""
        if self.terminal_phase is None:
            meta = self.pod["metadata"]
            grace = meta.get("deletionGracePeriodSeconds")
            if grace is None:
                grace = self.pod["spec"].get("terminationGracePeriodSeconds", 30)
            if any(c.running for c in self.containers):
                self.agent.event(self.pod, "Normal", "Killing", "Stopping container "
                                 + ", ".join(c.name for c in self.containers if c.running))
            self._kill_all(float(grace))
            self._become_terminal()
        self._teardown()
        try:
            self.kube.request("DELETE", path_of(self.pod), {
                "kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": 0,
                "preconditions": {"uid": self.uid}}, ok_missing=True)
        except ApiError as error:
            if error.status != 409:  # 409: another uid by now
                log(f"pod {self.key}: delete: {error}")
        self.deleted_from_api = True

    def _teardown(self) -> None:
        if self.forwarder is not None:
            self.forwarder.stop()
            self.forwarder = None
        if self.netns is not None:
            subprocess.run(["ip", "netns", "delete", self.netns], check=False, capture_output=True, timeout=30)
            self.netns = None

    # -- status --

    def _phase(self, terminal: bool = False) -> str:
        """The kubelet's getPhase (pkg/kubelet/kubelet_pods.go), from this worker's container states."""
        policy = self.pod["spec"].get("restartPolicy", "Always")
        pending_regular_init = pending_sidecars = failed_init = 0
        running = waiting = stopped = succeeded = 0
        for c in self.containers:
            last_terminated = bool(c.last_state.get("terminated"))
            if c.kind == "init":
                if c.running:
                    pending_regular_init += 1
                elif c.terminated is not None:
                    failed_init += c.terminated["exitCode"] != 0
                elif last_terminated:
                    failed_init += c.last_state["terminated"]["exitCode"] != 0
                else:
                    pending_regular_init += 1
            elif c.kind == "sidecar":
                if c.running:
                    pending_sidecars += not c.started
                    running += 1
                elif c.terminated is None and not last_terminated:
                    pending_sidecars += 1
                    waiting += 1
            elif c.running:
                running += 1
            elif c.terminated is not None:
                stopped += 1
                succeeded += c.terminated["exitCode"] == 0
            elif last_terminated:
                stopped += 1
            else:
                waiting += 1
        has_initialized = any(c.kind == "main" and c.restart_count >= 0 for c in self.containers)
        if failed_init and policy == "Never":
            return "Failed"
        if pending_regular_init or (pending_sidecars and not has_initialized) or waiting:
            return "Pending"
        if running:
            return "Running"
        if stopped:
            if terminal:
                return "Succeeded" if stopped == succeeded else "Failed"
            if policy == "Always":
                return "Running"
            if stopped == succeeded:
                return "Succeeded"
            return "Failed" if policy == "Never" else "Running"
        return "Pending"

    def _container_status(self, c: Container) -> dict[str, Any]:
        state = c.state
        status: dict[str, Any] = {
            "name": c.name,
            "image": c.spec.get("image", ""),
            "imageID": c.image_id,
            "ready": c.ready,
            "restartCount": max(c.restart_count, 0),
            "started": c.started,
            "state": state,
            "lastState": c.last_state,
        }
        if c.container_id and "waiting" not in state:
            status["containerID"] = c.container_id
        if c.kind == "init" and not c.running:
            status["started"] = False
        mounts = [{"name": m["name"], "mountPath": m["mountPath"], **({"readOnly": True} if m.get("readOnly") else {})}
                  for m in c.spec.get("volumeMounts") or []]
        if mounts:
            status["volumeMounts"] = mounts
        return status

    def _conditions(self, phase: str) -> list[dict[str, Any]]:
        terminal = phase in ("Succeeded", "Failed")
        inits = [c for c in self.containers if c.kind != "main"]
        incomplete = [c.name for c in inits if not ((c.kind == "sidecar" and c.started)
                                                    or (c.terminated and c.terminated["exitCode"] == 0))]
        initialized = self.initialized or not incomplete
        unready = [c.name for c in self.containers if c.kind != "init" and not c.ready]
        conditions = [("PodReadyToStartContainers", self.sandbox_ready and not terminal, None, None)]
        if initialized:
            conditions.append(("Initialized", True, "PodCompleted" if terminal and phase == "Succeeded" else None,
                               None))
        else:
            conditions.append(("Initialized", False, "ContainersNotInitialized",
                               f"containers with incomplete status: [{' '.join(incomplete)}]"))
        if terminal:
            reason = "PodCompleted" if phase == "Succeeded" else "PodFailed"
            conditions += [("ContainersReady", False, reason, None), ("Ready", False, reason, None)]
        elif unready:
            message = f"containers with unready status: [{' '.join(unready)}]"
            conditions += [("ContainersReady", False, "ContainersNotReady", message),
                           ("Ready", False, "ContainersNotReady", message)]
        else:
            conditions += [("ContainersReady", True, None, None), ("Ready", True, None, None)]
        result = []
        for kind, status, reason, message in conditions:
            condition: dict[str, Any] = {"type": kind, "status": "True" if status else "False"}
            if reason:
                condition["reason"] = reason
            if message:
                condition["message"] = message
            result.append(condition)
        return result

    def _desired_status(self) -> dict[str, Any]:
        phase = self.terminal_phase or self._phase()
        status: dict[str, Any] = {
            "phase": phase,
            "conditions": self._conditions(phase),
            "hostIP": "127.0.0.1",
            "hostIPs": [{"ip": "127.0.0.1"}],
            "startTime": self.start_time,
            "containerStatuses": [self._container_status(c) for c in self.containers if c.kind == "main"],
        }
        inits = [self._container_status(c) for c in self.containers if c.kind != "main"]
        if inits:
            status["initContainerStatuses"] = inits
        if self.pod["spec"].get("hostNetwork"):
            status["podIP"] = "127.0.0.1"
            status["podIPs"] = [{"ip": "127.0.0.1"}]
        return status

    def _publish(self) -> None:
        try:
            self._publish_once()
        except ApiError as error:
            if error.status in (403, 404):  # the Node authorizer forgets a Pod as soon as it is gone
                self.removed = True
            else:
                log(f"pod {self.key}: status: {error}")
        except (OSError, http.client.HTTPException) as error:
            log(f"pod {self.key}: status: {error}")

    def _publish_once(self) -> None:
        desired = self._desired_status()
        fingerprint = json.dumps(desired, sort_keys=True)
        if fingerprint == self.published or self.removed:
            return
        for _ in range(5):
            pod = self.kube.request("GET", path_of(self.pod), ok_missing=True)
            if pod is None or pod["metadata"]["uid"] != self.uid:
                self.removed = True
                return
            current = pod.get("status") or {}
            mine = {c["type"] for c in desired["conditions"]}
            old = {c["type"]: c for c in current.get("conditions") or []}
            conditions = [c for c in current.get("conditions") or [] if c["type"] not in mine]
            for condition in desired["conditions"]:
                previous = old.get(condition["type"])
                stamp = previous["lastTransitionTime"] if previous and previous.get("status") == \
                    condition["status"] and previous.get("lastTransitionTime") else now()
                conditions.append({**condition, "lastProbeTime": None, "lastTransitionTime": stamp})
            status = {**current, **desired, "conditions": conditions}
            generation = pod["metadata"].get("generation")
            if generation is not None:
                status["observedGeneration"] = generation
            if pod.get("metadata", {}).get("generation") is not None:
                for condition in conditions:
                    if condition["type"] in mine:
                        condition["observedGeneration"] = generation
            pod["status"] = status
            try:
                self.kube.request("PUT", path_of(self.pod, "/status"), pod)
                self.published = fingerprint
                return
            except ApiError as error:
                if error.status == 404:
                    self.removed = True
                    return
                if error.status != 409:
                    log(f"pod {self.key}: status: {error}")
                    return
        log(f"pod {self.key}: status: conflicts")


def expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: $(VAR) is replaced when VAR is defined, $$ is an escaped $."""
    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env[name] if name in env else match.group(0)
    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)", replace, value)


# --- the node -------------------------------------------------------------------------------------------------


class NodeAgent:
    def __init__(self, *, kubeconfig: Path, node_name: str, folder: Path, pvc_root: Path | None = None,
                 models: Path | None = None, gpus: int = 4, gpu_resource: str = "nvidia.com/gpu",
                 cpu: str | None = None, memory: str | None = None, max_pods: int = 110,
                 admin_kubeconfig: Path | None = None, forward_ports: tuple[int, ...] = (),
                 forward_ports_file: Path | None = None, labels: dict[str, str] | None = None,
                 taints: list[dict[str, str]] | None = None, lease_seconds: int = 40, renew_every: float = 5,
                 sidecar_restart_delay: float = 1.0) -> None:
        self.kube = Kube(kubeconfig)
        self.admin = Kube(admin_kubeconfig) if admin_kubeconfig else None
        self.api_port = self.kube.port
        self.node_name = node_name
        self.folder = Path(folder).resolve()
        self.folder.mkdir(parents=True, exist_ok=True)
        self.pvc_root = Path(pvc_root).resolve() if pvc_root else self.folder / "pvc"
        self.models_file = Path(models).resolve() if models else None
        self._models_stamp: float | None = None
        self.images = load_models(None)
        self._reload_models()
        self.netns_prefix = "ctn" + hashlib.sha256(str(self.folder).encode()).hexdigest()[:6]
        memory = memory or f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') // 1024}Ki"
        self.capacity = {"cpu": cpu or str(os.cpu_count() or 1), "memory": memory, "pods": str(max_pods),
                         "ephemeral-storage": "100Gi", "hugepages-2Mi": "0", "hugepages-1Gi": "0"}
        if gpus:
            self.capacity[gpu_resource] = str(gpus)
        self.labels = {"kubernetes.io/hostname": node_name, "kubernetes.io/os": "linux",
                       "kubernetes.io/arch": "amd64", **(labels or {})}
        self.taints = taints or []
        self.lease_seconds = lease_seconds
        self.sidecar_restart_delay = sidecar_restart_delay
        self.renew_every = renew_every
        self._forward_static = tuple(forward_ports)
        self._forward_file = forward_ports_file
        self.stopping = threading.Event()
        self.ready = True
        self.workers: dict[str, PodWorker] = {}
        self.lock = threading.Lock()
        self.created_mountpoints: list[Path] = []
        self.log_port = 0
        self._log_server: ThreadingHTTPServer | None = None
        self._threads: list[threading.Thread] = []
        self._processes: dict[tuple[str, str], Path] = {}
        self._status_changed = threading.Event()
        self.cgroups: Path | None = None

    # -- lifecycle --

    def start(self) -> NodeAgent:
        if os.geteuid() != 0:
            raise RuntimeError("the node agent needs root: it creates network and mount namespaces")
        if shutil.which("ip") is None:
            raise RuntimeError("the node agent needs iproute2's `ip` (Debian: apt-get install iproute2)")
        self.cgroups = self._find_memory_cgroups()
        self._start_log_server()
        self._register()
        self._cleanup_stale_netns()
        for target, name in ((self._heartbeat_loop, "heartbeat"), (self._pod_loop, "pods")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        if self.admin is not None:
            thread = threading.Thread(target=self._provisioner_loop, name="provisioner", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        if self.stopping.is_set():
            return
        self.stopping.set()
        with self.lock:
            workers = list(self.workers.values())
        for worker in workers:
            worker.wake.set()
        for worker in workers:
            worker.thread.join(timeout=30)
        if self._log_server is not None:
            self._log_server.shutdown()
            self._log_server.server_close()
        self._cleanup_stale_netns()
        self._cleanup_cgroups()
        self._remove_mountpoints()

    def set_ready(self, ready: bool) -> None:
        """Ready=False stops the Lease renewals and posts Ready=False; Ready=True resumes both."""
        self.ready = ready
        self._status_changed.set()

    # -- the Node and its Lease --

    def _node_status(self) -> dict[str, Any]:
        stamp = now()
        if self.ready:
            ready = {"type": "Ready", "status": "True", "reason": "KubeletReady",
                     "message": "kubelet is posting ready status"}
        else:
            ready = {"type": "Ready", "status": "False", "reason": "KubeletNotReady",
                     "message": "node agent set NotReady by the test"}
        conditions = [
            {"type": "MemoryPressure", "status": "False", "reason": "KubeletHasSufficientMemory",
             "message": "kubelet has sufficient memory available"},
            {"type": "DiskPressure", "status": "False", "reason": "KubeletHasNoDiskPressure",
             "message": "kubelet has no disk pressure"},
            {"type": "PIDPressure", "status": "False", "reason": "KubeletHasSufficientPID",
             "message": "kubelet has sufficient PID available"},
            ready,
        ]
        return {
            "capacity": self.capacity,
            "allocatable": self.capacity,
            "conditions": [{**c, "lastHeartbeatTime": stamp, "lastTransitionTime": stamp} for c in conditions],
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname",
                                                                            "address": self.node_name}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.log_port}},
            "nodeInfo": {"machineID": "", "systemUUID": "", "bootID": "", "kernelVersion": os.uname().release,
                         "osImage": "cogtrain node agent", "containerRuntimeVersion": "cogtrain-node-agent://0.1",
                         "kubeletVersion": KUBELET_VERSION, "kubeProxyVersion": "", "operatingSystem": "linux",
                         "architecture": "amd64"},
        }

    def _register(self) -> None:
        node = {"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": self.node_name, "labels": self.labels},
                "spec": {"taints": self.taints} if self.taints else {}}
        deadline = time.monotonic() + 60
        while True:
            try:
                self.kube.request("POST", "/api/v1/nodes", node)
                break
            except ApiError as error:
                if error.status == 409:
                    break
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        self._post_node_status(force=True)
        self._renew_lease()

    def _post_node_status(self, force: bool = False) -> None:
        node = self.kube.request("GET", f"/api/v1/nodes/{self.node_name}")
        old = {c["type"]: c for c in node.get("status", {}).get("conditions") or []}
        status = self._node_status()
        for condition in status["conditions"]:
            previous = old.get(condition["type"])
            if previous and previous.get("status") == condition["status"]:
                condition["lastTransitionTime"] = previous.get("lastTransitionTime", condition["lastTransitionTime"])
        self.kube.request("PATCH", f"/api/v1/nodes/{self.node_name}/status", {"status": status},
                          content_type="application/strategic-merge-patch+json")

    def _renew_lease(self) -> None:
        path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{self.node_name}"
        lease = self.kube.request("GET", path, ok_missing=True)
        spec = {"holderIdentity": self.node_name, "leaseDurationSeconds": self.lease_seconds,
                "renewTime": micro_now()}
        if lease is None:
            node = self.kube.request("GET", f"/api/v1/nodes/{self.node_name}")
            body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": self.node_name, "namespace": "kube-node-lease",
                                 "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": self.node_name,
                                                      "uid": node["metadata"]["uid"]}]},
                    "spec": spec}
            self.kube.request("POST", "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases", body)
        else:
            lease["spec"].update(spec)
            self.kube.request("PUT", path, lease)

    def _heartbeat_loop(self) -> None:
        last_status = time.monotonic()
        was_ready = self.ready
        while not self.stopping.is_set():
            self._status_changed.wait(self.renew_every)
            self._status_changed.clear()
            try:
                if self.ready:
                    self._renew_lease()
                if self.ready != was_ready or time.monotonic() - last_status > 60:
                    self._post_node_status()
                    last_status = time.monotonic()
                    was_ready = self.ready
            except (ApiError, OSError, http.client.HTTPException) as error:
                log(f"heartbeat: {error}")

    # -- Pods --

    def _pod_loop(self) -> None:
        selector = {"fieldSelector": f"spec.nodeName={self.node_name}"}
        while not self.stopping.is_set():
            try:
                listing = self.kube.request("GET", "/api/v1/pods?" + urllib.parse.urlencode(selector))
                version = listing["metadata"]["resourceVersion"]
                seen = set()
                for pod in listing["items"]:
                    seen.add(pod["metadata"]["uid"])
                    self._pod_event("MODIFIED", pod)
                with self.lock:
                    missing = [w for uid, w in self.workers.items() if uid not in seen]
                for worker in missing:
                    with self.lock:
                        self.workers.pop(worker.uid, None)
                    worker.gone()
                while not self.stopping.is_set():
                    for event in self.kube.watch("/api/v1/pods", {**selector, "resourceVersion": version}, 60):
                        if self.stopping.is_set():
                            return
                        kind, obj = event["type"], event["object"]
                        if kind == "ERROR":
                            raise ApiError(int(obj.get("code") or 500), obj)
                        version = obj["metadata"]["resourceVersion"]
                        if kind != "BOOKMARK":
                            self._pod_event(kind, obj)
            except (ApiError, OSError, http.client.HTTPException, ValueError) as error:
                if not self.stopping.is_set():
                    if not (isinstance(error, ApiError) and error.status == 410):
                        log(f"pods: {error}")
                    time.sleep(1)

    def _pod_event(self, kind: str, pod: dict[str, Any]) -> None:
        uid = pod["metadata"]["uid"]
        with self.lock:
            worker = self.workers.get(uid)
            if kind == "DELETED":
                if worker is not None:
                    del self.workers[uid]
                    worker.gone()
                return
            if worker is None:
                if pod.get("status", {}).get("phase") in ("Succeeded", "Failed") and \
                        not pod["metadata"].get("deletionTimestamp"):
                    return  # finished before this agent started: nothing to run
                worker = PodWorker(self, pod)
                self.workers[uid] = worker
                worker.thread.start()
                return
        worker.update(pod)

    def forget(self, worker: PodWorker) -> None:
        """A worker whose Pod is gone from the API; one that only finished stays, so that later events
        about its Pod (a finalizer removed, say) do not start it again."""
        with self.lock:
            if self.workers.get(worker.uid) is worker and worker.removed:
                del self.workers[worker.uid]

    def record_process(self, worker: PodWorker, c: Container) -> None:
        assert c.popen is not None
        from_stat = Path(f"/proc/{c.popen.pid}/stat").read_text().rsplit(")", 1)[1].split()[19] \
            if Path(f"/proc/{c.popen.pid}/stat").exists() else None
        record = worker.folder / "processes" / f"{c.name}.json"
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps({"pid": c.popen.pid, "start": from_stat}))

    def forget_process(self, worker: PodWorker, c: Container) -> None:
        (worker.folder / "processes" / f"{c.name}.json").unlink(missing_ok=True)

    # -- what containers need --

    def _reload_models(self) -> None:
        """The --models file is read again when it changes, so tests can add models to a running node."""
        if self.models_file is None or not self.models_file.exists():
            return
        stamp = self.models_file.stat().st_mtime
        if stamp != self._models_stamp:
            self.images = load_models(self.models_file)
            self._models_stamp = stamp

    def resolve_image(self, spec: dict[str, Any]) -> Image:
        self._reload_models()
        command = spec.get("command") or []
        if command and command[0] == "cogtrain":
            return Image("cogtrain")
        image = spec.get("image") or ""
        if not image:
            raise PullError("InvalidImageName", "the container has no image")
        found = self.images.get(_normalized(repository_of(image)))
        if found is not None:
            return found
        if spec.get("imagePullPolicy") == "Never":
            raise PullError("ErrImageNeverPull", f'Container image "{image}" is not present with pull policy of Never')
        return self._pull_error(image)

    @staticmethod
    def _pull_error(image: str) -> Image:
        raise PullError("ErrImagePull", f'rpc error: code = NotFound desc = failed to pull and unpack image "{image}": '
                        f'failed to resolve reference "{image}": {image}: not found '
                        "(the node agent maps no model folder to this repository)")

    def read(self, path: str, method: str = "GET", body: Any = None) -> Any:
        """A read the Node authorizer allows once it has seen the Pod that references the object: its graph
        follows the API a moment behind this agent's watch, so a 403 is retried for a few seconds."""
        deadline = time.monotonic() + 5
        while True:
            try:
                return self.kube.request(method, path, body, ok_missing=True)
            except ApiError as error:
                if error.status != 403 or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def get_config(self, namespace: str, kind: str, name: str, optional: bool) -> dict[str, str] | None:
        """A Secret's or ConfigMap's data (decoded); None when missing and optional, else ConfigError."""
        resource = "secrets" if kind == "secret" else "configmaps"
        try:
            obj = self.read(f"/api/v1/namespaces/{namespace}/{resource}/{name}")
        except ApiError as error:
            raise ConfigError(f'{kind} "{name}" could not be read: {error}') from error
        if obj is None:
            if optional:
                return None
            raise ConfigError(f'{kind} "{name}" not found')
        data = {k: base64.b64decode(v).decode(errors="replace") for k, v in (obj.get("data") or {}).items()} \
            if kind == "secret" else dict(obj.get("data") or {})
        if kind == "configmap":
            data.update({k: base64.b64decode(v).decode(errors="replace")
                         for k, v in (obj.get("binaryData") or {}).items()})
        return data

    def token(self, pod: dict[str, Any], audience: str | None, seconds: int) -> str:
        meta = pod["metadata"]
        account = pod["spec"].get("serviceAccountName") or "default"
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                "spec": {"audiences": [audience] if audience else None, "expirationSeconds": seconds,
                         "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": meta["name"],
                                            "uid": meta["uid"]}}}
        try:
            answer = self.read(f"/api/v1/namespaces/{meta['namespace']}/serviceaccounts/{account}/token", "POST", body)
        except ApiError as error:
            raise ConfigError(f"failed to fetch token: {error}") from error
        return str(answer["status"]["token"])

    def claim_folder(self, namespace: str, claim: str) -> Path:
        try:
            pvc = self.read(f"/api/v1/namespaces/{namespace}/persistentvolumeclaims/{claim}")
        except ApiError as error:
            raise ConfigError(f'persistentvolumeclaim "{claim}" could not be read: {error}') from error
        if pvc is None:
            raise ConfigError(f'persistentvolumeclaim "{claim}" not found')
        folder = self.pvc_root / namespace / claim
        volume = (pvc.get("spec") or {}).get("volumeName")
        if volume:
            with contextlib.suppress(ApiError):
                pv = self.read(f"/api/v1/persistentvolumes/{volume}")
                host_path = ((pv or {}).get("spec") or {}).get("hostPath", {}).get("path")
                if host_path:
                    folder = Path(host_path)
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o777)
        return folder

    def forward_ports(self) -> list[int]:
        ports = list(self._forward_static)
        if self._forward_file is not None and self._forward_file.exists():
            ports += [int(line) for line in self._forward_file.read_text().split() if line.strip().isdigit()]
        return sorted(set(ports))

    def ensure_mountpoint(self, path: Path, directory: bool) -> None:
        """Bind mounts need an existing target: create it on this machine (and remove it when the agent stops)."""
        if path.exists() or path.is_symlink():
            return
        missing = [p for p in [path, *path.parents] if not p.exists()]
        path.parent.mkdir(parents=True, exist_ok=True)
        if directory:
            path.mkdir(exist_ok=True)
        else:
            path.touch()
        with self.lock:
            self.created_mountpoints += missing

    def _remove_mountpoints(self) -> None:
        """Mount points this agent created, if no other node agent runs (it might be using them)."""
        others = [p for p in Path("/proc").glob("[0-9]*") if p.name != str(os.getpid()) and _is_node_agent(p)]
        if others:
            return
        for path in sorted(set(self.created_mountpoints), key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):
                if path.is_dir():
                    path.rmdir()
                elif path.stat().st_size == 0:
                    path.unlink()

    def _find_memory_cgroups(self) -> Path | None:
        """cgroup v1's memory controller, below this process's own cgroup; None where it cannot be used (v2)."""
        try:
            lines = Path("/proc/self/cgroup").read_text().splitlines()
            own = next(line.split(":", 2)[2] for line in lines if line.split(":", 2)[1] == "memory")
            folder = Path("/sys/fs/cgroup/memory") / own.lstrip("/") / f"cogtrain-{self.netns_prefix}"
            folder.mkdir(exist_ok=True)
            return folder
        except (OSError, StopIteration, IndexError) as error:
            log(f"memory limits are not enforced (no cgroup v1 memory controller to use: {error})")
            return None

    def memory_cgroup(self, worker: PodWorker, c: Container, restart: int) -> Path | None:
        """A memory cgroup limited to the container's limits.memory, so that exceeding it is an OOM kill."""
        limit = ((c.spec.get("resources") or {}).get("limits") or {}).get("memory")
        if limit is None or self.cgroups is None:
            return None
        folder = self.cgroups / f"{worker.uid[:13]}-{c.name}-{restart}"
        try:
            folder.mkdir(exist_ok=True)
            (folder / "memory.limit_in_bytes").write_text(str(int(quantity(limit))))
            with contextlib.suppress(OSError):  # without swap accounting there is no memsw
                (folder / "memory.memsw.limit_in_bytes").write_text(str(int(quantity(limit))))
        except (OSError, ValueError) as error:
            log(f"pod {worker.key}: no memory limit for {c.name}: {error}")
            return None
        return folder

    def release_cgroup(self, folder: Path | None) -> bool:
        """Remove a container's cgroup (its processes have been killed); True if the kernel OOM-killed in it."""
        if folder is None:
            return False
        oom_killed = False
        with contextlib.suppress(OSError, ValueError):
            fields = dict(line.split() for line in (folder / "memory.oom_control").read_text().splitlines())
            oom_killed = int(fields.get("oom_kill", "0")) > 0
        deadline = time.monotonic() + 5
        while folder.exists() and time.monotonic() < deadline:
            try:
                folder.rmdir()
            except OSError:
                time.sleep(0.05)  # its last processes are still exiting
        return oom_killed

    def _cleanup_cgroups(self) -> None:
        if self.cgroups is None:
            return
        for folder in [*self.cgroups.glob("*"), self.cgroups]:
            if folder.is_dir():
                with contextlib.suppress(OSError):
                    folder.rmdir()

    def _cleanup_stale_netns(self) -> None:
        netns = Path("/run/netns")
        if not netns.exists():
            return
        with self.lock:
            live = {w.netns for w in self.workers.values() if w.netns}
        for entry in netns.glob(f"{self.netns_prefix}-*"):
            if entry.name not in live:
                subprocess.run(["ip", "netns", "delete", entry.name], check=False, capture_output=True, timeout=30)

    def event(self, pod: dict[str, Any], kind: str, reason: str, message: str) -> None:
        meta = pod["metadata"]
        stamp = now()
        body = {"apiVersion": "v1", "kind": "Event",
                "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
                "involvedObject": {"apiVersion": "v1", "kind": "Pod", "name": meta["name"],
                                   "namespace": meta["namespace"], "uid": meta["uid"]},
                "reason": reason, "message": message[:1024], "type": kind, "count": 1,
                "firstTimestamp": stamp, "lastTimestamp": stamp,
                "source": {"component": "kubelet", "host": self.node_name}, "reportingComponent": "kubelet",
                "reportingInstance": self.node_name}
        try:
            self.kube.request("POST", f"/api/v1/namespaces/{meta['namespace']}/events", body, timeout=5)
        except (ApiError, OSError, http.client.HTTPException):
            pass

    # -- kubectl logs --

    def _start_log_server(self) -> None:
        cert, key = _self_signed(self.folder, self.node_name)
        agent = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                url = urllib.parse.urlsplit(self.path)
                query = urllib.parse.parse_qs(url.query)
                parts = url.path.strip("/").split("/")
                if url.path in ("/healthz", "/readyz", "/livez"):
                    self._answer(200, b"ok")
                    return
                if len(parts) != 4 or parts[0] != "containerLogs":
                    self._answer(404, b"the node agent serves /containerLogs/NAMESPACE/POD/CONTAINER only\n")
                    return
                agent.serve_logs(self, parts[1], parts[2], parts[3], query)

            def _answer(self, code: int, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(cert), str(key))
        server.socket = context.wrap_socket(server.socket, server_side=True)
        self.log_port = server.server_address[1]
        self._log_server = server
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.5}, daemon=True).start()

    def serve_logs(self, handler: BaseHTTPRequestHandler, namespace: str, name: str, container: str,
                   query: dict[str, list[str]]) -> None:
        with self.lock:
            worker = next((w for w in self.workers.values() if w.pod["metadata"]["namespace"] == namespace
                           and w.pod["metadata"]["name"] == name), None)
        folder = worker.folder if worker else next(
            iter(sorted((self.folder / "pods").glob(f"{namespace}_{name}_*"))), None)
        logs = sorted(((folder / "containers" / container).glob("*.log")) if folder else [],
                      key=lambda p: int(p.stem))
        previous = query.get("previous", ["false"])[0] == "true"
        if len(logs) < (2 if previous else 1):
            body = f'container "{container}" in pod "{name}" is waiting to start\n'.encode()
            handler.send_response(400)
            handler.send_header("Content-Length", str(len(body)))
            handler.end_headers()
            handler.wfile.write(body)
            return
        path = logs[-2] if previous else logs[-1]
        data = path.read_bytes()
        if "tailLines" in query:
            lines = data.splitlines(keepends=True)
            count = int(query["tailLines"][0])
            data = b"".join(lines[-count:]) if count else b""
        if "limitBytes" in query:
            data = data[: int(query["limitBytes"][0])]
        follow = query.get("follow", ["false"])[0] == "true" and not previous
        handler.send_response(200)
        handler.send_header("Content-Type", "text/plain")
        if not follow:
            handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)
        if not follow:
            return
        offset = path.stat().st_size
        container_obj = next((c for c in worker.containers if c.name == container), None) if worker else None
        while not self.stopping.is_set():
            size = path.stat().st_size
            if size > offset:
                with path.open("rb") as f:
                    f.seek(offset)
                    chunk = f.read(size - offset)
                offset = size
                try:
                    handler.wfile.write(chunk)
                    handler.wfile.flush()
                except OSError:
                    return
            elif container_obj is None or not container_obj.running or container_obj.log_path != path:
                return
            time.sleep(0.2)

    # -- PersistentVolumes for claims of the `standard` class --

    def _provisioner_loop(self) -> None:
        assert self.admin is not None
        admin = self.admin
        storage_class = {"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
                         "metadata": {"name": STORAGE_CLASS, "annotations": {
                             "storageclass.kubernetes.io/is-default-class": "true"}},
                         "provisioner": PROVISIONER, "reclaimPolicy": "Delete", "volumeBindingMode": "Immediate"}
        while not self.stopping.is_set():
            try:
                with contextlib.suppress(ApiError):
                    admin.request("POST", "/apis/storage.k8s.io/v1/storageclasses", storage_class)
                claims = admin.request("GET", "/api/v1/persistentvolumeclaims")
                for claim in claims["items"]:
                    self._provision(claim)
                volumes = admin.request("GET", "/api/v1/persistentvolumes")
                for volume in volumes["items"]:
                    annotations = volume["metadata"].get("annotations") or {}
                    if annotations.get("pv.kubernetes.io/provisioned-by") == PROVISIONER and \
                            volume.get("status", {}).get("phase") == "Released" and \
                            volume["spec"].get("persistentVolumeReclaimPolicy") == "Delete":
                        admin.request("DELETE", f"/api/v1/persistentvolumes/{volume['metadata']['name']}",
                                      ok_missing=True)
                version = claims["metadata"]["resourceVersion"]
                for event in admin.watch("/api/v1/persistentvolumeclaims", {"resourceVersion": version}, 30):
                    if self.stopping.is_set():
                        return
                    if event["type"] in ("ADDED", "MODIFIED"):
                        self._provision(event["object"])
            except (ApiError, OSError, http.client.HTTPException, ValueError) as error:
                if not self.stopping.is_set():
                    if not (isinstance(error, ApiError) and error.status == 410):
                        log(f"provisioner: {error}")
                    time.sleep(1)

    def _provision(self, claim: dict[str, Any]) -> None:
        assert self.admin is not None
        meta, spec = claim["metadata"], claim.get("spec") or {}
        annotations = meta.get("annotations") or {}
        wanted = annotations.get("volume.kubernetes.io/storage-provisioner") or \
            annotations.get("volume.beta.kubernetes.io/storage-provisioner")
        if wanted != PROVISIONER or spec.get("volumeName") or meta.get("deletionTimestamp"):
            return
        folder = self.pvc_root / meta["namespace"] / meta["name"]
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o777)
        size = (spec.get("resources") or {}).get("requests", {}).get("storage", "1Gi")
        volume = {"apiVersion": "v1", "kind": "PersistentVolume",
                  "metadata": {"name": f"pvc-{meta['uid']}",
                               "annotations": {"pv.kubernetes.io/provisioned-by": PROVISIONER}},
                  "spec": {"capacity": {"storage": size}, "accessModes": spec.get("accessModes") or ["ReadWriteOnce"],
                           "persistentVolumeReclaimPolicy": "Delete", "storageClassName": spec.get("storageClassName"),
                           "volumeMode": spec.get("volumeMode", "Filesystem"),
                           "hostPath": {"path": str(folder), "type": "DirectoryOrCreate"},
                           "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                                        "namespace": meta["namespace"], "name": meta["name"], "uid": meta["uid"]}}}
        try:
            self.admin.request("POST", "/api/v1/persistentvolumes", volume)
            log(f"provisioned {volume['metadata']['name']} for {meta['namespace']}/{meta['name']} at {folder}")
        except ApiError as error:
            if error.status != 409:
                log(f"provisioner: {error}")


def _is_node_agent(proc: Path) -> bool:
    try:
        return "node_agent.py" in (proc / "cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False


def _self_signed(folder: Path, name: str) -> tuple[Path, Path]:
    """The log endpoint's serving certificate (the API server does not verify it without a kubelet CA)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    cert_path, key_path = folder / "serving.crt", folder / "serving.key"
    if cert_path.exists() and key_path.exists():
        return cert_path, key_path
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    stamp = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(stamp - datetime.timedelta(hours=1))
            .not_valid_after(stamp + datetime.timedelta(days=365))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name), x509.DNSName("localhost")]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kubeconfig", type=Path, required=True, help="the node's identity (system:node:NAME)")
    parser.add_argument("--node-name", required=True)
    parser.add_argument("--dir", type=Path, required=True, help="Pods' folders, logs and volumes")
    parser.add_argument("--pvc-root", type=Path, help="PersistentVolumeClaims' folders (default DIR/pvc)")
    parser.add_argument("--models", type=Path, help="JSON: image repository -> Cog model folder or \"host\"")
    parser.add_argument("--gpus", type=int, default=4)
    parser.add_argument("--gpu-resource", default="nvidia.com/gpu")
    parser.add_argument("--cpu")
    parser.add_argument("--memory")
    parser.add_argument("--max-pods", type=int, default=110)
    parser.add_argument("--label", action="append", default=[], help="KEY=VALUE")
    parser.add_argument("--admin-kubeconfig", type=Path, help="run the PersistentVolume provisioner with it")
    parser.add_argument("--forward-ports", default="", help="loopback ports Pods reach (comma-separated)")
    parser.add_argument("--forward-ports-file", type=Path, help="more ports, one a line, read as each Pod starts")
    parser.add_argument("--sidecar-restart-delay", type=float, default=1.0,
                        help="seconds before an exited sidecar is restarted (the kubelet's PLEG relist period)")
    args = parser.parse_args(argv)
    agent = NodeAgent(
        kubeconfig=args.kubeconfig, node_name=args.node_name, folder=args.dir, pvc_root=args.pvc_root,
        models=args.models, gpus=args.gpus, gpu_resource=args.gpu_resource, cpu=args.cpu, memory=args.memory,
        max_pods=args.max_pods, admin_kubeconfig=args.admin_kubeconfig,
        forward_ports=tuple(int(p) for p in args.forward_ports.split(",") if p.strip()),
        forward_ports_file=args.forward_ports_file, sidecar_restart_delay=args.sidecar_restart_delay,
        labels=dict(label.split("=", 1) for label in args.label))
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    signal.signal(signal.SIGUSR1, lambda *_: agent.set_ready(False))
    signal.signal(signal.SIGUSR2, lambda *_: agent.set_ready(True))
    try:
        agent.start()
    except RuntimeError as error:
        log(str(error))
        return 1
    log(f"node {args.node_name} registered; logs endpoint https://127.0.0.1:{agent.log_port}")
    while not done.wait(1):
        pass
    log("stopping")
    agent.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
