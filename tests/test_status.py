"""The pure status functions: classification, monotonic phases, conditions."""

from __future__ import annotations

import datetime
import json
from typing import Any

import pytest

from cogtrain.api import Phase
from cogtrain.contract import Reason, weights_of
from cogtrain.status import (
    Observation,
    Validation,
    advance,
    conditions,
    disruptions_of,
    driver_report,
    informational,
    observe,
)

pytestmark = pytest.mark.unit

NOW = datetime.datetime(2026, 11, 27, 12, 0, tzinfo=datetime.UTC)
LATER = NOW + datetime.timedelta(minutes=5)


def pod(phase: str, driver_state: dict[str, object]) -> dict[str, object]:
    return {"metadata": {"creationTimestamp": "2026-11-27T10:00:00Z"},
            "status": {"phase": phase, "containerStatuses": [{"name": "driver", "state": driver_state}]}}


def test_finished_is_final() -> None:
    for phase in ("Succeeded", "Failed", "Canceled"):
        assert advance({"phase": phase}, Observation(Phase.RUNNING, "Running", "x"), 1, NOW) is None


def test_running_does_not_fall_back_to_pending_except_suspend_or_retry() -> None:
    current = {"phase": "Running", "startTime": "2026-11-27T10:00:05Z"}
    assert advance(current, Observation(Phase.PENDING, "Starting", "x"), 1, NOW) is None
    patch = advance(current, Observation(Phase.PENDING, "Suspended", "held"), 1, NOW)
    assert patch is not None and patch["phase"] == "Pending"


def test_start_time_is_kept_and_unchanged_status_writes_nothing() -> None:
    first = advance({}, Observation(Phase.RUNNING, "Running", "running", "2026-11-27T10:00:05+00:00"), 1, NOW)
    assert first is not None and first["startTime"] == "2026-11-27T10:00:05Z"
    again = advance(first, Observation(Phase.RUNNING, "Running", "running", "2026-11-27T11:00:00Z"), 1, LATER)
    assert again is None


def test_condition_transition_times_move_only_on_change() -> None:
    first = conditions(Phase.PENDING, "JobCreated", "m", 1, [], NOW)
    second = conditions(Phase.RUNNING, "Running", "m2", 1, first, LATER)
    by_type = {c["type"]: c for c in second}
    assert by_type["Reconciling"]["lastTransitionTime"] == "2026-11-27T12:00:00Z", "still True: unchanged"
    assert by_type["Reconciling"]["reason"] == "Running"
    done = {c["type"]: c for c in conditions(Phase.SUCCEEDED, "Succeeded", "ok", 2, second, LATER)}
    assert done["Ready"]["status"] == "True" and done["Ready"]["lastTransitionTime"] == "2026-11-27T12:05:00Z"
    assert done["Reconciling"]["status"] == "False" and done["Succeeded"]["observedGeneration"] == 2


def test_validated_condition_is_carried_over() -> None:
    first = conditions(Phase.PENDING, Reason.JOB_CREATED, "m", 1, [], NOW, Validation(True, Reason.INPUTS_VALID, "ok"))
    later = conditions(Phase.RUNNING, "Running", "m", 1, first, LATER)
    assert later[0] == first[0]


def test_driver_report_tolerates_garbage() -> None:
    assert driver_report(pod("Failed", {"terminated": {"exitCode": 1, "message": "not json"}})) is None
    assert driver_report(pod("Failed", {"terminated": {"exitCode": 1, "message": "[1]"}})) is None
    report = driver_report(pod("Succeeded", {"terminated": {"exitCode": 0, "message": json.dumps(
        {"status": "succeeded", "output": ["a"], "extra": 1})}}))
    assert report is not None and report.output == ["a"]


def test_complete_job_without_report_is_a_failure() -> None:
    job = {"status": {"conditions": [{"type": "Complete", "status": "True"}]}}
    observation = observe(job, [pod("Succeeded", {"terminated": {"exitCode": 0}})])
    assert (observation.phase, observation.reason) == (Phase.FAILED, "DriverResultMissing")


