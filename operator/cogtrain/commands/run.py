"""`cogtrain run`: train a Cog model folder on this machine (like `cog train`, without Docker)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..local import run_training
from . import EXIT_OK, EXIT_PROBLEMS
from .common import FAILED, load_schema, local_inputs, model_folder_arguments, run_locally

DESCRIPTION = (
    "Validate the inputs against the model's schema, start its Cog server, run the training and "
    "write the output to ./weights (or -o). Needs the `cog` package (the `local` extra)."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    model_folder_arguments(parser)
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        default=Path("weights"),
        help="where the output goes: a file for one output file, a folder for several (default ./weights)",
    )


def run(args: argparse.Namespace) -> int:
    """Train a Cog model folder locally and write its output to -o (default ./weights)."""
    inputs = local_inputs(load_schema(args.model_dir), args.input)
    if inputs is None:
        return EXIT_PROBLEMS
    output = run_locally(
        "run", lambda: run_training(args.model_dir, inputs, args.output, setup_timeout=args.setup_timeout)
    )
    if output is FAILED:
        return EXIT_PROBLEMS
    print(json.dumps(output, indent=2, ensure_ascii=False), file=sys.stderr)
    print(f"weights written to {args.output}", file=sys.stderr)
    return EXIT_OK
