"""The validator's messages, normalization, deliberate differences from Cog, and hostile input."""

from __future__ import annotations

import math
from typing import Any

import pytest

from cogtrain.schema import TrainingSchema
from cogtrain.validation import MAX_DEPTH, show, validate_input

pytestmark = pytest.mark.unit

DATA_URL = "data:text/plain;base64,aGVsbG8="
BASE = {"train_data": DATA_URL, "caption_prefix": "x"}


@pytest.fixture()
def all_inputs(schemas: dict[str, TrainingSchema]) -> TrainingSchema:
    return schemas["all-inputs"]


def problems(schema: TrainingSchema, values: Any, secrets: tuple[str, ...] = ()) -> list[str]:
    return [str(p) for p in validate_input(schema, values, secrets).problems]


def test_valid_input_is_returned_as_sent(all_inputs: TrainingSchema) -> None:
    values = {**BASE, "steps": 10, "tags": ["a"], "optimizer": "sgd"}
    result = validate_input(all_inputs, values)
    assert result.ok
    assert result.input == values
    assert result.warnings == []


def test_issue_example_message(all_inputs: TrainingSchema) -> None:
    assert problems(all_inputs, {**BASE, "steps": 0}) == [
        "input.steps: 0 is less than the minimum of 1 (allowed: 1..10000)"
    ]
    assert problems(all_inputs, {**BASE, "steps": 10001}) == [
        "input.steps: 10001 is greater than the maximum of 10000 (allowed: 1..10000)"
    ]


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"steps": "5"}, 'input.steps: "5" is a string, but this input takes an integer; write 5 without quotes'),
        ({"steps": 2.5}, "input.steps: 2.5 is not a whole number; this takes an integer"),
        ({"steps": True}, "input.steps: true is a boolean, but this input takes an integer"),
        ({"use_lora": "true"}, 'input.use_lora: "true" is a string, but this input takes true or false; write true without quotes'),
        ({"use_lora": 0}, "input.use_lora: 0 is an integer, but this input takes true or false; write false"),
        ({"notes": 5}, 'input.notes: 5 is an integer, but this input takes a string; quote it: "5"'),
        ({"tags": "a"}, 'input.tags: "a" is a string, but this input takes a list of strings; write it as a list: ["a"]'),
        ({"tags": ["a", 1]}, 'input.tags[1]: 1 is an integer, but this input takes a string; quote it: "1"'),
        ({"learning_rate": -0.5}, "input.learning_rate: -0.5 is less than the minimum of 0 (allowed: 0..1)"),
        ({"optimizer": "AdamW"}, 'input.optimizer: "AdamW" is not one of the allowed choices (allowed: "adamw", "sgd", "lion"); did you mean "adamw"? Choices are case-sensitive.'),
        ({"batch_size": 3}, "input.batch_size: 3 is not one of the allowed choices (allowed: 1, 2, 4, 8, 16)"),
        ({"run_name": "a" * 33}, 'input.run_name: "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" is 33 characters long, longer than the maximum of 32 (allowed: 1..32 characters)'),
        ({"run_name": "Run"}, 'input.run_name: "Run" does not match the pattern ^[a-z0-9-]+$ (allowed: strings in which that regular expression finds a match)'),
        ({"seed": None, "caption_prefix": None}, "input.caption_prefix: null is not allowed: this input is required and takes a string"),
    ],
)
def test_messages_name_field_rule_value_and_what_is_allowed(
    all_inputs: TrainingSchema, values: dict[str, Any], expected: str
) -> None:
    assert problems(all_inputs, {**BASE, **values}) == [expected]


def test_every_problem_is_reported_at_once(all_inputs: TrainingSchema) -> None:
    found = problems(all_inputs, {"steps": 0, "optimizer": "x", "use_lora": "no", "stepz": 1})
    fields = [line.split(":", 1)[0] for line in found]
    assert fields == ["input.steps", "input.optimizer", "input.use_lora", "input.stepz",
                      "input.train_data", "input.caption_prefix"]


def test_result_is_empty_when_there_are_problems(all_inputs: TrainingSchema) -> None:
    result = validate_input(all_inputs, {**BASE, "steps": 0})
    assert not result.ok and result.input == {}