def test_weights_of_every_output_shape() -> None:
    assert weights_of("s3://b/w.bin") == "s3://b/w.bin"
    assert weights_of({"weights": "s3://b/w.bin", "log": "s3://b/l.txt"}) == "s3://b/w.bin"
    assert weights_of({"lora": "s3://b/l.safetensors", "steps": 3}) == "s3://b/l.safetensors"
    assert weights_of({"a": "s3://b/1", "b": "s3://b/2"}) is None
    assert weights_of(["s3://b/only"]) == "s3://b/only"
    assert weights_of(None) is None
    assert weights_of({"$ref": "s3://b/output.json"}) is None, "an output too big for the message is not the weights"


def _pod(name: str, uid: str, phase: str, disruption: str | None = None, driver_running: bool = False) -> dict:
    conditions = [{"type": "DisruptionTarget", "status": "True", "reason": disruption,
                   "message": "Eviction API: evicting", "lastTransitionTime": "2026-11-27T10:10:00Z"}] if disruption else []
    statuses = [{"name": "driver", "state": {"running": {"startedAt": "2026-11-27T10:00:05Z"}}}] if driver_running else []
    return {"metadata": {"name": name, "uid": uid, "creationTimestamp": f"2026-11-27T10:0{len(uid)}:00Z"},
            "spec": {"nodeName": "gpu-1"}, "status": {"phase": phase, "conditions": conditions,
                                                      "containerStatuses": statuses}}


JOB = {"metadata": {"name": "j"}, "spec": {}, "status": {"active": 1}}


def test_a_disrupted_pod_is_a_restart_not_a_failure() -> None:
    running = {"phase": "Running", "jobName": "j", "startTime": "2026-11-27T10:00:05Z", "conditions": []}
    evicted = _pod("p1", "u1", "Failed", "EvictionByEvictionAPI")
    new = _pod("p2", "u22", "Pending")
    observation = observe(JOB, [evicted, new])
    assert (observation.phase, observation.reason) == (Phase.PENDING, Reason.RESTARTING)
    assert "evicted from node gpu-1 (EvictionByEvictionAPI)" in observation.message
    patch = advance(running, observation, 1, NOW, disruptions_of([evicted, new]), max_restarts=3)
    assert patch is not None and patch["phase"] == "Pending" and patch["restarts"] == 1
    assert [d["pod"] for d in patch["disruptions"]] == ["p1"]
    again = advance({**running, **patch}, observation, 1, NOW, disruptions_of([evicted, new]), max_restarts=3)
    assert again is None or again.get("restarts") == 1, "each disrupted Pod counts once"


def test_more_disruptions_than_max_restarts_fail_the_training() -> None:
    current = {"phase": "Running", "jobName": "j", "restarts": 1,
               "disruptions": [{"pod": "p1", "uid": "u1", "node": "gpu-1", "reason": "PreemptionByScheduler"}]}
    second = _pod("p2", "u22", "Failed", "PreemptionByScheduler")
    patch = advance(current, observe(JOB, [second]), 1, NOW, disruptions_of([second]), max_restarts=1)
    assert patch is not None and patch["phase"] == "Failed" and patch["restarts"] == 2
    assert {c["type"]: c["reason"] for c in patch["conditions"]}["Failed"] == "TooManyRestarts"
    assert "more than spec.maxRestarts (1)" in patch["error"] and "preempted from node gpu-1" in patch["error"]


def test_a_queue_suspending_a_running_job_is_a_restart_but_the_user_suspending_it_is_not() -> None:
    running = {"phase": "Running", "jobName": "j"}
    suspended = {"metadata": {"name": "j"}, "spec": {"suspend": True}, "status": {}}
    by_queue = advance(running, observe(suspended, []), 1, NOW, (), max_restarts=3)
    assert by_queue is not None and by_queue["restarts"] == 1
    assert by_queue["disruptions"][0]["reason"] == "SuspendedByQueue"
    by_user = advance(running, observe(suspended, []), 1, NOW, (), max_restarts=3, user_suspended=True)
    assert by_user is not None and "restarts" not in by_user


