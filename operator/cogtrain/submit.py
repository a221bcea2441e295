"""What `cogtrain train` and its companions build and show, without I/O: the Training from the command's
arguments, its generated name, where an `@FILE` input is uploaded, where `-o` writes each output file,
the `get`/`list` table, the model's lines of a driver log and the outcome's exit code and sentence.

Pure, so each piece is tested table-driven; the commands do the talking to the cluster, registry and S3.
"""

from __future__ import annotations

import copy
import posixpath
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from . import api
from .progress import ESCAPE, MARKER
from .reference import ReferenceError, parse_reference
from .schema import InputSpec, TrainingSchema, cli_value

NAME_MAX = 63  # a Training's name is a Pod label value (cog.run/training): at most 63 characters
SUFFIX_LENGTH = 5
_NAME = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
FINISHED = {api.Phase.SUCCEEDED.value, api.Phase.FAILED.value, api.Phase.CANCELED.value}


class ArgumentError(ValueError):
    """An argument the command cannot use; the message names it and says what would do."""


def short_name(model: str) -> str:
    """The last part of the image's repository as a DNS label (`r8.im/acme/sdxl:1` → `sdxl`)."""
    try:
        repository = parse_reference(model).repository
    except ReferenceError:  # the registry lookup says what is wrong with it; a name is still needed
        repository = model.split("@", 1)[0].rsplit("/", 1)[-1].split(":", 1)[0]
    label = re.sub(r"[^a-z0-9-]+", "-", repository.rsplit("/", 1)[-1].lower()).strip("-")
    return label[: NAME_MAX - SUFFIX_LENGTH - 1].rstrip("-") or "training"


def generated_name(model: str, suffix: str) -> str:
    """`<model-short-name>-<suffix>`: known before the Training is created, so inputs can be uploaded under it."""
    return f"{short_name(model)}-{suffix}"


@dataclass
class Inputs:
    """`-i` pairs parsed: the values to validate, and which of them are local files (path → input name)."""

    values: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)


def takes_file(spec: InputSpec) -> bool:
    """Cog's Path/File, or a list of them."""
    value = spec.value
    return value.is_file or (value.type == "array" and value.items is not None and value.items.is_file)


def parse_pairs(schema: TrainingSchema, pairs: Iterable[str], local_file: Callable[[str], str]) -> Inputs:
    """`-i NAME=VALUE` and `-i NAME=@FILE` (`local_file` turns FILE into an absolute path or raises).

    A Secret input is refused: its value would be stored in the Training and shown by every `get`."""
    parsed = Inputs()
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        if not sep or not name:
            raise ArgumentError(f"-i {pair!r}: expected NAME=VALUE or NAME=@FILE")
        spec = schema.inputs.get(name)
        if spec is not None and spec.secret:
            raise ArgumentError(
                f"-i {name}: {name} is a Secret input, whose value must not be stored in the Training; put it in a "
                f"Kubernetes Secret (kubectl create secret generic SECRET --from-literal=KEY=...) and pass "
                f"--secret-input {name}=SECRET:KEY"
            )
        if raw.startswith("@"):
            if spec is not None and not takes_file(spec):
                raise ArgumentError(
                    f"-i {name}=@{raw[1:]}: {name} takes {spec.value.describe()}, not a file; "
                    "pass its value without @"
                )
            try:
                value: Any = local_file(raw[1:])
            except ArgumentError as error:
                raise ArgumentError(f"-i {name}=@{raw[1:]}: {error}") from None
            parsed.files[value] = name
        else:
            value = cli_value(spec, raw)
        if spec is not None and spec.value.type == "array":
            items = value if isinstance(value, list) else [value]
            parsed.values[name] = [*parsed.values.get(name, []), *items]
        else:
            parsed.values[name] = value
    return parsed


def parse_secret_inputs(pairs: Iterable[str]) -> dict[str, dict[str, str]]:
    """`--secret-input NAME=SECRET:KEY` as spec.secretInputs."""
    found = {}
    for pair in pairs:
        name, _, ref = pair.partition("=")
        secret, _, key = ref.partition(":")
        if not (name and secret and key):
            raise ArgumentError(f"--secret-input {pair!r}: expected NAME=SECRET:KEY (a Secret's key, in the namespace)")
        found[name] = {"name": secret, "key": key}
    return found


