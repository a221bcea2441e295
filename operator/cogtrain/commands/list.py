"""`cogtrain list`: Trainings as a table, like `kubectl get trainings`."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime

from ..submit import table
from . import EXIT_OK
from .cluster import cluster_arguments, connect

DESCRIPTION = "List the Trainings of a namespace (-A: of all) with their phase, progress, model, weights and age."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    cluster_arguments(parser, all_namespaces=True)


def run(args: argparse.Namespace) -> int:
    trainings = connect(args).trainings(all_namespaces=args.all_namespaces)
    if not trainings:
        print("no Trainings found", file=sys.stderr)
        return EXIT_OK
    sys.stdout.write(table(trainings, datetime.now(UTC), namespaces=args.all_namespaces))
    return EXIT_OK
