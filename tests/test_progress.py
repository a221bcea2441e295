"""Progress from a training's log: parsing, records, the driver's log tee and its bounded log file."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from cogtrain.contract import TERMINATION_LIMIT, DriverReport, Reason
from cogtrain.driver import BoundedLog, LogTee
from cogtrain.progress import (
    ESCAPE,
    MARKER,
    MAX_METRICS,
    Record,
    Tracker,
    bounded_metrics,
    last_record,
    log_tail,
    parse_progress,
)

pytestmark = pytest.mark.unit
NOW = datetime(2026, 12, 4, 9, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(("line", "expected"), [
    (" 45%|####      | 45/100 [00:01<00:01, 44.1it/s]", (45.0, 45, 100)),
    ("100%|##########| 100/100 [00:02<00:00, 44.1it/s]", (100.0, 100, 100)),
    ("Training:  33%|███▎      | 1/3 [00:00<00:01,  1.99it/s, loss=0.2]", (33.3, 1, 3)),
    ("  5%|▌         | 5/100", (5.0, 5, 100)),
    (" 12%|#2        | 1.2k/10.0k [00:01<00:09, 1.1kit/s]", (12.0, None, None)),  # unit_scale: the percent
    ("step 30/120 loss 0.3", (25.0, 30, 120)),
    ("Epoch 2 of 8", (25.0, 2, 8)),
    ("iteration: 7/7", (100.0, 7, 7)),
    ("[3/4] saving", (75.0, 3, 4)),
    ("12/25 the date is not progress", (48.0, 12, 25)),  # a leading N/M counts, as Replicate reads it
    ("see https://x.org/3/4", None),
    ("loss 0.3 at 2026/12", None),
    ("step 9/3", None),  # more than the total
    ("step 1/0", None),
    ("150%|###| garbage", None),
    ("", None),
    ("%|" * 10000, None),
    ("x" * 100_000 + " step 5/10", (50.0, 5, 10)),
])
def test_progress_from_a_line(line: str, expected: tuple[Any, ...] | None) -> None:
    assert parse_progress(line) == expected


def test_a_line_still_being_written_is_not_read_past_its_end() -> None:
    assert parse_progress(" 45%|####  | 45/10", complete=False) is None  # "10" may become "100"
    assert parse_progress(" 45%|####  | 45/100 [", complete=False) == (45.0, 45, 100)


def test_tqdm_redraws_after_carriage_returns_the_last_one_counts() -> None:
    tracker = Tracker(lambda: NOW)
    tracker.feed("\r 10%|#         | 1/10 [00:01<00:09]\r 20%|##        | 2/10 [00:02<00:08]")
    tracker.feed("\r 30%|###       | 3/10 [00:03<00:07]")
    record = tracker.record()
    assert record is not None and record.progress is not None and record.last_log is not None
    assert (record.progress.percent, record.progress.current, record.progress.total) == (30.0, 3, 10)
    assert record.last_log.line == "30%|###       | 3/10 [00:03<00:07]"
    tracker.feed("\ndone\n\n")
    assert tracker.record().last_log.line == "done"  # type: ignore[union-attr]


def test_a_huge_line_is_bounded() -> None:
    tracker = Tracker(lambda: NOW)
    tracker.feed("y" * 1_000_000 + "\n")
    record = tracker.record()
    assert record is not None and record.last_log is not None
    assert len(record.last_log.line) == 256 and record.last_log.line.endswith("…")


def test_metrics_are_bounded() -> None:
    many = {f"m{i}": i for i in range(100)}
    assert len(bounded_metrics(many)) == MAX_METRICS
    odd = {"nan": float("nan"), "inf": float("inf"), "big": 10**30, "list": [1], "none": None, "": 1,
           "k" * 100: 1.5, "s": "v" * 1000, "ok": True, "ctl": "a\x00b"}
    assert bounded_metrics(odd) == {"k" * 63 + "…": 1.5, "s": "v" * 255 + "…", "ok": True, "ctl": "a b"}
    assert bounded_metrics({"token": "hunter22"}, lambda text: text.replace("hunter22", "***")) == {"token": "***"}


def test_a_record_round_trips_through_its_line() -> None:
    tracker = Tracker(lambda: NOW)
    tracker.feed("step 3/4\n")
    tracker.metrics({"loss": 0.25, "phase": "main", "ok": True})
    record = tracker.record()
    assert record is not None
    line = record.line()
    assert line.startswith(MARKER) and "\n" not in line
    assert last_record("noise\n" + line + "\nmore noise\n") == record
    assert record.status() == {
        "progress": {"percent": 75.0, "current": 3, "total": 4, "observedTime": "2026-12-04T09:00:00Z"},
        "metrics": {"values": {"loss": 0.25, "phase": "main", "ok": True}, "observedTime": "2026-12-04T09:00:00Z"},
        "lastLog": {"line": "step 3/4", "observedTime": "2026-12-04T09:00:00Z"},
    }


@pytest.mark.parametrize("bad", [
    '{"progress": {"percent": 101, "observedTime": "2026-12-04T09:00:00Z"}}',
    '{"progress": {"percent": "NaN", "observedTime": "2026-12-04T09:00:00Z"}}',
    '{"metrics": {"values": {"a": [1]}, "observedTime": "2026-12-04T09:00:00Z"}}',
    '{"metrics": {"values": {' + ",".join(f'"m{i}": 1' for i in range(33)) + '}, "observedTime": "2026-12-04T09:00:00Z"}}',
    '{"lastLog": {"line": "' + "x" * 257 + '", "observedTime": "2026-12-04T09:00:00Z"}}',
    '{"lastLog": {"line": "x"}}',
    '{"progress": {"percent": 5, "observedTime": "2026-12-04T09:00:00Z"',  # cut short
    "[1, 2]",
])
def test_an_invalid_record_is_ignored_and_an_earlier_one_used(bad: str) -> None:
    good = MARKER + '{"progress": {"percent": 5, "observedTime": "2026-12-04T09:00:00Z"}}'
    found = last_record(good + "\n" + MARKER + bad + "\n")
    assert found is not None and found.progress is not None and found.progress.percent == 5


def test_only_a_line_that_starts_with_the_marker_is_a_record() -> None:
    record = '{"progress": {"percent": 5, "observedTime": "2026-12-04T09:00:00Z"}}'
    assert last_record(ESCAPE + MARKER + record) is None
    assert last_record("\r" + MARKER + record) is None
    assert last_record(" " + MARKER + record) is None


def tee(records: bool = True) -> tuple[LogTee, io.StringIO, list[float]]:
    clock = [0.0]
    out = io.StringIO()
    return LogTee(out, records, tracker=Tracker(lambda: NOW), clock=lambda: clock[0]), out, clock


def records_in(text: str) -> list[dict[str, Any]]:
    return [json.loads(line[len(MARKER):]) for line in text.split("\n") if line.startswith(MARKER)]


def test_the_tee_prints_a_record_after_the_log_coalesced_to_one_every_two_seconds() -> None:
    writer, out, clock = tee()
    writer.write("step 1/4\n")
    assert len(records_in(out.getvalue())) == 1
    writer.write("step 2/4\n")
    writer.tick()
    assert len(records_in(out.getvalue())) == 1, "within 2 s: coalesced"
    clock[0] = 2.5
    writer.tick()
    found = records_in(out.getvalue())
    assert len(found) == 2 and found[-1]["progress"]["current"] == 2
    writer.tick()
    assert len(records_in(out.getvalue())) == 2, "nothing changed: no record"
    writer.metrics({"loss": 1.0})
    clock[0] = 5.0
    writer.tick()
    assert records_in(out.getvalue())[-1]["metrics"]["values"] == {"loss": 1.0}
    # The log's lines, as the model printed them, in order between the records.
    assert [line for line in out.getvalue().split("\n") if not line.startswith(MARKER)] == ["step 1/4", "step 2/4", ""]


def test_a_long_burst_of_log_lines_gets_records_between_them() -> None:
    writer, out, _ = tee()
    writer.write("".join(f"line {i}\n" for i in range(1000)))
    writer.write("".join(f"line {i}\n" for i in range(1000, 2000)))
    lines = out.getvalue().split("\n")
    gaps = [i for i, line in enumerate(lines) if line.startswith(MARKER)]
    assert gaps and lines[-2].startswith(MARKER), "a record right after the burst"
    writer.write("".join(f"line {i}\n" for i in range(2000, 2100)))
    lines = out.getvalue().split("\n")
    assert any(line.startswith(MARKER) for line in lines[-110:]), "a record within 100 lines of the end"


@pytest.mark.parametrize("pieces", [
    [MARKER + '{"progress":{"percent":99,"observedTime":"2020-01-01T00:00:00Z"}}\n'],
    ["cogtrain.pro", "gress " + '{"progress":{"percent":99,"observedTime":"2020-01-01T00:00:00Z"}}\n'],
    ["ok\n" + MARKER[:3], MARKER[3:] + "{}\n"],
])
def test_a_model_cannot_forge_a_record(pieces: list[str]) -> None:
    writer, out, _ = tee()
    for piece in pieces:
        writer.write(piece)
    writer.finish()
    printed = out.getvalue()
    assert ESCAPE + MARKER in printed
    found = last_record(printed)
    assert found is None or found.progress is None or found.progress.percent != 99
    assert all(r.get("progress", {}).get("percent") != 99 for r in records_in(printed))


def test_a_held_line_start_that_is_not_a_record_is_printed_as_it_is() -> None:
    writer, out, _ = tee()
    writer.write("cogtr")
    assert "cogtr" not in out.getvalue()
    writer.write("ain rocks\n")
    writer.write("cog")
    writer.finish()
    assert [line for line in out.getvalue().split("\n") if not line.startswith(MARKER)][:2] == [
        "cogtrain rocks", "cog"]


def test_without_records_the_tee_prints_the_log_unchanged() -> None:
    writer, out, _ = tee(records=False)
    writer.write(MARKER + "{}\nstep 1/2\n")
    writer.finish()
    assert out.getvalue() == MARKER + "{}\nstep 1/2\n"


def test_the_log_file_keeps_its_head_and_a_rolling_tail(tmp_path: Path) -> None:
    log = BoundedLog(tmp_path, limit=4000)
    for i in range(1000):
        log.write(f"line {i:04d}\n")  # 10 bytes each: 10,000 in all
    text = log.finish().read_text()
    assert text.startswith("line 0000\n") and text.endswith("line 0999\n")
    assert "bytes cut …]" in text and len(text.encode()) <= 4000 + 64
    head, _, tail = text.partition("\n[… ")
    cut = int(tail.split(" ", 1)[0])
    assert len(head.encode()) + cut + len(tail.split("…]\n", 1)[1].encode()) == 10_000
    assert log_tail(log.recent).split("\n") == [f"line {i:04d}" for i in range(980, 1000)]


def test_a_small_log_file_is_whole(tmp_path: Path) -> None:
    log = BoundedLog(tmp_path, limit=4000)
    log.write("a\rb\n")
    assert log.finish().read_bytes() == b"a\rb\n"


@pytest.mark.parametrize(("text", "tail"), [
    ("a\nb\n\n", "a\nb"),
    ("\r 10%|#| 1/10\r 20%|##| 2/10\nboom\n", " 20%|##| 2/10\nboom"),
    ("".join(f"{i}\n" for i in range(100)), "\n".join(str(i) for i in range(80, 100))),
    ("z" * 5000, "z" * 2048),
])
def test_the_log_tail(text: str, tail: str) -> None:
    assert log_tail(text) == tail


def test_the_report_gives_the_message_first_and_the_tail_the_room_left() -> None:
    tail = "\n".join(f"line {i} " + "x" * 90 for i in range(20))
    report = DriverReport.failure(Reason.TRAINING_FAILED, "boom", "s3://b/logs.txt", tail)
    assert report.fits() and report.log_tail == tail and report.logs == "s3://b/logs.txt"
    long = DriverReport.failure(Reason.TRAINING_FAILED, "m" * 3000, "s3://b/logs.txt", tail)
    assert long.fits() and long.message == "m" * 3000 and long.log_tail
    assert long.log_tail.endswith("line 19 " + "x" * 90) and not long.log_tail.startswith("line 0 ")
    huge = DriverReport.failure(Reason.TRAINING_FAILED, "m" * 5000, "s3://b/logs.txt", tail)
    assert len(huge.encode().encode()) <= TERMINATION_LIMIT and huge.log_tail is None
    assert Record.model_validate({}).status() == {}


def test_a_metric_name_too_long_fails_the_record() -> None:
    line = MARKER + json.dumps({"metrics": {"values": {"k" * 65: 1}, "observedTime": "2026-12-04T09:00:00Z"}})
    assert last_record(line) is None


def test_the_progress_gauge_has_a_series_per_running_training_only() -> None:
    from cogtrain.metrics import ProgressGauge

    gauge = ProgressGauge()
    gauge.MAX_SERIES = 2
    gauge.set("ml", "a", 10.0)
    gauge.set("ml", "b", 20.0)
    gauge.set("ml", "c", 30.0)  # past the bound: not exported
    gauge.set("ml", "a", 15.0)
    [family] = list(gauge.collect())
    assert family.name == "cogtrain_training_progress_percent"
    assert {(s.labels["name"], s.value) for s in family.samples} == {("a", 15.0), ("b", 20.0)}
    gauge.forget("ml", "a")
    assert {s.labels["name"] for s in next(iter(gauge.collect())).samples} == {"b"}


def test_only_the_pod_its_own_job_controls_is_read_for_a_running_training() -> None:
    from kubernetes import client

    from cogtrain.handlers import Runtime, _running
    from cogtrain.registry import RegistryClient
    from cogtrain.resolver import SchemaResolver
    from cogtrain.settings import Settings

    runtime = Runtime(settings=Settings(), api_client=client.ApiClient(), resolver=SchemaResolver(RegistryClient()))
    view = runtime.view

    def meta(name: str, uid: str, owner: str, created: str) -> dict[str, Any]:
        return {"namespace": "ml", "name": name, "uid": uid, "creationTimestamp": created,
                "labels": {"cog.run/training": "a"}, "ownerReferences": [{"uid": owner, "controller": True}]}

    def pod(name: str, owner: str, created: str) -> dict[str, Any]:
        return {"metadata": meta(name, f"u-{name}", owner, created), "status": {
            "phase": "Running", "containerStatuses": [{"name": "driver", "state": {"running": {}}}]}}

    view.training_seen("ADDED", {"metadata": {"namespace": "ml", "name": "a", "uid": "ua"},
                                 "status": {"phase": "Running"}})
    view.training_seen("ADDED", {"metadata": {"namespace": "ml", "name": "b", "uid": "ub"},
                                 "status": {"phase": "Pending"}})
    view.child_seen("jobs", "ADDED", {"metadata": meta("a-1", "ja", "ua", "2026-12-04T09:00:00Z")})
    view.child_seen("pods", "ADDED", pod("a-1-x", "ja", "2026-12-04T09:00:01Z"))
    view.child_seen("pods", "ADDED", pod("impostor", "other-job", "2026-12-04T09:00:09Z"))  # newer, only labelled
    assert _running(runtime) == {("ml", "a"): "a-1-x"}


class FakeApi:
    """The driver's log (tailLines, limitBytes) and a Running Training whose status takes merge patches, as the
    API server's do (RFC 7386: objects merge, null removes)."""

    def __init__(self, log: str, status: dict[str, Any]) -> None:
        self.log, self.status = log, {"phase": "Running", **status}
        self.reads: list[int] = []
        self.patches: list[dict[str, Any]] = []
        self.request_timeout = 1.0
        self.core = self.custom = self
        self.view = self

    def training(self, key: tuple[str, str]) -> dict[str, Any]:
        return {"metadata": {"namespace": key[0], "name": key[1], "resourceVersion": str(len(self.patches))},
                "status": self.status}

    def read_namespaced_pod_log(self, pod: str, namespace: str, tail_lines: int, limit_bytes: int,
                                **_: Any) -> Any:
        self.reads.append(tail_lines)
        data = b"".join(self.log.encode().splitlines(keepends=True)[-tail_lines:])[:limit_bytes]
        response = io.BytesIO(data)
        response.release_conn = lambda: None  # type: ignore[attr-defined]
        return response

    def patch_namespaced_custom_object_status(self, *args: Any, **_: Any) -> dict[str, Any]:
        from support.k8s_server import merge_patch

        body = args[5]
        self.patches.append(body)
        self.status = merge_patch(self.status, body["status"])
        return self.training(("ml", "a"))


