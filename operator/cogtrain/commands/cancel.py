"""`cogtrain cancel`: stop a Training (spec.cancel: true); it stays, with phase Canceled."""

from __future__ import annotations

import argparse
import sys

from ..submit import FINISHED
from . import EXIT_OK
from .cluster import cluster_arguments, connect

DESCRIPTION = (
    "Cancel a Training: set spec.cancel to true; the operator deletes its Job and marks it Canceled. "
    "A Training that has ended is left as it is."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="NAME", help="the Training")
    cluster_arguments(parser)


def run(args: argparse.Namespace) -> int:
    kube = connect(args)
    phase = (kube.training(args.name).get("status") or {}).get("phase")
    if phase in FINISHED:
        print(f"Training {args.name} already ended ({phase}); nothing to cancel", file=sys.stderr)
        return EXIT_OK
    kube.cancel(args.name)
    print(f"Training {args.name} canceled (spec.cancel: true)", file=sys.stderr)
    return EXIT_OK
