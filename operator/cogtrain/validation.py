"""Check a Training's inputs against the model's training schema, as Cog's runtime would.

Cog 0.23 never coerces JSON types ("768" is not an integer, 1 is not a boolean), takes an
integral float as an integer, compares choices exactly, counts string lengths in characters,
and follows the schema's `required` list. Two deliberate differences, documented in
docs/validation.md: an unknown input name is an error (Cog silently drops it), and an explicit
null for an input that is not required is accepted and left out (Cog rejects it).
Every problem is reported at once; a message never contains a Secret input's value.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pydantic

from .schema import TrainingSchema, ValueType, compile_pattern

MAX_DEPTH = 100
"""Deepest nesting accepted in a value (Cog's JSON parser stops at 128)."""

_SHOWN_CHARS = 48
_DEPRECATED = "is deprecated by the model and may be ignored or removed in a later version"


@dataclass(frozen=True)
class Problem:
    """One thing wrong (or worth a warning) with one field."""

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


def model_problems(error: pydantic.ValidationError, prefix: str = "") -> list[Problem]:
    """Each error of a pydantic model (a Training, its spec) as a Problem on its field path."""
    problems = []
    for item in error.errors():
        location = ".".join(str(part) for part in item["loc"])
        problems.append(Problem(f"{prefix}{location}" or "training", item["msg"]))
    return problems


@dataclass(frozen=True)
class ValidationResult:
    """The input object to send to the model (Secret inputs excluded), or the problems."""

    input: dict[str, Any]
    problems: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    secret_names: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def show(value: Any) -> str:
    """A short, safe rendering of a value for a message (never huge, never recursive)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        if value.bit_length() > 200:
            return f"an integer of about {int(value.bit_length() * math.log10(2)) + 1} digits"
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return repr(value)
    if isinstance(value, str):
        if len(value) <= _SHOWN_CHARS:
            return _quote(value)
        return f"{_quote(value[:_SHOWN_CHARS])[:-1]}…\" ({len(value)} characters)"
    if isinstance(value, list):
        return f"a list of {len(value)} item{'s' if len(value) != 1 else ''}"
    if isinstance(value, Mapping):
        return f"an object with {len(value)} key{'s' if len(value) != 1 else ''}"
    return f"a {type(value).__name__}"


def _quote(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    escaped = "".join(
        ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in escaped
    )
    return f'"{escaped}"'


def _kind(value: Any) -> str:
    """'a string', 'an integer', ... : what the user actually wrote."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, Mapping):
        return "an object"
    return f"a {type(value).__name__}"


def _same_json(a: Any, b: Any) -> bool:
    """JSON equality: true is not 1, 4.0 is 4, "4" is not 4."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    return type(a) is type(b) and a == b


def allowed_range(low: Any, high: Any, low_open: bool = False, high_open: bool = False, unit: str = "") -> str:
    """'1..10000', '>= 0', '> 0 and < 1': the range a bound allows, as messages and tables show it."""
    if low is not None and high is not None and not (low_open or high_open):
        return f"{show(low)}..{show(high)}{unit}"
    parts = []
    if low is not None:
        parts.append(f"{'>' if low_open else '>='} {show(low)}")
    if high is not None:
        parts.append(f"{'<' if high_open else '<='} {show(high)}")
    return " and ".join(parts) + unit


def _too_deep(value: Any) -> bool:
    stack = [(value, 0)]
    while stack:
        current, depth = stack.pop()
        if depth > MAX_DEPTH:
            return True
        if isinstance(current, list):
            stack.extend((item, depth + 1) for item in current)
        elif isinstance(current, Mapping):
            stack.extend((item, depth + 1) for item in current.values())
    return False


def _untyped_inside(expected: ValueType) -> bool:
    """Whether the schema lets values of any depth through (so depth must be bounded here)."""
    while expected.type == "array" and expected.items is not None:
        expected = expected.items
    return expected.type in ("any", "object", "array")


def _type_hint(value: Any, expected: ValueType) -> str:
    """What to write instead, when the intent is plain."""
    if isinstance(value, str):
        text = value.strip()
        if expected.type == "boolean" and text.lower() in ("true", "false"):
            return f"; write {text.lower()} without quotes"
        if expected.type in ("integer", "number"):
            try:
                number = int(text) if expected.type == "integer" else float(text)
            except ValueError:
                return ""
            if isinstance(number, float) and not math.isfinite(number):
                return ""
            return f"; write {show(number)} without quotes"
    if expected.type == "boolean" and isinstance(value, int) and value in (0, 1):
        return f"; write {'true' if value else 'false'}"
    if expected.type == "string" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return f'; quote it: "{show(value)}"'
    if expected.type == "array" and isinstance(value, (str, int, float)):
        return f"; write it as a list: [{show(value)}]"
    return ""


def check_value(value: Any, expected: ValueType, where: str) -> tuple[Any, list[Problem]]:
    """Check one value; return it normalized (integral floats as ints) and its problems."""
    kind = expected.type
    wrong_type = (
        (kind == "string" and not isinstance(value, str))
        or (kind == "boolean" and not isinstance(value, bool))
        or (kind in ("integer", "number") and (isinstance(value, bool) or not isinstance(value, (int, float))))
        or (kind == "array" and not isinstance(value, list))
        or (kind == "object" and not isinstance(value, Mapping))
    )
    if wrong_type:
        message = f"{show(value)} is {_kind(value)}, but this input takes {expected.describe()}"
        if value is None:
            message = f"null is not allowed here; this takes {expected.describe()}"
        return value, [Problem(where, message + _type_hint(value, expected))]
    if isinstance(value, float) and not math.isfinite(value):
        return value, [Problem(where, f"{show(value)} is not a finite number; this takes {expected.describe()}")]
    if kind == "integer" and isinstance(value, float):
        if not value.is_integer():
            return value, [Problem(where, f"{show(value)} is not a whole number; this takes an integer")]
        value = int(value)
    if _untyped_inside(expected) and _too_deep(value):
        return value, [Problem(where, f"the value is nested more than {MAX_DEPTH} levels deep")]

    problems: list[Problem] = []
    if kind in ("integer", "number"):
        problems += _check_bounds(value, expected, where)
    elif kind == "string":
        problems += _check_string(value, expected, where)
    elif kind == "array":
        value, item_problems = _check_items(value, expected, where)
        problems += item_problems
    if expected.choices is not None and not any(_same_json(value, c) for c in expected.choices):
        problems.append(Problem(where, _not_a_choice(value, expected.choices)))
    return value, problems


def _check_bounds(value: int | float, expected: ValueType, where: str) -> list[Problem]:
    allowed = allowed_range(expected.minimum, expected.maximum, expected.exclusive_minimum, expected.exclusive_maximum)
    low, high = expected.minimum, expected.maximum
    if low is not None and (value < low or (expected.exclusive_minimum and value == low)):
        word = "not greater than" if expected.exclusive_minimum else "less than"
        return [Problem(where, f"{show(value)} is {word} the minimum of {show(low)} (allowed: {allowed})")]
    if high is not None and (value > high or (expected.exclusive_maximum and value == high)):
        word = "not less than" if expected.exclusive_maximum else "greater than"
        return [Problem(where, f"{show(value)} is {word} the maximum of {show(high)} (allowed: {allowed})")]
    return []


def _check_string(value: str, expected: ValueType, where: str) -> list[Problem]:
    problems = []
    length = len(value)
    allowed = allowed_range(expected.min_length, expected.max_length, unit=" characters")
    if expected.min_length is not None and length < expected.min_length:
        problems.append(
            Problem(where, f"{show(value)} is {length} characters long, shorter than the minimum of "
                    f"{expected.min_length} (allowed: {allowed})")
        )
    if expected.max_length is not None and length > expected.max_length:
        problems.append(
            Problem(where, f"{show(value)} is {length} characters long, longer than the maximum of "
                    f"{expected.max_length} (allowed: {allowed})")
        )
    if expected.pattern is not None:
        compiled = compile_pattern(expected.pattern)
        if compiled is not None and compiled.search(value) is None:
            problems.append(
                Problem(where, f"{show(value)} does not match the pattern {expected.pattern} "
                        "(allowed: strings in which that regular expression finds a match)")
            )
    return problems


def _check_items(value: list[Any], expected: ValueType, where: str) -> tuple[list[Any], list[Problem]]:
    problems = []
    count = len(value)
    allowed = allowed_range(expected.min_items, expected.max_items, unit=" items")
    if expected.min_items is not None and count < expected.min_items:
        problems.append(Problem(where, f"the list has {count} items, fewer than the minimum of "
                                f"{expected.min_items} (allowed: {allowed})"))
    if expected.max_items is not None and count > expected.max_items:
        problems.append(Problem(where, f"the list has {count} items, more than the maximum of "
                                f"{expected.max_items} (allowed: {allowed})"))
    if expected.items is None:
        return value, problems
    normalized = []
    for index, item in enumerate(value):
        item, item_problems = check_value(item, expected.items, f"{where}[{index}]")
        normalized.append(item)
        problems += item_problems
    return normalized, problems


def _not_a_choice(value: Any, choices: tuple[Any, ...]) -> str:
    listed = ", ".join(show(c) for c in choices)
    message = f"{show(value)} is not one of the allowed choices (allowed: {listed})"
    if isinstance(value, str):
        exact_case = [c for c in choices if isinstance(c, str) and c.lower() == value.lower()]
        close = exact_case or difflib.get_close_matches(value, [c for c in choices if isinstance(c, str)], n=1)
        if close:
            message += f"; did you mean {show(close[0])}?"
        if exact_case:
            message += " Choices are case-sensitive."
    return message


def _suggest(name: str, candidates: Iterable[str]) -> str | None:
    candidates = list(candidates)
    folded = {c.replace("_", "").replace("-", "").lower(): c for c in candidates}
    key = name.replace("_", "").replace("-", "").lower()
    if key in folded:
        return folded[key]
    close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    return close[0] if close else None


def _unknown(name: str, candidates: list[str], section: str) -> str:
    suggestion = _suggest(name, candidates)
    known = ", ".join(candidates) if candidates else "none"
    hint = f' Did you mean "{suggestion}"?' if suggestion else ""
    return f"unknown input (Cog would silently ignore it).{hint} This model's {section} are: {known}"


def validate_input(
    schema: TrainingSchema,
    values: Any,
    secret_names: Iterable[str] = (),
) -> ValidationResult:
    """Judge `spec.input` (and the names in `spec.secretInputs`) against the training schema."""
    secret_names = list(secret_names)
    problems: list[Problem] = []
    warnings: list[Problem] = []
    sent: dict[str, Any] = {}
    names = list(schema.inputs)
    plain_names = [n for n in names if not schema.inputs[n].secret]

    if values is None:
        values = {}
    if not isinstance(values, Mapping):
        problems.append(
            Problem("input", f"expected an object mapping input names to values, got {_kind(values)}")
        )
        values = {}

    for raw_name, value in values.items():
        name = str(raw_name)
        where = f"input.{name}"
        spec = schema.inputs.get(name) if isinstance(raw_name, str) else None
        if spec is None:
            problems.append(Problem(where, _unknown(name, plain_names, "inputs")))
            continue
        if spec.secret:
            if value is not None:
                problems.append(Problem(where, (
                    "is a Secret input: its value must not be written in spec.input; reference a "
                    f"Kubernetes Secret instead (secretInputs: {{{name}: {{name: SECRET, key: KEY}}}})"
                )))
            continue
        if spec.deprecated:
            warnings.append(Problem(where, _DEPRECATED))
        if value is None:
            if spec.required:
                takes = spec.value.describe()
                problems.append(Problem(where, f"null is not allowed: this input is required and takes {takes}"))
            continue  # null means "not given": Cog applies its default (documented difference)
        normalized, value_problems = check_value(value, spec.value, where)
        if spec.value.pattern is not None and compile_pattern(spec.value.pattern) is None:
            warnings.append(Problem(where, (
                f"the model's pattern {spec.value.pattern} cannot be checked here; "
                "the model server will check it when the training starts"
            )))
        problems += value_problems
        if not value_problems:
            sent[name] = normalized

    given_secrets = []
    for name in secret_names:
        spec = schema.inputs.get(name)
        where = f"secretInputs.{name}"
        if spec is None:
            problems.append(Problem(where, _unknown(name, schema.secret_names, "Secret inputs")
                                    if schema.secret_names else "unknown input: this model has no Secret inputs"))
        elif not spec.secret:
            secrets = ", ".join(schema.secret_names) or "none"
            problems.append(Problem(where, (
                f"is not a Secret input of this model (it takes {spec.value.describe()}): give it in "
                f"spec.input instead; this model's Secret inputs are: {secrets}"
            )))
        else:
            given_secrets.append(name)
            if spec.deprecated:
                warnings.append(Problem(where, _DEPRECATED))

    for name, spec in schema.inputs.items():
        if not spec.required or name in values or name in given_secrets:
            continue
        if spec.secret:
            problems.append(Problem(f"secretInputs.{name}", (
                "required Secret input is missing: add it to secretInputs as "
                f"{{{name}: {{name: SECRET, key: KEY}}}}"
            )))
        else:
            problems.append(Problem(f"input.{name}", f"required input is missing; it takes {spec.value.describe()}"))

    if problems:
        sent = {}
    return ValidationResult(input=sent, problems=problems, warnings=warnings, secret_names=given_secrets)