def test_integral_float_is_sent_as_integer(all_inputs: TrainingSchema) -> None:
    result = validate_input(all_inputs, {**BASE, "steps": 5.0, "batch_size": 4.0, "learning_rate": 1})
    assert result.ok
    assert result.input["steps"] == 5 and isinstance(result.input["steps"], int)
    assert result.input["batch_size"] == 4 and isinstance(result.input["batch_size"], int)
    assert result.input["learning_rate"] == 1


def test_unknown_name_suggests_the_closest_input(all_inputs: TrainingSchema) -> None:
    [line] = problems(all_inputs, {**BASE, "learningRate": 0.1})
    assert line.startswith('input.learningRate: unknown input (Cog would silently ignore it). Did you mean "learning_rate"?')
    assert "hf_token" not in line, "Secret inputs are not offered for spec.input"
    [line] = problems(all_inputs, {**BASE, "zzzz": 1})
    assert "Did you mean" not in line and "train_data, steps" in line


def test_non_string_key_is_unknown(all_inputs: TrainingSchema) -> None:
    assert problems(all_inputs, {**BASE, 1: "x"})[0].startswith("input.1: unknown input")


@pytest.mark.parametrize("name", ["tags", "seed", "notes", "steps"])
def test_explicit_null_for_input_that_is_not_required_is_left_out(all_inputs: TrainingSchema, name: str) -> None:
    result = validate_input(all_inputs, {**BASE, name: None})
    assert result.ok
    assert name not in result.input


def test_required_input_missing(all_inputs: TrainingSchema) -> None:
    assert problems(all_inputs, {"caption_prefix": "x"}) == [
        "input.train_data: required input is missing; it takes a URI string (an https:// or data: URL, or a path)"
    ]


def test_secret_in_plain_input_is_refused_without_echoing_it(all_inputs: TrainingSchema) -> None:
    secret = "hf_SuperSecretToken123"
    found = problems(all_inputs, {**BASE, "hf_token": secret})
    assert len(found) == 1 and found[0].startswith("input.hf_token: is a Secret input")
    assert "secretInputs" in found[0]
    assert secret not in found[0]


def test_secret_of_the_wrong_type_is_still_not_echoed(all_inputs: TrainingSchema) -> None:
    found = problems(all_inputs, {**BASE, "hf_token": 12345678})
    assert "12345678" not in " ".join(found)


def test_secret_via_secret_inputs(all_inputs: TrainingSchema) -> None:
    result = validate_input(all_inputs, BASE, ["hf_token"])
    assert result.ok
    assert result.secret_names == ["hf_token"]
    assert "hf_token" not in result.input


def test_secret_inputs_naming_a_plain_input(all_inputs: TrainingSchema) -> None:
    assert problems(all_inputs, BASE, ("steps",)) == [
        "secretInputs.steps: is not a Secret input of this model (it takes an integer): give it in "
        "spec.input instead; this model's Secret inputs are: hf_token"
    ]


def test_secret_inputs_naming_an_unknown_input(all_inputs: TrainingSchema, schemas: dict[str, TrainingSchema]) -> None:
    [line] = problems(all_inputs, BASE, ("hf_tokn",))
    assert line.startswith('secretInputs.hf_tokn: unknown input') and 'Did you mean "hf_token"?' in line
    assert problems(schemas["hello-train"], {"param": "x"}, ("token",)) == [
        "secretInputs.token: unknown input: this model has no Secret inputs"
    ]


def test_required_secret_must_come_from_secret_inputs() -> None:
    from cogtrain.schema import parse_schema

    document = {"components": {"schemas": {"TrainingInput": {
        "type": "object", "required": ["token"],
        "properties": {"token": {"type": "string", "format": "password", "writeOnly": True, "x-cog-secret": True}},
    }}}}
    schema = parse_schema(document)
    assert problems(schema, {}) == [
        "secretInputs.token: required Secret input is missing: add it to secretInputs as {token: {name: SECRET, key: KEY}}"
    ]
    assert problems(schema, {}, ("token",)) == []


def test_deprecated_input_warns(schemas: dict[str, TrainingSchema]) -> None:
    result = validate_input(schemas["edge-cases"], {"old": "y"})
    assert result.ok
    assert [str(w) for w in result.warnings] == [
        "input.old: is deprecated by the model and may be ignored or removed in a later version"
    ]
    assert validate_input(schemas["edge-cases"], {}).warnings == []


