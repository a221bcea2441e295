"""kopf's diff-base storage, minus its measured cost: the same essence as kopf's own."""

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
    ours = DiffBase(prefix="cog.run", key="last-handled-configuration")
    before = copy.deepcopy(body)
    assert ours.build(body=kopf.Body(body), extra_fields=extra) == theirs.build(body=kopf.Body(body),
                                                                                extra_fields=extra)
    assert body == before
