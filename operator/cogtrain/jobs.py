"""Build the batch/v1 Job that runs one Training: a pure function, from a Training to a manifest.

The Pod has two containers (see docs/driver.md):
- `model`, the Cog image pinned to its digest, running Cog's HTTP server in train mode as a
  native sidecar (an init container with `restartPolicy: Always`), with the GPUs;
- `driver`, this project's image running `cogtrain drive`, which sends the training to the
  model server, stores the output files and reports the result in its termination message.
The Pod ends when the driver ends, and the driver's exit code decides its phase.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from collections.abc import Collection
from typing import Any

from .api import API_VERSION, KIND, SecretKeySelector, Training
from .contract import (
    DESTINATION_MOUNT,
    DRIVER_CONTAINER,
    DRIVER_PORT,
    INPUT_ENV_PREFIX,
    INPUTS_MOUNT,
    LOOPBACK,
    MODEL_CONTAINER,
    MODEL_PORT,
    S3_ENV,
    S3_REQUIRED,
    SCRATCH_MOUNT,
    SECRET_ENV_PREFIX,
    SECRET_LIST_ENV_PREFIX,
    SOURCE_ENV_PREFIX,
    STORAGE_INPUTS_ENV,
    TERMINATION_LOG,
    ExitCode,
    env_value,
    parse_storage_ref,
    storage_refs,
)
from .settings import Settings

LABEL_NAME = "app.kubernetes.io/name"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_TRAINING = "cog.run/training"
MANAGED_BY = "cog-training-operator"
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
PASSED_THROUGH_LABELS = (KUEUE_QUEUE_LABEL, "kueue.x-k8s.io/priority-class")


def job_name(training: Training) -> str:
    """Deterministic, so a restarted operator finds the Job instead of creating a second one.

    The Training's name (shortened to fit a label value) plus a hash of its uid, so a Training
    deleted and created again under the same name never adopts its predecessor's Job.
    """
    name = re.sub(r"[^a-z0-9-]", "-", (training.metadata.name or "training").lower()).strip("-") or "training"
    identity = training.metadata.uid or f"{training.metadata.namespace}/{training.metadata.name}"
    suffix = hashlib.sha256(identity.encode()).hexdigest()[:5]
    return f"{name[:57].rstrip('-')}-{suffix}"


def labels_for(training: Training) -> dict[str, str]:
    labels = {
        LABEL_NAME: "cog-training",
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_TRAINING: training.metadata.name or "",
    }
    for key in PASSED_THROUGH_LABELS:
        value = (training.metadata.labels or {}).get(key)
        if value:
            labels[key] = value
    return labels


def _input_env(
    inputs: dict[str, Any], secret_inputs: dict[str, SecretKeySelector], secret_lists: Collection[str]
) -> list[dict[str, Any]]:
    """Inputs as compact JSON values; Secret inputs only by reference (a list[Secret] input's key holds
    a JSON array of strings, under its own prefix so the driver knows to parse it)."""
    env: list[dict[str, Any]] = [
        {"name": f"{INPUT_ENV_PREFIX}{name}", "value": env_value(value)} for name, value in inputs.items()
    ]
    env += [
        {
            "name": f"{SECRET_LIST_ENV_PREFIX if name in secret_lists else SECRET_ENV_PREFIX}{name}",
            "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}},
        }
        for name, ref in secret_inputs.items()
    ]
    return env


def _destination_env(destination: str, secret: str | None) -> list[dict[str, Any]]:
    """An s3:// destination's settings from its Secret, by reference: no value is ever in the Job.

    The access key pair is required: a Secret that is missing or lacks it stops the Pod at
    CreateContainerConfigError (shown in the Training's status) instead of silently falling back
    to whatever identity the node has. The other settings are optional.
    """
    if not destination.startswith("s3://") or not secret:
        return []
    return [
        {"name": key, "valueFrom": {"secretKeyRef": {"name": secret, "key": key, "optional": key not in S3_REQUIRED}}}
        for key in S3_ENV
    ]


def _destination_volume(destination: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """A pvc:// destination is mounted into the driver; s3:// needs no volume."""
    if not destination.startswith("pvc://"):
        return None
    claim = destination[len("pvc://"):].split("/", 1)[0]
    return (
        {"name": "destination", "persistentVolumeClaim": {"claimName": claim}},
        {"name": "destination", "mountPath": DESTINATION_MOUNT},
    )


def _claim(uri: str) -> str | None:
    return uri[len("pvc://"):].split("/", 1)[0] if uri.startswith("pvc://") else None


def _input_claims(inputs: dict[str, Any], storage_inputs: Collection[str], destination: str) -> list[str]:
    """The claims pvc:// file inputs read, each once, sorted; the destination's claim is already mounted."""
    claims: set[str] = set()
    for name in storage_inputs:
        for value in storage_refs(inputs.get(name)):
            with contextlib.suppress(ValueError):  # validated before: a malformed one mounts nothing
                ref = parse_storage_ref(value)
                if ref.scheme == "pvc":
                    claims.add(ref.root)
    claims.discard(_claim(destination) or "")
    return sorted(claims)


def _input_volumes(claims: list[str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Each claim read-only, twice over (the volume and the mount): the driver only reads inputs, and a
    claim shared with other workloads must not be changed by a training. Volume names are numbered,
    since a claim's name (up to 253 characters, with dots) is not a valid volume name."""
    volumes = [
        {"name": f"input-{index}", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}
        for index, claim in enumerate(claims)
    ]
    mounts = [
        {"name": f"input-{index}", "mountPath": f"{INPUTS_MOUNT}/{claim}", "readOnly": True}
        for index, claim in enumerate(claims)
    ]
    return volumes, mounts


def _storage_env(storage_inputs: Collection[str], reader_secret: str | None) -> list[dict[str, Any]]:
    """Which inputs name files in cluster storage, and the Secret that reads s3:// ones, by reference."""
    if not storage_inputs:
        return []
    env: list[dict[str, Any]] = [{"name": STORAGE_INPUTS_ENV, "value": env_value(sorted(storage_inputs))}]
    if reader_secret:
        env += [
            {
                "name": f"{SOURCE_ENV_PREFIX}{key}",
                "valueFrom": {"secretKeyRef": {"name": reader_secret, "key": key, "optional": key not in S3_REQUIRED}},
            }
            for key in S3_ENV
        ]
    return env


def _model_resources(training: Training, settings: Settings) -> dict[str, Any]:
    resources = training.spec.resources
    # Quantities as strings, their canonical JSON form (and what the typed client requires).
    requests = {k: str(v) for k, v in (resources.requests or {}).items()} if resources else {}
    limits = {k: str(v) for k, v in (resources.limits or {}).items()} if resources else {}
    gpus = resources.gpus if resources else 1
    gpu_name = (resources.gpu_resource_name if resources else None) or settings.gpu_resource_name
    if gpus:
        limits[gpu_name] = str(gpus)
        requests.pop(gpu_name, None)  # extended resources: the limit is the request
    out: dict[str, Any] = {}
    if requests:
        out["requests"] = requests
    if limits:
        out["limits"] = limits
    return out


def build_job(
    training: Training,
    image: str,
    inputs: dict[str, Any],
    settings: Settings,
    secret_lists: Collection[str] = (),
    storage_inputs: Collection[str] = (),
) -> dict[str, Any]:
    """The Job manifest for a validated Training; `image` is the model pinned to its digest.

    `secret_lists`: the Secret inputs that take a list of strings (checks.Checked.secret_list_names).
    `storage_inputs`: the file inputs naming s3:// or pvc:// files (checks.Checked.storage_input_names).
    """
    spec = training.spec
    meta = training.metadata
    name = job_name(training)
    labels = labels_for(training)
    destination = spec.destination or settings.default_destination or ""
    secret_inputs = dict(spec.secret_inputs or {})
    secret_ref = spec.destination_secret_ref
    # The operator's default Secret goes only with its default destination: an author who names
    # another bucket names its credentials too, and cannot write wherever the admin's reach.
    default_secret = settings.default_destination_secret if not spec.destination else None
    destination_secret = (secret_ref.name if secret_ref else None) or default_secret

    shm: dict[str, Any] = {"medium": "Memory"}
    if settings.shm_size:
        shm["sizeLimit"] = settings.shm_size
    volumes: list[dict[str, Any]] = [
        {"name": "dshm", "emptyDir": shm},
        {"name": "scratch", "emptyDir": {}},
    ]
    driver_mounts: list[dict[str, Any]] = [{"name": "scratch", "mountPath": SCRATCH_MOUNT}]
    pvc = _destination_volume(destination)
    if pvc is not None:
        volumes.append(pvc[0])
        driver_mounts.append(pvc[1])
    input_volumes, input_mounts = _input_volumes(_input_claims(inputs, storage_inputs, destination))
    volumes += input_volumes
    driver_mounts += input_mounts

    model = {
        "name": MODEL_CONTAINER,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "restartPolicy": "Always",  # a native sidecar: it stops when the driver is done
        # The image's ENTRYPOINT (tini) stays; these replace its CMD. The server listens on the Pod's
        # loopback only: it answers anyone who can reach it with the training's input, secrets
        # included, and stops on an unauthenticated POST /shutdown. The driver, in the same Pod,
        # is its only client and waits for its setup itself (no kubelet probe can reach loopback).
        "args": [
            "python", "-m", "cog.server.http", "--x-mode", "train",
            "--host", LOOPBACK,
            "--await-explicit-shutdown", "true",
            "--upload-url", f"http://{LOOPBACK}:{DRIVER_PORT}/upload/",
        ],
        "env": [{"name": "PORT", "value": str(MODEL_PORT)}],
        "resources": _model_resources(training, settings),
        "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}],
    }
    driver = {
        "name": DRIVER_CONTAINER,
        "image": settings.driver_image,
        "imagePullPolicy": settings.driver_image_pull_policy,
        # Explicit, so a driver image with another ENTRYPOINT works as long as cogtrain is on PATH.
        "command": ["cogtrain"],
        "args": [
            "drive",
            f"--model-url=http://{LOOPBACK}:{MODEL_PORT}",
            f"--listen={LOOPBACK}:{DRIVER_PORT}",
            f"--training-id={meta.uid or name}",
            f"--destination={destination}",
            f"--destination-root={DESTINATION_MOUNT}",
            f"--scratch={SCRATCH_MOUNT}",
            f"--namespace={meta.namespace or ''}",
            f"--name={meta.name or ''}",
            f"--setup-timeout={settings.setup_timeout_seconds}",
            # Only with file inputs from cluster storage: a Training without them runs with an older driver too.
            *([f"--inputs-root={INPUTS_MOUNT}"] if storage_inputs else []),
        ],
        # The root filesystem is read-only: temporary files (e.g. an oversized output.json) go to scratch.
        "env": [{"name": "TMPDIR", "value": SCRATCH_MOUNT}]
        + _input_env(inputs, secret_inputs, secret_lists)
        + _destination_env(destination, destination_secret)
        + _storage_env(storage_inputs, spec.input_secret_ref.name if spec.input_secret_ref else None),
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}},
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "File",
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 65532,
            "runAsGroup": 65532,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": driver_mounts,
    }
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        # No Service's address in the environment: a Service named like an input would otherwise
        # inject COGTRAIN_INPUT_..._SERVICE_HOST into the driver's inputs.
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": settings.termination_grace_seconds,
        "automountServiceAccountToken": spec.automount_service_account_token,
        "initContainers": [model],
        "containers": [driver],
        "volumes": volumes,
    }
    node_selector = {**settings.default_node_selector, **(spec.node_selector or {})}
    if node_selector:
        pod_spec["nodeSelector"] = node_selector
    tolerations = [t.model_dump(mode="json", by_alias=True, exclude_none=True) for t in spec.tolerations or []]
    tolerations += [t for t in settings.default_tolerations if t not in tolerations]
    if tolerations:
        pod_spec["tolerations"] = tolerations
    if spec.affinity is not None:
        pod_spec["affinity"] = spec.affinity.model_dump(mode="json", by_alias=True, exclude_none=True)
    for key, value in (
        ("priorityClassName", spec.priority_class_name),
        ("runtimeClassName", spec.runtime_class_name),
        ("serviceAccountName", spec.service_account_name),
    ):
        if value:
            pod_spec[key] = value
    if spec.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": ref.name} for ref in spec.image_pull_secrets if ref.name]

    job_spec: dict[str, Any] = {
        "backoffLimit": spec.backoff_limit,
        "completions": 1,
        "parallelism": 1,
        "suspend": spec.suspend,
        # The first rule that matches wins: a Pod disrupted (drained, evicted, preempted) is ignored
        # and replaced even though its driver, stopped by SIGTERM, exits with a final code.
        "podFailurePolicy": {
            "rules": [
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
                {
                    "action": "FailJob",
                    "onExitCodes": {"containerName": DRIVER_CONTAINER, "operator": "In",
                                    "values": ExitCode.final()},
                },
            ]
        },
        "template": {"metadata": {"labels": labels}, "spec": pod_spec},
    }
    if spec.active_deadline_seconds is not None:
        job_spec["activeDeadlineSeconds"] = spec.active_deadline_seconds
    if spec.ttl_seconds_after_finished is not None:
        job_spec["ttlSecondsAfterFinished"] = spec.ttl_seconds_after_finished

    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": meta.namespace,
            "labels": labels,
            "ownerReferences": [
                {
                    "apiVersion": API_VERSION,
                    "kind": KIND,
                    "name": meta.name,
                    "uid": meta.uid,
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": job_spec,
    }
