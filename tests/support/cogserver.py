"""Start Cog's own model server (the `cog` package from PyPI) on a model folder, for tests.

The server is the one a built Cog image runs; it reads `.cog/openapi_schema.json` and checks
inputs against it, so tests can ask it whether it accepts an input.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from cogtrain.local import free_port


def prepare_model(source: Path, dest: Path) -> Path:
    """Copy a model folder (fixture folders are read-only) and put its schema where Cog looks."""
    shutil.copytree(source, dest)
    for path in [dest, *dest.rglob("*")]:
        path.chmod(path.stat().st_mode | 0o200)
    cog_dir = dest / ".cog"
    if not (cog_dir / "openapi_schema.json").exists():
        cog_dir.mkdir(exist_ok=True)
        shutil.copy(dest / "openapi_schema.json", cog_dir / "openapi_schema.json")
    return dest


@dataclass
class CogServer:
    """A running `python -m cog.server.http --x-mode train` and a tiny client for it."""

    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def request(self, method: str, path: str, body: Any = None, timeout: float = 60) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.url + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout) as response:
                status, text = response.status, response.read()
        except urllib.error.HTTPError as error:
            status, text = error.code, error.read()
        try:
            return status, json.loads(text)
        except ValueError:
            return status, text.decode(errors="replace")

    def train(self, inputs: dict[str, Any]) -> tuple[int, Any]:
        """Run a training synchronously; 422 means the server refused the input.

        Cog frees its single slot a moment after answering, so a request sent right after the
        previous one can get 409 "At capacity"; that is retried.
        """
        deadline = time.monotonic() + 30
        while True:
            status, body = self.request("POST", "/trainings", {"input": inputs})
            if status != 409 or time.monotonic() > deadline:
                return status, body
            time.sleep(0.02)

    def kill(self) -> None:
        """Kill the server and its worker at once (SIGKILL to the process group), as a crashed container dies."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def start_cog_server(
    model_dir: Path, extra_args: list[str] | None = None, timeout: float = 90, wait_ready: bool = True,
    port: int | None = None,
) -> CogServer:
    """Start Cog's server in train mode on `model_dir` and wait until it is READY (or just answers).

    `port`: a given port (a server restarted where the last one was), else a free one.
    """
    config = yaml.safe_load((model_dir / "cog.yaml").read_text())
    port = port or free_port()
    bin_dir = str(Path(sys.executable).parent)
    env = dict(os.environ)
    env.update(
        PATH=bin_dir + os.pathsep + env.get("PATH", ""),
        COG_TRAIN_TYPE_STUB=config["train"],
        PORT=str(port),
    )
    log_path = model_dir / "server.log"
    log = log_path.open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "cog.server.http", "--x-mode", "train", "--host", "127.0.0.1", *(extra_args or [])],
        cwd=model_dir,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    server = CogServer(process=process, port=port, log_path=log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"Cog server exited with {process.returncode}: {log_path.read_text()[-2000:]}")
        try:
            status, body = server.request("GET", "/health-check", timeout=2)
            if status == 200 and isinstance(body, dict) and body.get("status") == "READY":
                return server
            if not wait_ready and status == 200:
                return server
            if isinstance(body, dict) and body.get("status") == "SETUP_FAILED":
                if not wait_ready:
                    return server
                server.stop()
                raise RuntimeError(f"Cog setup failed: {body}")
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"Cog server not READY after {timeout}s: {log_path.read_text()[-2000:]}")
