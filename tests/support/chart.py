"""The Helm chart rendered by Helm's own engine (helm-python-sdk), as `helm install` would, and what it grants.

- `render_chart(values=None) -> list[dict]`: every object the chart renders (release `cog-training`
  in namespace `cogtrain-system`, as `helm install` would);
- `render_manifests(values=None) -> dict[str, str]`: the same, as {template path: manifest text};
- `rendered_rules(values=None) -> set[(apiGroup, resource, verb, namespace | None, resourceName | None)]`:
  what the operator's ServiceAccount may do, from the rendered (Cluster)Roles and their bindings;
- `operator_deployment(values=None) -> dict`, `operator_container(values=None) -> dict`,
  `operator_env(values=None) -> dict[str, str]` (the container's plain `value` variables);
- `COMBINATIONS`: the sets of values the chart is tested with.
"""

from __future__ import annotations

import copy
import functools
import json
from typing import Any

import helm_python as helm
import yaml

from support.paths import ROOT

CHART = ROOT / "charts" / "cog-training-operator"
RELEASE = "cog-training"
NAMESPACE = "cogtrain-system"
FULLNAME = "cog-training-cog-training-operator"

CUSTOM_IMAGE = {"repository": "registry.example.com/platform/cogtrain", "tag": "1.2.3", "pullPolicy": "Always"}
CUSTOM_DRIVER = {"repository": "registry.example.com/platform/cogtrain-driver", "tag": "1.2.3-cuda",
                 "pullPolicy": "Always"}
TRAINING_NODE_SELECTOR = {"node-pool": "gpu-training"}
TRAINING_TOLERATION = {"key": "dedicated", "operator": "Equal", "value": "training", "effect": "NoSchedule"}

COMBINATIONS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "namespaced": {"watchNamespaces": ["ml", "research"]},
    "cert-manager": {"webhook": {"certManager": {"enabled": True}, "failurePolicy": "Fail", "timeoutSeconds": 10}},
    "cert-manager-issuer": {"webhook": {"certManager": {"enabled": True,
                                                        "issuerRef": {"name": "corp-ca", "kind": "ClusterIssuer"}}}},
    "service-monitor": {"metrics": {"port": 9191, "serviceMonitor": {"enabled": True, "interval": "1m",
                                                                     "labels": {"release": "prometheus"}}}},
    "minimal": {"metrics": {"enabled": False}, "webhook": {"enabled": False}},
    "network-policy": {"watchNamespaces": ["ml"],
                       "trainingPods": {"networkPolicy": {"enabled": True, "namespaces": ["ml", "shared"]}}},
    "custom": {
        "image": CUSTOM_IMAGE,
        "driverImage": CUSTOM_DRIVER,
        "imagePullSecrets": [{"name": "platform-pull"}],
        "gpuResourceName": "amd.com/gpu",
        "defaultDestination": "s3://ml-weights/trainings/",
        "defaultDestinationSecret": "s3-writer",
        "trainingPods": {"nodeSelector": TRAINING_NODE_SELECTOR, "tolerations": [TRAINING_TOLERATION]},
        "insecureRegistries": ["registry.internal:5000", "mirror.internal"],
        "progress": {"intervalSeconds": 30, "readsPerSecond": 2.5},
        "notifications": {"webhookAllowedHosts": ["hooks.example.com", "*.corp.example"],
                          "webhookAllowedCIDRs": ["10.20.0.0/16", "fd12::/16"], "webhookAllowHTTP": True,
                          "webhookSecret": "webhook-signing", "webhookSecretKey": "whsec"},
        "logLevel": "debug",
        "logFormat": "json",
        "serviceAccount": {"name": "cogtrain", "annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/x"}},
        "podAnnotations": {"example.com/team": "ml-platform"},
        "priorityClassName": "system-cluster-critical",
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "control", "operator": "Exists", "effect": "NoSchedule"}],
        "resources": {"requests": {"cpu": "200m", "memory": "256Mi"}, "limits": {"memory": "512Mi"}},
    },
}


# --- rendering ------------------------------------------------------------------------------------------------------


@functools.cache
def helm_chart() -> helm.Chart:
    return helm.Chart.load(CHART)


@functools.cache
def _render_cached(values_json: str) -> dict[str, str]:
    return helm_chart().render(json.loads(values_json), name=RELEASE, namespace=NAMESPACE, is_install=True)


def render_manifests(values: dict[str, Any] | None = None) -> dict[str, str]:
    """{template path: rendered text}, as `helm template cog-training -n cogtrain-system` with these values."""
    return dict(_render_cached(json.dumps(values or {}, sort_keys=True)))


def render_chart(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every object the chart renders with these values (a fresh copy each call)."""
    objects = []
    for path, text in sorted(render_manifests(values).items()):
        if not path.endswith((".yaml", ".yml")):
            continue  # NOTES.txt
        objects += [document for document in yaml.safe_load_all(text) if document is not None]
    return copy.deepcopy(objects)


def objects_of(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [obj for obj in objects if obj["kind"] == kind]


def one(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [obj for obj in objects_of(objects, kind) if name is None or obj["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {[o['metadata']['name'] for o in found]}"
    return found[0]


def operator_deployment(values: dict[str, Any] | None = None) -> dict[str, Any]:
    return one(render_chart(values), "Deployment")


def operator_container(values: dict[str, Any] | None = None) -> dict[str, Any]:
    containers = operator_deployment(values)["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["operator"]
    return containers[0]


def operator_env(values: dict[str, Any] | None = None) -> dict[str, str]:
    """The operator container's environment variables that have a plain value."""
    return {item["name"]: item["value"] for item in operator_container(values)["env"] if "value" in item}


def service_account_name(values: dict[str, Any] | None = None) -> str:
    return operator_deployment(values)["spec"]["template"]["spec"]["serviceAccountName"]


RuleTuple = tuple[str, str, str, str | None, str | None]


def rendered_rules(values: dict[str, Any] | None = None) -> set[RuleTuple]:
    """(apiGroup, resource, verb, namespace or None for cluster-wide, resourceName or None) the operator may use.

    Only (Cluster)Roles bound to the operator's ServiceAccount (in the release namespace) count; a ClusterRole
    bound by a RoleBinding grants its rules in the binding's namespace only.
    """
    objects = render_chart(values)
    account = service_account_name(values)
    roles = {(obj["kind"], obj["metadata"].get("namespace"), obj["metadata"]["name"]): obj
             for obj in objects if obj["kind"] in ("Role", "ClusterRole")}
    rules: set[RuleTuple] = set()
    for binding in objects:
        if binding["kind"] not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        if not any(subject["kind"] == "ServiceAccount" and subject["name"] == account
                   and subject.get("namespace") == NAMESPACE for subject in binding["subjects"]):
            continue
        scope = binding["metadata"].get("namespace") if binding["kind"] == "RoleBinding" else None
        ref = binding["roleRef"]
        role = roles[(ref["kind"], scope if ref["kind"] == "Role" else None, ref["name"])]
        for rule in role.get("rules") or []:
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    for verb in rule["verbs"]:
                        for resource_name in rule.get("resourceNames") or [None]:
                            rules.add((group, resource, verb, scope, resource_name))
    return rules
