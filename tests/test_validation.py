"""The validator's messages, normalization, deliberate differences from Cog, and hostile input."""

from __future__ import annotations

import json
import math
import tracemalloc
from collections.abc import Callable
from typing import Any

import pytest

from cogtrain.schema import TrainingSchema, compile_pattern, parse_schema
from cogtrain.validation import (
    ENV_STRING_BYTES,
    INPUTS_TOTAL_BYTES,
    MAX_DEPTH,
    MAX_PROBLEMS,
    MESSAGE_BYTES,
    PATTERN_WORK,
    Omitted,
    Problem,
    ValidationResult,
    show,
    summarize,
    validate_input,
)
from support.complexity import growth
from support.paths import DRIVER_MODELS, schema_file

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
        "input.train_data: required input is missing; it takes a URI string (an https:// or data: URL, s3://BUCKET/KEY, pvc://CLAIM/PATH, or a path)"
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
    assert validate_input(all_inputs, {**BASE, "notes": huge[:100_000]}).ok, "no maxLength: Cog takes it too"


def test_deeply_nested_value(all_inputs: TrainingSchema) -> None:
    nested: Any = "x"
    for _ in range(100_000):
        nested = [nested]
    [line] = problems(all_inputs, {**BASE, "tags": nested})
    assert line.startswith("input.tags[0]: a list of 1 item is a list, but this input takes a string")
    [line] = problems(all_inputs, {**BASE, "notes": nested})
    assert line.startswith("input.notes: a list of 1 item is a list")


def test_deeply_nested_value_for_an_untyped_input() -> None:
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


@pytest.mark.parametrize("pattern", ["^(?<=a)b", "^(.)\\1$", "^x\\b"])
def test_pattern_this_engine_cannot_read_is_left_to_the_model_server(pattern: str) -> None:
    """Lookaround and backreferences (RE2 has none), a Unicode word boundary (RE2's is ASCII)."""
    schema = parse_schema({"components": {"schemas": {"TrainingInput": {"properties": {
        "word": {"type": "string", "pattern": pattern}}}}}})
    result = validate_input(schema, {"word": "héllo"})
    assert result.ok
    assert [str(w) for w in result.warnings] == [
        f"input.word: the model's pattern {pattern} cannot be checked here; "
        "the model server will check it when the training starts"
    ]


def test_unicode_property_pattern_is_checked() -> None:
    """Python's engine could not read \\p{L}; RE2 reads it as Cog does (a Unicode letter)."""
    schema = parse_schema({"components": {"schemas": {"TrainingInput": {"properties": {
        "word": {"type": "string", "pattern": "^\\p{L}+$"}}}}}})
    assert validate_input(schema, {"word": "héllo"}).ok
    assert problems(schema, {"word": "p{L}"})[0].startswith('input.word: "p{L}" does not match the pattern')


# --- list[Secret] ----------------------------------------------------------------------------


def test_list_of_secrets_is_refused_in_spec_input(schemas: dict[str, TrainingSchema]) -> None:
    found = problems(schemas["secret-list"], {"tokens": ["tok-AAA", "tok-BBB"]})
    assert found == [
        "input.tokens: is a Secret input: its value must not be written in spec.input; reference a Kubernetes "
        "Secret instead (secretInputs: {tokens: {name: SECRET, key: KEY}}, the key holding a JSON array of strings)"
    ]


def test_list_of_secrets_via_secret_inputs(schemas: dict[str, TrainingSchema]) -> None:
    result = validate_input(schemas["secret-list"], {"steps": 2}, ["tokens", "spare_tokens"])
    assert result.ok
    assert result.input == {"steps": 2}
    assert result.secret_names == result.secret_list_names == ["tokens", "spare_tokens"]
    assert validate_input(schemas["all-inputs"], BASE, ["hf_token"]).secret_list_names == []


def test_required_list_of_secrets_is_missing(schemas: dict[str, TrainingSchema]) -> None:
    assert problems(schemas["secret-list"], {}) == [
        "secretInputs.tokens: required Secret input is missing: add it to secretInputs as "
        "{tokens: {name: SECRET, key: KEY}}, the key holding a JSON array of strings"
    ]


# --- limits: bounded time, memory and messages -----------------------------------------------


def _schema(properties: dict[str, Any]) -> TrainingSchema:
    return parse_schema({"components": {"schemas": {"TrainingInput": {"type": "object", "properties": properties}}}})


def _traced(work: Callable[[], Any]) -> tuple[Any, int]:
    """The result and peak traced bytes of `work()`."""
    tracemalloc.start()
    try:
        return work(), tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("length", [25, 100_000])
