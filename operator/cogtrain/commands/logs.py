"""`cogtrain logs`: a Training's log, from its Pod's driver container while it is there, else where it is stored."""

from __future__ import annotations

import argparse
import sys
import time

from ..submit import FINISHED, model_line
from . import EXIT_OK, EXIT_PROBLEMS
from .cluster import Kube, LogPrinter, cluster_arguments, connect

DESCRIPTION = (
    "Print the log of a Training's newest Pod (the driver container's: the model's output). Once the Pod is "
    "gone, say where the whole log is stored (status.logs, logs.txt) and print its last lines (status.logTail)."
)

POLL_SECONDS = 1.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="NAME", help="the Training")
    parser.add_argument("-f", "--follow", action="store_true",
                        help="keep printing as the log grows (waiting for the Pod to start)")
    cluster_arguments(parser)


def run(args: argparse.Namespace) -> int:
    kube = connect(args)
    if args.follow:
        return _follow(kube, args.name)
    status = kube.training(args.name).get("status") or {}
    pods = kube.driver_pods(args.name)
    if pods:
        _print(kube, pods[-1])
        return EXIT_OK
    return _stored(args.name, status)


def _follow(kube: Kube, name: str) -> int:
    """Each of the Training's Pods in turn (a restart after a disruption brings a new one) until it ends."""
    printer = LogPrinter(kube, "cogtrain logs")
    while True:
        status = kube.training(name).get("status") or {}
        printer.add(kube.driver_pods(name))
        if status.get("phase") in FINISHED:
            printer.finish()
            return EXIT_OK if printer.seen else _stored(name, status)
        time.sleep(POLL_SECONDS)


def _print(kube: Kube, pod: str) -> None:
    for line in kube.log_lines(pod, follow=False):
        shown = model_line(line)
        if shown is not None:
            sys.stdout.write(shown + "\n")
            sys.stdout.flush()


def _stored(name: str, status: dict[str, object]) -> int:
    if status.get("logs"):
        print(f"the Pod of Training {name} is gone; its whole log is at {status['logs']}", file=sys.stderr)
    else:
        print(f"Training {name} has no Pod with a log (phase {status.get('phase') or 'Pending'}) and no stored log",
              file=sys.stderr)
    if status.get("logTail"):
        print(f"its last lines (status.logTail):\n{status['logTail']}")
    return EXIT_OK if status.get("logs") or status.get("logTail") else EXIT_PROBLEMS
