"""The checks shared by the webhook and the operator: which s3:// file inputs a Training may read with whose credentials."""

from __future__ import annotations

from typing import Any

import pytest

from cogtrain.api import Training
from cogtrain.checks import check
from cogtrain.contract import Reason
from cogtrain.reference import parse_reference
from cogtrain.resolver import ResolvedModel
from cogtrain.schema import parse_schema_text
from cogtrain.settings import Settings
from support.paths import DRIVER_MODELS, schema_file

pytestmark = pytest.mark.unit

ADMIN = Settings(default_destination="s3://trainings/runs/", default_destination_secret="admin-s3")


def _model() -> ResolvedModel:
    text = schema_file(DRIVER_MODELS / "reads-files").read_text()
    return ResolvedModel(parse_reference("registry.example.com/acme/reads-files:1"), "sha256:" + "a" * 64,
                         parse_schema_text(text), text)


def _training(input: dict[str, Any], **spec: Any) -> Training:
    return Training.model_validate({
        "apiVersion": "cog.run/v1alpha1", "kind": "Training", "metadata": {"name": "tok", "namespace": "ml"},
        "spec": {"model": "registry.example.com/acme/reads-files:1", "input": input, **spec}})


OWN = "s3://trainings/runs/ml/tok/inputs/data.csv"
OTHER_NAMESPACE = "s3://trainings/runs/team-b/secret/weights.bin"
OTHER_BUCKET = "s3://elsewhere/data.csv"
AREA_MESSAGE = ("is outside this namespace's area of the operator's default destination (s3://trainings/runs/ml/); "
                "the operator's credentials read s3:// inputs only there")


@pytest.mark.parametrize(("input", "spec", "refused", "storage"), [
    # the operator's default Secret reads only the namespace's own area of the default destination
    ({"data": OWN, "extra": ["s3://trainings/runs/ml/earlier/weights.bin"]}, {}, [], ["data", "extra"]),
    ({"data": OTHER_NAMESPACE}, {}, ["input.data"], []),
    ({"data": OWN, "extra": [OWN, OTHER_BUCKET, "s3://trainings/runs/mlx/a"]}, {}, ["input.extra[1]", "input.extra[2]"],
     []),
    ({"data": "s3://trainings/runs/ml"}, {}, ["input.data"], []),
    # pvc:// and https:// inputs, and a string input's text, are not read with it
    ({"data": "pvc://datasets/a.csv", "note": OTHER_NAMESPACE}, {}, [], ["data"]),
    ({"data": "https://example.com/a.csv"}, {}, [], []),
    # credentials the author chose (and may read): the store's own permissions decide
    ({"data": OTHER_BUCKET}, {"inputSecretRef": {"name": "mine"}}, [], ["data"]),
    ({"data": OTHER_BUCKET}, {"destinationSecretRef": {"name": "mine"}}, [], ["data"]),
    ({"data": OTHER_BUCKET}, {"destination": "s3://mine/out/"}, [], ["data"]),
    ({"data": OTHER_BUCKET}, {"destination": "pvc://weights/out"}, [], ["data"]),
])
def test_s3_inputs_read_with_the_operators_secret_stay_in_the_namespaces_area(
        input: dict[str, Any], spec: dict[str, Any], refused: list[str], storage: list[str]) -> None:
    checked = check(_training(input, **spec), _model(), ADMIN)
    assert [p.field for p in checked.problems] == refused
    assert all(AREA_MESSAGE in p.message and "spec.inputSecretRef" in p.message for p in checked.problems)
    assert checked.reason == (Reason.INVALID_INPUT if refused else Reason.INPUTS_VALID)
    assert checked.input == ({} if refused else input)
    assert checked.storage_input_names == storage


def test_an_admin_without_a_default_secret_leaves_reading_to_the_pods_identity() -> None:
    checked = check(_training({"data": OTHER_NAMESPACE}), _model(), Settings(default_destination="s3://trainings/runs/"))
    assert checked.ok and checked.storage_input_names == ["data"]


@pytest.mark.parametrize(("extra", "refused"), [
    ([f"pvc://claim-{i}/a.csv" for i in range(15)], None),  # with data's claim: 16
    ([f"pvc://claim-{i}/a.csv" for i in range(16)], "reads files from 17 PersistentVolumeClaims; at most 16"),
    ([f"pvc://datasets/{i}.csv" for i in range(255)], None),  # with data: 256 files
    ([f"pvc://datasets/{i}.csv" for i in range(256)], "names 257 s3:// and pvc:// files; at most 256"),
])
def test_a_training_reads_a_bounded_number_of_files_and_claims(extra: list[str], refused: str | None) -> None:
    """Checked by the operator too: with the webhook off, every claim would become a volume of the Pod."""
    checked = check(_training({"data": "pvc://datasets/x.csv", "extra": extra}), _model(), ADMIN)
    assert [(p.field, p.message.split(" (")[0]) for p in checked.problems] == ([("spec.input", refused)] if refused
                                                                               else [])
