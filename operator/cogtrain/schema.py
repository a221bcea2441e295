"""Read a Cog model's training interface from its OpenAPI document.

Cog's generator writes the train() parameters as `components.schemas.TrainingInput` (older
images: `Input`) and the return type as `TrainingOutput` (`Output`). `choices` become an
`allOf: [{$ref}]` pointing at an `enum` component, `Secret` is `format: password` with
`x-cog-secret` (on `items` for `list[Secret]`), `Optional[...]` is `nullable`. This module turns
that into typed descriptions that the validator, the CLI's table and the Job builder share.

The document comes from a model image, so a hostile one must not cost unbounded work: `$ref`
chains are resolved once per component, nesting and the number of schema nodes are capped, and
`pattern`s run on RE2, a linear-time engine (as Cog's own validator does), never on a
backtracking one.
"""

from __future__ import annotations

import json
import math
import reprlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property, lru_cache
from typing import Any, Protocol, cast

import re2  # type: ignore[import-untyped]  # google-re2: no type information

JSON_TYPES = ("string", "integer", "number", "boolean", "array", "object")

MAX_SCHEMA_DEPTH = 64
"""Deepest nesting of `items`/`$ref`/`allOf`/`anyOf` read in one input's schema."""
MAX_SCHEMA_NODES = 100_000
"""Most schema nodes one document may make the parser resolve (a `$ref` DAG could otherwise
make it exponential)."""
MAX_PATTERN_CHARS = 16_384
"""Longer `pattern`s are left to the model server (with a warning), not compiled here."""
PATTERN_MEMORY = 1 << 20
"""RE2's memory budget for one compiled pattern: a pattern needing more is left to the model server."""


class SchemaErrorKind(StrEnum):
    MALFORMED = "MalformedSchema"
    NO_TRAINING = "NoTrainingInterface"


MAX_ERROR_CHARS = 1000
"""A SchemaError's message is cut to this length (it may quote names and values of the document)."""


class SchemaError(Exception):
    """The OpenAPI document cannot describe a training interface; `kind` says why."""

    def __init__(self, message: str, kind: SchemaErrorKind = SchemaErrorKind.MALFORMED) -> None:
        if len(message) > MAX_ERROR_CHARS:
            message = message[: MAX_ERROR_CHARS - 1] + "…"
        super().__init__(message)
        self.kind = kind


def _brief_repr() -> reprlib.Repr:
    shortened = reprlib.Repr()
    shortened.maxstring = shortened.maxother = shortened.maxlong = 60
    return shortened


_brief = _brief_repr().repr
"""A bounded repr of a document value for an error message."""