def test_catastrophic_pattern_finishes_in_milliseconds(length: int) -> None:
    """^(a+)+$ against "aaaa…!" takes a backtracking engine 2**length steps; RE2 is linear."""
    schema = _schema({"name": {"type": "string", "pattern": "^(a+)+$"}})
    found = problems(schema, {"name": "a" * length + "!"})
    assert len(found) == 1 and "does not match the pattern ^(a+)+$" in found[0]
    assert validate_input(schema, {"name": "a" * length}).ok
    plain = _schema({"name": {"type": "string", "pattern": "^a+$"}})
    ratio = growth(lambda: problems(plain, {"name": "a" * length + "!"}),
                   lambda: problems(schema, {"name": "a" * length + "!"}))
    assert ratio < 20, f"took {ratio:.0f} times as long as ^a+$ on the same text"


def test_pattern_work_is_bounded() -> None:
    """RE2 is linear, but in program size times text: a big program on long texts is left to the server."""
    schema = _schema({"names": {"type": "array", "items": {"type": "string", "pattern": "a.{900}b.{900}c"}}})
    assert compile_pattern("a.{900}b.{900}c").programsize * 10_000 * 2 < PATTERN_WORK < (
        compile_pattern("a.{900}b.{900}c").programsize * 10_000 * 3)
    result = validate_input(schema, {"names": ["ab" * 5_000] * 5})
    ratio = growth(lambda: validate_input(schema, {"names": ["ab" * 5_000] * 5}),
                   lambda: validate_input(schema, {"names": ["ab" * 5_000] * 50}))
    assert ratio < 5, f"ten times the values took {ratio:.0f} times as long: the work past the bound was done"
    assert [p.field for p in result.problems] == ["input.names[0]", "input.names[1]"]  # checked: no match
    assert [str(w) for w in result.warnings] == [
        f"input.names[{index}]: the model's pattern a.{{900}}b.{{900}}c was not checked here for this value (it would "
        "take too long); the model server will check it when the training starts" for index in (2, 3, 4)]
    short = validate_input(schema, {"names": ["a" + "x" * 900 + "b" + "y" * 900 + "c", "abc"]})
    assert short.warnings == []
    assert [str(p) for p in short.problems] == [
        'input.names[1]: "abc" does not match the pattern a.{900}b.{900}c (allowed: strings in which that regular '
        "expression finds a match)"]


def test_many_unknown_inputs_against_a_big_schema_stay_small() -> None:
    """The report that made an 84 MB message: a 23 kB spec.input of unknown names, an 81 kB schema."""
    schema = _schema({f"model_input_{i:05d}_{'x' * 36}": {"type": "string"} for i in range(1500)})
    values = {f"unknown_{i:05d}_zz": 1 for i in range(1000)}

    def judge() -> tuple[ValidationResult, str]:
        result = validate_input(schema, values)
        return result, "; ".join(map(str, result.problems))

    (result, joined), peak = _traced(judge)
    assert len(joined.encode()) < 32768, "what callers join today fits a condition's message"
    assert joined.count("This model's inputs are") == 1
    assert result.problem_count == 1000 and len(result.problems) == MAX_PROBLEMS + 1
    assert result.problems[-1] == Omitted("input", "980 more problems not listed (only the first 20 are)", 980)
    summary = result.summary()
    assert len(summary.encode()) <= MESSAGE_BYTES and summary.endswith("980 more problems not listed (only the first 20 are)")
    assert peak < 4_000_000
    few = {f"unknown_{i:05d}_zz": 1 for i in range(100)}
    ratio = growth(lambda: validate_input(schema, few), judge)
    assert ratio < 35, f"ten times the unknown inputs took {ratio:.0f} times as long (linear: 10, quadratic: 100)"


