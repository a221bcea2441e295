"""The validating admission webhook: its decisions, its TLS, and kopf serving real AdmissionReviews over HTTPS."""

from __future__ import annotations

import base64
import datetime
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import urllib3
from cryptography import x509
from kubernetes import client

from cogtrain import access, certs
from cogtrain.admission import LookupTimeout, review_create, review_update
from cogtrain.handlers import Runtime
from cogtrain.registry import RegistryClient, RegistryError, RegistryErrorKind
from cogtrain.resolver import SchemaResolver
from cogtrain.settings import Settings
from cogtrain.webhook import WEBHOOK_PATH, WebhookConfig
from support.cluster_sim import RunningOperator, wait_for
from support.cogserver import free_port
from support.k8s_server import Fault, KubeAPI
from support.metrics import scrape
from support.registries import Registries
from support.trainings import DATA, model
from support.webhook import NAMESPACE, SERVICE, Webhook, training


@pytest.fixture(scope="module")
def resolver() -> SchemaResolver:
    return SchemaResolver(RegistryClient(timeout=2))


# --- decisions (pure) ------------------------------------------------------------------------------


@pytest.mark.integration
def test_good_training_is_allowed(registries: Registries, resolver: SchemaResolver) -> None:
    decision = review_create(training(model(registries)), resolver.resolve)
    assert (decision.allowed, decision.decision, decision.warnings) == (True, "allowed", [])


@pytest.mark.integration
def test_every_problem_in_one_message(registries: Registries, resolver: SchemaResolver) -> None:
    body = training(model(registries, "all-inputs"),
                    {"train_data": DATA, "steps": 0, "optimizer": "AdamW", "stepz": 1}, destination=None)
    decision = review_create(body, resolver.resolve)
    assert not decision.allowed and decision.decision == "denied"
    message = decision.message
    assert message.startswith(f"Training ml/tok is invalid for {registries.anonymous.host}/acme/all-inputs@sha256:")
    for expected in ("spec.destination: not set and the operator has no default destination",
                     "input.steps: 0 is less than the minimum of 1",
                     'input.optimizer: "AdamW" is not one of the allowed choices',
                     'input.stepz: unknown input (Cog would silently ignore it). Did you mean "steps"?',
                     "input.caption_prefix: "):
        assert expected in message, message


@pytest.mark.integration
def test_deprecated_inputs_are_warnings(registries: Registries, resolver: SchemaResolver) -> None:
    decision = review_create(training(model(registries, "edge-cases"), {"old": "y"}), resolver.resolve)
    assert decision.allowed and decision.warnings and "old" in decision.warnings[0] and "deprecated" in decision.warnings[0]


@pytest.mark.unit
def test_malformed_spec_is_denied_by_field(resolver: SchemaResolver) -> None:
    body = training("example.com/x:1", backoffLimit=-1)
    decision = review_create(body, resolver.resolve)
    assert not decision.allowed and "spec.backoff_limit" in decision.message.replace("backoffLimit", "backoff_limit")


@pytest.mark.integration
def test_unknown_image_is_denied_naming_spec_model(registries: Registries, resolver: SchemaResolver) -> None:
    decision = review_create(training(f"{registries.anonymous.host}/acme/nope:1.0"), resolver.resolve)
    assert not decision.allowed and decision.message.startswith("Training ml/tok is invalid: spec.model: ")


@pytest.mark.unit
@pytest.mark.parametrize("error", [LookupTimeout("no answer within 3 s"),
                                   RegistryError(RegistryErrorKind.UNAVAILABLE, "registry.example.com: HTTP 503")])
def test_registry_down_follows_the_failure_policy(error: Exception) -> None:
    def down(image: str) -> Any:
        raise error

    ignored = review_create(training("registry.example.com/acme/x:1"), down, "Ignore")
    assert ignored.allowed and ignored.decision == "unchecked"
    assert "the operator checks them before the training starts" in ignored.warnings[0]
    failed = review_create(training("registry.example.com/acme/x:1"), down, "Fail")
    assert not failed.allowed and failed.message.startswith("cannot check the inputs of Training ml/tok now: ")


