"""`cogtrain run`: train a Cog model folder on this machine, like `cog train` but without Docker.

The model's own Cog server runs as a subprocess (the `cog` package must be installed: the
`local` extra); the same validator checks the inputs and the same driver code runs the training.
"""

from __future__ import annotations

import json
import os
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

from .driver import Driver, DriverError, LocalDestination
from .schema import InputSpec, TrainingSchema


class LocalRunError(Exception):
    """A model folder or -i argument that cannot be used (exit 2)."""


def _free_port() -> int:
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
    kind = spec.value.type if spec is not None else "string"
    if kind == "string":
        return raw
    try:
        return json.loads(raw)
    except ValueError:
        if kind == "array":
            return [item.strip() for item in raw.split(",")]
        return raw  # the validator says what is wrong with it


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


def run_training(model_dir: Path, inputs: dict[str, Any], out: Path, log: TextIO = sys.stdout,
                 err: TextIO = sys.stderr, setup_timeout: float = 600) -> Any:
    """Train and store the output at `out` (one file: that path; several: a folder). Returns the output."""
    config = yaml.safe_load((model_dir / "cog.yaml").read_text())
    train = (config or {}).get("train")
    if not train:
        raise LocalRunError(f"{model_dir}/cog.yaml has no `train:`")
    port, listen_port = _free_port(), _free_port()
    staging = Path(tempfile.mkdtemp(prefix=".cogtrain-", dir=out.parent if out.parent.exists() else None))
    env = {**os.environ, "PORT": str(port), "COG_TRAIN_TYPE_STUB": str(train),
           "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")}
    server_log = (staging / "server.log").open("wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "cog.server.http", "--x-mode", "train", "--host", "127.0.0.1",
         "--await-explicit-shutdown", "true", "--upload-url", f"http://127.0.0.1:{listen_port}/upload/"],
        cwd=model_dir, env=env, stdout=server_log, stderr=subprocess.STDOUT, start_new_session=True)
    driver = Driver(model_url=f"http://127.0.0.1:{port}", training_id=f"local-{uuid.uuid4().hex[:12]}",
                    inputs=inputs, destination=LocalDestination(staging / "files", str(out.resolve())),
                    scratch=staging / "scratch", listen=f"127.0.0.1:{listen_port}", setup_timeout=setup_timeout,
                    log=log, progress=_progress(err))
    previous = signal.signal(signal.SIGINT, lambda *_: driver.cancel_requested.set())
    try:
        output = driver.run()
        return _place(output, staging / "files", out)
    except DriverError:
        err.write("model server log (last lines):\n")
        err.writelines(line + "\n" for line in (staging / "server.log").read_text(errors="replace").splitlines()[-15:])
        raise
    finally:
        server_log.close()
        signal.signal(signal.SIGINT, previous)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
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


__all__ = ["DriverError", "LocalRunError", "parse_inputs", "run_training"]
