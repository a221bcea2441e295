"""`cogtrain train` and its companions (`get`, `list`, `logs`, `cancel`): building the Training (pure), then the
CLI as a subprocess against the test API server, the operator, the simulated cluster, a real registry and S3."""

from __future__ import annotations

import json
import os
import pty
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest
import yaml

from cogtrain import api
from cogtrain.commands import UsageError
from cogtrain.commands import train as train_command
from cogtrain.contract import DriverReport, Reason
from cogtrain.handlers import Runtime
from cogtrain.registry import RegistryClient
from cogtrain.resolver import SchemaResolver
from cogtrain.schema import TrainingSchema
from cogtrain.settings import Settings
from cogtrain.submit import (
    ArgumentError,
    build_training,
    generated_name,
    local_paths,
    model_line,
    outcome,
    output_uris,
    own_files,
    parse_pairs,
    parse_secret_inputs,
    progress_text,
    table,
    upload_keys,
    with_uploads,
)
from cogtrain.validation import validate_input
from support.cluster_sim import Cluster, RunningOperator, wait_for
from support.control_plane import k8s_binaries
from support.crd_schema import training_validator
from support.driving import PeakMemory
from support.k8s_server import Fault, KubeAPI
from support.paths import EXAMPLES
from support.registries import Registries
from support.s3_server import BUCKET, S3Server
from support.trainings import model

MiB = 1024 * 1024


# --- building (pure) ------------------------------------------------------------------------------


def no_files(raw: str) -> str:
    raise AssertionError(f"no file expected, got {raw}")


@pytest.mark.unit
@pytest.mark.parametrize(("image", "name"), [
    ("r8.im/acme/sdxl:1.2", "sdxl-abcde"),
    ("registry.example.com:5000/acme/My_Model@sha256:" + "0" * 64, "my-model-abcde"),
    ("localhost/x" + "y" * 80 + ":1", "x" + "y" * 56 + "-abcde"),
    ("r8.im/acme/___:1", "training-abcde"),
])
def test_a_generated_name_is_the_models_short_name_and_a_suffix(image: str, name: str) -> None:
    assert generated_name(image, "abcde") == name
    assert len(name) <= 63


@pytest.mark.unit
@pytest.mark.parametrize(("pairs", "values", "files"), [
    (["steps=100", "learning_rate=0.5", "run_name=7"], {"steps": 100, "learning_rate": 0.5, "run_name": "7"}, {}),
    (["tags=a,b", "tags=c"], {"tags": ["a", "b", "c"]}, {}),
    (["use_lora=true", "notes=a=b"], {"use_lora": True, "notes": "a=b"}, {}),
    (["train_data=@photos.zip"], {"train_data": "/abs/photos.zip"}, {"/abs/photos.zip": "train_data"}),
    (["train_data=https://x/y.zip"], {"train_data": "https://x/y.zip"}, {}),
    (["stepz=1"], {"stepz": "1"}, {}),  # unknown: the validator names it
])
def test_inputs_are_parsed_as_cog_train_reads_them(schemas: dict[str, TrainingSchema], pairs: list[str],
                                                   values: dict[str, Any], files: dict[str, str]) -> None:
    parsed = parse_pairs(schemas["all-inputs"], pairs, lambda raw: f"/abs/{raw}")
    assert (parsed.values, parsed.files) == (values, files)


@pytest.mark.unit
@pytest.mark.parametrize(("pair", "message"), [
    ("steps", "-i 'steps': expected NAME=VALUE or NAME=@FILE"),
    ("=5", "-i '=5': expected NAME=VALUE or NAME=@FILE"),
    ("steps=@n.txt", "-i steps=@n.txt: steps takes an integer, not a file; pass its value without @"),
    ("hf_token=hf_secretvalue", "-i hf_token: hf_token is a Secret input"),
    ("train_data=@missing.zip", "-i train_data=@missing.zip: no such file"),
])
def test_unusable_inputs_are_named(schemas: dict[str, TrainingSchema], pair: str, message: str) -> None:
    def missing(raw: str) -> str:
        raise ArgumentError("no such file")

    with pytest.raises(ArgumentError) as error:
        parse_pairs(schemas["all-inputs"], [pair], missing)
    assert str(error.value).startswith(message)
    assert "hf_secretvalue" not in str(error.value)


@pytest.mark.unit
def test_a_secret_input_is_referenced_never_given() -> None:
    assert parse_secret_inputs(["hf_token=hf:token"]) == {"hf_token": {"name": "hf", "key": "token"}}
    with pytest.raises(ArgumentError, match="expected NAME=SECRET:KEY"):
        parse_secret_inputs(["hf_token=hf"])


MANIFEST = {"apiVersion": api.API_VERSION, "kind": api.KIND,
            "metadata": {"name": "old", "namespace": "ml", "uid": "u", "resourceVersion": "9", "labels": {"team": "a"}},
            "spec": {"model": "r/a:1", "input": {"seed": 1, "steps": 5}, "destination": "s3://b/p/",
                     "resources": {"gpus": 2}},
            "status": {"phase": "Succeeded"}}