@pytest.mark.unit
def test_updates_may_change_only_cancel_and_suspend() -> None:
    old = training("example.com/x:1")
    assert review_update(old, {**old, "spec": {**old["spec"], "cancel": True, "suspend": True}}).allowed
    assert review_update(old, {**old, "metadata": {**old["metadata"], "labels": {"a": "b"}}}).allowed
    denied = review_update(old, {**old, "spec": {**old["spec"], "input": {"seed": 4}, "model": "example.com/y:1"}})
    assert not denied.allowed
    assert denied.message == (
        "Training ml/tok: spec.input: cannot be changed after creation (only spec.cancel and spec.suspend may "
        "change; delete and re-create the Training to change spec.input); spec.model: cannot be changed after "
        "creation (only spec.cancel and spec.suspend may change; delete and re-create the Training to change spec.model)")
    canceled = {**old, "spec": {**old["spec"], "cancel": True}}
    undone = review_update(canceled, {**old, "spec": {**old["spec"], "cancel": False}})
    assert not undone.allowed and "a canceled Training cannot be resumed" in undone.message


# --- certificates ------------------------------------------------------------------------------------


@pytest.mark.integration
def test_certificates_are_kept_in_a_secret_and_renewed_when_needed(kube: KubeAPI) -> None:
    core = client.CoreV1Api(kube.api_client)
    namespace = f"tls-{uuid.uuid4().hex[:6]}"
    names = certs.dns_names(SERVICE, namespace)
    first = certs.ensure_secret(core, namespace, "tls", names)
    assert certs.ensure_secret(core, namespace, "tls", names) == first, "a restart reuses the stored certificate"
    cert = x509.load_pem_x509_certificate(first.cert)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert f"{SERVICE}.{namespace}.svc" in sans
    assert certs.ensure_secret(core, namespace, "tls", certs.dns_names("other", namespace)) != first, "new names"
    soon = datetime.datetime.now(datetime.UTC) + certs.VALIDITY - datetime.timedelta(days=1)
    assert not certs.usable(first, names, now=soon), "renewed before it expires"
    assert not certs.usable(certs.TLSBundle(b"junk", b"junk", b"junk"), names)


# --- the webhook served by kopf over HTTPS ------------------------------------------------------------


