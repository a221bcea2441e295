"""Parsing Cog OpenAPI documents into typed input descriptions."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from cogtrain.schema import (
    MAX_ERROR_CHARS,
    MAX_SCHEMA_DEPTH,
    SchemaError,
    SchemaErrorKind,
    TrainingSchema,
    compile_pattern,
    parse_schema,
    parse_schema_text,
    re2_pattern,
)
from support.cog_schema import training_document
from support.complexity import fastest, growth
from support.paths import load_schema_document, model_dirs

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


SPACE = "[\\t\\n\\x0B\\f\\r \\x{A0}\\x{2003}\\x{2029}\\x{FEFF}]"


@pytest.mark.parametrize(
    ("pattern", "translated"),
    [
        ("^[a-z]+$", "^[a-z]+$"),  # RE2's $ is the very end unless (?m), as Cog's
        ("^a\\$b$", "^a\\$b$"),
        ("[$]x", "[$]x"),
        ("[]$]", "[\\]$]"),
        ("^\\d{3}$", "^[0-9]{3}$"),
        ("[\\d_]", "[0-9_]"),
        ("^\\w+\\W", "^[0-9A-Za-z_]+[^0-9A-Za-z_]"),
        ("[\\D\\W]", "[\\D\\W]"),  # RE2's own are ASCII, as ECMA-262's
        ("(?<year>\\d{4})", "(?P<year>[0-9]{4})"),
        ("(?<=a)b(?<!c)", "(?<=a)b(?<!c)"),  # kept: RE2 refuses it, so it is left to the model server
        ("a\\z", "a\\z"),
        ("^\\s$", f"^{SPACE}$"),
        ("[^\\s]", "[^" + SPACE[1:]),
        ("\\u00e9\\u{1F600}", "\\x{00e9}\\x{1F600}"),
        ("^\\p{L}+$", "^\\p{L}+$"),
    ],
)
def test_pattern_translation(pattern: str, translated: str) -> None:
    assert re2_pattern(pattern) == translated


@pytest.mark.parametrize("pattern", ["^x\\b", "\\Bx", "[\\S]", "[a[b]]", "[a&&b]", "[a--b]", "\\u12", "\\u{xyz}", "\\C"])
def test_pattern_without_an_re2_equivalent_is_not_translated(pattern: str) -> None:
    """Cog's \\b is Unicode-aware and Rust's classes nest; RE2 would give these another meaning."""
    assert re2_pattern(pattern) is None
    assert compile_pattern(pattern) is None


@pytest.mark.parametrize("pattern", ["(?<=a)b", "(a)\\1", "(?!x)", "(unclosed", "a\\Z", "x" * 20_000])
def test_pattern_re2_cannot_compile_is_skipped(pattern: str) -> None:
    assert compile_pattern(pattern) is None


def test_patterns_re2_reads_that_python_could_not() -> None:
    compiled = compile_pattern("^\\p{L}+$")
    assert compiled is not None
    assert compiled.search("héllo") and not compiled.search("p{L}")


@pytest.mark.parametrize(
    ("pattern", "text", "matches"),
    [
        ("^[a-z]+$", "abc\n", False),
        ("^[a-z]+$", "abc", True),
        ("(?m)^[a-z]+$", "abc\n", True),
        ("^\\d{3}$", "\u0661\u0662\u0663", False),
        ("^\\w$", "é", False),
        ("^.$", "\n", False),
        ("^.$", "\U0001F600", True),
        ("^\\s$", "\ufeff", True),
        ("^\\s$", "\u3000", False),
        ("^\\S$", "\xa0", False),
        ("^\\u0041$", "A", True),
    ],
)
def test_pattern_meaning(pattern: str, text: str, matches: bool) -> None:
    """As Cog 0.23's server decides (tests/test_cog_agreement.py asks it the same on tests/models/patterns)."""
    compiled = compile_pattern(pattern)
    assert compiled is not None
    assert (compiled.search(text) is not None) == matches


# --- list[Secret] ----------------------------------------------------------------------------


def test_list_of_secrets_is_secret(schemas: dict[str, TrainingSchema]) -> None:
    """Cog's generator puts x-cog-secret on `items` for list[Secret] (tests/models/secret-list)."""
    schema = schemas["secret-list"]
    tokens, spare, steps = (schema.inputs[n] for n in ("tokens", "spare_tokens", "steps"))
    assert tokens.secret and tokens.secret_list and tokens.required
    assert spare.secret and spare.secret_list and spare.nullable and not spare.required
    assert not steps.secret and not steps.secret_list
    assert schema.secret_names == ["tokens", "spare_tokens"]
    assert schema.secret_list_names == ["tokens", "spare_tokens"]
    assert not schemas["all-inputs"].inputs["hf_token"].secret_list


