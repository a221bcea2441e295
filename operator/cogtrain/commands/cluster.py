"""What the commands on a cluster share (`train`, `get`, `list`, `logs`, `cancel`): the kubeconfig's cluster,
Trainings by name, the driver log of their Pods, and every API failure as one sentence (exit 3)."""

from __future__ import annotations

import argparse
import json
import queue
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from .. import api
from ..contract import DRIVER_CONTAINER
from ..jobs import LABEL_TRAINING
from ..submit import model_line
from . import UnavailableError

T = TypeVar("T")
REQUEST_TIMEOUT = 30.0


class NotFound(UnavailableError):
    """The Training (or Pod) asked for does not exist."""


class AlreadyExists(UnavailableError):
    """A Training of that name exists."""


def cluster_arguments(parser: argparse.ArgumentParser, all_namespaces: bool = False) -> None:
    parser.add_argument("-n", "--namespace", help="the namespace (default: the kubeconfig context's, else default)")
    if all_namespaces:
        parser.add_argument("-A", "--all-namespaces", action="store_true", help="every namespace")
    parser.add_argument("--kubeconfig", help="the kubeconfig file (default: $KUBECONFIG, else ~/.kube/config)")
    parser.add_argument("--context", help="the kubeconfig context (default: its current context)")


def _message(error: Any) -> str:
    try:
        return str(json.loads(error.body).get("message") or error.reason)
    except (TypeError, ValueError, AttributeError):
        return str(error.reason)


