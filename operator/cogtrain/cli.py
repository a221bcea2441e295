"""`cogtrain`: the command line of cog-training-operator.

Exit codes: 0 success, 1 the inputs (or the Training) have problems or the training failed, 2 unusable
arguments or unreadable files, 3 the cluster or S3 could not be used, 130 interrupted (the training left
running). Errors are one clear line each, never a traceback. Each command lives in its own module under
`commands/`, imported only when that command runs.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from types import ModuleType

from . import __version__
from .commands import EXIT_INTERRUPTED, EXIT_OK, EXIT_UNAVAILABLE, EXIT_USAGE, UnavailableError, UsageError

COMMANDS = {
    "validate": "check training inputs against a model's training schema",
    "schema": "show a model image's training inputs",
    "run": "train a Cog model folder on this machine (like `cog train`, without Docker)",
    "predict": "run one prediction of a Cog model folder with trained weights (like `cog predict -e COG_WEIGHTS=...`)",
    "drive": "run one training against a Cog server (the training Pod's driver container)",
    "operator": "run the operator (in a cluster, or against your kubeconfig)",
    "crd": "print the Training CustomResourceDefinition",
    "train": "create a Training on the cluster of your kubeconfig, like `cog train` (wait, follow, download)",
    "get": "show one Training (phase, progress, weights, error)",
    "list": "list Trainings as a table, like `kubectl get trainings`",
    "logs": "print a Training's log (the driver container's), or where it is stored",
    "cancel": "cancel a Training (sets spec.cancel: true)",
}


def command_module(name: str) -> ModuleType:
    return importlib.import_module(f"{__package__}.commands.{name}")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole parser, or with `only` the arguments of that one command (the others by name)."""
    parser = argparse.ArgumentParser(
        prog="cogtrain", description="Run the training interface of Cog models on Kubernetes."
    )
    parser.add_argument("--version", action="version", version=f"cogtrain {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_ in COMMANDS.items():
        if only not in (None, name):
            commands.add_parser(name, help=help_)
            continue
        module = command_module(name)
        sub = commands.add_parser(name, help=help_, description=module.DESCRIPTION)
        module.add_arguments(sub)
        sub.set_defaults(module=module)
    return parser


def plugin_main() -> int:
    """`kubectl cogtrain ...`: kubectl runs `kubectl-cogtrain` from the PATH with the rest of the line."""
    return main()


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    chosen = next((a for a in arguments if not a.startswith("-")), None)
    args = build_parser(chosen if chosen in COMMANDS else None).parse_args(arguments)
    module: ModuleType = args.module
    try:
        code: int = module.run(args)
        return code
    except (UsageError, *getattr(module, "USAGE_ERRORS", ())) as error:
        print(f"cogtrain {args.command}: {error}", file=sys.stderr)
        return EXIT_USAGE
    except UnavailableError as error:
        print(f"cogtrain {args.command}: {error}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except BrokenPipeError:
        return EXIT_OK
    except KeyboardInterrupt:  # Ctrl-C in get, list, logs -f, cancel: one line, no traceback
        if args.command not in ("get", "list", "logs", "cancel"):
            raise  # the operator and the driver handle their own signals
        print(f"\ncogtrain {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
