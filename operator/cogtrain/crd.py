"""Generate the Training CustomResourceDefinition from the pydantic models in `api`.

Pydantic's JSON Schema is turned into a Kubernetes *structural* schema: references inlined,
`Optional` unwrapped, titles dropped, descriptions kept on every field, and the immutability of
`spec` expressed as CEL transition rules. `crds/` holds the output; a test fails when it drifts.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from typing import Any

from . import api

_NULL = {"type": "null"}
# Boilerplate the kubernetes client appends to its models' docstrings.
_CLIENT_DOC_TAIL = re.compile(r"\n\s*Attributes:\n.*\Z", re.DOTALL)
_DROPPED_KEYS = {"title", "$defs"}


def _clean_description(text: str) -> str:
    return _CLIENT_DOC_TAIL.sub("", text).strip()


def _structural(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """Rewrite one pydantic JSON Schema node (recursively) as a structural schema node."""
    node = dict(node)
    ref = node.pop("$ref", None)
    if ref is not None:
        target = defs[ref.rsplit("/", 1)[-1]]
        merged = copy.deepcopy(target)
        merged.update(node)  # the field's own description and default win over the class's
        node = merged
    any_of = node.get("anyOf")
    if any_of is not None and _NULL in any_of:
        rest = [branch for branch in any_of if branch != _NULL]
        del node["anyOf"]
        if len(rest) == 1:
            branch = _structural(rest[0], defs)
            branch.update({k: v for k, v in node.items() if k not in branch or k == "description"})
            node = branch
        else:
            node["anyOf"] = rest
    if node.get("default", 0) is None:
        del node["default"]
    if node.get("additionalProperties") is False:
        del node["additionalProperties"]
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROPPED_KEYS:
            continue
        if key == "description":
            out[key] = _clean_description(value)
        elif key == "properties":
            out[key] = {name: _structural(sub, defs) for name, sub in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = _structural(value, defs)
        elif key == "anyOf":
            out[key] = [_structural(sub, defs) for sub in value]
        else:
            out[key] = value
    if out.get("type") == "object" and "properties" not in out and "additionalProperties" not in out:
        out.setdefault("x-kubernetes-preserve-unknown-fields", True)
    return _ordered(out)


def _ordered(node: dict[str, Any]) -> dict[str, Any]:
    """Type and description first, so the checked-in YAML reads well."""
    head = {key: node[key] for key in ("type", "description") if key in node}
    return head | {key: value for key, value in node.items() if key not in head}


def _untyped_for_cel(schema: Mapping[str, Any]) -> bool:
    """A map of free-form values (x-kubernetes-preserve-unknown-fields): CEL has no type for it, and
    the API server refuses a rule that names it ("undefined field")."""
    values = schema.get("additionalProperties")
    return isinstance(values, Mapping) and bool(values.get("x-kubernetes-preserve-unknown-fields"))


def _immutability_rules(spec_schema: dict[str, Any]) -> list[dict[str, str]]:
    """CEL transition rules: every spec field but the mutable ones keeps its value."""
    required = set(spec_schema.get("required", []))
    allowed = " and ".join(f"spec.{name}" for name in sorted(api.MUTABLE_SPEC_FIELDS))
    rules = []
    for field, schema in spec_schema["properties"].items():
        if field in api.MUTABLE_SPEC_FIELDS:
            continue
        if _untyped_for_cel(schema):  # spec.input: the webhook keeps it (docs/training.md)
            continue
        if field in required:
            rule = f"self.{field} == oldSelf.{field}"
        else:
            rule = (
                f"has(self.{field}) == has(oldSelf.{field}) && "
                f"(!has(self.{field}) || self.{field} == oldSelf.{field})"
            )
        rules.append(
            {
                "rule": rule,
                "message": (
                    f"spec.{field} is immutable: create a new Training to change it "
                    f"(only {allowed} may change)"
                ),
            }
        )
    rules.append(
        {
            "rule": "!has(oldSelf.cancel) || !oldSelf.cancel || (has(self.cancel) && self.cancel)",
            "message": "spec.cancel cannot be set back to false: a canceled Training stays canceled",
        }
    )
    return rules


def training_schema() -> dict[str, Any]:
    """The openAPIV3Schema of the Training resource."""
    raw = api.Training.model_json_schema(by_alias=True, mode="validation")
    defs = raw.get("$defs", {})
    spec = _structural(defs["TrainingSpec"], defs)
    spec["x-kubernetes-validations"] = _immutability_rules(spec)
    status = _structural(defs["TrainingStatus"], defs)
    status["properties"]["kopf"]["type"] = "object"
    conditions = status["properties"]["conditions"]
    conditions["x-kubernetes-list-type"] = "map"
    conditions["x-kubernetes-list-map-keys"] = ["type"]
    spec["properties"]["input"]["additionalProperties"]["nullable"] = True
    return {
        "type": "object",
        "description": _clean_description(api.Training.__doc__ or ""),
        "required": ["spec"],
        "properties": {
            "apiVersion": {
                "type": "string",
                "description": "Versioned schema of this representation of an object: cog.run/v1alpha1.",
            },
            "kind": {"type": "string", "description": "Kind of the object: Training."},
            "metadata": {"type": "object"},  # the API server allows nothing more here
            "spec": spec,
            "status": status,
        },
    }


def training_crd() -> dict[str, Any]:
    """The CustomResourceDefinition manifest of the Training resource."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{api.PLURAL}.{api.GROUP}",
            "labels": {"app.kubernetes.io/part-of": "cog-training-operator"},
        },
        "spec": {
            "group": api.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": api.KIND,
                "listKind": f"{api.KIND}List",
                "plural": api.PLURAL,
                "singular": api.SINGULAR,
                "shortNames": list(api.SHORT_NAMES),
                "categories": list(api.CATEGORIES),
            },
            "versions": [
                {
                    "name": api.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
                        {"name": "Progress", "type": "number", "format": "float",
                         "jsonPath": ".status.progress.percent"},
                        {"name": "Restarts", "type": "integer", "jsonPath": ".status.restarts"},
                        {"name": "Model", "type": "string", "jsonPath": ".spec.model"},
                        {"name": "Weights", "type": "string", "jsonPath": ".status.weights"},
                        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                        {"name": "Error", "type": "string", "jsonPath": ".status.error", "priority": 1},
                    ],
                    "schema": {"openAPIV3Schema": training_schema()},
                }
            ],
        },
    }