def test_still_no_pod_keeps_what_the_status_says() -> None:
    refused = {"phase": "Pending", "jobName": "j", "conditions": conditions(
        Phase.PENDING, Reason.POD_REFUSED, "the Job cannot create the training Pod: exceeded quota", 1, [], NOW)}
    waiting = Observation(Phase.PENDING, Reason.JOB_CREATED, "waiting for the training Pod to be created")
    assert advance(refused, waiting, 1, LATER) is None
    created = {"phase": "Pending", "jobName": "j", "conditions": conditions(
        Phase.PENDING, Reason.JOB_CREATED, "created Job j running m@sha256:0", 1, [], NOW)}
    assert advance(created, waiting, 1, LATER) is None, "the status naming the Job and image is kept"
    starting = advance(refused, Observation(Phase.PENDING, Reason.STARTING, "starting"), 1, LATER)
    assert starting is not None and starting["conditions"][1]["reason"] == Reason.STARTING, "the Pod came"


def _report_pod(phase: str, report: dict[str, object], code: int) -> dict[str, object]:
    return pod(phase, {"terminated": {"exitCode": code, "message": json.dumps(report)}})


def test_a_failed_training_shows_its_log_tail_and_where_its_log_is() -> None:
    job = {"status": {"conditions": [{"type": "Failed", "status": "True", "reason": "PodFailurePolicy",
                                      "lastTransitionTime": "2026-11-27T10:30:00Z"}]}}
    report = {"status": "failed", "reason": "TrainingFailed", "message": "boom", "logs": "s3://b/ns/t/logs.txt",
              "log_tail": "step 9/10\nboom"}
    observation = observe(job, [_report_pod("Failed", report, 10)])
    patch = advance({"phase": "Running"}, observation, 1, NOW)
    assert patch is not None and patch["phase"] == "Failed"
    assert (patch["logs"], patch["logTail"]) == ("s3://b/ns/t/logs.txt", "step 9/10\nboom")


def test_a_succeeded_training_shows_its_log_and_metrics_but_no_tail() -> None:
    job = {"status": {"conditions": [{"type": "Complete", "status": "True"}],
                      "completionTime": "2026-11-27T10:30:00Z"}}
    report = {"status": "succeeded", "output": "s3://b/w", "logs": "s3://b/logs.txt", "log_tail": "x",
              "metrics": {"loss": 0.1, "predict_time": 3.5, "nested": {"a": 1}}}
    patch = advance({"phase": "Running"}, observe(job, [_report_pod("Succeeded", report, 0)]), 1, NOW)
    assert patch is not None and patch["logs"] == "s3://b/logs.txt" and "logTail" not in patch
    assert patch["metrics"] == {"values": {"loss": 0.1, "predict_time": 3.5}, "observedTime": "2026-11-27T10:30:00Z"}


def test_a_succeeded_training_shows_the_reported_metrics_only_not_those_read_while_it_ran() -> None:
    """A status PATCH merges objects: the names read while it ran must go, or the status holds more than its schema's
    32 and the API server refuses the write that ends the training."""
    from support.k8s_server import merge_patch

    job = {"status": {"conditions": [{"type": "Complete", "status": "True"}],
                      "completionTime": "2026-11-27T10:30:00Z"}}
    report = {"status": "succeeded", "output": "s3://b/w", "metrics": {"loss": 0.1, "predict_time": 3.5}}
    running = {"phase": "Running", "metrics": {"values": {f"step_metric_{i}": i for i in range(32)},
                                               "observedTime": "2026-11-27T10:29:00Z"}}
    patch = advance(running, observe(job, [_report_pod("Succeeded", report, 0)]), 1, NOW)
    assert patch is not None
    assert merge_patch(running, patch)["metrics"] == {
        "values": {"loss": 0.1, "predict_time": 3.5}, "observedTime": "2026-11-27T10:30:00Z"}


