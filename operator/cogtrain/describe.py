"""Describe a model's training interface for people: the table `cogtrain schema` prints."""

from __future__ import annotations

from typing import Any

from .resolver import ResolvedModel
from .schema import InputSpec
from .validation import allowed_range, show


def constraints(spec: InputSpec) -> str:
    """The rules an input's schema sets, in words, for the schema table."""
    value = spec.value
    parts = []
    if spec.secret:
        parts.append("secret: give it in secretInputs")
    if value.choices:
        parts.append("one of: " + ", ".join(show(c) for c in value.choices))
    if value.minimum is not None or value.maximum is not None:
        parts.append(allowed_range(value.minimum, value.maximum, value.exclusive_minimum, value.exclusive_maximum))
    if value.min_length is not None or value.max_length is not None:
        parts.append(allowed_range(value.min_length, value.max_length, unit=" characters"))
    if value.pattern is not None:
        parts.append(f"matches {value.pattern}")
    if value.min_items is not None or value.max_items is not None:
        parts.append(allowed_range(value.min_items, value.max_items, unit=" items"))
    if value.items is not None and value.items.choices:
        parts.append("items one of: " + ", ".join(show(c) for c in value.items.choices))
    if spec.accept:
        parts.append(f"accepts {spec.accept}")
    if spec.deprecated:
        parts.append("deprecated")
    return "; ".join(parts)


def _type_name(spec: InputSpec) -> str:
    return "secret" if spec.secret else spec.value.type_name()


def _default(spec: InputSpec) -> str:
    if spec.required:
        return "required"
    if spec.has_default:
        return show(spec.default)
    return "optional"


def _output_type(output: Any) -> str:
    if not isinstance(output, dict):
        return "unknown"
    if output.get("type") == "object" and isinstance(output.get("properties"), dict):
        fields = ", ".join(f"{name}: {_output_type(sub)}" for name, sub in output["properties"].items())
        return f"object {{{fields}}}"
    if output.get("type") == "array":
        return f"list[{_output_type(output.get('items'))}]"
    if output.get("format") == "uri":
        return "file"
    return str(output.get("type", "any"))


def schema_table(model: ResolvedModel) -> str:
    """The training inputs as a readable table, in the order of train()'s parameters."""
    header = ("NAME", "TYPE", "DEFAULT", "CONSTRAINTS", "DESCRIPTION")
    rows = [header] + [
        (spec.name, _type_name(spec), _default(spec), constraints(spec), " ".join((spec.description or "").split()))
        for spec in model.schema.inputs.values()
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    lines = [f"{model.pinned}", f"training inputs ({model.schema.input_component}):", ""]
    for row in rows:
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[-1])
    lines.append("")
    lines.append(f"output: {_output_type(model.schema.output)}")
    return "\n".join(line.rstrip() for line in lines) + "\n"
