"""Trainings through Cog's own model server that the driver must fail, and `cogtrain drive` as the Job runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cogtrain.destinations import DriverError
from cogtrain.driver import Driver
from support.cogserver import CogServer, free_port, prepare_model, start_cog_server


def expect_failure(server: CogServer, driver: Driver) -> DriverError:
    """Run a training that must fail; the model server must have been told to shut down."""
    try:
        with pytest.raises(DriverError) as caught:
            driver.run()
        server.process.wait(timeout=20)
    finally:
        server.stop()
    return caught.value


def start_drive(tmp_path: Path, model: Path, env_inputs: dict[str, str], extra_args: list[str] | None = None):  # type: ignore[no-untyped-def]
    """`cogtrain drive` as the Job runs it, beside Cog's server started as the model container is."""
    listen = free_port()
    server = start_cog_server(prepare_model(model, tmp_path / "model"),
                              ["--await-explicit-shutdown", "true", "--upload-url", f"http://127.0.0.1:{listen}/upload/"])
    env = {**os.environ, **env_inputs}
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "cogtrain"), "drive", f"--model-url={server.url}",
         f"--listen=127.0.0.1:{listen}", "--training-id=uid-123", "--destination=pvc://weights/team",
         f"--destination-root={tmp_path / 'mnt'}", f"--scratch={tmp_path / 'scratch'}", "--namespace=ml",
         "--name=tok", f"--termination-log={tmp_path / 'termination-log'}", *(extra_args or [])],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return server, process


def drive_to_end(tmp_path: Path, model: Path, env_inputs: dict[str, str],
                 extra_args: list[str] | None = None) -> tuple[int, str, str]:
    """`cogtrain drive` through a whole training: its exit code, stdout and stderr."""
    server, process = start_drive(tmp_path, model, env_inputs, extra_args)
    try:
        out, err = process.communicate(timeout=90)
        server.process.wait(timeout=20)
    finally:
        server.stop()
    return process.returncode, out, err
