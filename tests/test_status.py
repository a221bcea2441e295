"""The pure status functions: classification, monotonic phases, conditions."""

from __future__ import annotations

import datetime
import json

import pytest

from cogtrain.api import Phase
from cogtrain.contract import Reason, weights_of
from cogtrain.status import Observation, Validation, advance, conditions, driver_report, observe

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
