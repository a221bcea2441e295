"""From what the cluster shows (the Job, its Pods, the driver's report) to the Training's status.

Pure functions: `observe` classifies a Job and its Pods into a phase with one clear reason and
message; `advance` merges that into the current status without ever regressing it (finished
stays finished), and `conditions` writes the kstatus-compatible conditions.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from .api import Phase
from .jobs import DRIVER_CONTAINER, KUEUE_QUEUE_LABEL, MODEL_CONTAINER

TERMINAL = (Phase.SUCCEEDED, Phase.FAILED, Phase.CANCELED)
_PULL_RETRYING = ("ErrImagePull", "ImagePullBackOff")
_PULL_FINAL = ("InvalidImageName", "ErrImageNeverPull")
_CONFIG_ERRORS = ("CreateContainerConfigError", "CreateContainerError", "RunContainerError")


class DriverReport(BaseModel):
    """The driver's termination message (docs/driver.md): JSON, at most 4096 bytes."""

    model_config = ConfigDict(extra="ignore")

    status: str
    output: Any = None
    weights: str | None = None
    metrics: dict[str, Any] | None = None
    reason: str | None = None
    message: str | None = None


def _time(value: Any) -> str | None:
    """RFC 3339 in UTC with a Z, however the API client rendered it (it may write +00:00)."""
    if not value:
        return None
    text = str(value)
    return text[:-6] + "Z" if text.endswith("+00:00") else text


@dataclass(frozen=True)
class Observation:
    """The Training's state as the Job and Pods show it."""

    phase: Phase
    reason: str
    message: str
    start_time: str | None = None
    completion_time: str | None = None
    output: Any = None
    weights: str | None = None
    metrics: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "start_time", _time(self.start_time))
        object.__setattr__(self, "completion_time", _time(self.completion_time))


