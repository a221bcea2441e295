"""The chart's RBAC grants exactly the API calls the operator and its webhook make.

The calls are not listed by hand: a fresh test API server records every request the operator
makes (kopf and the handlers authenticate with their own token; the test's own requests carry
none) while it goes through everything it does: webhook TLS set-up, Trainings that succeed, fail,
are canceled, suspended, use pull secrets and are deleted, and a restart that adopts a running Job.
The recorded (apiGroup, resource, verb) set must equal the rules the chart renders.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from kubernetes import client

from cogtrain import certs
from cogtrain.crd import training_crd
from cogtrain.handlers import Runtime
from cogtrain.registry import RegistryClient
from cogtrain.resolver import SchemaResolver
from cogtrain.settings import Settings
from cogtrain.webhook import WebhookConfig
from support.chart import CHART, COMBINATIONS, FULLNAME, NAMESPACE, rendered_rules
from support.cluster_sim import Cluster, RunningOperator, wait_for
from support.cogserver import free_port
from support.k8s_server import KubeAPI, start_kube_api
from support.registries import Registries
from support.trainings import spec, succeed
from support.webhook import Webhook, training

pytestmark = pytest.mark.integration

RELEASE_NAMESPACE = NAMESPACE  # the chart's release namespace in support.chart
CHART_CRDS = CHART / "crds"
TOKEN = "operator-token"
Call = tuple[str, str, str, str | None, str | None]  # apiGroup, resource(/subresource), verb, namespace, name


def _operator_client(kube: KubeAPI) -> client.ApiClient:
    configuration = client.Configuration(host=kube.url)
    configuration.api_key = {"authorization": f"Bearer {TOKEN}"}
    return client.ApiClient(configuration)


MODES = {"cluster-wide": {}, "namespaced": COMBINATIONS["namespaced"]}


@pytest.fixture(scope="module", params=list(MODES))
def mode(request: pytest.FixtureRequest) -> tuple[dict[str, Any], set[Call]]:
    """The chart's values of one mode, and the calls the operator made when run the way they configure it."""
    values = MODES[request.param]
    return values, request.getfixturevalue("_calls_" + request.param.replace("-", "_"))


@pytest.fixture(scope="module")
def _calls_cluster_wide(tmp_path_factory: pytest.TempPathFactory, registries: Registries) -> Iterator[set[Call]]:
    yield from _record(tmp_path_factory, registries, None)


@pytest.fixture(scope="module")
def _calls_namespaced(tmp_path_factory: pytest.TempPathFactory, registries: Registries) -> Iterator[set[Call]]:
    yield from _record(tmp_path_factory, registries, list(MODES["namespaced"]["watchNamespaces"]))


def _record(tmp_path_factory: pytest.TempPathFactory, registries: Registries,
            namespaces: list[str] | None) -> Iterator[set[Call]]:
    kopf_crds = [yaml.safe_load(path.read_text()) for path in sorted(CHART_CRDS.glob("kopf.dev_*.yaml"))]
    kube = start_kube_api(tmp_path_factory.mktemp("rbac"), [training_crd(), *kopf_crds])
    try:
        if namespaces is None:
            kube.custom.create_cluster_custom_object("kopf.dev", "v1", "clusterkopfpeerings", {
                "apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": FULLNAME}})
        for namespace in namespaces or []:
            client.CoreV1Api(kube.api_client).create_namespace({"metadata": {"name": namespace}})
            kube.custom.create_namespaced_custom_object("kopf.dev", "v1", namespace, "kopfpeerings", {
                "apiVersion": "kopf.dev/v1", "kind": "KopfPeering", "metadata": {"name": FULLNAME}})
        config = yaml.safe_load(kube.kubeconfig.read_text())
        config["users"][0]["user"]["token"] = TOKEN  # kopf logs in with the operator's token too
        kube.kubeconfig.write_text(yaml.safe_dump(config))
        admission = client.AdmissionregistrationV1Api(kube.api_client)
        admission.create_validating_webhook_configuration({
            "metadata": {"name": FULLNAME},
            "webhooks": [{"name": "trainings.cog.run", "admissionReviewVersions": ["v1"], "sideEffects": "None",
                          "clientConfig": {"service": {"name": f"{FULLNAME}-webhook", "namespace": RELEASE_NAMESPACE,
                                                       "path": "/validate-training"}}}],
        })
        webhook = WebhookConfig(port=free_port(), addr="127.0.0.1", service=f"{FULLNAME}-webhook",
                                namespace=RELEASE_NAMESPACE, secret=f"{FULLNAME}-webhook-tls",
                                configuration=FULLNAME, lookup_timeout=2)

        def runtime() -> Runtime:
            return Runtime(settings=Settings(default_destination="s3://w/", pod_refusal_check_seconds=1,
                                             progress_interval_seconds=1),
                           api_client=_operator_client(kube),
                           resolver=SchemaResolver(RegistryClient(timeout=5)), webhook_config=webhook)

        cluster = Cluster(kube, namespaces[0] if namespaces else f"ns-{uuid.uuid4().hex[:6]}")
        operator = RunningOperator(kube, runtime(), FULLNAME, namespaces).start()  # makes the TLS Secret
        try:
            _exercise(kube, cluster, registries, webhook)
            cluster.create_training("long", spec(registries))
            job = cluster.job("long")
        finally:
            operator.stop()
        # A restart while a Training runs: the operator adopts its Job. Meanwhile its certificate was
        # made for another Service name: the operator renews it (get, then patch).
        pod = cluster.start_pod(job)
        cluster.run_pod(pod)
        old = certs.generate(["old-name"])
        client.CoreV1Api(kube.api_client).patch_namespaced_secret(f"{FULLNAME}-webhook-tls", RELEASE_NAMESPACE, {
            "data": {"ca.crt": base64.b64encode(old.ca).decode(), "tls.crt": base64.b64encode(old.cert).decode(),
                     "tls.key": base64.b64encode(old.key).decode()}})
        operator = RunningOperator(kube, runtime(), FULLNAME, namespaces).start()
        try:
            cluster.wait_phase("long", "Running")
            wait_for(lambda: any(call[1:4] == ("pods", "log", "get") for call in kube.emulator.verbs), timeout=20,
                     what="the running training's driver log read")
            renewed = client.CoreV1Api(kube.api_client).read_namespaced_secret(f"{FULLNAME}-webhook-tls",
                                                                               RELEASE_NAMESPACE)
            assert base64.b64decode(renewed.data["tls.crt"]) != old.cert, "renewed for the right name"
        finally:
            operator.stop()
        yield {(group, f"{resource}/{sub}" if sub else resource, verb, namespace, name if verb != "create" else None)
               for group, resource, sub, verb, namespace, name, user in kube.emulator.verbs
               if user == f"Bearer {TOKEN}"}
    finally:
        kube.stop()


