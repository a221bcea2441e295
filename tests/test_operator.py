"""The operator running for real (kopf) against the test API server and a real registry."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import kopf
import kubernetes_validate
import pytest

from cogtrain.handlers import Runtime
from cogtrain.registry import RegistryClient
from cogtrain.resolver import SchemaResolver
from cogtrain.settings import Settings
from support.cluster_sim import Cluster, RunningOperator, wait_for
from support.k8s_server import Fault, KubeAPI
from support.k8s_versions import K8S_VERSIONS
from support.registries import Registries
from support.trainings import DATA, model, spec, succeed


@pytest.fixture()
def runtime(kube: KubeAPI) -> Runtime:
    return Runtime(settings=Settings(driver_image="example.com/cogtrain:test", default_destination="s3://weights/",
                                     pod_refusal_check_seconds=1),
                   api_client=kube.api_client, resolver=SchemaResolver(RegistryClient(timeout=2)))


@pytest.fixture()
def operator(kube: KubeAPI, runtime: Runtime) -> Iterator[RunningOperator]:
    running_operator = RunningOperator(kube, runtime).start()
    yield running_operator
    running_operator.stop()


@pytest.fixture()
def cluster(kube: KubeAPI) -> Cluster:
    return Cluster(kube, f"ns-{uuid.uuid4().hex[:8]}")


@pytest.mark.integration
def test_happy_path(operator: RunningOperator, cluster: Cluster, registries: Registries) -> None:
    cluster.create_training("tok", spec(registries, destination="s3://bucket/trainings/"))
    job = cluster.job("tok")
    pending = cluster.wait_phase("tok", "Pending")
    digest = registries.digests["training-output"]
    assert pending["imageDigest"] == f"{registries.anonymous.host}/acme/training-output@{digest}"
    assert pending["jobName"] == job["metadata"]["name"]
    assert cluster.condition("tok", "Validated")["status"] == "True"
    assert cluster.condition("tok", "Reconciling")["status"] == "True"
    model_container = job["spec"]["template"]["spec"]["initContainers"][0]
    assert model_container["image"] == pending["imageDigest"]
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(job, version, strict=True)

    report = {"status": "succeeded", "output": {"weights": "s3://bucket/trainings/ns/tok/weights.bin"},
              "metrics": {"predict_time": 1801.5}}
    job_pod = cluster.start_pod(job)
    cluster.run_pod(job_pod)
    running_status = cluster.wait_phase("tok", "Running")
    assert running_status["startTime"].startswith("2026-11-27T10:00:05")
    cluster.finish_pod(job_pod, 0, report)
    cluster.complete_job(job)
    final = cluster.wait_phase("tok", "Succeeded")
    assert final["output"] == report["output"]
    assert final["weights"] == "s3://bucket/trainings/ns/tok/weights.bin"
    assert final["metrics"]["values"] == {"predict_time": 1801.5}, "the model server's metrics, as the driver reported them"
    assert final["metrics"]["observedTime"] == final["completionTime"]
    assert final["completionTime"].startswith("2026-11-27T10:30:01")
    conditions = {c["type"]: c for c in final["conditions"]}
    assert {k: c["status"] for k, c in conditions.items()} == {
        "Validated": "True", "Ready": "True", "Reconciling": "False", "Stalled": "False",
        "Succeeded": "True", "Failed": "False"}
    generation = cluster.training("tok")["metadata"]["generation"]
    assert all(c["observedGeneration"] == generation for c in conditions.values())
    assert final["observedGeneration"] == generation
    reasons = wait_for(lambda: (r := {e["reason"] for e in cluster.events("tok")}) >= {"JobCreated", "Running", "Succeeded"}
                       and r, what="events for each transition")
    assert "Failed" not in reasons
    assert len(cluster.jobs()) == 1


@pytest.mark.integration
@pytest.mark.parametrize(
    ("training_spec", "reason", "message"),
    [
        ({"input": {"train_data": DATA, "seed": "3", "lr": 1}}, "InvalidInput",
         'input.seed: "3" is a string, but this input takes an integer; write 3 without quotes'),
        ({"model_name": "plain"}, "NotACogImage", "is not a Cog model"),
        ({"model_name": "predict-only"}, "NoTrainingInterface", "this model's cog.yaml has no `train:`"),
        ({"model_name": "nothing"}, "ImageNotFound", "the registry has no repository acme/nothing"),
        ({"input": {"train_data": DATA}, "secretInputs": {"seed": {"name": "s", "key": "k"}}}, "InvalidInput",
         "secretInputs.seed: is not a Secret input of this model"),
    ],
)
def test_unusable_trainings_fail_without_a_job(operator: RunningOperator, cluster: Cluster, registries: Registries,
                                              training_spec: dict[str, Any], reason: str, message: str) -> None:
    training_spec = dict(training_spec)
    image = model(registries, training_spec.pop("model_name", "training-output"))
    cluster.create_training("bad", {"model": image, "input": {"train_data": DATA}, **training_spec})
    status = cluster.wait_phase("bad", "Failed")
    assert message in status["error"]
    validated = cluster.condition("bad", "Validated")
    assert (validated["status"], validated["reason"]) == ("False", reason) and message in validated["message"]
    assert cluster.condition("bad", "Stalled")["status"] == "True"
    assert cluster.condition("bad", "Failed")["status"] == "True"
    warning = wait_for(lambda: next((e for e in cluster.events("bad") if e["reason"] == reason), None),
                       what="a Warning event")
    assert warning["type"] == "Warning" and message in warning["message"]
    assert cluster.jobs() == []


@pytest.mark.integration
def test_no_destination_anywhere(kube: KubeAPI, cluster: Cluster, registries: Registries) -> None:
    runtime = Runtime(settings=Settings(), api_client=kube.api_client, resolver=SchemaResolver(RegistryClient()))
    running_operator = RunningOperator(kube, runtime).start()
    try:
        cluster.create_training("nowhere", spec(registries))
        status = cluster.wait_phase("nowhere", "Failed")
        assert "spec.destination: not set" in status["error"]
        assert {c["type"]: c["reason"] for c in status["conditions"]}["Failed"] == "NoDestination"
    finally:
        running_operator.stop()
    assert cluster.jobs() == []


@pytest.mark.integration
@pytest.mark.parametrize(
    ("outcome", "reason", "error"),
    [
        ({"report": {"status": "failed", "reason": "TrainingFailed",
                     "message": "the model's train() raised: ValueError: learning rate too high"}, "exit": 10},
         "TrainingFailed", "the model's train() raised: ValueError: learning rate too high"),
        ({"report": {"status": "failed", "reason": "SetupFailed", "message": "the model's setup() failed: CUDA error"},
          "exit": 11}, "SetupFailed", "the model's setup() failed: CUDA error"),
        ({"report": None, "exit": 137, "model": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}},
         "OOMKilled", "the model container ran out of memory and was killed"),
        ({"report": None, "exit": 137, "pod": {"reason": "Evicted",
                                               "message": "The node was low on resource: memory."}},
         "Evicted", "the training Pod was evicted: The node was low on resource: memory."),
        ({"report": None, "exit": 3}, "DriverFailed", "the driver exited with code 3 without reporting why"),
        ({"deadline": True}, "DeadlineExceeded", "ran longer than activeDeadlineSeconds (600 s)"),
    ],
)
def test_failures_become_one_clear_error(operator: RunningOperator, cluster: Cluster, registries: Registries,
                                         outcome: dict[str, Any], reason: str, error: str) -> None:
    from support.cluster_sim import container

    cluster.create_training("ft", spec(registries, activeDeadlineSeconds=600))
    job = cluster.job("ft")
    pod = cluster.start_pod(job)
    cluster.run_pod(pod)
    cluster.wait_phase("ft", "Running")
    if outcome.get("deadline"):
        cluster.fail_job(job, "DeadlineExceeded", "Job was active longer than specified deadline")
    else:
        model_state = container("model", outcome["model"]) if "model" in outcome else None
        cluster.finish_pod(pod, outcome["exit"], outcome["report"], model_state, **outcome.get("pod", {}))
        cluster.fail_job(job, "PodFailurePolicy" if outcome["exit"] in (10, 11) else "BackoffLimitExceeded")
    status = cluster.wait_phase("ft", "Failed")
    assert error in status["error"]
    failed = cluster.condition("ft", "Failed")
    assert (failed["status"], failed["reason"]) == ("True", reason)
    assert cluster.condition("ft", "Ready")["status"] == "False"
    assert status["startTime"] and status["completionTime"]


@pytest.mark.integration
@pytest.mark.parametrize(
    ("pod_status", "reason", "message"),
    [
        ({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                              "message": "0/4 nodes are available: 4 Insufficient nvidia.com/gpu."}]},
         "Unschedulable", "0/4 nodes are available: 4 Insufficient nvidia.com/gpu."),
        ({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "True"}],
          "initContainerStatuses": [{"waiting": {"reason": "ImagePullBackOff",
                                                 "message": "Back-off pulling image"}}]},
         "ImagePullBackOff", "the model image cannot be pulled yet: Back-off pulling image"),
        ({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "True"}],
          "initContainerStatuses": [{"running": {"startedAt": "2026-11-27T10:00:02Z"}}],
          "containerStatuses": [{"waiting": {"reason": "CreateContainerConfigError",
                                             "message": 'secret "hf" not found'}}]},
         "CreateContainerConfigError", 'the driver container cannot start: secret "hf" not found'),
    ],
)
def test_pending_says_why(operator: RunningOperator, cluster: Cluster, registries: Registries,
                          pod_status: dict[str, Any], reason: str, message: str) -> None:
    from support.cluster_sim import container

    cluster.create_training("wait", spec(registries))
    job = cluster.job("wait")
    pod = cluster.start_pod(job)
    status = dict(pod_status)
    for key, name in (("initContainerStatuses", "model"), ("containerStatuses", "driver")):
        if key in status:
            status[key] = [container(name, state) for state in status[key]]
    cluster.set_pod_status(pod, status)
    wait_for(lambda: (c := cluster.condition("wait", "Reconciling")) and c["reason"] == reason and c,
             what=f"Pending because {reason}")
    current = cluster.status("wait")
    assert current["phase"] == "Pending"
    assert cluster.condition("wait", "Ready")["message"] == message


@pytest.mark.integration
def test_image_that_can_never_be_pulled_fails(operator: RunningOperator, cluster: Cluster,
                                              registries: Registries) -> None:
    from support.cluster_sim import container

    cluster.create_training("nopull", spec(registries))
    pod = cluster.start_pod(cluster.job("nopull"))
    cluster.set_pod_status(pod, {"phase": "Pending", "initContainerStatuses": [
        container("model", {"waiting": {"reason": "InvalidImageName", "message": "couldn't parse image name"}})]})
    status = cluster.wait_phase("nopull", "Failed")
    assert status["error"] == "the model image cannot be pulled: InvalidImageName: couldn't parse image name"


@pytest.mark.integration
def test_cancel(operator: RunningOperator, cluster: Cluster, registries: Registries) -> None:
    cluster.create_training("stop", spec(registries))
    job = cluster.job("stop")
    pod = cluster.start_pod(job)
    cluster.run_pod(pod)
    cluster.wait_phase("stop", "Running")
    cluster.patch_training("stop", {"spec": {"cancel": True}})
    status = cluster.wait_phase("stop", "Canceled")
    assert status["completionTime"]
    wait_for(lambda: cluster.jobs() == [] and cluster.pods("stop") == [], what="the Job and its Pod to be deleted")
    assert cluster.training("stop")["spec"]["cancel"] is True, "the record stays"
    assert {c["type"]: c["status"] for c in status["conditions"]}["Succeeded"] == "False"
    wait_for(lambda: any(e["reason"] == "Canceled" for e in cluster.events("stop")), what="a Canceled event")


@pytest.mark.integration
def test_canceled_before_it_starts(operator: RunningOperator, cluster: Cluster, registries: Registries) -> None:
    cluster.create_training("never", spec(registries, cancel=True))
    cluster.wait_phase("never", "Canceled")
    assert cluster.jobs() == []


@pytest.mark.integration
def test_delete_removes_job_and_pods(operator: RunningOperator, cluster: Cluster, registries: Registries) -> None:
    cluster.create_training("gone", spec(registries))
    cluster.start_pod(cluster.job("gone"))
    cluster.kube.custom.delete_namespaced_custom_object("cog.run", "v1alpha1", cluster.namespace, "trainings", "gone")
    wait_for(lambda: cluster.jobs() == [] and cluster.pods("gone") == [], what="the Job and Pods to be collected")


@pytest.mark.integration
def test_suspend_is_passed_to_the_job(operator: RunningOperator, cluster: Cluster, registries: Registries) -> None:
    cluster.create_training("queued", spec(registries, suspend=True),
                            labels={"kueue.x-k8s.io/queue-name": "gpus"})
    job = cluster.job("queued")
    assert job["spec"]["suspend"] is True
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpus"
    cluster.set_job_status(job, {"conditions": [{"type": "Suspended", "status": "True", "reason": "JobSuspended"}]})
    wait_for(lambda: (c := cluster.condition("queued", "Reconciling")) and c["reason"] == "Suspended",
             what="Pending because suspended")
    assert "Kueue queue gpus" in cluster.condition("queued", "Ready")["message"]
    cluster.patch_training("queued", {"spec": {"suspend": False}})
    wait_for(lambda: cluster.job("queued")["spec"]["suspend"] is False, what="the Job to be resumed")


@pytest.mark.integration
def test_deprecated_input_warns(operator: RunningOperator, cluster: Cluster, registries: Registries) -> None:
    cluster.create_training("old", {"model": model(registries, "edge-cases"), "input": {"old": "y"}})
    cluster.job("old")
    event = wait_for(lambda: next((e for e in cluster.events("old") if e["reason"] == "DeprecatedInput"), None),
                     what="a DeprecatedInput warning")
    assert event["type"] == "Warning" and "input.old: is deprecated" in event["message"]


# --- restarts and API failures ---------------------------------------------------------------------


@pytest.mark.integration
def test_restart_mid_run_adopts_the_job_and_finishes(kube: KubeAPI, runtime: Runtime, cluster: Cluster,
                                                     registries: Registries) -> None:
    first = RunningOperator(kube, runtime).start()
    try:
        cluster.create_training("resume", spec(registries))
        job = cluster.job("resume")
        pod = cluster.start_pod(job)
        cluster.run_pod(pod)
        cluster.wait_phase("resume", "Running")
    finally:
        first.stop()
    cluster.finish_pod(pod, 0, {"status": "succeeded", "output": "s3://weights/ns/resume/weights.bin"})
    cluster.complete_job(job)
    second = RunningOperator(kube, runtime).start()
    try:
        cluster.wait_phase("resume", "Succeeded")
        status = wait_for(lambda: (s := cluster.status("resume")) == cluster.status("resume") and s,
                          what="a settled status")
        assert status["weights"] == "s3://weights/ns/resume/weights.bin"
        assert status["startTime"].startswith("2026-11-27T10:00:05"), "the start time is kept"
        assert len(cluster.jobs()) == 1
    finally:
        second.stop()

    cluster.kube.batch.delete_namespaced_job(job["metadata"]["name"], cluster.namespace)  # TTL after finishing
    third = RunningOperator(kube, runtime).start()
    try:
        cluster.create_training("probe", spec(registries))
        cluster.job("probe")  # the operator is past its start-up and has resumed what it found
        without_bookkeeping = {k: v for k, v in cluster.status("resume").items() if k != "kopf"}
        assert without_bookkeeping == {k: v for k, v in status.items() if k != "kopf"}, \
            "a finished Training is not re-run or changed"
        assert [j["metadata"]["labels"]["cog.run/training"] for j in cluster.jobs()] == ["probe"]
    finally:
        third.stop()


@pytest.mark.integration
def test_status_is_computed_from_children_read_after_the_training(kube: KubeAPI, operator: RunningOperator,
                                                                  cluster: Cluster, registries: Registries) -> None:
    """A view of the Pods taken before the Training was read could predate a status another writer
    based on newer Pods; the conditional write would then accept the older view (seen as a flaky
    ImagePullBackOff turning back into "starting")."""
    from cogtrain.handlers import sync_status

    cluster.create_training("order", spec(registries))
    job = cluster.job("order")
    cluster.wait_phase("order", "Pending")
    marks: list[int] = []

    def children() -> tuple[list[Any], list[Any]]:
        marks.append(len(kube.emulator.verbs))
        return [job], []

    start = len(kube.emulator.verbs)
    sync_status(operator.runtime, cluster.namespace, "order", children)
    assert marks, "the children were read"
    before = [(g, r, v, ns, n) for g, r, _s, v, ns, n, _u in kube.emulator.verbs[start:marks[0]]]
    assert ("cog.run", "trainings", "get", cluster.namespace, "order") in before, "the Training is read first"


@pytest.mark.integration
def test_lost_status_write_adopts_the_job(kube: KubeAPI, operator: RunningOperator, cluster: Cluster,
                                          registries: Registries) -> None:
    """The Job was created but writing the status failed (as if killed between the two): no second Job."""
    fault = Fault("PATCH", "trainings", status=500, times=1, subresource="status")
    kube.emulator.faults.append(fault)
    try:
        cluster.create_training("lost", spec(registries))
        status = cluster.wait_phase("lost", "Pending", timeout=30)
        assert fault.hits == 1
        assert status["jobName"] == cluster.job("lost")["metadata"]["name"]
        assert len(cluster.jobs()) == 1
    finally:
        kube.emulator.faults.remove(fault)


@pytest.mark.integration
@pytest.mark.parametrize(
    "fault",
    [
        Fault("POST", "jobs", status=500, times=2),
        Fault("POST", "jobs", status=409, times=1),
        Fault("GET", "serviceaccounts", status=503, times=1),
        Fault("POST", "jobs", status=0, delay=2.0, times=1),  # slower than the client's timeout
    ],
    ids=["500-on-create", "409-conflict", "503-on-read", "timeout"],
)
def test_api_errors_are_retried_and_converge(kube: KubeAPI, runtime: Runtime, cluster: Cluster,
                                             registries: Registries, fault: Fault) -> None:
    runtime.request_timeout = 1.0
    kube.emulator.faults.append(fault)
    running_operator = RunningOperator(kube, runtime).start()
    try:
        cluster.create_training("flaky", spec(registries))
        status = cluster.wait_phase("flaky", "Pending", timeout=40)
        assert fault.hits == fault.times
        assert status["jobName"]
        wait_for(lambda: len(cluster.jobs()) == 1, what="exactly one Job")
    finally:
        running_operator.stop()
        kube.emulator.faults.remove(fault)


@pytest.mark.integration
def test_watch_expired_410_gone_relists_and_converges(kube: KubeAPI, operator: RunningOperator, cluster: Cluster,
                                                      registries: Registries) -> None:
    cluster.create_training("before", spec(registries))
    cluster.job("before")
    kube.emulator.expire_watches()
    cluster.create_training("after", spec(registries))
    cluster.job("after")
    cluster.wait_phase("after", "Pending", timeout=30)
    assert sorted(j["metadata"]["labels"]["cog.run/training"] for j in cluster.jobs()) == ["after", "before"]


@pytest.mark.integration
def test_registry_down_stays_pending_then_proceeds(kube: KubeAPI, operator: RunningOperator, cluster: Cluster,
                                                   registries: Registries) -> None:
    from support.registry_server import FaultyRegistry

    proxy = FaultyRegistry(503, upstream=registries.anonymous.url, failures=1)
    try:
        cluster.create_training("later", {"model": f"{proxy.host}/acme/training-output:1.0", "input": {"train_data": DATA}})
        wait_for(lambda: (c := cluster.condition("later", "Validated")) and c["status"] == "Unknown" and c,
                 what="Validated=Unknown while the registry is down")
        assert cluster.status("later")["phase"] == "Pending"
        assert cluster.condition("later", "Validated")["reason"] == "RegistryUnavailable"
        status = wait_for(lambda: (s := cluster.status("later")).get("jobName") and s, timeout=30,
                          what="the Job once the registry answers")
        assert status["imageDigest"].endswith(registries.digests["training-output"])
        assert cluster.condition("later", "Validated")["status"] == "True"
    finally:
        proxy.stop()


UNSCHEDULABLE = {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                                     "message": "0/4 nodes are available: 4 Insufficient nvidia.com/gpu."}]}


def _reconciling(cluster: Cluster, name: str) -> str:
    return str((cluster.condition(name, "Reconciling") or {}).get("reason"))


@pytest.mark.integration
@pytest.mark.parametrize("stuck", [False, True], ids=["until-the-burst-is-handled", "at-most-the-limit"])
def test_a_wait_is_reported_after_the_jobs_of_new_trainings_are_made(
        kube: KubeAPI, operator: RunningOperator, cluster: Cluster, registries: Registries,
        monkeypatch: pytest.MonkeyPatch, stuck: bool) -> None:
    """While a new Training waits for its first handling, an Unschedulable Pod of another is not written into
    its status: the Jobs go first. Written once none waits, or after DEFER_LIMIT while one never stops waiting."""
    from cogtrain import handlers

    monkeypatch.setattr(handlers, "DEFER_LIMIT", 4.0)
    cluster.create_training("first", spec(registries))
    pod = cluster.start_pod(cluster.job("first"))
    wait_for(lambda: _reconciling(cluster, "first") not in ("None", "Unschedulable"), what="the Job named in the status")
    fault = Fault("POST", "jobs", status=500, times=1000 if stuck else 1)
    kube.emulator.faults.append(fault)
    try:
        cluster.create_training("second", spec(registries))
        wait_for(lambda: fault.hits >= 1, what="the second Training's Job refused once")
        cluster.set_pod_status(pod, UNSCHEDULABLE)
        held = time.monotonic()  # the operator holds the write from its Pod event on: DEFER_LIMIT from about now
        time.sleep(1.5)  # the operator sees the Pod at once; kopf retries the second's handler after 5 s
        assert not cluster.status("second").get("phase") and _reconciling(cluster, "first") != "Unschedulable"
        if not stuck:
            wait_for(lambda: cluster.status("second").get("jobName"), timeout=30, what="the second Training's Job")
            wait_for(lambda: _reconciling(cluster, "first") == "Unschedulable", timeout=3,
                     what="the wait reported once no Training waits for its first handling")
        else:
            wait_for(lambda: _reconciling(cluster, "first") == "Unschedulable", timeout=15,
                     what="the wait reported after DEFER_LIMIT")
            assert time.monotonic() - held >= 3.0, "not written while the second Training waited"
            assert not cluster.status("second").get("phase"), "the second still waits for its first handling"
    finally:
        kube.emulator.faults.remove(fault)


@pytest.mark.integration
def test_event_handler_successes_are_not_logged(operator: RunningOperator, cluster: Cluster, registries: Registries,
                                                caplog: pytest.LogCaptureFixture) -> None:
    """One line per Training, Job and Pod event said nothing; the create handler's lines stay."""
    import logging

    from cogtrain import handlers

    kopf_objects = logging.getLogger("kopf.objects")
    before = list(kopf_objects.filters)
    handlers.quiet_event_handlers()
    try:
        with caplog.at_level(logging.INFO, logger="kopf.objects"):
            cluster.create_training("quiet", spec(registries))
            cluster.set_pod_status(cluster.start_pod(cluster.job("quiet")), UNSCHEDULABLE)
            wait_for(lambda: _reconciling(cluster, "quiet") == "Unschedulable", what="the Pod's wait in the status")
        lines = [record.getMessage() for record in caplog.records if record.name == "kopf.objects"]
        assert "Handler 'reconcile' succeeded." in lines
        assert not [line for line in lines if line.endswith("_event' succeeded.") or line.startswith("Handler 'track'")]
    finally:
        kopf_objects.filters[:] = before


