"""The checks a Training passes before any Job exists: one pure function for the webhook and the operator.

The admission webhook runs it at `kubectl apply` and `reconcile` runs it again before it builds
the Job (the webhook may be off, or may have admitted while the registry was down), so both
refuse the same Trainings with the same messages.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .api import Training
from .contract import Reason, storage_refs
from .resolver import ResolvedModel
from .settings import Settings
from .validation import Problem, validate_input

MAX_INPUT_FILES = 256  # s3:// and pvc:// files one Training reads: the driver checks and serves each
MAX_INPUT_CLAIMS = 16  # claims those name: each is a volume of the Pod


@dataclass(frozen=True)
class Checked:
    """The outcome: problems (each naming its field), warnings, and the input to send the model."""

    problems: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    input: dict[str, Any] = field(default_factory=dict)
    reason: Reason = Reason.INPUTS_VALID
    secret_list_names: list[str] = field(default_factory=list)  # Secret inputs that take a list of strings
    storage_input_names: list[str] = field(default_factory=list)  # file inputs naming s3:// or pvc:// files

    @property
    def ok(self) -> bool:
        return not self.problems


def check(training: Training, model: ResolvedModel | None, settings: Settings) -> Checked:
    """What is wrong with `training` for `model`; without a model (not resolved yet) only what needs none."""
    spec = training.spec
    problems: list[Problem] = []
    warnings: list[Problem] = []
    values: dict[str, Any] = {}
    secret_lists: list[str] = []
    storage: list[str] = []
    reason = Reason.INPUTS_VALID
    if model is not None:
        result = validate_input(model.schema, spec.input, list(spec.secret_inputs or {}))
        problems += result.problems
        warnings += result.warnings
        values = result.input
        secret_lists = list(result.secret_list_names)
        storage = list(result.storage_input_names)
        problems += outside_namespace_area(training, {name: values[name] for name in storage}, settings)
        problems += too_many_files({name: values[name] for name in storage})
        if problems:
            reason = Reason.INVALID_INPUT
            values, storage = {}, []
    if not (spec.destination or settings.default_destination):
        problems.append(Problem(
            "spec.destination",
            "not set and the operator has no default destination (set it to s3://BUCKET/PREFIX/ or pvc://CLAIM/PATH)",
        ))
        reason = reason if problems[:-1] else Reason.NO_DESTINATION
    return Checked(problems, warnings, values, reason, secret_lists, storage)


def too_many_files(storage: dict[str, Any]) -> list[Problem]:
    """Bounds on cluster-storage inputs that hold with the webhook off too (its access checks stop at 63)."""
    refs = [ref for value in storage.values() for ref in storage_refs(value)]
    claims = {ref[len("pvc://"):].split("/", 1)[0] for ref in refs if ref.startswith("pvc://")}
    problems = []
    if len(refs) > MAX_INPUT_FILES:
        problems.append(Problem("spec.input", f"names {len(refs)} s3:// and pvc:// files; at most {MAX_INPUT_FILES} "
                                "(pack them into one archive and pass that)"))
    if len(claims) > MAX_INPUT_CLAIMS:
        problems.append(Problem("spec.input", f"reads files from {len(claims)} PersistentVolumeClaims; at most "
                                f"{MAX_INPUT_CLAIMS} (each is a volume of the training Pod; put the files on fewer)"))
    return problems


def reads_inputs_with_operator_secret(training: Training, settings: Settings) -> bool:
    """Whether s3:// inputs would be read with the operator's default destination Secret (an admin's
    credentials, shared by every namespace) rather than with credentials the Training's author chose."""
    spec = training.spec
    return (
        spec.input_secret_ref is None
        and spec.destination is None
        and spec.destination_secret_ref is None
        and bool(settings.default_destination_secret)
        and (settings.default_destination or "").startswith("s3://")
    )


def namespace_area(training: Training, settings: Settings) -> str:
    """`s3://BUCKET/PREFIX/<namespace>/`: the part of the default destination that belongs to the
    Training's namespace (its Trainings' outputs land there)."""
    bucket, _, prefix = (settings.default_destination or "")[len("s3://"):].partition("/")
    parts = [part for part in prefix.split("/") if part] + [training.metadata.namespace or ""]
    return f"s3://{bucket}/{'/'.join(parts)}/"


def outside_namespace_area(training: Training, storage: dict[str, Any], settings: Settings) -> list[Problem]:
    """s3:// inputs that the operator's credentials would read outside the namespace's own area.

    With those credentials one namespace could otherwise read another's data (its inputs, its
    weights); with a Secret the author names (and, by the admission webhook's check, may read)
    the store's own permissions decide.
    """
    if not reads_inputs_with_operator_secret(training, settings):
        return []
    area = namespace_area(training, settings)
    problems = []
    for name, value in storage.items():
        items = value if isinstance(value, list) else [value]
        for index, item in enumerate(items):
            if not isinstance(item, str) or not item.startswith("s3://") or item.startswith(area):
                continue
            where = f"input.{name}" + (f"[{index}]" if isinstance(value, list) else "")
            problems.append(Problem(where, (
                f"{item[:200]} is outside this namespace's area of the operator's default destination ({area}); "
                "the operator's credentials read s3:// inputs only there: put the file there, or name a Secret "
                "with credentials for it in spec.inputSecretRef"
            )))
    return problems
