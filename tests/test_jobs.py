"""The Job built for a Training: shape, pass-through fields, secrets, and validity for Kubernetes."""

from __future__ import annotations

import json
from typing import Any

import kubernetes_validate
import pytest
import yaml

from cogtrain.api import Training
from cogtrain.contract import (
    DRIVER_CONTAINER,
    INPUT_ENV_PREFIX,
    MODEL_CONTAINER,
    S3_ENV,
    S3_REQUIRED,
    SECRET_ENV_PREFIX,
    SECRET_LIST_ENV_PREFIX,
    ExitCode,
)
from cogtrain.jobs import build_job, job_name
from cogtrain.settings import Settings, settings_from
from support.k8s_versions import K8S_VERSIONS
from support.paths import EXAMPLES

pytestmark = pytest.mark.unit

IMAGE = "registry.example.com/acme/sdxl@sha256:" + "a" * 64


def training(**spec: Any) -> Training:
    manifest = yaml.safe_load((EXAMPLES / "training-output" / "training.yaml").read_text())
    manifest["metadata"].update(namespace="ml", uid="0d4c7a8e-1111-2222-3333-444455556666")
    manifest["spec"].update(spec)
    return Training.model_validate(manifest)


def containers(job: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    pod = job["spec"]["template"]["spec"]
    return pod["initContainers"][0], pod["containers"][0]


INPUTS = {"train_data": "https://example.com/data.zip", "learning_rate": 0.0002, "seed": 7, "tags": ["a", "ü"]}


@pytest.mark.parametrize("k8s_version", K8S_VERSIONS)
def test_job_is_valid_for_kubernetes(k8s_version: str) -> None:
    job = build_job(training(secretInputs={"hf_token": {"name": "hf", "key": "token"}},
                             destination="pvc://weights/team", serviceAccountName="trainer",
                             imagePullSecrets=[{"name": "regcred"}], priorityClassName="gpu-high",
                             runtimeClassName="nvidia",
                             affinity={"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                                 "nodeSelectorTerms": [{"matchExpressions": [
                                     {"key": "gpu", "operator": "In", "values": ["a100"]}]}]}}}),
                    IMAGE, INPUTS, Settings(shm_size="8Gi"))
    kubernetes_validate.validate(job, k8s_version, strict=True)


