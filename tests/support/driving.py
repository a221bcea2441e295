"""Trainings through Cog's own model server that the driver must fail, and `cogtrain drive` as the Job runs it."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

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


def run_within(driver: Driver, seconds: float) -> tuple[Any, DriverError | None, float]:
    """`driver.run()` that must end within `seconds`: (output, error, seconds it took).

    A driver still running then is canceled (so the test ends) and the test fails.
    """
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["output"] = driver.run()
        except DriverError as error:
            result["error"] = error

    started = time.monotonic()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    took = time.monotonic() - started
    if thread.is_alive():
        driver.cancel_requested.set()
        thread.join(60)
        pytest.fail(f"the driver was still waiting {seconds:g} s after it started")
    return result.get("output"), result.get("error"), took


class PeakMemory:
    """A process's peak resident memory (VmHWM in /proc/PID/status), read until it exits.

    Not `ru_maxrss` of a child: for a child started by subprocess (fork, then exec) that reports the
    parent's peak when the parent's is larger. VmHWM only grows, so the last reading is the peak.
    """

    def __init__(self, pid: int, every: float = 0.02) -> None:
        self.pid, self.every = pid, every
        self.peak_kib = 0
        self.readings = 0
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        status = Path(f"/proc/{self.pid}/status")
        while True:
            try:
                text = status.read_text()
            except OSError:  # reaped
                return
            lines = [line for line in text.splitlines() if line.startswith("VmHWM:")]
            if not lines:  # a zombie: its memory is gone
                return
            self.peak_kib = max(self.peak_kib, int(lines[0].split()[1]))
            self.readings += 1
            time.sleep(self.every)

    def stop(self) -> int:
        """The peak in bytes, once the process has exited."""
        self._thread.join(10)
        return self.peak_kib * 1024


def start_drive(tmp_path: Path, model: Path, env_inputs: dict[str, str], extra_args: list[str] | None = None,
                stdout: Any = subprocess.PIPE):  # type: ignore[no-untyped-def]
    """`cogtrain drive` as the Job runs it, beside Cog's server started as the model container is.

    `stdout`: where the training's logs go (a file, for a test that reads more than a pipe holds).
    """
    listen = free_port()
    server = start_cog_server(prepare_model(model, tmp_path / "model"),
                              ["--await-explicit-shutdown", "true", "--upload-url", f"http://127.0.0.1:{listen}/upload/"])
    env = {**os.environ, **env_inputs}
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "cogtrain"), "drive", f"--model-url={server.url}",
         f"--listen=127.0.0.1:{listen}", "--training-id=uid-123", "--destination=pvc://weights/team",
         f"--destination-root={tmp_path / 'mnt'}", f"--scratch={tmp_path / 'scratch'}", "--namespace=ml",
         "--name=tok", f"--termination-log={tmp_path / 'termination-log'}", *(extra_args or [])],
        env=env, stdout=stdout, stderr=subprocess.PIPE, text=True)
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
