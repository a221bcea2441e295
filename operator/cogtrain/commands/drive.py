"""`cogtrain drive`: run one training against a Cog server (the training Pod's driver container)."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from ..contract import (
    DESTINATION_MOUNT,
    DRIVER_PORT,
    INPUTS_MOUNT,
    LOOPBACK,
    MODEL_PORT,
    SCRATCH_MOUNT,
    TERMINATION_LOG,
    Reason,
)
from ..destinations import Destination, DriverError, InputFiles, destination_for
from ..driver import Driver, inputs_from_env, storage_inputs_from_env, termination_message
from . import EXIT_OK

DESCRIPTION = "Drive the model's Cog server through one training; inputs come from COGTRAIN_INPUT_* variables."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-url", default=f"http://{LOOPBACK}:{MODEL_PORT}")
    parser.add_argument(
        "--listen", default=f"{LOOPBACK}:{DRIVER_PORT}", help="where the model server sends webhooks and files"
    )
    parser.add_argument("--training-id", required=True)
    parser.add_argument(
        "--destination", required=True, help="pvc://CLAIM/PATH (mounted at --destination-root) or s3://BUCKET/PREFIX"
    )
    parser.add_argument("--destination-root", type=Path, default=Path(DESTINATION_MOUNT))
    parser.add_argument("--inputs-root", type=Path, default=Path(INPUTS_MOUNT),
                        help="where the claims of pvc:// inputs are mounted, each at <root>/<claim>")
    parser.add_argument("--scratch", type=Path, default=Path(SCRATCH_MOUNT))
    parser.add_argument("--namespace", default="default")
    parser.add_argument("--name", required=True)
    parser.add_argument("--setup-timeout", type=float, default=1800.0)
    parser.add_argument("--termination-log", default=TERMINATION_LOG)
    parser.add_argument("--cancel-grace", type=float, default=20.0,
                        help="seconds to wait for the model to confirm a cancel before shutting it down")


TERMINATED_MESSAGE = (
    "the training Pod was stopped (SIGTERM) before the training finished: it was deleted, its node "
    "shut down, or its Job canceled or past its deadline"
)


def run(args: argparse.Namespace) -> int:
    """The driver container of a training Pod (docs/driver.md): its exit code and termination message.

    Every path ends with a report and a final exit code: a failure of the driver itself (a bad
    flag, a port taken, an output it cannot encode) is `DriverFailed`, never a bare traceback with
    exit 1, which the Job would retry and so run a training a second time.
    """
    destination: Destination | None = None
    driver: Driver | None = None
    output: Any = None
    error: DriverError | None = None
    # First of all: a SIGTERM that comes while the driver starts still ends in a cancel and a
    # /shutdown of the model server (which ignores SIGTERM), never in a bare exit 143 that leaves
    # the server holding the Pod for its whole grace period.
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        destination = destination_for(args.destination, args.destination_root, args.namespace, args.name)
        driver = running = Driver(
            model_url=args.model_url,
            training_id=args.training_id,
            inputs=inputs_from_env(dict(os.environ)),
            storage_inputs=storage_inputs_from_env(os.environ),
            input_files=InputFiles(args.destination, args.destination_root, args.inputs_root),
            destination=destination,
            scratch=args.scratch,
            listen=args.listen,
            setup_timeout=args.setup_timeout,
            cancel_grace=args.cancel_grace,
            cancel_requested=stop,
            records=True,
            keep_log=True,
        )
        output = running.run()
    except DriverError as failure:
        error = failure
        if failure.reason is Reason.CANCELED:
            # In a Pod, SIGTERM is all the driver knows: the operator has already written Canceled for
            # spec.cancel, the Job controller replaces a disrupted Pod whatever its exit code, and the
            # Job's deadline is on the Job. What is left (a Pod deleted by hand) is a termination.
            error = DriverError(Reason.TERMINATED, TERMINATED_MESSAGE)
    except Exception as failure:  # noqa: BLE001  (the driver's own fault: reported, never retried)
        error = DriverError(Reason.DRIVER_FAILED, f"the driver failed: {type(failure).__name__}: {failure}")
    try:
        message = termination_message(output, error, destination, driver.metrics if driver else None,
                                      driver.logs_uri if driver else None, driver.log_tail if driver else None)
    except Exception as failure:  # noqa: BLE001
        error = DriverError(Reason.DRIVER_FAILED, f"the driver could not report the result: {type(failure).__name__}")
        message = termination_message(None, error, None)
    try:
        Path(args.termination_log).write_text(message, encoding="utf-8", errors="replace")
    except OSError as failure:
        print(f"cogtrain drive: cannot write {args.termination_log}: {failure.strerror}", file=sys.stderr)
    if error is not None:
        print(f"cogtrain drive: {error.reason}: {error.message}".encode(errors="replace").decode(), file=sys.stderr)
        return error.exit_code
    print(f"cogtrain drive: the training succeeded: {message}", file=sys.stderr)
    return EXIT_OK