@pytest.mark.integration
def test_only_the_operators_own_jobs_and_pods_are_listed_and_watched(kube: KubeAPI, operator: RunningOperator,
                                                                     cluster: Cluster, registries: Registries) -> None:
    """Selected by the API server: in a cluster, every other Pod was sent to the operator and dropped there."""
    cluster.create_training("own", spec(registries))
    cluster.job("own")
    asked = [(verb, plural, selector) for verb, plural, selector in kube.emulator.selectors if plural in ("jobs", "pods")]
    watches = {(plural, selector) for verb, plural, selector in asked if verb == "watch"}  # only operators watch here
    assert watches == {("jobs", "app.kubernetes.io/managed-by=cog-training-operator"),
                       ("pods", "app.kubernetes.io/managed-by=cog-training-operator")}
    assert not [entry for entry in asked if not entry[2]], "no unselected list or watch of Jobs or Pods"


# --- the command users run -----------------------------------------------------------------------


@pytest.mark.integration
def test_cogtrain_operator_command(kube: KubeAPI, cluster: Cluster, registries: Registries, tmp_path: Any) -> None:
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    script = Path(sys.executable).parent / "cogtrain"
    env = {**os.environ, "KUBECONFIG": str(kube.kubeconfig), "COGTRAIN_DRIVER_IMAGE": "example.com/driver:9"}
    log = (tmp_path / "operator.log").open("w")
    process = subprocess.Popen(
        [str(script), "operator", "-A", "--standalone", "--log-format", "plain",
         "--default-destination", "s3://cli-weights/", "--insecure-registry", "registry.ml.svc:5000",
         "--liveness", "http://127.0.0.1:0/healthz"],
        env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        cluster.create_training("cli", spec(registries))
        job = wait_for(lambda: next((j for j in cluster.jobs() if j["metadata"]["labels"]["cog.run/training"] == "cli"),
                                    None), timeout=60, what="the Job made by `cogtrain operator`")
        driver = job["spec"]["template"]["spec"]["containers"][0]
        assert driver["image"] == "example.com/driver:9"
        assert "--destination=s3://cli-weights/" in driver["args"]
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=60)
    assert code == 0, (tmp_path / "operator.log").read_text()[-3000:]


