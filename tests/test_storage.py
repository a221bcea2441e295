"""kopf's diff-base storage: in the status (one write with the status), the same essence as kopf's own."""

from __future__ import annotations

import copy
from typing import Any

import kopf
import pytest

from cogtrain.storage import DiffBase

pytestmark = pytest.mark.unit

SPEC = {"model": "m", "input": {"steps": 3}, "suspend": False}
STATUS = {"phase": "Running", "conditions": [{"type": "Ready", "status": "False"}], "kopf": {"progress": {}}}
META = {"name": "t", "namespace": "ml", "uid": "u", "resourceVersion": "7", "generation": 1,
        "managedFields": [{"manager": "kopf", "fieldsV1": {"f:status": {}}}],
        "labels": {"team": "a"},
        "annotations": {"note": "x", "cog.run/last-handled-configuration": '{"spec": {}}',
                        "kubectl.kubernetes.io/last-applied-configuration": "{}"}}


@pytest.mark.parametrize("body", [
    pytest.param({"apiVersion": "cog.run/v1alpha1", "kind": "Training", "metadata": META, "spec": SPEC,
                  "status": STATUS}, id="whole"),
    pytest.param({"metadata": {"name": "t"}, "spec": SPEC}, id="no-labels-no-status"),
    pytest.param({"metadata": {"name": "t", "labels": {"a": "b"}}, "spec": SPEC, "extra": [1, 2]}, id="extra-stanza"),
    pytest.param({"metadata": {"name": "t"}}, id="no-spec"),
])
@pytest.mark.parametrize("extra", [None, ["status.phase"]])
def test_the_essence_is_kopfs(body: dict[str, Any], extra: list[str] | None) -> None:
    theirs = kopf.AnnotationsDiffBaseStorage(prefix="cog.run", key="last-handled-configuration")
    ours = DiffBase()
    before = copy.deepcopy(body)
    assert ours.build(body=kopf.Body(body), extra_fields=extra) == theirs.build(body=kopf.Body(body),
                                                                                extra_fields=extra)
    assert body == before


def test_the_diff_base_is_stored_in_the_status_and_read_from_there_first() -> None:
    storage = DiffBase()
    body = kopf.Body({"metadata": {"name": "t", "annotations": {"note": "x"}}, "spec": SPEC})
    patch = kopf.Patch()
    storage.store(body=body, patch=patch, essence=storage.build(body=body))
    assert dict(patch) == {"status": {"kopf": {"last-handled-configuration":
                                               '{"spec":{"model":"m","input":{"steps":3},"suspend":false},'
                                               '"metadata":{"annotations":{"note":"x"}}}'}}}, "no annotation: one write"
    stored = kopf.Body({**body, "status": patch["status"], "metadata": {
        "name": "t", "annotations": {"note": "x", "cog.run/last-handled-configuration": '{"spec": {"old": 1}}'}}})
    assert storage.fetch(body=stored) == {"spec": SPEC, "metadata": {"annotations": {"note": "x"}}}
    assert storage.build(body=stored) == storage.fetch(body=stored), "the legacy annotation is not in the essence"


def test_a_training_from_before_reads_its_annotation() -> None:
    """Trainings handled by an operator that kept the diff-base in the annotation are not handled as new."""
    legacy = kopf.AnnotationsDiffBaseStorage(prefix="cog.run", key="last-handled-configuration")
    body = kopf.Body({"metadata": {"name": "t", "labels": {"team": "a"}}, "spec": SPEC, "status": {"phase": "Running"}})
    patch = kopf.Patch()
    legacy.store(body=body, patch=patch, essence=legacy.build(body=body))
    old = kopf.Body({**body, "metadata": {**body["metadata"], "annotations": dict(patch["metadata"]["annotations"])}})
    assert DiffBase().fetch(body=old) == DiffBase().build(body=old) == {"spec": SPEC, "metadata": {"labels": {"team": "a"}}}


@pytest.mark.parametrize("stored", ["{garbage", "[1, 2]", '"text"', "null", {"spec": {}}, 7])
def test_a_diff_base_that_is_not_an_essence_is_none(stored: Any) -> None:
    """Anything but a JSON object is no diff-base (kopf then handles the Training as new, and it adopts its Job):
    raising instead stops kopf handling the Training at all, a cancel included."""
    body = kopf.Body({"metadata": {"name": "t"}, "spec": SPEC,
                      "status": {"phase": "Running", "kopf": {"last-handled-configuration": stored}}})
    assert DiffBase().fetch(body=body) is None
    legacy = kopf.Body({"metadata": {"name": "t", "annotations": {"cog.run/last-handled-configuration": stored}},
                        "spec": SPEC, "status": {"phase": "Running"}})
    assert DiffBase().fetch(body=legacy) is None

