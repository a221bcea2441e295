"""The contract between the operator and the driver in a training Pod (docs/driver.md).

One place for what both sides must agree on: container names and ports, the environment the
Job passes, the driver's exit codes, its report (the termination message) and the reasons that
status conditions, Events, metrics and the docs publish. The driver imports this module and
`destinations` only, so a training Pod never loads the Kubernetes client; keep this module free
of I/O and of imports beyond the standard library and pydantic.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

MODEL_CONTAINER = "model"
DRIVER_CONTAINER = "driver"
MODEL_PORT = 5000
DRIVER_PORT = 5080
# Both servers listen on the Pod's loopback only (docs/security.md).
LOOPBACK = "127.0.0.1"

INPUT_ENV_PREFIX = "COGTRAIN_INPUT_"
SECRET_ENV_PREFIX = "COGTRAIN_SECRET_INPUT_"
# A list[Secret] input: its Secret key holds a JSON array of strings (docs/validation.md).
SECRET_LIST_ENV_PREFIX = "COGTRAIN_SECRET_LIST_INPUT_"
# The s3:// destination's settings, under the AWS SDKs' own names: the Job takes them from the
# Secret named by spec.destinationSecretRef, and the driver reads them.
S3_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION", "AWS_ENDPOINT_URL")
S3_REQUIRED = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
DESTINATION_MOUNT = "/destination"
# File inputs from cluster storage (docs/training.md): the names of the inputs whose values (or list items)
# are s3:// or pvc:// references, as a JSON array; each pvc:// input's claim mounted read-only at
# <INPUTS_MOUNT>/<claim> (the destination's claim is read where it is mounted); and, when the Training
# names spec.inputSecretRef, the s3:// inputs' settings under the AWS SDK's names behind this prefix.
STORAGE_INPUTS_ENV = "COGTRAIN_STORAGE_INPUTS"
INPUTS_MOUNT = "/inputs"
SOURCE_ENV_PREFIX = "COGTRAIN_SOURCE_"
# Where the driver serves those files to the model server, on the Pod's loopback: /inputs/<token>/<name>.
INPUT_FILES_PATH = "/inputs/"
SCRATCH_MOUNT = "/scratch"
TERMINATION_LOG = "/dev/termination-log"
# What a condition's message and status.error may hold (the CRD allows 32768 characters): longer
# messages are cut, so a status write is never refused for its size.
MESSAGE_LIMIT = 8192
# The kubelet keeps at most this many bytes of a termination message (and only the tail of more).
TERMINATION_LIMIT = 4096
# How deep the model's output may nest (the driver refuses deeper, jsonstream.MAX_DEPTH); a report, which holds
# it in an object, may nest two levels more. Deeper, Python's JSON encoder and deepcopy recurse past their limit.
OUTPUT_MAX_DEPTH = 64
REPORT_MAX_DEPTH = OUTPUT_MAX_DEPTH + 2
# What a JSON number in a status may be: the API server stores an int64 or a float64 and refuses the rest.
_INT64 = 2**63


S3_KEY_BYTES = 1024
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_CLAIM = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
STORAGE_SCHEMES = ("s3://", "pvc://")


@dataclass(frozen=True)
class StorageRef:
    """A file input's value that names a file in cluster storage: an S3 object or a file on a PVC."""

    scheme: Literal["s3", "pvc"]
    root: str  # the bucket or the claim
    path: str  # the object's key or the file's path in the claim: "/"-separated, relative, no . or ..

    @property
    def parts(self) -> list[str]:
        return self.path.split("/")

    @property
    def basename(self) -> str:
        return self.parts[-1]

    def __str__(self) -> str:
        return f"{self.scheme}://{self.root}/{self.path}"


def is_storage_ref(value: Any) -> bool:
    """Whether a value is meant as an s3:// or pvc:// reference (well-formed or not)."""
    return isinstance(value, str) and value.startswith(STORAGE_SCHEMES)