def test_lengths_count_characters_not_bytes(schemas: dict[str, TrainingSchema]) -> None:
    assert validate_input(schemas["edge-cases"], {"name": "\N{GRINNING FACE}" * 3}).ok
    assert problems(schemas["edge-cases"], {"name": "é" * 4})[0].startswith('input.name: "éééé" is 4 characters long')


def test_pattern_uses_cog_regex_semantics(schemas: dict[str, TrainingSchema]) -> None:
    edge = schemas["edge-cases"]
    assert validate_input(edge, {"code": "123"}).ok
    assert not validate_input(edge, {"code": "123\n"}).ok
    assert not validate_input(edge, {"code": "\u0661\u0662\u0663"}).ok  # \d is ASCII-only


# --- hostile input -------------------------------------------------------------------------


@pytest.mark.parametrize("values", [[1, 2], "text", 5, True])
def test_non_object_input(all_inputs: TrainingSchema, values: Any) -> None:
    found = problems(all_inputs, values)
    assert found[0].startswith("input: expected an object mapping input names to values, got ")


def test_megabyte_string_is_truncated_in_messages(all_inputs: TrainingSchema) -> None:
    huge = "a" * 1_000_000
    [line] = problems(all_inputs, {**BASE, "run_name": huge})
    assert len(line) < 300
    assert "(1000000 characters)" in line
    assert validate_input(all_inputs, {**BASE, "notes": huge}).ok, "no maxLength: Cog takes it too"


def test_deeply_nested_value(all_inputs: TrainingSchema) -> None:
    nested: Any = "x"
    for _ in range(100_000):
        nested = [nested]
    [line] = problems(all_inputs, {**BASE, "tags": nested})
    assert line.startswith("input.tags[0]: a list of 1 item is a list, but this input takes a string")
    [line] = problems(all_inputs, {**BASE, "notes": nested})
    assert line.startswith("input.notes: a list of 1 item is a list")


def test_deeply_nested_value_for_an_untyped_input() -> None:
    from cogtrain.schema import parse_schema

    schema = parse_schema({"components": {"schemas": {"TrainingInput": {"properties": {"blob": {}}}}}})
    nested: Any = 1
    for _ in range(MAX_DEPTH + 5):
        nested = {"a": nested}
    assert problems(schema, {"blob": nested}) == [f"input.blob: the value is nested more than {MAX_DEPTH} levels deep"]
    assert validate_input(schema, {"blob": {"a": [1, {"b": None}]}}).ok


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_numbers(all_inputs: TrainingSchema, value: float) -> None:
    [line] = problems(all_inputs, {**BASE, "learning_rate": value})
    assert "is not a finite number" in line
    [line] = problems(all_inputs, {**BASE, "steps": value})
    assert "is not a finite number" in line


def test_huge_integers(all_inputs: TrainingSchema) -> None:
    assert validate_input(all_inputs, {**BASE, "seed": 10**30}).ok, "Cog accepts it too"
    [line] = problems(all_inputs, {**BASE, "steps": 10**5000})
    assert line.startswith("input.steps: an integer of about 5001 digits is greater than the maximum of 10000")
    [line] = problems(all_inputs, {**BASE, "learning_rate": -(10**5000)})
    assert "less than the minimum" in line


def test_show_is_safe_for_any_value() -> None:
    assert show(None) == "null"
    assert show(True) == "true"
    assert show("a\x00b\u2028") == '"a\\x00b\\u2028"'
    assert show({"a": 1}) == "an object with 1 key"
    assert show(b"\xff") == "a bytes"
    assert show(10**10000).startswith("an integer of about")


def test_pattern_this_engine_cannot_read_is_left_to_the_model_server() -> None:
    from cogtrain.schema import parse_schema

    schema = parse_schema({"components": {"schemas": {"TrainingInput": {"properties": {
        "word": {"type": "string", "pattern": "^\\p{L}+$"}}}}}})
    result = validate_input(schema, {"word": "héllo"})
    assert result.ok
    assert [str(w) for w in result.warnings] == [
        "input.word: the model's pattern ^\\p{L}+$ cannot be checked here; "
        "the model server will check it when the training starts"
    ]