def test_a_restart_clears_the_progress_of_the_attempt_that_was_disrupted() -> None:
    running = {"phase": "Running", "jobName": "j", "startTime": "2026-11-27T10:00:05Z", "conditions": [],
               "progress": {"percent": 40.0, "observedTime": "2026-11-27T10:09:00Z"},
               "lastLog": {"line": "step 4/10", "observedTime": "2026-11-27T10:09:00Z"},
               "metrics": {"values": {"loss": 1.0}, "observedTime": "2026-11-27T10:09:00Z"}}
    evicted = _pod("p1", "u1", "Failed", "EvictionByEvictionAPI")
    patch = advance(running, observe(JOB, [evicted]), 1, NOW, disruptions_of([evicted]), max_restarts=3)
    assert patch is not None and patch["progress"] is None and patch["lastLog"] is None and patch["metrics"] is None


@pytest.mark.parametrize(("current", "update", "expected"), [
    pytest.param({"phase": "Pending"}, {"phase": "Pending"}, True, id="more-about-a-wait"),
    pytest.param({"phase": "Pending", "restarts": 1}, {"phase": "Pending", "restarts": 1}, True, id="same-restarts"),
    pytest.param({"phase": "Pending"}, {"phase": "Pending", "restarts": 1}, False, id="a-restart-counted"),
    pytest.param({"phase": "Pending"}, {"phase": "Running"}, False, id="started"),
    pytest.param({"phase": "Pending"}, {"phase": "Failed"}, False, id="failed"),
    pytest.param({"phase": "Running"}, {"phase": "Pending"}, False, id="back-to-pending"),
    pytest.param({}, {"phase": "Pending"}, False, id="no-phase-yet"),
])
def test_informational_writes_are_pending_to_pending(current: dict[str, Any], update: dict[str, Any],
                                                     expected: bool) -> None:
    assert informational(current, update) is expected


def _in_deep_stack(frames: int, call: object) -> object:
    """`call()` below `frames` Python frames: the operator's handler runs under kopf's and asyncio's."""
    return _in_deep_stack(frames - 1, call) if frames else call()  # type: ignore[operator]


def _numbers(value: object) -> list[object]:
    if isinstance(value, dict):
        return [n for item in value.values() for n in _numbers(item)]
    if isinstance(value, list):
        return [n for item in value for n in _numbers(item)]
    return [value] if isinstance(value, int | float) and not isinstance(value, bool) else []


@pytest.mark.parametrize("output", [
    "NaN", "[Infinity, -Infinity]", '{"loss": 1e999}', "1" * 400, "-" + "9" * 30, "[" * 900 + "]" * 900,
])
def test_a_succeeded_report_becomes_a_status_the_api_server_takes(output: str) -> None:
    """Whatever numbers or nesting a report holds (Python's JSON reader takes NaN, 1e999 and 400-digit integers;
    the driver passes a model's 400-digit integer on), the status written from it is JSON the API server stores
    (int64 and finite float64 numbers only) and that the operator can encode deep in its handler's stack."""
    job = {"status": {"conditions": [{"type": "Complete", "status": "True"}]}}
    message = '{"status": "succeeded", "output": ' + output + "}"
    observation = observe(job, [pod("Succeeded", {"terminated": {"exitCode": 0, "message": message}})])
    patch = advance({"phase": "Running"}, observation, 1, NOW)
    assert patch is not None
    _in_deep_stack(100, lambda: json.dumps(patch, allow_nan=False))
    assert all(isinstance(n, float) or -2**63 <= n < 2**63 for n in _numbers(patch)), _numbers(patch)


def _evicted(i: int) -> dict[str, Any]:
    stamp = f"2026-11-27T10:{i:02d}:30Z"
    return {"metadata": {"name": f"p{i:02d}", "uid": f"u{i:02d}", "creationTimestamp": stamp},
            "spec": {"nodeName": "gpu-1"},
            "status": {"phase": "Failed", "conditions": [{"type": "DisruptionTarget", "status": "True",
                                                          "reason": "EvictionByEvictionAPI", "lastTransitionTime": stamp}]}}


