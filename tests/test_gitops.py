"""Argo CD's health check and actions for the Training (gitops/argocd/), run in Lua 5.1 as Argo CD runs them.

Argo CD's own test files (health_test.yaml, action_test.yaml) are run as its test harness runs them; every
phase and reason the operator writes is run through health.lua from statuses the operator's own status
functions build, so a change to the conditions fails here instead of mis-mapping in Argo CD; the argocd-cm
snippets are checked to embed exactly the Lua files.
"""

from __future__ import annotations

import datetime
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from cogtrain.api import Phase
from cogtrain.contract import DriverReport, Reason
from cogtrain.status import Observation, Validation, advance, disruptions_of, observe, status_patch
from support.argocd import (
    ACTIONS,
    ACTIONS_KEY,
    CUSTOMIZATION,
    HEALTH_KEY,
    SNIPPETS,
    action_tests,
    customization_data,
    health_tests,
    load,
    run_action,
    run_discovery,
    run_health,
)
from support.paths import ROOT

pytestmark = pytest.mark.unit

NOW = datetime.datetime(2026, 11, 27, 12, 0, tzinfo=datetime.UTC)
VALID = Validation(True, Reason.INPUTS_VALID, "the inputs match the model's training schema")
# Pending reasons Argo CD shows Degraded: they wait on a person, as Argo CD rates a Pod in the same state.
DEGRADED_WHILE_PENDING = {Reason.IMAGE_PULL_BACK_OFF, Reason.CREATE_CONTAINER_CONFIG_ERROR,
                          Reason.CREATE_CONTAINER_ERROR, Reason.RUN_CONTAINER_ERROR}
HEALTH_OF_PHASE = {Phase.PENDING: "Progressing", Phase.RUNNING: "Progressing", Phase.SUCCEEDED: "Healthy",
                   Phase.FAILED: "Degraded", Phase.CANCELED: "Suspended"}