def _hanging_registry() -> tuple[socket.socket, str]:
    """A host that accepts connections and never answers: a registry that hangs."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    return listener, f"127.0.0.1:{listener.getsockname()[1]}"


@pytest.fixture(scope="module")
def webhook(kube: KubeAPI) -> Iterator[tuple[Webhook, RunningOperator]]:
    admission = client.AdmissionregistrationV1Api(kube.api_client)
    admission.create_validating_webhook_configuration({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": "cogtrain"},
        "webhooks": [{
            "name": "trainings.cog.run", "admissionReviewVersions": ["v1"], "sideEffects": "None",
            "failurePolicy": "Ignore", "timeoutSeconds": 5,
            "clientConfig": {"service": {"name": SERVICE, "namespace": NAMESPACE, "path": f"/{WEBHOOK_PATH}"}},
            "rules": [{"apiGroups": ["cog.run"], "apiVersions": ["v1alpha1"], "operations": ["CREATE", "UPDATE"],
                       "resources": ["trainings"]}],
        }],
    })
    config = WebhookConfig(port=free_port(), addr="127.0.0.1", service=SERVICE, namespace=NAMESPACE,
                           secret="cogtrain-webhook-tls", configuration="cogtrain", lookup_timeout=1.0)
    runtime = Runtime(settings=Settings(driver_image="example.com/cogtrain:test"), api_client=kube.api_client,
                      resolver=SchemaResolver(RegistryClient(timeout=5)), webhook_config=config,
                      metrics_port=free_port())
    operator = RunningOperator(kube, runtime).start()
    try:
        secret = client.CoreV1Api(kube.api_client).read_namespaced_secret("cogtrain-webhook-tls", NAMESPACE)
        ca = base64.b64decode(secret.data["ca.crt"])
        configuration = admission.read_validating_webhook_configuration("cogtrain")
        assert base64.b64decode(configuration.webhooks[0].client_config.ca_bundle) == ca, "caBundle set from the Secret"
        hook = Webhook(config.port, ca)
        hook.metrics_port = runtime.metrics_port
        wait_for(lambda: _answers(hook), timeout=20, what="the webhook server")
        yield hook, operator
    finally:
        operator.stop()


def _answers(hook: Webhook) -> bool:
    try:
        hook.review("UPDATE", training("example.com/x:1"), training("example.com/x:1"))
        return True
    except (urllib3.exceptions.HTTPError, AssertionError):
        return False


@pytest.mark.integration
def test_webhook_allows_over_verified_tls(webhook: tuple[Webhook, RunningOperator], registries: Registries) -> None:
    hook, _ = webhook
    response = hook.review("CREATE", training(model(registries)))
    assert response["allowed"] is True and not response.get("warnings")


@pytest.mark.integration
def test_webhook_denies_with_field_level_message(webhook: tuple[Webhook, RunningOperator],
                                                 registries: Registries) -> None:
    hook, _ = webhook
    response = hook.review("CREATE", training(model(registries, "all-inputs"), {"train_data": DATA, "steps": 0}))
    assert response["allowed"] is False
    assert response["status"]["code"] == 422
    message = response["status"]["message"]
    assert "input.steps: 0 is less than the minimum of 1" in message and "input.caption_prefix: " in message


@pytest.mark.integration
def test_webhook_warns(webhook: tuple[Webhook, RunningOperator], registries: Registries) -> None:
    hook, _ = webhook
    response = hook.review("CREATE", training(model(registries, "edge-cases"), {"old": "y"}))
    assert response["allowed"] is True
    assert any("old" in warning and "deprecated" in warning for warning in response["warnings"])


@pytest.mark.integration
def test_webhook_denies_changing_an_immutable_field(webhook: tuple[Webhook, RunningOperator]) -> None:
    hook, _ = webhook
    old = training("example.com/x:1")
    response = hook.review("UPDATE", {**old, "spec": {**old["spec"], "input": {"seed": 4}}}, old)
    assert response["allowed"] is False
    assert "spec.input: cannot be changed after creation (only spec.cancel and spec.suspend may change" in \
        response["status"]["message"]
    assert hook.review("UPDATE", {**old, "spec": {**old["spec"], "cancel": True}}, old)["allowed"] is True


@pytest.mark.integration
def test_webhook_answers_in_time_when_the_registry_hangs(webhook: tuple[Webhook, RunningOperator]) -> None:
    hook, _ = webhook
    listener, host = _hanging_registry()
    try:
        started = time.monotonic()
        response = hook.review("CREATE", training(f"{host}/acme/slow:1.0"))
        elapsed = time.monotonic() - started
    finally:
        listener.close()
    assert elapsed < 3, f"answered in {elapsed:.1f} s: well inside the API server's 10 s"
    assert response["allowed"] is True, "failurePolicy Ignore: admitted, the operator checks again"
    assert "the inputs were not checked" in response["warnings"][0]


@pytest.mark.integration
def test_webhook_certificate_is_refused_for_another_name(webhook: tuple[Webhook, RunningOperator]) -> None:
    hook, _ = webhook
    wrong = urllib3.HTTPSConnectionPool(
        "127.0.0.1", hook.pool.port, cert_reqs="CERT_REQUIRED", ca_cert_data=hook.ca.decode(),
        server_hostname="evil.example.com", assert_hostname="evil.example.com", retries=False)
    with pytest.raises(urllib3.exceptions.SSLError):
        wrong.request("POST", f"/{WEBHOOK_PATH}", body=b"{}", timeout=5)
    untrusted = urllib3.HTTPSConnectionPool(  # the system's CAs: our self-signed CA is not among them
        "127.0.0.1", hook.pool.port, cert_reqs="CERT_REQUIRED", server_hostname=f"{SERVICE}.{NAMESPACE}.svc",
        retries=False)
    with pytest.raises(urllib3.exceptions.SSLError):
        untrusted.request("POST", f"/{WEBHOOK_PATH}", body=b"{}", timeout=5)


@pytest.mark.integration
def test_admission_decisions_and_latency_are_metrics(webhook: tuple[Webhook, RunningOperator],
                                                     registries: Registries) -> None:
    hook, _ = webhook
    assert hook.metrics_port is not None
    before = scrape(hook.metrics_port)
    hook.review("CREATE", training(model(registries, "all-inputs"), {"train_data": DATA, "steps": 0}))
    hook.review("CREATE", training(model(registries)))
    after = scrape(hook.metrics_port)

    def delta(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert delta("cogtrain_admission_reviews_total", operation="CREATE", decision="denied") == 1
    assert delta("cogtrain_admission_reviews_total", operation="CREATE", decision="allowed") == 1
    assert delta("cogtrain_admission_duration_seconds_count", operation="CREATE") == 2
    assert delta("cogtrain_admission_duration_seconds_bucket", operation="CREATE", le="0.05") == 2, "cached: fast"


@pytest.mark.unit
def test_cert_manager_mode_serves_the_mounted_files(tmp_path: Any) -> None:
    from cogtrain.webhook import server

    bundle = certs.generate(certs.dns_names(SERVICE, NAMESPACE))
    (tmp_path / "tls.crt").write_bytes(bundle.cert + bundle.ca)
    (tmp_path / "tls.key").write_bytes(bundle.key)
    config = WebhookConfig(cert_dir=tmp_path, service=SERVICE, namespace=NAMESPACE)
    webhook_server = server(config, client.ApiClient())
    assert webhook_server.certfile == str(tmp_path / "tls.crt") and webhook_server.pkeyfile == str(tmp_path / "tls.key")
    assert webhook_server.host == f"{SERVICE}.{NAMESPACE}.svc"
    with pytest.raises(ValueError, match="--webhook-cert-dir"):
        server(WebhookConfig(), client.ApiClient())


# --- a Training may use only what its creator may (access.py) --------------------------------------


@pytest.mark.unit
def test_the_permissions_a_spec_asks_for() -> None:
    spec = {"secretInputs": {"hf_token": {"name": "hf", "key": "t"}, "other": {"name": "hf", "key": "u"}},
            "destinationSecretRef": {"name": "s3"}, "imagePullSecrets": [{"name": "regcred"}, {"name": "s3"}]}
    assert access.needs(spec) == [
        access.Need("spec", "create", "pods"),
        access.Need("spec.secretInputs.hf_token", "get", "secrets", "hf"),
        access.Need("spec.destinationSecretRef", "get", "secrets", "s3"),
        access.Need("spec.imagePullSecrets[0]", "get", "secrets", "regcred"),
    ]


@pytest.mark.unit
@pytest.mark.parametrize(("spec", "wanted"), [
    ({"inputSecretRef": {"name": "reader"}}, [access.Need("spec.inputSecretRef", "get", "secrets", "reader")]),
    # each claim once, whether a file input or a list's item names it; malformed and s3:// values ask nothing
    ({"input": {"data": "pvc://datasets/a.csv", "extra": ["pvc://datasets/b.csv", "pvc://shared-models/c.bin",
                                                          "s3://bucket/k", "pvc://Bad_Name/x", "https://x/y"]}},
     [access.Need("spec.input.data", "get", "persistentvolumeclaims", "datasets"),
      access.Need("spec.input.extra", "get", "persistentvolumeclaims", "shared-models")]),
    ({"input": {"note": "pvc://notes/x"}}, [access.Need("spec.input.note", "get", "persistentvolumeclaims", "notes")]),
    ({"input": "not an object"}, []),
])
def test_the_permissions_file_inputs_ask_for(spec: dict[str, Any], wanted: list[access.Need]) -> None:
    assert access.needs(spec) == [access.Need("spec", "create", "pods"), *wanted]


class _Denying:
    """An authorization API that refuses every review."""

    def create_subject_access_review(self, review: Any, _request_timeout: float = 0) -> Any:
        return client.V1SubjectAccessReview(spec=review.spec, status=client.V1SubjectAccessReviewStatus(allowed=False))


@pytest.mark.unit
def test_a_claim_the_creator_may_not_get_is_refused_naming_the_input() -> None:
    wanted = access.needs({"input": {"data": "pvc://team-b-data/x.csv"}})[1:]
    assert access.refusals(_Denying(), {"username": "alice"}, "ml", wanted) == [  # type: ignore[arg-type]
        "spec.input.data: alice may not get the PersistentVolumeClaim team-b-data in namespace ml; "
        "a Training can read files only from claims its creator may get"
    ]


@dataclass
class Reviews:
    """The SubjectAccessReviews the webhook asks, answered by `denied` (verb, resource, name)."""

    asked: list[dict[str, Any]] = field(default_factory=list)
    denied: set[tuple[str, str, str | None]] = field(default_factory=set)

    def __call__(self, spec: dict[str, Any]) -> bool:
        self.asked.append(spec)
        attributes = spec.get("resourceAttributes") or {}
        return (attributes.get("verb"), attributes.get("resource"), attributes.get("name")) not in self.denied


@pytest.fixture()
def reviews(kube: KubeAPI) -> Iterator[Reviews]:
    rule = Reviews()
    kube.emulator.authorize = rule
    yield rule
    kube.emulator.authorize = lambda spec: True


@pytest.mark.integration
def test_a_secret_the_creator_may_not_read_is_refused(webhook: tuple[Webhook, RunningOperator],
                                                      registries: Registries, reviews: Reviews) -> None:
    hook, _ = webhook
    reviews.denied.add(("get", "secrets", "team-b-token"))
    body = training(model(registries, "all-inputs"), secretInputs={"hf_token": {"name": "team-b-token", "key": "t"}})
    response = hook.review("CREATE", body)
    assert response["allowed"] is False
    message = response["status"]["message"]
    assert "spec.secretInputs.hf_token: alice may not read the Secret team-b-token in namespace ml" in message
    asked = {(r["user"], r["resourceAttributes"]["verb"], r["resourceAttributes"]["resource"]) for r in reviews.asked}
    assert ("alice", "create", "pods") in asked and ("alice", "get", "secrets") in asked
    assert all(r["resourceAttributes"]["namespace"] == "ml" and r["groups"] == ["system:authenticated"]
               for r in reviews.asked)


@pytest.mark.integration
def test_a_creator_who_may_not_create_pods_is_refused(webhook: tuple[Webhook, RunningOperator],
                                                      registries: Registries, reviews: Reviews) -> None:
    hook, _ = webhook
    reviews.denied.add(("create", "pods", None))
    response = hook.review("CREATE", training(model(registries)))
    assert response["allowed"] is False
    assert "alice may not create Pods in namespace ml, and a Training runs as a Pod" in response["status"]["message"]


@pytest.mark.integration
def test_permissions_that_cannot_be_checked_deny(kube: KubeAPI, webhook: tuple[Webhook, RunningOperator],
                                                  registries: Registries) -> None:
    hook, _ = webhook
    kube.emulator.faults.append(Fault("POST", "subjectaccessreviews", status=500, times=1))
    response = hook.review("CREATE", training(model(registries)))
    assert response["allowed"] is False, "no answer is no permission"
    assert "cannot check the creator's permissions now" in response["status"]["message"]


@pytest.mark.integration
def test_updates_ask_no_permissions(webhook: tuple[Webhook, RunningOperator], registries: Registries,
                                    reviews: Reviews) -> None:
    hook, _ = webhook
    old = training(model(registries))
    new = {**old, "spec": {**old["spec"], "cancel": True}}
    assert hook.review("UPDATE", new, old)["allowed"] is True
    assert reviews.asked == []


class _SlowAuthorization:
    """An authorization API whose every answer takes `delay` seconds (a loaded API server)."""

    def __init__(self, delay: float, allow: bool = True) -> None:
        self.delay, self.allow, self.asked = delay, allow, []

    def create_subject_access_review(self, review: Any, _request_timeout: float = 0) -> Any:
        self.asked.append(review.spec)
        time.sleep(self.delay)
        return client.V1SubjectAccessReview(spec=review.spec, status=client.V1SubjectAccessReviewStatus(
            allowed=self.allow))


@pytest.mark.unit
def test_many_secrets_are_checked_at_once_within_one_deadline() -> None:
    spec = {"secretInputs": {f"s{i}": {"name": f"secret-{i}", "key": "k"} for i in range(63)}}
    api = _SlowAuthorization(0.2)
    started = time.monotonic()
    assert access.refusals(api, {"username": "alice"}, "ml", access.needs(spec), deadline=3) == []  # type: ignore[arg-type]
    assert time.monotonic() - started < 3 and len(api.asked) == 64, "concurrent, not 64 x 0.2 s"


@pytest.mark.unit
def test_reviews_that_do_not_answer_in_time_deny() -> None:
    with pytest.raises(TimeoutError):
        access.refusals(_SlowAuthorization(2), {"username": "alice"}, "ml",  # type: ignore[arg-type]
                        access.needs({}), deadline=0.3)


@pytest.mark.unit
def test_odd_user_info_is_passed_as_lists_of_strings_only() -> None:
    api = _SlowAuthorization(0)
    access.refusals(api, {"username": "alice", "groups": "admins", "extra": {"scopes": "abc", "x": ["y"]}},  # type: ignore[arg-type]
                    "ml", access.needs({}))
    [spec] = api.asked
    assert spec.groups == [] and spec.extra == {"scopes": [], "x": ["y"]}, "a string is not split into letters"