def parse_storage_ref(value: str) -> StorageRef:
    """An s3://BUCKET/KEY or pvc://CLAIM/PATH reference; ValueError saying what is wrong with it.

    Strict where the driver or an access rule would otherwise have to guess: no `.` or `..` segment
    (a traversal out of a claim's folder or out of a namespace's key prefix), no empty segment (an
    absolute path inside a claim), no trailing `/` (a folder, not a file), no control characters.
    """
    scheme: Literal["s3", "pvc"] | None = (
        "s3" if value.startswith("s3://") else "pvc" if value.startswith("pvc://") else None
    )
    if scheme is None:
        raise ValueError("is not an s3:// or pvc:// reference")
    form = "s3://BUCKET/KEY" if scheme == "s3" else "pvc://CLAIM/PATH"
    root, _, path = value[len(scheme) + 3 :].partition("/")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise ValueError(f"contains a control character; write {form}")
    if scheme == "s3" and not _BUCKET.fullmatch(root):
        raise ValueError(f"names no valid bucket (3-63 lowercase letters, digits, dots and hyphens); write {form}")
    if scheme == "pvc" and not (len(root) <= 253 and _CLAIM.fullmatch(root)):
        raise ValueError("names no valid claim (a PersistentVolumeClaim name: lowercase letters, digits, '-' and '.', "
                         f"at most 253 characters, starting and ending with a letter or digit); write {form}")
    what = "object key" if scheme == "s3" else "path in the claim"
    if not path:
        raise ValueError(f"names no {'object' if scheme == 's3' else 'file'}: it has no {what}; write {form}")
    parts = path.split("/")
    if "" in parts[:-1]:
        raise ValueError(f"has an empty segment (//) in its {what}; the {what} is relative, without empty segments")
    if not parts[-1]:
        raise ValueError(f"ends with /: it names a folder; name one file ({form})")
    if any(part in (".", "..") for part in parts):
        raise ValueError(f"has a . or .. segment in its {what}; these are not allowed")
    if scheme == "s3" and len(path.encode()) > S3_KEY_BYTES:
        raise ValueError(f"has an object key longer than {S3_KEY_BYTES} bytes")
    return StorageRef(scheme, root, path)


def storage_refs(value: Any) -> list[str]:
    """The strings of an input's value that are meant as references: the value, or a list's items."""
    items = value if isinstance(value, list) else [value]
    return [item for item in items if is_storage_ref(item)]


def env_value(value: Any) -> str:
    """An input's value as the Job passes it (COGTRAIN_INPUT_<name>) and the driver reads it: compact JSON."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


class ExitCode(IntEnum):
    """The driver's exit codes; all but 0 are final (the Job's podFailurePolicy fails the Job)."""

    SUCCEEDED = 0
    TRAINING_FAILED = 10
    SETUP_FAILED = 11
    INPUT_REJECTED = 12
    DESTINATION_UNWRITABLE = 13
    CANCELED = 14
    MODEL_UNREACHABLE = 15
    DRIVER_FAILED = 16

    @classmethod
    def final(cls) -> list[int]:
        return [int(code) for code in cls if code is not cls.SUCCEEDED]


class Reason(StrEnum):
    """Every reason a Training's conditions and Events carry (docs/operator.md lists them)."""

    # the normal course
    PENDING = "Pending"
    JOB_CREATED = "JobCreated"
    JOB_ADOPTED = "JobAdopted"
    JOB_MISSING = "JobMissing"
    JOB_LOST = "JobLost"
    JOB_REJECTED = "JobRejected"
    POD_REFUSED = "PodRefused"
    SERVICE_ACCOUNT_MISSING = "ServiceAccountMissing"
    PRIORITY_CLASS_MISSING = "PriorityClassMissing"
    STARTING = "Starting"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    SUSPENDED = "Suspended"
    RETRYING = "Retrying"
    RESTARTING = "Restarting"
    RESTARTED = "Restarted"
    TOO_MANY_RESTARTS = "TooManyRestarts"
    CANCELED = "Canceled"
    INPUTS_VALID = "InputsValid"
    DEPRECATED_INPUT = "DeprecatedInput"
    NOT_STALLED = "NotStalled"
    FAILED = "Failed"
    # refused before any Job exists
    INVALID_SPEC = "InvalidSpec"
    INVALID_INPUT = "InvalidInput"
    NO_DESTINATION = "NoDestination"
    JOB_CONFLICT = "JobConflict"
    # the model image and its registry
    INVALID_IMAGE_REFERENCE = "InvalidImageReference"
    IMAGE_NOT_FOUND = "ImageNotFound"
    TAG_NOT_FOUND = "TagNotFound"
    UNAUTHORIZED = "Unauthorized"
    REGISTRY_UNAVAILABLE = "RegistryUnavailable"
    REGISTRY_BAD_RESPONSE = "RegistryBadResponse"
    DIGEST_MISMATCH = "DigestMismatch"
    NO_MATCHING_PLATFORM = "NoMatchingPlatform"
    NOT_A_COG_IMAGE = "NotACogImage"
    NO_TRAINING_INTERFACE = "NoTrainingInterface"
    MALFORMED_SCHEMA = "MalformedSchema"
    # the Pod, as the cluster shows it
    UNSCHEDULABLE = "Unschedulable"
    IMAGE_PULL_BACK_OFF = "ImagePullBackOff"
    IMAGE_PULL_FAILED = "ImagePullFailed"
    CREATE_CONTAINER_CONFIG_ERROR = "CreateContainerConfigError"
    CREATE_CONTAINER_ERROR = "CreateContainerError"
    RUN_CONTAINER_ERROR = "RunContainerError"
    OOM_KILLED = "OOMKilled"
    EVICTED = "Evicted"
    DEADLINE_EXCEEDED = "DeadlineExceeded"
    POD_FAILED = "PodFailed"
    # the driver's report
    TRAINING_FAILED = "TrainingFailed"
    SETUP_FAILED = "SetupFailed"
    INPUT_REJECTED = "InputRejected"
    DESTINATION_UNWRITABLE = "DestinationUnwritable"
    MODEL_UNREACHABLE = "ModelUnreachable"
    TERMINATED = "Terminated"
    DRIVER_FAILED = "DriverFailed"
    DRIVER_RESULT_MISSING = "DriverResultMissing"
    PREDICTION_FAILED = "PredictionFailed"
    # notifications (Events only; the training goes on whatever they say)
    WEBHOOK_REFUSED = "WebhookRefused"
    WEBHOOK_FAILED = "WebhookFailed"


