"""The driver against Cog's own model server (the `cog` package), through `cogtrain run`."""

from __future__ import annotations

import io
import json
import threading
import urllib.request
from pathlib import Path

import pytest

from cogtrain.cli import main
from cogtrain.contract import Reason
from cogtrain.destinations import DriverError, LocalDestination, safe_name
from cogtrain.driver import Driver, Receiver, termination_message
from cogtrain.local import parse_inputs, run_training
from cogtrain.schema import parse_schema
from support.cogserver import free_port, prepare_model, start_cog_server
from support.driving import drive_to_end, expect_failure, start_drive
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
                      "weights": "pvc://weights/team/ml/tok/weights.bin"}
    assert (tmp_path / "mnt" / "team" / "ml" / "tok" / "weights.bin").read_text().startswith("9 0.0001")
    assert "not-json secret" not in out + err, "a Secret's value is never printed"


@pytest.mark.integration
def test_drive_sigterm_cancels_the_training(tmp_path: Path) -> None:
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
    assert json.loads((tmp_path / "termination-log").read_text()) == {
        "status": "failed", "reason": "Canceled", "message": "the training was canceled"}


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
                            "COGTRAIN_SECRET_INPUT_token": "raw {not json}"}) == {
        "steps": 5, "tags": ["a"], "token": "raw {not json}"}
    with pytest.raises(DriverError) as caught:
        inputs_from_env({"COGTRAIN_INPUT_steps": "five"})
    assert caught.value.reason == "InputRejected" and "five" not in caught.value.message


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
