"""File inputs from cluster storage: s3:// objects and pvc:// files reach the model's train(), served by the
driver on loopback, through Cog's own server; and what the driver refuses to read."""

from __future__ import annotations

import hashlib
import io
import json
import os
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from cogtrain.contract import parse_storage_ref
from cogtrain.destinations import InputFiles, LocalDestination
from cogtrain.driver import Driver, Receiver
from support.cogserver import free_port
from support.driving import PeakMemory, drive_to_end, run_within, start_drive
from support.paths import DRIVER_MODELS
from support.s3_server import BUCKET, S3Server

READS_FILES = DRIVER_MODELS / "reads-files"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _claim(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


@pytest.mark.integration
def test_s3_and_pvc_inputs_reach_train_as_files_with_their_names(tmp_path: Path, s3: S3Server) -> None:
    """As the Job runs it: `cogtrain drive` beside Cog's server; a claim of its own, the destination's claim
    and an object read with the Secret of spec.inputSecretRef (a read-only user here)."""
    dataset, earlier, obj = os.urandom(3 * 2**20 + 7), b"earlier weights", b'{"rank": 8}'
    _claim(tmp_path / "inputs" / "datasets", {"images/train data.tar.gz": dataset})
    (tmp_path / "inputs" / "datasets" / "latest.tar.gz").symlink_to("images/train data.tar.gz")
    _claim(tmp_path / "mnt", {"team/ml/earlier/weights.bin": earlier})
    s3.client().put_object(Bucket=BUCKET, Key="in/ml/tok/config.json", Body=obj)  # type: ignore[attr-defined]
    reader = {f"COGTRAIN_SOURCE_{key}": value for key, value in s3.env("reader").items()}
    code, out, err = drive_to_end(tmp_path, READS_FILES, {
        "COGTRAIN_INPUT_data": json.dumps("pvc://datasets/images/train data.tar.gz"),
        "COGTRAIN_INPUT_extra": json.dumps([f"s3://{BUCKET}/in/ml/tok/config.json",
                                            "pvc://weights/team/ml/earlier/weights.bin",
                                            "pvc://datasets/latest.tar.gz"]),
        "COGTRAIN_INPUT_note": json.dumps("s3://only/text"),
        "COGTRAIN_STORAGE_INPUTS": json.dumps(["data", "extra"]),
        **reader,
    }, [f"--inputs-root={tmp_path / 'inputs'}"])
    assert code == 0, err
    output = json.loads((tmp_path / "termination-log").read_text())["output"]
    lines = [line.rsplit(" ", 1) for line in output.split("\n")]
    assert [digest for _, digest in lines[:-1]] == [_sha(dataset), _sha(obj), _sha(earlier), _sha(dataset)]
    names = [name for name, _ in lines[:-1]]
    assert [name.endswith(suffix) for name, suffix in zip(names, (
        "train data.tar.gz", "config.json", "weights.bin", "latest.tar.gz"), strict=True)] == [True] * 4, (
        f"Cog keeps the file's own name (and extension) at the end of its temporary file's: {names}")
    assert output.split("\n")[-1] == "s3://only/text", "a string input's text is passed as it is"
    assert f"served s3://{BUCKET}/in/ml/tok/config.json: {len(obj)} bytes" in err
    assert s3.reader["AWS_SECRET_ACCESS_KEY"] not in out + err


@pytest.mark.integration
def test_large_file_inputs_are_streamed_without_growing_the_driver(tmp_path: Path, s3: S3Server) -> None:
    """256 MiB from a claim (sendfile) and 48 MiB from S3 (1 MiB pieces) reach train() whole; the driver's
    memory stays that of an idle driver."""
    claim_size, object_size = 256 * 2**20, 48 * 2**20
    big = tmp_path / "inputs" / "datasets" / "big.bin"
    big.parent.mkdir(parents=True)
    with big.open("wb") as out:
        out.truncate(claim_size)
    obj = os.urandom(2**20) * (object_size // 2**20)
    s3.client().put_object(Bucket=BUCKET, Key="in/ml/tok/big.obj", Body=obj)  # type: ignore[attr-defined]
    server, process = start_drive(tmp_path, READS_FILES, {
        "COGTRAIN_INPUT_data": json.dumps("pvc://datasets/big.bin"),
        "COGTRAIN_INPUT_extra": json.dumps([f"s3://{BUCKET}/in/ml/tok/big.obj"]),
        "COGTRAIN_STORAGE_INPUTS": json.dumps(["data", "extra"]), **s3.env("reader"),
    }, [f"--inputs-root={tmp_path / 'inputs'}"])
    memory = PeakMemory(process.pid)
    try:
        _, err = process.communicate(timeout=300)
        server.process.wait(timeout=20)
    finally:
        server.stop()
    peak = memory.stop()
    assert process.returncode == 0, err
    output = json.loads((tmp_path / "termination-log").read_text())["output"]
    assert [line.rsplit(" ", 1)[1] for line in output.split("\n")[:2]] == [_sha(bytes(claim_size)), _sha(obj)]
    assert memory.readings > 10, "the driver's memory was read while it ran"
    assert peak < 80 * 2**20, f"the driver's peak RSS (VmHWM) was {peak / 2**20:.0f} MiB"


def _fail(tmp_path: Path, inputs: dict[str, object], environ: dict[str, str] | None = None) -> str:
    """A training whose file inputs cannot be read: it fails before the model server is even asked
    (here there is none), with InputRejected; its message."""
    claim = _claim(tmp_path / "inputs" / "datasets", {"ok.csv": b"a,b", "sub/x.csv": b"x"})
    (tmp_path / "outside.txt").write_text("the driver's own file")
    (claim / "escape.csv").symlink_to(tmp_path / "outside.txt")
    (claim / "escape-dir").symlink_to(tmp_path)
    os.mkfifo(claim / "pipe.csv")
    driver = Driver(model_url=f"http://127.0.0.1:{free_port()}", training_id="t", inputs=dict(inputs),
                    destination=LocalDestination(tmp_path / "mnt", "pvc://weights"), scratch=tmp_path / "scratch",
                    setup_timeout=5, log=io.StringIO(), storage_inputs=list(inputs),
                    input_files=InputFiles("pvc://weights", tmp_path / "mnt", tmp_path / "inputs", environ or {}))
    _, error, seconds = run_within(driver, 30)
    assert error is not None and error.reason == "InputRejected" and error.exit_code == 12
    assert seconds < 5, "refused before waiting for the model server"
    return error.message


@pytest.mark.integration
@pytest.mark.parametrize(("inputs", "message"), [
    ({"data": "pvc://datasets/missing.csv"}, "input.data: cannot read pvc://datasets/missing.csv: No such file"),
    ({"data": "pvc://datasets/escape.csv"},
     "input.data: cannot read pvc://datasets/escape.csv: it leads outside the claim (a symbolic link)"),
    ({"data": "pvc://datasets/escape-dir/outside.txt"}, "it leads outside the claim (a symbolic link)"),
    ({"data": "pvc://datasets/sub"}, "input.data: cannot read pvc://datasets/sub: it is a folder"),
    ({"data": "pvc://datasets/pipe.csv"}, "cannot read pvc://datasets/pipe.csv: it is not a regular file"),
    ({"data": "pvc://other-claim/ok.csv"}, "cannot read pvc://other-claim/ok.csv: No such file"),
    ({"data": "pvc://datasets/../../outside.txt"}, "input.data: pvc://datasets/../../outside.txt has a . or .. segment"),
    ({"data": "pvc://datasets//etc/passwd"}, "has an empty segment (//)"),
    ({"data": "pvc://datasets/ok.csv", "extra": ["pvc://datasets/ok.csv", "pvc://datasets/nope"]},
     "input.extra[1]: cannot read pvc://datasets/nope"),
])
def test_file_inputs_that_cannot_be_read_fail_at_once_naming_the_input(tmp_path: Path, inputs: dict[str, object],
                                                                       message: str) -> None:
    assert message in _fail(tmp_path, inputs)


@pytest.mark.integration
@pytest.mark.parametrize(("key", "who", "message"), [
    ("in/ml/tok/missing.csv", "reader", f"input.data: cannot read s3://{BUCKET}/in/ml/tok/missing.csv: NoSuchKey"),
    ("in/ml/tok/there.csv", "nobody", "AccessDenied"),
])
def test_s3_inputs_that_cannot_be_read_fail_naming_the_input_and_the_stores_answer(
        tmp_path: Path, s3: S3Server, key: str, who: str, message: str) -> None:
    s3.client().put_object(Bucket=BUCKET, Key="in/ml/tok/there.csv", Body=b"x")  # type: ignore[attr-defined]
    environ = s3.env("reader") if who == "reader" else {**s3.env("reader"), "AWS_SECRET_ACCESS_KEY": "wrong"}
    text = _fail(tmp_path, {"data": f"s3://{BUCKET}/{key}"}, environ)
    assert message in text and "wrong" not in text


@pytest.mark.integration
def test_the_receiver_serves_only_the_files_registered_with_it(tmp_path: Path) -> None:
    claim = _claim(tmp_path / "inputs" / "datasets", {"ok.csv": b"a,b\n"})
    (tmp_path / "inputs" / "datasets" / "other.csv").write_bytes(b"not registered")
    files = InputFiles("s3://bucket/p", tmp_path / "mnt", tmp_path / "inputs", {})
    receiver = Receiver(tmp_path / "scratch", "127.0.0.1:0", io.StringIO(), io.StringIO())
    try:
        url = receiver.serve(files.source(parse_storage_ref("pvc://datasets/ok.csv")), "ok.csv")
        assert url.startswith(receiver.url + "/inputs/") and url.endswith("/ok.csv")
        with urllib.request.urlopen(url, timeout=10) as answer:
            assert answer.read() == b"a,b\n"
        (claim / "ok.csv").write_bytes(b"changed")
        with urllib.request.urlopen(url, timeout=10) as answer:
            assert answer.read() == b"changed", "opened anew for each request"
        token = url.split("/")[-2]
        for path in (f"/inputs/{token[:-1]}/ok.csv", "/inputs/../inputs/datasets/other.csv", "/inputs/datasets/other.csv",
                     f"/inputs/{token}x/ok.csv", "/inputs/", "/upload/x"):
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(receiver.url + path, timeout=10)
            assert refused.value.code == 404, path
        (claim / "ok.csv").unlink()
        with pytest.raises(urllib.error.HTTPError) as gone:
            urllib.request.urlopen(url, timeout=10)
        assert gone.value.code == 502, "a file gone since the check is an error, never an empty file"
    finally:
        receiver.stop()


@pytest.mark.integration
def test_the_receiver_serves_each_file_a_few_times_and_a_few_at_once(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A model cannot make the driver (and the store, on the reader's credentials) read its inputs without end."""
    import socket

    from cogtrain import driver as module

    monkeypatch.setattr(module, "INPUT_SENDS", 1)
    monkeypatch.setattr(module, "INPUT_SEND_WAIT", 0.5)
    claim = _claim(tmp_path / "inputs" / "datasets", {"small.csv": b"a,b\n"})
    with (claim / "big.bin").open("wb") as big:
        big.truncate(256 * 2**20)  # more than the socket buffers hold: its sending waits for a reader
    files = InputFiles("s3://bucket/p", tmp_path / "mnt", tmp_path / "inputs", {})
    notices = io.StringIO()
    receiver = Receiver(tmp_path / "scratch", "127.0.0.1:0", io.StringIO(), notices)
    try:
        small = receiver.serve(files.source(parse_storage_ref("pvc://datasets/small.csv")), "small.csv")
        for _ in range(module.INPUT_FETCHES):
            with urllib.request.urlopen(small, timeout=10) as answer:
                assert answer.read() == b"a,b\n"
        with pytest.raises(urllib.error.HTTPError) as again:
            urllib.request.urlopen(small, timeout=10)
        assert again.value.code == 429
        assert "served 3 times" in notices.getvalue()

        big_url = receiver.serve(files.source(parse_storage_ref("pvc://datasets/big.bin")), "big.bin")
        other = receiver.serve(files.source(parse_storage_ref("pvc://datasets/small.csv")), "small.csv")
        host, port = receiver.server.server_address[:2]
        with socket.create_connection((str(host), int(port)), timeout=10) as stalled:  # asks, never reads
            stalled.sendall(f"GET {big_url[len(receiver.url):]} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            stalled.recv(1)
            with pytest.raises(urllib.error.HTTPError) as busy:
                urllib.request.urlopen(other, timeout=10)
            assert busy.value.code == 503, "one at a time here: the second waits, then is told to come back"
        with urllib.request.urlopen(other, timeout=10) as answer:
            assert answer.read() == b"a,b\n", "a refusal for being busy does not count as a fetch"
    finally:
        receiver.stop()