@pytest.mark.unit
@pytest.mark.parametrize(("base", "kwargs", "expected"), [
    (None, {"model": "r/a:1", "inputs": {"steps": 3}, "secret_inputs": {}, "destination": None},
     {"metadata": {"name": "n", "namespace": "ns"}, "spec": {"model": "r/a:1", "input": {"steps": 3}}}),
    (MANIFEST, {"model": None, "inputs": {"steps": 9}, "secret_inputs": {"tok": {"name": "s", "key": "k"}},
                "destination": None},
     {"metadata": {"name": "n", "namespace": "ns", "labels": {"team": "a"}},
      "spec": {"model": "r/a:1", "input": {"seed": 1, "steps": 9}, "destination": "s3://b/p/", "resources": {"gpus": 2},
               "secretInputs": {"tok": {"name": "s", "key": "k"}}}}),
    (MANIFEST, {"model": "r/b:2", "inputs": {}, "secret_inputs": {"seed": {"name": "s", "key": "k"}},
                "destination": "pvc://c/x"},
     {"metadata": {"name": "n", "namespace": "ns", "labels": {"team": "a"}},
      "spec": {"model": "r/b:2", "input": {"steps": 5}, "destination": "pvc://c/x", "resources": {"gpus": 2},
               "secretInputs": {"seed": {"name": "s", "key": "k"}}}}),
])
def test_the_training_is_the_manifest_with_the_arguments_over_it(base: Any, kwargs: dict[str, Any],
                                                                 expected: dict[str, Any]) -> None:
    body = build_training(base, name="n", namespace="ns", **kwargs)
    assert body == {"apiVersion": api.API_VERSION, "kind": api.KIND, **expected}
    api.Training.model_validate(body)


@pytest.mark.unit
@pytest.mark.parametrize(("name", "model_"), [("Bad_Name", "r/a:1"), ("n", None), ("x" * 64, "r/a:1")])
def test_a_training_needs_a_model_and_a_kubernetes_name(name: str, model_: str | None) -> None:
    with pytest.raises(ArgumentError):
        build_training(None, model=model_, name=name, namespace="ns", inputs={}, secret_inputs={}, destination=None)


@pytest.mark.unit
@pytest.mark.parametrize(("destination", "paths", "keys"), [
    ("s3://b/p/", ["/a/photos.zip"], {"/a/photos.zip": ("b", "p/ns/t/inputs/photos.zip")}),
    ("s3://b", ["/a/x.tar.gz", "/c/x.tar.gz"], {"/a/x.tar.gz": ("b", "ns/t/inputs/x.tar.gz"),
                                                 "/c/x.tar.gz": ("b", "ns/t/inputs/x-2.tar.gz")}),
    (None, [], {}),
])
def test_local_files_go_beside_the_weights_under_inputs(destination: str | None, paths: list[str],
                                                     keys: dict[str, tuple[str, str]]) -> None:
    assert upload_keys(destination, "ns", "t", paths) == keys


@pytest.mark.unit
@pytest.mark.parametrize("destination", [None, "pvc://claim/x"])
def test_a_local_file_needs_an_s3_destination(destination: str | None) -> None:
    with pytest.raises(ArgumentError, match="needs an s3:// destination"):
        upload_keys(destination, "ns", "t", ["/a/b"])


@pytest.mark.unit
def test_uploaded_files_replace_their_paths() -> None:
    values = {"a": "/x/f", "b": ["/x/f", "keep"], "c": 3}
    assert with_uploads(values, {"/x/f": "s3://b/k"}) == {"a": "s3://b/k", "b": ["s3://b/k", "keep"], "c": 3}


@pytest.mark.unit
@pytest.mark.parametrize(("output", "paths"), [
    ("s3://b/p/ns/t/weights.tar", {"s3://b/p/ns/t/weights.tar": ("weights.tar",)}),
    ({"weights": "s3://b/p/ns/t/w.bin", "extra": ["s3://b/p/ns/t/sub/c.json"], "loss": 0.1, "note": "https://x"},
     {"s3://b/p/ns/t/w.bin": ("w.bin",), "s3://b/p/ns/t/sub/c.json": ("sub", "c.json")}),
    ("s3://b/p/../../etc/passwd", {"s3://b/p/../../etc/passwd": ("passwd",)}),  # one file: its name only
    (None, {}),
])
def test_output_files_land_below_their_shared_folder(output: Any, paths: dict[str, tuple[str, ...]]) -> None:
    assert local_paths(output_uris(output)) == paths


@pytest.mark.unit
@pytest.mark.parametrize("uris", [["s3://b/p/x/../../a", "s3://b/p/y"], ["s3://b/p/x/", "s3://b/p/y"],
                                  ["s3://b/p/./a", "s3://b/q"]])
def test_an_output_that_would_leave_the_folder_is_refused(uris: list[str]) -> None:
    with pytest.raises(ArgumentError, match="refusing to write it"):
        local_paths(uris)


@pytest.mark.unit
@pytest.mark.parametrize(("uris", "destination", "ours"), [
    (["s3://b/p/ns/t/w.bin", "s3://b/p/ns/t/sub/c.json"], "s3://b/p/", ["s3://b/p/ns/t/w.bin", "s3://b/p/ns/t/sub/c.json"]),
    (["s3://b/p/ns/t/w.bin", "s3://b/p/other/t/w.bin"], "s3://b/p", ["s3://b/p/ns/t/w.bin"]),  # another namespace's
    (["s3://b/p/ns/t/w.bin", "s3://x/p/ns/t/w.bin"], "s3://b/p/", ["s3://b/p/ns/t/w.bin"]),  # another bucket
    (["s3://b/p/ns/t2/w.bin", "s3://b/p/ns/t/", "s3://b/ns/t/w"], "s3://b/p/", []),  # another training, a folder
    (["s3://b/ns/t/w.bin", "s3://b/q/ns/t/sub/x", "s3://b/other/t/w", "s3://b/ns/tt/w", "s3://b/ns/t"], None,
     ["s3://b/ns/t/w.bin", "s3://b/q/ns/t/sub/x"]),  # the operator's default destination: <namespace>/<name>/
    (["pvc://c/runs/ns/t/w.bin", "pvc://c/runs/ns/x/w.bin"], "pvc://c/runs/", ["pvc://c/runs/ns/t/w.bin"]),
])
def test_only_the_files_the_training_stored_are_downloaded(uris: list[str], destination: str | None,
                                                           ours: list[str]) -> None:
    assert own_files(uris, "ns", "t", destination) == (ours, [uri for uri in uris if uri not in ours])


