"""The operator's view: slim Jobs, Pods and Trainings keep what the status is computed from, and nothing of a
finished Training's children."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from cogtrain.status import disruptions_of, observe
from cogtrain.view import (
    JOB,
    POD,
    TRAINING,
    UNHANDLED_LIMIT,
    Coalescer,
    Deferred,
    Pacer,
    Schedule,
    View,
    child_key,
    slim,
)

pytestmark = pytest.mark.unit

REPORT = json.dumps({"status": "succeeded", "output": {"weights": "s3://b/w.bin"}})
OWNER = {"apiVersion": "batch/v1", "kind": "Job", "name": "t-1a2b3", "uid": "job-uid", "controller": True,
         "blockOwnerDeletion": True}
MANAGED = {"fieldsV1": {"f:status": {"f:phase": {}}}, "manager": "kubelet", "operation": "Update"}


def job(**status: Any) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": "t-1a2b3", "namespace": "ml", "uid": "job-uid", "resourceVersion": "7",
                     "labels": {"cog.run/training": "t", "kueue.x-k8s.io/queue-name": "gpus", "other": "x"},
                     "ownerReferences": [{**OWNER, "kind": "Training", "uid": "training-uid"}],
                     "managedFields": [MANAGED], "annotations": {"a": "b"}},
        "spec": {"suspend": False, "template": {"spec": {"containers": [{"name": "driver", "env": [{"name": "X"}]}]}},
                 "backoffLimit": 0, "podFailurePolicy": {"rules": []}},
        "status": {"startTime": "2026-12-01T00:00:00Z", "active": 1, "uncountedTerminatedPods": {}, **status},
    }


def pod(phase: str, *, disrupted: bool = False, report: str | None = REPORT, oom: bool = False) -> dict[str, Any]:
    terminated: dict[str, Any] = {"exitCode": 0, "reason": "Completed", "finishedAt": "2026-12-01T00:10:00Z"}
    if report:
        terminated["message"] = report
    model: dict[str, Any] = {"exitCode": 137, "reason": "OOMKilled"} if oom else {"exitCode": 0}
    conditions = [{"type": "PodScheduled", "status": "True", "lastTransitionTime": "2026-12-01T00:00:01Z"}]
    if disrupted:
        conditions.append({"type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI",
                           "message": "Eviction API: evicting", "lastTransitionTime": "2026-12-01T00:05:00Z"})
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "t-1a2b3-xyz", "namespace": "ml", "uid": "pod-uid",
                     "creationTimestamp": "2026-12-01T00:00:00Z", "labels": {"cog.run/training": "t"},
                     "ownerReferences": [OWNER], "managedFields": [MANAGED] * 5},
        "spec": {"nodeName": "gpu-1", "volumes": [{"name": "v"}] * 3,
                 "initContainers": [{"name": "model", "image": "m", "resources": {"limits": {"memory": "8Gi"}},
                                     "env": [{"name": "A", "value": "b"}]}],
                 "containers": [{"name": "driver", "image": "d", "args": ["drive"] * 20}]},
        "status": {"phase": phase, "hostIP": "10.0.0.1", "startTime": "2026-12-01T00:00:02Z", "conditions": conditions,
                   "initContainerStatuses": [{"name": "model", "image": "m", "imageID": "m@sha256:0",
                                              "state": {"terminated": model}}],
                   "containerStatuses": [{"name": "driver", "image": "d", "imageID": "d@sha256:0", "ready": False,
                                          "state": {"terminated": terminated}}]},
    }


COMPLETE = {"conditions": [{"type": "Complete", "status": "True", "lastTransitionTime": "2026-12-01T00:11:00Z",
                            "lastProbeTime": "2026-12-01T00:11:00Z"}], "completionTime": "2026-12-01T00:11:00Z"}
FAILED = {"conditions": [{"type": "Failed", "status": "True", "reason": "PodFailurePolicy", "message": "m",
                          "lastTransitionTime": "2026-12-01T00:11:00Z"}]}


@pytest.mark.parametrize(("the_job", "pods"), [
    pytest.param(job(**COMPLETE), [pod("Succeeded")], id="succeeded"),
    pytest.param(job(**COMPLETE), [pod("Succeeded", report=None)], id="result-missing"),
    pytest.param(job(**FAILED), [pod("Failed", oom=True)], id="oom"),
    pytest.param(job(), [pod("Running", disrupted=True)], id="disrupted"),
    pytest.param({**job(), "spec": {"suspend": True}}, [], id="suspended-in-a-queue"),
    pytest.param(job(), [{**pod("Pending"), "status": {"phase": "Pending", "conditions": [
        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/4 nodes"}]}}],
        id="unschedulable"),
    pytest.param(job(), [{**pod("Pending"), "status": {"phase": "Pending", "containerStatuses": [
        {"name": "driver", "state": {"waiting": {"reason": "ImagePullBackOff", "message": "back-off"}}}]}}],
        id="image-pull"),
])
def test_slim_bodies_give_the_same_status(the_job: dict[str, Any], pods: list[dict[str, Any]]) -> None:
    slim_job, slim_pods = slim(the_job, JOB), [slim(p, POD) for p in pods]
    assert observe(slim_job, slim_pods, 600) == observe(the_job, pods, 600)
    assert disruptions_of(slim_pods) == disruptions_of(pods)


@pytest.mark.parametrize(("body", "shape", "kept"), [
    pytest.param(job(), JOB, {"apiVersion", "kind", "metadata", "spec", "status"}, id="job"),
    pytest.param(pod("Running"), POD, {"apiVersion", "kind", "metadata", "spec", "status"}, id="pod"),
    pytest.param({"metadata": {"name": "t"}}, POD, {"metadata"}, id="absent-keys-stay-absent"),
    pytest.param({"status": None}, JOB, {"status"}, id="null-kept-as-null"),
])
def test_slim_keeps_only_the_shape(body: dict[str, Any], shape: Any, kept: set[str]) -> None:
    before = copy.deepcopy(body)
    out = slim(body, shape)
    assert set(out) == kept
    assert body == before, "the body itself is not changed"
    meta = out.get("metadata") or {}
    assert "managedFields" not in meta and "annotations" not in meta and "resourceVersion" not in meta
    assert set(meta.get("labels") or {}) <= {"cog.run/training", "kueue.x-k8s.io/queue-name"}
    if out is not None and shape is POD and "spec" in out:
        assert out["spec"]["initContainers"] == [{"name": "model", "resources": {"limits": {"memory": "8Gi"}}}]
        assert len(json.dumps(out)) < len(json.dumps(body))


def test_slim_training_keeps_what_a_status_write_needs() -> None:
    body = {"apiVersion": "cog.run/v1alpha1", "kind": "Training",
            "metadata": {"name": "t", "namespace": "ml", "uid": "u", "generation": 2, "resourceVersion": "9",
                         "managedFields": [MANAGED], "annotations": {"cog.run/last-handled-configuration": "{}"}},
            "spec": {"model": "m", "input": {"big": "x" * 1000}, "maxRestarts": 1, "suspend": True, "cancel": False},
            "status": {"phase": "Running", "jobName": "t-1a2b3", "conditions": [{"type": "Ready"}]}}
    assert slim(body, TRAINING) == {
        "apiVersion": "cog.run/v1alpha1", "kind": "Training",
        "metadata": {"name": "t", "namespace": "ml", "uid": "u", "generation": 2, "resourceVersion": "9"},
        "spec": {"maxRestarts": 1, "suspend": True, "cancel": False}, "status": body["status"]}


def training(name: str, phase: str | None) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "ml", "uid": f"{name}-uid"},
            "status": {"phase": phase} if phase else {}}


# (events in order, then: known, finished, Jobs held, Pods held, the slim Training held)
@pytest.mark.parametrize(("events", "known", "finished", "jobs", "pods", "held"), [
    pytest.param([("jobs", "ADDED", job()), ("pods", "ADDED", pod("Pending"))], False, False, 1, 1, False,
                 id="children-before-their-training"),
    pytest.param([("t", None, training("t", "Pending")), ("jobs", None, job()), ("pods", None, pod("Running"))],
                 True, False, 1, 1, True, id="active"),
    pytest.param([("jobs", "ADDED", job()), ("pods", "ADDED", pod("Running")), ("t", "MODIFIED",
                 training("t", "Succeeded"))], True, True, 0, 0, False, id="finished-drops-its-children"),
    pytest.param([("t", None, training("t", "Failed")), ("jobs", None, job()), ("pods", "MODIFIED", pod("Failed"))],
                 True, True, 0, 0, False, id="children-of-a-finished-training-are-not-kept"),
    pytest.param([("t", None, training("t", "Running")), ("jobs", "ADDED", job()), ("jobs", "DELETED", job())],
                 True, False, 0, 0, True, id="deleted-job"),
    pytest.param([("t", None, training("t", "Canceled")), ("t", "DELETED", training("t", "Canceled"))],
                 False, False, 0, 0, False, id="deleted-training-is-forgotten"),
    pytest.param([("jobs", "ADDED", job()), ("jobs", "MODIFIED", job(**COMPLETE))], False, False, 1, 0, False,
                 id="a-job-is-replaced-by-its-newer-self"),
    pytest.param([("t", None, training("t", "Running")), ("pods", "MODIFIED", pod("Running", disrupted=True)),
                  ("pods", "DELETED", pod("Failed", disrupted=True))], True, False, 0, 1, True,
                 id="a-disrupted-pod-deleted-is-kept-while-its-training-runs"),
    pytest.param([("t", None, training("t", "Running")), ("pods", "DELETED", pod("Failed", disrupted=True)),
                  ("t", "MODIFIED", training("t", "Failed"))], True, True, 0, 0, False,
                 id="until-it-finishes"),
    pytest.param([("t", None, training("t", "Running")), ("pods", "DELETED", pod("Failed", disrupted=True)),
                  ("t", "DELETED", training("t", "Running"))], False, False, 0, 0, False,
                 id="or-is-deleted"),
    pytest.param([("t", None, training("t", "Running")), ("pods", "DELETED", pod("Failed"))], True, False, 0, 0, True,
                 id="a-pod-not-disrupted-deleted-is-dropped"),
])
def test_view_follows_events(events: list[tuple[str, str | None, dict[str, Any]]], known: bool, finished: bool,
                             jobs: int, pods: int, held: bool) -> None:
    view = View()
    for kind, event_type, body in events:
        if kind == "t":
            view.training_seen(event_type, body)
        else:
            view.child_seen("jobs" if kind == "jobs" else "pods", event_type, body)
    key = ("ml", "t")
    assert (view.known(key), view.finished(key)) == (known, finished)
    found_jobs, found_pods = view.children(key)
    assert (len(found_jobs), len(found_pods)) == (jobs, pods)
    assert (view.training(key) is not None) == held
    assert view.sizes()["jobs"] == jobs and view.sizes()["pods"] == pods


@pytest.mark.parametrize(("events", "unhandled"), [
    pytest.param([], 0, id="nothing"),
    pytest.param([("a", "ADDED", None)], 1, id="a-new-training-waits"),
    pytest.param([("a", "ADDED", None), ("a", "MODIFIED", "Pending")], 0, id="handled"),
    pytest.param([("a", None, None), ("b", None, "Succeeded"), ("c", None, "Failed")], 1, id="listed-unhandled"),
    pytest.param([("a", "ADDED", None), ("a", "DELETED", None)], 0, id="deleted-before-handling"),
    pytest.param([("a", "ADDED", None), ("b", "ADDED", None), ("a", "MODIFIED", "Failed")], 1, id="one-of-two"),
    pytest.param([("a", "ADDED", None), ("a", "MODIFIED", "deleting")], 0, id="being-deleted"),
])
def test_handling_is_whether_a_training_waits_for_its_first_handling(
        events: list[tuple[str, str | None, str | None]], unhandled: int) -> None:
    view = View()
    for name, event_type, phase in events:
        body = training(name, None if phase == "deleting" else phase)
        if phase == "deleting":
            body["metadata"]["deletionTimestamp"] = "2026-12-04T00:00:00Z"
        view.training_seen(event_type, body)
    assert view.handling() is bool(unhandled) and view.sizes()["unhandled"] == unhandled


def test_deferred_keeps_the_first_time_and_gives_each_key_once() -> None:
    deferred = Deferred()
    deferred.hold(("ml", "a"), 10.0)
    deferred.hold(("ml", "a"), 25.0)  # held again: still since 10
    deferred.hold(("ml", "b"), 20.0)
    assert deferred.due(39.0, 30.0) == [] and len(deferred) == 2
    assert deferred.due(40.0, 30.0) == [("ml", "a")] and len(deferred) == 1
    deferred.drop(("ml", "b"))
    assert deferred.due(1000.0, 30.0) == [] and len(deferred) == 0
    deferred.hold(("ml", "c"), 50.0)
    assert deferred.due(50.0, 30.0, everything=True) == [("ml", "c")] and deferred.due(99.0, 30.0) == []


def test_readers_keep_what_they_were_given() -> None:
    view = View()
    view.child_seen("jobs", "ADDED", job())
    jobs, _ = view.children(("ml", "t"))
    view.child_seen("jobs", "MODIFIED", job(**COMPLETE))
    view.child_seen("jobs", "DELETED", job())
    assert jobs[0]["status"].get("conditions") is None, "an earlier answer is not changed under its reader"
    assert child_key(job()) == ("ml", "t")


# (calls in order: "enter" or "leave" or "force", with what each returns)
@pytest.mark.parametrize("calls", [
    pytest.param([("enter", True), ("leave", True), ("enter", True)], id="alone"),
    pytest.param([("enter", True), ("enter", False), ("enter", False), ("leave", False), ("leave", True)],
                 id="requests-while-working-make-one-more-round"),
    pytest.param([("enter", True), ("enter", False), ("force", True), ("enter", True)], id="an-error-lets-go"),
])
def test_coalescer(calls: list[tuple[str, bool]]) -> None:
    coalescer = Coalescer()
    key = ("ml", "t")
    for call, expected in calls:
        got = coalescer.enter(key) if call == "enter" else coalescer.leave(key, force=call == "force")
        assert got == expected, call
    assert coalescer.enter(("ml", "other")), "keys are independent"


A, B = ("ml", "a"), ("ml", "b")


# (time, the keys waiting then, the keys due) in order; delay 15 s, interval 30 s
@pytest.mark.parametrize("steps", [
    pytest.param([(0, [A], []), (14, [A], []), (15, [A], [A]), (20, [A], []), (45, [A], [A])], id="delay-then-interval"),
    pytest.param([(0, [A], []), (10, [], []), (16, [A], []), (31, [A], [A])], id="stops-waiting-starts-afresh"),
    pytest.param([(0, [A], []), (5, [A, B], []), (15, [A, B], [A]), (20, [A, B], [B])], id="each-its-own-clock"),
])
def test_schedule(steps: list[tuple[float, list[tuple[str, str]], list[tuple[str, str]]]]) -> None:
    schedule = Schedule(15, 30)
    for now, waiting, due in steps:
        assert schedule.due(now, waiting) == due, now


def test_the_pacer_reads_each_running_training_every_interval_within_the_global_cap() -> None:
    pacer = Pacer(interval=20, rate=10, first=5)
    few = [("ns", f"t{i}") for i in range(3)]
    assert pacer.due(0, few) == []
    assert sorted(pacer.due(5, few)) == few, "each first 5 s after it is first seen"
    assert pacer.due(6, few) == [] and pacer.due(24, few) == []
    assert sorted(pacer.due(25, few)) == few
    assert pacer.due(26, few[:1]) == [] and pacer.due(45, few[:1]) == [few[0]], "one that stopped is forgotten"


def test_past_the_cap_the_interval_stretches() -> None:
    pacer = Pacer(interval=20, rate=10, first=0)
    many = [("ns", f"t{i:04d}") for i in range(1000)]
    reads: dict[tuple[str, str], int] = {}
    for second in range(0, 301):
        for key in pacer.due(float(second), many):
            reads[key] = reads.get(key, 0) + 1
    total = sum(reads.values())
    assert total <= 10 * 301, "never more than 10 reads a second"
    assert total >= 10 * 290 and len(reads) == 1000, "the budget is used, and every Training gets its turn"


def test_a_read_made_again_counts_against_the_cap() -> None:
    """A tail the byte limit cut without a record is read a second time: that read is spent from the same budget."""
    pacer = Pacer(interval=20, rate=10, first=0)
    many = [("ns", f"t{i:04d}") for i in range(1000)]
    reads = 0
    for second in range(0, 301):
        due = pacer.due(float(second), many)
        reads += 2 * len(due)
        pacer.spend(len(due))
    assert 10 * 290 <= reads <= 10 * 301 + 10, "10 reads a second, second ones included (past one second's burst)"


def test_a_disruption_whose_pod_is_gone_before_the_status_write_still_counts() -> None:
    """An evicted Pod is deleted, and gone as soon as it stops: a status thread that gets to the Training only
    then (4 threads, thousands of Trainings) must still count the restart, or maxRestarts is never reached."""
    view = View()
    view.training_seen(None, training("t", "Running"))
    view.child_seen("jobs", None, job())
    view.child_seen("pods", "MODIFIED", pod("Running", disrupted=True))
    view.child_seen("pods", "DELETED", pod("Failed", disrupted=True))
    assert [d["uid"] for d in disruptions_of(view.children(("ml", "t"))[1])] == ["pod-uid"]


def test_a_training_never_handled_holds_the_waits_of_others_back_only_for_a_while() -> None:
    """A Training whose first handling never comes (its handler fails each time, or it was deleted while the watch
    was down, so no DELETED event came) is not a burst of creations: it must not hold every other Training's
    informational writes (and JobCreated Events) back for good."""
    view = View()
    view.training_seen("ADDED", training("stuck", None), now=0.0)
    assert view.handling(now=1.0)
    assert not view.handling(now=UNHANDLED_LIMIT + 1.0), "no longer a burst"
    view.training_seen("ADDED", training("new", None), now=UNHANDLED_LIMIT + 2.0)
    assert view.handling(now=UNHANDLED_LIMIT + 3.0), "a new one is"
    view.training_seen("MODIFIED", training("stuck", None), now=UNHANDLED_LIMIT + 4.0)
    assert not view.handling(now=2 * UNHANDLED_LIMIT + 3.0), "seen again, it waits since it was first seen"


def _renamed(body: dict[str, Any], name: str, **meta: Any) -> dict[str, Any]:
    out = copy.deepcopy(body)
    out["metadata"].update(meta)
    out["metadata"]["uid"] = f"{out['metadata']['uid']}-{name}"
    out["metadata"].setdefault("labels", {})["cog.run/training"] = name
    return out


@pytest.mark.parametrize("finishes", [True, False], ids=["finished-then-deleted", "deleted-while-running"])
def test_nothing_is_left_of_trainings_deleted_with_their_jobs_and_pods(finishes: bool) -> None:
    """Thousands of Trainings come and go: once each Training, Job and Pod is deleted (the garbage collector's
    updates of the Job and Pods coming after the Training's deletion), the view holds nothing of them: disrupted
    Pods are kept after their deletion only while their Training is active (the last one here is evicted as the
    Training goes)."""
    view = View()
    gone = {"deletionTimestamp": "2026-12-01T01:00:00Z"}
    for i in range(2000):
        name = f"t{i}"
        view.training_seen("ADDED", training(name, None), now=0.0)
        view.training_seen("MODIFIED", training(name, "Running"), now=0.0)
        view.child_seen("jobs", "ADDED", _renamed(job(), name))
        evicted = _renamed(pod("Failed", disrupted=True), name)
        view.child_seen("pods", "MODIFIED", evicted)
        view.child_seen("pods", "DELETED", evicted)
        replacement = _renamed(pod("Running"), f"{name}", uid=f"second-{i}")
        view.child_seen("pods", "ADDED", replacement)
        if finishes:
            view.training_seen("MODIFIED", training(name, "Succeeded"))
        view.training_seen("DELETED", training(name, "Succeeded" if finishes else "Running"))
        view.child_seen("jobs", "MODIFIED", _renamed(job(), name, **gone))
        view.child_seen("pods", "MODIFIED", _renamed(pod("Running"), name, uid=f"second-{i}", **gone))
        view.child_seen("pods", "DELETED", _renamed(pod("Failed", disrupted=True), name, uid=f"second-{i}", **gone))
        view.child_seen("jobs", "DELETED", _renamed(job(), name, **gone))
    assert view.sizes() == {"active": 0, "finished": 0, "unhandled": 0, "jobs": 0, "pods": 0}
    assert not view.handling(now=0.0)


def test_an_active_training_is_held_without_kopfs_diff_base() -> None:
    """kopf's diff-base is in the status (storage.py): the spec, inputs (up to 1 MiB) and annotations (kubectl's
    copy of the manifest) as JSON. Nothing the view is read for needs it; held, 1,000 Trainings of 1 MiB inputs
    hold a GiB of it, which anyone allowed to create Trainings can make the operator hold."""
    essence = json.dumps({"spec": {"model": "m", "input": {"big": "x" * 1024 * 1024}}})
    body = {"metadata": {"name": "t", "namespace": "ml", "uid": "u", "resourceVersion": "9"}, "spec": {"model": "m"},
            "status": {"phase": "Running", "jobName": "t-1a2b3",
                       "kopf": {"last-handled-configuration": essence, "progress": {"reconcile": {}}}}}
    view = View()
    key = view.training_seen("MODIFIED", body)
    held = view.training(key)
    assert held is not None and held["status"] == {"phase": "Running", "jobName": "t-1a2b3"}
    assert len(json.dumps(held)) < 1000
    assert body["status"]["kopf"]["last-handled-configuration"] == essence, "the body itself is not changed"
