"""The operator's settings: what a cluster admin chooses once (flags, environment, Helm values).

Everything here has a default that works; `cogtrain operator --help` lists the flags, and each
flag has a COGTRAIN_* environment variable so the Helm chart can set them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from . import __version__
from .api import DEFAULT_GPU_RESOURCE
from .registry import insecure_registries_from_env

DEFAULT_DRIVER_IMAGE = f"ghcr.io/cog-training-operator/cogtrain:{__version__}"


class Settings(BaseModel):
    """Cluster-wide choices of the operator."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    driver_image: str = Field(default=DEFAULT_DRIVER_IMAGE, description="Image that runs `cogtrain drive`.")
    driver_image_pull_policy: str = "IfNotPresent"
    gpu_resource_name: str = DEFAULT_GPU_RESOURCE
    default_destination: str | None = None
    default_destination_secret: str | None = None
    default_node_selector: dict[str, str] = Field(default_factory=dict)
    default_tolerations: list[dict[str, Any]] = Field(default_factory=list)
    shm_size: str | None = Field(default=None, description="Size limit of /dev/shm; None: up to the node's memory.")
    insecure_registries: tuple[str, ...] = ()
    registry_timeout: float = 10.0
    termination_grace_seconds: int = 60
    setup_timeout_seconds: int = 1800
    pod_refusal_check_seconds: float = Field(
        default=15.0, description="How long a Job may show no Pod before its FailedCreate Events are read."
    )
    progress_interval_seconds: float = Field(
        default=20.0, ge=1, description="How often a running Training's progress is read from its driver's log."
    )
    progress_reads_per_second: float = Field(
        default=10.0, gt=0, description="Most driver-log reads per second, all Trainings together (a cost cap)."
    )


ENVIRONMENT = {
    "driver_image": "COGTRAIN_DRIVER_IMAGE",
    "driver_image_pull_policy": "COGTRAIN_DRIVER_IMAGE_PULL_POLICY",
    "gpu_resource_name": "COGTRAIN_GPU_RESOURCE_NAME",
    "default_destination": "COGTRAIN_DEFAULT_DESTINATION",
    "default_destination_secret": "COGTRAIN_DEFAULT_DESTINATION_SECRET",
    "default_node_selector": "COGTRAIN_DEFAULT_NODE_SELECTOR",
    "default_tolerations": "COGTRAIN_DEFAULT_TOLERATIONS",
    "shm_size": "COGTRAIN_SHM_SIZE",
    "progress_interval_seconds": "COGTRAIN_PROGRESS_INTERVAL_SECONDS",
    "progress_reads_per_second": "COGTRAIN_PROGRESS_READS_PER_SECOND",
}


def settings_from(environ: Mapping[str, str], **overrides: Any) -> Settings:
    """Settings from COGTRAIN_* variables (JSON for the maps and lists), then explicit overrides (flags)."""
    values: dict[str, Any] = {}
    for field, variable in ENVIRONMENT.items():
        raw = environ.get(variable)
        if raw:
            values[field] = json.loads(raw) if field in ("default_node_selector", "default_tolerations") else raw
    insecure = insecure_registries_from_env(environ) + list(overrides.pop("insecure_registries", None) or [])
    values["insecure_registries"] = tuple(dict.fromkeys(insecure))
    values.update({key: value for key, value in overrides.items() if value is not None})
    return Settings(**values)