def json_key(value: Any) -> tuple[Any, ...] | None:
    """A hashable key under which JSON-equal scalars meet (true is not 1, 4.0 is 4, "4" is not 4).

    None for lists, objects and anything else: those are compared one by one.
    """
    if value is None:
        return ("null",)
    if isinstance(value, bool):
        return ("boolean", value)
    if isinstance(value, (int, float)):
        return ("number", value) if _is_number(value) else None
    if isinstance(value, str):
        return ("string", value)
    return None


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

    @cached_property
    def choice_lookup(self) -> tuple[frozenset[tuple[Any, ...]], tuple[Any, ...]]:
        """`choices` for membership in constant time: their json_key()s, and those that have none."""
        keys = set()
        others = []
        for choice in self.choices or ():
            key = json_key(choice)
            if key is None:
                others.append(choice)
            else:
                keys.add(key)
        return frozenset(keys), tuple(others)

    @property
    def is_file(self) -> bool:
        """Cog's Path and File: a URI string that the model server downloads."""
        return self.type == "string" and self.format == "uri"

    def describe(self) -> str:
        """A short phrase naming what is accepted, e.g. 'an integer' or 'a list of strings'."""
        if self.type == "array":
            inner = self.items.describe_plural() if self.items else "values"
            return f"a list of {inner}"
        uri = "a URI string (an https:// or data: URL, s3://BUCKET/KEY, pvc://CLAIM/PATH, or a path)"
        return {
            "string": uri if self.is_file else "a string",
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

    @property
    def secret_list(self) -> bool:
        """A `list[Secret]` input: its Secret's value is a JSON array of strings (docs/validation.md)."""
        return self.secret and self.value.type == "array"


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

    @property
    def secret_list_names(self) -> list[str]:
        """The `list[Secret]` inputs among `secret_names`."""
        return [spec.name for spec in self.inputs.values() if spec.secret_list]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not (
        isinstance(value, float) and not math.isfinite(value)
    )


def _expect(condition: bool, where: str, what: str) -> None:
    if not condition:
        raise SchemaError(f"schema: {where} {what}")


def _is_secret(node: Mapping[str, Any]) -> bool:
    """Cog's Secret: `x-cog-secret`, or (older generators) a write-only password string."""
    return bool(node.get("x-cog-secret")) or (node.get("format") == "password" and bool(node.get("writeOnly")))


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
        self.resolved: dict[str, dict[str, Any]] = {}  # each component is resolved once
        self.nodes = 0
        self.depth = 0

    def resolve(self, node: Any, where: str, seen: frozenset[str] = frozenset()) -> dict[str, Any]:
        """Merge `$ref` / single-`allOf` / nullable-`anyOf` indirections into one flat node."""
        _expect(isinstance(node, Mapping), where, "must be an object")
        self.nodes += 1
        _expect(self.nodes <= MAX_SCHEMA_NODES, "the document",
                f"is too complex to read (more than {MAX_SCHEMA_NODES} schema nodes to resolve)")
        _expect(self.depth < MAX_SCHEMA_DEPTH, where, f"is nested more than {MAX_SCHEMA_DEPTH} levels deep")
        self.depth += 1
        try:
            return self._resolve(node, where, seen)
        finally:
            self.depth -= 1

    def _resolve(self, node: Mapping[str, Any], where: str, seen: frozenset[str]) -> dict[str, Any]:
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
        _expect(isinstance(ref, str) and ref.startswith(prefix), where, f"must point into {prefix}, got {_brief(ref)}")
        name = ref[len(prefix):]
        _expect(name in self.schemas, where, f"points at {ref}, which the document does not define")
        _expect(name not in seen, where, f"is a circular reference through {ref}")
        if name not in self.resolved:
            self.resolved[name] = self.resolve(self.schemas[name], f"components.schemas.{name}", seen | {name})
        # Each use copies the component: charged to the node budget, so many uses of a big one are bounded.
        self.nodes += len(self.resolved[name])
        _expect(self.nodes <= MAX_SCHEMA_NODES, "the document",
                f"is too complex to read (more than {MAX_SCHEMA_NODES} schema nodes to resolve)")
        return dict(self.resolved[name])

    def value_type(self, node: Mapping[str, Any], where: str, depth: int = 0) -> ValueType:
        declared = node.get("type")
        choices = node.get("enum")
        if choices is not None:
            _expect(isinstance(choices, list) and len(choices) > 0, f"{where}.enum", "must be a non-empty list")
        if declared is None:
            declared = _infer_type(choices) if choices else "any"
        _expect(declared in JSON_TYPES or declared == "any", f"{where}.type", f"is {_brief(declared)}, not a JSON type")
        items = None
        if declared == "array" and "items" in node:
            _expect(depth < MAX_SCHEMA_DEPTH, f"{where}.items", f"is nested more than {MAX_SCHEMA_DEPTH} levels deep")
            items = self.value_type(self.resolve(node["items"], f"{where}.items"), f"{where}.items", depth + 1)
        bounds = {}
        for key in ("minimum", "maximum"):
            if key in node:
                _expect(_is_number(node[key]), f"{where}.{key}", f"must be a number, got {_brief(node[key])}")
                bounds[key] = node[key]
        exclusive = {}
        for key, bound in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
            flag = node.get(key)
            if isinstance(flag, bool):
                exclusive[bound] = flag
            elif flag is not None:  # OpenAPI 3.1 / JSON Schema 2020-12: the bound itself
                _expect(_is_number(flag), f"{where}.{key}", f"must be a number or a boolean, got {_brief(flag)}")
                bounds[bound] = flag
                exclusive[bound] = True
        counts = {}
        for key in ("minLength", "maxLength", "minItems", "maxItems"):
            if key in node:
                value = node[key]
                _expect(
                    isinstance(value, int) and not isinstance(value, bool) and value >= 0,
                    f"{where}.{key}",
                    f"must be a non-negative integer, got {_brief(value)}",
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
        required_names = set(required)
        specs = []
        for position, (name, raw) in enumerate(properties.items()):
            prop_where = f"{where}.properties.{name}"
            prop = self.resolve(raw, prop_where)
            order = prop.get("x-order", position)
            is_int = isinstance(order, int) and not isinstance(order, bool)
            _expect(is_int, f"{prop_where}.x-order", "must be an integer")
            value = self.value_type(prop, prop_where)
            # list[Secret]: Cog's generator marks the items, not the property (see docs/validation.md).
            items = prop.get("items") if value.type == "array" else None
            secret = _is_secret(prop) or (
                isinstance(items, Mapping) and _is_secret(self.resolve(items, f"{prop_where}.items"))
            )
            description = prop.get("description")
            accept = prop.get("x-cog-accept")
            specs.append(
                InputSpec(
                    name=name,
                    value=value,
                    required=name in required_names,
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


class CompiledPattern(Protocol):
    """What the validator needs of a compiled pattern (an RE2 regexp)."""

    @property
    def programsize(self) -> int:
        """RE2's program size: a search costs at most about this many steps per byte of text."""

    def search(self, text: str) -> object | None: ...


# Cog 0.23's validator (the `jsonschema` crate, on Rust's linear-time `regex`) gives `\s` this set,
# found by asking Cog's own server (tests/models/patterns); it is neither ECMA-262's nor Python's.
COG_SPACE = "\\t\\n\\x0B\\f\\r \\x{A0}\\x{2003}\\x{2029}\\x{FEFF}"

_ESCAPES = {
    "\\d": "[0-9]",
    "\\D": "[^0-9]",
    "\\w": "[0-9A-Za-z_]",
    "\\W": "[^0-9A-Za-z_]",
    "\\s": f"[{COG_SPACE}]",
    "\\S": f"[^{COG_SPACE}]",
}
# Inside a class; RE2's own \D and \W are already the ASCII ones ECMA-262 means.
_CLASS_ESCAPES = {"\\d": "0-9", "\\w": "0-9A-Za-z_", "\\s": COG_SPACE, "\\D": "\\D", "\\W": "\\W"}
# Cog's `\b` and `\B` are Unicode-aware (é is a word character), RE2's are ASCII-only, and a class
# cannot hold Cog's `\S`: such patterns are left to the model server.
# RE2's `\C` (one byte) has no counterpart in Cog.
_UNREADABLE = ("\\b", "\\B", "\\C")
_CLASS_UNREADABLE = ("\\b", "\\B", "\\C", "\\S")
_HEX = frozenset("0123456789abcdefABCDEF")


def _unicode_escape(pattern: str, i: int) -> tuple[str, int] | None:
    """`\\uXXXX` or `\\u{X...}` at `i` as RE2's `\\x{...}`, and where it ends; None when malformed."""
    if pattern.startswith("\\u{", i):
        end = pattern.find("}", i + 3)
        digits = pattern[i + 3 : end] if end > 0 else ""
        if digits and len(digits) <= 6 and set(digits) <= _HEX:
            return f"\\x{{{digits}}}", end + 1
        return None
    digits = pattern[i + 2 : i + 6]
    if len(digits) == 4 and set(digits) <= _HEX:
        return f"\\x{{{digits}}}", i + 6
    return None


def re2_pattern(pattern: str) -> str | None:
    """Translate a schema `pattern` to RE2 with the meaning Cog's validator gives it, or None.

    Cog 0.23 checks `pattern` with the `jsonschema` crate on Rust's `regex` (a linear-time
    engine, like RE2): `$` matches only at the very end unless `(?m)`, `\\d` and `\\w` are
    ASCII-only, `\\s` is the set in COG_SPACE, `\\uXXXX` is a code point, `(?<name>...)` names a
    group, `\\p{L}` is a Unicode class. None: a construct RE2 cannot give Cog's meaning (a
    Unicode `\\b`, a nested class or class set operation, a malformed `\\u`).
    """
    out: list[str] = []
    in_class = False
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if char == "\\" and i + 1 < len(pattern):
            pair = pattern[i : i + 2]
            if pair in (_CLASS_UNREADABLE if in_class else _UNREADABLE):
                return None
            if pair == "\\u":
                escape = _unicode_escape(pattern, i)
                if escape is None:
                    return None
                out.append(escape[0])
                i = escape[1]
                continue
            out.append((_CLASS_ESCAPES if in_class else _ESCAPES).get(pair, pair))
            i += 2
            continue
        if in_class:
            if char == "]":
                in_class = False
            elif char == "[" and pattern[i + 1 : i + 2] != ":":
                return None  # Rust: a nested class; RE2: a literal
            elif pattern[i : i + 2] in ("&&", "--", "~~"):
                return None  # Rust: set operations; RE2: literals
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
        elif pattern.startswith("(?<", i) and pattern[i + 3 : i + 4] not in ("=", "!"):
            out.append("(?P<")
            i += 3
            continue
        out.append(char)
        i += 1
    return "".join(out)


def _options() -> Any:
    options = re2.Options()
    options.max_mem = PATTERN_MEMORY
    options.log_errors = False
    return options


_OPTIONS = _options()


@lru_cache(maxsize=256)
def compile_pattern(pattern: str) -> CompiledPattern | None:
    """The pattern compiled for RE2 (linear time in the text), or None when it is not checked here.

    None: longer than MAX_PATTERN_CHARS, not translatable (see re2_pattern), or not compilable by
    RE2 (lookaround, backreferences, over the memory budget). Cog's server checks it then.
    """
    if len(pattern) > MAX_PATTERN_CHARS:
        return None
    translated = re2_pattern(pattern)
    if translated is None:
        return None
    try:
        return cast(CompiledPattern, re2.compile(translated, _OPTIONS))
    except (re2.error, UnicodeEncodeError, TypeError, ValueError):
        return None


def cli_value(spec: InputSpec | None, raw: str) -> Any:
    """`-i NAME=VALUE`'s value the way Cog's CLI reads it: typed by the schema (JSON for non-strings, commas for
    lists); what does not parse stays the text, for the validator to say what is wrong with it."""
    kind = spec.value.type if spec is not None else "string"
    if kind == "string":
        return raw
    try:
        return json.loads(raw)
    except ValueError:
        return [item.strip() for item in raw.split(",")] if kind == "array" else raw
