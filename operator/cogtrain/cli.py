"""`cogtrain`: the command line of cog-training-operator.

Exit codes: 0 success, 1 the inputs (or the Training) have problems, 2 unusable arguments or
unreadable files. Errors are one clear line each, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pydantic
import yaml

from . import __version__, api
from .crd import training_crd
from .credentials import Keyring, keyring_from_file
from .describe import schema_table
from .documents import DocumentError, load_document, parse_documents, read_text
from .reference import ReferenceError, parse_reference
from .registry import RegistryClient, RegistryError, insecure_registries_from_env
from .resolver import ResolvedModel, SchemaResolver
from .schema import SchemaError, TrainingSchema, parse_schema_text
from .validation import Problem, model_problems, validate_input

EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """Arguments or files the command cannot use (exit 2)."""


def _schema_path(path: Path) -> Path:
    """A schema file, or a Cog model folder holding `.cog/openapi_schema.json`."""
    if path.is_dir():
        inner = path / ".cog" / "openapi_schema.json"
        if not inner.is_file():
            raise UsageError(f"{path}: a folder without .cog/openapi_schema.json; pass the schema file itself")
        return inner
    return path


def load_schema(path: Path) -> TrainingSchema:
    path = _schema_path(path)
    try:
        return parse_schema_text(read_text(path))
    except SchemaError as error:
        raise UsageError(f"{path}: {error}") from None


def load_training(path: Path) -> tuple[api.Training | None, list[Problem]]:
    """The Training in a manifest file (which may hold other objects too) and its structural problems."""
    documents = parse_documents(read_text(path), str(path))
    trainings = [d for d in documents if isinstance(d, dict) and d.get("kind") == api.KIND]
    if not trainings:
        raise UsageError(f"{path}: holds no object of kind {api.KIND}")
    if len(trainings) > 1:
        raise UsageError(f"{path}: holds {len(trainings)} Trainings; validate one at a time")
    try:
        return api.Training.model_validate(trainings[0]), []
    except pydantic.ValidationError as error:
        return None, model_problems(error)


def _registry_keyring(path: Path | None) -> Keyring:
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
    return resolver.resolve(args.model, _registry_keyring(args.registry_config))


def cmd_validate(args: argparse.Namespace) -> int:
    if (args.input is None) == (args.training is None):
        raise UsageError("give exactly one of --input FILE or --training FILE")
    if (args.schema is None) == (args.model is None):
        raise UsageError("give exactly one of --schema FILE or --model IMAGE")
    if args.schema is not None:
        schema = load_schema(args.schema)
    else:
        try:
            schema = resolve_model(args).schema
        except RegistryError as error:
            raise UsageError(str(error)) from None
    secret_names = list(args.secret_input)
    if args.training is not None:
        training, problems = load_training(args.training)
        if training is None:
            for problem in problems:
                print(problem)
            return EXIT_PROBLEMS
        values: Any = training.spec.input
        secret_names += list(training.spec.secret_inputs or {})
    else:
        values = load_document(args.input)
    result = validate_input(schema, values, secret_names)
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if not result.ok:
        for problem in result.problems:
            print(problem)
        return EXIT_PROBLEMS
    print(json.dumps(result.input, indent=2, ensure_ascii=False))
    return EXIT_OK


def cmd_schema(args: argparse.Namespace) -> int:
    try:
        model = resolve_model(args)
    except RegistryError as error:
        print(f"cogtrain schema: {error.kind.value}: {error}", file=sys.stderr)
        return EXIT_PROBLEMS
    if args.json:
        print(json.dumps(json.loads(model.schema_text), indent=2, ensure_ascii=False))
    else:
        sys.stdout.write(schema_table(model))
    return EXIT_OK


def _local_inputs(schema: TrainingSchema, pairs: list[str]) -> dict[str, Any] | None:
    """`-i` pairs parsed like Cog's CLI and validated; None (problems printed) when invalid."""
    from .local import LocalRunError, parse_inputs

    try:
        values = parse_inputs(schema, pairs)
    except LocalRunError as error:
        raise UsageError(str(error)) from None
    result = validate_input(schema, values, [])
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    for problem in result.problems:
        print(problem, file=sys.stderr)
    return result.input if result.ok else None