def test_kubernetes_validate_rejects_a_broken_job() -> None:
    job = build_job(training(), IMAGE, INPUTS, Settings())
    job["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] = 5
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(job, K8S_VERSIONS[-1], strict=True)


def test_name_is_deterministic_short_and_tied_to_the_uid() -> None:
    assert job_name(training()) == job_name(training())
    other = training()
    other.metadata.uid = "another-uid"
    assert job_name(other) != job_name(training())
    long = training()
    long.metadata.name = "a" * 100 + ".b"
    assert len(job_name(long)) <= 63 and job_name(long).startswith("a" * 57 + "-")


def test_owner_labels_and_pass_through() -> None:
    job = build_job(training(activeDeadlineSeconds=600, ttlSecondsAfterFinished=30, backoffLimit=2, suspend=True),
                    IMAGE, INPUTS, Settings())
    meta = job["metadata"]
    assert meta["namespace"] == "ml"
    assert meta["ownerReferences"] == [{"apiVersion": "cog.run/v1alpha1", "kind": "Training", "name": "training-output",
                                        "uid": "0d4c7a8e-1111-2222-3333-444455556666", "controller": True,
                                        "blockOwnerDeletion": True}]
    assert meta["labels"]["cog.run/training"] == "training-output"
    assert meta["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue", "the Kueue queue label is passed through"
    assert job["spec"]["template"]["metadata"]["labels"] == meta["labels"]
    spec = job["spec"]
    assert (spec["activeDeadlineSeconds"], spec["ttlSecondsAfterFinished"], spec["backoffLimit"], spec["suspend"]) == (
        600, 30, 2, True)
    assert spec["template"]["spec"]["restartPolicy"] == "Never"


def test_defaults_backoff_zero_and_no_token() -> None:
    job = build_job(training(activeDeadlineSeconds=None), IMAGE, INPUTS, Settings())
    assert job["spec"]["backoffLimit"] == 0
    assert "activeDeadlineSeconds" not in job["spec"]
    assert job["spec"]["template"]["spec"]["automountServiceAccountToken"] is False
    job = build_job(training(automountServiceAccountToken=True), IMAGE, INPUTS, Settings())
    assert job["spec"]["template"]["spec"]["automountServiceAccountToken"] is True


def test_pod_failure_policy_fails_fast_on_the_driver_s_final_exits() -> None:
    rules = build_job(training(), IMAGE, INPUTS, Settings())["spec"]["podFailurePolicy"]["rules"]
    assert rules[1] == {"action": "FailJob", "onExitCodes": {"containerName": DRIVER_CONTAINER, "operator": "In",
                                                             "values": ExitCode.final()}}
    assert rules[0]["action"] == "Ignore" and rules[0]["onPodConditions"][0]["type"] == "DisruptionTarget", (
        "first: the Job controller applies the first matching rule, and a disrupted driver exits with a final code")


def test_model_container_runs_the_pinned_image_as_a_native_sidecar_with_the_gpus() -> None:
    model, _ = containers(build_job(training(), IMAGE, INPUTS, Settings()))
    assert model["name"] == MODEL_CONTAINER and model["image"] == IMAGE
    assert model["restartPolicy"] == "Always"
    assert model["args"][:5] == ["python", "-m", "cog.server.http", "--x-mode", "train"]
    assert "--await-explicit-shutdown" in model["args"] and "--upload-url" in model["args"]
    assert "command" not in model, "the image's tini entrypoint stays"
    assert model["resources"] == {"requests": {"cpu": "4", "memory": "16Gi"}, "limits": {"nvidia.com/gpu": "1"}}
    assert model["args"][model["args"].index("--host") + 1] == "127.0.0.1", "the model server answers the Pod only"
    assert "ports" not in model and "startupProbe" not in model, "nothing outside the Pod reaches it"
    assert {"name": "dshm", "mountPath": "/dev/shm"} in model["volumeMounts"]


def test_gpu_resource_name_from_spec_then_settings() -> None:
    model, _ = containers(build_job(training(resources={"gpus": 2, "gpuResourceName": "amd.com/gpu"}),
                                    IMAGE, INPUTS, Settings(gpu_resource_name="x.com/gpu")))
    assert model["resources"] == {"limits": {"amd.com/gpu": "2"}}
    model, _ = containers(build_job(training(resources={"gpus": 1}), IMAGE, INPUTS, Settings(gpu_resource_name="x.com/gpu")))
    assert model["resources"] == {"limits": {"x.com/gpu": "1"}}
    model, _ = containers(build_job(training(resources={"gpus": 0}), IMAGE, INPUTS, Settings()))
    assert model["resources"] == {}


def test_inputs_are_json_env_and_secrets_only_references() -> None:
    job = build_job(training(secretInputs={"hf_token": {"name": "hf-credentials", "key": "token"}}),
                    IMAGE, INPUTS, Settings())
    _, driver = containers(job)
    env = {e["name"]: e for e in driver["env"]}
    assert {n: json.loads(e["value"]) for n, e in env.items() if n.startswith(INPUT_ENV_PREFIX)} == {
        f"{INPUT_ENV_PREFIX}{k}": v for k, v in INPUTS.items()}
    assert env[f"{SECRET_ENV_PREFIX}hf_token"] == {
        "name": f"{SECRET_ENV_PREFIX}hf_token", "valueFrom": {"secretKeyRef": {"name": "hf-credentials", "key": "token"}}}
    assert "value" not in env[f"{SECRET_ENV_PREFIX}hf_token"]


def test_driver_is_unprivileged_and_reports_through_its_termination_message() -> None:
    _, driver = containers(build_job(training(), IMAGE, INPUTS, Settings(driver_image="example.com/cogtrain:1")))
    assert driver["image"] == "example.com/cogtrain:1"
    assert driver["command"] == ["cogtrain"] and driver["args"][0] == "drive"
    assert {"name": "TMPDIR", "value": "/scratch"} in driver["env"], "temporary files on the writable scratch volume"
    assert {"name": "scratch", "mountPath": "/scratch"} in driver["volumeMounts"]
    security = driver["securityContext"]
    assert security["runAsNonRoot"] and security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]} and security["readOnlyRootFilesystem"]
    assert driver["terminationMessagePolicy"] == "File"
    assert "--training-id=0d4c7a8e-1111-2222-3333-444455556666" in driver["args"]


