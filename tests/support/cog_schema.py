"""A model folder's training schema as Cog 0.23 writes it into `.cog/openapi_schema.json`.

Cog's CLI generates the document in Go when it builds an image (replicate/cog pkg/schema:
`buildOpenAPISpec`, `buildInputSchema`, `FieldType.JSONType`). The `cog` package from PyPI has no
generator, but its inspector reads train() the same way and its `FieldType.json_type()` is the
same type mapping (e.g. `list[Secret]` is an array whose `items` carry `x-cog-secret`). This
rebuilds the document from those plus Go's rules for defaults, `required` and `nullable`;
tests/test_schema.py checks that it reproduces the stored schema of every fixture model.

Write a new test model's schema with:
    .venv/bin/python -m support.cog_schema tests/models/NAME   (from tests/, or with tests on sys.path)
"""

from __future__ import annotations

import ast
import inspect
import json
import sys
from pathlib import Path
from typing import Any

import yaml

# Request, response and error shapes: the same for every training model (Go's buildOpenAPISpec).
_ERROR_RESPONSE = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/HTTPValidationError"}}},
                   "description": "Validation Error"}
_EMPTY_RESPONSE = {"content": {"application/json": {"schema": {}}}, "description": "Successful Response"}


def _skeleton() -> tuple[dict[str, Any], dict[str, Any]]:
    schemas = {
        "TrainingRequest": {"properties": {"id": {"title": "Id", "type": "string"},
                                           "input": {"$ref": "#/components/schemas/TrainingInput"}},
                            "title": "TrainingRequest", "type": "object"},
        "TrainingResponse": {"properties": {
            "completed_at": {"format": "date-time", "title": "Completed At", "type": "string"},
            "created_at": {"format": "date-time", "title": "Created At", "type": "string"},
            "error": {"title": "Error", "type": "string"},
            "id": {"title": "Id", "type": "string"},
            "input": {"$ref": "#/components/schemas/TrainingInput"},
            "logs": {"title": "Logs", "type": "string"},
            "metrics": {"title": "Metrics", "type": "object"},
            "output": {"$ref": "#/components/schemas/TrainingOutput"},
            "started_at": {"format": "date-time", "title": "Started At", "type": "string"},
            "status": {"title": "Status", "type": "string"},
            "version": {"title": "Version", "type": "string"},
        }, "title": "TrainingResponse", "type": "object"},
        "Status": {"description": "An enumeration.", "enum": ["starting", "processing", "succeeded", "canceled", "failed"],
                   "title": "Status", "type": "string"},
        "HTTPValidationError": {"properties": {"detail": {"items": {"$ref": "#/components/schemas/ValidationError"},
                                                          "title": "Detail", "type": "array"}},
                                "title": "HTTPValidationError", "type": "object"},
        "ValidationError": {"properties": {
            "loc": {"items": {"anyOf": [{"type": "string"}, {"type": "integer"}]}, "title": "Location", "type": "array"},
            "msg": {"title": "Message", "type": "string"},
            "type": {"title": "Error Type", "type": "string"},
        }, "required": ["loc", "msg", "type"], "title": "ValidationError", "type": "object"},
    }
    paths = {
        "/": {"get": {"operationId": "root__get", "responses": {"200": _EMPTY_RESPONSE}, "summary": "Root"}},
        "/health-check": {"get": {"operationId": "healthcheck_health_check_get", "responses": {"200": _EMPTY_RESPONSE},
                                  "summary": "Healthcheck"}},
        "/trainings": {"post": {
            "description": "Run a single training on the model", "operationId": "train_trainings_post",
            "requestBody": {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/TrainingRequest"}}}},
            "responses": {"200": {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/TrainingResponse"}}},
                                  "description": "Successful Response"},
                          "422": _ERROR_RESPONSE},
            "summary": "Train"}},
        "/trainings/{training_id}/cancel": {"post": {
            "operationId": "cancel_trainings__training_id__cancel_post",
            "parameters": [{"in": "path", "name": "training_id", "required": True,
                            "schema": {"title": "Training Id", "type": "string"}}],
            "responses": {"200": _EMPTY_RESPONSE, "422": _ERROR_RESPONSE},
            "summary": "Cancel"}},
    }
    return schemas, paths


def _written_defaults(source: str, function: str) -> dict[str, bool]:
    """Which parameters of `function` have a default written in the source (Go reads the source: a
    bare `Input(description=...)` has none, `Input(default=None)` has one)."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef) and node.name == function:
            args = node.args.args
            defaults: list[ast.expr | None] = [None] * (len(args) - len(node.args.defaults)) + list(node.args.defaults)
            written = {}
            for arg, default in zip(args, defaults, strict=True):
                if default is None:
                    written[arg.arg] = False
                elif isinstance(default, ast.Call) and getattr(default.func, "id", "") == "Input":
                    written[arg.arg] = bool(default.args) or any(k.arg == "default" for k in default.keywords)
                else:
                    written[arg.arg] = True
            return written
    raise ValueError(f"no function {function} in the source")


def _sorted(value: Any) -> Any:
    """Keys in order, as Go's encoding/json writes a map."""
    if isinstance(value, dict):
        return {key: _sorted(value[key]) for key in sorted(value)}
    if isinstance(value, list):
        return [_sorted(item) for item in value]
    return value


def _title(name: str) -> str:
    return " ".join(word[:1].upper() + word[1:] for word in name.split("_") if word)


def _load(model_dir: Path, module_name: str, function: str) -> tuple[Any, Any]:
    from cog import _adt, _inspector  # the `test` extra; loaded only here

    saved_path, saved_module = list(sys.path), sys.modules.pop(module_name, None)
    sys.path.insert(0, str(model_dir))
    try:
        info = _inspector.create_predictor(module_name, function)
        train = getattr(sys.modules[module_name], function)
        return info, (inspect.signature(train), _adt)
    finally:
        sys.path[:] = saved_path
        sys.modules.pop(module_name, None)
        if saved_module is not None:
            sys.modules[module_name] = saved_module


def training_document(model_dir: Path) -> dict[str, Any]:
    """The OpenAPI document Cog 0.23 generates for the train() of the model in `model_dir`."""
    config = yaml.safe_load((model_dir / "cog.yaml").read_text())
    module_file, function = config["train"].split(":")
    module_name = Path(module_file).stem
    written = _written_defaults((model_dir / module_file).read_text(), function)
    info, (signature, adt) = _load(model_dir, module_name, function)
    repetition, primitive = adt.Repetition, adt.PrimitiveType

    properties: dict[str, Any] = {}
    required: list[str] = []
    enums: dict[str, Any] = {}
    for name, field in sorted(info.inputs.items(), key=lambda item: item[1].order):
        raw = signature.parameters[name].default
        meta = raw if type(raw).__name__ == "FieldInfo" else None
        default = meta.default if meta is not None else raw
        prop: dict[str, Any] = {"x-order": field.order}
        if field.choices:
            enums[name] = {"description": "An enumeration.", "enum": list(field.choices), "title": name,
                           "type": field.type.primitive.json_type().get("type") or "string"}
            prop["allOf"] = [{"$ref": f"#/components/schemas/{name}"}]
        else:
            prop["title"] = _title(name)
            prop.update(field.type.json_type())
        nullable = field.type.repetition in (repetition.OPTIONAL, repetition.OPTIONAL_REPEATED)
        if (field.type.primitive is primitive.SECRET and field.type.repetition is repetition.REQUIRED
                and written[name] and default is None):
            nullable = True  # `x: Secret = Input(default=None)` is an optional credential
        has_default = written[name] and not (default is None and not nullable)
        if not has_default and field.type.repetition in (repetition.REQUIRED, repetition.REPEATED):
            required.append(name)
        if has_default:
            prop["default"] = default
        if nullable:
            prop["nullable"] = True
        for key, value in (("description", field.description), ("minimum", field.ge), ("maximum", field.le),
                           ("minLength", field.min_length), ("maxLength", field.max_length),
                           ("pattern", field.regex)):
            if value is not None:
                prop[key] = value
        if field.deprecated:
            prop["deprecated"] = True
        if meta is not None and meta.accept is not None:
            prop["x-cog-accept"] = meta.accept
        properties[name] = _sorted(prop)

    training_input: dict[str, Any] = {"properties": properties}
    if required:
        training_input["required"] = required
    training_input.update(title="TrainingInput", type="object")
    schemas, paths = _skeleton()
    components = {"TrainingInput": training_input, "TrainingOutput": info.output.json_type(), **schemas, **enums}
    return {"components": {"schemas": components}, "info": {"title": "Cog", "version": "dev"},
            "openapi": "3.0.2", "paths": paths}


def _integral_floats_as_ints(value: Any) -> Any:
    """Go writes the float64 1.0 as 1 (a `ge=1` bound, say)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_integral_floats_as_ints(item) for item in value]
    if isinstance(value, dict):
        return {key: _integral_floats_as_ints(item) for key, item in value.items()}
    return value


def main() -> None:
    model_dir = Path(sys.argv[1])
    target = model_dir / ".cog" / "openapi_schema.json"
    target.parent.mkdir(exist_ok=True)
    target.write_text(json.dumps(_integral_floats_as_ints(training_document(model_dir)), indent=2) + "\n")
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