@pytest.mark.unit
def test_cogtrain_operator_needs_a_scope(capsys: pytest.CaptureFixture[str]) -> None:
    from cogtrain.cli import main

    assert main(["operator"]) == 2
    assert "give --all-namespaces (-A) or one --namespace NS" in capsys.readouterr().err


# --- what a hostile or careless namespace member can do (docs/security.md) -------------------------


@pytest.mark.integration
def test_a_job_deleted_while_running_fails_the_training_and_is_never_made_again(
        operator: RunningOperator, cluster: Cluster, registries: Registries) -> None:
    cluster.create_training("gone", spec(registries))
    job = cluster.job("gone")
    cluster.run_pod(cluster.start_pod(job))
    cluster.wait_phase("gone", "Running")
    cluster.kube.batch.delete_namespaced_job(job["metadata"]["name"], cluster.namespace)
    status = cluster.wait_phase("gone", "Failed")
    assert cluster.condition("gone", "Failed")["reason"] == "JobLost"
    assert "is not run again" in status["error"]
    assert cluster.jobs() == [], "the training's output may exist already: no second Job"


@pytest.mark.integration
def test_a_job_removed_while_the_operator_was_down_is_not_run_again(
        kube: KubeAPI, runtime: Runtime, cluster: Cluster, registries: Registries) -> None:
    first = RunningOperator(kube, runtime).start()
    try:
        cluster.create_training("ttl", spec(registries))
        job = cluster.job("ttl")
        cluster.wait_phase("ttl", "Pending")
        wait_for(lambda: cluster.status("ttl").get("jobName"), what="the jobName")
    finally:
        first.stop()
    cluster.kube.batch.delete_namespaced_job(job["metadata"]["name"], cluster.namespace)
    second = RunningOperator(kube, runtime).start()
    try:
        cluster.wait_phase("ttl", "Failed")
        assert cluster.condition("ttl", "Failed")["reason"] == "JobLost"
        assert cluster.jobs() == []
    finally:
        second.stop()


