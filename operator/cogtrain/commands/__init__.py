"""The commands of `cogtrain`, one module each: HELP, DESCRIPTION, add_arguments(parser) and run(args).

`cogtrain.cli` imports only the module of the command being run, so `cogtrain drive` in a
training Pod loads the driver and nothing of the operator.
"""

EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """Arguments or files the command cannot use (exit 2)."""