@pytest.mark.unit
@pytest.mark.parametrize("taken", ["out", "out/sub"])  # OUT itself, or a folder an output file needs, is a file
def test_an_output_folder_that_cannot_be_written_is_one_usage_error(monkeypatch: pytest.MonkeyPatch,
                                                                     tmp_path: Path, taken: str) -> None:
    import cogtrain.uploads

    class Store:
        def download_file(self, bucket: str, key: str, path: str, Config: Any) -> None:  # noqa: N803  (boto3's)
            Path(path).write_bytes(b"downloaded")

    monkeypatch.setattr(cogtrain.uploads, "s3_client", Store)
    (tmp_path / taken).parent.mkdir(exist_ok=True)
    (tmp_path / taken).write_bytes(b"mine")
    status = {"output": {"w": "s3://b/p/ns/t/w.bin", "c": "s3://b/p/ns/t/sub/c.json"}}
    with pytest.raises(UsageError, match=r"^-o .*: cannot write s3://b/p/ns/t/[a-z/.]+'s file .*: "):
        train_command._download(status, tmp_path / "out", "ns", "t", "s3://b/p/")
    assert (tmp_path / taken).read_bytes() == b"mine"


@pytest.mark.unit
def test_a_file_gone_before_its_upload_is_a_transfer_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from cogtrain.uploads import TransferError, s3_client, upload

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "key")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    client = s3_client({"AWS_ENDPOINT_URL": "http://127.0.0.1:9"})
    with pytest.raises(TransferError, match=f"^s3://b/k: cannot read {tmp_path / 'gone.zip'}: No such file"):
        upload(client, tmp_path / "gone.zip", "b", "k")


@pytest.mark.unit
@pytest.mark.parametrize(("line", "shown"), [
    ("step 1/10", "step 1/10"),
    ('cogtrain.progress {"progress":{"percent":10}}', None),
    ('\\cogtrain.progress {"forged":1}', 'cogtrain.progress {"forged":1}'),
    ("", ""),
])
def test_the_log_shows_the_models_lines_not_the_drivers_records(line: str, shown: str | None) -> None:
    assert model_line(line) == shown


@pytest.mark.unit
@pytest.mark.parametrize(("progress", "text"), [
    ({"percent": 30.4, "current": 3, "total": 10}, "progress 30% (3/10)"),
    ({"percent": 99.6}, "progress 100%"),
    ({"current": 3}, None),
    (None, None),
])
def test_progress_text(progress: Any, text: str | None) -> None:
    assert progress_text(progress) == text


@pytest.mark.unit
@pytest.mark.parametrize(("status", "result"), [
    ({"phase": "Succeeded", "weights": "s3://b/w"}, (True, "Training t succeeded; weights: s3://b/w")),
    ({"phase": "Failed", "error": "the model raised ValueError: bad lr."}, (
        False, "Training t failed: the model raised ValueError: bad lr.")),
    ({"phase": "Canceled"}, (False, "Training t was canceled")),
])
def test_the_outcome_sentence(status: dict[str, Any], result: tuple[bool, str]) -> None:
    assert outcome("t", status) == result


@pytest.mark.unit
def test_the_table_has_kubectls_columns() -> None:
    trainings = [
        {"metadata": {"name": "a", "namespace": "ml", "creationTimestamp": "2026-01-01T10:00:00Z"},
         "spec": {"model": "r/a:1"}, "status": {"phase": "Running", "progress": {"percent": 42.0}}},
        {"metadata": {"name": "bb", "namespace": "x", "creationTimestamp": "2025-12-30T12:00:00Z"},
         "spec": {"model": "r/b:1"}, "status": {"phase": "Succeeded", "weights": "s3://w", "restarts": 1}},
    ]
    lines = table(trainings, datetime(2026, 1, 1, 10, 5, 30, tzinfo=UTC), namespaces=True).splitlines()
    assert [line.split() for line in lines] == [
        ["NAMESPACE", "NAME", "PHASE", "PROGRESS", "RESTARTS", "MODEL", "WEIGHTS", "AGE"],
        ["ml", "a", "Running", "42%", "0", "r/a:1", "5m"],
        ["x", "bb", "Succeeded", "1", "r/b:1", "s3://w", "1d"],
    ]
    assert lines[0].index("PHASE") == lines[1].index("Running")