@pytest.mark.integration
def test_a_canceled_training_whose_job_goes_is_canceled_not_lost(
        operator: RunningOperator, cluster: Cluster, registries: Registries) -> None:
    cluster.create_training("stop", spec(registries))
    cluster.run_pod(cluster.start_pod(cluster.job("stop")))
    cluster.wait_phase("stop", "Running")
    cluster.patch_training("stop", {"spec": {"cancel": True}})
    cluster.wait_phase("stop", "Canceled")
    wait_for(lambda: cluster.jobs() == [], what="the Job to go")
    assert cluster.status("stop")["phase"] == "Canceled"


@pytest.mark.integration
def test_a_pod_that_only_wears_the_labels_decides_nothing(
        operator: RunningOperator, cluster: Cluster, registries: Registries) -> None:
    cluster.create_training("tok", spec(registries))
    job = cluster.job("tok")
    cluster.wait_phase("tok", "Pending")
    forged = {"apiVersion": "v1", "kind": "Pod",
              "metadata": {"name": "forged", "namespace": cluster.namespace,
                           "labels": dict(job["spec"]["template"]["metadata"]["labels"])},
              "spec": {"containers": [{"name": "driver", "image": "evil:1"}]}}
    cluster.kube.core.create_namespaced_pod(cluster.namespace, forged)
    cluster.finish_pod("forged", 0, {"status": "succeeded", "output": "s3://attacker/weights.bin"})
    pod = cluster.start_pod(job)
    cluster.run_pod(pod)
    cluster.wait_phase("tok", "Running")
    cluster.finish_pod(pod, 0, {"status": "succeeded", "output": "s3://weights/ns/tok/weights.bin"})
    cluster.complete_job(job)
    status = cluster.wait_phase("tok", "Succeeded")
    assert status["weights"] == "s3://weights/ns/tok/weights.bin", "only Pods owned by the Job's uid count"


