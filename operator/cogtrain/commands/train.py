"""`cogtrain train`: `cog train`, on the cluster of your kubeconfig (docs/laptop.md)."""

from __future__ import annotations

import argparse
import os
import secrets
import string
import sys
import time
from pathlib import Path
from typing import Any

import pydantic
import yaml

from .. import api
from ..documents import DocumentError, parse_documents, read_text
from ..registry import RegistryError
from ..submit import (
    FINISHED,
    ArgumentError,
    build_training,
    generated_name,
    local_paths,
    outcome,
    output_uris,
    own_files,
    parse_pairs,
    parse_secret_inputs,
    progress_text,
    upload_keys,
    with_uploads,
)
from ..validation import model_problems, validate_input
from . import EXIT_INTERRUPTED, EXIT_OK, EXIT_PROBLEMS, UnavailableError, UsageError
from .cluster import AlreadyExists, Kube, LogPrinter, NotFound, cluster_arguments, connect, context_namespace
from .common import registry_arguments, resolve_model

USAGE_ERRORS = (DocumentError, ArgumentError)

DESCRIPTION = (
    "Validate the inputs against the model's training schema (read from its registry), upload local files "
    "(-i NAME=@FILE) to the s3:// destination, create the Training, and with --wait or --follow see it to its "
    "end (exit 0 when it succeeded). See docs/laptop.md."
)

POLL_SECONDS = 1.0
NAME_ATTEMPTS = 5
MAX_SKIPPED_SHOWN = 10  # output URIs -o does not download, named one a line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", nargs="?", metavar="IMAGE", help="the Cog model image (default: -f's spec.model)")
    parser.add_argument("-i", "--input", action="append", default=[], metavar="NAME=VALUE",
                        help="an input (repeatable); NAME=@FILE uploads a local file to the destination")
    parser.add_argument("--secret-input", action="append", default=[], metavar="NAME=SECRET:KEY",
                        help="a Secret input, from a key of a Kubernetes Secret in the namespace (repeatable)")
    parser.add_argument("--destination", metavar="URI",
                        help="s3://BUCKET/PREFIX/ or pvc://CLAIM/PATH (default: -f's, else the operator's)")
    parser.add_argument("--name", help="the Training's name (default: <model>-<5 random characters>)")
    parser.add_argument("-f", "--filename", type=Path, metavar="TRAINING.yaml",
                        help="a Training manifest to start from; -i overrides its inputs")
    follow = parser.add_mutually_exclusive_group()
    follow.add_argument("--wait", action="store_true", help="wait for the training to end")
    follow.add_argument("--follow", action="store_true", help="wait, printing its log and progress as they come")
    parser.add_argument("-o", "--output", type=Path, metavar="OUT",
                        help="download the output files into this folder when it succeeds (implies --wait)")
    parser.add_argument("--dry-run", action="store_true",
                        help="validate and print the Training as YAML; create and upload nothing")
    parser.add_argument("--cancel-on-interrupt", action="store_true",
                        help="on Ctrl-C cancel the training without asking")
    cluster_arguments(parser)
    registry_arguments(parser)


def run(args: argparse.Namespace) -> int:
    created: list[str] = []
    try:
        return _train(args, created)
    except KeyboardInterrupt:
        if created:  # e.g. while -o downloads: the Training is there, whatever happened to its files here
            print(f"\ncogtrain train: interrupted; Training {created[0]} was created and is left as it is "
                  f"(`cogtrain get {created[0]}`)", file=sys.stderr)
        else:
            print("cogtrain train: interrupted before the Training was created; nothing was created", file=sys.stderr)
        return EXIT_INTERRUPTED


def load_manifest(path: Path) -> dict[str, Any]:
    """The one Training in a manifest file, checked against the resource's types."""
    documents = parse_documents(read_text(path), str(path))
    trainings = [d for d in documents if isinstance(d, dict) and d.get("kind") == api.KIND]
    if len(trainings) != 1:
        raise UsageError(f"{path}: holds {len(trainings)} objects of kind {api.KIND}; -f takes a file with one")
    try:
        api.Training.model_validate(trainings[0])
    except pydantic.ValidationError as error:
        raise UsageError(f"{path}: " + "; ".join(str(p) for p in model_problems(error))) from None
    manifest: dict[str, Any] = trainings[0]
    return manifest


def local_file(raw: str) -> str:
    path = Path(raw).expanduser()
    if not path.is_file():
        raise ArgumentError("no such file" if not path.exists() else "not a regular file")
    return str(path.resolve())


def _namespace_hint(args: argparse.Namespace, base: dict[str, Any]) -> str:
    """-n, the manifest's, or the kubeconfig context's namespace: read from the file, the cluster is not asked.
    As kubectl does, -n and a manifest that name two namespaces are refused."""
    given = (base.get("metadata") or {}).get("namespace")
    if args.namespace and given and args.namespace != given:
        raise UsageError(f"-n {args.namespace}, but {args.filename} has metadata.namespace {given}; pass "
                         f"-n {given} or leave -n out (the Training, its uploads and the cluster calls need one "
                         "namespace)")
    if args.namespace or given:
        return str(args.namespace or given)
    try:
        return context_namespace(args) or "default"
    except Exception:  # noqa: BLE001  (no usable kubeconfig: the default namespace)
        return "default"


