"""The end-to-end test cluster itself: a real control plane (support/control_plane.py) and the node agent
(support/node_agent.py) behave as Kubernetes does where the operator relies on it (docs/cluster.md).

Needs root (network and mount namespaces), iproute2 and the binaries of scripts/build-k8s.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kubernetes import client

from support.control_plane import Cluster
from support.node_agent import HOST_IMAGE
from support.paths import EXAMPLES

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

MODEL_IMAGE = "127.0.0.1:5999/acme/hello-train"  # no registry: the node agent maps it to the model's folder
# One cluster for the session (move this line to conftest.py to share it with other modules).


def wait_for(what: str, check: Callable[[], Any], timeout: float = 60, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"{what}: not within {timeout} s (last: {last!r})")


@pytest.fixture(scope="module")
def api(cluster: Cluster) -> client.ApiClient:
    return cluster.api_client()


@pytest.fixture
def namespace(api: client.ApiClient) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:8]}"
    client.CoreV1Api(api).create_namespace({"metadata": {"name": name}})
    wait_for("the default ServiceAccount", lambda: any(
        sa.metadata.name == "default" for sa in client.CoreV1Api(api).list_namespaced_service_account(name).items))
    yield name
    client.CoreV1Api(api).delete_namespace(name)


def host_container(name: str, script: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "image": HOST_IMAGE, "command": ["python", "-c", script], **extra}


def job(name: str, containers: list[dict[str, Any]], init: list[dict[str, Any]] | None = None,
        **pod: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"restartPolicy": "Never", "terminationGracePeriodSeconds": 5, "containers": containers,
                            **pod}
    if init:
        spec["initContainers"] = init
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
            "spec": {"backoffLimit": 0, "template": {"spec": spec}}}


def pod_manifest(name: str, containers: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 5, "containers": containers, **spec}}


def job_condition(api: client.ApiClient, namespace: str, name: str) -> str | None:
    status = client.BatchV1Api(api).read_namespaced_job_status(name, namespace).status
    for condition in status.conditions or []:
        if condition.type in ("Complete", "Failed") and condition.status == "True":
            return str(condition.type)
    return None


def job_pod(api: client.ApiClient, namespace: str, name: str) -> client.V1Pod:
    pods = wait_for(f"a Pod of Job {name}", lambda: client.CoreV1Api(api).list_namespaced_pod(
        namespace, label_selector=f"job-name={name}").items)
    return pods[0]


def read_pod(api: client.ApiClient, namespace: str, name: str) -> client.V1Pod:
    return client.CoreV1Api(api).read_namespaced_pod(name, namespace)


def phase(api: client.ApiClient, namespace: str, name: str) -> str:
    return str(read_pod(api, namespace, name).status.phase)


def gone(api: client.ApiClient, namespace: str, name: str) -> bool:
    try:
        read_pod(api, namespace, name)
    except client.ApiException as error:
        return error.status == 404
    return False


def test_rbac_refuses_a_service_account_without_rights(api: client.ApiClient, cluster: Cluster, namespace: str) -> None:
    core = client.CoreV1Api(api)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "nobody"}})
    token = core.create_namespaced_service_account_token(
        "nobody", namespace, {"spec": {"expirationSeconds": 600}}).status.token
    configuration = client.Configuration()
    configuration.host = cluster.control_plane.server
    configuration.ssl_ca_cert = str(cluster.control_plane.ca.cert_path)
    configuration.api_key = {"authorization": f"Bearer {token}"}
    as_nobody = client.CoreV1Api(client.ApiClient(configuration))
    with pytest.raises(client.ApiException) as refused:
        as_nobody.list_namespaced_pod(namespace)
    assert refused.value.status == 403
    assert f"system:serviceaccount:{namespace}:nobody" in json.loads(refused.value.body)["message"]

    rbac = client.RbacAuthorizationV1Api(api)
    rbac.create_namespaced_role(namespace, {"metadata": {"name": "read-pods"}, "rules": [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}]})
    rbac.create_namespaced_role_binding(namespace, {
        "metadata": {"name": "nobody-reads-pods"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "read-pods"},
        "subjects": [{"kind": "ServiceAccount", "name": "nobody", "namespace": namespace}]})
    # The authorizer sees a new RoleBinding through its informer: until then the list is still refused.
    def reads_pods() -> bool:
        try:
            return as_nobody.list_namespaced_pod(namespace).items == []
        except client.ApiException as error:
            if error.status != 403:
                raise
            return False

    wait_for("the RoleBinding to apply", reads_pods, timeout=60)
    with pytest.raises(client.ApiException) as still:
        as_nobody.list_namespaced_secret(namespace)
    assert still.value.status == 403


def test_a_job_completes_through_the_job_controller_and_scheduler(api: client.ApiClient, namespace: str) -> None:
    script = "import os; print(1); print(os.environ['GREETING'], os.environ['KUBERNETES_SERVICE_HOST'])"
    client.BatchV1Api(api).create_namespaced_job(namespace, job("print", [host_container(
        "main", script, env=[{"name": "GREETING", "value": "hello $(WHO)"}, {"name": "WHO", "value": "x"}])]))
    assert wait_for("the Job to end", lambda: job_condition(api, namespace, "print")) == "Complete"
    pod = job_pod(api, namespace, "print")
    assert pod.spec.node_name == "node-1"
    assert pod.status.phase == "Succeeded"
    state = pod.status.container_statuses[0].state.terminated
    assert (state.exit_code, state.reason) == (0, "Completed")
    # Container logs come from the node agent through the API server, as `kubectl logs` reads them.
    logs = client.CoreV1Api(api).read_namespaced_pod_log(pod.metadata.name, namespace)
    assert logs == "1\nhello $(WHO) 127.0.0.1\n"  # WHO is defined after GREETING: not expanded, as in Kubernetes
    conditions = {c.type: (c.status, c.reason) for c in pod.status.conditions}
    assert conditions["Ready"] == ("False", "PodCompleted")
    assert conditions["Initialized"] == ("True", "PodCompleted")
    assert conditions["PodScheduled"][0] == "True"


def test_volumes_and_the_security_context_apply_inside_the_container(api: client.ApiClient,
                                                                     namespace: str) -> None:
    client.CoreV1Api(api).create_namespaced_config_map(namespace, {"metadata": {"name": "settings"},
                                                                   "data": {"mode": "fast"}})
    fill = host_container("fill", "open('/data/data.txt', 'w').write('from init')",
                          volumeMounts=[{"name": "work", "mountPath": "/data"}])
    check = """
