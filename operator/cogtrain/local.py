"""`cogtrain run` and `cogtrain predict`: a Cog model folder on this machine, like `cog train`/`cog predict`.

No Docker: the model's own Cog server runs as a subprocess (the `cog` package must be installed: the
`local` extra); the same validator checks the inputs and the same driver code runs the training.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any, TextIO

import yaml

from .contract import Reason
from .destinations import DriverError, LocalDestination
from .driver import Driver, decode_data_url, wait_ready
from .schema import InputSpec, TrainingSchema, cli_value, parse_schema


class LocalRunError(Exception):
    """A model folder or -i argument that cannot be used (exit 2)."""


def free_port() -> int:
    """A loopback port free right now (for a model server and the driver's receiver)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def parse_cli_value(spec: InputSpec | None, raw: str) -> Any:
    """A `-i name=value` value the way Cog's CLI reads it: typed by the schema, `@file` for files."""
    if raw.startswith("@"):
        path = Path(raw[1:]).expanduser()
        if not path.exists():
            raise LocalRunError(f"{raw}: no such file")
        return str(path.resolve())
    return cli_value(spec, raw)


def parse_inputs(schema: TrainingSchema, pairs: list[str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        if not sep or not name:
            raise LocalRunError(f"-i {pair!r}: expected name=value")
        spec = schema.inputs.get(name)
        value = parse_cli_value(spec, raw)
        if spec is not None and spec.value.type == "array":
            items = value if isinstance(value, list) else [value]
            values[name] = [*values.get(name, []), *items]  # -i tags=a -i tags=b
        else:
            values[name] = value
    return values


def _progress(err: TextIO) -> Any:
    shown = {"last": -5.0}

    def report(elapsed: float, status: str) -> None:
        if elapsed - shown["last"] >= 5:
            shown["last"] = elapsed
            err.write(f"waiting for the model's setup ({status.lower()}, {elapsed:.0f} s)\n")
            err.flush()

    return report


def missing_packages(config: dict[str, Any]) -> list[str]:
    """The cog.yaml `build.python_packages` this Python lacks: the model server would fail on them."""
    from importlib.metadata import PackageNotFoundError, version

    missing = []
    for requirement in ((config.get("build") or {}).get("python_packages") or []):
        match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", str(requirement))
        if match is None:
            continue
        try:
            version(match.group(1))
        except PackageNotFoundError:
            missing.append(str(requirement))
    return missing


def _model_config(model_dir: Path, mode: str) -> dict[str, Any]:
    config = yaml.safe_load((model_dir / "cog.yaml").read_text()) or {}
    if not config.get(mode):
        raise LocalRunError(f"{model_dir}/cog.yaml has no `{mode}:`")
    missing = missing_packages(config)
    if missing:
        raise LocalRunError(
            f"{model_dir}/cog.yaml needs {', '.join(missing)} (build.python_packages), which this Python lacks: "
            f"{sys.executable} -m pip install {' '.join(repr(m) if ' ' in m else m for m in missing)}"
        )
    return config


def _start_server(model_dir: Path, mode: str, ref: str, port: int, log_path: Path, args: list[str],
                  env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """The model's own Cog server, with this Python's bin folder first on PATH (its worker's python)."""
    stub = "COG_TRAIN_TYPE_STUB" if mode == "train" else "COG_PREDICT_TYPE_STUB"
    full_env = {**os.environ, **(env or {}), "PORT": str(port), stub: ref,
                "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")}
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "cog.server.http", "--x-mode", mode, "--host", "127.0.0.1", *args],
            cwd=model_dir, env=full_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _stop_server(server: subprocess.Popen[bytes]) -> None:
    try:
        server.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


def _tail(log_path: Path, err: TextIO) -> None:
    err.write("model server log (last lines):\n")
    err.writelines(line + "\n" for line in log_path.read_text(errors="replace").splitlines()[-15:])


def run_training(model_dir: Path, inputs: dict[str, Any], out: Path, log: TextIO = sys.stdout,
                 err: TextIO = sys.stderr, setup_timeout: float = 600) -> Any:
    """Train and store the output at `out` (one file: that path; several: a folder). Returns the output."""
    config = _model_config(model_dir, "train")
    port, listen_port = free_port(), free_port()
    staging = Path(tempfile.mkdtemp(prefix=".cogtrain-", dir=out.parent if out.parent.exists() else None))
    server = _start_server(model_dir, "train", str(config["train"]), port, staging / "server.log",
                           ["--await-explicit-shutdown", "true",
                            "--upload-url", f"http://127.0.0.1:{listen_port}/upload/"])
    driver = Driver(model_url=f"http://127.0.0.1:{port}", training_id=f"local-{uuid.uuid4().hex[:12]}",
                    inputs=inputs, destination=LocalDestination(staging / "files", str(out.resolve())),
                    scratch=staging / "scratch", listen=f"127.0.0.1:{listen_port}", setup_timeout=setup_timeout,
                    log=log, notices=err, progress=_progress(err))
    previous = signal.signal(signal.SIGINT, lambda *_: driver.cancel_requested.set())
    try:
        output = driver.run()
        if driver.metrics:
            err.write(f"metrics: {json.dumps(driver.metrics)}\n")
        return _place(output, staging / "files", out)
    except DriverError:
        _tail(staging / "server.log", err)
        raise
    finally:
        signal.signal(signal.SIGINT, previous)
        _stop_server(server)
        shutil.rmtree(staging, ignore_errors=True)


def predict_schema(document: dict[str, Any]) -> TrainingSchema:
    """The predict interface of a schema document: its `Input`/`Output`, read like training's."""
    schemas = dict((document.get("components") or {}).get("schemas") or {})
    if "Input" not in schemas:
        raise LocalRunError("the model's schema has no predict `Input`")
    schemas.pop("TrainingInput", None)
    schemas.pop("TrainingOutput", None)
    return parse_schema({**document, "components": {**document["components"], "schemas": schemas}})


def run_prediction(model_dir: Path, inputs: dict[str, Any], weights: Path | None, out: Path,
                   err: TextIO = sys.stderr, setup_timeout: float = 600) -> Any:
    """Run one prediction, with COG_WEIGHTS set to `weights` as `cog predict -e COG_WEIGHTS=...` does.

    A file output (a data: URL) is written to `out` and reported as its path.
    """
    import requests

    config = _model_config(model_dir, "predict")
    port = free_port()
    staging = Path(tempfile.mkdtemp(prefix=".cogtrain-"))
    env = {"COG_WEIGHTS": str(weights.resolve())} if weights is not None else {}
    server = _start_server(model_dir, "predict", str(config["predict"]), port, staging / "server.log", [], env)
    url = f"http://127.0.0.1:{port}"

    def exited() -> DriverError | None:
        if server.poll() is None:
            return None
        return DriverError(Reason.SETUP_FAILED, "the model server exited during setup")

    try:
        wait_ready(url, setup_timeout, err, _progress(err), exited)
        answer = requests.post(f"{url}/predictions", json={"input": inputs}, timeout=None)
        body = answer.json()
        if answer.status_code == 422 or body.get("status") != "succeeded":
            detail = body.get("error") or body.get("detail") or answer.text[:500]
            raise DriverError(Reason.PREDICTION_FAILED, f"the prediction failed: {detail}")
        output = body.get("output")
        if isinstance(output, str) and output.startswith("data:"):
            decode_data_url(output, out)
            output = str(out)
        return output
    except DriverError:
        _tail(staging / "server.log", err)  # as run_training does: the model's own traceback
        raise
    finally:
        try:
            requests.post(f"{url}/shutdown", timeout=5)
        except requests.RequestException:
            pass
        server.terminate()
        _stop_server(server)
        shutil.rmtree(staging, ignore_errors=True)


def _place(output: Any, files: Path, out: Path) -> Any:
    """One output file becomes `out` itself (like `cog train`'s ./weights); several, a folder `out`."""
    stored = sorted(files.iterdir()) if files.exists() else []
    prefix = str(out.resolve())
    if len(stored) == 1:
        if out.is_dir():
            shutil.rmtree(out)
        shutil.move(str(stored[0]), out)
        return _rename(output, f"{prefix}/{stored[0].name}", prefix)
    if stored:
        if out.exists() and not out.is_dir():
            out.unlink()
        out.mkdir(parents=True, exist_ok=True)
        for path in stored:
            shutil.move(str(path), out / path.name)
    return output


def _rename(output: Any, old: str, new: str) -> Any:
    if isinstance(output, list):
        return [_rename(item, old, new) for item in output]
    if isinstance(output, dict):
        return {key: _rename(value, old, new) for key, value in output.items()}
    return new if output == old else output


__all__ = ["DriverError", "LocalRunError", "parse_inputs", "predict_schema", "run_prediction", "run_training"]