def _train(args: argparse.Namespace, created: list[str]) -> int:
    base = load_manifest(args.filename) if args.filename else {}
    spec = base.get("spec") or {}
    model = args.image or spec.get("model")
    if not model:
        raise UsageError("no model: pass IMAGE, or -f a Training manifest with spec.model")
    args.model = model  # what the registry lookup reads
    try:
        schema = resolve_model(args).schema
    except RegistryError as error:
        raise UsageError(str(error)) from None
    inputs = parse_pairs(schema, args.input, local_file)
    secret_inputs = parse_secret_inputs(args.secret_input)
    values = {**(spec.get("input") or {}), **inputs.values}
    secret_names = [*(spec.get("secretInputs") or {}), *secret_inputs]
    result = validate_input(schema, values, secret_names)
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if not result.ok:
        for problem in result.problems:
            print(problem, file=sys.stderr)
        print("cogtrain train: the inputs have problems (above); nothing was created", file=sys.stderr)
        return EXIT_PROBLEMS
    destination = args.destination or spec.get("destination")
    namespace = _namespace_hint(args, base)
    explicit = args.name or (base.get("metadata") or {}).get("name")

    def body_for(name: str, uris: dict[str, str]) -> dict[str, Any]:
        body = build_training(base, model=args.image, name=name, namespace=namespace,
                              inputs=with_uploads(inputs.values, uris), secret_inputs=secret_inputs,
                              destination=args.destination)
        try:
            api.Training.model_validate(body)
        except pydantic.ValidationError as error:
            raise UsageError("; ".join(str(p) for p in model_problems(error))) from None
        return body

    if args.dry_run:
        name = explicit or generated_name(model, "xxxxx")
        keys = upload_keys(destination, namespace, name, inputs.files)
        uris = {path: f"s3://{bucket}/{key}" for path, (bucket, key) in keys.items()}
        for path, uri in uris.items():
            print(f"# would upload {path} to {uri}", file=sys.stderr)
        sys.stdout.write(yaml.safe_dump(body_for(name, uris), sort_keys=False))
        return EXIT_OK
    # What is wrong with the name, the destination or the body is said before the cluster is asked.
    body_for(explicit or generated_name(model, "xxxxx"), {})
    upload_keys(destination, namespace, "check", inputs.files)
    args.namespace = namespace  # the cluster calls go to the Training's own namespace (-f's, when it names one)
    kube = connect(args)
    name = _create(kube, explicit, model, destination, inputs.files, body_for)
    created.append(name)
    print(f"training.{api.GROUP}/{name} created in namespace {kube.namespace}", file=sys.stderr)
    if not (args.wait or args.follow or args.output):
        print(name)
        return EXIT_OK
    status = _see_to_the_end(kube, name, args.follow, args.cancel_on_interrupt)
    if status is None:
        return EXIT_INTERRUPTED
    succeeded, sentence = outcome(name, status)
    if not succeeded:
        print(f"cogtrain train: {sentence}", file=sys.stderr)
        return EXIT_PROBLEMS
    print(sentence, file=sys.stderr)
    if args.output:
        _download(status, args.output, kube.namespace, name, destination)
    return EXIT_OK


def _create(kube: Kube, explicit: str | None, model: str, destination: str | None, files: dict[str, str],
            body_for: Any) -> str:
    """Pick a free name (checked before anything is uploaded under it), upload the local files, create."""
    for _ in range(NAME_ATTEMPTS):
        name = explicit or generated_name(model, "".join(
            secrets.choice(string.ascii_lowercase + string.digits) for _ in range(5)))
        try:
            kube.training(name)
        except NotFound:
            pass
        else:
            if explicit:
                raise UsageError(f"a Training named {name} already exists in namespace {kube.namespace}; "
                                 "pick another --name (or delete it: kubectl delete training " + name + ")")
            continue
        uris = _upload(destination, kube.namespace, name, files)
        try:
            kube.create(body_for(name, uris))
        except AlreadyExists:
            if explicit:
                raise UsageError(f"a Training named {name} already exists in namespace {kube.namespace}; "
                                 "pick another --name") from None
            continue
        return name
    raise UnavailableError(f"no free Training name after {NAME_ATTEMPTS} tries; pass --name")


def _upload(destination: str | None, namespace: str, name: str, files: dict[str, str]) -> dict[str, str]:
    from ..uploads import TransferError, s3_client, upload

    keys = upload_keys(destination, namespace, name, files)
    if not keys:
        return {}
    client = s3_client()
    uris = {}
    for path, (bucket, key) in keys.items():
        print(f"uploading {path} to s3://{bucket}/{key}", file=sys.stderr)
        try:
            uris[path] = upload(client, Path(path), bucket, key)
        except TransferError as error:
            raise UnavailableError(f"uploading -i {files[path]}=@{path}: {error}") from None
    return uris


