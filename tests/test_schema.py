"""Parsing Cog OpenAPI documents into typed input descriptions."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from cogtrain.schema import (
    SchemaError,
    SchemaErrorKind,
    TrainingSchema,
    compile_pattern,
    parse_schema,
    parse_schema_text,
    python_pattern,
)
from support.paths import load_schema_document

pytestmark = pytest.mark.unit


def test_all_inputs_fixture(schemas: dict[str, TrainingSchema]) -> None:
    schema = schemas["all-inputs"]
    assert schema.input_component == "TrainingInput"
    assert list(schema.inputs) == [
        "train_data", "steps", "learning_rate", "optimizer", "batch_size", "run_name",
        "use_lora", "tags", "hf_token", "caption_prefix", "seed", "notes",
    ]
    i = schema.inputs
    assert i["train_data"].required and i["train_data"].value.is_file
    assert i["train_data"].value.type_name() == "uri"
    assert i["train_data"].description == "Archive of training examples"
    steps = i["steps"]
    assert (steps.value.type, steps.value.minimum, steps.value.maximum) == ("integer", 1, 10000)
    assert steps.has_default and steps.default == 100 and not steps.required and steps.order == 1
    assert i["learning_rate"].value.type == "number"
    assert i["optimizer"].value.choices == ("adamw", "sgd", "lion")
    assert i["optimizer"].value.type == "string" and i["optimizer"].default == "adamw"
    assert i["optimizer"].description == "Optimizer", "the field's own description wins over the enum's"
    assert i["batch_size"].value.choices == (1, 2, 4, 8, 16) and i["batch_size"].value.type == "integer"
    run_name = i["run_name"].value
    assert (run_name.min_length, run_name.max_length, run_name.pattern) == (1, 32, "^[a-z0-9-]+$")
    assert i["use_lora"].value.type == "boolean"
    tags = i["tags"]
    assert tags.nullable and tags.value.type_name() == "list[string]" and not tags.required
    hf = i["hf_token"]
    assert hf.secret and hf.nullable and not hf.required
    assert schema.secret_names == ["hf_token"]
    caption = i["caption_prefix"]
    assert caption.required and not caption.has_default, "default=None on a non-Optional is required"
    assert i["seed"].default == 42 and i["notes"].default == ""
    assert schema.output == {"format": "uri", "title": "Output", "type": "string"}


def test_training_output_object(schemas: dict[str, TrainingSchema]) -> None:
    output = schemas["training-output"].output
    assert output is not None
    assert output["type"] == "object"
    assert output["properties"]["weights"]["format"] == "uri"


def test_inputs_follow_x_order_not_document_order() -> None:
    document = load_schema_document("all-inputs")
    props = document["components"]["schemas"]["TrainingInput"]["properties"]
    document["components"]["schemas"]["TrainingInput"]["properties"] = dict(reversed(list(props.items())))
    assert list(parse_schema(document).inputs)[:3] == ["train_data", "steps", "learning_rate"]


def test_deprecated_flag(schemas: dict[str, TrainingSchema]) -> None:
    assert schemas["edge-cases"].inputs["old"].deprecated
    assert not schemas["edge-cases"].inputs["name"].deprecated


def test_older_images_input_output_fallback() -> None:
    document = load_schema_document("training-output")
    components = document["components"]["schemas"]
    components["Input"] = components.pop("TrainingInput")
    components["Output"] = components.pop("TrainingOutput")
    document["paths"] = {"/trainings": {}}
    schema = parse_schema(document)
    assert schema.input_component == "Input"
    assert list(schema.inputs) == ["train_data", "learning_rate", "seed"]
    assert schema.output is not None and schema.output["type"] == "object"


def test_predict_only_schema_has_no_training_interface() -> None:
    document = load_schema_document("hello-train")
    components = document["components"]["schemas"]
    components["Input"] = components.pop("TrainingInput")
    document["paths"] = {"/predictions": {}, "/health-check": {}}
    with pytest.raises(SchemaError) as caught:
        parse_schema(document)
    assert caught.value.kind is SchemaErrorKind.NO_TRAINING
    assert "this model's cog.yaml has no `train:`" in str(caught.value)


def test_newer_schema_shapes() -> None:
    """anyOf-null (pydantic 2), type lists (OpenAPI 3.1), direct $ref enums, numeric exclusive bounds."""
    document = {"components": {"schemas": {
        "Color": {"enum": ["red", "blue"], "type": "string"},
        "TrainingInput": {"type": "object", "properties": {
            "a": {"anyOf": [{"type": "integer", "minimum": 1}, {"type": "null"}]},
            "b": {"type": ["string", "null"], "maxLength": 2},
            "c": {"$ref": "#/components/schemas/Color"},
            "d": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
            "e": {"type": "array", "items": {"$ref": "#/components/schemas/Color"}},
            "f": {"enum": [1, 2.5]},
        }},
    }}}
    schema = parse_schema(document)
    a, b, c, d, e, f = (schema.inputs[n] for n in "abcdef")
    assert a.nullable and a.value.type == "integer" and a.value.minimum == 1
    assert b.nullable and b.value.type == "string" and b.value.max_length == 2
    assert c.value.choices == ("red", "blue")
    assert d.value.exclusive_minimum and d.value.exclusive_maximum and d.value.minimum == 0
    assert e.value.items is not None and e.value.items.choices == ("red", "blue")
    assert f.value.type == "number"


def _broken(mutate: Any) -> dict[str, Any]:
    document = copy.deepcopy(load_schema_document("all-inputs"))
    mutate(document)
    return document


def _props(document: dict[str, Any]) -> dict[str, Any]:
    return document["components"]["schemas"]["TrainingInput"]["properties"]


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ([], "schema: the document must be a JSON object"),
        ({"components": []}, "schema: components must be an object"),
        ({"components": {"schemas": 5}}, "schema: components.schemas must be an object"),
        ({"components": {"schemas": {}}}, "this model's cog.yaml has no `train:`"),
        ({"components": {"schemas": {"TrainingInput": []}}}, "schema: components.schemas.TrainingInput must be an object"),
        ({"components": {"schemas": {"TrainingInput": {"properties": []}}}},
         "schema: components.schemas.TrainingInput.properties must be an object"),
        ({"components": {"schemas": {"TrainingInput": {"properties": {}, "required": "x"}}}},
         "schema: components.schemas.TrainingInput.required must be a list of input names"),
        (_broken(lambda d: _props(d)["steps"].update(minimum="one")),
         "schema: components.schemas.TrainingInput.properties.steps.minimum must be a number, got 'one'"),
        (_broken(lambda d: _props(d)["steps"].update(type="int")),
         "schema: components.schemas.TrainingInput.properties.steps.type is 'int', not a JSON type"),
        (_broken(lambda d: _props(d)["run_name"].update(maxLength=-1)),
         "schema: components.schemas.TrainingInput.properties.run_name.maxLength must be a non-negative integer, got -1"),
        (_broken(lambda d: d["components"]["schemas"].pop("optimizer")),
         "schema: components.schemas.TrainingInput.properties.optimizer.allOf[0].$ref points at "
         "#/components/schemas/optimizer, which the document does not define"),
        (_broken(lambda d: _props(d)["optimizer"].update(allOf=[{"$ref": "http://evil/x"}])),
         "must point into #/components/schemas/"),
        (_broken(lambda d: d["components"]["schemas"]["optimizer"].update(enum=[])),
         "optimizer.enum must be a non-empty list"),
        (_broken(lambda d: _props(d)["steps"].update({"x-order": "first"})),
         "steps.x-order must be an integer"),
        ({"components": {"schemas": {"TrainingInput": {"$ref": "#/components/schemas/TrainingInput"}}}},
         "is a circular reference"),
    ],
)
def test_broken_documents_are_clear_errors(document: Any, message: str) -> None:
    with pytest.raises(SchemaError) as caught:
        parse_schema(document)
    assert message in str(caught.value)


@pytest.mark.parametrize("text", ["", "{", "not json", b"\xff\xfe", "[" * 100_000 + "]" * 100_000])
def test_unparseable_text(text: str | bytes) -> None:
    with pytest.raises(SchemaError) as caught:
        parse_schema_text(text)
    assert str(caught.value).startswith("schema: ")


def test_schema_text_round_trip() -> None:
    document = load_schema_document("all-inputs")
    assert parse_schema_text(json.dumps(document)).inputs.keys() == parse_schema(document).inputs.keys()


@pytest.mark.parametrize(
    ("pattern", "translated"),
    [
        ("^[a-z]+$", "^[a-z]+\\Z"),
        ("^a\\$b$", "^a\\$b\\Z"),
        ("[$]x", "[$]x"),
        ("[]$]", "[\\]$]"),
        ("^\\d{3}$", "^[0-9]{3}\\Z"),
        ("[\\d_]", "[0-9_]"),
        ("^\\w+\\W", "^[A-Za-z0-9_]+[^A-Za-z0-9_]"),
        ("(?<year>\\d{4})", "(?P<year>[0-9]{4})"),
        ("(?<=a)b(?<!c)", "(?<=a)b(?<!c)"),
        ("a\\z", "a\\Z"),
    ],
)
def test_pattern_translation(pattern: str, translated: str) -> None:
    assert python_pattern(pattern) == translated


def test_pattern_python_cannot_compile_is_skipped() -> None:
    assert compile_pattern("\\p{L}+") is None
    assert compile_pattern("(unclosed") is None