@pytest.mark.integration
def test_a_job_the_api_server_refuses_fails_with_its_reason(
        kube: KubeAPI, operator: RunningOperator, cluster: Cluster, registries: Registries) -> None:
    kube.emulator.faults.append(Fault("POST", "jobs", status=422, times=1))
    cluster.create_training("refused", spec(registries))
    status = cluster.wait_phase("refused", "Failed")
    assert cluster.condition("refused", "Failed")["reason"] == "JobRejected"
    assert "the Job was refused (HTTP 422)" in status["error"]


@pytest.mark.integration
def test_a_forbidden_job_waits_with_its_reason_then_proceeds(
        kube: KubeAPI, operator: RunningOperator, cluster: Cluster, registries: Registries) -> None:
    kube.emulator.faults.append(Fault("POST", "jobs", status=403, times=1))
    cluster.create_training("quota", spec(registries))
    wait_for(lambda: (c := cluster.condition("quota", "Reconciling")) and c["reason"] == "JobRejected",
             what="Pending with the refusal")
    assert cluster.status("quota")["phase"] == "Pending"
    cluster.job("quota")  # retried with backoff, and allowed now


@pytest.mark.integration
@pytest.mark.parametrize(("field", "reason"), [("serviceAccountName", "ServiceAccountMissing"),
                                                ("priorityClassName", "PriorityClassMissing")])
