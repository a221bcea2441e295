"""Read a Cog model's training interface from its OpenAPI document.

Cog's generator writes the train() parameters as `components.schemas.TrainingInput` (older
images: `Input`) and the return type as `TrainingOutput` (`Output`). `choices` become an
`allOf: [{$ref}]` pointing at an `enum` component, `Secret` is `format: password` with
`x-cog-secret`, `Optional[...]` is `nullable`. This module turns that into typed descriptions
that the validator, the CLI's table and the Job builder share.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from functools import lru_cache
from typing import Any

JSON_TYPES = ("string", "integer", "number", "boolean", "array", "object")


class SchemaErrorKind(StrEnum):
    MALFORMED = "MalformedSchema"
    NO_TRAINING = "NoTrainingInterface"


class SchemaError(Exception):
    """The OpenAPI document cannot describe a training interface; `kind` says why."""

    def __init__(self, message: str, kind: SchemaErrorKind = SchemaErrorKind.MALFORMED) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class ValueType:
    """The JSON shape an input (or a list item) accepts."""

    type: str  # one of JSON_TYPES, or "any" when the schema does not say
    format: str | None = None
    choices: tuple[Any, ...] | None = None
    items: ValueType | None = None
    minimum: float | int | None = None
    maximum: float | int | None = None
    exclusive_minimum: bool = False
    exclusive_maximum: bool = False
    min_length: int | None = None
    max_length: int | None = None
    pattern: str | None = None
    min_items: int | None = None
    max_items: int | None = None

    @property
    def is_file(self) -> bool:
        """Cog's Path and File: a URI string that the model server downloads."""
        return self.type == "string" and self.format == "uri"

    def describe(self) -> str:
        """A short phrase naming what is accepted, e.g. 'an integer' or 'a list of strings'."""
        if self.type == "array":
            inner = self.items.describe_plural() if self.items else "values"
            return f"a list of {inner}"
        return {
            "string": "a URI string (an https:// or data: URL, or a path)" if self.is_file else "a string",
            "integer": "an integer",
            "number": "a number",
            "boolean": "true or false",
            "object": "an object",
            "any": "any JSON value",
        }[self.type]

    def describe_plural(self) -> str:
        if self.type == "array":
            return f"lists of {self.items.describe_plural() if self.items else 'values'}"
        return {
            "string": "URIs" if self.is_file else "strings",
            "integer": "integers",
            "number": "numbers",
            "boolean": "booleans",
            "object": "objects",
            "any": "values",
        }[self.type]

    def type_name(self) -> str:
        """Compact type for tables: 'integer', 'uri', 'list[string]'."""
        if self.type == "array":
            return f"list[{self.items.type_name() if self.items else 'any'}]"
        if self.is_file:
            return "uri"
        return self.type


@dataclass(frozen=True)
class InputSpec:
    """One parameter of the model's train() function, as its schema declares it."""

    name: str
    value: ValueType
    required: bool
    order: int
    has_default: bool = False
    default: Any = None
    nullable: bool = False
    secret: bool = False
    deprecated: bool = False
    description: str | None = None
    accept: str | None = None  # x-cog-accept: file types a Path input accepts


@dataclass(frozen=True)
class TrainingSchema:
    """The training interface of one model: its inputs in parameter order and its output."""

    inputs: Mapping[str, InputSpec]
    output: Mapping[str, Any] | None = None
    input_component: str = "TrainingInput"
    document: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def secret_names(self) -> list[str]:
        return [spec.name for spec in self.inputs.values() if spec.secret]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not (
        isinstance(value, float) and not math.isfinite(value)
    )


def _expect(condition: bool, where: str, what: str) -> None:
    if not condition:
        raise SchemaError(f"schema: {where} {what}")