def test_destinations() -> None:
    job = build_job(training(destination="pvc://weights/team/a"), IMAGE, INPUTS, Settings())
    pod = job["spec"]["template"]["spec"]
    assert {"name": "destination", "persistentVolumeClaim": {"claimName": "weights"}} in pod["volumes"]
    assert {"name": "destination", "mountPath": "/destination"} in pod["containers"][0]["volumeMounts"]
    assert "--destination=pvc://weights/team/a" in pod["containers"][0]["args"]
    job = build_job(training(destination=None), IMAGE, INPUTS, Settings(default_destination="s3://b/p/"))
    pod = job["spec"]["template"]["spec"]
    assert "--destination=s3://b/p/" in pod["containers"][0]["args"]
    assert all(v["name"] != "destination" for v in pod["volumes"])


def test_s3_settings_come_from_the_secret_by_reference_only() -> None:
    job = build_job(training(destination="s3://b/p", destinationSecretRef={"name": "s3-creds"}), IMAGE, INPUTS,
                    Settings(default_destination_secret="fallback"))
    env = {e["name"]: e for e in containers(job)[1]["env"] if e["name"].startswith("AWS_")}
    assert sorted(env) == sorted(S3_ENV)
    assert all(e["valueFrom"]["secretKeyRef"] == {"name": "s3-creds", "key": k, "optional": k not in S3_REQUIRED}
               and "value" not in e for k, e in env.items()), "values never inlined"
    assert sorted(S3_REQUIRED) == ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"], (
        "a missing Secret or key pair stops the Pod (CreateContainerConfigError) instead of falling back to the "
        "node's identity; the session token, region and endpoint may be absent")
    job = build_job(training(destination=None), IMAGE, INPUTS,
                    Settings(default_destination="s3://admin/p", default_destination_secret="fallback"))
    assert {e["valueFrom"]["secretKeyRef"]["name"] for e in containers(job)[1]["env"] if e["name"].startswith("AWS_")} == {"fallback"}
    job = build_job(training(destination="s3://elsewhere/p"), IMAGE, INPUTS,
                    Settings(default_destination="s3://admin/p", default_destination_secret="fallback"))
    assert not [e for e in containers(job)[1]["env"] if e["name"].startswith("AWS_")], (
        "the admin's credentials go only with the admin's destination, not to a bucket the author names")
    for spec in ({"destination": "s3://b/p"}, {"destination": "pvc://w", "destinationSecretRef": {"name": "s3-creds"}}):
        job = build_job(training(**spec), IMAGE, INPUTS, Settings())
        assert not [e for e in containers(job)[1]["env"] if e["name"].startswith("AWS_")]


def test_scheduling_merges_operator_defaults() -> None:
    settings = settings_from({"COGTRAIN_DEFAULT_NODE_SELECTOR": '{"pool": "gpu", "nvidia.com/gpu.product": "X"}',
                              "COGTRAIN_DEFAULT_TOLERATIONS": '[{"key": "gpu", "operator": "Exists"}]'})
    pod = build_job(training(), IMAGE, INPUTS, settings)["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"pool": "gpu", "nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
                                  {"key": "gpu", "operator": "Exists"}]


def test_settings_from_environment_and_flags() -> None:
    settings = settings_from({"COGTRAIN_DRIVER_IMAGE": "d:1", "COGTRAIN_INSECURE_REGISTRIES": "a:5000,b"},
                             insecure_registries=["c", "a:5000"], gpu_resource_name="amd.com/gpu")
    assert settings.driver_image == "d:1" and settings.gpu_resource_name == "amd.com/gpu"
    assert settings.insecure_registries == ("a:5000", "b", "c")


def test_no_service_links_reach_the_driver() -> None:
    """A Service named like an input would otherwise inject COGTRAIN_INPUT_<NAME>_SERVICE_HOST."""
    pod = build_job(training(), IMAGE, INPUTS, Settings())["spec"]["template"]["spec"]
    assert pod["enableServiceLinks"] is False


def test_a_list_of_secrets_is_passed_by_reference_under_its_own_prefix() -> None:
    job = build_job(training(secretInputs={"tokens": {"name": "keys", "key": "list"},
                                           "hf_token": {"name": "hf", "key": "t"}}),
                    IMAGE, INPUTS, Settings(), secret_lists=["tokens"])
    env = {e["name"]: e for e in containers(job)[1]["env"]}
    assert env[f"{SECRET_LIST_ENV_PREFIX}tokens"]["valueFrom"] == {"secretKeyRef": {"name": "keys", "key": "list"}}
    assert f"{SECRET_ENV_PREFIX}tokens" not in env and f"{SECRET_ENV_PREFIX}hf_token" in env