def _run_locally(command: str, work: Callable[[], Any]) -> Any:
    """Run `work`, turning a model folder's problems into usage errors and a failure into one line."""
    from .destinations import DriverError
    from .local import LocalRunError

    try:
        return work()
    except LocalRunError as error:
        raise UsageError(str(error)) from None
    except DriverError as error:
        print(f"cogtrain {command}: {error.reason}: {error.message}", file=sys.stderr)
        return _FAILED


_FAILED = object()


def cmd_run(args: argparse.Namespace) -> int:
    """Train a Cog model folder locally and write its output to -o (default ./weights)."""
    from .local import run_training

    inputs = _local_inputs(load_schema(args.model_dir), args.input)
    if inputs is None:
        return EXIT_PROBLEMS
    output = _run_locally(
        "run", lambda: run_training(args.model_dir, inputs, args.output, setup_timeout=args.setup_timeout)
    )
    if output is _FAILED:
        return EXIT_PROBLEMS
    print(json.dumps(output, indent=2, ensure_ascii=False), file=sys.stderr)
    print(f"weights written to {args.output}", file=sys.stderr)
    return EXIT_OK


def cmd_predict(args: argparse.Namespace) -> int:
    """Predict with a Cog model folder locally, loading --weights through COG_WEIGHTS."""
    from .local import LocalRunError, predict_schema, run_prediction

    try:
        schema = predict_schema(dict(load_schema(args.model_dir).document))
    except LocalRunError as error:
        raise UsageError(f"{args.model_dir}: {error}") from None
    if args.weights is not None and not args.weights.exists():
        raise UsageError(f"--weights {args.weights}: no such file")
    inputs = _local_inputs(schema, args.input)
    if inputs is None:
        return EXIT_PROBLEMS
    output = _run_locally("predict", lambda: run_prediction(
        args.model_dir, inputs, args.weights, args.output, setup_timeout=args.setup_timeout))
    if output is _FAILED:
        return EXIT_PROBLEMS
    print(output if isinstance(output, str) else json.dumps(output, indent=2, ensure_ascii=False))
    return EXIT_OK


def cmd_drive(args: argparse.Namespace) -> int:
    """The driver container of a training Pod (docs/driver.md): its exit code and termination message."""
    import signal

    from .destinations import Destination, DriverError, destination_for
    from .driver import Driver, inputs_from_env, termination_message

    destination: Destination | None = None
    driver: Driver | None = None
    try:
        destination = destination_for(args.destination, args.destination_root, args.namespace, args.name)
        driver = running = Driver(
            model_url=args.model_url,
            training_id=args.training_id,
            inputs=inputs_from_env(dict(os.environ)),
            destination=destination,
            scratch=args.scratch,
            listen=args.listen,
            setup_timeout=args.setup_timeout,
            cancel_grace=args.cancel_grace,
        )
        signal.signal(signal.SIGTERM, lambda *_: running.cancel_requested.set())
        output, error = running.run(), None
    except DriverError as failure:
        output, error = None, failure
    message = termination_message(output, error, destination, driver.metrics if driver else None)
    try:
        Path(args.termination_log).write_text(message, encoding="utf-8")
    except OSError as failure:
        print(f"cogtrain drive: cannot write {args.termination_log}: {failure.strerror}", file=sys.stderr)
    if error is not None:
        print(f"cogtrain drive: {error.reason}: {error.message}", file=sys.stderr)
        return error.exit_code
    print(f"cogtrain drive: the training succeeded: {message}", file=sys.stderr)
    return EXIT_OK


