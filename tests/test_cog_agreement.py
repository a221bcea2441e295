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
from cogtrain.validation import ValidationResult, validate_input
from support.paths import load_schema_document, model_dirs

DATA_URL = "data:text/plain;base64,aGVsbG8="
SECRET_VALUE = "s3cr3t-value"
# Every whitespace character a regex engine might mean by \s (Cog 0.23 means only some).
SPACES = [chr(c) for c in [*range(0x09, 0x0E), 0x1C, 0x1F, 0x20, 0x85, 0xA0, 0x1680, 0x2000, 0x2003, 0x200A,
                           0x2028, 0x2029, 0x202F, 0x205F, 0x3000, 0xFEFF]]

# A valid input for every model: the required inputs, nothing else.
BASE: dict[str, dict[str, Any]] = {
    "all-inputs": {"train_data": DATA_URL, "caption_prefix": "a photo of"},
    "hello-train": {"param": "train"},
    "training-output": {"train_data": DATA_URL},
    "edge-cases": {},
    "secret-list": {},
    "patterns": {},
}
# The required Secret inputs of a model, given through secretInputs in every case.
BASE_SECRETS: dict[str, list[str]] = {"secret-list": ["tokens"]}


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
        secrets = BASE_SECRETS.get(model, [])
        yield pytest.param(model, dict(base), secrets, id=f"{model}:base")
        for name, spec in schema.inputs.items():
            if spec.secret:
                continue
            for label, value in boundary_values(spec):
                yield pytest.param(model, {**base, name: value}, secrets, id=f"{model}:{name}:{label}")
            if spec.required:
                missing = {k: v for k, v in base.items() if k != name}
                yield pytest.param(model, missing, secrets, id=f"{model}:{name}:missing")
        yield pytest.param(model, {**base, "not_an_input": 1}, secrets, id=f"{model}:unknown-name")
    yield pytest.param("all-inputs", {**BASE["all-inputs"]}, ["hf_token"], id="all-inputs:hf_token:via-secretInputs")
    yield pytest.param("all-inputs", {**BASE["all-inputs"], "hf_token": SECRET_VALUE}, [], id="all-inputs:hf_token:plain")
    yield pytest.param("all-inputs", {**BASE["all-inputs"], "hf_token": None}, [], id="all-inputs:hf_token:null")
    yield pytest.param("all-inputs", {**BASE["all-inputs"], "tags": ["x", "y"], "steps": 10000,
                                      "learning_rate": 0, "optimizer": "lion", "batch_size": 16,
                                      "run_name": "a" * 32, "use_lora": False, "seed": -1, "notes": "n"},
                       [], id="all-inputs:everything-at-once")
    yield pytest.param("edge-cases", {"files": [DATA_URL, DATA_URL], "maybe": 0, "ratio": 0.5}, [],
                       id="edge-cases:several-at-once")
    # Numbers: Cog reads JSON numbers as 64-bit floats and refuses (400) what does not fit one.
    yield pytest.param("all-inputs", {**BASE["all-inputs"], "seed": 10**308}, [], id="all-inputs:seed:largest-double")
    yield pytest.param("all-inputs", {**BASE["all-inputs"], "seed": 10**309}, [], id="all-inputs:seed:beyond-double")
    yield pytest.param("all-inputs", {**BASE["all-inputs"], "notes": "a\ud800b"}, [], id="all-inputs:notes:surrogate")
    yield pytest.param("all-inputs", {**BASE["all-inputs"], "notes": "n" * 140_000}, [],
                       id="all-inputs:notes:too-large-for-the-pod")
    # list[Secret]: secret, given through secretInputs (a JSON array of strings in the Secret).
    yield pytest.param("secret-list", {}, [], id="secret-list:tokens:missing")
    yield pytest.param("secret-list", {}, ["tokens", "spare_tokens"], id="secret-list:both-via-secretInputs")
    yield pytest.param("secret-list", {"tokens": [SECRET_VALUE]}, [], id="secret-list:tokens:plain")
    yield pytest.param("secret-list", {"spare_tokens": None}, ["tokens"], id="secret-list:spare_tokens:null")
    # Patterns: what each construct means to Cog's server, and what is left to it.
    for index, char in enumerate(SPACES):
        yield pytest.param("patterns", {"space": char}, [], id=f"patterns:space:{index}-U+{ord(char):04X}")
        yield pytest.param("patterns", {"not_space": char}, [], id=f"patterns:not_space:{index}-U+{ord(char):04X}")
    for label, values in {
        "code_point": ["A", "a", "u0041"],
        "lines": ["abc\nABC", "ABC\nabc", "ABC\nDEF", "abc\n"],
        "nested": ["a" * 30 + "!", "a" * 1000, "a" * 100_000 + "!"],
        "word_end": ["xé", "x-", "xa", "x"],
        "after_a": ["ab", "cb"],
        "twice": ["aa", "ab"],
    }.items():
        for index, value in enumerate(values):
            yield pytest.param("patterns", {label: value}, [], id=f"patterns:{label}:{index}")