def upload_keys(destination: str | None, namespace: str, training: str,
                paths: Iterable[str]) -> dict[str, tuple[str, str]]:
    """Where each local file goes: (bucket, key) under `<destination>/<namespace>/<training>/inputs/<file name>`,
    beside the weights, inside the namespace's own area (the only keys of the operator's default destination its
    Trainings may read); a file name that repeats gets `-2`, `-3` ... before its extension."""
    paths = list(paths)
    if not paths:
        return {}
    if not destination or not destination.startswith("s3://"):
        raise ArgumentError(
            f"-i NAME=@FILE uploads the file to S3, so it needs an s3:// destination "
            f"(--destination s3://BUCKET/PREFIX/), not {destination or 'the operator default'}"
        )
    bucket, _, prefix = destination[len("s3://") :].partition("/")
    base = "/".join([*(p for p in prefix.split("/") if p), namespace, training, "inputs"])
    taken: set[str] = set()
    keys = {}
    for path in paths:
        name = posixpath.basename(path.replace("\\", "/")) or "file"
        stem, dot, extension = name.partition(".")
        candidate, n = name, 1
        while candidate in taken:
            n += 1
            candidate = f"{stem}-{n}{dot}{extension}"
        taken.add(candidate)
        keys[path] = (bucket, f"{base}/{candidate}")
    return keys


def with_uploads(values: Mapping[str, Any], uris: Mapping[str, str]) -> dict[str, Any]:
    """The inputs with each local file's path replaced by its uploaded URI."""

    def swap(value: Any) -> Any:
        if isinstance(value, list):
            return [swap(item) for item in value]
        return uris.get(value, value) if isinstance(value, str) else value

    return {name: swap(value) for name, value in values.items()}


def build_training(
    base: Mapping[str, Any] | None,
    *,
    model: str | None,
    name: str,
    namespace: str,
    inputs: Mapping[str, Any],
    secret_inputs: Mapping[str, Mapping[str, str]],
    destination: str | None,
) -> dict[str, Any]:
    """The Training to create: a manifest's (`-f`) spec, its name, labels and annotations, with the arguments
    over them (`-i` overrides one input, keeping the manifest's others)."""
    if not _NAME.fullmatch(name):
        raise ArgumentError(f"{name!r} cannot name a Training: use at most {NAME_MAX} lowercase letters, digits "
                            "and '-', starting and ending with a letter or digit")
    base = copy.deepcopy(dict(base or {}))
    spec = dict(base.get("spec") or {})
    if model:
        spec["model"] = model
    if not spec.get("model"):
        raise ArgumentError("no model: pass IMAGE, or -f a Training manifest with spec.model")
    merged_inputs = {**(spec.get("input") or {}), **inputs}
    for secret_name in secret_inputs:
        merged_inputs.pop(secret_name, None)
    if merged_inputs:
        spec["input"] = merged_inputs
    if secret_inputs or spec.get("secretInputs"):
        spec["secretInputs"] = {**(spec.get("secretInputs") or {}), **secret_inputs}
    if destination:
        spec["destination"] = destination
    old_meta = base.get("metadata") or {}
    metadata: dict[str, Any] = {"name": name, "namespace": namespace}
    metadata.update({k: old_meta[k] for k in ("labels", "annotations") if old_meta.get(k)})
    return {"apiVersion": api.API_VERSION, "kind": api.KIND, "metadata": metadata, "spec": spec}


def output_uris(output: Any) -> list[str]:
    """Every stored file a Training's status.output names (a URI, a list, an object such as TrainingOutput)."""
    if isinstance(output, str):
        return [output] if output.startswith(("s3://", "pvc://")) else []
    if isinstance(output, list):
        return [uri for item in output for uri in output_uris(item)]
    if isinstance(output, dict):
        return [uri for item in output.values() for uri in output_uris(item)]
    return []


