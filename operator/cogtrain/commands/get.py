"""`cogtrain get`: one Training, as a person reads it."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import yaml

from ..submit import progress_text
from . import EXIT_OK
from .cluster import cluster_arguments, connect

DESCRIPTION = "Show one Training: its model, phase, progress, weights, logs and error."

FIELDS = (("Model", "spec", "model"), ("Phase", "status", "phase"), ("Weights", "status", "weights"),
          ("Logs", "status", "logs"), ("Error", "status", "error"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="NAME", help="the Training")
    parser.add_argument("-o", "--output", choices=("yaml", "json"), help="print the whole object instead")
    cluster_arguments(parser)


def run(args: argparse.Namespace) -> int:
    training = connect(args).training(args.name)
    if args.output == "json":
        print(json.dumps(training, indent=2, ensure_ascii=False))
        return EXIT_OK
    if args.output == "yaml":
        sys.stdout.write(yaml.safe_dump(training, sort_keys=False))
        return EXIT_OK
    sys.stdout.write(describe(training))
    return EXIT_OK


def describe(training: dict[str, Any]) -> str:
    """Name, namespace, then each field that is set."""
    meta = training.get("metadata") or {}
    rows = [("Name", str(meta.get("name"))), ("Namespace", str(meta.get("namespace")))]
    for label, part, field in FIELDS:
        value = (training.get(part) or {}).get(field)
        if value:
            rows.append((label, str(value)))
        if field == "phase" and (progress := progress_text((training.get("status") or {}).get("progress"))):
            rows.append(("Progress", progress.removeprefix("progress ")))
    return "".join(f"{label + ':':<11}{value}\n" for label, value in rows)
