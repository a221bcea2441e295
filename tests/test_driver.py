"""The driver against Cog's own model server (the `cog` package), through `cogtrain run`."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cogtrain.cli import main
from cogtrain.commands.drive import TERMINATED_MESSAGE
from cogtrain.contract import TERMINATION_LIMIT, DriverReport, Reason
from cogtrain.destinations import DriverError, LocalDestination, safe_name
from cogtrain.driver import (
    OUTPUT_LIMIT,
    DataUrlFile,
    Driver,
    Inbox,
    Receiver,
    RedactingWriter,
    Redactor,
    Spooled,
    cog_error,
    termination_message,
)
from cogtrain.jsonstream import Budget, JSONStreamError, Reader
from cogtrain.local import parse_inputs, run_training
from cogtrain.schema import parse_schema
from support.cogserver import CogServer, free_port, prepare_model, start_cog_server
from support.driving import PeakMemory, drive_to_end, expect_failure, run_within, start_drive
from support.paths import DRIVER_MODELS, EXAMPLES, SEED_MODELS, load_schema_document


@pytest.mark.integration
def test_bare_path_output(tmp_path: Path) -> None:
    model = prepare_model(SEED_MODELS["all-inputs"], tmp_path / "m")
    out = tmp_path / "weights"
    output = run_training(model, {"train_data": str(tmp_path), "caption_prefix": "x", "steps": 7}, out,
                          log=io.StringIO(), err=io.StringIO())
    assert output == str(out)
    assert out.read_text().startswith("7 0.0001 adamw 8 run True None 42")


@pytest.mark.integration
def test_training_output_object_with_inline_file(tmp_path: Path) -> None:
    data = tmp_path / "data.txt"
    data.write_bytes(b"12345")
    out = tmp_path / "weights"
    output = run_training(EXAMPLES / "training-output", {"train_data": str(data), "seed": 3}, out,
                          log=io.StringIO(), err=io.StringIO())
    assert output == {"weights": str(out)}, "a Path inside TrainingOutput comes back as a data: URL, stored as a file"
    assert out.read_text() == "lr=0.0001 seed=3 bytes=5\n"


@pytest.mark.integration
def test_file_output_of_the_seed_hello_model(tmp_path: Path) -> None:
    out = tmp_path / "weights"
    run_training(EXAMPLES / "hello-train", {"param": "train"}, out, log=io.StringIO(), err=io.StringIO())
    assert out.read_text() == "hello train", "`cog train -i param=train` then `cat weights`"


@pytest.mark.integration
def test_list_of_files_and_live_logs(tmp_path: Path) -> None:
    out = tmp_path / "out"
    log = io.StringIO()
    output = run_training(DRIVER_MODELS / "chatty", {"lines": 3000}, out, log=log, err=io.StringIO())
    # Cog 0.23 uploads a list's files concurrently and reports them in the order the uploads end.
    assert sorted(output) == [str(out / "config.json"), str(out / "weights.bin")]
    assert (out / "weights.bin").read_bytes() == b"\x00\x01" * 1000
    lines = log.getvalue().splitlines()
    assert lines[0] == "step 0 loss 1.0000" and lines[-1] == "step 2999 loss 0.0003" and len(lines) == 3000


@pytest.mark.integration
def test_training_that_raises(tmp_path: Path) -> None:
    with pytest.raises(DriverError) as caught:
        run_training(DRIVER_MODELS / "fails", {"learning_rate": 0.5}, tmp_path / "w", log=io.StringIO(),
                     err=io.StringIO())
    assert caught.value.reason == "TrainingFailed" and caught.value.exit_code == 10
    assert "ValueError: learning rate too high: 0.5" in caught.value.message
    assert not (tmp_path / "w").exists()


@pytest.mark.integration
def test_input_rejected_422(tmp_path: Path) -> None:
    model = prepare_model(SEED_MODELS["all-inputs"], tmp_path / "m")
    server = start_cog_server(model, ["--await-explicit-shutdown", "true"])
    driver = Driver(model_url=server.url, training_id="t-422", inputs={"train_data": "x", "steps": "five"},
                    destination=LocalDestination(tmp_path / "dest", "pvc://c/p"), scratch=tmp_path / "s",
                    log=io.StringIO())
    error = expect_failure(server, driver)
    assert error.reason == "InputRejected" and error.exit_code == 12
    assert 'input.steps: "five" is not of type "integer"' in error.message
    assert server.process.returncode is not None, "the driver shut the model server down"


@pytest.mark.integration
def test_cancel_mid_training(tmp_path: Path) -> None:
    model = prepare_model(DRIVER_MODELS / "chatty", tmp_path / "m")
    server = start_cog_server(model, ["--await-explicit-shutdown", "true"])
    log = io.StringIO()
    driver = Driver(model_url=server.url, training_id="t-cancel", inputs={"lines": 10**9},
                    destination=LocalDestination(tmp_path / "dest", "pvc://c/p"), scratch=tmp_path / "s", log=log,
                    cancel_grace=3)
    threading.Timer(1.5, driver.cancel_requested.set).start()
    error = expect_failure(server, driver)
    assert error.reason == "Canceled" and error.exit_code == 14
    assert "step 0 loss" in log.getvalue()


@pytest.mark.integration
def test_unreachable_model_server(tmp_path: Path) -> None:
    driver = Driver(model_url=f"http://127.0.0.1:{free_port()}", training_id="t", inputs={},
                    destination=LocalDestination(tmp_path, "pvc://c"), scratch=tmp_path / "s", setup_timeout=1,
                    log=io.StringIO())
    with pytest.raises(DriverError) as caught:
        driver.run()
    assert caught.value.reason == "ModelUnreachable"


@pytest.mark.unit
@pytest.mark.parametrize(("name", "safe"), [("../../etc/passwd", "passwd"), ("..", "output"), ("a b$.bin", "a_b_.bin"),
                                            ("%2e%2e%2fsecret", "secret"), (".hidden", "hidden"), ("w.safetensors", "w.safetensors")])
def test_safe_names(name: str, safe: str) -> None:
    assert safe_name(name) == safe


@pytest.mark.integration
def test_upload_with_a_traversal_name_stays_in_scratch(tmp_path: Path) -> None:
    receiver = Receiver(tmp_path / "scratch", "127.0.0.1:0", io.StringIO())
    (tmp_path / "scratch").mkdir()
    try:
        request = urllib.request.Request(f"{receiver.url}/upload/..%2F..%2Fetc%2Fpasswd", data=b"x" * 10, method="PUT")
        with urllib.request.urlopen(request) as response:
            location = response.headers["Location"]
    finally:
        receiver.stop()
    assert location == "cogtrain-upload://passwd"
    assert (tmp_path / "scratch" / "passwd").read_bytes() == b"x" * 10
    assert not (tmp_path / "etc").exists()


@pytest.mark.unit
def test_destination_that_refuses_writes(tmp_path: Path) -> None:
    blocked = tmp_path / "readonly"
    blocked.write_text("a file where a folder should be")
    source = tmp_path / "w.bin"
    source.write_bytes(b"w")
    with pytest.raises(DriverError) as caught:
        LocalDestination(blocked / "sub", "pvc://weights/team").put(source, "w.bin")
    assert caught.value.reason == "DestinationUnwritable" and caught.value.exit_code == 13
    assert "cannot write to the destination pvc://weights/team/" in caught.value.message


@pytest.mark.unit
def test_termination_message_fits_and_overflows_to_a_file(tmp_path: Path) -> None:
    small = json.loads(termination_message({"weights": "pvc://c/w.bin"}, None, None))
    assert small == {"status": "succeeded", "output": {"weights": "pvc://c/w.bin"}, "weights": "pvc://c/w.bin"}
    with_metrics = json.loads(termination_message("pvc://c/w.bin", None, None, {"predict_time": 1.5}))
    assert with_metrics["metrics"] == {"predict_time": 1.5}
    crowded = json.loads(termination_message("pvc://c/w.bin", None, None, {f"m{i}": "x" * 100 for i in range(50)}))
    assert "metrics" not in crowded and crowded["output"] == "pvc://c/w.bin", "metrics give way to the output"
    big_output = {f"file{i}": f"pvc://c/{'x' * 50}{i}.bin" for i in range(200)}
    text = termination_message(big_output, None, LocalDestination(tmp_path, "pvc://c/p"), {"predict_time": 1.5})
    assert len(text.encode()) <= 4096
    assert json.loads(text)["output"] == {"$ref": "pvc://c/p/output.json"}
    assert json.loads((tmp_path / "output.json").read_text()) == big_output
    failed = json.loads(termination_message(None, DriverError(Reason.SETUP_FAILED, "boom"), None))
    assert failed == {"status": "failed", "reason": "SetupFailed", "message": "boom"}


@pytest.mark.unit
def test_cli_values_are_typed_by_the_schema(tmp_path: Path) -> None:
    schema = parse_schema(load_schema_document("all-inputs"))
    data = tmp_path / "d.zip"
    data.write_bytes(b"z")
    values = parse_inputs(schema, ["steps=5", "learning_rate=0.5", "use_lora=false", "tags=a", "tags=b",
                                   "run_name=007", f"train_data=@{data}"])
    assert values == {"steps": 5, "learning_rate": 0.5, "use_lora": False, "tags": ["a", "b"], "run_name": "007",
                      "train_data": str(data)}


@pytest.mark.integration
def test_cogtrain_run_command(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["run", str(EXAMPLES / "hello-train"), "-i", "param=world"]) == 0
    assert (tmp_path / "weights").read_text() == "hello world", "./weights, as `cog train` writes it"
    assert main(["run", str(EXAMPLES / "hello-train"), "-i", "parm=world"]) == 1
    assert 'input.parm: unknown input (Cog would silently ignore it). Did you mean "param"?' in capsys.readouterr().err


@pytest.mark.integration
def test_drive_command_stores_under_namespace_and_name(tmp_path: Path) -> None:
    code, out, err = drive_to_end(tmp_path, SEED_MODELS["all-inputs"], {
        "COGTRAIN_INPUT_train_data": json.dumps(str(tmp_path)), "COGTRAIN_INPUT_caption_prefix": '"tok"',
        "COGTRAIN_INPUT_steps": "9", "COGTRAIN_SECRET_INPUT_hf_token": "not-json secret"})
    assert code == 0, err
    report = json.loads((tmp_path / "termination-log").read_text())
    metrics = report.pop("metrics")
    assert metrics["predict_time"] > 0, "the model server's metrics are collected and reported"
    assert report == {"status": "succeeded", "output": "pvc://weights/team/ml/tok/weights.bin",
                      "weights": "pvc://weights/team/ml/tok/weights.bin", "logs": "pvc://weights/team/ml/tok/logs.txt"}
    assert (tmp_path / "mnt" / "team" / "ml" / "tok" / "weights.bin").read_text().startswith("9 0.0001")
    assert "not-json secret" not in out + err, "a Secret's value is never printed"


@pytest.mark.integration
def test_drive_sigterm_stops_the_training_and_reports_terminated(tmp_path: Path) -> None:
    """In a Pod, SIGTERM only means "stop now" (docs/driver.md: how a cancel is told from a disruption)."""
    import signal
    import time

    server, process = start_drive(tmp_path, DRIVER_MODELS / "chatty", {"COGTRAIN_INPUT_lines": str(10**9)},
                             ["--cancel-grace=3"])
    try:
        assert process.stdout is not None
        assert process.stdout.readline().startswith("step 0 loss"), "logs are streamed as they come"
        process.send_signal(signal.SIGTERM)
        started = time.monotonic()
        process.wait(timeout=60)
        server.process.wait(timeout=20)
    finally:
        server.stop()
    assert time.monotonic() - started < 20, "the cancel grace, then the model server is shut down"
    assert process.returncode == 14
    report = json.loads((tmp_path / "termination-log").read_text())
    tail = report.pop("log_tail").split("\n")
    assert report == {"status": "failed", "reason": "Terminated", "message": TERMINATED_MESSAGE,
                      "logs": "pvc://weights/team/ml/tok/logs.txt"}, "the log is stored on a stop too"
    assert 1 <= len(tail) <= 20 and all(line.startswith("step ") for line in tail)


@pytest.mark.unit
def test_destination_layout_and_refusals(tmp_path: Path) -> None:
    from cogtrain.destinations import destination_for

    destination = destination_for("pvc://weights/team/a/", tmp_path, "ml", "tok")
    assert destination.folder == tmp_path / "team" / "a" / "ml" / "tok"
    assert destination.uri_prefix == "pvc://weights/team/a/ml/tok"
    assert destination_for("pvc://weights", tmp_path, "ml", "tok").uri_prefix == "pvc://weights/ml/tok"
    for uri, message in (("pvc://w/../etc", "no . or .. in its path"), ("s3:///p", "needs a bucket"), ("ftp://x", "is not supported")):
        with pytest.raises(DriverError) as caught:
            destination_for(uri, tmp_path, "ml", "tok")
        assert caught.value.reason == "DestinationUnwritable" and message in caught.value.message


@pytest.mark.unit
def test_inputs_from_env() -> None:
    from cogtrain.driver import inputs_from_env

    assert inputs_from_env({"COGTRAIN_INPUT_steps": "5", "COGTRAIN_INPUT_tags": '["a"]', "PATH": "/bin",
                            "COGTRAIN_SECRET_INPUT_token": "raw {not json}",
                            "COGTRAIN_SECRET_LIST_INPUT_tokens": '["t1", "t2"]'}) == {
        "steps": 5, "tags": ["a"], "token": "raw {not json}", "tokens": ["t1", "t2"]}
    with pytest.raises(DriverError) as caught:
        inputs_from_env({"COGTRAIN_INPUT_steps": "five"})
    assert caught.value.reason == "InputRejected" and "five" not in caught.value.message
    for value in ("s3kr1t", '["s3kr1t", 1]', '{"a": "s3kr1t"}'):
        with pytest.raises(DriverError) as caught:
            inputs_from_env({"COGTRAIN_SECRET_LIST_INPUT_tokens": value})
        assert caught.value.reason == "InputRejected" and "s3kr1t" not in caught.value.message
        assert "COGTRAIN_SECRET_LIST_INPUT_tokens (a list[Secret] input) is not a JSON array of strings" in caught.value.message


@pytest.mark.integration
def test_setup_failure_is_final_and_reported_with_the_setup_logs(tmp_path: Path) -> None:
    server = start_cog_server(prepare_model(DRIVER_MODELS / "setup-fails", tmp_path / "m"), wait_ready=False)
    log = io.StringIO()
    error = expect_failure(server, Driver(model_url=server.url, training_id="t1", inputs={}, log=log,
                                          destination=LocalDestination(tmp_path / "dest", "pvc://c/p"),
                                          scratch=tmp_path / "s"))
    assert (error.reason, error.exit_code) == ("SetupFailed", 11)
    assert error.message.startswith("the model's setup failed: ")
    assert "FileNotFoundError: /weights/base.safetensors: no such file" in error.message
    assert "/weights/base.safetensors" in log.getvalue(), "the setup logs go to the driver's output"
    assert server.process.returncode is not None, "the model server was told to shut down"
    assert list((tmp_path / "dest").iterdir()) == [], "nothing stored"


def _flood_line(number: int, width: int = 1000) -> str:
    """Line `number` of the floods model's log."""
    head = f"line {number} "
    return head + "x" * (width - len(head) - 1) + "\n"


