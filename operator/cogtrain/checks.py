"""The checks a Training passes before any Job exists: one pure function for the webhook and the operator.

The admission webhook runs it at `kubectl apply` and `reconcile` runs it again before it builds
the Job (the webhook may be off, or may have admitted while the registry was down), so both
refuse the same Trainings with the same messages.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .api import Training
from .contract import Reason
from .resolver import ResolvedModel
from .settings import Settings
from .validation import Problem, validate_input


@dataclass(frozen=True)
class Checked:
    """The outcome: problems (each naming its field), warnings, and the input to send the model."""

    problems: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    input: dict[str, Any] = field(default_factory=dict)
    reason: Reason = Reason.INPUTS_VALID
    secret_list_names: list[str] = field(default_factory=list)  # Secret inputs that take a list of strings

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
    reason = Reason.INPUTS_VALID
    if model is not None:
        result = validate_input(model.schema, spec.input, list(spec.secret_inputs or {}))
        problems += result.problems
        warnings += result.warnings
        values = result.input
        secret_lists = list(result.secret_list_names)
        if result.problems:
            reason = Reason.INVALID_INPUT
    if not (spec.destination or settings.default_destination):
        problems.append(Problem(
            "spec.destination",
            "not set and the operator has no default destination (set it to s3://BUCKET/PREFIX/ or pvc://CLAIM/PATH)",
        ))
        reason = reason if problems[:-1] else Reason.NO_DESTINATION
    return Checked(problems, warnings, values, reason, secret_lists)
