"""The Training CRD's openAPIV3Schema as a JSON Schema validator, refusing unknown fields as `kubectl apply` does."""

from __future__ import annotations

from typing import Any

import jsonschema

from cogtrain.crd import training_crd


def crd_schema() -> dict[str, Any]:
    schema: dict[str, Any] = training_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def strict_jsonschema(node: Any) -> Any:
    """The CRD schema as plain JSON Schema, refusing unknown fields as `kubectl apply` does."""
    if isinstance(node, list):
        return [strict_jsonschema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: strict_jsonschema(value) for key, value in node.items() if key != "x-kubernetes-validations"}
    if "properties" in out and "additionalProperties" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    if out.get("nullable"):
        out.pop("nullable")
        if "type" in out:
            out["type"] = [out["type"], "null"]
    return out


def training_validator() -> jsonschema.Validator:
    schema = strict_jsonschema(crd_schema())
    schema["properties"]["metadata"] = {"type": "object"}
    return jsonschema.Draft7Validator(schema, format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER)