@pytest.mark.parametrize("model", sorted(model_dirs()))
def test_stored_schemas_are_what_cog_generates(model: str) -> None:
    """support.cog_schema rebuilds each fixture's schema as Cog 0.23 writes it (how secret-list's was made)."""
    assert training_document(model_dirs()[model]) == load_schema_document(model)


# --- hostile documents: bounded work -------------------------------------------------------


def _document(properties: dict[str, Any], **schemas: Any) -> dict[str, Any]:
    return {"components": {"schemas": {"TrainingInput": {"type": "object", "properties": properties}, **schemas}}}


def _ref_graph(levels: int) -> dict[str, Any]:
    schemas: dict[str, Any] = {
        f"L{i}": {"allOf": [{"$ref": f"#/components/schemas/L{i + 1}"}, {"$ref": f"#/components/schemas/L{i + 1}"}]}
        for i in range(levels)}
    schemas[f"L{levels}"] = {"type": "integer", "minimum": 1}
    return _document({"n": {"$ref": "#/components/schemas/L0"}}, **schemas)


def test_ref_graph_is_resolved_once_per_component() -> None:
    """Each level refers twice to the next: 2**25 resolutions unless each component is resolved once."""
    schema = parse_schema(_ref_graph(25))
    assert schema.inputs["n"].value.type == "integer" and schema.inputs["n"].value.minimum == 1
    small, large = _ref_graph(12), _ref_graph(25)
    ratio = growth(lambda: parse_schema(small), lambda: parse_schema(large))
    assert ratio < 20, f"twice the levels took {ratio:.0f} times as long (2**13 if resolved per reference)"


@pytest.mark.parametrize("kind", ["items", "ref"])
def test_deep_nesting_is_refused(kind: str) -> None:
    depth = MAX_SCHEMA_DEPTH + 10
    if kind == "items":
        node: dict[str, Any] = {"type": "string"}
        for _ in range(depth):
            node = {"type": "array", "items": node}
        document = _document({"deep": node})
    else:
        schemas = {f"R{i}": {"$ref": f"#/components/schemas/R{i + 1}"} for i in range(depth)}
        schemas[f"R{depth}"] = {"type": "string"}
        document = _document({"deep": {"$ref": "#/components/schemas/R0"}}, **schemas)
    with pytest.raises(SchemaError) as caught:
        parse_schema(document)
    assert f"nested more than {MAX_SCHEMA_DEPTH} levels deep" in str(caught.value)


def _many_inputs(count: int) -> dict[str, Any]:
    properties = {f"input_{i}": {"type": "integer", "x-order": count - i} for i in range(count)}
    document = _document(properties)
    document["components"]["schemas"]["TrainingInput"]["required"] = list(properties)
    return document


def test_many_inputs_parse_in_linear_time() -> None:
    count = 20_000
    small, large = _many_inputs(count // 10), _many_inputs(count)
    schema = parse_schema(large)
    assert list(schema.inputs)[0] == f"input_{count - 1}" and all(s.required for s in schema.inputs.values())
    ratio = growth(lambda: parse_schema(small), lambda: parse_schema(large))
    assert ratio < 35, f"10 times the inputs took {ratio:.0f} times as long (linear: 10, quadratic: 100)"


def test_errors_quote_the_document_briefly() -> None:
    name = "n" * 100_000
    with pytest.raises(SchemaError) as caught:
        parse_schema(_document({name: {"type": "integer", "minimum": "1" * 100_000}}))
    message = str(caught.value)
    assert message.startswith("schema: components.schemas.TrainingInput.properties.nnnn")
    assert len(message) <= MAX_ERROR_CHARS


@pytest.mark.unit
def test_a_big_component_used_many_times_is_refused_quickly() -> None:
    """Each use of a component copies it: 12,400 uses of a 24,000-key one cost seconds before it was charged."""
    big = {"type": "string", **{f"k{i}": 1 for i in range(24000)}}
    uses = {"allOf": [{"$ref": "#/components/schemas/Big"}] * 12400}
    document = {"components": {"schemas": {"Big": big, "TrainingInput": {"type": "object", "properties": {"x": uses}}}}}
    text = json.dumps(document)
    with pytest.raises(SchemaError, match="too complex"):
        parse_schema_text(text)

    def refuse() -> None:
        with pytest.raises(SchemaError):
            parse_schema_text(text)

    reading = fastest(lambda: json.loads(text))
    refusing = fastest(refuse)
    assert refusing < 20 * reading, f"refused in {refusing / reading:.0f} times the time json.loads reads it"
