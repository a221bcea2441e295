"""Run the operator for real (kopf in its own thread and loop) and play the cluster's other parts.

There is no Job controller or kubelet behind the test API server, so tests do their work:
create the Job's Pod, move it through its phases, write container states and the driver's
termination message, and set the Job's conditions, through the ordinary API.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import kopf

import cogtrain.handlers  # noqa: F401  (registers the handlers)
from cogtrain.handlers import Runtime
from support.k8s_server import KubeAPI

T = TypeVar("T")


def wait_for(check: Callable[[], T | None], timeout: float = 15.0, what: str = "condition") -> T:
    """Poll `check` until it returns something truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except Exception as error:  # noqa: BLE001  (an API read racing a change: try again)
            last = error
        else:
            if last:
                return last
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


class RunningOperator:
    """`cogtrain operator` as it runs in a cluster, minus the CLI: kopf with the project's handlers."""

    def __init__(self, kube: KubeAPI, runtime: Runtime, peering: str | None = None,
                 namespaces: list[str] | None = None) -> None:
        self.kube = kube
        self.runtime = runtime
        self.peering = peering  # None: standalone
        self.namespaces = namespaces  # None: cluster-wide
        self.thread: threading.Thread | None = None
        self.stop_flag = threading.Event()
        self.error: BaseException | None = None

    def start(self) -> RunningOperator:
        os.environ["KUBECONFIG"] = str(self.kube.kubeconfig)
        self.stop_flag = threading.Event()
        ready = threading.Event()

        def run() -> None:
            settings = kopf.OperatorSettings()
            settings.process.ultimate_exiting_timeout = None  # type: ignore[assignment]
            try:
                asyncio.run(kopf.operator(clusterwide=self.namespaces is None, namespaces=self.namespaces or (),
                                          standalone=self.peering is None,
                                          peering_name=self.peering, ready_flag=ready,
                                          stop_flag=self.stop_flag, settings=settings,
                                          memo=kopf.Memo(runtime=self.runtime)))
            except BaseException as error:  # noqa: BLE001  (reported by stop())
                self.error = error
                ready.set()

        self.thread = threading.Thread(target=run, name="operator", daemon=True)
        self.thread.start()
        if not ready.wait(30):
            raise AssertionError("the operator did not become ready")
        if self.error is not None:
            raise AssertionError(f"the operator failed to start: {self.error!r}")
        return self

    def stop(self) -> None:
        self.stop_flag.set()
        if self.thread is not None:
            self.thread.join(timeout=30)
            assert not self.thread.is_alive(), "the operator did not stop"


