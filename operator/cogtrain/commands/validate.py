"""`cogtrain validate`: check training inputs against a model's training schema."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import pydantic

from .. import api
from ..documents import DocumentError, load_document, parse_documents, read_text
from ..registry import RegistryError
from ..validation import Problem, model_problems, validate_input
from . import EXIT_OK, EXIT_PROBLEMS, UsageError
from .common import load_schema, registry_arguments, resolve_model

USAGE_ERRORS = (DocumentError,)

DESCRIPTION = (
    "Check training inputs against a Cog model's training schema, as the model server would. Prints "
    "the input object that would be sent (exit 0) or one line per problem (exit 1)."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--schema",
        type=Path,
        help="the model's OpenAPI schema (JSON), or a Cog model folder holding .cog/openapi_schema.json",
    )
    parser.add_argument("--model", help="a Cog model image; its schema is read from the registry")
    parser.add_argument("--input", type=Path, help="the inputs as a JSON or YAML object")
    parser.add_argument(
        "--training",
        type=Path,
        help="a Training manifest; its spec.input and spec.secretInputs are checked",
    )
    parser.add_argument(
        "--secret-input",
        action="append",
        default=[],
        metavar="NAME",
        help="an input given through secretInputs (repeatable)",
    )
    registry_arguments(parser)


def run(args: argparse.Namespace) -> int:
    if (args.input is None) == (args.training is None):
        raise UsageError("give exactly one of --input FILE or --training FILE")
    if (args.schema is None) == (args.model is None):
        raise UsageError("give exactly one of --schema FILE or --model IMAGE")
    if args.schema is not None:
        schema = load_schema(args.schema)
    else:
        try:
            schema = resolve_model(args).schema
        except RegistryError as error:
            raise UsageError(str(error)) from None
    secret_names = list(args.secret_input)
    if args.training is not None:
        training, problems = load_training(args.training)
        if training is None:
            for problem in problems:
                print(problem)
            return EXIT_PROBLEMS
        values: Any = training.spec.input
        secret_names += list(training.spec.secret_inputs or {})
    else:
        values = load_document(args.input)
    result = validate_input(schema, values, secret_names)
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if not result.ok:
        for problem in result.problems:
            print(problem)
        return EXIT_PROBLEMS
    print(json.dumps(result.input, indent=2, ensure_ascii=False))
    return EXIT_OK


def load_training(path: Path) -> tuple[api.Training | None, list[Problem]]:
    """The Training in a manifest file (which may hold other objects too) and its structural problems."""
    documents = parse_documents(read_text(path), str(path))
    trainings = [d for d in documents if isinstance(d, dict) and d.get("kind") == api.KIND]
    if not trainings:
        raise UsageError(f"{path}: holds no object of kind {api.KIND}")
    if len(trainings) > 1:
        raise UsageError(f"{path}: holds {len(trainings)} Trainings; validate one at a time")
    try:
        return api.Training.model_validate(trainings[0]), []
    except pydantic.ValidationError as error:
        return None, model_problems(error)
