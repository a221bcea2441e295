"""What several commands share: schema files, registry arguments and lookups, model folders run locally."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..credentials import Keyring, keyring_from_file
from ..destinations import DriverError
from ..documents import DocumentError, read_text
from ..local import LocalRunError, parse_inputs
from ..reference import ReferenceError, parse_reference
from ..registry import RegistryClient, insecure_registries_from_env
from ..resolver import ResolvedModel, SchemaResolver
from ..schema import SchemaError, TrainingSchema, parse_schema_text
from ..validation import validate_input
from . import UsageError


def schema_path(path: Path) -> Path:
    """A schema file, or a Cog model folder holding `.cog/openapi_schema.json`."""
    if path.is_dir():
        inner = path / ".cog" / "openapi_schema.json"
        if not inner.is_file():
            raise UsageError(f"{path}: a folder without .cog/openapi_schema.json; pass the schema file itself")
        return inner
    return path


def load_schema(path: Path) -> TrainingSchema:
    path = schema_path(path)
    try:
        return parse_schema_text(read_text(path))
    except SchemaError as error:
        raise UsageError(f"{path}: {error}") from None


def registry_keyring(path: Path | None) -> Keyring:
    """Credentials from --registry-config, else from Docker's own config file when there is one."""
    if path is None:
        default = Path(os.environ.get("DOCKER_CONFIG", Path.home() / ".docker")) / "config.json"
        if not default.is_file():
            return Keyring()
        path = default
    try:
        return keyring_from_file(str(path))
    except DocumentError as error:
        raise UsageError(str(error)) from None


def registry_client(args: argparse.Namespace) -> RegistryClient:
    """A client allowed plain HTTP for loopback, COGTRAIN_INSECURE_REGISTRIES and, with --insecure, the image's."""
    insecure = insecure_registries_from_env(os.environ)
    if args.insecure:
        try:
            insecure.append(parse_reference(args.model).registry)
        except ReferenceError:
            pass  # the resolver reports the bad reference
    return RegistryClient(insecure_registries=insecure, timeout=args.timeout)


def resolve_model(args: argparse.Namespace) -> ResolvedModel:
    """Look the image up in its registry; raises RegistryError."""
    resolver = SchemaResolver(registry_client(args))
    return resolver.resolve(args.model, registry_keyring(args.registry_config))


def registry_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="reach the image's registry over plain HTTP (loopback registries always are)",
    )
    parser.add_argument(
        "--registry-config",
        type=Path,
        metavar="FILE",
        help="a docker config.json with registry credentials (default: ~/.docker/config.json if present)",
    )
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the registry (default 30)")


def model_folder_arguments(parser: argparse.ArgumentParser) -> None:
    """What `run` and `predict` share: the model folder, its -i inputs and the setup timeout."""
    parser.add_argument(
        "model_dir", type=Path, metavar="MODEL_DIR", help="a Cog model folder with .cog/openapi_schema.json"
    )
    parser.add_argument(
        "-i", "--input", action="append", default=[], metavar="NAME=VALUE",
        help="an input (repeatable); NAME=@FILE passes a local file",
    )
    parser.add_argument("--setup-timeout", type=float, default=600.0, help="seconds to wait for the model's setup")


def local_inputs(schema: TrainingSchema, pairs: list[str]) -> dict[str, Any] | None:
    """`-i` pairs parsed like Cog's CLI and validated; None (problems printed) when invalid."""
    try:
        values = parse_inputs(schema, pairs)
    except LocalRunError as error:
        raise UsageError(str(error)) from None
    # On this machine there is no Kubernetes Secret to reference: a Secret input is given with -i
    # like any other (as `cog train -i` takes it), checked to be a string, and passed on as it is.
    secret_names = [name for name in values if name in schema.inputs and schema.inputs[name].secret]
    secrets = {name: values.pop(name) for name in secret_names}
    result = validate_input(schema, values, secret_names)
    problems = [str(p).replace("secretInputs.", "input.") for p in result.problems]
    problems += [f"input.{name}: a Secret input takes a string" for name, v in secrets.items()
                 if not isinstance(v, str)]
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    for problem in problems:
        print(problem.replace("add it to secretInputs as", "give it with -i, e.g."), file=sys.stderr)
    return {**result.input, **secrets} if not problems else None


def run_locally(command: str, work: Callable[[], Any]) -> Any:
    """Run `work`, turning a model folder's problems into usage errors and a failure into one line."""
    try:
        return work()
    except LocalRunError as error:
        raise UsageError(str(error)) from None
    except DriverError as error:
        print(f"cogtrain {command}: {error.reason}: {error.message}", file=sys.stderr)
        return FAILED


FAILED = object()  # what run_locally returns when the work failed (already reported)