class _Parser:
    """Walks one OpenAPI document; `where` strings make errors point at the bad spot."""

    def __init__(self, document: Mapping[str, Any]) -> None:
        _expect(isinstance(document, Mapping), "the document", "must be a JSON object")
        components = document.get("components", {})
        _expect(isinstance(components, Mapping), "components", "must be an object")
        schemas = components.get("schemas", {})
        _expect(isinstance(schemas, Mapping), "components.schemas", "must be an object")
        self.document = document
        self.schemas: Mapping[str, Any] = schemas

    def resolve(self, node: Any, where: str, seen: frozenset[str] = frozenset()) -> dict[str, Any]:
        """Merge `$ref` / single-`allOf` / nullable-`anyOf` indirections into one flat node."""
        _expect(isinstance(node, Mapping), where, "must be an object")
        node = dict(node)
        merged: dict[str, Any] = {}
        targets: list[tuple[Any, str]] = []
        if "$ref" in node:
            targets.append((node.pop("$ref"), f"{where}.$ref"))
        if "allOf" in node:
            all_of = node.pop("allOf")
            _expect(isinstance(all_of, list), f"{where}.allOf", "must be a list")
            for index, sub in enumerate(all_of):
                merged.update(self.resolve(sub, f"{where}.allOf[{index}]", seen))
        if "anyOf" in node or "oneOf" in node:
            key = "anyOf" if "anyOf" in node else "oneOf"
            branches = node.pop(key)
            _expect(isinstance(branches, list), f"{where}.{key}", "must be a list")
            real = [b for b in branches if not (isinstance(b, Mapping) and b.get("type") == "null")]
            if len(real) < len(branches):
                merged["nullable"] = True
            if len(real) == 1:
                merged.update(self.resolve(real[0], f"{where}.{key}[0]", seen))
        for ref, ref_where in targets:
            merged.update(self._deref(ref, ref_where, seen))
        merged.update(node)
        if isinstance(merged.get("type"), list):  # OpenAPI 3.1: type: [string, "null"]
            types = [t for t in merged["type"] if t != "null"]
            if len(types) < len(merged["type"]):
                merged["nullable"] = True
            merged["type"] = types[0] if len(types) == 1 else None
            if merged["type"] is None:
                del merged["type"]
        return merged

    def _deref(self, ref: Any, where: str, seen: frozenset[str]) -> dict[str, Any]:
        prefix = "#/components/schemas/"
        _expect(isinstance(ref, str) and ref.startswith(prefix), where, f"must point into {prefix}, got {ref!r}")
        name = ref[len(prefix):]
        _expect(name in self.schemas, where, f"points at {ref}, which the document does not define")
        _expect(name not in seen, where, f"is a circular reference through {ref}")
        return self.resolve(self.schemas[name], f"components.schemas.{name}", seen | {name})

    def value_type(self, node: Mapping[str, Any], where: str) -> ValueType:
        declared = node.get("type")
        choices = node.get("enum")
        if choices is not None:
            _expect(isinstance(choices, list) and len(choices) > 0, f"{where}.enum", "must be a non-empty list")
        if declared is None:
            declared = _infer_type(choices) if choices else "any"
        _expect(declared in JSON_TYPES or declared == "any", f"{where}.type", f"is {declared!r}, not a JSON type")
        items = None
        if declared == "array" and "items" in node:
            items = self.value_type(self.resolve(node["items"], f"{where}.items"), f"{where}.items")
        bounds = {}
        for key in ("minimum", "maximum"):
            if key in node:
                _expect(_is_number(node[key]), f"{where}.{key}", f"must be a number, got {node[key]!r}")
                bounds[key] = node[key]
        exclusive = {}
        for key, bound in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
            flag = node.get(key)
            if isinstance(flag, bool):
                exclusive[bound] = flag
            elif flag is not None:  # OpenAPI 3.1 / JSON Schema 2020-12: the bound itself
                _expect(_is_number(flag), f"{where}.{key}", f"must be a number or a boolean, got {flag!r}")
                bounds[bound] = flag
                exclusive[bound] = True
        counts = {}
        for key in ("minLength", "maxLength", "minItems", "maxItems"):
            if key in node:
                value = node[key]
                _expect(
                    isinstance(value, int) and not isinstance(value, bool) and value >= 0,
                    f"{where}.{key}",
                    f"must be a non-negative integer, got {value!r}",
                )
                counts[key] = value
        pattern = node.get("pattern")
        if pattern is not None:
            _expect(isinstance(pattern, str), f"{where}.pattern", "must be a string")
        fmt = node.get("format")
        return ValueType(
            type=declared,
            format=fmt if isinstance(fmt, str) else None,
            choices=tuple(choices) if choices else None,
            items=items,
            minimum=bounds.get("minimum"),
            maximum=bounds.get("maximum"),
            exclusive_minimum=exclusive.get("minimum", False),
            exclusive_maximum=exclusive.get("maximum", False),
            min_length=counts.get("minLength"),
            max_length=counts.get("maxLength"),
            pattern=pattern,
            min_items=counts.get("minItems"),
            max_items=counts.get("maxItems"),
        )

    def input_component(self) -> str:
        if "TrainingInput" in self.schemas:
            return "TrainingInput"
        paths = self.document.get("paths", {})
        paths = paths if isinstance(paths, Mapping) else {}
        if "Input" in self.schemas and ("/trainings" in paths or "/predictions" not in paths):
            return "Input"
        raise SchemaError(
            "this model's cog.yaml has no `train:`: its schema has no TrainingInput, only a "
            "prediction interface; pick an image built with a train() function",
            SchemaErrorKind.NO_TRAINING,
        )

    def inputs(self, component: str) -> dict[str, InputSpec]:
        where = f"components.schemas.{component}"
        node = self.resolve(self.schemas[component], where, frozenset({component}))
        properties = node.get("properties", {})
        _expect(isinstance(properties, Mapping), f"{where}.properties", "must be an object")
        required = node.get("required", [])
        _expect(
            isinstance(required, list) and all(isinstance(r, str) for r in required),
            f"{where}.required",
            "must be a list of input names",
        )
        specs = []
        for position, (name, raw) in enumerate(properties.items()):
            prop_where = f"{where}.properties.{name}"
            prop = self.resolve(raw, prop_where)
            order = prop.get("x-order", position)
            is_int = isinstance(order, int) and not isinstance(order, bool)
            _expect(is_int, f"{prop_where}.x-order", "must be an integer")
            secret = bool(prop.get("x-cog-secret")) or (
                prop.get("format") == "password" and bool(prop.get("writeOnly"))
            )
            description = prop.get("description")
            accept = prop.get("x-cog-accept")
            specs.append(
                InputSpec(
                    name=name,
                    value=self.value_type(prop, prop_where),
                    required=name in required,
                    order=order,
                    has_default="default" in prop,
                    default=prop.get("default"),
                    nullable=bool(prop.get("nullable")),
                    secret=secret,
                    deprecated=bool(prop.get("deprecated")),
                    description=description if isinstance(description, str) else None,
                    accept=accept if isinstance(accept, str) else None,
                )
            )
        specs.sort(key=lambda spec: spec.order)
        return {spec.name: spec for spec in specs}

    def output(self, component: str) -> dict[str, Any] | None:
        name = "TrainingOutput" if component == "TrainingInput" else "Output"
        if name not in self.schemas:
            return None
        return self.resolve(self.schemas[name], f"components.schemas.{name}", frozenset({name}))