def _stamped(**fields: Any) -> dict[str, Any]:
    return {key: {**value, "observedTime": "2026-12-04T09:00:00Z"} for key, value in fields.items()}


@pytest.mark.parametrize(("shown", "printed"), [
    # 32 metrics shown, 32 others now (the model's first 32 changed): the status keeps at most 32 (its schema's
    # maxProperties; more and the API server refuses every write of the Training's status, its end too)
    (_stamped(metrics={"values": {f"old{i}": i for i in range(32)}}),
     _stamped(metrics={"values": {f"new{i}": i for i in range(32)}})),
    # a bar with counts, then one with unit_scale (the percent only): no stale current/total
    (_stamped(progress={"percent": 10.0, "current": 1, "total": 10}), _stamped(progress={"percent": 12.0})),
])
def test_the_status_shows_the_record_read_and_nothing_left_of_the_one_before(
        shown: dict[str, Any], printed: dict[str, Any]) -> None:
    from cogtrain.handlers import read_progress

    api = FakeApi(MARKER + json.dumps(printed) + "\n", shown)
    record, reads = read_progress(api, ("ml", "a"), "a-1-x")  # type: ignore[arg-type]
    assert record is not None and reads == 1 and len(api.patches) == 1
    assert {key: api.status[key] for key in printed} == printed
    read_progress(api, ("ml", "a"), "a-1-x")  # type: ignore[arg-type]
    assert len(api.patches) == 1, "the status already shows it: nothing written"