@pytest.mark.integration
def test_a_log_flood_and_a_large_inline_file_do_not_grow_the_driver(tmp_path: Path) -> None:
    """Cog re-sends the whole log in every webhook (here up to 20 MB each) and returns a TrainingOutput's
    file inline as a base64 data: URL (here 16 MB, 21 MB encoded, sent twice): the driver reads webhooks
    as they arrive, prints only the log's new part, decodes the file straight to scratch."""
    megabytes, weights_megabytes = 20, 16
    logs = tmp_path / "logs.txt"
    with logs.open("w") as out:
        server, process = start_drive(tmp_path, DRIVER_MODELS / "floods", {
            "COGTRAIN_INPUT_megabytes": str(megabytes), "COGTRAIN_INPUT_weights_megabytes": str(weights_megabytes)},
            stdout=out)
        memory = PeakMemory(process.pid)
        try:
            _, err = process.communicate(timeout=300)
            server.process.wait(timeout=20)
        finally:
            server.stop()
    peak = memory.stop()
    assert process.returncode == 0, err
    assert memory.readings > 10, "the driver's memory was read while it ran"
    assert peak < 60 * 2**20, f"the driver's peak RSS (VmHWM) was {peak / 2**20:.0f} MiB"
    with logs.open() as printed:
        count = 0
        for count, line in enumerate((line for line in printed if not line.startswith("cogtrain.progress ")), 1):
            assert line == _flood_line(count - 1), f"log line {count - 1} is not what the model printed"
    assert count == megabytes * 1000, "every line printed once, in order"
    report = json.loads((tmp_path / "termination-log").read_text())
    assert report["output"] == {"weights": "pvc://weights/team/ml/tok/output"}
    stored = (tmp_path / "mnt" / "team" / "ml" / "tok" / "output").read_bytes()
    assert stored == b"".join(i.to_bytes(4, "big") * 250_000 for i in range(weights_megabytes))