def test_disruptions_past_those_kept_in_the_status_are_not_counted_again() -> None:
    """The status keeps the last 10 disruptions, but the Job keeps every disrupted Pod: one dropped from the
    status must not count again on the next sync (each recount is a write, whose event syncs again)."""
    status: dict[str, Any] = {"phase": "Running", "jobName": "j"}
    restarting = Observation(Phase.PENDING, Reason.RESTARTING, "starting again")
    pods = []
    for i in range(12):
        pods.append(_evicted(i))
        patch = advance(status, restarting, 1, NOW, disruptions_of(pods), max_restarts=50)
        assert patch is not None
        status = {**status, **patch}
        assert status["restarts"] == i + 1
    assert len(status["disruptions"]) == 10 and status["disruptions"][-1]["pod"] == "p11"
    for _ in range(3):
        assert advance(status, restarting, 1, LATER, disruptions_of(pods), max_restarts=50) is None
    pods.append(_evicted(12))
    patch = advance(status, restarting, 1, LATER, disruptions_of(pods), max_restarts=50)
    assert patch is not None and patch["restarts"] == 13 and patch["disruptions"][-1]["pod"] == "p12"


def test_a_canceling_training_counts_no_restart_and_is_not_failed_for_its_restarts() -> None:
    """The cancel handler ends it Canceled; a disruption seen before it ran (its Pod evicted, or the last restart
    allowed) must not be written first: a Failed status would be final, and the cancel would find it so."""
    current = {"phase": "Running", "jobName": "j", "restarts": 1,
               "disruptions": [{"pod": "p1", "uid": "u1", "node": "gpu-1", "reason": "PreemptionByScheduler"}]}
    second = _pod("p2", "u22", "Failed", "EvictionByEvictionAPI")
    observation = observe(JOB, [second])
    assert advance(current, observation, 1, NOW, disruptions_of([second]), max_restarts=1) is not None
    assert advance(current, observation, 1, NOW, disruptions_of([second]), max_restarts=1, canceling=True) is None
    done = Observation(Phase.SUCCEEDED, Reason.SUCCEEDED, "the training succeeded")
    assert advance(current, done, 1, NOW, canceling=True) is None


def test_the_replacement_of_a_disrupted_pod_says_what_holds_it() -> None:
    """The disrupted Pod stays in view until the Training ends (view: it may be gone before its restart is counted),
    so the replacement's own wait must still show: a drained GPU pool leaves it unschedulable, maybe for hours."""
    evicted = _pod("p1", "u1", "Failed", "EvictionByEvictionAPI")
    unschedulable = {**_pod("p2", "u22", "Pending"), "status": {"phase": "Pending", "conditions": [
        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
         "message": "0/4 nodes are available: 4 Insufficient nvidia.com/gpu."}]}}
    observation = observe(JOB, [evicted, unschedulable])
    assert (observation.reason, observation.message) == (
        Reason.UNSCHEDULABLE, "0/4 nodes are available: 4 Insufficient nvidia.com/gpu.")
    running = {"phase": "Running", "jobName": "j", "startTime": "2026-11-27T10:00:05Z", "conditions": []}
    patch = advance(running, observation, 1, NOW, disruptions_of([evicted, unschedulable]), max_restarts=3)
    assert patch is not None and patch["phase"] == "Pending" and patch["restarts"] == 1
    assert observe(JOB, [evicted, _pod("p2", "u22", "Pending")]).reason is Reason.RESTARTING


def test_a_queue_eviction_counts_past_ten_kept_even_if_the_operators_clock_is_behind() -> None:
    """A suspension by the queue is stamped with the operator's clock; it is made once, so it is never one of those
    dropped from the 10 kept, however its time compares with the Pods' (stamped by the API server)."""
    pods = [_evicted(i) for i in range(10)]
    status = {"phase": "Running", "jobName": "j", "restarts": 10, "disruptions": disruptions_of(pods)}
    suspended = {"metadata": {"name": "j"}, "spec": {"suspend": True}, "status": {}}
    early = datetime.datetime(2026, 11, 27, 9, 0, tzinfo=datetime.UTC)
    patch = advance(status, observe(suspended, pods), 1, early, disruptions_of(pods), max_restarts=50)
    assert patch is not None and patch["restarts"] == 11
    assert any(d["reason"] == "SuspendedByQueue" for d in patch["disruptions"])