def cmd_operator(args: argparse.Namespace) -> int:
    """Run the operator until interrupted: kopf with this project's handlers."""
    import kopf
    from kubernetes import client, config

    from . import handlers
    from .settings import settings_from

    if not args.all_namespaces and not args.namespace:
        raise UsageError("give --all-namespaces (-A) or one --namespace NS per namespace to watch")
    kopf.configure(
        verbose=args.verbose, debug=args.debug, quiet=args.quiet, log_format=kopf.LogFormat[args.log_format.upper()]
    )
    try:
        config.load_config()  # type: ignore[no-untyped-call]  # KUBECONFIG, ~/.kube/config, or in-cluster
    except config.ConfigException as error:
        raise UsageError(f"no Kubernetes configuration: {error}") from None
    settings = settings_from(
        os.environ,
        insecure_registries=args.insecure_registry,
        driver_image=args.driver_image,
        gpu_resource_name=args.gpu_resource_name,
        default_destination=args.default_destination,
        default_destination_secret=args.default_destination_secret,
        registry_timeout=args.registry_timeout,
    )
    configuration = client.Configuration.get_default_copy()
    configuration.connection_pool_maxsize = 32  # kopf runs up to 16 handlers at once
    runtime = handlers.Runtime.create(
        settings, client.ApiClient(configuration), webhook_config=webhook_config(args, os.environ),
        metrics_port=args.metrics_port or None,
    )
    kopf.run(
        clusterwide=args.all_namespaces,
        namespaces=args.namespace,
        liveness_endpoint=args.liveness,
        standalone=args.standalone,
        peering_name=args.peering,
        priority=args.priority,
        memo=kopf.Memo(runtime=runtime),
    )
    return EXIT_OK


def webhook_config(args: argparse.Namespace, environ: Mapping[str, str]) -> Any:
    """The admission webhook's settings from the flags; None when --webhook-port is not given."""
    from .webhook import WebhookConfig

    if not args.webhook_port:
        return None
    if not (args.webhook_cert_dir or args.webhook_secret):
        raise UsageError("--webhook-port needs --webhook-cert-dir (cert-manager) or --webhook-secret (self-signed)")
    return WebhookConfig(
        port=args.webhook_port,
        service=args.webhook_service,
        namespace=environ.get("POD_NAMESPACE") or "default",
        cert_dir=args.webhook_cert_dir,
        secret=args.webhook_secret,
        configuration=args.webhook_configuration,
        failure_policy=args.webhook_failure_policy,
        lookup_timeout=args.webhook_lookup_timeout,
    )


def cmd_crd(args: argparse.Namespace) -> int:
    text = render_crd()
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return EXIT_OK


def render_crd() -> str:
    """The CRD as the YAML checked in under crds/."""
    header = "# Generated by `cogtrain crd` from operator/cogtrain/api.py; do not edit.\n"
    body: str = yaml.safe_dump(training_crd(), sort_keys=False, width=100)
    return header + body


def _registry_arguments(parser: argparse.ArgumentParser) -> None:
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