FILE_INPUTS = {"train_data": "pvc://datasets/images/part-1.tar", "extra": ["pvc://shared.models/base.bin",
               "s3://bucket/p/ml/in.csv", "pvc://datasets/images/part-2.tar", "pvc://weights/team/ml/old/weights.bin"],
               "seed": 7}


def _driver_env(job: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in containers(job)[1]["env"]}


@pytest.mark.parametrize(("storage", "destination", "claims"), [
    # each claim once; the destination's claim is read where it is already mounted
    (["train_data", "extra"], "pvc://weights/team", ["datasets", "shared.models"]),
    (["train_data", "extra"], "s3://b/p", ["datasets", "shared.models", "weights"]),
    (["train_data"], "s3://b/p", ["datasets"]),
    ([], "s3://b/p", []),  # no input names a file in cluster storage: nothing is mounted
])
def test_pvc_inputs_are_mounted_read_only_into_the_driver(storage: list[str], destination: str,
                                                          claims: list[str]) -> None:
    job = build_job(training(destination=destination), IMAGE, FILE_INPUTS, Settings(), storage_inputs=storage)
    pod = job["spec"]["template"]["spec"]
    model, driver = containers(job)
    inputs = [v for v in pod["volumes"] if v["name"].startswith("input-")]
    assert [v["persistentVolumeClaim"] for v in inputs] == [{"claimName": c, "readOnly": True} for c in claims]
    mounts = {m["name"]: m for m in driver["volumeMounts"]}
    assert [(mounts[v["name"]]["mountPath"], mounts[v["name"]]["readOnly"]) for v in inputs] == [
        (f"/inputs/{c}", True) for c in claims]
    assert all(not m["name"].startswith("input-") for m in model["volumeMounts"]), "the model container gets no claim"
    assert ("--inputs-root=/inputs" in driver["args"]) == bool(storage)
    env = _driver_env(job)
    assert json.loads(env["COGTRAIN_STORAGE_INPUTS"]["value"]) == sorted(storage) if storage else (
        "COGTRAIN_STORAGE_INPUTS" not in env)


def test_file_inputs_job_is_valid_for_kubernetes() -> None:
    job = build_job(training(destination="pvc://weights/team", inputSecretRef={"name": "reader"}), IMAGE,
                    FILE_INPUTS, Settings(), storage_inputs=["train_data", "extra"])
    kubernetes_validate.validate(job, K8S_VERSIONS[-1], strict=True)


@pytest.mark.parametrize(("spec", "reader"), [
    ({"destination": "s3://b/p", "destinationSecretRef": {"name": "s3-creds"}, "inputSecretRef": {"name": "reader"}},
     "reader"),
    ({"destination": "pvc://weights/team", "inputSecretRef": {"name": "reader"}}, "reader"),
    # unset: the s3:// inputs are read with the destination's settings (AWS_*), or the Pod's own identity
    ({"destination": "s3://b/p", "destinationSecretRef": {"name": "s3-creds"}}, None),
])
def test_s3_inputs_are_read_with_the_named_secret_by_reference_only(spec: dict[str, Any], reader: str | None) -> None:
    job = build_job(training(**spec), IMAGE, FILE_INPUTS, Settings(), storage_inputs=["extra"])
    env = {n: e for n, e in _driver_env(job).items() if n.startswith("COGTRAIN_SOURCE_")}
    if reader is None:
        assert env == {}
        return
    assert sorted(env) == sorted(f"COGTRAIN_SOURCE_{k}" for k in S3_ENV)
    assert all(e["valueFrom"]["secretKeyRef"] == {"name": reader, "key": k[len("COGTRAIN_SOURCE_"):],
                                                  "optional": k[len("COGTRAIN_SOURCE_"):] not in S3_REQUIRED}
               and "value" not in e for k, e in env.items())
    assert not any(n.startswith(INPUT_ENV_PREFIX) and "AWS" in n for n in _driver_env(job)), (
        "not under the inputs' prefix, where the driver would take them for inputs")
