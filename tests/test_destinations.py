"""Output destinations: S3 on a real S3-compatible endpoint (moto server, IAM enforced) and local folders."""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
from pathlib import Path

import pytest

from cogtrain.destinations import DriverError, LocalDestination, S3Destination, destination_for
from cogtrain.driver import Driver
from support.cogserver import prepare_model, start_cog_server
from support.driving import drive_to_end, expect_failure
from support.paths import DRIVER_MODELS
from support.s3_server import BUCKET, S3Server


@pytest.mark.integration
def test_drive_command_stores_in_s3_with_checksums(tmp_path: Path, s3: S3Server) -> None:
    secret = s3.writer["AWS_SECRET_ACCESS_KEY"]
    code, out, err = drive_to_end(tmp_path, DRIVER_MODELS / "chatty", {"COGTRAIN_INPUT_lines": "5", **s3.env()},
                                  [f"--destination=s3://{BUCKET}/runs/"])
    assert code == 0, err
    report = json.loads((tmp_path / "termination-log").read_text())
    prefix = f"s3://{BUCKET}/runs/ml/tok"
    assert sorted(report["output"]) == [f"{prefix}/config.json", f"{prefix}/weights.bin"]
    assert "weights" not in report, "several files and none named weights: no single weights URI (docs/training.md)"
    client = s3.client()
    weights = client.get_object(Bucket=BUCKET, Key="runs/ml/tok/weights.bin")
    body = weights["Body"].read()
    assert body == b"\x00\x01" * 1000
    assert weights["Metadata"]["sha256"] == hashlib.sha256(body).hexdigest()
    assert f"stored {prefix}/weights.bin (2000 bytes, sha256 {hashlib.sha256(body).hexdigest()})" in err
    assert client.get_object(Bucket=BUCKET, Key="runs/ml/tok/config.json")["Body"].read() == b'{"rank": 8}'
    # The whole training log, next to the weights (docs/driver.md, "Progress and logs").
    assert report["logs"] == f"{prefix}/logs.txt"
    logs = client.get_object(Bucket=BUCKET, Key="runs/ml/tok/logs.txt")["Body"].read().decode()
    assert logs == "".join(f"step {i} loss {1 / (i + 1):.4f}\n" for i in range(5))
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=BUCKET, Prefix="runs/")["Contents"]]
    assert ".cogtrain-write-check" not in " ".join(keys), "the write check cleans up after itself"
    assert secret not in out + err and secret not in json.dumps(report), "credentials are never printed"


@pytest.mark.integration
def test_large_files_go_up_in_parts_with_checksums_the_store_verifies(tmp_path: Path, s3: S3Server) -> None:
    source = tmp_path / "big.safetensors"
    data = os.urandom(13 * 1024 * 1024)
    source.write_bytes(data)
    log = io.StringIO()
    destination = S3Destination(BUCKET, "parts/ml/big", s3.env(), multipart_threshold=5 * 1024 * 1024,
                                multipart_chunk=5 * 1024 * 1024, log=log)
    destination.check()
    uri = destination.put(source, "../../etc/passwd")
    assert uri == f"s3://{BUCKET}/parts/ml/big/passwd", "a model-chosen name cannot leave the prefix"
    assert not source.exists(), "the scratch copy is removed once stored"
    head = s3.client().head_object(Bucket=BUCKET, Key="parts/ml/big/passwd", ChecksumMode="ENABLED")
    assert head["ETag"].strip('"').endswith("-3"), "13 MiB in 5 MiB parts: a 3-part upload"
    assert head["ContentLength"] == len(data)
    assert head["Metadata"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert head.get("ChecksumSHA256"), "the store verified and kept a SHA-256 checksum"
    again = tmp_path / "again"
    again.write_bytes(b"x")
    assert destination.put(again, "passwd") == f"s3://{BUCKET}/parts/ml/big/passwd-2", "names stay unique"


@pytest.mark.integration
@pytest.mark.parametrize(("who", "bucket", "expected"), [
    ("reader", BUCKET, "AccessDenied"),
    ("writer", "no-such-bucket", "NoSuchBucket"),
    ("wrong-key", BUCKET, "InvalidAccessKeyId"),
])
def test_s3_destination_that_refuses_writes(s3: S3Server, who: str, bucket: str, expected: str) -> None:
    env = s3.env("reader" if who == "reader" else "writer")
    if who == "wrong-key":
        env["AWS_ACCESS_KEY_ID"] = "AKIANOTAKEY"
    destination = destination_for(f"s3://{bucket}/team", Path("/unused"), "ml", "tok", env)
    with pytest.raises(DriverError) as caught:
        destination.check()
    assert caught.value.reason == "DestinationUnwritable" and caught.value.exit_code == 13
    assert caught.value.message.startswith(f"cannot write to the destination s3://{bucket}/team/ml/tok/: {expected}")
    assert env["AWS_SECRET_ACCESS_KEY"] not in caught.value.message


@pytest.mark.integration
def test_s3_without_credentials_says_where_they_go(s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    destination = destination_for(f"s3://{BUCKET}/team", Path("/unused"), "ml", "tok",
                                  {"AWS_ENDPOINT_URL": s3.endpoint})
    with pytest.raises(DriverError) as caught:
        destination.check()
    assert "no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the Secret named by " \
           "destinationSecretRef" in caught.value.message


@pytest.mark.integration
def test_an_unwritable_destination_fails_before_the_training_starts(tmp_path: Path, s3: S3Server) -> None:
    """No GPU time is spent on a training whose weights could not be stored."""
    server = start_cog_server(prepare_model(DRIVER_MODELS / "chatty", tmp_path / "m"))
    log = io.StringIO()
    driver = Driver(model_url=server.url, training_id="t1", inputs={"lines": 10**9}, log=log,
                    destination=destination_for(f"s3://{BUCKET}/x", tmp_path, "ml", "tok", s3.env("reader")),
                    scratch=tmp_path / "scratch", keep_log=True, records=True)
    started = time.monotonic()
    error = expect_failure(server, driver)
    assert time.monotonic() - started < 15
    assert driver.logs_uri is None, "logs.txt is not tried where the check was refused"
    assert error.reason == "DestinationUnwritable" and "AccessDenied" in error.message
    assert "step 0" not in log.getvalue(), "the training was never submitted"
    assert server.process.returncode is not None, "the model server was told to shut down"


@pytest.mark.unit
def test_local_destination_check(tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("")
    with pytest.raises(DriverError) as caught:
        LocalDestination(blocked / "sub", "pvc://weights/team").check()
    assert caught.value.message.startswith("cannot write to the destination pvc://weights/team/: ")
    LocalDestination(tmp_path / "ok", "pvc://weights/ok").check()
    assert list((tmp_path / "ok").iterdir()) == [], "the check leaves nothing behind"