def test_a_missing_service_account_or_priority_class_says_so_then_proceeds(
        kube: KubeAPI, operator: RunningOperator, cluster: Cluster, registries: Registries,
        field: str, reason: str) -> None:
    name = f"x-{uuid.uuid4().hex[:6]}"
    cluster.create_training("waits", spec(registries, **{field: name}))
    wait_for(lambda: (c := cluster.condition("waits", "Reconciling")) and c["reason"] == reason,
             what=f"Pending with {reason}")
    assert name in cluster.condition("waits", "Reconciling")["message"]
    assert cluster.jobs() == []
    if field == "serviceAccountName":
        kube.core.create_namespaced_service_account(cluster.namespace, {"metadata": {"name": name}})
    else:
        from kubernetes import client

        client.SchedulingV1Api(kube.api_client).create_priority_class(
            {"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass", "metadata": {"name": name}, "value": 1})
    job = wait_for(lambda: cluster.jobs(), timeout=30, what="the Job once it exists")[0]
    assert job["spec"]["template"]["spec"][field] == name


@pytest.mark.integration
def test_a_huge_failure_message_still_writes_the_status(
        operator: RunningOperator, cluster: Cluster, registries: Registries) -> None:
    cluster.create_training("loud", spec(registries))
    job = cluster.job("loud")
    pod = cluster.start_pod(job)
    cluster.run_pod(pod)
    cluster.wait_phase("loud", "Running")
    cluster.finish_pod(pod, 10, {"status": "failed", "reason": "TrainingFailed", "message": "x" * 60000})
    cluster.fail_job(job, "PodFailurePolicy")
    status = cluster.wait_phase("loud", "Failed")
    assert 1000 < len(status["error"]) <= 8192 and status["error"].endswith("…")