def _infer_type(choices: list[Any]) -> str:
    if all(isinstance(c, str) for c in choices):
        return "string"
    if all(isinstance(c, int) and not isinstance(c, bool) for c in choices):
        return "integer"
    if all(_is_number(c) for c in choices):
        return "number"
    return "any"


def parse_schema(document: Mapping[str, Any]) -> TrainingSchema:
    """Parse a Cog OpenAPI document into its training interface, or raise SchemaError."""
    parser = _Parser(document)
    component = parser.input_component()
    try:
        inputs = parser.inputs(component)
        output = parser.output(component)
    except RecursionError:
        raise SchemaError("schema: nested too deeply to read") from None
    return TrainingSchema(inputs=inputs, output=output, input_component=component, document=document)


def parse_schema_text(text: str | bytes) -> TrainingSchema:
    """Parse the JSON text of a Cog OpenAPI document (as found in the image label)."""
    try:
        document = json.loads(text)
    except (ValueError, RecursionError) as error:
        raise SchemaError(f"schema: not valid JSON ({error})") from None
    return parse_schema(document)


_ESCAPES = {
    "\\d": "[0-9]",
    "\\D": "[^0-9]",
    "\\w": "[A-Za-z0-9_]",
    "\\W": "[^A-Za-z0-9_]",
    "\\z": "\\Z",
}
_CLASS_ESCAPES = {"\\d": "0-9", "\\w": "A-Za-z0-9_"}


def python_pattern(pattern: str) -> str:
    """Translate a schema `pattern` to Python's `re` with the meaning Cog's validator gives it.

    Cog 0.23 checks inputs with JSON Schema's ECMA-262 regex semantics (a Rust engine): `$`
    matches only at the very end (Python's also matches before a final newline), `\\d` and `\\w`
    are ASCII-only, `\\z` ends the text, and `(?<name>...)` names a group.
    """
    out: list[str] = []
    in_class = False
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if char == "\\" and i + 1 < len(pattern):
            pair = pattern[i : i + 2]
            out.append((_CLASS_ESCAPES if in_class else _ESCAPES).get(pair, pair))
            i += 2
            continue
        if in_class:
            if char == "]":
                in_class = False
        elif char == "[":
            in_class = True
            out.append(char)
            i += 1
            if pattern[i : i + 1] == "^":
                out.append("^")
                i += 1
            if pattern[i : i + 1] == "]":  # a leading ] is a literal
                out.append("\\]")
                i += 1
            continue
        elif char == "$":
            out.append("\\Z")
            i += 1
            continue
        elif pattern.startswith("(?<", i) and pattern[i + 3 : i + 4] not in ("=", "!"):
            out.append("(?P<")
            i += 3
            continue
        out.append(char)
        i += 1
    return "".join(out)


@lru_cache(maxsize=512)
def compile_pattern(pattern: str) -> re.Pattern[str] | None:
    """The compiled pattern, or None when Python's engine cannot express it."""
    try:
        return re.compile(python_pattern(pattern))
    except (re.error, RecursionError, OverflowError):
        return None