import json, os
report = {"data": open('/data/data.txt').read(), "mode": open('/config/mode').read()}
for path in ('/etc/cogtrain-test-probe', '/config/other'):
    try:
        open(path, 'w')
        report[path] = 'written'
    except OSError as error:
        report[path] = error.strerror
report["capabilities"] = [l.split()[1] for l in open('/proc/self/status') if l.startswith('CapEff')][0]
open('/dev/termination-log', 'w').write(json.dumps(report))
"""
    main = host_container("main", check, volumeMounts=[
        {"name": "work", "mountPath": "/data", "readOnly": True}, {"name": "config", "mountPath": "/config"}],
        securityContext={"readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False,
                         "capabilities": {"drop": ["ALL"]}})
    client.BatchV1Api(api).create_namespaced_job(namespace, job("volumes", [main], init=[fill], volumes=[
        {"name": "work", "emptyDir": {}}, {"name": "config", "configMap": {"name": "settings"}}]))
    assert wait_for("the Job to end", lambda: job_condition(api, namespace, "volumes")) == "Complete"
    report = json.loads(job_pod(api, namespace, "volumes").status.container_statuses[0].state.terminated.message)
    assert report == {"data": "from init", "mode": "fast", "/etc/cogtrain-test-probe": "Read-only file system",
                      "/config/other": "Read-only file system", "capabilities": "0000000000000000"}


def test_a_pod_reaches_the_api_server_with_its_service_account_token(api: client.ApiClient,
                                                                     namespace: str) -> None:
    script = """
