"""The validator's verdicts checked against Cog's own model server on the same inputs.

For every case: where the validator accepts, the exact object it would send is sent to Cog's
server, which must accept it too; where it rejects (and the case is not one of the documented
differences), the raw input is sent and Cog must refuse it with 422. The cases come both from
the schemas (values just inside and just outside every bound) and from a hand-written list.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from cogtrain.schema import InputSpec, TrainingSchema, parse_schema
from cogtrain.validation import validate_input
from support.paths import load_schema_document, model_dirs

DATA_URL = "data:text/plain;base64,aGVsbG8="
SECRET_VALUE = "s3cr3t-value"

# A valid input for every model: the required inputs, nothing else.
BASE: dict[str, dict[str, Any]] = {
    "all-inputs": {"train_data": DATA_URL, "caption_prefix": "a photo of"},
    "hello-train": {"param": "train"},
    "training-output": {"train_data": DATA_URL},
    "edge-cases": {},
}


def boundary_values(spec: InputSpec) -> Iterator[tuple[str, Any]]:
    """Values on both sides of every constraint the schema puts on one input."""
    value = spec.value
    kind = value.type
    if value.choices:
        for choice in value.choices:
            yield "choice", choice
        if kind == "string":
            yield "choice-uppercase", str(value.choices[0]).upper()
            yield "choice-padded", f" {value.choices[0]}"
        if kind == "integer":
            yield "choice-as-float", float(value.choices[0])
            yield "choice-as-string", str(value.choices[0])
            yield "not-a-choice", max(value.choices) + 1
    if kind in ("integer", "number"):
        step = 1 if kind == "integer" else 0.001
        for bound, sign in ((value.minimum, -1), (value.maximum, 1)):
            if bound is not None:
                yield "at-bound", bound
                yield "past-bound", bound + sign * step
                if kind == "integer":
                    yield "bound-as-float", float(bound)
        yield "numeric-string", "5"
        yield "boolean", True
        if kind == "integer":
            yield "fraction", 2.5
            yield "integral-float", 2.0
            yield "huge", 10**30
        else:
            yield "integer-for-number", 1
    if kind == "string" and not value.choices:
        if value.min_length is not None:
            yield "min-length", "a" * value.min_length
            if value.min_length > 0:
                yield "under-min-length", "a" * (value.min_length - 1)
        if value.max_length is not None:
            yield "max-length", "a" * value.max_length
            yield "over-max-length", "a" * (value.max_length + 1)
            yield "max-length-in-emoji", "\N{GRINNING FACE}" * value.max_length
            yield "over-max-length-in-emoji", "\N{GRINNING FACE}" * (value.max_length + 1)
        if value.pattern is not None:
            yield "pattern-upper", "ABC"
            yield "pattern-trailing-newline", "abc\n"
            yield "pattern-digits", "123"
            yield "pattern-digits-newline", "123\n"
            yield "pattern-arabic-digits", "\u0661\u0662\u0663"
            yield "pattern-hyphens", "a-b-c"
            yield "pattern-double-hyphen", "a--b"
        yield "integer-for-string", 5
        yield "list-for-string", ["a"]
        yield "object-for-string", {"a": 1}
        yield "empty-string", ""
    if kind == "boolean":
        yield "true", True
        yield "false", False
        yield "one", 1
        yield "string-true", "true"
    if kind == "array":
        yield "empty-list", []
        yield "one-item", [DATA_URL if value.items and value.items.is_file else "a"]
        yield "scalar-for-list", "a"
        yield "mixed-items", ["a", 1]
        yield "nested-list", [["a"]]
    yield "null", None


def cases() -> Iterator[Any]:
    for model, base in BASE.items():
        schema = parse_schema(load_schema_document(model))
        yield pytest.param(model, dict(base), [], id=f"{model}:base")
        for name, spec in schema.inputs.items():
            if spec.secret:
                continue
            for label, value in boundary_values(spec):
                yield pytest.param(model, {**base, name: value}, [], id=f"{model}:{name}:{label}")
            if spec.required:
                missing = {k: v for k, v in base.items() if k != name}
                yield pytest.param(model, missing, [], id=f"{model}:{name}:missing")
        yield pytest.param(model, {**base, "not_an_input": 1}, [], id=f"{model}:unknown-name")
    yield pytest.param("all-inputs", {**BASE["all-inputs"]}, ["hf_token"], id="all-inputs:hf_token:via-secretInputs")
    yield pytest.param("all-inputs", {**BASE["all-inputs"], "hf_token": SECRET_VALUE}, [], id="all-inputs:hf_token:plain")
    yield pytest.param("all-inputs", {**BASE["all-inputs"], "hf_token": None}, [], id="all-inputs:hf_token:null")
    yield pytest.param("all-inputs", {**BASE["all-inputs"], "tags": ["x", "y"], "steps": 10000,
                                      "learning_rate": 0, "optimizer": "lion", "batch_size": 16,
                                      "run_name": "a" * 32, "use_lora": False, "seed": -1, "notes": "n"},
                       [], id="all-inputs:everything-at-once")
    yield pytest.param("edge-cases", {"files": [DATA_URL, DATA_URL], "maybe": 0, "ratio": 0.5}, [],
                       id="edge-cases:several-at-once")


def _documented_difference(schema: TrainingSchema, raw: dict[str, Any], secret_names: list[str]) -> str | None:
    """Why the validator departs from Cog on this input, if it deliberately does (docs/validation.md)."""
    for name, value in raw.items():
        spec = schema.inputs.get(name)
        if spec is None:
            return "unknown-name"
        if spec.secret and value is not None:
            return "secret-in-plain-input"
        if value is None and not spec.required:
            return "null-means-absent"
    return None


@pytest.mark.integration
@pytest.mark.parametrize(("model", "raw", "secret_names"), list(cases()))
def test_verdict_agrees_with_cog_server(model: str, raw: dict[str, Any], secret_names: list[str],
                                        cog_servers: Any) -> None:
    schema = parse_schema(load_schema_document(model))
    result = validate_input(schema, raw, secret_names)
    server = cog_servers[model]
    difference = _documented_difference(schema, raw, secret_names)

    if result.ok:
        sent = {**result.input, **{name: SECRET_VALUE for name in secret_names}}
        status, body = server.train(sent)
        assert status == 200, f"validator accepted {raw!r} as {sent!r}, but Cog refused it: {body}"
        # Accepted input may still make train() itself fail (an empty path, say): that is the
        # model's verdict, not an input check.
        assert body["status"] == "succeeded" or body.get("error", "").startswith("Prediction failed: Training failed"), body
        for name, value in raw.items():
            if value is None:
                assert name not in result.input, "an explicit null must be left out of what is sent"
    else:
        status, body = server.train(raw)
        if difference is None:
            assert status == 422, (
                f"validator refused {raw!r} ({[str(p) for p in result.problems]}) but Cog accepted it: {body}"
            )
        elif difference == "unknown-name":
            assert status == 200, "Cog 0.23 silently drops unknown inputs; the validator's error is deliberate"
            assert any("unknown input" in p.message for p in result.problems)
        elif difference == "secret-in-plain-input":
            assert status == 200, "Cog accepts a Secret as a plain string; the validator's error is deliberate"
            assert all(SECRET_VALUE not in str(p) for p in result.problems)

    if difference == "null-means-absent" and result.ok:
        status, _ = server.train(raw)
        assert status == 422, "Cog refuses explicit nulls; the validator's acceptance is deliberate"


@pytest.mark.unit
def test_every_fixture_model_is_covered() -> None:
    assert set(BASE) == set(model_dirs())