class Cluster:
    """Reads and writes through the API the way the Job controller and kubelet would."""

    def __init__(self, kube: KubeAPI, namespace: str) -> None:
        self.kube = kube
        self.namespace = namespace

    # --- Trainings ---

    def create_training(self, name: str, spec: dict[str, Any], labels: dict[str, str] | None = None) -> dict[str, Any]:
        body = {"apiVersion": "cog.run/v1alpha1", "kind": "Training",
                "metadata": {"name": name, "namespace": self.namespace, **({"labels": labels} if labels else {})},
                "spec": spec}
        return self.kube.custom.create_namespaced_custom_object("cog.run", "v1alpha1", self.namespace, "trainings", body)

    def training(self, name: str) -> dict[str, Any]:
        return self.kube.custom.get_namespaced_custom_object("cog.run", "v1alpha1", self.namespace, "trainings", name)

    def patch_training(self, name: str, patch: dict[str, Any]) -> None:
        self.kube.custom.patch_namespaced_custom_object("cog.run", "v1alpha1", self.namespace, "trainings", name, patch)

    def status(self, name: str) -> dict[str, Any]:
        return self.training(name).get("status") or {}

    def wait_phase(self, name: str, phase: str, timeout: float = 15.0) -> dict[str, Any]:
        return wait_for(lambda: (s := self.status(name)).get("phase") == phase and s, timeout,
                        f"Training {name} to be {phase}")

    def condition(self, name: str, kind: str) -> dict[str, Any] | None:
        return next((c for c in self.status(name).get("conditions") or [] if c["type"] == kind), None)

    def events(self, name: str) -> list[dict[str, Any]]:
        found = []
        for (_, plural, namespace, _), obj in list(self.kube.emulator.store.items()):
            involved = obj.get("involvedObject") or {}
            if plural == "events" and namespace == self.namespace and involved.get("name") == name:
                found.append(obj)
        return found

    # --- Jobs and Pods ---

    def jobs(self) -> list[dict[str, Any]]:
        return [o for (gv, plural, ns, _), o in list(self.kube.emulator.store.items())
                if plural == "jobs" and ns == self.namespace]

    def job(self, training: str) -> dict[str, Any]:
        return wait_for(lambda: next((j for j in self.jobs() if j["metadata"]["labels"].get("cog.run/training") == training),
                                     None), what=f"the Job of {training}")

    def pods(self, training: str) -> list[dict[str, Any]]:
        return [o for (gv, plural, ns, _), o in list(self.kube.emulator.store.items())
                if plural == "pods" and ns == self.namespace and
                (o["metadata"].get("labels") or {}).get("cog.run/training") == training]

    def set_job_status(self, job: dict[str, Any], status: dict[str, Any]) -> None:
        self.kube.batch.patch_namespaced_job_status(job["metadata"]["name"], self.namespace, {"status": status})

    def start_pod(self, job: dict[str, Any]) -> str:
        """The Job controller's part: a Pod from the Job's template, owned by the Job."""
        template = job["spec"]["template"]
        name = f"{job['metadata']['name']}-{uuid.uuid4().hex[:5]}"
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": name, "namespace": self.namespace,
                            "labels": {**template["metadata"]["labels"], "job-name": job["metadata"]["name"]},
                            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": job["metadata"]["name"],
                                                 "uid": job["metadata"]["uid"], "controller": True}]},
               "spec": template["spec"]}
        self.kube.core.create_namespaced_pod(self.namespace, pod)
        self.set_job_status(job, {"active": 1, "startTime": "2026-11-27T10:00:00Z"})
        return name

    def write_log(self, pod: str, text: str, container: str = "driver") -> None:
        """The container prints `text` (served as pods/log)."""
        logs = self.kube.emulator.pod_logs
        key = (self.namespace, pod, container)
        logs[key] = logs.get(key, "") + text

    def set_pod_status(self, pod: str, status: dict[str, Any]) -> None:
        self.kube.core.patch_namespaced_pod_status(pod, self.namespace, {"status": status})

    def run_pod(self, pod: str) -> None:
        """The kubelet's part: scheduled, model sidecar started, driver running."""
        self.set_pod_status(pod, {
            "phase": "Running", "startTime": "2026-11-27T10:00:01Z",
            "conditions": [{"type": "PodScheduled", "status": "True"}],
            "initContainerStatuses": [running("model")],
            "containerStatuses": [running("driver", "2026-11-27T10:00:05Z")],
        })

    def finish_pod(self, pod: str, exit_code: int, report: dict[str, Any] | None, model_state: dict[str, Any] | None = None,
                   **extra: Any) -> None:
        terminated: dict[str, Any] = {"exitCode": exit_code, "reason": "Completed" if exit_code == 0 else "Error",
                                      "startedAt": "2026-11-27T10:00:05Z", "finishedAt": "2026-11-27T10:30:00Z"}
        if report is not None:
            terminated["message"] = json.dumps(report)
        self.set_pod_status(pod, {
            "phase": "Succeeded" if exit_code == 0 else "Failed",
            "initContainerStatuses": [model_state or container("model", {"terminated": {"exitCode": 0}})],
            "containerStatuses": [container("driver", {"terminated": terminated})],
            **extra,
        })

    def complete_job(self, job: dict[str, Any]) -> None:
        self.set_job_status(job, {"active": 0, "succeeded": 1, "completionTime": "2026-11-27T10:30:01Z",
                                  "conditions": [{"type": "SuccessCriteriaMet", "status": "True"},
                                                 {"type": "Complete", "status": "True",
                                                  "lastTransitionTime": "2026-11-27T10:30:01Z"}]})

    def fail_job(self, job: dict[str, Any], reason: str, message: str = "") -> None:
        self.set_job_status(job, {"active": 0, "failed": 1,
                                  "conditions": [{"type": "Failed", "status": "True", "reason": reason,
                                                  "message": message, "lastTransitionTime": "2026-11-27T10:30:01Z"}]})


def container(name: str, state: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """A container status as the kubelet writes it."""
    return {"name": name, "image": f"example.com/{name}:1", "imageID": f"example.com/{name}@sha256:{'0' * 64}",
            "restartCount": 0, "ready": "running" in state, "started": "running" in state, "state": state, **extra}


def running(name: str, started: str = "2026-11-27T10:00:02Z") -> dict[str, Any]:
    return container(name, {"running": {"startedAt": started}})