@dataclass
class Kube:
    """The Training API of the kubeconfig's cluster, in one namespace."""

    custom: Any
    core: Any
    namespace: str
    host: str

    def call(self, what: str, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`function`, its failures as one sentence naming `what` was tried and what would help."""
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            return function(*args, _request_timeout=kwargs.pop("timeout", REQUEST_TIMEOUT), **kwargs)
        except ApiException as error:
            message = _message(error)
            if error.status == 404:
                raise NotFound(f"{what}: not found in namespace {self.namespace} ({message})") from None
            if error.status == 409 and "exists" in message:
                raise AlreadyExists(message) from None
            if error.status in (401, 403):
                raise UnavailableError(
                    f"{what}: forbidden ({message}); ask your cluster admin for the RBAC in docs/laptop.md "
                    "(create/get/list/watch/patch trainings, get pods and pods/log)") from None
            raise UnavailableError(f"{what}: the API server answered {error.status}: {message}") from None
        except (HTTPError, OSError) as error:
            raise UnavailableError(
                f"{what}: cannot reach the cluster at {self.host} ({type(error).__name__}); check the kubeconfig "
                "context (--context, --kubeconfig) and that the cluster is up") from None

    def training(self, name: str) -> dict[str, Any]:
        found: dict[str, Any] = self.call(
            f"get Training {name}", self.custom.get_namespaced_custom_object,
            api.GROUP, api.VERSION, self.namespace, api.PLURAL, name)
        return found

    def trainings(self, all_namespaces: bool = False) -> list[dict[str, Any]]:
        if all_namespaces:
            listed = self.call("list Trainings", self.custom.list_cluster_custom_object, api.GROUP, api.VERSION,
                               api.PLURAL)
        else:
            listed = self.call("list Trainings", self.custom.list_namespaced_custom_object, api.GROUP, api.VERSION,
                               self.namespace, api.PLURAL)
        items: list[dict[str, Any]] = listed.get("items") or []
        return sorted(items, key=lambda t: ((t["metadata"].get("namespace") or ""), t["metadata"]["name"]))

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        created: dict[str, Any] = self.call(
            f"create Training {body['metadata']['name']}", self.custom.create_namespaced_custom_object,
            api.GROUP, api.VERSION, self.namespace, api.PLURAL, body)
        return created

    def cancel(self, name: str) -> None:
        """spec.cancel: true; the operator deletes the Job and marks the Training Canceled."""
        self.call(f"cancel Training {name}", self.custom.patch_namespaced_custom_object,
                  api.GROUP, api.VERSION, self.namespace, api.PLURAL, name, {"spec": {"cancel": True}})

    def driver_pods(self, name: str) -> list[str]:
        """The Training's Pods whose driver has started (running or ended), oldest first."""
        pods = self.call(f"list the Pods of Training {name}", self.core.list_namespaced_pod, self.namespace,
                         label_selector=f"{LABEL_TRAINING}={name}")
        started = []
        for pod in sorted(pods.items, key=lambda p: (p.metadata.creation_timestamp or 0, p.metadata.name)):
            statuses = (pod.status.container_statuses if pod.status else None) or []
            driver = next((s for s in statuses if s.name == DRIVER_CONTAINER), None)
            if driver is not None and driver.state is not None and (driver.state.running or driver.state.terminated):
                started.append(pod.metadata.name)
        return started

    def log_lines(self, pod: str, follow: bool) -> Iterator[str]:
        """The driver container's log, line by line (as it comes, with `follow`)."""
        response = self.call(f"read the log of Pod {pod}", self.core.read_namespaced_pod_log, pod, self.namespace,
                             container=DRIVER_CONTAINER, follow=follow, _preload_content=False,
                             timeout=None if follow else REQUEST_TIMEOUT)
        pending = b""
        try:
            for chunk in response.stream(64 * 1024):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    yield line.decode(errors="replace")
            if pending:
                yield pending.decode(errors="replace")
        finally:
            response.release_conn()


def context_namespace(args: argparse.Namespace) -> str | None:
    """The namespace of the kubeconfig's current (or --context) context; raises the config loader's errors."""
    from kubernetes import config

    contexts, active = config.list_kube_config_contexts(config_file=args.kubeconfig)  # type: ignore[no-untyped-call]
    chosen = next((c for c in contexts if c.get("name") == args.context), active) if args.context else active
    namespace = ((chosen or {}).get("context") or {}).get("namespace")
    return str(namespace) if namespace else None


def connect(args: argparse.Namespace) -> Kube:
    """The cluster of the kubeconfig's current (or --context) context, in -n or the context's namespace."""
    from kubernetes import client, config

    configuration = client.Configuration()
    try:
        config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=args.kubeconfig, context=args.context, client_configuration=configuration)
        namespace = args.namespace or context_namespace(args) or "default"
    except (config.ConfigException, OSError, ValueError, TypeError) as error:
        raise UnavailableError(
            f"no usable kubeconfig ({str(error).splitlines()[0] if str(error) else type(error).__name__}); "
            "set KUBECONFIG or pass --kubeconfig FILE (and --context NAME)") from None
    configuration.retries = 1
    api_client = client.ApiClient(configuration)
    return Kube(client.CustomObjectsApi(api_client), client.CoreV1Api(api_client), namespace, configuration.host)


LOG_DRAIN_SECONDS = 15.0  # the log a Pod still sends after the Training ended, waited for at most


class LogPrinter:
    """Prints the driver log of each of the Training's Pods in turn, as it comes, on its own thread (the main
    thread stays free for Ctrl-C); the driver's progress records are left out."""

    def __init__(self, kube: Kube, command: str) -> None:
        self.kube, self.command = kube, command
        self.pods: queue.Queue[str | None] = queue.Queue()
        self.seen: set[str] = set()
        self.thread = threading.Thread(target=self._print_all, name="logs", daemon=True)
        self.thread.start()

    def add(self, pods: list[str]) -> None:
        for pod in pods:
            if pod not in self.seen:
                self.seen.add(pod)
                self.pods.put(pod)

    def _print_all(self) -> None:
        while (pod := self.pods.get()) is not None:
            try:
                for line in self.kube.log_lines(pod, follow=True):
                    shown = model_line(line)
                    if shown is not None:
                        sys.stdout.write(shown + "\n")
                        sys.stdout.flush()
            except UnavailableError as error:
                print(f"{self.command}: {error}", file=sys.stderr)

    def finish(self) -> None:
        self.pods.put(None)
        self.thread.join(LOG_DRAIN_SECONDS)
