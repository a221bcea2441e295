"""What the validating admission webhook decides about a Training (pure: no API, no I/O of its own).

On CREATE a Training is checked like the operator checks it before it makes a Job: its spec
against the resource's types, then its inputs against the model's own training schema, every
problem in one message so `kubectl apply` shows them all. The schema lookup is bounded by the
caller; when it cannot be done in time (registry slow or down) the decision follows the webhook's
failurePolicy: `Ignore` admits with a warning (the operator checks again before any GPU is used),
`Fail` denies. On UPDATE only `spec.cancel` and `spec.suspend` may change.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import pydantic

from . import api, notify
from .checks import check
from .contract import MESSAGE_LIMIT
from .registry import RegistryError
from .resolver import ResolvedModel
from .settings import Settings
from .validation import model_problems, summarize

FailurePolicy = Literal["Ignore", "Fail"]


class LookupTimeout(Exception):
    """The model's schema could not be read within the admission time budget."""


@dataclass(frozen=True)
class Decision:
    allowed: bool
    decision: str  # for metrics: allowed, denied, unchecked
    message: str = ""
    warnings: list[str] = field(default_factory=list)


def _name(body: Mapping[str, Any]) -> str:
    meta = body.get("metadata") or {}
    return f"Training {meta.get('namespace') or ''}/{meta.get('name') or meta.get('generateName') or ''}".rstrip("/")


def review_create(
    body: Mapping[str, Any],
    resolve: Callable[[str], ResolvedModel],
    failure_policy: FailurePolicy = "Ignore",
    settings: Settings = Settings(),  # noqa: B008  (frozen: one shared default is safe)
) -> Decision:
    """Admit a new Training whose spec is well-formed and whose inputs the model accepts.

    `resolve(image)` returns the model's schema, or raises RegistryError or LookupTimeout.
    """
    try:
        training = api.Training.model_validate(dict(body))
    except pydantic.ValidationError as error:
        message = f"{_name(body)} is invalid: " + summarize(model_problems(error), MESSAGE_LIMIT)
        return Decision(False, "denied", message)
    spec = training.spec
    problems = [str(problem) for problem in check(training, None, settings).problems]
    try:
        model = resolve(spec.model)
    except (LookupTimeout, RegistryError) as error:
        retryable = isinstance(error, LookupTimeout) or error.retryable
        reason = str(error) if isinstance(error, RegistryError) else f"reading the schema of {spec.model}: {error}"
        if not retryable:
            problems.insert(0, f"spec.model: {reason}")
        if problems:
            return Decision(False, "denied", f"{_name(body)} is invalid: " + summarize(problems, MESSAGE_LIMIT))
        if failure_policy == "Fail":
            return Decision(False, "denied", f"cannot check the inputs of {_name(body)} now: {reason}; try again")
        return Decision(True, "unchecked", warnings=[
            f"the inputs were not checked ({reason}); the operator checks them before the training starts"
        ] + webhook_warnings(spec, settings))
    checked = check(training, model, settings)
    warnings = [str(warning) for warning in checked.warnings] + webhook_warnings(spec, settings)
    if not checked.ok:
        message = f"{_name(body)} is invalid for {model.pinned}: " + summarize(checked.problems, MESSAGE_LIMIT)
        return Decision(False, "denied", message, warnings)
    return Decision(True, "allowed", warnings=warnings)


def webhook_warnings(spec: api.TrainingSpec, settings: Settings) -> list[str]:
    """A webhook the operator's settings will not send to: admitted (it never changes the training), with
    a warning. Only the URL's form and host name are judged here; its addresses are checked when sending."""
    if spec.webhook is None:
        return []
    try:
        notify.target(spec.webhook, settings.destinations())
    except notify.Refused as refused:
        return [f"{refused}; the training runs, but no webhook will be sent"]
    return []


def deny_access(body: Mapping[str, Any], refused: list[str]) -> Decision:
    """A create denied because its creator lacks permissions the Training would use (see `access`)."""
    return Decision(False, "denied", f"{_name(body)} is not allowed: " + summarize(refused, MESSAGE_LIMIT))


def review_update(old: Mapping[str, Any], new: Mapping[str, Any]) -> Decision:
    """Only spec.cancel and spec.suspend may change after creation, and a cancel cannot be undone."""
    old_spec, new_spec = dict(old.get("spec") or {}), dict(new.get("spec") or {})
    changed = sorted(
        key for key in set(old_spec) | set(new_spec)
        if key not in api.MUTABLE_SPEC_FIELDS and old_spec.get(key) != new_spec.get(key)
    )
    problems = [
        f"spec.{key}: cannot be changed after creation (only spec.cancel and spec.suspend may change; "
        f"delete and re-create the Training to change spec.{key})"
        for key in changed
    ]
    if old_spec.get("cancel") is True and new_spec.get("cancel") is not True:
        problems.append("spec.cancel: a canceled Training cannot be resumed; create a new Training")
    if problems:
        return Decision(False, "denied", f"{_name(new)}: " + summarize(problems, MESSAGE_LIMIT))
    return Decision(True, "allowed")