class _Body:
    """A request body read in pieces of at most `size` bytes, recording the largest read asked for."""

    def __init__(self, data: bytes | str, size: int = 65536) -> None:
        self.data = data.encode() if isinstance(data, str) else data
        self.size, self.at, self.largest = size, 0, 0

    def read(self, n: int = -1) -> bytes:
        self.largest = max(self.largest, n)
        piece = self.data[self.at : self.at + min(self.size, n if n >= 0 else len(self.data))]
        self.at += len(piece)
        return piece


class _Sink(io.StringIO):
    """A log stream that records its largest single write."""

    largest = 0

    def write(self, text: str) -> int:
        self.largest = max(self.largest, len(text))
        return super().write(text)


_DOCUMENTS = [
    '{"a": 1, "b": [true, false, null], "c": {"d": -1.5e3, "e": ""}, "f": 0}',
    '"plain \\" \\\\ \\/ \\b\\f\\n\\r\\t \\u00e9 \\ud83d\\ude00 caf\u00e9 \U0001f600 \u8bad\u7ec3"',
    '  [ 1 , 2.25 ,  "x" , [ ] , { } , -0 , 1E+2 ]  ',
    json.dumps({"logs": "line\\n" * 50 + "\u00e9\u4e2d\U0001f600" * 30, "output": ["a", {"b": [1, 2]}]}),
]


@pytest.mark.unit
@pytest.mark.parametrize("document", _DOCUMENTS)
@pytest.mark.parametrize("piece", [1, 2, 3, 7, 65536])
def test_json_stream_reads_what_json_loads_reads(document: str, piece: int) -> None:
    reader = Reader(_Body(document, piece).read, chunk=piece)
    budget = Budget(10**6)
    assert reader.value(budget) == json.loads(document) and not budget.exceeded
    reader.end()


