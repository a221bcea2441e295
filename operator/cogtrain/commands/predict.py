"""`cogtrain predict`: one prediction of a Cog model folder with trained weights (`cog predict -e COG_WEIGHTS=`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..local import LocalRunError, predict_schema, run_prediction
from . import EXIT_OK, EXIT_PROBLEMS, UsageError
from .common import FAILED, load_schema, local_inputs, model_folder_arguments, run_locally

DESCRIPTION = (
    "Start the model's Cog server in predict mode with COG_WEIGHTS set to --weights, run one "
    "prediction and print its output (a file output is written to -o). Needs the `cog` package (the "
    "`local` extra)."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    model_folder_arguments(parser)
    parser.add_argument("--weights", type=Path, help="the weights of a training (e.g. ./weights from `cogtrain run`)")
    parser.add_argument("-o", "--output", type=Path, default=Path("output"), help="where a file output goes")


def run(args: argparse.Namespace) -> int:
    """Predict with a Cog model folder locally, loading --weights through COG_WEIGHTS."""
    try:
        schema = predict_schema(dict(load_schema(args.model_dir).document))
    except LocalRunError as error:
        raise UsageError(f"{args.model_dir}: {error}") from None
    if args.weights is not None and not args.weights.exists():
        raise UsageError(f"--weights {args.weights}: no such file")
    inputs = local_inputs(schema, args.input)
    if inputs is None:
        return EXIT_PROBLEMS
    output = run_locally("predict", lambda: run_prediction(
        args.model_dir, inputs, args.weights, args.output, setup_timeout=args.setup_timeout))
    if output is FAILED:
        return EXIT_PROBLEMS
    print(output if isinstance(output, str) else json.dumps(output, indent=2, ensure_ascii=False))
    return EXIT_OK