def training(status: dict[str, Any] | None = None, generation: int = 1, **spec: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {"apiVersion": "cog.run/v1alpha1", "kind": "Training",
                           "metadata": {"name": "t", "namespace": "ml", "generation": generation},
                           "spec": {"model": "registry.example.com/acme/m:1", **spec}}
    if status is not None:
        obj["status"] = json.loads(json.dumps(status))  # reasons are StrEnums; Argo CD gets JSON
    return obj


def expected_health(phase: Phase, reason: Reason) -> str:
    if phase is Phase.PENDING and reason is Reason.SUSPENDED:
        return "Suspended"
    if phase is Phase.PENDING and reason in DEGRADED_WHILE_PENDING:
        return "Degraded"
    return HEALTH_OF_PHASE[phase]


# --- Argo CD's own test files ------------------------------------------------------------------


@pytest.mark.parametrize(("path", "obj", "expected"), health_tests(), ids=[t[0] for t in health_tests()])
def test_health_test_yaml(path: str, obj: dict[str, Any], expected: dict[str, str]) -> None:
    assert run_health(obj) == expected


DISCOVERY = action_tests()["discoveryTests"]
ACTION = action_tests()["actionTests"]


@pytest.mark.parametrize("test", DISCOVERY, ids=[t["inputPath"] for t in DISCOVERY])
def test_action_test_yaml_discovery(test: dict[str, Any]) -> None:
    found = run_discovery(load(CUSTOMIZATION / "actions" / test["inputPath"]))
    assert found == sorted(test["result"], key=lambda action: action["name"])


@pytest.mark.parametrize("test", ACTION, ids=[f"{t['action']}:{t['inputPath']}" for t in ACTION])
def test_action_test_yaml_actions(test: dict[str, Any]) -> None:
    actions = CUSTOMIZATION / "actions"
    assert run_action(load(actions / test["inputPath"]), test["action"]) == load(actions / test["expectedOutputPath"])


def test_every_test_file_and_action_is_used() -> None:
    used = {t[0] for t in health_tests()}
    assert used == {f"testdata/{p.name}" for p in (CUSTOMIZATION / "testdata").glob("*.yaml")}
    tests = action_tests()
    used = {t["inputPath"] for t in tests["discoveryTests"] + tests["actionTests"]}
    used |= {t["expectedOutputPath"] for t in tests["actionTests"]}
    assert used == {f"testdata/{p.name}" for p in (CUSTOMIZATION / "actions" / "testdata").glob("*.yaml")}
    assert {t["action"] for t in tests["actionTests"]} == set(ACTIONS)
    assert sorted(p.parent.name for p in (CUSTOMIZATION / "actions").glob("*/action.lua")) == sorted(ACTIONS)


def test_the_lua_is_argo_cd_lua() -> None:
    """Lua 5.1 without the string library (Argo CD opens base, table and a safe os only)."""
    assert run_health(training(), "return {status = _VERSION == 'Lua 5.1' and 'Healthy' or 'Unknown'}")["status"] == "Healthy"
    for script in ("return {status = string.upper('healthy')}", "return {status = ('x'):upper()}",
                   "os.execute('true') return {status = 'Healthy'}", "return {status = tostring(math.pi)}"):
        with pytest.raises(Exception, match="attempt to (index|call)"):
            run_health(training(), script)


# --- every phase and reason, as the operator writes them -------------------------------------------


def _documented() -> dict[Reason, list[Phase]]:
    """The phases of each reason in docs/operator.md's table of reasons: `any` is every phase, `—` none."""
    section = (ROOT / "docs" / "operator.md").read_text().split("## Reasons", 1)[1].split("\n## ", 1)[0]
    found = {}
    for row in section.splitlines():
        if row.startswith("| `"):
            cells = row.split("|")
            phase = cells[2].strip()
            phases = list(Phase) if phase == "any" else [] if phase == "—" else [Phase(p.strip()) for p in phase.split("/")]
            found.update({Reason(name): phases for name in re.findall(r"`([A-Za-z]+)`", cells[1])})
    return found


DOCUMENTED = [(phase, reason) for reason, phases in _documented().items() for phase in phases]


def test_every_phase_and_reason_is_covered() -> None:
    assert set(_documented()) == set(Reason)
    assert {phase for phase, _ in DOCUMENTED} == set(Phase)


@pytest.mark.parametrize(("phase", "reason"), DOCUMENTED, ids=[f"{p}-{r}" for p, r in DOCUMENTED])
def test_health_of_each_status_the_operator_writes(phase: Phase, reason: Reason) -> None:
    message = f"what {reason} says"
    status = status_patch(phase, reason, message, 1, [], NOW, VALID, jobName="t-0b7f4")
    health = run_health(training(status))
    assert health["status"] == expected_health(phase, reason)
    if phase is Phase.SUCCEEDED:
        assert health["message"] == "The training succeeded"
    elif phase is Phase.CANCELED:
        assert health["message"] == f"Canceled: {message}"
    else:
        assert health["message"] == f"{reason}: {message}"


def _pod(phase: str, containers: list[dict[str, Any]], **status: Any) -> dict[str, Any]:
    return {"metadata": {"name": "t-0b7f4-x", "uid": "u1", "creationTimestamp": "2026-11-27T11:00:00Z"},
            "spec": {"nodeName": "gpu-1", "containers": [{"name": "model", "resources": {"limits": {"memory": "32Gi"}}}]},
            "status": {"phase": phase, "containerStatuses": containers, **status}}


def _driver(state: dict[str, Any]) -> dict[str, Any]:
    return {"name": "driver", "state": state}


RUNNING = _driver({"running": {"startedAt": "2026-11-27T11:01:00Z"}})
JOB: dict[str, Any] = {"metadata": {"name": "t-0b7f4"}, "spec": {}, "status": {"active": 1}}
FAILED_JOB = {**JOB, "status": {"conditions": [{"type": "Failed", "status": "True",
                                                "lastTransitionTime": "2026-11-27T11:30:00Z"}]}}
COMPLETE_JOB = {**JOB, "status": {"conditions": [{"type": "Complete", "status": "True"}],
                                  "completionTime": "2026-11-27T11:30:00Z"}}
REPORT = DriverReport(status="succeeded", output="s3://b/ml/t/weights.bin").encode()
EVICTED = {"type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI", "message": "evicting",
           "lastTransitionTime": "2026-11-27T11:10:00Z"}

# (what the cluster shows, the health Argo CD shows, how its message starts)
CLUSTER = {
    "kueue-suspended": (
        {**JOB, "metadata": {"name": "t-0b7f4", "labels": {"kueue.x-k8s.io/queue-name": "gpus"}},
         "spec": {"suspend": True}}, [], "Suspended", "Suspended: the training Job is suspended; Kueue queue gpus"),
    "unschedulable": (JOB, [_pod("Pending", [], conditions=[
        {"type": "PodScheduled", "status": "False", "message": "0/4 nodes are available"}])],
        "Progressing", "Unschedulable: 0/4 nodes are available"),
    "image-pull-back-off": (JOB, [_pod("Pending", [_driver({"waiting": {"reason": "ImagePullBackOff"}})])],
                            "Degraded", "ImagePullBackOff: the driver image cannot be pulled yet"),
    "missing-secret": (JOB, [_pod("Pending", [_driver({"waiting": {"reason": "CreateContainerConfigError",
                                                                   "message": 'secret "hf" not found'}})])],
                       "Degraded", 'CreateContainerConfigError: the driver container cannot start: secret "hf"'),
    "running": (JOB, [_pod("Running", [RUNNING])], "Progressing", "Running: the training is running"),
    "restarting": (JOB, [_pod("Failed", [], conditions=[EVICTED])], "Progressing",
                   "Restarting: starting again after a disruption: evicted from node gpu-1"),
    "succeeded": (COMPLETE_JOB, [_pod("Succeeded", [_driver({"terminated": {"exitCode": 0, "message": REPORT}})])],
                  "Healthy", "The training succeeded; weights: s3://b/ml/t/weights.bin"),
    "oom-killed": (FAILED_JOB, [_pod("Failed", [{"name": "model", "state": {"terminated": {"reason": "OOMKilled"}}}])],
                   "Degraded", "OOMKilled: the model container ran out of memory and was killed (memory limit 32Gi)"),
}


@pytest.mark.parametrize("case", CLUSTER)
def test_health_of_what_the_cluster_shows(case: str) -> None:
    job, pods, health, message = CLUSTER[case]
    created = status_patch(Phase.PENDING, Reason.JOB_CREATED, "the Job was created", 1, [], NOW, VALID,
                           jobName="t-0b7f4")
    status = advance(created, observe(job, pods), 1, NOW, disruptions_of(pods), max_restarts=3)
    assert status is not None
    found = run_health(training({**created, **status}))
    assert (found["status"], found["message"][: len(message)]) == (health, message)


def test_generation_not_yet_observed_is_progressing_until_finished() -> None:
    running = status_patch(Phase.RUNNING, Reason.RUNNING, "running", 1, [], NOW, VALID)
    assert run_health(training(running, generation=2, suspend=True)) == {
        "status": "Progressing", "message": "Waiting for the operator to observe generation 2"}
    # A finished Training is final: the operator never observes a later edit, and Argo CD need not wait for it.
    done = status_patch(Phase.FAILED, Reason.TRAINING_FAILED, "boom", 1, [], NOW, VALID)
    assert run_health(training(done, generation=2, cancel=True))["status"] == "Degraded"


def test_cancel_pending_is_progressing_and_then_final() -> None:
    running = status_patch(Phase.RUNNING, Reason.RUNNING, "running", 1, [], NOW, VALID)
    assert run_health(training(running, generation=2, cancel=True))["message"].startswith("Canceling:")
    canceled = advance(running, Observation(Phase.CANCELED, Reason.CANCELED, "canceled by hand"), 2, NOW)
    assert canceled is not None
    assert run_health(training(canceled, generation=2, cancel=True)) == {
        "status": "Suspended", "message": "Canceled: canceled by hand"}


# --- the install snippets ----------------------------------------------------------------------


@pytest.mark.parametrize("path", SNIPPETS, ids=[p.name for p in SNIPPETS])
def test_snippets_embed_exactly_the_lua_files(path: Path) -> None:
    document = yaml.safe_load(path.read_text())
    data = document["data"] if document.get("kind") == "ConfigMap" else document["configs"]["cm"]
    assert data[HEALTH_KEY] == (CUSTOMIZATION / "health.lua").read_text()
    actions = yaml.safe_load(data[ACTIONS_KEY])
    assert actions["discovery.lua"] == (CUSTOMIZATION / "actions" / "discovery.lua").read_text()
    assert {d["name"]: d["action.lua"] for d in actions["definitions"]} == {
        name: (CUSTOMIZATION / "actions" / name / "action.lua").read_text() for name in ACTIONS}
    assert data == customization_data()
    assert path.read_text() == SNIPPETS[path](), f"{path.name} is stale: run `.venv/bin/python tests/support/argocd.py`"


def test_the_gitops_guide_links_what_is_there() -> None:
    guide = ROOT / "docs" / "gitops.md"
    links = re.findall(r"\]\((\.\./[^)#]+|[a-z]+\.md)\)", guide.read_text())
    assert len(links) >= 5
    assert [link for link in links if not (guide.parent / link).exists()] == []
    assert "docs/gitops.md" in (ROOT / "README.md").read_text()