# The exit code of each reason the driver can end with; any other reason is the training's failure.
EXIT_CODES: dict[Reason, ExitCode] = {
    Reason.TRAINING_FAILED: ExitCode.TRAINING_FAILED,
    Reason.PREDICTION_FAILED: ExitCode.TRAINING_FAILED,
    Reason.SETUP_FAILED: ExitCode.SETUP_FAILED,
    Reason.INPUT_REJECTED: ExitCode.INPUT_REJECTED,
    Reason.DESTINATION_UNWRITABLE: ExitCode.DESTINATION_UNWRITABLE,
    Reason.CANCELED: ExitCode.CANCELED,
    Reason.TERMINATED: ExitCode.CANCELED,
    Reason.MODEL_UNREACHABLE: ExitCode.MODEL_UNREACHABLE,
    Reason.DRIVER_FAILED: ExitCode.DRIVER_FAILED,
}


class DriverReport(BaseModel):
    """The driver's termination message: written by the driver, read by the operator's `status`."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    status: Literal["succeeded", "failed"]
    output: Any = None
    weights: str | None = None
    metrics: dict[str, Any] | None = None
    reason: Reason | None = None
    message: str | None = None
    logs: str | None = None  # logs.txt at the destination
    log_tail: str | None = None  # a failure's last log lines, in the room the message leaves

    @field_validator("reason", mode="before")
    @classmethod
    def _driver_reason(cls, value: Any) -> Any:
        """A reason the driver does not end with (another driver version's, or one of the operator's own such as
        Succeeded or OOMKilled) reads as the driver's failure: the report never decides what the cluster says."""
        return value if value is None or (isinstance(value, str) and value in _DRIVER_REASONS) else Reason.DRIVER_FAILED

    @field_validator("weights", mode="before")
    @classmethod
    def _weights_uri(cls, value: Any) -> Any:
        """Weights that are not a URI are not believed: the operator takes them from the output instead."""
        return value if is_uri(value) else None

    @classmethod
    def failure(cls, reason: Reason, message: str, logs: str | None = None,
                log_tail: str | None = None) -> DriverReport:
        """A failed report whose encoding fits TERMINATION_LIMIT: the message first (cut by encoded bytes), then
        the logs' URI, then as many of the log tail's last lines as the room left holds."""
        report = cls(status="failed", reason=reason, message=message, logs=logs)
        if not report.fits():
            report = report.model_copy(update={"logs": None})
        size = len(report.encode().encode())
        if size > TERMINATION_LIMIT:
            escaped = len(json.dumps(message, ensure_ascii=False).encode()) - 2
            room = TERMINATION_LIMIT - (size - escaped)
            return cls(status="failed", reason=reason, message=cut_to_bytes(message, room, json_escaped=True))
        lines = (log_tail or "").split("\n")
        for start in range(len(lines)) if log_tail else ():
            with_tail = report.model_copy(update={"log_tail": "\n".join(lines[start:])})
            if with_tail.fits():
                return with_tail
        return report

    @classmethod
    def success(cls, output: Any, metrics: Mapping[str, Any] | None = None, logs: str | None = None) -> DriverReport:
        return cls(status="succeeded", output=output, weights=weights_of(output), metrics=dict(metrics or {}) or None,
                   logs=logs)

    def encode(self) -> str:
        return json.dumps(self.model_dump(mode="json", exclude_none=True), ensure_ascii=False, separators=(",", ":"))

    def fits(self) -> bool:
        return len(self.encode().encode()) <= TERMINATION_LIMIT

    @classmethod
    def decode(cls, message: str | None) -> DriverReport | None:
        """The report in a termination message, or None when there is none or it is not one."""
        if not message:
            return None
        try:
            value = json.loads(message, parse_int=_json_int, parse_float=_json_float, parse_constant=_json_constant)
            return cls.model_validate(value) if json_depth(value) <= REPORT_MAX_DEPTH else None
        except (ValueError, ValidationError, TypeError, RecursionError):
            return None