import json, os, ssl, urllib.error, urllib.request
folder = '/var/run/secrets/kubernetes.io/serviceaccount'
token, namespace = open(folder + '/token').read(), open(folder + '/namespace').read()
url = f"https://{os.environ['KUBERNETES_SERVICE_HOST']}:{os.environ['KUBERNETES_SERVICE_PORT']}"
context = ssl.create_default_context(cafile=folder + '/ca.crt')
request = urllib.request.Request(f"{url}/api/v1/namespaces/{namespace}/secrets",
                                 headers={'Authorization': 'Bearer ' + token})
try:
    urllib.request.urlopen(request, context=context)
except urllib.error.HTTPError as error:
    open('/dev/termination-log', 'w').write(json.dumps({'code': error.code, 'reason': json.load(error)['reason']}))
"""
    client.BatchV1Api(api).create_namespaced_job(namespace, job("in-cluster", [host_container("main", script)]))
    assert wait_for("the Job to end", lambda: job_condition(api, namespace, "in-cluster")) == "Complete"
    message = job_pod(api, namespace, "in-cluster").status.container_statuses[0].state.terminated.message
    assert json.loads(message) == {"code": 403, "reason": "Forbidden"}  # reached, authenticated, refused by RBAC


def test_a_native_sidecar_stops_when_the_main_container_exits(api: client.ApiClient, namespace: str) -> None:
    server = host_container("server", "", restartPolicy="Always", command=[
        "python", "-m", "http.server", "5000", "--bind", "127.0.0.1"],
        startupProbe={"httpGet": {"path": "/", "port": 5000}, "periodSeconds": 1, "failureThreshold": 30})
    main = host_container("main", "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:5000/').status)")
    client.BatchV1Api(api).create_namespaced_job(namespace, job("sidecar", [main], init=[server]))
    assert wait_for("the Job to end", lambda: job_condition(api, namespace, "sidecar")) == "Complete"
    pod = job_pod(api, namespace, "sidecar")
    assert pod.status.phase == "Succeeded"
    assert client.CoreV1Api(api).read_namespaced_pod_log(pod.metadata.name, namespace, container="main") == "200\n"
    sidecar = pod.status.init_container_statuses[0]
    assert sidecar.name == "server" and sidecar.state.terminated is not None
    assert sidecar.state.terminated.exit_code == 143  # SIGTERM once the main container was done
    main_started = pod.status.container_statuses[0].state.terminated.started_at
    assert main_started >= sidecar.state.terminated.started_at


def test_a_sidecar_that_exits_early_is_restarted(api: client.ApiClient, namespace: str) -> None:
    sidecar = host_container("helper", "print('helping')", restartPolicy="Always")
    main = host_container("main", "import time; time.sleep(4)")
    client.BatchV1Api(api).create_namespaced_job(namespace, job("restarts", [main], init=[sidecar]))
    assert wait_for("the Job to end", lambda: job_condition(api, namespace, "restarts")) == "Complete"
    status = job_pod(api, namespace, "restarts").status.init_container_statuses[0]
    assert status.restart_count >= 1
    assert status.last_state.terminated.exit_code == 0


def test_a_crashing_container_is_restarted_with_back_off(api: client.ApiClient, namespace: str) -> None:
    crash = host_container("main", "import sys; print('crashing'); sys.exit(1)")
    client.CoreV1Api(api).create_namespaced_pod(namespace, pod_manifest("crash", [crash], restartPolicy="OnFailure"))

    def backing_off() -> Any:
        statuses = read_pod(api, namespace, "crash").status.container_statuses or []
        waiting = statuses and statuses[0].state.waiting
        return waiting and waiting.reason == "CrashLoopBackOff" and statuses[0]
    status = wait_for("CrashLoopBackOff", backing_off, timeout=20)
    assert status.restart_count == 1  # restarted at once, then 10 s of back-off
    assert status.last_state.terminated.exit_code == 1
    assert phase(api, namespace, "crash") == "Running"  # OnFailure: still restarting


def test_a_failing_container_fails_the_pod_with_its_exit_code_and_message(api: client.ApiClient,
                                                                          namespace: str) -> None:
    script = ("import sys; open('/dev/termination-log', 'w').write('x' * 5000 + 'the end'); "
              "print('failing'); sys.exit(3)")
    client.BatchV1Api(api).create_namespaced_job(namespace, job("fails", [host_container("main", script)]))
    assert wait_for("the Job to end", lambda: job_condition(api, namespace, "fails")) == "Failed"
    pod = job_pod(api, namespace, "fails")
    assert pod.status.phase == "Failed"
    terminated = pod.status.container_statuses[0].state.terminated
    assert (terminated.exit_code, terminated.reason) == (3, "Error")
    assert len(terminated.message) == 4096 and terminated.message.endswith("the end")  # the tail, as the kubelet keeps


def test_a_container_over_its_memory_limit_is_oom_killed(api: client.ApiClient, namespace: str) -> None:
    hog = host_container("main", "x = bytearray(400 * 1024 * 1024); print(len(x))",
                         resources={"limits": {"memory": "64Mi"}})
    client.BatchV1Api(api).create_namespaced_job(namespace, job("hog", [hog]))
    assert wait_for("the Job to end", lambda: job_condition(api, namespace, "hog")) == "Failed"
    terminated = job_pod(api, namespace, "hog").status.container_statuses[0].state.terminated
    assert (terminated.exit_code, terminated.reason) == (137, "OOMKilled")


def test_a_missing_secret_holds_the_container_in_create_container_config_error(api: client.ApiClient,
                                                                               namespace: str) -> None:
    core = client.CoreV1Api(api)
    env = [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
           {"name": "EXTRA", "valueFrom": {"secretKeyRef": {"name": "absent", "key": "k", "optional": True}}}]
    script = "import os; open('/dev/termination-log', 'w').write(os.environ['TOKEN'] + str('EXTRA' in os.environ))"
    core.create_namespaced_pod(namespace, pod_manifest("secret", [host_container("main", script, env=env)]))

    def waiting() -> Any:
        statuses = read_pod(api, namespace, "secret").status.container_statuses or []
        return statuses and statuses[0].state.waiting and statuses[0].state.waiting.reason == \
            "CreateContainerConfigError" and statuses[0].state.waiting
    assert wait_for("CreateContainerConfigError", waiting).message == 'secret "creds" not found'
    assert phase(api, namespace, "secret") == "Pending"
    core.create_namespaced_secret(namespace, {"metadata": {"name": "creds"},
                                              "data": {"token": base64.b64encode(b"s3cret").decode()}})
    wait_for("the Pod to succeed", lambda: phase(api, namespace, "secret") == "Succeeded", timeout=30)
    message = read_pod(api, namespace, "secret").status.container_statuses[0].state.terminated.message
    assert message == "s3cretFalse"


def test_an_unknown_image_waits_in_image_pull_back_off(api: client.ApiClient, namespace: str) -> None:
    client.CoreV1Api(api).create_namespaced_pod(namespace, pod_manifest("pull", [
        {"name": "main", "image": "registry.invalid/nothing:1.0"}]))

    def reason() -> str | None:
        statuses = read_pod(api, namespace, "pull").status.container_statuses or []
        return statuses[0].state.waiting.reason if statuses and statuses[0].state.waiting else None
    wait_for("ErrImagePull", lambda: reason() == "ErrImagePull", timeout=20, interval=0.1)
    wait_for("ImagePullBackOff", lambda: reason() == "ImagePullBackOff", timeout=20)
    assert phase(api, namespace, "pull") == "Pending"


def test_two_pods_listen_on_the_same_loopback_port(api: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(api)
    for name in ("one", "two"):
        serve = host_container("server", "", command=["python", "-m", "http.server", "5000", "--bind", "127.0.0.1"],
                               readinessProbe={"httpGet": {"path": "/", "port": 5000}, "periodSeconds": 1})
        core.create_namespaced_pod(namespace, pod_manifest(name, [serve]))

    def ready(name: str) -> bool:
        status = read_pod(api, namespace, name).status
        return any(c.type == "Ready" and c.status == "True" for c in status.conditions or [])
    wait_for("both Pods Ready", lambda: ready("one") and ready("two"), timeout=30)
    for name in ("one", "two"):
        status = read_pod(api, namespace, name).status
        assert status.phase == "Running" and status.container_statuses[0].restart_count == 0


def test_graceful_deletion_sends_sigterm_then_sigkill(api: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(api)
    handles = ("import signal, sys, time\n"
               "def stop(*_):\n    open('/dev/termination-log', 'w').write('got SIGTERM'); sys.exit(0)\n"
               "signal.signal(signal.SIGTERM, stop)\nprint('up', flush=True)\ntime.sleep(600)\n")
    ignores = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); " \
              "time.sleep(600)"
    manifest = pod_manifest("graceful", [host_container("handles", handles), host_container("ignores", ignores)])
    manifest["metadata"]["finalizers"] = ["test.cogtrain/keep"]  # so the final status can be read
    core.create_namespaced_pod(namespace, manifest)

    def up() -> bool:
        return all(core.read_namespaced_pod_log("graceful", namespace, container=c) == "up\n"
                   for c in ("handles", "ignores"))
    wait_for("both containers to run", lambda: phase(api, namespace, "graceful") == "Running" and up())
    began = time.monotonic()
    core.delete_namespaced_pod("graceful", namespace, grace_period_seconds=2)
    wait_for("the final status", lambda: phase(api, namespace, "graceful") == "Failed", timeout=30)
    assert time.monotonic() - began >= 1.5  # the grace period was waited for
    states = {c.name: c.state.terminated for c in read_pod(api, namespace, "graceful").status.container_statuses}
    assert (states["handles"].exit_code, states["handles"].message) == (0, "got SIGTERM")
    assert states["ignores"].exit_code == 137
    pod = read_pod(api, namespace, "graceful")
    assert pod.metadata.deletion_grace_period_seconds == 0  # the node agent deleted it with grace period 0
    core.patch_namespaced_pod("graceful", namespace, {"metadata": {"finalizers": None}})
    wait_for("the Pod to go", lambda: gone(api, namespace, "graceful"))


def test_eviction_stops_the_pod_and_keeps_the_disruption_condition(api: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(api)
    manifest = pod_manifest("evicted", [host_container("main", "import time; time.sleep(600)")])
    manifest["metadata"]["finalizers"] = ["test.cogtrain/keep"]
    core.create_namespaced_pod(namespace, manifest)
    wait_for("Running", lambda: phase(api, namespace, "evicted") == "Running")
    core.create_namespaced_pod_eviction("evicted", namespace, {
        "apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": "evicted", "namespace": namespace},
        "deleteOptions": {"gracePeriodSeconds": 1}})
    wait_for("the final status", lambda: phase(api, namespace, "evicted") == "Failed", timeout=30)
    status = read_pod(api, namespace, "evicted").status
    disruption = next(c for c in status.conditions if c.type == "DisruptionTarget")
    assert (disruption.status, disruption.reason) == ("True", "EvictionByEvictionAPI")
    assert status.container_statuses[0].state.terminated.exit_code == 143
    core.patch_namespaced_pod("evicted", namespace, {"metadata": {"finalizers": None}})
    wait_for("the Pod to go", lambda: gone(api, namespace, "evicted"))


def test_deleting_a_job_garbage_collects_its_pods(api: client.ApiClient, namespace: str) -> None:
    client.BatchV1Api(api).create_namespaced_job(namespace, job("long", [
        host_container("main", "import time; time.sleep(600)")]))
    pod = job_pod(api, namespace, "long")
    wait_for("Running", lambda: phase(api, namespace, pod.metadata.name) == "Running")
    client.BatchV1Api(api).delete_namespaced_job("long", namespace, propagation_policy="Background")
    wait_for("the garbage collector to delete the Pod", lambda: gone(api, namespace, pod.metadata.name), timeout=60)


def test_a_node_set_not_ready_gets_the_not_ready_taint(api: client.ApiClient, cluster: Cluster) -> None:
    node = cluster.add_node("spare")
    core = client.CoreV1Api(api)

    def taints() -> set[tuple[str, str]]:
        return {(t.key, t.effect) for t in core.read_node("spare").spec.taints or []}
    def ready() -> str:
        return str(next(c for c in core.read_node("spare").status.conditions if c.type == "Ready").status)
    try:
        # A new Node starts with the taint (TaintNodesByCondition); the controller lifts it once it is Ready.
        wait_for("the new node's taint to go", lambda: not taints(), timeout=30)
        node.set_ready(False)
        wait_for("Ready=False", lambda: ready() == "False", timeout=10)
        wait_for("the not-ready taint", lambda: ("node.kubernetes.io/not-ready", "NoSchedule") in taints(),
                 timeout=30)
        node.set_ready(True)
        wait_for("the taint to go", lambda: not any(k == "node.kubernetes.io/not-ready" for k, _ in taints()),
                 timeout=30)
    finally:
        cluster.stop_node("spare")


def test_the_operators_training_pod_runs_cog_and_the_driver(api: client.ApiClient, cluster: Cluster,
                                                            namespace: str) -> None:
    """The Job `jobs.build_job` writes, unchanged but for its owner: Cog's server as a native sidecar with the
    model's folder, `cogtrain drive` with a read-only root, a pvc:// destination on a provisioned volume."""
    from cogtrain.api import Training
    from cogtrain.jobs import build_job
    from cogtrain.settings import Settings

    cluster.add_model(MODEL_IMAGE, EXAMPLES / "hello-train")
    core = client.CoreV1Api(api)
    core.create_namespaced_persistent_volume_claim(namespace, {
        "metadata": {"name": "trainings"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}})
    training = Training.model_validate({
        "apiVersion": "cog.run/v1alpha1", "kind": "Training",
        "metadata": {"name": "hello", "namespace": namespace, "uid": str(uuid.uuid4())},
        "spec": {"model": f"{MODEL_IMAGE}:1.0", "input": {"param": "cluster"}, "destination": "pvc://trainings/out",
                 "resources": {"gpus": 1}}})
    manifest = build_job(training, f"{MODEL_IMAGE}@sha256:{'0' * 64}", {"param": "cluster"},
                         Settings(termination_grace_seconds=10))
    del manifest["metadata"]["ownerReferences"]  # no Training exists here: the garbage collector would object
    name = manifest["metadata"]["name"]
    client.BatchV1Api(api).create_namespaced_job(namespace, manifest)
    assert wait_for("the training Job to end", lambda: job_condition(api, namespace, name), timeout=120) == "Complete"
    pod = job_pod(api, namespace, name)
    report = json.loads(pod.status.container_statuses[0].state.terminated.message)
    assert report["status"] == "succeeded", report
    assert report["output"].startswith(f"pvc://trainings/out/{namespace}/hello/")
    assert pod.status.init_container_statuses[0].name == "model"
