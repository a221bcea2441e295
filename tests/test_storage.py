"""kopf's storages, minus their measured costs: the same essence as kopf's own, and no empty status patch."""

from __future__ import annotations

import copy
from typing import Any

import kopf
import pytest

from cogtrain.storage import DiffBase, Progress, prune

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
    ours = DiffBase(prefix="cog.run", key="last-handled-configuration")
    before = copy.deepcopy(body)
    assert ours.build(body=kopf.Body(body), extra_fields=extra) == theirs.build(body=kopf.Body(body),
                                                                                extra_fields=extra)
    assert body == before


@pytest.mark.parametrize(("in_body", "stored", "patch_after"), [
    pytest.param(False, True, {}, id="stored-and-purged-in-one-cycle-sends-nothing"),
    pytest.param(True, True, {"status": {"kopf": {"reconcile": None}}}, id="purged-from-the-body"),
    pytest.param(True, False, {"status": {"kopf": {"reconcile": None}}}, id="purged-only"),
])
def test_progress_purge_leaves_no_empty_patch(in_body: bool, stored: bool, patch_after: dict[str, Any]) -> None:
    storage = Progress(field="status.kopf")
    status: dict[str, Any] = {"kopf": {"reconcile": {"success": True}}} if in_body else {}  # status.kopf.<handler>
    body = kopf.Body({"metadata": {"name": "t"}, "status": status})
    patch = kopf.Patch()
    if stored:
        storage.store(key=kopf.HandlerId("reconcile"), record={"success": True}, body=body, patch=patch)
    storage.purge(key=kopf.HandlerId("reconcile"), body=body, patch=patch)
    assert dict(patch) == patch_after


@pytest.mark.parametrize(("patch", "after"), [
    pytest.param({"status": {"kopf": {"progress": {}}}}, {}, id="all-empty"),
    pytest.param({"status": {"phase": "Failed", "kopf": {"progress": {}}}}, {"status": {"phase": "Failed"}},
                 id="keeps-what-else-is-there"),
    pytest.param({"status": {"kopf": {"progress": {"x": None}}}}, {"status": {"kopf": {"progress": {"x": None}}}},
                 id="a-none-deletes-and-stays"),
    pytest.param({"metadata": {}}, {"metadata": {}}, id="other-paths-untouched"),
])
def test_prune(patch: dict[str, Any], after: dict[str, Any]) -> None:
    prune(patch, ("status", "kopf", "progress"))  # any path
    assert patch == after
