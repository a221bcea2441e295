"""The operator's settings: what a cluster admin chooses once (flags, environment, Helm values).

Everything here has a default that works; `cogtrain operator --help` lists the flags, and each
flag has a COGTRAIN_* environment variable so the Helm chart can set them.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from . import __version__
from .api import DEFAULT_GPU_RESOURCE
from .notify import Destinations, RetryPolicy
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
    webhook_allowed_hosts: tuple[str, ...] = Field(
        default=("*",), description="Host names webhooks may go to (`*.example.com` globs a label; `*`: any name)."
    )
    webhook_allowed_cidrs: tuple[str, ...] = Field(
        default=(), description="Addresses webhooks may go to besides public ones (private, loopback: only these)."
    )
    webhook_allow_http: bool = Field(default=False, description="Allow plain http:// webhooks (default: https only).")
    webhook_secret: str | None = Field(
        default=None,
        description="Secret (in each Training's namespace) with the signing secret, when a Training names none.",
    )
    webhook_secret_key: str = Field(default="webhook-secret", description="Key of that Secret holding whsec_<base64>.")
    webhook_ca_bundle: str | None = Field(
        default=None, description="PEM file of CAs a webhook's TLS certificate is checked with (default: the system's)."
    )
    webhook_timeout_seconds: float = Field(
        default=10.0, gt=0, description="Time to connect, and to wait for the answer (twice it in all).")
    webhook_retry_seconds: float = Field(default=5.0, gt=0, description="First wait before a retry (then doubling).")
    webhook_give_up_seconds: float = Field(
        default=600.0, gt=0, description="An event is given up this long after its first attempt."
    )
    webhook_max_attempts: int = Field(default=8, ge=1, le=100, description="Attempts per event before it is given up.")

    @field_validator("webhook_allowed_cidrs")
    @classmethod
    def _cidrs(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for cidr in value:
            ipaddress.ip_network(cidr, strict=False)  # a ValueError names the bad one
        return value

    def destinations(self) -> Destinations:
        """Where webhooks may go, as `notify` checks it."""
        return Destinations.of(self.webhook_allowed_hosts, self.webhook_allowed_cidrs, self.webhook_allow_http)

    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(base=self.webhook_retry_seconds, max_attempts=self.webhook_max_attempts,
                           give_up_after=self.webhook_give_up_seconds)


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
    "webhook_allowed_hosts": "COGTRAIN_WEBHOOK_ALLOWED_HOSTS",
    "webhook_allowed_cidrs": "COGTRAIN_WEBHOOK_ALLOWED_CIDRS",
    "webhook_allow_http": "COGTRAIN_WEBHOOK_ALLOW_HTTP",
    "webhook_secret": "COGTRAIN_WEBHOOK_SECRET",
    "webhook_secret_key": "COGTRAIN_WEBHOOK_SECRET_KEY",
    "webhook_ca_bundle": "COGTRAIN_WEBHOOK_CA_BUNDLE",
}
_LISTS = ("webhook_allowed_hosts", "webhook_allowed_cidrs")  # comma-separated in the environment


def settings_from(environ: Mapping[str, str], **overrides: Any) -> Settings:
    """Settings from COGTRAIN_* variables (JSON for the maps and lists), then explicit overrides (flags)."""
    values: dict[str, Any] = {}
    for field, variable in ENVIRONMENT.items():
        raw = environ.get(variable)
        if raw:
            if field in _LISTS:
                values[field] = tuple(item.strip() for item in raw.split(",") if item.strip())
            else:
                values[field] = json.loads(raw) if field in ("default_node_selector", "default_tolerations") else raw
    insecure = insecure_registries_from_env(environ) + list(overrides.pop("insecure_registries", None) or [])
    values["insecure_registries"] = tuple(dict.fromkeys(insecure))
    values.update({key: value for key, value in overrides.items() if value is not None})
    return Settings(**values)