_DRIVER_REASONS = frozenset(reason.value for reason in EXIT_CODES)


def _json_float(text: str) -> float | None:
    """A JSON number as a status can hold it: a finite float64, else null (as the driver writes NaN)."""
    number = float(text)
    return number if math.isfinite(number) else None


def _json_int(text: str) -> int | float | None:
    """An integer beyond int64 is a float64 (as the API server stores it), or null beyond that."""
    if len(text.lstrip("-")) <= 19 and -_INT64 <= (number := int(text)) < _INT64:
        return number
    return _json_float(text)


def _json_constant(text: str) -> None:
    """NaN and ±Infinity, which Python's JSON reader accepts and no JSON document may hold: null."""
    return None


def json_depth(value: Any) -> int:
    """How deeply a parsed JSON value nests (a scalar 0, [] 1, [[]] 2), counted without recursion."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, depth + 1)
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def cut_to_bytes(text: str, limit: int, json_escaped: bool = False, marker: str = "…") -> str:
    """`text` shortened so that its UTF-8 encoding (or its JSON string form) is at most `limit` bytes."""

    def size(value: str) -> int:
        return len((json.dumps(value, ensure_ascii=False)[1:-1] if json_escaped else value).encode())

    if size(text) <= limit:
        return text
    low, high = 0, len(text)
    while low < high:  # the longest prefix that fits with the marker
        middle = (low + high + 1) // 2
        if size(text[:middle] + marker) <= limit:
            low = middle
        else:
            high = middle - 1
    return text[:low] + marker if size(text[:low] + marker) <= limit else ""


def is_uri(value: Any) -> bool:
    """A string that names a stored file (scheme://...), of at most 2048 characters."""
    return isinstance(value, str) and "://" in value[:64] and len(value) <= 2048


def weights_of(output: Any) -> str | None:
    """The weights' URI: the output when it is one file, else its `weights` field, else its only file.

    Only URIs count: a model that returns a plain string has no weights file.
    """
    if is_uri(output):
        return str(output)
    if isinstance(output, Mapping):
        weights = output.get("weights")
        if is_uri(weights):
            return str(weights)
        files = [v for k, v in output.items() if k != "$ref" and is_uri(v)]
        return str(files[0]) if len(files) == 1 else None
    if isinstance(output, list) and len(output) == 1 and is_uri(output[0]):
        return str(output[0])
    return None