def test_a_cut_tail_without_a_record_is_read_again_and_says_so() -> None:
    """The second read is spent from the reads' budget (`Pacer.spend`), so it has to be counted."""
    from cogtrain.handlers import read_progress

    record = MARKER + json.dumps(_stamped(progress={"percent": 50.0}))
    api = FakeApi(("x" * 1000 + "\n") * 150 + record + "\n" + "short\n" * 10, {})
    found, reads = read_progress(api, ("ml", "a"), "a-1-x")  # type: ignore[arg-type]
    assert found is not None and found.progress is not None and found.progress.percent == 50.0
    assert reads == 2 and api.reads == [200, 32]


@pytest.mark.parametrize("char", ['"', "\\", "\U0001f600", "x"])
def test_the_largest_record_the_driver_prints_is_one_the_operator_takes(char: str) -> None:
    """Quotes and backslashes double in JSON and an emoji is 4 bytes: 32 metrics of 64 + 256 such characters made a
    record of 21,000 characters (40 KiB), which the operator refused (16 KiB), so the status froze; past 16 KiB the
    container runtime also splits the line."""
    tracker = Tracker(lambda: NOW)
    tracker.feed(f"step 5/10 {char * 300}\n")
    tracker.metrics({f"{char * 62}{i:02d}": char * 300 for i in range(40)})
    record = tracker.record()
    assert record is not None and record.metrics is not None
    line = record.line()
    assert len(line.encode()) < 16 * 1024 and last_record(line) == record
    assert len(record.metrics.values) >= 8, "as many as fit"