@pytest.mark.unit
def test_kubectl_cogtrain_is_installed_as_a_plugin_entry_point(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    scripts = {e.name: e for e in entry_points(group="console_scripts") if e.name in ("cogtrain", "kubectl-cogtrain")}
    assert scripts["kubectl-cogtrain"].value == "cogtrain.cli:plugin_main"
    monkeypatch.setattr(sys, "argv", ["kubectl-cogtrain", "list", "--kubeconfig", str(tmp_path / "none")])
    assert scripts["kubectl-cogtrain"].load()() == 3
    assert capsys.readouterr().err.startswith("cogtrain list: no usable kubeconfig")


# --- against the cluster ----------------------------------------------------------------------------


@pytest.fixture()
def runtime(kube: KubeAPI) -> Runtime:
    return Runtime(settings=Settings(driver_image="example.com/cogtrain:test", default_destination=f"s3://{BUCKET}/",
                                     progress_interval_seconds=1),
                   api_client=kube.api_client, resolver=SchemaResolver(RegistryClient(timeout=2)))


@pytest.fixture()
def operator(kube: KubeAPI, runtime: Runtime) -> Iterator[RunningOperator]:
    running_operator = RunningOperator(kube, runtime).start()
    yield running_operator
    running_operator.stop()


@pytest.fixture()
def cluster(kube: KubeAPI) -> Cluster:
    return Cluster(kube, f"ns-{uuid.uuid4().hex[:8]}")


@pytest.fixture()
def faults(kube: KubeAPI) -> Iterator[list[Fault]]:
    yield kube.emulator.faults
    kube.emulator.faults.clear()


def environment(kube: KubeAPI, s3: S3Server | None = None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    return {**env, "KUBECONFIG": str(kube.kubeconfig), **(s3.env() if s3 else {}), **extra}


def cogtrain(env: dict[str, str], *argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "cogtrain.cli", *argv], env=env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)
    assert "Traceback" not in done.stdout + done.stderr
    return done


def start(env: dict[str, str], tmp_path: Path, *argv: str) -> tuple[subprocess.Popen[str], Path, Path]:
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    process = subprocess.Popen([sys.executable, "-m", "cogtrain.cli", *argv], env=env, text=True,
                               stdin=subprocess.DEVNULL, stdout=out.open("w"), stderr=err.open("w"))
    return process, out, err


def finish(process: subprocess.Popen[str], out: Path, err: Path, timeout: float = 60) -> tuple[int, str, str]:
    code = process.wait(timeout)
    stdout, stderr = out.read_text(), err.read_text()
    assert "Traceback" not in stdout + stderr
    return code, stdout, stderr


def objects(s3: S3Server, prefix: str) -> list[str]:
    listed = s3.client().list_objects_v2(Bucket=BUCKET, Prefix=prefix)  # type: ignore[attr-defined]
    return [item["Key"] for item in listed.get("Contents", [])]


def trainings(cluster: Cluster) -> list[dict[str, Any]]:
    return [o for (_, plural, ns, _), o in list(cluster.kube.emulator.store.items())
            if plural == "trainings" and ns == cluster.namespace]


@pytest.mark.integration
def test_invalid_inputs_create_nothing_and_upload_nothing(kube: KubeAPI, s3: S3Server, registries: Registries,
                                                          cluster: Cluster, schemas: dict[str, TrainingSchema],
                                                          tmp_path: Path) -> None:
    data = tmp_path / "photos.zip"
    data.write_bytes(b"zip")
    prefix = f"bad-{uuid.uuid4().hex[:6]}"
    done = cogtrain(environment(kube, s3), "train", model(registries, "all-inputs"), "-n", cluster.namespace,
                    "-i", f"train_data=@{data}", "-i", "steps=0", "-i", "optimizer=AdamW", "--name", "bad",
                    "--destination", f"s3://{BUCKET}/{prefix}/")
    expected = validate_input(schemas["all-inputs"], {"train_data": str(data), "steps": 0, "optimizer": "AdamW"})
    assert done.returncode == 1
    assert done.stderr.splitlines()[:-1] == [str(p) for p in expected.problems]  # as `cogtrain validate` says them
    assert "input.steps: 0 is less than the minimum of 1" in done.stderr
    assert done.stderr.splitlines()[-1] == "cogtrain train: the inputs have problems (above); nothing was created"
    assert trainings(cluster) == []
    assert objects(s3, prefix) == []


@pytest.mark.integration
@pytest.mark.parametrize(("argv", "code", "message"), [
    (["-i", "steps"], 2, "cogtrain train: -i 'steps': expected NAME=VALUE or NAME=@FILE"),
    (["-i", "train_data=@no/such.zip"], 2, "cogtrain train: -i train_data=@no/such.zip: no such file"),
    (["-i", "steps=@f"], 2, "cogtrain train: -i steps=@f: steps takes an integer, not a file"),
    (["-i", "hf_token=hf_topsecret"], 2, "cogtrain train: -i hf_token: hf_token is a Secret input"),
    (["-i", "train_data=@f", "--destination", "pvc://claim/x"], 2,
     "cogtrain train: -i NAME=@FILE uploads the file to S3, so it needs an s3:// destination"),
    (["--name", "Not_OK"], 2, "cogtrain train: 'Not_OK' cannot name a Training"),
])
def test_unusable_arguments_are_one_line(kube: KubeAPI, registries: Registries, cluster: Cluster, tmp_path: Path,
                                         argv: list[str], code: int, message: str) -> None:
    (tmp_path / "f").write_bytes(b"x")
    env = environment(kube)
    done = subprocess.run([sys.executable, "-m", "cogtrain.cli", "train", model(registries, "all-inputs"),
                           "-n", cluster.namespace, "-i", "train_data=https://x/y.zip", "-i", "caption_prefix=a",
                           *argv], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stderr.splitlines()[-1][: len(message)]) == (code, message)
    assert len(done.stderr.splitlines()) == 1 and done.stdout == ""
    assert "hf_topsecret" not in done.stderr
    assert trainings(cluster) == []


@pytest.mark.integration
@pytest.mark.parametrize("flag", [[], ["-n", "{ns}"], ["-n", "elsewhere"]])
def test_a_manifests_namespace_is_where_the_training_is_created(kube: KubeAPI, registries: Registries,
                                                                 cluster: Cluster, tmp_path: Path,
                                                                 flag: list[str]) -> None:
    manifest = tmp_path / "training.yaml"
    manifest.write_text(yaml.safe_dump({
        "apiVersion": api.API_VERSION, "kind": api.KIND, "metadata": {"name": "from-file", "namespace": cluster.namespace},
        "spec": {"model": model(registries, "hello-train"), "input": {"param": "x"}}}))
    done = cogtrain(environment(kube), "train", "-f", str(manifest), *[f.format(ns=cluster.namespace) for f in flag])
    if "elsewhere" in flag:  # -n and the manifest disagree: refused, as kubectl does, before anything is created
        assert (done.returncode, done.stdout) == (2, "")
        assert done.stderr == (f"cogtrain train: -n elsewhere, but {manifest} has metadata.namespace "
                               f"{cluster.namespace}; pass -n {cluster.namespace} or leave -n out (the Training, its "
                               "uploads and the cluster calls need one namespace)\n")
        assert trainings(cluster) == []
    else:  # the kubeconfig's context has another namespace (default): the manifest's is used throughout
        assert (done.returncode, done.stdout) == (0, "from-file\n"), done.stderr
        assert [t["metadata"]["name"] for t in trainings(cluster)] == ["from-file"]


@pytest.mark.integration
def test_ctrl_c_while_logs_follows_is_one_line(kube: KubeAPI, registries: Registries, cluster: Cluster,
                                               tmp_path: Path) -> None:
    env = environment(kube)
    created = cogtrain(env, "train", model(registries, "hello-train"), "-i", "param=x", "--name", "waits",
                       "-n", cluster.namespace)
    assert created.returncode == 0, created.stderr
    process, stdout, stderr = start(env, tmp_path, "logs", "-f", "waits", "-n", cluster.namespace)
    time.sleep(3)  # no operator: it stays Pending, and logs -f waits for its Pod
    process.send_signal(signal.SIGINT)
    code, printed, said = finish(process, stdout, stderr)
    assert (code, printed, said.strip()) == (130, "", "cogtrain logs: interrupted")


@pytest.mark.integration
@pytest.mark.parametrize(("command", "fault", "message"), [
    (["train", "{model}", "-i", "param=x", "--name", "t"], Fault("POST", "trainings", status=403),
     "cogtrain train: create Training t: forbidden"),
    (["get", "nope"], None, "cogtrain get: get Training nope: not found in namespace {ns}"),
    (["logs", "nope"], None, "cogtrain logs: get Training nope: not found in namespace {ns}"),
    (["cancel", "nope"], None, "cogtrain cancel: get Training nope: not found in namespace {ns}"),
    (["list"], Fault("GET", "trainings", status=403), "cogtrain list: list Trainings: forbidden"),
])
def test_cluster_failures_are_one_line_exit_3(kube: KubeAPI, registries: Registries, cluster: Cluster,
                                              faults: list[Fault], command: list[str], fault: Fault | None,
                                              message: str) -> None:
    if fault is not None:
        faults.append(fault)
    argv = [part.format(model=model(registries, "hello-train")) for part in command]
    done = cogtrain(environment(kube), *argv, "-n", cluster.namespace)
    assert done.returncode == 3
    assert done.stderr.splitlines() == [done.stderr.strip()]
    assert done.stderr.startswith(message.format(ns=cluster.namespace))


@pytest.mark.integration
def test_no_reachable_cluster_is_one_line(registries: Registries, tmp_path: Path, kube: KubeAPI) -> None:
    config = yaml.safe_load(kube.kubeconfig.read_text())
    config["clusters"][0]["cluster"]["server"] = "http://127.0.0.1:9"
    (tmp_path / "kubeconfig").write_text(yaml.safe_dump(config))
    done = cogtrain(environment(kube, KUBECONFIG=str(tmp_path / "kubeconfig")), "train",
                    model(registries, "hello-train"), "-i", "param=x", "--name", "t", timeout=90)
    assert done.returncode == 3
    assert done.stderr.startswith("cogtrain train: get Training t: cannot reach the cluster at http://127.0.0.1:9")


@pytest.mark.integration
def test_dry_run_prints_a_training_the_crd_accepts_and_contacts_no_cluster(registries: Registries, tmp_path: Path,
                                                                          kube: KubeAPI) -> None:
    manifest = EXAMPLES / "training-output" / "training.yaml"
    data = tmp_path / "data.zip"
    data.write_bytes(b"zip")
    env = environment(kube, KUBECONFIG=str(tmp_path / "no-kubeconfig"))
    done = cogtrain(env, "train", model(registries, "all-inputs"), "-f", str(manifest), "-i", f"train_data=@{data}",
                    "-i", "caption_prefix=a photo of", "-i", "steps=10", "--secret-input", "hf_token=hf:token",
                    "--destination", "s3://bucket/runs/", "--dry-run")
    assert done.returncode == 0, done.stderr
    body = yaml.safe_load(done.stdout)
    assert [f"{list(e.absolute_path)}: {e.message}" for e in training_validator().iter_errors(body)] == []
    name, ns = body["metadata"]["name"], body["metadata"]["namespace"]
    base = yaml.safe_load(manifest.read_text())
    assert name == base["metadata"]["name"]
    assert body["spec"]["input"] == {**base["spec"]["input"], "train_data": f"s3://bucket/runs/{ns}/{name}/inputs/data.zip",
                                     "caption_prefix": "a photo of", "steps": 10}
    assert body["spec"]["secretInputs"] == {"hf_token": {"name": "hf", "key": "token"}}
    assert f"would upload {data} to s3://bucket/runs/{ns}/{name}/inputs/data.zip" in done.stderr


@pytest.mark.integration
def test_follow_prints_the_log_in_order_and_progress_then_downloads_the_weights(
        operator: RunningOperator, cluster: Cluster, registries: Registries, s3: S3Server, tmp_path: Path) -> None:
    folder = f"runs/{cluster.namespace}/tok"
    client: Any = s3.client()
    client.put_object(Bucket=BUCKET, Key=f"{folder}/weights.bin", Body=b"W" * 1000)
    client.put_object(Bucket=BUCKET, Key=f"{folder}/sub/config.json", Body=b"{}")
    client.put_object(Bucket=BUCKET, Key="runs/other-ns/tok/weights.bin", Body=b"theirs")
    out = tmp_path / "weights"
    process, stdout, stderr = start(
        environment(cluster.kube, s3), tmp_path, "train", model(registries), "-n", cluster.namespace, "--name", "tok",
        "-i", "train_data=https://example.com/d.zip", "--destination", f"s3://{BUCKET}/runs/", "--follow", "-o",
        str(out))
    job = cluster.job("tok")
    pod = cluster.start_pod(job)
    cluster.run_pod(pod)
    cluster.wait_phase("tok", "Running")
    record = '{"progress":{"percent":50.0,"current":5,"total":10,"observedTime":"2026-11-27T10:01:00Z"}}'
    lines = [f"line {i}" for i in range(50)]
    cluster.write_log(pod, "\n".join(lines[:25]) + f"\ncogtrain.progress {record}\n")
    wait_for(lambda: (cluster.status("tok").get("progress") or {}).get("percent") == 50.0, what="status.progress")
    wait_for(lambda: "progress 50% (5/10)" in stderr.read_text(), what="the CLI to show the progress")
    cluster.write_log(pod, "\n".join(lines[25:]) + "\n")
    report = {"status": "succeeded", "output": {"weights": f"s3://{BUCKET}/{folder}/weights.bin",
                                                "config": f"s3://{BUCKET}/{folder}/sub/config.json", "loss": 0.1,
                                                "said": f"s3://{BUCKET}/runs/other-ns/tok/weights.bin"}}
    cluster.finish_pod(pod, 0, report)
    cluster.complete_job(job)
    code, printed, said = finish(process, stdout, stderr)
    assert code == 0, said
    assert printed.splitlines() == lines
    assert f"Training tok succeeded; weights: s3://{BUCKET}/{folder}/weights.bin" in said
    assert (out / "weights.bin").read_bytes() == b"W" * 1000
    assert (out / "sub" / "config.json").read_bytes() == b"{}"
    assert sorted(p.name for p in out.rglob("*")) == ["config.json", "sub", "weights.bin"]
    assert (f"not downloading s3://{BUCKET}/runs/other-ns/tok/weights.bin: the output names it, but it is not a "
            f"file Training tok stored (under <destination>/{cluster.namespace}/tok/)") in said


@pytest.mark.integration
def test_a_failed_training_exits_1_with_the_status_error(operator: RunningOperator, cluster: Cluster,
                                                         registries: Registries, tmp_path: Path) -> None:
    process, stdout, stderr = start(environment(cluster.kube), tmp_path, "train", model(registries),
                                    "-n", cluster.namespace, "--name", "bad", "-i", "train_data=https://x/d.zip",
                                    "--wait")
    job = cluster.job("bad")
    pod = cluster.start_pod(job)
    cluster.run_pod(pod)
    failure = DriverReport.failure(Reason.TRAINING_FAILED, "the model raised ValueError: lr too high",
                                   logs="s3://b/ns/bad/logs.txt", log_tail="epoch 3\nValueError: lr too high")
    cluster.finish_pod(pod, 10, json.loads(failure.encode()))
    cluster.fail_job(job, "PodFailurePolicy")
    error = cluster.wait_phase("bad", "Failed")["error"]
    code, _, said = finish(process, stdout, stderr)
    assert code == 1
    assert said.splitlines()[-1] == f"cogtrain train: Training bad failed: {error}"
    cluster.kube.core.delete_namespaced_pod(pod, cluster.namespace, _preload_content=False)  # gone (the Job's TTL)
    logs = cogtrain(environment(cluster.kube), "logs", "bad", "-n", cluster.namespace)
    assert logs.returncode == 0
    assert "its whole log is at s3://b/ns/bad/logs.txt" in logs.stderr
    assert logs.stdout.splitlines()[-2:] == ["epoch 3", "ValueError: lr too high"]


@pytest.mark.integration
@pytest.mark.parametrize(("flag", "code", "canceled", "said"), [
    ("--cancel-on-interrupt", 1, True, "cogtrain train: Training stop was canceled"),
    (None, 130, False, "stdin is not a terminal, so not asking whether to cancel Training stop"),
])
def test_ctrl_c(operator: RunningOperator, cluster: Cluster, registries: Registries, tmp_path: Path,
                flag: str | None, code: int, canceled: bool, said: str) -> None:
    process, stdout, stderr = start(environment(cluster.kube), tmp_path, "train", model(registries),
                                    "-n", cluster.namespace, "--name", "stop", "-i", "train_data=https://x/d.zip",
                                    "--wait", *([flag] if flag else []))
    job = cluster.job("stop")
    cluster.run_pod(cluster.start_pod(job))
    cluster.wait_phase("stop", "Running")
    wait_for(lambda: "created in namespace" in stderr.read_text(), what="the CLI to wait")
    time.sleep(0.5)
    process.send_signal(signal.SIGINT)
    exit_code, _, printed = finish(process, stdout, stderr, timeout=30)
    assert exit_code == code
    assert said in printed
    assert bool(cluster.training("stop")["spec"].get("cancel")) is canceled
    assert cluster.status("stop")["phase"] == ("Canceled" if canceled else "Running")


@pytest.mark.integration
@pytest.mark.parametrize(("answer", "code", "canceled"), [("y\n", 1, True), ("n\n", 130, False)])
def test_ctrl_c_on_a_terminal_asks(operator: RunningOperator, cluster: Cluster, registries: Registries,
                                   tmp_path: Path, answer: str, code: int, canceled: bool) -> None:
    terminal, stdin = pty.openpty()
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    process = subprocess.Popen([sys.executable, "-m", "cogtrain.cli", "train", model(registries), "-n",
                                cluster.namespace, "--name", "ask", "-i", "train_data=https://x/d.zip", "--wait"],
                               env=environment(cluster.kube), text=True, stdin=stdin, stdout=out.open("w"),
                               stderr=err.open("w"))
    os.close(stdin)
    cluster.run_pod(cluster.start_pod(cluster.job("ask")))
    cluster.wait_phase("ask", "Running")
    wait_for(lambda: "created in namespace" in err.read_text(), what="the CLI to wait")
    time.sleep(0.5)
    process.send_signal(signal.SIGINT)
    wait_for(lambda: "cancel Training ask? [y/N]" in err.read_text(), what="the question")
    os.write(terminal, answer.encode())
    assert finish(process, out, err, timeout=30)[0] == code
    os.close(terminal)
    assert bool(cluster.training("ask")["spec"].get("cancel")) is canceled


@pytest.mark.integration
def test_a_300_MiB_file_is_uploaded_streaming_with_a_checksum(kube: KubeAPI, cluster: Cluster, registries: Registries,
                                                              s3: S3Server, tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    with big.open("wb") as handle:
        handle.truncate(300 * MiB)  # sparse: nothing on disk, 300 MiB to read
    prefix = f"up-{uuid.uuid4().hex[:6]}"
    process, stdout, stderr = start(
        environment(kube, s3), tmp_path, "train", model(registries, "all-inputs"), "-n", cluster.namespace,
        "-i", f"train_data=@{big}", "-i", "caption_prefix=a", "--destination", f"s3://{BUCKET}/{prefix}/")
    memory = PeakMemory(process.pid)  # not ru_maxrss: a forked child reports the test process's own peak
    code, printed, said = finish(process, stdout, stderr)
    peak = memory.stop()
    assert code == 0, said
    name = printed.strip()
    assert re.fullmatch(r"all-inputs-[a-z0-9]{5}", name)
    key = f"{prefix}/{cluster.namespace}/{name}/inputs/big.bin"
    assert cluster.training(name)["spec"]["input"]["train_data"] == f"s3://{BUCKET}/{key}"
    head = s3.client().head_object(Bucket=BUCKET, Key=key, ChecksumMode="ENABLED")  # type: ignore[attr-defined]
    assert head["ContentLength"] == 300 * MiB
    assert head.get("ChecksumSHA256"), head
    assert memory.readings > 10, "read while it ran"
    assert peak < 200 * MiB, f"the CLI held {peak / MiB:.0f} MiB uploading a 300 MiB file"


@pytest.mark.integration
def test_get_list_logs_and_cancel(operator: RunningOperator, cluster: Cluster, registries: Registries) -> None:
    cluster.create_training("a", {"model": model(registries), "input": {"train_data": "https://x/d.zip"}})
    job = cluster.job("a")
    pod = cluster.start_pod(job)
    cluster.run_pod(pod)
    cluster.wait_phase("a", "Running")
    cluster.write_log(pod, 'first\ncogtrain.progress {"progress":{"percent":20.0,'
                           '"observedTime":"2026-11-27T10:01:00Z"}}\nsecond\n')
    wait_for(lambda: cluster.status("a").get("progress"), what="status.progress")
    env = environment(cluster.kube)
    ns = ["-n", cluster.namespace]

    listed = cogtrain(env, "list", *ns)
    assert listed.returncode == 0
    assert listed.stdout.splitlines()[1].split()[:5] == ["a", "Running", "20%", "0", model(registries)]
    everywhere = cogtrain(env, "list", "-A")
    assert [cluster.namespace, "a", "Running"] in [line.split()[:3] for line in everywhere.stdout.splitlines()]

    got = cogtrain(env, "get", "a", *ns)
    assert (got.returncode, got.stdout.splitlines()[2:5]) == (
        0, [f"Model:     {model(registries)}", "Phase:     Running", "Progress:  20%"])
    assert yaml.safe_load(cogtrain(env, "get", "a", "-o", "yaml", *ns).stdout)["metadata"]["name"] == "a"

    logs = cogtrain(env, "logs", "a", *ns)
    assert (logs.returncode, logs.stdout) == (0, "first\nsecond\n")

    canceled = cogtrain(env, "cancel", "a", *ns)
    assert canceled.returncode == 0
    assert cluster.training("a")["spec"]["cancel"] is True
    cluster.wait_phase("a", "Canceled")
    again = cogtrain(env, "cancel", "a", *ns)
    assert (again.returncode, again.stderr) == (0, "Training a already ended (Canceled); nothing to cancel\n")


@pytest.mark.integration
def test_a_taken_name_is_refused_before_anything_is_uploaded(kube: KubeAPI, cluster: Cluster, registries: Registries,
                                                             s3: S3Server, tmp_path: Path) -> None:
    cluster.create_training("dup", {"model": model(registries, "all-inputs")})
    data = tmp_path / "d.zip"
    data.write_bytes(b"zip")
    prefix = f"dup-{uuid.uuid4().hex[:6]}"
    done = cogtrain(environment(kube, s3), "train", model(registries, "all-inputs"), "-n", cluster.namespace,
                    "--name", "dup", "-i", f"train_data=@{data}", "-i", "caption_prefix=a",
                    "--destination", f"s3://{BUCKET}/{prefix}/")
    assert done.returncode == 2
    assert done.stderr.startswith(f"cogtrain train: a Training named dup already exists in namespace {cluster.namespace}")
    assert objects(s3, prefix) == []


@pytest.mark.integration
def test_an_uploaded_file_is_an_input_the_operator_accepts_and_hands_the_driver(
        operator: RunningOperator, cluster: Cluster, registries: Registries, s3: S3Server, tmp_path: Path) -> None:
    """The key the CLI picks lies in the namespace's own area of the operator's default destination, the only
    keys its shared credentials may read (docs/security.md): the Training gets its Job, not InputRejected."""
    data = tmp_path / "photos.zip"
    data.write_bytes(b"PK\x05\x06" + bytes(18))
    done = cogtrain(environment(cluster.kube, s3), "train", model(registries, "all-inputs"), "-n", cluster.namespace,
                    "--name", "up", "-i", f"train_data=@{data}", "-i", "caption_prefix=a",
                    "--destination", f"s3://{BUCKET}/")
    assert done.returncode == 0, done.stderr
    uri = f"s3://{BUCKET}/{cluster.namespace}/up/inputs/photos.zip"
    assert cluster.training("up")["spec"]["input"]["train_data"] == uri
    body = s3.client().get_object(Bucket=BUCKET, Key=f"{cluster.namespace}/up/inputs/photos.zip")  # type: ignore[attr-defined]
    assert body["Body"].read() == data.read_bytes()
    job = cluster.job("up")
    assert uri in json.dumps(job["spec"]["template"]["spec"]), "the driver is told where the input lies"
    assert cluster.status("up").get("phase") != "Failed", cluster.status("up")


@pytest.mark.integration
def test_kubectl_finds_the_plugin_and_runs_it_against_its_cluster(kube: KubeAPI, cluster: Cluster) -> None:
    """`kubectl cogtrain list` through the real kubectl (built by scripts/build-k8s): its plugin lookup finds
    `kubectl-cogtrain` on PATH and hands it the arguments; the table comes from the API server."""
    cluster.create_training("via-kubectl", {"model": "r/a:1", "input": {}})
    bin_dir = Path(sys.executable).parent
    assert os.access(bin_dir / "kubectl-cogtrain", os.X_OK), "pip installs the plugin beside cogtrain"
    env = {**environment(kube), "PATH": f"{bin_dir}:{k8s_binaries()}:/usr/bin:/bin"}
    done = subprocess.run(["kubectl", "plugin", "list"], env=env, capture_output=True, text=True, timeout=60)
    assert str(bin_dir / "kubectl-cogtrain") in done.stdout, done.stdout + done.stderr
    done = subprocess.run(["kubectl", "cogtrain", "list", "-n", cluster.namespace], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert [line.split()[0] for line in done.stdout.splitlines()] == ["NAME", "via-kubectl"]


@pytest.mark.integration
def test_output_on_a_claim_is_named_not_downloaded(operator: RunningOperator, cluster: Cluster,
                                                    registries: Registries, tmp_path: Path) -> None:
    out = tmp_path / "weights"
    process, stdout, stderr = start(
        environment(cluster.kube), tmp_path, "train", model(registries), "-n", cluster.namespace, "--name", "onpvc",
        "-i", "train_data=https://example.com/d.zip", "--destination", "pvc://models/runs", "-o", str(out))
    job = cluster.job("onpvc")
    pod = cluster.start_pod(job)
    cluster.run_pod(pod)
    uri = f"pvc://models/runs/{cluster.namespace}/onpvc/weights.bin"
    cluster.finish_pod(pod, 0, {"status": "succeeded", "output": uri})
    cluster.complete_job(job)
    code, _, said = finish(process, stdout, stderr)
    assert code == 0, said
    assert f"{uri} is on the PersistentVolumeClaim models at /runs/{cluster.namespace}/onpvc/weights.bin" in said
    assert not out.exists() or list(out.iterdir()) == [], "nothing is downloaded from a claim"


@pytest.mark.integration
def test_logs_follow_waits_for_the_pod_and_streams_each_pod_until_the_training_ends(
        operator: RunningOperator, cluster: Cluster, registries: Registries, tmp_path: Path) -> None:
    cluster.create_training("f", {"model": model(registries), "input": {"train_data": "https://x/d.zip"}})
    env = environment(cluster.kube)
    process, stdout, stderr = start(env, tmp_path, "logs", "f", "-f", "-n", cluster.namespace)
    job = cluster.job("f")
    time.sleep(1.5)  # the command polls for the Pod meanwhile
    assert process.poll() is None, "it waits for a Pod to start"
    first = cluster.start_pod(job)
    cluster.run_pod(first)
    cluster.write_log(first, 'one\ncogtrain.progress {"progress":{"percent":5.0,"observedTime":"2026-11-27T10:01:00Z"}}\n')
    wait_for(lambda: stdout.read_text() == "one\n", what="the first line, followed")
    cluster.finish_pod(first, 137, None)  # killed, as a disruption does: the Job makes another Pod
    second = cluster.start_pod(job)
    cluster.run_pod(second)
    cluster.write_log(second, "\\cogtrain.progress forged by the model\ntwo\n")
    wait_for(lambda: stdout.read_text().endswith("two\n"), what="the second Pod's log, followed")
    assert process.poll() is None, "the Training has not ended: it waits on"
    report = DriverReport.failure(Reason.TRAINING_FAILED, "the model raised", logs="s3://b/ns/f/logs.txt",
                                  log_tail="one\ntwo")
    cluster.finish_pod(second, 10, json.loads(report.encode()))
    cluster.fail_job(job, "PodFailurePolicy")
    code, printed, _ = finish(process, stdout, stderr, timeout=30)
    assert (code, printed) == (0, "one\ncogtrain.progress forged by the model\ntwo\n"), "records left out, in order"


@pytest.mark.unit
def test_waiting_on_a_training_no_operator_picks_up_says_so_once_and_waits_on(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from cogtrain.commands import train as command

    monkeypatch.setattr(command, "UNSEEN_HINT_SECONDS", 0.05)
    monkeypatch.setattr(command, "POLL_SECONDS", 0.02)
    seen = iter([{}] * 10 + [{"status": {"phase": "Pending"}}] * 3 + [{"status": {"phase": "Succeeded"}}])

    class Kube:
        def training(self, name: str) -> dict[str, Any]:
            return next(seen)

    assert command._see_to_the_end(Kube(), "t", follow=False, cancel_on_interrupt=False) == {"phase": "Succeeded"}
    said = capsys.readouterr().err
    assert said.count("Training t has no status after 0 s: no operator has picked it up") == 1, said