def _documented_difference(schema: TrainingSchema, raw: dict[str, Any], result: ValidationResult) -> str | None:
    """Why the validator departs from Cog on this input, if it deliberately does (docs/validation.md)."""
    for name, value in raw.items():
        spec = schema.inputs.get(name)
        if spec is None:
            return "unknown-name"
        if spec.secret and value is not None:
            return "secret-in-plain-input"
        if value is None and not spec.required:
            return "null-means-absent"
    if any("environment variable" in p.message for p in result.problems):
        return "too-large-for-the-pod"
    if any("cannot be checked here" in w.message for w in result.warnings):
        return "pattern-left-to-server"
    return None


def _secret_values(schema: TrainingSchema, secret_names: list[str]) -> dict[str, Any]:
    """What the driver sends for the Secret inputs: a list of strings for a list[Secret]."""
    return {name: [SECRET_VALUE, SECRET_VALUE] if schema.inputs[name].secret_list else SECRET_VALUE
            for name in secret_names}


def _refused(status: int, body: Any) -> bool:
    """Cog refuses an input with 422, or with 400 when its JSON parser cannot read it at all."""
    return status == 422 or (status == 400 and "Failed to parse the request body as JSON" in str(body))


@pytest.mark.integration
@pytest.mark.parametrize(("model", "raw", "secret_names"), list(cases()))
def test_verdict_agrees_with_cog_server(model: str, raw: dict[str, Any], secret_names: list[str],
                                        cog_servers: Any) -> None:
    schema = parse_schema(load_schema_document(model))
    result = validate_input(schema, raw, secret_names)
    server = cog_servers[model]
    difference = _documented_difference(schema, raw, result)
    secrets = _secret_values(schema, secret_names)

    if result.ok and difference == "pattern-left-to-server":
        status, body = server.train({**result.input, **secrets})
        assert status == 200 or _refused(status, body), body  # Cog decides; the validator only warned
    elif result.ok:
        sent = {**result.input, **secrets}
        status, body = server.train(sent)
        assert status == 200, f"validator accepted {raw!r} as {sent!r}, but Cog refused it: {body}"
        # Accepted input may still make train() itself fail (an empty path, say): that is the
        # model's verdict, not an input check.
        assert body["status"] == "succeeded" or body.get("error", "").startswith("Prediction failed: Training failed"), body
        for name, value in raw.items():
            if value is None:
                assert name not in result.input, "an explicit null must be left out of what is sent"
    else:
        status, body = server.train({**raw, **secrets})
        if difference is None:
            assert _refused(status, body), (
                f"validator refused {raw!r} ({[str(p) for p in result.problems]}) but Cog accepted it: {body}"
            )
        elif difference == "unknown-name":
            assert status == 200, "Cog 0.23 silently drops unknown inputs; the validator's error is deliberate"
            assert any("unknown input" in p.message for p in result.problems)
        elif difference == "secret-in-plain-input":
            assert status == 200, "Cog accepts a Secret as a plain string; the validator's error is deliberate"
            assert all(SECRET_VALUE not in str(p) for p in result.problems)
        elif difference == "too-large-for-the-pod":
            assert status == 200, "Cog takes it over HTTP; the training Pod could not be started with it"

    if difference == "null-means-absent" and result.ok:
        status, _ = server.train({**raw, **secrets})
        assert status == 422, "Cog refuses explicit nulls; the validator's acceptance is deliberate"


@pytest.mark.unit
def test_every_fixture_model_is_covered() -> None:
    assert set(BASE) == set(model_dirs())