@pytest.mark.integration
def test_a_pod_the_api_server_refuses_is_named_in_the_status(
        kube: KubeAPI, operator: RunningOperator, cluster: Cluster, registries: Registries) -> None:
    """The Job controller only posts FailedCreate Events (a quota, Pod Security): the status must say so."""
    cluster.create_training("quota", spec(registries))
    job = cluster.job("quota")
    kube.core.create_namespaced_event(cluster.namespace, {
        "metadata": {"name": "quota-event"}, "reason": "FailedCreate", "type": "Warning",
        "message": 'pods "x" is forbidden: exceeded quota: gpus, requested: requests.nvidia.com/gpu=2',
        "involvedObject": {"kind": "Job", "name": job["metadata"]["name"], "namespace": cluster.namespace}})
    wait_for(lambda: (c := cluster.condition("quota", "Reconciling")) and c["reason"] == "PodRefused", timeout=30,
             what="PodRefused")
    assert "exceeded quota: gpus" in cluster.condition("quota", "Reconciling")["message"]
    cluster.run_pod(cluster.start_pod(job))  # the quota freed: the Pod comes, and the status moves on
    cluster.wait_phase("quota", "Running")


@pytest.mark.integration
@pytest.mark.parametrize("edit", [{"cancel": True}, {"suspend": True}])
def test_an_edit_to_a_finished_training_is_observed_and_changes_nothing(
        operator: RunningOperator, cluster: Cluster, registries: Registries, edit: dict[str, bool]) -> None:
    """kstatus (Flux) reads observedGeneration behind generation as in progress, for ever on a finished Training."""
    cluster.create_training("done", spec(registries))
    succeed(cluster, "done", {"status": "succeeded", "output": "s3://w/ns/done/weights.bin"})
    before = cluster.status("done")
    cluster.patch_training("done", {"spec": edit})
    generation = cluster.training("done")["metadata"]["generation"]
    assert generation > before["observedGeneration"]
    wait_for(lambda: cluster.status("done").get("observedGeneration") == generation, what="the edit to be observed")
    after = cluster.status("done")
    assert (after["phase"], after["weights"], after["completionTime"]) == (
        "Succeeded", before["weights"], before["completionTime"])