def test_a_huge_list_of_wrong_items_is_counted_not_listed(all_inputs: TrainingSchema) -> None:
    count = 100_000
    values = {**BASE, "tags": [1] * count}
    result, peak = _traced(lambda: validate_input(all_inputs, values))
    assert len(result.problems) == MAX_PROBLEMS + 1
    assert str(result.problems[0]) == 'input.tags[0]: 1 is an integer, but this input takes a string; quote it: "1"'
    assert isinstance(result.problems[-1], Omitted) and result.problem_count == count
    assert peak < 4_000_000
    tenth = {**BASE, "tags": [1] * (count // 10)}
    ratio = growth(lambda: validate_input(all_inputs, tenth), lambda: validate_input(all_inputs, values))
    assert ratio < 35, f"ten times the items took {ratio:.0f} times as long (linear: 10, quadratic: 100)"


def test_huge_enum_is_checked_in_linear_time_and_listed_briefly() -> None:
    choices = [f"choice-{i}" for i in range(20_000)]
    schema = _schema({"tags": {"type": "array", "items": {"type": "string", "enum": choices}}})
    values = {"tags": choices[::10] + ["nope"] * 3}
    found = problems(schema, values)
    tenth = _schema({"tags": {"type": "array", "items": {"type": "string", "enum": choices[:2_000]}}})
    ratio = growth(lambda: problems(tenth, {"tags": choices[:2_000:10] + ["nope"] * 3}), lambda: problems(schema, values))
    assert ratio < 35, f"ten times the choices and values took {ratio:.0f} times as long (linear: 10, quadratic: 100)"
    assert len(found) == 3
    assert found[0].startswith('input.tags[2000]: "nope" is not one of the allowed choices (allowed: "choice-0", ')
    assert found[0].endswith(', "choice-19", … and 19980 more)') and len(found[0]) < 1000


def test_choices_compare_as_json(all_inputs: TrainingSchema) -> None:
    schema = _schema({"mixed": {"enum": [1, "1", True, None, [1, 2], {"a": 1}]}})
    for value in (1, 1.0, "1", True, [1, 2], {"a": 1}):
        assert validate_input(schema, {"mixed": value}).ok, value
    for value in (2, "2", False, 0, [2, 1], {"a": 2}):
        assert not validate_input(schema, {"mixed": value}).ok, value


def test_long_names_and_patterns_are_shortened_in_messages() -> None:
    pattern = "^(" + "|".join(f"w{i}" for i in range(2000)) + ")$"
    schema = _schema({"word": {"type": "string", "pattern": pattern}})
    found = problems(schema, {"word": "nope", "n" * 1_000_000: 1})
    assert len(found) == 2 and all(len(line) < 1500 for line in found)
    assert found[0].startswith(f"input.word: \"nope\" does not match the pattern {pattern[:120]}… ({len(pattern)} characters)")
    assert found[1].startswith(f"input.{'n' * 64}…: unknown input")


def test_warnings_are_bounded_too() -> None:
    schema = _schema({f"old_{i}": {"type": "integer", "deprecated": True} for i in range(100)})
    result = validate_input(schema, {f"old_{i}": 1 for i in range(100)})
    assert result.ok and len(result.warnings) == MAX_PROBLEMS + 1
    assert str(result.warnings[-1]) == "input: 80 more warnings not listed (only the first 20 are)"


@pytest.mark.parametrize("limit", [64, 100, 1000, 8192])
def test_summary_fits_its_limit_and_counts_what_it_leaves_out(limit: int) -> None:
    listed = [Problem(f"input.f{i}", "é" * (i * 37 % 300)) for i in range(50)]
    text = summarize([*listed, Omitted("input", "1000 more problems not listed", 1000)], limit)
    assert len(text.encode()) <= limit
    shown = text.count("input.f")
    assert text.endswith(f"; and {50 - shown + 1000} more problems not shown")
    assert summarize(listed[:2]) == "; ".join(map(str, listed[:2]))


def test_input_too_large_for_one_environment_variable(all_inputs: TrainingSchema) -> None:
    """Linux's MAX_ARG_STRLEN: one "NAME=value" string of at most 131072 bytes with its NUL."""
    fits = "n" * (ENV_STRING_BYTES - len('COGTRAIN_INPUT_notes=""') - 1)
    assert validate_input(all_inputs, {**BASE, "notes": fits}).ok
    [line] = problems(all_inputs, {**BASE, "notes": fits + "n"})
    assert line == (
        "input.notes: is 131073 bytes as the training Pod passes it (the environment variable COGTRAIN_INPUT_notes "
        "with its JSON value), more than the 131072 bytes one environment variable can hold; pass large data as a "
        "file instead: a URL (https://...) in an input that takes a file"
    )
    [line] = problems(all_inputs, {**BASE, "notes": "é" * 70_000})  # bytes, not characters
    assert line.startswith("input.notes: is 140024 bytes")


def test_inputs_too_large_together() -> None:
    schema = _schema({f"s{i}": {"type": "string"} for i in range(10)})
    assert problems(schema, {f"s{i}": "v" * 110_000 for i in range(10)}) == [
        "input: the inputs are 1100210 bytes together as the training Pod passes them (one environment variable "
        f"each), more than the {INPUTS_TOTAL_BYTES} bytes allowed for all of them; pass large data as a file "
        "instead: a URL (https://...) in an input that takes a file"
    ]


def test_numbers_beyond_what_cog_reads_are_refused(all_inputs: TrainingSchema) -> None:
    """Cog parses JSON numbers as 64-bit floats: 10**309 is 'number out of range' (tests/test_cog_agreement.py)."""
    assert validate_input(all_inputs, {**BASE, "seed": 10**308}).ok
    for value in (10**309, -(10**309), 10**100_000):
        [line] = problems(all_inputs, {**BASE, "seed": value})
        assert line.startswith("input.seed: an integer of about ") and line.endswith(
            "is too large: Cog reads numbers as 64-bit floating point, which ends at about 1.8e308")
    ratio = growth(lambda: problems(all_inputs, {**BASE, "seed": 10**10_000}),
                   lambda: problems(all_inputs, {**BASE, "seed": 10**100_000}))
    assert ratio < 35, f"ten times the digits took {ratio:.0f} times as long (linear: 10; writing them out: 100)"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"a": [10**400]}, "input.blob: a number in the value (an integer of about 401 digits) is too large"),
        ({"a": math.nan}, "input.blob: the value holds NaN, which JSON cannot express"),
        ({"a": "x\ud800"}, "input.blob: a text in the value contains an unpaired surrogate"),
        ({1: "x"}, "input.blob: the value has a key that is an integer; JSON object keys are strings"),
        ({"a": b"x"}, "input.blob: the value holds a bytes, which is not JSON"),
    ],
)
def test_untyped_values_must_be_json_cog_can_read(value: Any, message: str) -> None:
    [line] = problems(_schema({"blob": {}}), {"blob": value})
    assert line.startswith(message)