def _exercise(kube: KubeAPI, cluster: Cluster, registries: Registries, webhook: WebhookConfig) -> None:
    secret = client.CoreV1Api(kube.api_client).read_namespaced_secret(f"{FULLNAME}-webhook-tls", RELEASE_NAMESPACE)
    hook = Webhook(webhook.port, base64.b64decode(secret.data["ca.crt"]), f"{webhook.service}.{RELEASE_NAMESPACE}.svc")
    wait_for(lambda: _answers(hook), timeout=20, what="the webhook")
    image = f"{registries.anonymous.host}/acme/training-output:1.0"
    body = training(image)
    body["spec"]["imagePullSecrets"] = [{"name": "regcred"}]
    assert hook.review("CREATE", body)["allowed"] is True
    cluster.create_training("ok", spec(registries, imagePullSecrets=[{"name": "regcred"}]))
    succeed(cluster, "ok", {"status": "succeeded", "output": "s3://w/ok/weights.bin"})
    cluster.create_training("bad", spec(registries, input={"seed": "x"}))
    cluster.wait_phase("bad", "Failed")
    cluster.create_training("stop", spec(registries))
    cluster.job("stop")
    cluster.patch_training("stop", {"spec": {"cancel": True}})
    cluster.wait_phase("stop", "Canceled")
    client.SchedulingV1Api(kube.api_client).create_priority_class(
        {"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass", "metadata": {"name": "gpu-low"}, "value": 10})
    cluster.create_training("ranked", spec(registries, priorityClassName="gpu-low"))
    cluster.job("ranked")  # and no Pod comes: its Job's FailedCreate Events are read
    wait_for(lambda: any(call[1] == "events" and call[3] == "list" for call in kube.emulator.verbs), timeout=20,
             what="the Job's Events read")
    cluster.create_training("queued", spec(registries, suspend=True))
    cluster.job("queued")
    cluster.patch_training("queued", {"spec": {"suspend": False}})
    wait_for(lambda: cluster.job("queued")["spec"]["suspend"] is False, what="the Job to be resumed")
    kube.custom.delete_namespaced_custom_object("cog.run", "v1alpha1", cluster.namespace, "trainings", "ok")
    wait_for(lambda: any(e["reason"] == "JobCreated" for e in cluster.events("queued")), what="Events")


def _answers(hook: Webhook) -> bool:
    try:
        old = training("example.com/x:1")
        hook.review("UPDATE", old, old)
        return True
    except Exception:  # noqa: BLE001  (not serving yet)
        return False


def _covered(call: Call, rules: set[tuple[Any, ...]]) -> bool:
    """As the API server's authorizer: same group, resource and verb; a Role only in its namespace;
    resourceNames only for requests on that name."""
    group, resource, verb, namespace, name = call
    return any(r[0] == group and r[1] == resource and r[2] == verb and r[3] in (None, namespace)
               and r[4] in (None, name) for r in rules)


def test_the_chart_grants_every_call_the_operator_makes(mode: tuple[dict[str, Any], set[Call]]) -> None:
    values, calls = mode
    rules = rendered_rules(values)
    missing = sorted(call for call in calls if not _covered(call, rules))
    assert not missing, f"calls the chart's RBAC does not allow: {missing}"


def test_the_chart_grants_nothing_the_operator_does_not_use(mode: tuple[dict[str, Any], set[Call]]) -> None:
    values, calls = mode
    rules = rendered_rules(values)
    # Every watched namespace gets the same Role; the Trainings of this run live in the first one.
    watched = values.get("watchNamespaces") or []
    used = {(g, r, v, watched[0] if ns in watched else ns, name) for g, r, v, ns, name in rules}
    unused = sorted(rule for rule in used if not any(_covered(call, {rule}) for call in calls))
    assert not unused, f"rules no call needs: {unused}"


def test_a_record_of_calls_was_taken(mode: tuple[dict[str, Any], set[Call]]) -> None:
    _, calls = mode
    kinds = {(group, resource, verb) for group, resource, verb, _, _ in calls}
    assert ("batch", "jobs", "create") in kinds and ("cog.run", "trainings", "watch") in kinds
    assert ("admissionregistration.k8s.io", "validatingwebhookconfigurations", "patch", None, FULLNAME) in calls
    assert ("", "secrets", "patch", RELEASE_NAMESPACE, f"{FULLNAME}-webhook-tls") in calls
    assert len(kinds) >= 15, sorted(kinds)