@pytest.mark.parametrize("pieces", [
    ["A" * 16384 + MARKER + '{"progress":{"percent":99,"observedTime":"2020-01-01T00:00:00Z"}}' + " " * 100 + "\n"],
    ["é" * 8192, MARKER + '{"progress":{"percent":99,"observedTime":"2020-01-01T00:00:00Z"}}\n'],  # 2 bytes each
    ["x" * 5000 + "\n", "y" * 4096 + MARKER + "{}\n"],
])
def test_a_long_line_cannot_forge_a_record_where_the_runtime_splits_it(pieces: list[str]) -> None:
    """The container runtime writes a line longer than 16 KiB as pieces, and `tailLines` counts pieces: a tail can
    begin at a piece, in the middle of a model's line. The driver's stdout has no such lines (it wraps them), so
    every line start it prints is one it escaped."""
    writer, out, _ = tee()
    for piece in pieces:
        writer.write(piece)
    writer.finish()
    lines = out.getvalue().split("\n")
    assert all(len(line.encode()) < 16 * 1024 for line in lines)
    assert all(json.loads(line[len(MARKER):]).get("progress", {}).get("percent") != 99
               for line in lines if line.startswith(MARKER))
    assert "".join(line for line in lines if not line.startswith(MARKER)).replace(ESCAPE + MARKER, MARKER) == \
        "".join(pieces).replace("\n", ""), "nothing of the model's log is lost"