def own_files(uris: Iterable[str], namespace: str, name: str, destination: str | None) -> tuple[list[str], list[str]]:
    """The output files the training stored itself, and the other URIs its output names.

    The driver stores a training's files under `<destination>/<namespace>/<name>/`; any other `s3://` string in
    status.output is text the model returned, which `-o` must not fetch with the user's credentials (another
    namespace's weights, another bucket's objects). With the destination unknown (the operator's default) the
    key must still hold `<namespace>/<name>/` as whole segments."""
    ours: list[str] = []
    others: list[str] = []
    folder = None
    if destination and destination.startswith("s3://"):
        bucket, _, prefix = destination[len("s3://"):].partition("/")
        folder = "/".join([bucket, *(p for p in prefix.split("/") if p), namespace, name]) + "/"
    for uri in dict.fromkeys(uris):
        path = uri.split("://", 1)[1] if "://" in uri else ""
        if folder is not None:
            mine = path.startswith(folder) and len(path) > len(folder)
        else:
            parts = path.split("/")[1:-1]  # the key's folders: not the bucket, not the file's name
            mine = any(parts[i : i + 2] == [namespace, name] for i in range(len(parts) - 1))
        (ours if mine else others).append(uri)
    return ours, others


def local_paths(uris: Iterable[str]) -> dict[str, tuple[str, ...]]:
    """Where under OUT each stored file goes: its path below the folder all of them share (one file: its name).
    A path that would leave OUT (`..`, empty parts) is refused."""
    split = {uri: uri.split("://", 1)[1].split("/") for uri in dict.fromkeys(uris)}
    folders = [parts[:-1] for parts in split.values()]
    common = 0
    while folders and all(len(f) > common and f[common] == folders[0][common] for f in folders):
        common += 1
    paths = {}
    for uri, parts in split.items():
        relative = tuple(parts[common:])
        if not relative or any(part in ("", ".", "..") or "\\" in part for part in relative):
            raise ArgumentError(f"{uri}: refusing to write it (its name would leave the output folder)")
        paths[uri] = relative
    return paths


def model_line(line: str) -> str | None:
    """A driver log line as the model printed it, or None for the driver's progress records."""
    if line.startswith(MARKER):
        return None
    return line[len(ESCAPE) :] if line.startswith(ESCAPE + MARKER) else line


def progress_text(progress: Mapping[str, Any] | None) -> str | None:
    """`progress 30% (3/10)`, or None when the status has none."""
    if not progress or progress.get("percent") is None:
        return None
    steps = f" ({progress['current']}/{progress['total']})" if progress.get("total") else ""
    return f"progress {float(progress['percent']):.0f}%{steps}"


def outcome(name: str, status: Mapping[str, Any]) -> tuple[bool, str]:
    """Whether a finished Training succeeded, and one sentence saying how it ended."""
    phase = status.get("phase")
    if phase == api.Phase.SUCCEEDED.value:
        return True, f"Training {name} succeeded; weights: {status.get('weights') or 'none'}"
    if phase == api.Phase.CANCELED.value:
        return False, f"Training {name} was canceled"
    return False, f"Training {name} failed: {status.get('error') or 'no reason given'}"


def age(created: str | None, now: datetime) -> str:
    """kubectl's compact age: 45s, 12m, 3h, 5d."""
    if not created:
        return "<unknown>"
    seconds = max(0, int((now - datetime.fromisoformat(created.replace("Z", "+00:00"))).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def table(trainings: Iterable[Mapping[str, Any]], now: datetime, namespaces: bool = False) -> str:
    """`kubectl get trainings` as the CRD's printer columns show it (with NAMESPACE for -A)."""
    header = [*(["NAMESPACE"] if namespaces else []), "NAME", "PHASE", "PROGRESS", "RESTARTS", "MODEL", "WEIGHTS",
              "AGE"]
    rows = [header]
    for training in trainings:
        meta, spec, status = (training.get(k) or {} for k in ("metadata", "spec", "status"))
        percent = (status.get("progress") or {}).get("percent")
        rows.append([
            *([meta.get("namespace") or ""] if namespaces else []),
            meta.get("name") or "", status.get("phase") or "Pending",
            f"{float(percent):.0f}%" if percent is not None else "", str(status.get("restarts") or 0),
            spec.get("model") or "", status.get("weights") or "", age(meta.get("creationTimestamp"), now),
        ])
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "".join("   ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() + "\n" for row in rows)