def _model_folder_arguments(parser: argparse.ArgumentParser) -> None:
    """What `run` and `predict` share: the model folder, its -i inputs and the setup timeout."""
    parser.add_argument(
        "model_dir", type=Path, metavar="MODEL_DIR", help="a Cog model folder with .cog/openapi_schema.json"
    )
    parser.add_argument(
        "-i", "--input", action="append", default=[], metavar="NAME=VALUE",
        help="an input (repeatable); NAME=@FILE passes a local file",
    )
    parser.add_argument("--setup-timeout", type=float, default=600.0, help="seconds to wait for the model's setup")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cogtrain",
        description="Run the training interface of Cog models on Kubernetes.",
    )
    parser.add_argument("--version", action="version", version=f"cogtrain {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    validate = commands.add_parser(
        "validate",
        help="check training inputs against a model's training schema",
        description=(
            "Check training inputs against a Cog model's training schema, as the model server would. "
            "Prints the input object that would be sent (exit 0) or one line per problem (exit 1)."
        ),
    )
    validate.add_argument(
        "--schema",
        type=Path,
        help="the model's OpenAPI schema (JSON), or a Cog model folder holding .cog/openapi_schema.json",
    )
    validate.add_argument("--model", help="a Cog model image; its schema is read from the registry")
    validate.add_argument("--input", type=Path, help="the inputs as a JSON or YAML object")
    validate.add_argument(
        "--training",
        type=Path,
        help="a Training manifest; its spec.input and spec.secretInputs are checked",
    )
    validate.add_argument(
        "--secret-input",
        action="append",
        default=[],
        metavar="NAME",
        help="an input given through secretInputs (repeatable)",
    )
    _registry_arguments(validate)
    validate.set_defaults(handler=cmd_validate)

    schema = commands.add_parser(
        "schema",
        help="show a model image's training inputs",
        description=(
            "Read a Cog model image's training schema from its registry and print its inputs "
            "(name, type, default, constraints, description) in train()'s parameter order."
        ),
    )
    schema.add_argument("model", metavar="IMAGE", help="the image, by tag or @sha256: digest")
    schema.add_argument("--json", action="store_true", help="print the whole OpenAPI document instead")
    _registry_arguments(schema)
    schema.set_defaults(handler=cmd_schema)

    run = commands.add_parser(
        "run",
        help="train a Cog model folder on this machine (like `cog train`, without Docker)",
        description=(
            "Validate the inputs against the model's schema, start its Cog server, run the training "
            "and write the output to ./weights (or -o). Needs the `cog` package (the `local` extra)."
        ),
    )
    _model_folder_arguments(run)
    run.add_argument(
        "-o",
        "--output",
        type=Path,
        default=Path("weights"),
        help="where the output goes: a file for one output file, a folder for several (default ./weights)",
    )
    run.set_defaults(handler=cmd_run)

    predict = commands.add_parser(
        "predict",
        help="run one prediction of a Cog model folder with trained weights (like `cog predict -e COG_WEIGHTS=...`)",
        description=(
            "Start the model's Cog server in predict mode with COG_WEIGHTS set to --weights, run one prediction "
            "and print its output (a file output is written to -o). Needs the `cog` package (the `local` extra)."
        ),
    )
    _model_folder_arguments(predict)
    predict.add_argument("--weights", type=Path, help="the weights of a training (e.g. ./weights from `cogtrain run`)")
    predict.add_argument("-o", "--output", type=Path, default=Path("output"), help="where a file output goes")
    predict.set_defaults(handler=cmd_predict)

    drive = commands.add_parser(
        "drive",
        help="run one training against a Cog server (the training Pod's driver container)",
        description="Drive the model's Cog server through one training; inputs come from COGTRAIN_INPUT_* variables.",
    )
    drive.add_argument("--model-url", default="http://127.0.0.1:5000")
    drive.add_argument("--listen", default="127.0.0.1:5080", help="where the model server sends webhooks and files")
    drive.add_argument("--training-id", required=True)
    drive.add_argument(
        "--destination", required=True, help="pvc://CLAIM/PATH (mounted at --destination-root) or s3://BUCKET/PREFIX"
    )
    drive.add_argument("--destination-root", type=Path, default=Path("/destination"))
    drive.add_argument("--scratch", type=Path, default=Path("/scratch"))
    drive.add_argument("--namespace", default="default")
    drive.add_argument("--name", required=True)
    drive.add_argument("--setup-timeout", type=float, default=1800.0)
    drive.add_argument("--termination-log", default="/dev/termination-log")
    drive.add_argument("--cancel-grace", type=float, default=20.0,
                       help="seconds to wait for the model to confirm a cancel before shutting it down")
    drive.set_defaults(handler=cmd_drive)

    operator = commands.add_parser(
        "operator",
        help="run the operator (in a cluster, or against your kubeconfig)",
        description=(
            "Watch Trainings and run them as Jobs. Uses KUBECONFIG / ~/.kube/config, or the in-cluster "
            "service account. Flags follow `kopf run`; each setting can also come from COGTRAIN_* variables."
        ),
    )
    scope = operator.add_mutually_exclusive_group()
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="watch Trainings in every namespace")
    scope.add_argument(
        "-n",
        "--namespace",
        action="append",
        default=[],
        metavar="NS",
        help="watch this namespace (repeatable; glob patterns as in kopf)",
    )
    operator.add_argument(
        "--liveness", metavar="URL", help="serve a liveness endpoint, e.g. http://0.0.0.0:8080/healthz"
    )
    operator.add_argument("--log-format", choices=["plain", "full", "json"], default="full")
    operator.add_argument("-v", "--verbose", action="store_true")
    operator.add_argument("--debug", action="store_true")
    operator.add_argument("-q", "--quiet", action="store_true")
    operator.add_argument(
        "--standalone",
        action="store_true",
        default=None,
        help="do not coordinate with other instances (no kopf peering)",
    )
    operator.add_argument("--peering", metavar="NAME", help="the kopf peering object shared by instances")
    operator.add_argument("--priority", type=int, help="this instance's peering priority")
    operator.add_argument(
        "--insecure-registry",
        action="append",
        default=[],
        metavar="HOST[:PORT]",
        help="reach this registry over plain HTTP (repeatable; also COGTRAIN_INSECURE_REGISTRIES)",
    )
    operator.add_argument("--driver-image", help="the image running `cogtrain drive` (COGTRAIN_DRIVER_IMAGE)")
    operator.add_argument("--gpu-resource-name", help="default GPU resource, e.g. nvidia.com/gpu")
    operator.add_argument("--default-destination", help="where outputs go when a Training names no destination")
    operator.add_argument(
        "--default-destination-secret",
        help="Secret (in each Training's namespace) with s3:// settings, when a Training names none",
    )
    operator.add_argument("--registry-timeout", type=float, help="seconds to wait for a registry (default 10)")
    webhook = operator.add_argument_group("admission webhook (docs/install.md)")
    webhook.add_argument("--webhook-port", type=int, help="serve the validating webhook over HTTPS on this port")
    webhook.add_argument("--webhook-service", default="cog-training-operator-webhook",
                         help="the webhook's Service, in POD_NAMESPACE: the certificate's DNS names")
    webhook.add_argument("--webhook-cert-dir", type=Path, help="tls.crt and tls.key from cert-manager (reloaded)")
    webhook.add_argument("--webhook-secret", help="self-signed: the Secret (in POD_NAMESPACE) to keep them in")
    webhook.add_argument("--webhook-configuration", help="self-signed: the ValidatingWebhookConfiguration to patch")
    webhook.add_argument("--webhook-failure-policy", choices=["Ignore", "Fail"], default="Ignore",
                         help="when the model's schema cannot be read in time: admit with a warning, or deny")
    webhook.add_argument("--webhook-lookup-timeout", type=float, default=3.0,
                         help="seconds a review may spend reading a model's schema (default 3)")
    operator.add_argument("--metrics-port", type=int, help="serve Prometheus metrics at :PORT/metrics")
    operator.set_defaults(handler=cmd_operator)

    crd = commands.add_parser(
        "crd",
        help="print the Training CustomResourceDefinition",
        description="Print the Training CRD generated from the resource's typed models.",
    )
    crd.add_argument("-o", "--output", help="write to this file instead of standard output")
    crd.set_defaults(handler=cmd_crd)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.handler(args)
        return code
    except (UsageError, DocumentError) as error:
        print(f"cogtrain {args.command}: {error}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