@pytest.mark.unit
@pytest.mark.parametrize("document", ['{"a" 1}', '{"a": 1', '"open', '[1, 2', "nul", '"\\x"', '01', '{"a": 1} 2',
                                      "[" * 100 + "]" * 100, b'"\xff"'])
def test_json_stream_refuses_what_is_not_json(document: str | bytes) -> None:
    reader = Reader(_Body(document, 3).read, chunk=3)
    with pytest.raises(JSONStreamError):
        reader.value(Budget(10**6))
        reader.end()


@pytest.mark.unit
def test_json_stream_keeps_only_what_its_budget_allows() -> None:
    budget = Budget(10)
    value = Reader(_Body('{"short": "abc", "long": "' + "x" * 1000 + '", "after": 1}').read).value(budget)
    assert budget.exceeded and value["short"] == "abc" and "x" * 11 not in json.dumps(value)
    reader = Reader(_Body('{"skip": [1, {"x": "' + "y" * 100000 + '"}], "keep": 2}').read)
    seen = {}
    for key in reader.members():
        if key == "keep":
            seen[key] = reader.value(Budget(10))
        else:
            reader.skip()
    assert seen == {"keep": 2}


def _webhook(**fields: object) -> bytes:
    return json.dumps({"id": "t", "input": {"steps": 1}, **fields}).encode()


@pytest.mark.unit
def test_each_webhook_prints_only_the_logs_new_part_in_bounded_pieces(tmp_path: Path) -> None:
    """Cog re-sends the whole log in every webhook: it is read and printed piece by piece, never whole."""
    log = _Sink()
    inbox = Inbox(tmp_path, log, io.StringIO())
    lines = [f"step {i} loss {1 / (i + 1):.4f} caf\u00e9 \U0001f600\n" for i in range(200_000)]  # ~7 MB
    bodies = [_Body(_webhook(status="processing", logs="".join(lines[:n])), 65536) for n in (10, 120_000, 200_000)]
    for body in bodies:
        inbox.webhook(body.read)
    inbox.webhook(_Body(_webhook(status="succeeded", logs="".join(lines), output="w")).read)
    assert log.getvalue() == "".join(lines), "every line once, in order"
    assert log.largest <= 65536 and max(body.largest for body in bodies) <= 65536
    assert inbox.state.done.is_set() and inbox.state.output == "w"


@pytest.mark.unit
@pytest.mark.parametrize("late", ["processing", "starting", "succeeded"])
def test_a_webhook_that_arrives_after_the_training_ended_changes_nothing(tmp_path: Path, late: str) -> None:
    """Cog 0.23's coglet sends webhooks from concurrent tasks, so a "processing" one can arrive after "failed"; the
    failed training stayed failed only if the late one is ignored (it once made the driver store no weights)."""
    inbox = Inbox(tmp_path, io.StringIO(), io.StringIO())
    inbox.webhook(_Body(_webhook(status="failed", error="ValueError: bad")).read)
    inbox.webhook(_Body(_webhook(status=late, output="w", logs="late")).read)
    assert inbox.state.done.is_set()
    assert (inbox.state.status, inbox.state.error, inbox.state.output) == ("failed", "ValueError: bad", None)


@pytest.mark.unit
def test_a_data_url_in_the_output_is_decoded_to_a_file_as_it_arrives(tmp_path: Path) -> None:
    weights = bytes(range(256)) * 4099
    url = "data:application/octet-stream;base64," + base64.b64encode(weights).decode()
    inbox = Inbox(tmp_path, io.StringIO(), io.StringIO())
    inbox.webhook(_Body(_webhook(status="processing", output={"weights": url}), 1000).read)
    assert list(tmp_path.iterdir()) == [], "the output of a webhook before the last is not kept"
    inbox.webhook(_Body(_webhook(status="succeeded", output={"weights": url, "note": "data"}), 1000).read)
    spooled = inbox.state.output["weights"]
    assert isinstance(spooled, Spooled) and spooled.path.read_bytes() == weights
    assert inbox.state.output["note"] == "data"


@pytest.mark.unit
@pytest.mark.parametrize("piece", [1, 2, 3, 5, 4096])
def test_data_urls_decode_the_same_in_any_pieces(tmp_path: Path, piece: int) -> None:
    data = bytes(range(256)) * 3 + "caf\u00e9 %".encode()
    for encoded, is_base64 in ((base64.b64encode(data).decode(), True), (urllib.parse.quote_from_bytes(data), False)):
        decoder = DataUrlFile(tmp_path / "out", is_base64)
        for start in range(0, len(encoded), piece):
            decoder.write(encoded[start : start + piece])
        decoder.close()
        assert (tmp_path / "out").read_bytes() == data


@pytest.mark.unit
def test_an_output_too_large_to_keep_fails_the_training(tmp_path: Path) -> None:
    inbox = Inbox(tmp_path, io.StringIO(), io.StringIO())
    inbox.webhook(_Body(_webhook(status="succeeded", output="x" * (OUTPUT_LIMIT + 1))).read)
    assert inbox.state.done.is_set() and inbox.state.failure is not None
    assert inbox.state.failure.reason == "TrainingFailed" and "larger than 4 MiB" in inbox.state.failure.message


@pytest.mark.unit
def test_a_webhook_that_is_not_json_is_ignored(tmp_path: Path) -> None:
    notices = io.StringIO()
    inbox = Inbox(tmp_path, io.StringIO(), notices)
    inbox.webhook(_Body(b'{"status": "succeeded", "output": [1, 2').read)
    assert not inbox.state.done.is_set() and "ignored a webhook" in notices.getvalue()


_SECRET = "hf_'s3kr1t\\\u00e9\"x"  # a quote of each kind, a backslash, a non-ASCII letter


@pytest.mark.unit
def test_secrets_are_redacted_in_every_usual_encoding() -> None:
    redact = Redactor([_SECRET, '["list-s3kr1t-a", "list-s3kr1t-b"]', "  "])
    for form in (_SECRET, json.dumps(_SECRET)[1:-1], json.dumps(_SECRET, ensure_ascii=False)[1:-1],
                 repr(_SECRET)[1:-1], urllib.parse.quote(_SECRET, safe=""), "list-s3kr1t-b"):
        assert redact(f"before {form} after") == "before *** after"
    assert redact("two spaces  stay") == "two spaces  stay", "a blank Secret is not a secret"
    assert redact.cut("cut at hf_'s3k") == "cut at ", "a text cut mid-secret loses the secret's beginning"
    assert redact.value({"k": [_SECRET, 1, None]}) == {"k": ["***", 1, None]}


