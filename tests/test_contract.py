"""The operator–driver contract (cogtrain.contract): one definition both sides and the docs agree on."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from cogtrain import status
from cogtrain.contract import EXIT_CODES, TERMINATION_LIMIT, DriverReport, ExitCode, Reason, cut_to_bytes, weights_of
from cogtrain.registry import RegistryErrorKind

pytestmark = pytest.mark.unit

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_every_reason_is_documented_once_and_nothing_else() -> None:
    text = (DOCS / "operator.md").read_text()
    section = text.split("## Reasons", 1)[1].split("\n## ", 1)[0]
    documented = [name for row in section.splitlines() if row.startswith("| `")
                  for name in re.findall(r"`([A-Za-z]+)`", row.split("|")[1])]
    assert sorted(documented) == sorted(r.value for r in Reason)


def test_registry_error_kinds_are_reasons() -> None:
    assert {kind.value for kind in RegistryErrorKind} <= {r.value for r in Reason}


def test_every_driver_reason_has_a_final_exit_code() -> None:
    assert sorted(set(map(int, EXIT_CODES.values()))) == ExitCode.final()
    assert ExitCode.SUCCEEDED not in ExitCode.final()


@pytest.mark.parametrize("message", ["é" * 5000, '"\\' * 3000, "\u2028" * 3000, "x" * 10000, "a\U0001F600" * 2000])
def test_failure_reports_fit_by_encoded_bytes(message: str) -> None:
    report = DriverReport.failure(Reason.TRAINING_FAILED, message)
    encoded = report.encode().encode()
    assert len(encoded) <= TERMINATION_LIMIT
    assert len(encoded) > TERMINATION_LIMIT - 16, "cut no more than it must"
    decoded = DriverReport.decode(report.encode())
    assert decoded is not None and decoded.reason is Reason.TRAINING_FAILED
    assert message.startswith((decoded.message or "").removesuffix("…"))


def test_short_failures_are_kept_whole() -> None:
    report = DriverReport.failure(Reason.SETUP_FAILED, "the model's setup failed: boom")
    assert json.loads(report.encode()) == {"status": "failed", "reason": "SetupFailed",
                                           "message": "the model's setup failed: boom"}


def test_a_reason_from_another_driver_version_still_reads_as_a_failure() -> None:
    report = DriverReport.decode('{"status": "failed", "reason": "SomethingNew", "message": "m"}')
    assert report is not None and report.reason is Reason.DRIVER_FAILED and report.message == "m"


@pytest.mark.parametrize("garbage", ["", "not json", "[]", '{"status": "maybe"}', "{" * 100000, '"x"'])
def test_garbage_is_no_report(garbage: str) -> None:
    assert DriverReport.decode(garbage) is None


def test_a_long_string_output_is_not_weights() -> None:
    assert weights_of("hello " * 2000) is None
    assert weights_of("just a sentence") is None
    assert weights_of("s3://bucket/w.bin") == "s3://bucket/w.bin"
    report = DriverReport.success("a" * 3000)
    assert report.weights is None and report.fits()


def test_cut_to_bytes_counts_bytes_not_characters() -> None:
    assert cut_to_bytes("ééé", 5) == "é…"  # é is 2 bytes, … is 3
    assert len(cut_to_bytes("日本語" * 100, 50).encode()) <= 50
    assert cut_to_bytes("short", 50) == "short"


def test_status_reads_the_driver_report_through_the_contract() -> None:
    pod = {"status": {"containerStatuses": [{"name": "driver", "state": {"terminated": {
        "exitCode": 10, "message": DriverReport.failure(Reason.INPUT_REJECTED, "no").encode()}}}]}}
    assert status.explain_pod_failure(pod) == (Reason.INPUT_REJECTED, "no")



def test_the_deepest_output_the_driver_passes_on_is_read() -> None:
    from cogtrain.contract import OUTPUT_MAX_DEPTH
    from cogtrain.jsonstream import MAX_DEPTH

    assert OUTPUT_MAX_DEPTH == MAX_DEPTH
    output: object = "s3://b/w.bin"
    for _ in range(OUTPUT_MAX_DEPTH + 1):  # jsonstream takes containers at depths 0 to MAX_DEPTH
        output = [output]
    report = DriverReport.decode(DriverReport.success(output).encode())
    assert report is not None and report.output == output


@pytest.mark.parametrize("claimed", [Reason.SUCCEEDED, Reason.OOM_KILLED, Reason.DEADLINE_EXCEEDED, Reason.JOB_CREATED,
                                     Reason.WEBHOOK_FAILED, Reason.TOO_MANY_RESTARTS, ["TrainingFailed"], 10])
def test_a_report_claims_only_the_drivers_own_reasons(claimed: object) -> None:
    """A failed report that names a reason the driver never ends with (one the operator gives from what the cluster
    shows, or no string at all) reads as DriverFailed: the report never says the training succeeded, ran out of
    memory or hit its deadline."""
    message = json.dumps({"status": "failed", "reason": claimed, "message": "m"})
    report = DriverReport.decode(message)
    assert report is not None and report.reason is Reason.DRIVER_FAILED and report.message == "m"
    pod = {"status": {"containerStatuses": [{"name": "driver", "state": {"terminated": {"exitCode": 10,
                                                                                        "message": message}}}]}}
    assert status.explain_pod_failure(pod) == (Reason.DRIVER_FAILED, "m")


def test_every_reason_the_driver_ends_with_is_read_as_it_is() -> None:
    for reason in EXIT_CODES:
        report = DriverReport.decode(DriverReport.failure(reason, "m").encode())
        assert report is not None and report.reason is reason


@pytest.mark.parametrize("weights", ["not a uri", "a" * 3000, 7, {"uri": "s3://b/w"}, "s3://b/" + "w" * 2100])
def test_weights_that_are_not_a_uri_are_not_believed(weights: object) -> None:
    report = DriverReport.decode(json.dumps({"status": "succeeded", "output": "s3://b/w.bin", "weights": weights}))
    assert report is not None and report.weights is None and report.output == "s3://b/w.bin"
