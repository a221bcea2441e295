"""The `Training` resource (cog.run/v1alpha1) as pydantic models.

These models are the single source of truth: the CRD in `crds/` is generated from them
(`cogtrain crd`), and the operator, webhook and CLI parse manifests with them. Field
descriptions become the CRD's descriptions, so `kubectl explain training.spec` shows them.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from kubernetes.client.models.v1_affinity import V1Affinity
from kubernetes.client.models.v1_local_object_reference import V1LocalObjectReference
from kubernetes.client.models.v1_toleration import V1Toleration
from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, field_validator
from pydantic.alias_generators import to_camel

from .notify import URL_MAX, url_problem
from .progress import LastLog, Metrics, Progress

GROUP = "cog.run"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "Training"
PLURAL = "trainings"
SINGULAR = "training"
SHORT_NAMES = ["tr", "cogtrain"]
CATEGORIES = ["cog"]

DEFAULT_GPU_RESOURCE = "nvidia.com/gpu"

# Fields a user may change after creation; every other spec field is immutable (CEL rule).
MUTABLE_SPEC_FIELDS = frozenset({"cancel", "suspend"})

# The pattern Kubebuilder puts on resource.Quantity.
_QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)

Quantity = Annotated[
    int | str,
    WithJsonSchema(
        {
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "x-kubernetes-int-or-string": True,
            "pattern": _QUANTITY_PATTERN,
        }
    ),
]
"""A Kubernetes resource quantity (`4`, `500m`, `16Gi`)."""

FreeForm = Annotated[
    Any,
    WithJsonSchema({"x-kubernetes-preserve-unknown-fields": True}),
]
"""Any JSON value, stored as given."""


class _Model(BaseModel):
    """Base for the resource's models: camelCase on the wire, unknown fields refused."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
    )

    def to_k8s(self) -> dict[str, Any]:
        """The object as Kubernetes stores it: camelCase keys, unset fields left out."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class SecretKeySelector(_Model):
    """A key of a Secret in the Training's namespace."""

    name: str = Field(min_length=1, max_length=253, description="Name of the Secret, in the Training's namespace.")
    key: str = Field(min_length=1, max_length=253, description="Key within the Secret whose value is the input.")


class Resources(_Model):
    """Compute resources of the model container."""

    gpus: int = Field(
        default=1,
        ge=0,
        le=64,
        description="Number of GPUs for the model container, requested as the GPU resource (0 runs on CPU).",
    )
    gpu_resource_name: str | None = Field(
        default=None,
        min_length=1,
        max_length=253,
        description=(
            "Extended resource name of the GPUs, e.g. nvidia.com/gpu or amd.com/gpu. "
            f"Unset: the operator's default ({DEFAULT_GPU_RESOURCE} unless configured)."
        ),
    )
    requests: dict[str, Quantity] | None = Field(
        default=None,
        max_length=32,
        description="Resource requests of the model container (cpu, memory, ephemeral-storage, ...).",
    )
    limits: dict[str, Quantity] | None = Field(
        default=None,
        max_length=32,
        description="Resource limits of the model container. The GPU limit is set from `gpus`.",
    )


WebhookEvent = Literal["start", "output", "logs", "completed"]