@pytest.mark.unit
def test_a_secret_split_between_writes_or_webhooks_is_still_redacted(tmp_path: Path) -> None:
    log = io.StringIO()
    inbox = Inbox(tmp_path, log, io.StringIO(), Redactor([_SECRET]))
    text = f"token {_SECRET} ok\nagain {_SECRET[:4]}"
    inbox.webhook(_Body(_webhook(status="processing", logs=text)).read)
    assert log.getvalue() == "token *** ok\nagain ", "the possible beginning of a secret waits for more"
    inbox.webhook(_Body(_webhook(status="processing", logs=text + _SECRET[4:] + "\n"), 5).read)
    inbox.finish()
    assert log.getvalue() == "token *** ok\nagain ***\n"
    writer = RedactingWriter(out := io.StringIO(), Redactor([_SECRET]))
    for char in f"a{_SECRET}b{_SECRET[:3]}":
        writer.write(char)
    writer.flush(final=True)
    assert out.getvalue() == f"a***b{_SECRET[:3]}"


@pytest.mark.unit
def test_a_long_multibyte_failure_message_fits_the_report() -> None:
    text = termination_message(None, DriverError(Reason.TRAINING_FAILED, "\u8bad\u7ec3\u5931\u8d25" * 1250), None)
    assert len(text.encode()) <= TERMINATION_LIMIT
    report = DriverReport.decode(text)
    assert report is not None and report.reason == "TrainingFailed" and report.message.startswith("\u8bad\u7ec3")


