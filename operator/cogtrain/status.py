"""From what the cluster shows (the Job, its Pods, the driver's report) to the Training's status.

Pure functions: `observe` classifies a Job and its Pods into a phase with one clear reason and
message; `advance` merges that into the current status without ever regressing it (finished
stays finished), and `conditions` writes the kstatus-compatible conditions.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .api import Phase
from .contract import DRIVER_CONTAINER, MESSAGE_LIMIT, MODEL_CONTAINER, DriverReport, Reason, weights_of
from .jobs import KUEUE_QUEUE_LABEL
from .progress import bounded_metrics, merge_patch

TERMINAL = (Phase.SUCCEEDED, Phase.FAILED, Phase.CANCELED)
_PULL_RETRYING = ("ErrImagePull", "ImagePullBackOff")
_PULL_FINAL = ("InvalidImageName", "ErrImageNeverPull")
_CONFIG_ERRORS = {
    "CreateContainerConfigError": Reason.CREATE_CONTAINER_CONFIG_ERROR,
    "CreateContainerError": Reason.CREATE_CONTAINER_ERROR,
    "RunContainerError": Reason.RUN_CONTAINER_ERROR,
}


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
    reason: Reason
    message: str
    start_time: str | None = None
    completion_time: str | None = None
    output: Any = None
    weights: str | None = None
    metrics: dict[str, Any] | None = None
    logs: str | None = None  # logs.txt at the destination, as the driver reported it
    log_tail: str | None = None  # a failure's last log lines

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
    return DriverReport.decode((terminated or {}).get("message"))


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


def explain_pod_failure(pod: Mapping[str, Any]) -> tuple[Reason, str]:
    """Why a training Pod failed: (reason, one sentence)."""
    report = driver_report(pod)
    if report is not None and report.status == "failed":
        return report.reason or Reason.TRAINING_FAILED, report.message or "the training failed"
    for container, who in ((MODEL_CONTAINER, "the model container"), (DRIVER_CONTAINER, "the driver container")):
        terminated = _terminated(pod, container)
        if terminated and terminated.get("reason") == "OOMKilled":
            return Reason.OOM_KILLED, f"{who} ran out of memory and was killed{_memory_limit(pod, container)}"
    status = pod.get("status") or {}
    if status.get("reason") == "Evicted":
        return Reason.EVICTED, f"the training Pod was evicted: {status.get('message') or 'no message'}"
    waiting = _waiting(pod)
    if waiting and waiting[1].get("reason") in _PULL_RETRYING + _PULL_FINAL:
        message = f"the {waiting[0]} image could not be pulled: {waiting[1].get('message', '')}".strip()
        return Reason.IMAGE_PULL_FAILED, message
    driver = _terminated(pod, DRIVER_CONTAINER)
    if driver is not None:
        return Reason.DRIVER_FAILED, f"the driver exited with code {driver.get('exitCode')} without reporting why"
    return Reason.POD_FAILED, status.get("message") or "the training Pod failed"


def observe(job: Mapping[str, Any] | None, pods: Iterable[Mapping[str, Any]],
            active_deadline_seconds: int | None = None) -> Observation:
    """Classify the Job and its Pods (those labelled for this Training)."""
    if job is None:
        return Observation(Phase.PENDING, Reason.JOB_MISSING, "the training Job does not exist (yet)")
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
            return Observation(Phase.FAILED, Reason.DRIVER_RESULT_MISSING,
                               "the Job completed but the driver reported no result", start, finished)
        return Observation(Phase.SUCCEEDED, Reason.SUCCEEDED, "the training succeeded", start, finished,
                           report.output, report.weights or weights_of(report.output), report.metrics, report.logs)
    if failed := is_true("Failed") or is_true("FailureTarget"):
        finished = failed.get("lastTransitionTime")
        pod = _newest(failed_pods) or _newest(pods)
        report = driver_report(pod) if pod is not None else None
        logs: dict[str, Any] = {"logs": report.logs, "log_tail": report.log_tail} if report is not None else {}
        if failed.get("reason") == "DeadlineExceeded":
            limit = f" ({active_deadline_seconds} s)" if active_deadline_seconds else ""
            return Observation(Phase.FAILED, Reason.DEADLINE_EXCEEDED,
                               f"the training ran longer than activeDeadlineSeconds{limit} and was stopped",
                               start, finished, **logs)
        if pod is not None:
            why, message = explain_pod_failure(pod)
            return Observation(Phase.FAILED, why, message, start, finished, **logs)
        return Observation(Phase.FAILED, Reason.FAILED, failed.get("message") or "the training Job failed",
                           start, finished)

    suspended = is_true("Suspended") or (job.get("spec") or {}).get("suspend")
    if suspended:
        queue = ((job.get("metadata") or {}).get("labels") or {}).get(KUEUE_QUEUE_LABEL)
        held = f"; Kueue queue {queue} admits it when quota is available" if queue else ""
        return Observation(Phase.PENDING, Reason.SUSPENDED, f"the training Job is suspended{held}")

    disrupted = [p for p in pods if _disruption(p) is not None]
    pod = _newest(p for p in pods if p not in failed_pods and p not in disrupted) or None
    if disrupted and (pod is None or not _driver_running(pod)):
        last = _disruption(_newest(disrupted) or {}) or {}
        return (_held(pod) if pod is not None else None) or Observation(
            Phase.PENDING, Reason.RESTARTING, f"starting again after a disruption: {describe_disruption(last)}", start)
    if pod is None:
        if failed_pods:
            why, message = explain_pod_failure(_newest(failed_pods) or {})
            return Observation(Phase.PENDING, Reason.RETRYING, f"retrying after a failed attempt: {message}", start)
        return Observation(Phase.PENDING, Reason.JOB_CREATED, "waiting for the training Pod to be created")
    status = pod.get("status") or {}
    if (kept_from_starting := _held(pod)) is not None:
        return kept_from_starting
    driver = _driver_running(pod)
    if driver is not None:
        return Observation(Phase.RUNNING, Reason.RUNNING, "the training is running",
                           driver.get("startedAt") or status.get("startTime") or start)
    return Observation(Phase.PENDING, Reason.STARTING,
                       "the training Pod is starting (pulling images, starting the model server)")


def _held(pod: Mapping[str, Any]) -> Observation | None:
    """What keeps a Pod from starting, when it says: not schedulable, an image not pulled, a container not made
    (also the replacement of a disrupted Pod: more use than "starting again" while no GPU is free)."""
    scheduled = _conditions(pod).get("PodScheduled")
    if scheduled and scheduled.get("status") == "False":
        return Observation(Phase.PENDING, Reason.UNSCHEDULABLE,
                           scheduled.get("message") or "the training Pod cannot be scheduled yet")
    waiting = _waiting(pod)
    if waiting is None:
        return None
    container, state = waiting
    reason, message = state.get("reason", ""), state.get("message") or ""
    if reason in _PULL_FINAL:
        return Observation(Phase.FAILED, Reason.IMAGE_PULL_FAILED,
                           f"the {container} image cannot be pulled: {reason}: {message}".rstrip(": "))
    if reason in _PULL_RETRYING:
        return Observation(Phase.PENDING, Reason.IMAGE_PULL_BACK_OFF,
                           f"the {container} image cannot be pulled yet: {message or reason}")
    if reason in _CONFIG_ERRORS:
        return Observation(Phase.PENDING, _CONFIG_ERRORS[reason],
                           f"the {container} container cannot start: {message or reason}")
    return None


def running_pod(pods: Iterable[Mapping[str, Any]]) -> str | None:
    """The name of the newest Pod whose driver runs (where the training's progress is printed), if any."""
    pod = _newest(pod for pod in pods if _driver_running(pod) is not None)
    return str((pod.get("metadata") or {}).get("name") or "") or None if pod is not None else None


def _driver_running(pod: Mapping[str, Any]) -> Mapping[str, Any] | None:
    if (pod.get("status") or {}).get("phase") != "Running":
        return None
    running: Mapping[str, Any] | None = (_statuses(pod).get(DRIVER_CONTAINER, {}).get("state") or {}).get("running")
    return running


# --- disruptions -------------------------------------------------------------------------------

MAX_DISRUPTIONS_KEPT = 10
QUEUE_EVICTION = "SuspendedByQueue"
# What the API server, scheduler and controllers put in a Pod's DisruptionTarget condition.
_DISRUPTED_BY = {
    "EvictionByEvictionAPI": "evicted",
    "PreemptionByScheduler": "preempted",
    "DeletionByTaintManager": "evicted by the node's taint",
    "DeletionByPodGC": "removed with its lost node",
    "TerminationByKubelet": "stopped by the node",
}


def _disruption(pod: Mapping[str, Any]) -> dict[str, Any] | None:
    """A Pod the cluster took away (DisruptionTarget=True): drained, evicted, preempted, node lost."""
    condition = _conditions(pod).get("DisruptionTarget")
    if not condition or condition.get("status") != "True":
        return None
    meta = pod.get("metadata") or {}
    return {
        "pod": str(meta.get("name") or ""),
        "uid": str(meta.get("uid") or ""),
        "node": str((pod.get("spec") or {}).get("nodeName") or ""),
        "reason": str(condition.get("reason") or "DisruptionTarget"),
        "message": str(condition.get("message") or "")[:500],
        "time": _time(condition.get("lastTransitionTime")),
    }


def disruptions_of(pods: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Every disrupted Pod among these, oldest first."""
    found = [d for d in map(_disruption, pods) if d is not None]
    return sorted(found, key=lambda d: (d["time"] or "", d["pod"]))


def queue_eviction(pod_name: str, now: str) -> dict[str, Any]:
    """A Job its queue suspended while it ran (Kueue preempting it): a disruption without a Pod condition."""
    return {"pod": pod_name, "uid": f"suspended:{pod_name}", "node": "", "reason": QUEUE_EVICTION,
            "message": "the training's queue suspended its Job (e.g. Kueue preemption)", "time": now}


def describe_disruption(disruption: Mapping[str, Any]) -> str:
    how = _DISRUPTED_BY.get(str(disruption.get("reason")), "disrupted")
    node = f" from node {disruption['node']}" if disruption.get("node") else ""
    if disruption.get("reason") == QUEUE_EVICTION:
        return "suspended by its queue"
    return f"{how}{node} ({disruption.get('reason')})"


def count_disruptions(
    current: Mapping[str, Any], seen: Iterable[Mapping[str, Any]]
) -> tuple[int, list[dict[str, Any]], list[dict[str, Any]]]:
    """(restarts, the disruptions to keep in status, the new ones) after `seen` (by Pod uid, each once).

    The status keeps only the last MAX_DISRUPTIONS_KEPT, oldest first, but the Job keeps every disrupted Pod:
    once the list is full, one older than all it keeps is one dropped from it, counted already."""
    kept = [dict(d) for d in current.get("disruptions") or [] if isinstance(d, Mapping)]
    known = {d.get("uid") for d in kept}
    floor = min(map(_order, kept)) if len(kept) >= MAX_DISRUPTIONS_KEPT else None
    new = [dict(d) for d in seen if d.get("uid") not in known and (floor is None or _order(d) > floor)]
    restarts = int(current.get("restarts") or 0) + len(new)
    return restarts, sorted(kept + new, key=_order)[-MAX_DISRUPTIONS_KEPT:], new


def _order(disruption: Mapping[str, Any]) -> tuple[str, str]:
    return str(disruption.get("time") or ""), str(disruption.get("pod") or "")


# --- status -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Validation:
    """The Validated condition: True (inputs valid), False (refused) or None (cannot check yet)."""

    ok: bool | None
    reason: Reason
    message: str


def bounded(message: str) -> str:
    """A message cut to MESSAGE_LIMIT characters, so the status write is never refused for its size."""
    return message if len(message) <= MESSAGE_LIMIT else message[: MESSAGE_LIMIT - 1] + "…"


def _condition(kind: str, status: bool | None, reason: Reason, message: str, generation: int | None,
               previous: Mapping[str, Mapping[str, Any]], now: str) -> dict[str, Any]:
    value = "Unknown" if status is None else ("True" if status else "False")
    message = bounded(message)
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


def conditions(phase: Phase, reason: Reason, message: str, generation: int | None,
               previous: Iterable[Mapping[str, Any]], now: datetime | str,
               validated: Validation | None = None) -> list[dict[str, Any]]:
    """kstatus conditions (Ready, Reconciling, Stalled) plus Validated, Succeeded, Failed."""
    stamp = now if isinstance(now, str) else _stamp(now)
    before = {c.get("type", ""): c for c in previous}
    out = []
    if validated is not None:
        out.append(_condition("Validated", validated.ok, validated.reason, validated.message, generation, before,
                              stamp))
    elif "Validated" in before:
        out.append(dict(before["Validated"]))
    terminal = phase in TERMINAL
    out.append(_condition("Ready", phase is Phase.SUCCEEDED, reason, message, generation, before, stamp))
    out.append(_condition("Reconciling", not terminal, reason if not terminal else Reason(phase.value),
                          message if not terminal else f"the training is {phase.value.lower()}",
                          generation, before, stamp))
    out.append(_condition("Stalled", phase is Phase.FAILED, reason if phase is Phase.FAILED else Reason.NOT_STALLED,
                          message if phase is Phase.FAILED else "", generation, before, stamp))
    if terminal:
        out.append(_condition("Succeeded", phase is Phase.SUCCEEDED, reason, message, generation, before, stamp))
        out.append(_condition("Failed", phase is Phase.FAILED, reason, message, generation, before, stamp))
    return out


def _stamp(now: datetime) -> str:
    return now.isoformat().replace("+00:00", "Z")


def status_patch(phase: Phase, reason: Reason, message: str, generation: int | None,
                 previous: Iterable[Mapping[str, Any]], now: datetime | str,
                 validated: Validation | None = None, **fields: Any) -> dict[str, Any]:
    """The status for a phase: `error` when Failed, `completionTime` when finished, and the conditions."""
    stamp = now if isinstance(now, str) else _stamp(now)
    patch: dict[str, Any] = {"phase": phase.value, "observedGeneration": generation, **fields}
    if phase is Phase.FAILED:
        patch["error"] = bounded(message)
    if phase in TERMINAL:
        patch.setdefault("completionTime", stamp)
    patch["conditions"] = conditions(phase, reason, message, generation, previous, stamp, validated)
    return patch


def advance(current: Mapping[str, Any] | None, observation: Observation, generation: int | None,
            now: datetime, disruptions: Iterable[Mapping[str, Any]] = (),
            max_restarts: int | None = None, user_suspended: bool = False,
            canceling: bool = False) -> dict[str, Any] | None:
    """The status patch that moves `current` to what was observed, or None when nothing changes.

    Finished (Succeeded, Failed, Canceled) is final; Running only goes back to Pending when the
    Job is suspended, retried or restarted after a disruption; the start time is kept from the
    first time it was seen. Each disrupted Pod (and each suspension by the Job's queue while it
    ran) counts one restart; more than `max_restarts` fails the training. A Training `canceling`
    (spec.cancel, or being deleted) changes nothing here: the cancel ends it Canceled, whatever its
    Job and Pods show meanwhile (its Pod stopped, evicted, or past its restarts).
    """
    current = dict(current or {})
    phase = Phase(current["phase"]) if current.get("phase") in Phase._value2member_map_ else None
    if phase in TERMINAL or canceling:
        return None
    new = observation.phase
    if phase is Phase.RUNNING and observation.reason is Reason.SUSPENDED and not user_suspended:
        name = f"{current.get('jobName') or 'job'}:{int(current.get('restarts') or 0)}"
        recorded = [str(d.get("time") or "") for d in current.get("disruptions") or [] if isinstance(d, Mapping)]
        # stamped by the operator's clock, the Pods' by the API server's: never before a disruption recorded
        disruptions = [*disruptions, queue_eviction(name, max([_stamp(now), *recorded]))]
    restarts, kept, fresh = count_disruptions(current, disruptions)
    fields: dict[str, Any] = {}
    if fresh or current.get("restarts"):
        fields["restarts"] = restarts
        fields["disruptions"] = kept
    if fresh:  # the next attempt starts from the beginning: what the last one showed is gone
        fields.update(progress=None, metrics=None, lastLog=None)
    if max_restarts is not None and restarts > max_restarts and new not in TERMINAL:
        last = describe_disruption(kept[-1]) if kept else "disrupted"
        observation = Observation(
            Phase.FAILED, Reason.TOO_MANY_RESTARTS,
            f"the training was disrupted {restarts} times, more than spec.maxRestarts ({max_restarts}) allows; "
            f"last: {last}", observation.start_time)
        new = observation.phase
    reconciling: Mapping[str, Any] = next(
        (c for c in current.get("conditions") or [] if c.get("type") == "Reconciling"), {})
    if observation.reason is Reason.JOB_CREATED and not fresh and reconciling.get("reason") in (
            Reason.JOB_CREATED, Reason.JOB_ADOPTED, Reason.POD_REFUSED):
        return None  # still no Pod: what the status says (the Job made, the refusal its Events gave) says more
    going_back = observation.reason not in (Reason.SUSPENDED, Reason.RETRYING, Reason.RESTARTING)
    if phase is Phase.RUNNING and new is Phase.PENDING and going_back and not fresh:
        return None
    start = current.get("startTime") or observation.start_time
    if new is not Phase.PENDING and start:
        fields["startTime"] = start
    # Finished: stamped with the Job's own finishing time, so two writers observing the same end
    # write the same status.
    stamp = (observation.completion_time or _stamp(now)) if new in TERMINAL else now
    if new is Phase.SUCCEEDED:
        fields["output"] = observation.output
        if observation.weights:
            fields["weights"] = observation.weights
        if values := bounded_metrics(observation.metrics or {}):  # instead of those read while it ran
            fields["metrics"] = merge_patch(current.get("metrics"), {
                "values": values, "observedTime": stamp if isinstance(stamp, str) else _stamp(stamp)})
    if new in TERMINAL and observation.logs:
        fields["logs"] = observation.logs
    if new is Phase.FAILED and observation.log_tail:
        fields["logTail"] = observation.log_tail
    patch = status_patch(new, observation.reason, observation.message, generation,
                         current.get("conditions") or [], stamp, **fields)
    unchanged = all(current.get(k) == v for k, v in patch.items() if k != "conditions") and [
        (c["type"], c["status"], c["reason"], c["message"]) for c in patch["conditions"]] == [
        (c.get("type"), c.get("status"), c.get("reason"), c.get("message")) for c in current.get("conditions") or []]
    return None if unchanged else patch


def informational(current: Mapping[str, Any], update: Mapping[str, Any]) -> bool:
    """A status write that only says more about a wait: Pending before and after, no restart counted. In a
    burst of new Trainings such writes wait for the Jobs to be made first (handlers, `Deferred`)."""
    return (current.get("phase") == Phase.PENDING.value and update.get("phase") == Phase.PENDING.value
            and update.get("restarts", current.get("restarts")) == current.get("restarts"))