@pytest.mark.integration
def test_a_disruption_seen_between_a_cancel_and_its_handling_ends_canceled(
        kube: KubeAPI, runtime: Runtime, cluster: Cluster, registries: Registries) -> None:
    """The status writers (their own threads) may see an eviction after spec.cancel was set and before kopf's cancel
    handler ran (here: with the operator down in between). A cancel ends Canceled: no restart is counted, and the
    last restart allowed does not fail the Training with TooManyRestarts (whose status the cancel handler then
    sees as final)."""
    from cogtrain.handlers import _reader, sync_status

    first = RunningOperator(kube, runtime).start()
    try:
        cluster.create_training("race", spec(registries, maxRestarts=0))
        job = cluster.job("race")
        pod = cluster.start_pod(job)
        cluster.run_pod(pod)
        cluster.wait_phase("race", "Running")
    finally:
        first.stop()
    cluster.patch_training("race", {"spec": {"cancel": True}})
    cluster.set_pod_status(pod, {"phase": "Failed", "conditions": [
        {"type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI",
         "message": "Eviction API: evicting", "lastTransitionTime": "2026-11-27T10:10:00Z"}]})
    with pytest.MonkeyPatch.context() as patched:  # no kopf to post Events through: the operator is down
        posted: list[str] = []
        patched.setattr(kopf, "info", lambda *_, reason, **__: posted.append(reason))
        patched.setattr(kopf, "warn", lambda *_, reason, **__: posted.append(reason))
        sync_status(runtime, cluster.namespace, "race", _reader(runtime, cluster.namespace, "race", job["metadata"]["name"]))
    assert posted == []
    assert cluster.status("race")["phase"] == "Running", "the cancel handler decides"
    second = RunningOperator(kube, runtime).start()
    try:
        status = cluster.wait_phase("race", "Canceled")
        assert not status.get("restarts")
        assert not any(e["reason"] == "Restarted" for e in cluster.events("race"))
    finally:
        second.stop()


@pytest.mark.integration
def test_a_training_created_with_a_garbage_diff_base_annotation_is_handled(
        operator: RunningOperator, cluster: Cluster, registries: Registries) -> None:
    """The legacy diff-base annotation is the creator's to write: garbage in it must not stop kopf handling the
    Training (no Job, no status, no cancel, for good; and, never handled, it holds every Training's waits back)."""
    body = spec(registries)
    training = {"apiVersion": "cog.run/v1alpha1", "kind": "Training",
                "metadata": {"name": "forged", "namespace": cluster.namespace,
                             "annotations": {"cog.run/last-handled-configuration": "{garbage"}}, "spec": body}
    cluster.kube.custom.create_namespaced_custom_object("cog.run", "v1alpha1", cluster.namespace, "trainings", training)
    assert cluster.wait_phase("forged", "Pending")["jobName"] == cluster.job("forged")["metadata"]["name"]
    cluster.patch_training("forged", {"spec": {"cancel": True}})
    cluster.wait_phase("forged", "Canceled")



@pytest.mark.unit
@pytest.mark.parametrize(("event_type", "going", "behind"), [
    pytest.param("MODIFIED", True, False, id="being-deleted"),
    pytest.param("DELETED", True, False, id="deleted"),
    pytest.param("MODIFIED", False, True, id="changed"),
    pytest.param(None, False, False, id="listed"),
])
def test_the_jobs_and_pods_of_a_deleted_training_are_not_a_reason_to_read_it(
        event_type: str | None, going: bool, behind: bool) -> None:
    """Deleting Trainings (thousands, in a clean-up) has the garbage collector update and delete their Jobs and
    Pods after the Training's own DELETED event: each was a GET of the Training (404), on the status threads."""
    from kubernetes import client

    from cogtrain.handlers import _child_behind

    runtime = Runtime(settings=Settings(), api_client=client.ApiClient(), resolver=SchemaResolver(RegistryClient()))
    gone = {"metadata": {"namespace": "ml", "name": "t", "uid": "u"}, "status": {"phase": "Running"}}
    key = runtime.view.training_seen("DELETED", gone)
    assert _child_behind(runtime, key, event_type, None, going) == (behind, False)


@pytest.mark.integration
def test_a_training_past_its_restarts_has_its_job_deleted_despite_an_api_error(
        kube: KubeAPI, operator: RunningOperator, cluster: Cluster, registries: Registries) -> None:
    """TooManyRestarts is final, so nothing looks at the Training again: a DELETE of its Job that failed once
    (a 500, a timeout) left the Job making Pods on the GPUs, for a Training that says it failed."""
    cluster.create_training("limit", spec(registries, maxRestarts=0))
    job = cluster.job("limit")
    pod = cluster.start_pod(job)
    cluster.run_pod(pod)
    cluster.wait_phase("limit", "Running")
    fault = Fault("DELETE", "jobs", status=500, times=1)
    kube.emulator.faults.append(fault)
    try:
        cluster.set_pod_status(pod, {"phase": "Failed", "conditions": [
            {"type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler",
             "message": "preempted", "lastTransitionTime": "2026-11-27T10:10:00Z"}]})
        status = cluster.wait_phase("limit", "Failed")
        assert {c["type"]: c["reason"] for c in status["conditions"]}["Failed"] == "TooManyRestarts"
        wait_for(lambda: cluster.jobs() == [], what="the Job to be deleted")
        assert fault.hits == 1
    finally:
        kube.emulator.faults.remove(fault)