@pytest.mark.unit
def test_an_output_that_cannot_be_stored_as_output_json_is_reported_as_that_failure(tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("a file where the destination's folder should be")
    text = termination_message("\u00e9" * 5000, None, LocalDestination(blocked / "sub", "pvc://c/p"))
    report = DriverReport.decode(text)
    assert len(text.encode()) <= TERMINATION_LIMIT and report is not None
    assert report.status == "failed" and report.reason == "DestinationUnwritable"
    assert report.message is not None and "could not be stored" in report.message


def _once_training(server: CogServer, then: Callable[[], object]) -> list[float]:
    """Run `then` (in a thread) once the server runs a training (BUSY); the list gets the time it ran."""
    when: list[float] = []

    def wait() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and server.request("GET", "/health-check")[1].get("status") != "BUSY":
            time.sleep(0.05)
        time.sleep(0.5)
        then()
        when.append(time.monotonic())

    threading.Thread(target=wait, daemon=True).start()
    return when


@pytest.mark.integration
def test_a_model_server_that_dies_mid_training_ends_it_as_unreachable(tmp_path: Path) -> None:
    """The whole model container dies (server and worker, SIGKILL): no webhook will ever come."""
    server = start_cog_server(prepare_model(DRIVER_MODELS / "sleeps", tmp_path / "m"), ["--await-explicit-shutdown", "true"])
    log = io.StringIO()
    driver = Driver(model_url=server.url, training_id="t-dies", inputs={"seconds": 600}, log=log,
                    notices=io.StringIO(), destination=LocalDestination(tmp_path / "dest", "pvc://c/p"),
                    scratch=tmp_path / "s", health_interval=0.2, health_grace=2, lost_grace=30)
    killed = _once_training(server, server.kill)
    try:
        _, error, _ = run_within(driver, 60)
    finally:
        server.stop()
    assert killed and time.monotonic() - killed[0] < 15, "the driver ended soon after its grace"
    assert error is not None and (error.reason, error.exit_code) == ("ModelUnreachable", 15)
    assert error.message.startswith("the model server stopped answering during the training: no answer to "
                                    "/health-check for "), error.message
    assert json.loads(termination_message(None, error, None))["reason"] == "ModelUnreachable"


@pytest.mark.integration
def test_a_model_server_restarted_mid_training_ends_it_as_lost(tmp_path: Path) -> None:
    """A native sidecar restarts: the new server is READY and knows nothing of the training."""
    model = prepare_model(DRIVER_MODELS / "sleeps", tmp_path / "m")
    server = start_cog_server(model, ["--await-explicit-shutdown", "true"])
    restarted = []
    log = io.StringIO()
    driver = Driver(model_url=server.url, training_id="t-restart", inputs={"seconds": 600}, log=log,
                    notices=io.StringIO(), destination=LocalDestination(tmp_path / "dest", "pvc://c/p"),
                    scratch=tmp_path / "s", health_interval=0.2, health_grace=60, lost_grace=1)

    def restart() -> None:
        server.kill()
        restarted.append(start_cog_server(model, ["--await-explicit-shutdown", "true"], port=server.port))

    ready = _once_training(server, restart)
    try:
        _, error, _ = run_within(driver, 60)
        assert restarted and restarted[0].process.wait(timeout=20) is not None, "the new server was shut down"
    finally:
        server.stop()
        for again in restarted:
            again.stop()
    assert ready and time.monotonic() - ready[0] < 15
    assert error is not None and (error.reason, error.exit_code) == ("TrainingFailed", 10)
    assert error.message.startswith("the model server lost the training: it has answered READY (running no "
                                    "training) for "), error.message
    assert "restarted" in json.loads(termination_message(None, error, None))["message"]


def _leaked(secret_part: str, *texts: str) -> list[str]:
    return [text for text in texts if secret_part in text]


@pytest.mark.integration
def test_a_422_that_repeats_a_secret_is_reported_without_it(tmp_path: Path) -> None:
    """Cog 0.23 repeats a rejected value in its 422 (`"<the value>" is not of type "array"`): here a
    list[Secret] input passed as one plain Secret string, as a Job made before lists of Secrets did."""
    secret = "s3kr1t-\"422\"-\u00e9"
    code, out, err = drive_to_end(tmp_path, DRIVER_MODELS / "leaks-secret", {
        "COGTRAIN_SECRET_INPUT_token": "tok-fine", "COGTRAIN_SECRET_INPUT_extra_tokens": secret})
    report_text = (tmp_path / "termination-log").read_text()
    assert code == 12, err
    report = json.loads(report_text)
    assert report["reason"] == "InputRejected"
    assert 'input.extra_tokens: "***" is not of type "array"' in report["message"]
    assert not _leaked("s3kr1t", report_text, out, err)


@pytest.mark.integration
def test_a_training_error_and_logs_that_repeat_a_secret_are_reported_without_it(tmp_path: Path) -> None:
    """train() prints its tokens and raises an error quoting one (Python's repr and as it is)."""
    code, out, err = drive_to_end(tmp_path, DRIVER_MODELS / "leaks-secret", {
        "COGTRAIN_SECRET_INPUT_token": _SECRET,
        "COGTRAIN_SECRET_LIST_INPUT_extra_tokens": json.dumps(["list-s3kr1t-1", "list-s3kr1t-2"])})
    report_text = (tmp_path / "termination-log").read_text()
    assert code == 10, err
    report = json.loads(report_text)
    assert report["reason"] == "TrainingFailed"
    assert "PermissionError: the hub refused the token '***' (plain: ***)" in report["message"], report["message"]
    assert "logging in with ***, then with ***, ***\n" in out, "the list's items are redacted one by one"
    assert not _leaked("s3kr1t", report_text, out, err)


@pytest.mark.integration
def test_a_long_non_ascii_output_is_reported_within_the_limit(tmp_path: Path) -> None:
    text = "\u8bad\u7ec3\u00e9\U0001f600" * 1250  # 5000 characters, 11250 bytes
    code, _, err = drive_to_end(tmp_path, DRIVER_MODELS / "echo-output", {
        "COGTRAIN_INPUT_text": json.dumps(text[:4]), "COGTRAIN_INPUT_repeat": "1250"})
    message = (tmp_path / "termination-log").read_text(encoding="utf-8")
    assert code == 0, err
    assert len(message.encode()) <= TERMINATION_LIMIT
    report = DriverReport.decode(message)  # what the operator's status reads
    assert report is not None and report.status == "succeeded"
    assert report.output == {"$ref": "pvc://weights/team/ml/tok/output.json"}
    assert json.loads((tmp_path / "mnt" / "team" / "ml" / "tok" / "output.json").read_text()) == text


@pytest.mark.integration
def test_an_output_naming_an_upload_that_never_arrived_fails_with_a_report(tmp_path: Path) -> None:
    code, _, err = drive_to_end(tmp_path, DRIVER_MODELS / "echo-output", {
        "COGTRAIN_INPUT_text": json.dumps("cogtrain-upload://never-sent.bin")})
    assert code == 10, err
    report = json.loads((tmp_path / "termination-log").read_text())
    assert {key: report[key] for key in ("status", "reason", "message")} == {
        "status": "failed", "reason": "TrainingFailed",
        "message": "the model's output names an uploaded file that never arrived: never-sent.bin"}


class _Exploding:
    """A destination whose check fails in a way the driver does not expect, naming a secret."""

    uri_prefix = "pvc://c/p"

    def check(self) -> None:
        raise RuntimeError(f"unexpected: {_SECRET}")

    def put(self, source: Path, name: str) -> str:
        raise AssertionError("never reached")


@pytest.mark.integration
def test_the_drivers_own_failure_is_reported_without_a_secret(tmp_path: Path) -> None:
    notices = io.StringIO()
    driver = Driver(model_url=f"http://127.0.0.1:{free_port()}", training_id="t", inputs={}, notices=notices,
                    destination=_Exploding(), scratch=tmp_path / "s", log=io.StringIO(), secrets=[_SECRET])
    with pytest.raises(DriverError) as caught:
        driver.run()
    assert (caught.value.reason, caught.value.exit_code) == ("DriverFailed", 16)
    assert caught.value.message == "the driver failed: RuntimeError: unexpected: ***"
    assert "s3kr1t" not in notices.getvalue()


# --- second review (hostile outputs and short secrets) ------------------------------------------


@pytest.mark.unit
@pytest.mark.parametrize("text", ["data: 120 rows, 3 columns", "data:", "data:" + "x" * 5000, "data:;x, y z"])
def test_text_that_only_starts_with_data_is_not_a_file(tmp_path: Path, text: str) -> None:
    inbox = Inbox(tmp_path, io.StringIO(), io.StringIO())
    inbox.webhook(_Body(_webhook(status="succeeded", output={"summary": text}), 7).read)
    assert inbox.state.failure is None and inbox.state.output == {"summary": text}


@pytest.mark.unit
def test_a_short_secret_does_not_cut_ordinary_text_apart() -> None:
    redact = Redactor(["a", "123", "hunter2-long"])
    assert redact("s3://data-bucket/trainings/ns/name") == "s3://data-bucket/trainings/ns/name"
    assert redact("token hunter2-long used") == "token *** used"


@pytest.mark.unit
def test_metrics_are_merged_but_never_without_bound(tmp_path: Path) -> None:
    inbox = Inbox(tmp_path, io.StringIO(), io.StringIO())
    inbox.webhook(_Body(_webhook(status="processing", metrics={"loss": 1.0})).read)
    inbox.webhook(_Body(_webhook(status="processing", metrics={})).read)
    inbox.webhook(_Body(_webhook(status="processing", metrics={"predict_time": 2.0})).read)
    assert inbox.state.metrics == {"loss": 1.0, "predict_time": 2.0}, "a webhook with fewer metrics loses none"
    for i in range(100):
        inbox.webhook(_Body(_webhook(status="processing", metrics={f"m{i}": i})).read)
    assert len(inbox.state.metrics) <= 64


@pytest.mark.unit
def test_cogs_own_prefixes_are_taken_off_the_models_error() -> None:
    assert cog_error("Prediction failed: Training failed: ValueError: too high") == "ValueError: too high"
    assert cog_error("ValueError: Training failed: x") == "ValueError: Training failed: x"
    assert cog_error(None) == cog_error("  ") == "no error given"


@pytest.mark.integration
def test_a_sigterm_while_the_driver_starts_still_shuts_the_model_server_down(tmp_path: Path) -> None:
    """Cog's server ignores SIGTERM (--await-explicit-shutdown): a driver stopped early must still call /shutdown,
    or the server holds the Pod for its whole grace period (seen on the real control plane)."""
    import http.server
    import signal
    import subprocess
    import sys
    import threading
    import time

    seen: list[str] = []

    class Starting(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802
            seen.append(f"GET {self.path}")
            body = b'{"status": "STARTING"}'
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:  # noqa: N802
            seen.append(f"POST {self.path}")
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Starting)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "cogtrain.cli", "drive", f"--model-url=http://127.0.0.1:{server.server_port}",
             "--listen=127.0.0.1:0", "--training-id=t", "--name=n", "--destination=pvc://claim",
             f"--destination-root={tmp_path}", f"--scratch={tmp_path / 'scratch'}",
             f"--termination-log={tmp_path / 'log'}", "--setup-timeout=60"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 30
        while not any(s.startswith("GET /health-check") for s in seen) and time.monotonic() < deadline:
            time.sleep(0.02)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 14, process.stderr.read() if process.stderr else ""
    finally:
        server.shutdown()
    assert "POST /shutdown" in seen
    assert json.loads((tmp_path / "log").read_text())["reason"] == "Terminated"


@pytest.mark.integration
def test_an_upload_that_arrives_in_bursts_is_received_whole(tmp_path: Path) -> None:
    """The receiver splices socket to file: a socket left non-blocking (by a Python timeout) made splice fail
    with EAGAIN as soon as the sender paused, and the upload was cut (found by bench/driver_transfer.py)."""
    import socket
    import time

    receiver = Receiver(tmp_path, "127.0.0.1:0", io.StringIO(), io.StringIO())
    host, port = receiver.server.server_address[:2]
    piece, pieces = b"w" * (1 << 20), 24
    try:
        with socket.create_connection((host, port), timeout=30) as sock:
            sock.sendall(f"PUT /upload/w.bin HTTP/1.1\r\nHost: x\r\nContent-Length: {len(piece) * pieces}\r\n\r\n".encode())
            for _ in range(pieces):
                sock.sendall(piece)
                time.sleep(0.01)  # the receiver catches up and finds the socket empty
            answer = sock.recv(4096)
        assert answer.startswith(b"HTTP/1.0 201") or answer.startswith(b"HTTP/1.1 201"), answer[:100]
        assert (tmp_path / "w.bin").stat().st_size == len(piece) * pieces
    finally:
        receiver.stop()


def _raw_request(port: int, head: str, parts: tuple[bytes | float, ...], timeout: float = 20) -> bytes:
    """Send a request as written (with pauses where `parts` has seconds), half-close, read the whole answer."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head.encode())
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # a client sends on; it reads the answer
            for part in parts:
                if isinstance(part, float):
                    time.sleep(part)
                else:
                    sock.sendall(part)
            sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


_PUT = "PUT /upload/w.bin HTTP/1.1\r\nHost: x\r\n{}Connection: close\r\n\r\n"


@pytest.mark.integration
@pytest.mark.parametrize(("headers", "parts", "status", "stored"), [
    ("Content-Length: 5\r\n", (b"hello",), 201, b"hello"),
    ("Transfer-Encoding: chunked\r\n", (b"5\r\nhello\r\n0\r\n\r\n",), 201, b"hello"),
    ("Transfer-Encoding: chunked\r\n", (b"5;ext=1\r\nhel", 0.2, b"lo\r\n3\r\n!!!\r\n0\r\nX-T: 1\r\n\r\n"), 201,
     b"hello!!!"),
    # cut short: never a smaller file with a 201
    ("Content-Length: 100\r\n", (b"0123456789",), 500, None),
    ("Transfer-Encoding: chunked\r\n", (b"5\r\nhello\r\n",), 500, None),  # no last chunk
    ("Transfer-Encoding: chunked\r\n", (b"100\r\nhello",), 500, None),  # inside a chunk
    ("Transfer-Encoding: chunked\r\n", (b"5\r\nhello\r\n", 2.5), 500, None),  # stalls past the idle timeout
    ("Transfer-Encoding: chunked\r\n", (b"zz\r\nhello\r\n0\r\n\r\n",), 500, None),
    ("Transfer-Encoding: chunked\r\n", (b"3\r\nhello\r\n0\r\n\r\n",), 500, None),  # longer than its size
    # a length that cannot be known: refused before a file exists
    ("Content-Length: abc\r\n", (b"hello",), 400, None),
    ("Content-Length: abc\r\n", (0.3, b"hello" * 40000), 400, None),  # body sent after the answer: still read
    ("Content-Length: -5\r\n", (b"hello",), 400, None),
    ("Content-Length: 5\r\nContent-Length: 100\r\n", (b"hello",), 400, None),
    ("", (b"hello",), 411, None),
    ("Transfer-Encoding: gzip, chunked\r\n", (b"5\r\nhello\r\n0\r\n\r\n",), 501, None),
])
def test_an_upload_is_stored_only_when_its_body_is_whole(tmp_path: Path, headers: str,
                                                         parts: tuple[bytes | float, ...], status: int,
                                                         stored: bytes | None) -> None:
    notices = io.StringIO()
    receiver = Receiver(tmp_path, "127.0.0.1:0", io.StringIO(), notices, idle_timeout=1)
    try:
        answer = _raw_request(receiver.server.server_address[1], _PUT.format(headers), parts)
    finally:
        receiver.stop()
    assert answer.split(b"\r\n", 1)[0].split(b" ")[1] == str(status).encode(), (answer[:200], notices.getvalue())
    assert [p.read_bytes() for p in tmp_path.iterdir()] == ([stored] if stored is not None else [])
    assert receiver.state.uploads == ({"w.bin": tmp_path / "w.bin"} if stored is not None else {})


@pytest.mark.integration
def test_a_webhook_cut_short_is_ignored_and_answered_400(tmp_path: Path) -> None:
    notices = io.StringIO()
    receiver = Receiver(tmp_path, "127.0.0.1:0", io.StringIO(), notices, idle_timeout=1)
    body = b'{"status": "succeeded", "output": "weig'
    try:
        answer = _raw_request(receiver.server.server_address[1],
                              f"POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body) + 50}\r\n\r\n",
                              (body,))
    finally:
        receiver.stop()
    assert answer.startswith(b"HTTP/1.0 400"), answer[:200]
    assert "could not be read" in notices.getvalue() and not receiver.state.done.is_set()


# --- progress records and logs.txt (docs/driver.md, "Progress and logs") -----------------------------------


def _records(text: str) -> list[dict[str, Any]]:
    from cogtrain.progress import MARKER

    return [json.loads(line[len(MARKER):]) for line in text.split("\n") if line.startswith(MARKER)]


@pytest.mark.integration
def test_drive_prints_progress_records_while_the_training_runs_and_stores_its_log(tmp_path: Path) -> None:
    """The model draws a tqdm bar, records metrics through Cog, prints its token and a forged record."""
    from cogtrain.progress import ESCAPE, MARKER, last_record

    secret = "tok-s3kr1t-progress"
    server, process = start_drive(tmp_path, DRIVER_MODELS / "progress", {
        "COGTRAIN_INPUT_steps": "6", "COGTRAIN_INPUT_seconds": "0.7", "COGTRAIN_SECRET_INPUT_token": secret})
    seen_running: list[dict[str, Any]] = []
    printed: list[str] = []
    try:
        assert process.stdout is not None
        for line in process.stdout:
            printed.append(line)
            if line.startswith(MARKER) and process.poll() is None and not seen_running:
                record = json.loads(line[len(MARKER):])
                if record.get("metrics") and (record.get("progress") or {}).get("percent", 100) < 100:
                    seen_running.append(record)
        _, err = process.communicate(timeout=60)
        server.process.wait(timeout=20)
    finally:
        server.stop()
    out = "".join(printed)
    assert process.returncode == 0, err
    assert seen_running, "a record with progress and metrics came while the training ran"
    assert seen_running[0]["metrics"]["values"]["loss"] > 0.1
    final = last_record(out)
    assert final is not None and final.progress is not None and final.metrics is not None
    assert (final.progress.percent, final.progress.current, final.progress.total) == (100.0, 6, 6)
    assert final.metrics.values["loss"] == round(1 / 6, 4) and final.metrics.values["phase"] == "main"
    assert final.last_log is not None and final.last_log.line == "trained 6 steps"
    assert ESCAPE + MARKER + '{"progress":{"percent":99' in out, "the model's forged record is escaped"
    assert all((r.get("progress") or {}).get("percent") != 99 for r in _records(out))
    assert "logging in with ***" in out
    report = json.loads((tmp_path / "termination-log").read_text())
    assert report["logs"] == "pvc://weights/team/ml/tok/logs.txt" and "log_tail" not in report
    stored = (tmp_path / "mnt" / "team" / "ml" / "tok" / "logs.txt").read_text()
    assert "logging in with ***\n" in stored and "trained 6 steps\n" in stored and "6/6 [" in stored
    assert MARKER + "{" not in stored.replace(MARKER + '{"progress":{"percent":99', ""), "no records in logs.txt"
    assert secret not in out + err + stored + json.dumps(report)


@pytest.mark.integration
def test_a_failed_drive_reports_its_log_tail_and_stores_its_log(tmp_path: Path) -> None:
    secret = "tok-s3kr1t-fails"
    code, out, err = drive_to_end(tmp_path, DRIVER_MODELS / "progress", {
        "COGTRAIN_INPUT_steps": "3", "COGTRAIN_INPUT_seconds": "0.1", "COGTRAIN_INPUT_fail": "true",
        "COGTRAIN_SECRET_INPUT_token": secret})
    assert code == 10, err
    report = json.loads((tmp_path / "termination-log").read_text())
    assert report["reason"] == "TrainingFailed" and "RuntimeError: diverged after 3 steps" in report["message"]
    assert report["logs"] == "pvc://weights/team/ml/tok/logs.txt"
    tail = report["log_tail"].split("\n")
    assert tail[0] == "logging in with ***" and "100%|##########| 3/3 [" in tail[1] and "trained 3 steps" in tail
    assert "\r" not in report["log_tail"]
    stored = (tmp_path / "mnt" / "team" / "ml" / "tok" / "logs.txt").read_text()
    assert "trained 3 steps" in stored
    assert secret not in out + err + stored + json.dumps(report)


@pytest.mark.integration
def test_a_log_that_cannot_be_stored_does_not_change_the_outcome(tmp_path: Path) -> None:
    class Refuses(LocalDestination):
        def put(self, source: Path, name: str) -> str:
            if name == "logs.txt":
                raise DriverError(Reason.DESTINATION_UNWRITABLE, "cannot write to the destination pvc://c/p/: full")
            return super().put(source, name)

    server = start_cog_server(prepare_model(DRIVER_MODELS / "progress", tmp_path / "m"),
                              ["--await-explicit-shutdown", "true"])
    notices = io.StringIO()
    driver = Driver(model_url=server.url, training_id="t-logs", inputs={"steps": 2, "seconds": 0.1},
                    destination=Refuses(tmp_path / "dest", "pvc://c/p"), scratch=tmp_path / "s", log=io.StringIO(),
                    notices=notices, keep_log=True, records=True)
    try:
        output, error, _ = run_within(driver, 60)
    finally:
        server.stop()
    assert error is None and str(output).startswith("pvc://c/p/")
    assert driver.logs_uri is None
    assert "the training's log could not be stored as logs.txt: cannot write to the destination" in notices.getvalue()


@pytest.mark.unit
@pytest.mark.parametrize(("stopped", "limit"), [(False, 5.0), (True, 0.5)])
def test_a_destination_that_hangs_holds_the_log_store_a_bounded_time(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stopped: bool, limit: float) -> None:
    """The report is written after logs.txt is stored: a destination that hangs (blackholed S3, a stuck NFS claim)
    must not hold it past the Pod's grace period after a SIGTERM (the kubelet kills it, and no report is left)."""
    from cogtrain import driver as driver_module
    from cogtrain.driver import BoundedLog

    monkeypatch.setattr(driver_module, "LOG_STORE_TIMEOUT", 5.0)
    monkeypatch.setattr(driver_module, "LOG_STORE_GRACE", 0.5)
    release = threading.Event()

    class Hangs(LocalDestination):
        def put(self, source: Path, name: str) -> str:
            release.wait(30)
            return super().put(source, name)

    notices = io.StringIO()
    receiver = Inbox(tmp_path / "r", io.StringIO(), notices)
    driver = Driver(model_url="http://127.0.0.1:1", training_id="t", inputs={},
                    destination=Hangs(tmp_path / "dest", "pvc://c/p"), scratch=tmp_path / "s", keep_log=True)
    if stopped:
        driver.cancel_requested.set()
    log = BoundedLog(tmp_path)
    log.write("step 1/2\nboom\n")
    started = time.monotonic()
    try:
        driver._store_log(log, receiver)
        took = time.monotonic() - started
    finally:
        release.set()
    assert limit - 0.2 < took < limit + 2
    assert driver.logs_uri is None and driver.log_tail == "step 1/2\nboom"
    assert f"was not stored within {limit:g} s" in notices.getvalue()