class TrainingSpec(_Model):
    """What to train: a Cog model image, its training inputs, and where the weights go."""

    model: str = Field(
        min_length=1,
        max_length=1024,
        description=(
            "Cog model image whose cog.yaml has `train:`, by tag or @sha256 digest, "
            "e.g. registry.example.com/acme/sdxl:1.2. The operator pins it to its digest."
        ),
    )
    input: dict[str, FreeForm] | None = Field(
        default=None,
        description=(
            "Inputs of the model's train() function by name, checked against the image's "
            "TrainingInput schema before any GPU is used. Secret inputs go in secretInputs."
        ),
    )
    secret_inputs: dict[str, SecretKeySelector] | None = Field(
        default=None,
        max_length=64,
        description=(
            "Inputs of Cog type Secret, by input name, taken from Kubernetes Secrets at run time; "
            "their values are never stored in the Training."
        ),
    )
    destination: str | None = Field(
        default=None,
        max_length=2048,
        pattern=r"^(s3://[^/]+(/.*)?|pvc://[^/]+(/.*)?)$",
        description=(
            "Where the output files are stored: s3://BUCKET/PREFIX/ or pvc://CLAIM/SUB/PATH. "
            "Files land under <destination>/<namespace>/<training>/. Unset: the operator's default."
        ),
    )
    destination_secret_ref: V1LocalObjectReference | None = Field(
        default=None,
        description=(
            "Secret in the Training's namespace with the s3:// destination's settings, under the AWS SDK's names: "
            "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, and optionally AWS_SESSION_TOKEN, AWS_REGION and "
            "AWS_ENDPOINT_URL (any S3-compatible store). Unset: the operator's default, else the Pod's own "
            "identity (e.g. IRSA)."
        ),
    )
    input_secret_ref: V1LocalObjectReference | None = Field(
        default=None,
        description=(
            "Secret in the Training's namespace with the settings that read s3:// file inputs, under the AWS "
            "SDK's names (as destinationSecretRef). Unset: the destination's credentials; the operator's default "
            "destination Secret reads only under <default destination>/<namespace>/."
        ),
    )
    resources: Resources | None = Field(
        default=None,
        description="GPUs and compute resources of the model container (default: 1 GPU).",
    )
    node_selector: dict[str, str] | None = Field(
        default=None,
        max_length=64,
        description="Node labels the training Pod must run on (Pod nodeSelector).",
    )
    tolerations: list[V1Toleration] | None = Field(
        default=None,
        max_length=64,
        description="Taints the training Pod tolerates, e.g. those of GPU node pools.",
    )
    affinity: V1Affinity | None = Field(
        default=None,
        description="Scheduling affinity of the training Pod (core/v1 Affinity).",
    )
    priority_class_name: str | None = Field(
        default=None, max_length=253, description="PriorityClass of the training Pod."
    )
    runtime_class_name: str | None = Field(
        default=None, max_length=253, description="RuntimeClass of the training Pod (e.g. nvidia)."
    )
    image_pull_secrets: list[V1LocalObjectReference] | None = Field(
        default=None,
        max_length=32,
        description="Secrets for pulling the model image; the operator also uses them to read its schema.",
    )
    service_account_name: str | None = Field(
        default=None,
        max_length=253,
        description="ServiceAccount of the training Pod; its token is mounted only with automountServiceAccountToken.",
    )
    automount_service_account_token: bool = Field(
        default=False,
        description="Mount the service account's API token into the training Pod (off: training code rarely needs it).",
    )
    active_deadline_seconds: int | None = Field(
        default=None,
        ge=1,
        description="Longest the training Job may run, in seconds, before it is stopped and marked Failed.",
    )
    max_restarts: int = Field(
        default=3,
        ge=0,
        le=100,
        description=(
            "How many times a training the cluster disrupts (node drained, Pod evicted or preempted, node lost, "
            "Job suspended by its queue) is started again before it fails. A training that fails by itself is "
            "never started again (see backoffLimit)."
        ),
    )
    backoff_limit: int = Field(
        default=0,
        ge=0,
        le=100,
        description="Retries of a failed training Pod. Default 0: GPU time is dear and training is rarely flaky.",
    )
    ttl_seconds_after_finished: int | None = Field(
        default=None,
        ge=0,
        description="Seconds after which the finished Job (not the Training) is deleted.",
    )
    suspend: bool = Field(
        default=False,
        description="Create the Job suspended or suspend it (as Kueue does); may be changed at any time.",
    )
    cancel: bool = Field(
        default=False,
        description="Set to true to stop the training; the Training stays, with phase Canceled.",
    )
    webhook: str | None = Field(
        default=None,
        min_length=8,
        max_length=URL_MAX,
        # In the CRD only: the API server refuses what is not http(s) or carries user:password@; here the
        # validator below says precisely what is wrong.
        json_schema_extra={"pattern": r"^https?://[^@/?#]+([/?#].*)?$"},
        description=(
            "URL notified as the training starts, stores its output, logs and completes (Replicate's events), "
            "with the Training as Replicate's training object, signed the Standard Webhooks way. https:// "
            "unless the operator allows http; the operator's settings say which hosts may be reached."
        ),
    )
    webhook_events_filter: list[WebhookEvent] | None = Field(
        default=None,
        min_length=1,
        max_length=4,
        description=(
            "Which events are sent: start, output, logs (at most every 5 s), completed. Unset: all four, "
            "as Replicate does."
        ),
    )
    webhook_secret_ref: SecretKeySelector | None = Field(
        default=None,
        description=(
            "Key of a Secret in the Training's namespace holding the signing secret (whsec_<base64>). Unset: the "
            "operator's default signing Secret."
        ),
    )

    @field_validator("webhook")
    @classmethod
    def _webhook_url(cls, value: str | None) -> str | None:
        problem = url_problem(value) if value is not None else None
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("webhook_events_filter")
    @classmethod
    def _events_once(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and len(set(value)) != len(value):
            raise ValueError("names an event twice")
        return value


class Phase(StrEnum):
    """Lifecycle phase of a Training."""

    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    CANCELED = "Canceled"


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Condition(_Model):
    """One aspect of the Training's state, as metav1.Condition (kstatus-compatible)."""

    type: str = Field(
        max_length=316,
        pattern=r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$",
        description="Type of condition: Ready, Reconciling, Stalled, Validated, Succeeded or Failed.",
    )
    status: ConditionStatus = Field(description="Status of the condition: True, False or Unknown.")
    reason: str = Field(
        min_length=1,
        max_length=1024,
        pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$",
        description="Machine-readable CamelCase reason for the condition's last transition.",
    )
    message: str = Field(
        default="", max_length=32768, description="Human-readable details of the transition."
    )
    last_transition_time: datetime = Field(
        description="When the condition last changed status.",
    )
    observed_generation: int | None = Field(
        default=None,
        ge=0,
        description="The .metadata.generation the condition was set from.",
    )


class Disruption(_Model):
    """A training Pod the cluster took away (its DisruptionTarget condition), or a suspension by its queue."""

    pod: str = Field(max_length=253, description="The Pod (or the Job, for a suspension).")
    uid: str = Field(max_length=300, description="The Pod's uid: each disruption is counted once.")
    node: str = Field(default="", max_length=253, description="The node it ran on.")
    reason: str = Field(max_length=128, description="The condition's reason, e.g. EvictionByEvictionAPI.")
    message: str = Field(default="", max_length=500, description="The condition's message.")
    time: datetime | None = Field(default=None, description="When it happened.")


class Notifications(_Model):
    """What became of the webhook's events: each delivered or given up is recorded, so none is lost or
    sent again needlessly across operator restarts."""

    delivered: list[str] | None = Field(
        default=None, max_length=8, description="Events the webhook acknowledged (2xx): start, output, completed."
    )
    failed: list[str] | None = Field(
        default=None, max_length=8, description="Events given up on (refused, or out of retries); see lastError."
    )
    attempts: int | None = Field(default=None, ge=0, description="Delivery attempts made, all events together.")
    last_error: str | None = Field(default=None, max_length=1024, description="Why the last failed attempt failed.")
    last_attempt_time: datetime | None = Field(default=None, description="When the last attempt was made.")


class TrainingStatus(_Model):
    """Observed state of a Training, written by the operator."""

    phase: Phase | None = Field(
        default=None, description="Pending, Running, Succeeded, Failed or Canceled."
    )
    conditions: list[Condition] | None = Field(
        default=None,
        max_length=16,
        description=(
            "Latest observations of the Training's state "
            "(Ready, Reconciling, Stalled, Validated, Succeeded, Failed)."
        ),
    )
    observed_generation: int | None = Field(
        default=None, ge=0, description="The .metadata.generation the operator last acted on."
    )
    image_digest: str | None = Field(
        default=None,
        description="The model image pinned to the digest that runs, e.g. registry.example.com/acme/sdxl@sha256:....",
    )
    job_name: str | None = Field(default=None, description="Name of the Job that runs the training.")
    start_time: datetime | None = Field(default=None, description="When the training started running.")
    completion_time: datetime | None = Field(default=None, description="When the training finished.")
    output: FreeForm = Field(
        default=None,
        description="The train() output as the model returned it, with every file replaced by its stored URI.",
    )
    weights: str | None = Field(
        default=None,
        description="URI of the trained weights: the output file, or the output's `weights` field.",
    )
    progress: Progress | None = Field(
        default=None,
        description="How far the running training is, read from its log (a tqdm bar, `step N/M`), every 20 s or so.",
    )
    metrics: Metrics | None = Field(
        default=None,
        description=(
            "The latest values of the metrics the model records through Cog while it runs; at the end, those the "
            "model server reported (e.g. predict_time in seconds)."
        ),
    )
    last_log: LastLog | None = Field(default=None, description="The model's last log line while it runs.")
    logs: str | None = Field(
        default=None, max_length=2048, description="URI of the whole training log (logs.txt) at the destination."
    )
    log_tail: str | None = Field(
        default=None, max_length=4096, description="The last lines of the log of a training that failed (at most 20)."
    )
    error: str | None = Field(default=None, max_length=32768, description="Why the training failed, in one sentence.")
    restarts: int | None = Field(
        default=None, ge=0, description="How many times the training was started again after a disruption."
    )
    disruptions: list[Disruption] | None = Field(
        default=None, max_length=10, description="The latest disruptions (at most 10), oldest first."
    )
    notifications: Notifications | None = Field(
        default=None, description="Deliveries of spec.webhook's events (recorded ones: start, output, completed)."
    )
    kopf: FreeForm = Field(default=None, description="Bookkeeping of the operator framework (kopf).")


class ObjectMeta(BaseModel):
    """The part of metav1.ObjectMeta this project reads; everything else is kept as given."""

    model_config = ConfigDict(extra="allow", populate_by_name=True, alias_generator=to_camel)

    name: str | None = None
    namespace: str | None = None
    uid: str | None = None
    generation: int | None = None
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None


class Training(_Model):
    """A fine-tuning run of a Cog model: its training inputs, where the weights go, and its outcome."""

    api_version: str = Field(default=API_VERSION, pattern=f"^{GROUP}/{VERSION}$".replace(".", r"\."))
    kind: str = Field(default=KIND, pattern=f"^{KIND}$")
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: TrainingSpec
    status: TrainingStatus | None = None
