"""`cogtrain schema`: show a model image's training inputs."""

from __future__ import annotations

import argparse
import json
import sys

from ..describe import schema_table
from ..registry import RegistryError
from . import EXIT_OK, EXIT_PROBLEMS
from .common import registry_arguments, resolve_model

DESCRIPTION = (
    "Read a Cog model image's training schema from its registry and print its inputs (name, type, "
    "default, constraints, description) in train()'s parameter order."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="IMAGE", help="the image, by tag or @sha256: digest")
    parser.add_argument("--json", action="store_true", help="print the whole OpenAPI document instead")
    registry_arguments(parser)


def run(args: argparse.Namespace) -> int:
    try:
        model = resolve_model(args)
    except RegistryError as error:
        print(f"cogtrain schema: {error.kind.value}: {error}", file=sys.stderr)
        return EXIT_PROBLEMS
    if args.json:
        print(json.dumps(json.loads(model.schema_text), indent=2, ensure_ascii=False))
    else:
        sys.stdout.write(schema_table(model))
    return EXIT_OK