UNSEEN_HINT_SECONDS = 60.0  # an operator sets status.phase within seconds; past this, say it may not be running


def _see_to_the_end(kube: Kube, name: str, follow: bool, cancel_on_interrupt: bool) -> dict[str, Any] | None:
    """Poll the Training until it ends (its status), or None when Ctrl-C left it running."""
    printer = LogPrinter(kube, "cogtrain train") if follow else None
    shown: str | None = None
    canceled = False
    unseen_until = time.monotonic() + UNSEEN_HINT_SECONDS
    while True:
        try:
            status: dict[str, Any] = kube.training(name).get("status") or {}
            if not status.get("phase") and unseen_until and time.monotonic() >= unseen_until:
                print(f"Training {name} has no status after {UNSEEN_HINT_SECONDS:.0f} s: no operator has picked it up. "
                      "Is cog-training-operator running, and does it watch this namespace? (still waiting; Ctrl-C "
                      "to stop)", file=sys.stderr)
                unseen_until = 0.0
            if printer is not None:
                printer.add(kube.driver_pods(name))
                text = progress_text(status.get("progress"))
                if text is not None and text != shown:
                    print(text, file=sys.stderr)
                    shown = text
            if status.get("phase") in FINISHED:
                if printer is not None:
                    printer.finish()
                return status
            time.sleep(POLL_SECONDS)
        except KeyboardInterrupt:
            if canceled:
                print(f"\nstopped waiting; Training {name} is being canceled (`cogtrain get {name}`)", file=sys.stderr)
                return None
            if not (cancel_on_interrupt or _ask(name)):
                print(f"\nleft Training {name} running: `cogtrain get {name}`, `cogtrain logs -f {name}`, "
                      f"`cogtrain cancel {name}`", file=sys.stderr)
                return None
            kube.cancel(name)
            canceled = True
            print(f"canceling Training {name} (Ctrl-C again to stop waiting)", file=sys.stderr)


def _ask(name: str) -> bool:
    """Ask whether to cancel; without a terminal on stdin nobody can answer, so the training is left running."""
    if not sys.stdin.isatty():
        print(f"\nstdin is not a terminal, so not asking whether to cancel Training {name} "
              "(pass --cancel-on-interrupt to cancel on Ctrl-C)", file=sys.stderr)
        return False
    sys.stderr.write(f"\ncancel Training {name}? [y/N] ")  # stderr: stdout may be a file of the log
    sys.stderr.flush()
    try:
        answer = sys.stdin.readline()
    except KeyboardInterrupt:
        return False
    return answer.strip().lower() in ("y", "yes")


def _download(status: dict[str, Any], out: Path, namespace: str, name: str, destination: str | None) -> None:
    """The output files of an s3:// destination into `out`; for a PVC, where they are. Only the files the
    training stored (under <destination>/<namespace>/<name>/): another s3:// or pvc:// string of the output is
    text the model returned, not fetched with the user's credentials."""
    from ..uploads import TransferError, download, s3_client

    uris, others = own_files(output_uris(status.get("output")) or output_uris(status.get("weights")),
                             namespace, name, destination)
    for uri in others[:MAX_SKIPPED_SHOWN]:
        print(f"not downloading {uri[:300]}: the output names it, but it is not a file Training {name} stored "
              f"(under <destination>/{namespace}/{name}/)", file=sys.stderr)
    if len(others) > MAX_SKIPPED_SHOWN:
        print(f"not downloading {len(others) - MAX_SKIPPED_SHOWN} more such URIs", file=sys.stderr)
    if not uris:
        print("the training stored no output files", file=sys.stderr)
        return
    on_pvc = [uri for uri in uris if uri.startswith("pvc://")]
    for uri in on_pvc:
        claim, _, path = uri[len("pvc://"):].partition("/")
        print(f"{uri} is on the PersistentVolumeClaim {claim} at /{path} (mount the claim to read it)",
              file=sys.stderr)
    wanted = [uri for uri in uris if uri.startswith("s3://")]
    if not wanted:
        return
    root = out.resolve()
    client = s3_client()
    for uri, relative in local_paths(wanted).items():
        target = root.joinpath(*relative)
        if not target.resolve().is_relative_to(root):
            raise UsageError(f"{uri}: refusing to write outside {out}")
        try:
            download(client, uri, target)
        except TransferError as error:
            raise UnavailableError(f"downloading the output: {error}") from None
        except OSError as error:  # OUT or a folder in it is a file, a name is taken by a folder, the disk is full
            raise UsageError(f"-o {out}: cannot write {uri}'s file {target}: {error.strerror or error}") from None
        print(f"downloaded {uri} to {os.path.relpath(target)}", file=sys.stderr)