def test_unpaired_surrogate_is_refused(all_inputs: TrainingSchema) -> None:
    """JSON parsers (Cog's, and the Job's UTF-8 encoding) refuse a lone surrogate."""
    for name in ("notes", "run_name"):
        [line] = problems(all_inputs, {**BASE, name: "a\ud800b"})
        assert line == f"input.{name}: the text contains an unpaired surrogate (\\ud800-\\udfff), which is not valid Unicode text"


def test_input_name_that_is_a_huge_integer(all_inputs: TrainingSchema) -> None:
    [line] = problems(all_inputs, {**BASE, 10**5000: 1})
    assert line.startswith("input.an integer of about 5001 digits: unknown input")


def _reads_files() -> TrainingSchema:
    return parse_schema(json.loads(schema_file(DRIVER_MODELS / "reads-files").read_text()))


@pytest.mark.parametrize(("values", "storage"), [
    ({"data": "s3://trainings/runs/ml/a/in.csv"}, ["data"]),
    ({"data": "pvc://datasets/images/2024/part-1.tar"}, ["data"]),
    ({"data": "https://example.com/d.csv", "extra": ["pvc://datasets/x.bin", "https://example.com/y"]}, ["extra"]),
    ({"data": "https://example.com/d.csv", "extra": []}, []),
    # a string input keeps any text: nothing is read for it
    ({"data": "https://example.com/d.csv", "note": "s3://not a/file//../x"}, []),
])
def test_file_inputs_may_name_files_in_cluster_storage(values: dict[str, Any], storage: list[str]) -> None:
    result = validate_input(_reads_files(), values)
    assert result.ok, result.problems
    assert result.input == values, "the references go to the driver as written"
    assert result.storage_input_names == storage


@pytest.mark.parametrize(("value", "message"), [
    ("s3://trainings", "names no object: it has no object key; write s3://BUCKET/KEY"),
    ("s3://trainings/", "names no object: it has no object key; write s3://BUCKET/KEY"),
    ("s3://Trainings/k", "names no valid bucket"),
    ("s3:///k", "names no valid bucket"),
    ("s3://trainings/runs/", "ends with /: it names a folder; name one file (s3://BUCKET/KEY)"),
    ("s3://trainings/runs/../other-ns/secret.csv", "has a . or .. segment in its object key"),
    ("s3://trainings/" + "k" * 1025, "has an object key longer than 1024 bytes"),
    ("pvc://datasets", "names no file: it has no path in the claim; write pvc://CLAIM/PATH"),
    ("pvc://datasets/", "names no file: it has no path in the claim; write pvc://CLAIM/PATH"),
    ("pvc://datasets/../../etc/passwd", "has a . or .. segment in its path in the claim"),
    ("pvc://datasets/a/./b", "has a . or .. segment in its path in the claim"),
    ("pvc://datasets//etc/passwd", "has an empty segment (//) in its path in the claim"),
    ("pvc://Data_Sets/x", "names no valid claim (a PersistentVolumeClaim name"),
    ("pvc://-datasets/x", "names no valid claim"),
    ("pvc://" + "a" * 254 + "/x", "names no valid claim"),
    ("pvc://datasets/a\nb", "contains a control character"),
])
def test_malformed_storage_references_are_refused_naming_the_field(value: str, message: str) -> None:
    for values, where in (({"data": value}, "input.data"),
                          ({"data": "https://example.com/d", "extra": ["pvc://datasets/ok", value]}, "input.extra[1]")):
        result = validate_input(_reads_files(), values)
        assert [p.field for p in result.problems] == [where]
        assert message in result.problems[0].message, result.problems[0].message
        assert result.storage_input_names == []