def _conditions(obj: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    return {c.get("type", ""): c for c in (obj.get("status") or {}).get("conditions") or []}


def _statuses(pod: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    status = pod.get("status") or {}
    found = {}
    for key in ("initContainerStatuses", "containerStatuses"):
        for entry in status.get(key) or []:
            found[entry.get("name", "")] = entry
    return found


def driver_report(pod: Mapping[str, Any]) -> DriverReport | None:
    """The driver's report from its termination message, if it wrote one."""
    state = _statuses(pod).get(DRIVER_CONTAINER, {})
    terminated = (state.get("state") or {}).get("terminated") or (state.get("lastState") or {}).get("terminated")
    message = (terminated or {}).get("message")
    if not message:
        return None
    try:
        return DriverReport.model_validate(json.loads(message))
    except (ValueError, ValidationError, TypeError):
        return None


def _newest(pods: Iterable[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    ordered = sorted(pods, key=lambda p: (p.get("metadata") or {}).get("creationTimestamp") or "")
    return ordered[-1] if ordered else None


def _terminated(pod: Mapping[str, Any], container: str) -> Mapping[str, Any] | None:
    state = _statuses(pod).get(container, {})
    return (state.get("state") or {}).get("terminated") or (state.get("lastState") or {}).get("terminated")


def _waiting(pod: Mapping[str, Any]) -> tuple[str, Mapping[str, Any]] | None:
    for name, state in _statuses(pod).items():
        waiting = (state.get("state") or {}).get("waiting")
        if waiting and waiting.get("reason") not in (None, "PodInitializing", "ContainerCreating"):
            return name, waiting
    return None


def _memory_limit(pod: Mapping[str, Any], container: str) -> str:
    spec = pod.get("spec") or {}
    for entry in (spec.get("initContainers") or []) + (spec.get("containers") or []):
        if entry.get("name") == container:
            limit = ((entry.get("resources") or {}).get("limits") or {}).get("memory")
            return f" (memory limit {limit})" if limit else ""
    return ""


def explain_pod_failure(pod: Mapping[str, Any]) -> tuple[str, str]:
    """Why a training Pod failed: (reason, one sentence)."""
    report = driver_report(pod)
    if report is not None and report.status == "failed":
        return report.reason or "TrainingFailed", report.message or "the training failed"
    for container, who in ((MODEL_CONTAINER, "the model container"), (DRIVER_CONTAINER, "the driver container")):
        terminated = _terminated(pod, container)
        if terminated and terminated.get("reason") == "OOMKilled":
            return "OOMKilled", f"{who} ran out of memory and was killed{_memory_limit(pod, container)}"
    status = pod.get("status") or {}
    if status.get("reason") == "Evicted":
        return "Evicted", f"the training Pod was evicted: {status.get('message') or 'no message'}"
    waiting = _waiting(pod)
    if waiting and waiting[1].get("reason") in _PULL_RETRYING + _PULL_FINAL:
        return "ImagePullFailed", f"the {waiting[0]} image could not be pulled: {waiting[1].get('message', '')}".strip()
    driver = _terminated(pod, DRIVER_CONTAINER)
    if driver is not None:
        return "DriverFailed", f"the driver exited with code {driver.get('exitCode')} without reporting why"
    return "PodFailed", status.get("message") or "the training Pod failed"


def observe(job: Mapping[str, Any] | None, pods: Iterable[Mapping[str, Any]],
            active_deadline_seconds: int | None = None) -> Observation:
    """Classify the Job and its Pods (those labelled for this Training)."""
    if job is None:
        return Observation(Phase.PENDING, "JobMissing", "the training Job does not exist (yet)")
    pods = list(pods)
    conditions = _conditions(job)
    job_status = job.get("status") or {}

    def is_true(kind: str) -> Mapping[str, Any] | None:
        condition = conditions.get(kind)
        return condition if condition and condition.get("status") == "True" else None

    succeeded_pods = [p for p in pods if (p.get("status") or {}).get("phase") == "Succeeded"]
    failed_pods = [p for p in pods if (p.get("status") or {}).get("phase") == "Failed"]
    start = job_status.get("startTime")

    if complete := is_true("Complete") or is_true("SuccessCriteriaMet"):
        finished = job_status.get("completionTime") or complete.get("lastTransitionTime")
        report = next((r for r in map(driver_report, succeeded_pods) if r is not None), None)
        if report is None or report.status != "succeeded":
            return Observation(Phase.FAILED, "DriverResultMissing",
                               "the Job completed but the driver reported no result", start, finished)
        return Observation(Phase.SUCCEEDED, "Succeeded", "the training succeeded", start, finished,
                           report.output, report.weights or weights_of(report.output), report.metrics)
    if failed := is_true("Failed") or is_true("FailureTarget"):
        finished = failed.get("lastTransitionTime")
        reason = failed.get("reason") or "Failed"
        if reason == "DeadlineExceeded":
            limit = f" ({active_deadline_seconds} s)" if active_deadline_seconds else ""
            return Observation(Phase.FAILED, "DeadlineExceeded",
                               f"the training ran longer than activeDeadlineSeconds{limit} and was stopped",
                               start, finished)
        pod = _newest(failed_pods) or _newest(pods)
        if pod is not None:
            why, message = explain_pod_failure(pod)
            return Observation(Phase.FAILED, why, message, start, finished)
        return Observation(Phase.FAILED, reason, failed.get("message") or "the training Job failed", start, finished)

    suspended = is_true("Suspended") or (job.get("spec") or {}).get("suspend")
    if suspended:
        queue = ((job.get("metadata") or {}).get("labels") or {}).get(KUEUE_QUEUE_LABEL)
        held = f"; Kueue queue {queue} admits it when quota is available" if queue else ""
        return Observation(Phase.PENDING, "Suspended", f"the training Job is suspended{held}")

    pod = _newest(p for p in pods if p not in failed_pods) or None
    if pod is None:
        if failed_pods:
            why, message = explain_pod_failure(_newest(failed_pods) or {})
            return Observation(Phase.PENDING, "Retrying", f"retrying after a failed attempt: {message}", start)
        return Observation(Phase.PENDING, "JobCreated", "waiting for the training Pod to be created")
    status = pod.get("status") or {}
    scheduled = _conditions(pod).get("PodScheduled")
    if scheduled and scheduled.get("status") == "False":
        return Observation(Phase.PENDING, scheduled.get("reason") or "Unschedulable",
                           scheduled.get("message") or "the training Pod cannot be scheduled yet")
    waiting = _waiting(pod)
    if waiting is not None:
        container, state = waiting
        reason, message = state.get("reason", ""), state.get("message") or ""
        if reason in _PULL_FINAL:
            return Observation(Phase.FAILED, "ImagePullFailed",
                               f"the {container} image cannot be pulled: {reason}: {message}".rstrip(": "))
        if reason in _PULL_RETRYING:
            return Observation(Phase.PENDING, "ImagePullBackOff",
                               f"the {container} image cannot be pulled yet: {message or reason}")
        if reason in _CONFIG_ERRORS:
            return Observation(Phase.PENDING, reason, f"the {container} container cannot start: {message or reason}")
    driver = (_statuses(pod).get(DRIVER_CONTAINER, {}).get("state") or {}).get("running")
    if status.get("phase") == "Running" and driver is not None:
        return Observation(Phase.RUNNING, "Running", "the training is running",
                           driver.get("startedAt") or status.get("startTime") or start)
    return Observation(Phase.PENDING, "Starting",
                       "the training Pod is starting (pulling images, starting the model server)")


def weights_of(output: Any) -> str | None:
    """The weights' URI: the output when it is one file, else its `weights` field, else its only file."""
    if isinstance(output, str):
        return output
    if isinstance(output, Mapping):
        weights = output.get("weights")
        if isinstance(weights, str):
            return weights
        files = [v for k, v in output.items() if k != "$ref" and isinstance(v, str) and "://" in v]
        return files[0] if len(files) == 1 else None
    if isinstance(output, list) and len(output) == 1 and isinstance(output[0], str):
        return output[0]
    return None


# --- status -----------------------------------------------------------------------------------


def _condition(kind: str, status: bool | None, reason: str, message: str, generation: int | None,
               previous: Mapping[str, Mapping[str, Any]], now: str) -> dict[str, Any]:
    value = "Unknown" if status is None else ("True" if status else "False")
    before = previous.get(kind) or {}
    changed = before.get("status") != value
    return {
        "type": kind,
        "status": value,
        "reason": reason,
        "message": message,
        "lastTransitionTime": now if changed else before.get("lastTransitionTime", now),
        "observedGeneration": generation,
    }


def conditions(phase: Phase, reason: str, message: str, generation: int | None,
               previous: Iterable[Mapping[str, Any]], now: datetime | str,
               validated: tuple[bool | None, str, str] | None = None) -> list[dict[str, Any]]:
    """kstatus conditions (Ready, Reconciling, Stalled) plus Validated, Succeeded, Failed."""
    stamp = now if isinstance(now, str) else _stamp(now)
    before = {c.get("type", ""): c for c in previous}
    out = []
    if validated is not None:
        out.append(_condition("Validated", validated[0], validated[1], validated[2], generation, before, stamp))
    elif "Validated" in before:
        out.append(dict(before["Validated"]))
    terminal = phase in TERMINAL
    out.append(_condition("Ready", phase is Phase.SUCCEEDED, reason, message, generation, before, stamp))
    out.append(_condition("Reconciling", not terminal, reason if not terminal else phase.value,
                          message if not terminal else f"the training is {phase.value.lower()}",
                          generation, before, stamp))
    out.append(_condition("Stalled", phase is Phase.FAILED, reason if phase is Phase.FAILED else "NotStalled",
                          message if phase is Phase.FAILED else "", generation, before, stamp))
    if terminal:
        out.append(_condition("Succeeded", phase is Phase.SUCCEEDED, reason, message, generation, before, stamp))
        out.append(_condition("Failed", phase is Phase.FAILED, reason, message, generation, before, stamp))
    return out


def _stamp(now: datetime) -> str:
    return now.isoformat().replace("+00:00", "Z")


def status_patch(phase: Phase, reason: str, message: str, generation: int | None,
                 previous: Iterable[Mapping[str, Any]], now: datetime | str,
                 validated: tuple[bool | None, str, str] | None = None, **fields: Any) -> dict[str, Any]:
    """The status for a phase: `error` when Failed, `completionTime` when finished, and the conditions."""
    stamp = now if isinstance(now, str) else _stamp(now)
    patch: dict[str, Any] = {"phase": phase.value, "observedGeneration": generation, **fields}
    if phase is Phase.FAILED:
        patch["error"] = message
    if phase in TERMINAL:
        patch.setdefault("completionTime", stamp)
    patch["conditions"] = conditions(phase, reason, message, generation, previous, stamp, validated)
    return patch


def advance(current: Mapping[str, Any] | None, observation: Observation, generation: int | None,
            now: datetime) -> dict[str, Any] | None:
    """The status patch that moves `current` to what was observed, or None when nothing changes.

    Finished (Succeeded, Failed, Canceled) is final; Running only goes back to Pending when the
    Job is suspended or retried; the start time is kept from the first time it was seen.
    """
    current = dict(current or {})
    phase = Phase(current["phase"]) if current.get("phase") in Phase._value2member_map_ else None
    if phase in TERMINAL:
        return None
    new = observation.phase
    if phase is Phase.RUNNING and new is Phase.PENDING and observation.reason not in ("Suspended", "Retrying"):
        return None
    fields: dict[str, Any] = {}
    start = current.get("startTime") or observation.start_time
    if new is not Phase.PENDING and start:
        fields["startTime"] = start
    if new is Phase.SUCCEEDED:
        fields["output"] = observation.output
        if observation.weights:
            fields["weights"] = observation.weights
        if observation.metrics:
            fields["metrics"] = observation.metrics
    # Finished: stamped with the Job's own finishing time, so two writers observing the same end
    # write the same status.
    stamp = (observation.completion_time or _stamp(now)) if new in TERMINAL else now
    patch = status_patch(new, observation.reason, observation.message, generation,
                         current.get("conditions") or [], stamp, **fields)
    unchanged = all(current.get(k) == v for k, v in patch.items() if k != "conditions") and [
        (c["type"], c["status"], c["reason"], c["message"]) for c in patch["conditions"]] == [
        (c.get("type"), c.get("status"), c.get("reason"), c.get("message")) for c in current.get("conditions") or []]
    return None if unchanged else patch
