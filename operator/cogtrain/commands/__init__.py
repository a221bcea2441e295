"""The commands of `cogtrain`, one module each: HELP, DESCRIPTION, add_arguments(parser) and run(args).

`cogtrain.cli` imports only the module of the command being run, so `cogtrain drive` in a
training Pod loads the driver and nothing of the operator.
"""

EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE, EXIT_UNAVAILABLE = 0, 1, 2, 3
EXIT_INTERRUPTED = 130  # Ctrl-C, the training left running (as shells report SIGINT)


class UsageError(Exception):
    """Arguments or files the command cannot use (exit 2)."""


class UnavailableError(Exception):
    """The cluster or S3 could not be used: unreachable, forbidden, or the Training is not there (exit 3)."""
