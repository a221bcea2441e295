"""kopf handlers: thin wiring of the pure functions (validate, build, observe, advance) to the API.

- A Training is reconciled on creation and when the operator starts (resume): its model's schema
  is resolved, its inputs validated, and its Job created (or adopted, after a restart).
- Trainings, and the Jobs and Pods labelled for one, are kept, slim, in the operator's own view
  (`view`); each event is checked against it in the event loop, and a status that must change is
  written (coalesced per Training, on threads of its own) through the status subresource. Nothing is
  done for a finished Training (its status is final), nor at the first listing for a Training not
  seen yet (its resume reads afresh).
- A Training waiting for its Job's Pod has its Job's FailedCreate Events read (`PodRefused`).
- A running Training's progress is read from the tail of its driver's log, paced and capped (`progress`).
- `spec.cancel` deletes the Job and marks the Training Canceled; `spec.suspend` is passed on.
- The validating webhook answers with `admission`'s decisions; every Training event feeds `metrics`.
Deleting a Training deletes its Job through the ownerReference (no finalizer).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import contextvars
import datetime
import functools
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn, TypeVar, cast

import kopf
import pydantic
import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from . import access, admission, api, metrics, preflight, storage, webhook
from .checks import check
from .contract import DRIVER_CONTAINER, MESSAGE_LIMIT, Reason
from .jobs import LABEL_MANAGED_BY, LABEL_TRAINING, MANAGED_BY, build_job, job_name
from .notifier import Notifier
from .progress import Record, last_record, merge_patch
from .pull_secrets import read_pull_secrets
from .registry import RegistryClient, RegistryError
from .resolver import SchemaResolver
from .settings import Settings
from .status import (
    TERMINAL,
    Observation,
    Validation,
    advance,
    describe_disruption,
    disruptions_of,
    informational,
    observe,
    running_pod,
    status_patch,
)
from .validation import model_problems, summarize
from .view import JOB, Coalescer, Deferred, Key, Pacer, Schedule, View, slim

LOGGER = logging.getLogger("cogtrain")
MANAGED = {LABEL_MANAGED_BY: MANAGED_BY}
TRAININGS = (api.GROUP, api.VERSION, api.PLURAL)
FINISHED = frozenset(phase.value for phase in TERMINAL)
T = TypeVar("T")
STATUS_WORKERS = 4  # threads writing the statuses the view calls for (kopf's own 16 create Jobs)


class ApiClients:
    """Typed API groups over one `api_client` (connection pool and configuration)."""

    api_client: client.ApiClient

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api_client)

    @property
    def batch(self) -> client.BatchV1Api:
        return client.BatchV1Api(self.api_client)

    @property
    def custom(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.api_client)

    @property
    def scheduling(self) -> client.SchedulingV1Api:
        return client.SchedulingV1Api(self.api_client)


@dataclass
class Runtime(ApiClients):
    """What the handlers share: settings, the schema resolver, the API client, a clock, the webhook."""

    settings: Settings
    api_client: client.ApiClient
    resolver: SchemaResolver
    request_timeout: float = 30.0
    now: Callable[[], datetime.datetime] = field(default=lambda: datetime.datetime.now(datetime.UTC))
    webhook_config: webhook.WebhookConfig | None = None
    metrics_port: int | None = None
    lookups: webhook.BoundedLookup = field(init=False)  # the webhook's schema lookups, bounded in time
    view: View = field(default_factory=View)  # the Trainings, Jobs and Pods as the watches last showed them
    executor: concurrent.futures.Executor | None = None  # the status writes the view calls for (`configure`)
    refusals: asyncio.Task[None] | None = None  # the checks for refused Pods (`watch_refusals`)
    progress: asyncio.Task[None] | None = None  # the reads of running Trainings' progress (`watch_progress`)
    syncs: Coalescer = field(default_factory=Coalescer)  # the Trainings whose status a thread is syncing
    deferred: Deferred = field(default_factory=Deferred)  # informational status writes held in a burst (`_follow`)
    held_events: collections.deque[tuple[float, dict[str, Any], str]] = field(default_factory=collections.deque)
    notifier: Notifier | None = None  # the webhook deliveries (`watch_refusals` starts them)
    notifications: asyncio.Task[None] | None = None  # the task handing due webhook events to its threads

    @classmethod
    def create(cls, settings: Settings, api_client: client.ApiClient, **options: Any) -> Runtime:
        registry = RegistryClient(insecure_registries=settings.insecure_registries, timeout=settings.registry_timeout)
        return cls(settings=settings, api_client=api_client, resolver=SchemaResolver(registry), **options)

    def __post_init__(self) -> None:
        timeout = self.webhook_config.lookup_timeout if self.webhook_config else 3.0
        self.lookups = webhook.BoundedLookup(self.resolver, lambda: self.core, timeout=timeout)


def _runtime(memo: Any) -> Runtime:
    runtime: Runtime = memo["runtime"]
    return runtime


EVENT_HANDLERS = ("track", "job_event", "pod_event")


class EventHandlerSuccesses(logging.Filter):
    """Drops kopf's "Handler 'pod_event' succeeded." lines: one for every Training, Job and Pod event, a tenth
    of the event loop's time in a burst of 1,000 Trainings (py-spy), and a flood of logs saying nothing.
    Failures, and the lines of the create and field handlers, stay; `cogtrain operator -v` keeps them all."""

    _lines = frozenset(f"Handler '{name}' succeeded." for name in EVENT_HANDLERS)

    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg not in self._lines


def quiet_event_handlers() -> None:
    logging.getLogger("kopf.objects").addFilter(EventHandlerSuccesses())


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    """kopf settings: progress kept in status.kopf (status subresource), Events on, bounded timeouts;
    the admission webhook's server and TLS; the metrics endpoint."""
    runtime = _runtime(memo)
    runtime.view = View()  # this run's view: nothing carried over from an earlier run in the same process
    runtime.syncs = Coalescer()
    runtime.deferred = Deferred()
    # Status writes run on a few threads of their own, not on kopf's 16: in a burst the threads that create
    # Jobs are never all taken by status writes, which wait (coalesced, one per Training) instead.
    runtime.executor = concurrent.futures.ThreadPoolExecutor(STATUS_WORKERS, thread_name_prefix="cogtrain-status")
    settings.admission.server = webhook.server(runtime.webhook_config, runtime.api_client)
    metrics.watch_resolver(lambda: runtime.resolver.stats)
    if runtime.metrics_port is not None:
        metrics.serve(runtime.metrics_port)
    settings.persistence.progress_storage = kopf.StatusProgressStorage(field="status.kopf")
    settings.persistence.diffbase_storage = storage.DiffBase()
    settings.persistence.finalizer = "cog.run/finalizer"
    settings.posting.enabled = True
    settings.posting.level = logging.INFO
    settings.posting.reporting_component = "cog-training-operator"
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 30
    settings.networking.request_timeout = 60
    settings.networking.connect_timeout = 30
    settings.queueing.error_delays = (1, 2, 5, 10, 20, 30, 60)
    settings.execution.max_workers = 16
    # Under a burst the Trainings' watch can lag kopf's own patches by more than kopf's default 5 s; kopf
    # then handles an event from before its diff-base annotation as a second creation (measured: 396
    # creations handled for 201 Trainings at 200 at once). Events arrive in order, so waiting longer for
    # the patched version costs nothing when it comes sooner.
    settings.persistence.consistency_timeout = 60
    # Start-up over thousands of Trainings, Jobs and Pods: each listed in pages of 500 rather than one
    # response decoded at once, and a kopf worker lets its object go after 1 s idle rather than 5, so the
    # bodies of objects already handled do not pile up while the rest is still being listed.
    settings.watching.chunk_size = 500
    # Only the operator's own Jobs and Pods are listed and watched, selected by the API server: the `labels=`
    # of the handlers filter in the operator, after every other Pod of the cluster was sent and decoded.
    for group, plural in (("batch", "jobs"), ("", "pods")):
        settings.watching.label_selectors[(group, "v1", plural)] = f"{LABEL_MANAGED_BY}={MANAGED_BY}"
    settings.queueing.idle_timeout = 1.0
    settings.execution.default_backoff = 5  # a failed API call is retried in seconds, not a minute
    # A killed instance stays in the peering object for its lifetime, and an instance restarted with
    # the same priority pauses until it expires: 15 s, not kopf's 60, so a restart resumes quickly.
    settings.peering.lifetime = 15


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """In a cluster, the service account; elsewhere KUBECONFIG or ~/.kube/config, as kubectl does."""
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


# --- reconciling a Training -----------------------------------------------------------------


def _status_patch(
    runtime: Runtime,
    body: Mapping[str, Any],
    phase: api.Phase,
    reason: Reason,
    message: str,
    validated: Validation | None,
    **fields: Any,
) -> dict[str, Any]:
    """`status_patch` for this Training, as it stands now."""
    previous = (body.get("status") or {}).get("conditions") or []
    generation = (body.get("metadata") or {}).get("generation")
    return status_patch(phase, reason, message, generation, previous, runtime.now(), validated, **fields)


def _fail(
    runtime: Runtime, body: kopf.Body, patch: kopf.Patch, reason: Reason, message: str, validated: bool = True
) -> None:
    """Failed before (or instead of) running; `validated` False leaves the Validated condition as it was."""
    refused = Validation(False, reason, message) if validated else None
    patch.status.update(_status_patch(runtime, body, api.Phase.FAILED, reason, message, refused))
    kopf.warn(body, reason=reason, message=message)
    LOGGER.info("Training %s/%s failed: %s", body.meta.namespace, body.meta.name, message)


def _wait(
    runtime: Runtime, body: kopf.Body, patch: kopf.Patch, retry: int, reason: Reason, message: str,
    validated: Validation | None = None,
) -> NoReturn:
    """Pending, saying why, and retried with backoff (5 s doubling to 5 min)."""
    patch.status.update(_status_patch(runtime, body, api.Phase.PENDING, reason, message, validated))
    raise kopf.TemporaryError(message, delay=min(300, 5 * 2 ** min(retry, 6)))


def _api_message(what: str, error: ApiException) -> str:
    """One sentence from an API error: its own message, bounded (it may quote the object)."""
    try:
        detail = str(json.loads(error.body or "{}").get("message") or "")
    except (ValueError, AttributeError):
        detail = ""
    detail = detail or str(error.reason or f"HTTP {error.status}")
    return f"{what} (HTTP {error.status}): {detail[:1000]}"


def _owned_by(obj: Mapping[str, Any] | None, uid: str | None) -> bool:
    """Controlled by `uid` (the ownerReference with controller: true, as the Job controller and this
    operator write it): a reference added by anyone else does not make a Pod or Job ours."""
    owners = ((obj or {}).get("metadata") or {}).get("ownerReferences") or []
    return uid is not None and any(owner.get("uid") == uid and owner.get("controller") is True for owner in owners)


def _plain(runtime: Runtime, obj: Any) -> Any:
    """An API model as the JSON the server sent (camelCase keys)."""
    return runtime.api_client.sanitize_for_serialization(obj)  # type: ignore[no-untyped-call]


def _read_job(runtime: Runtime, namespace: str, name: str) -> dict[str, Any] | None:
    try:
        job: dict[str, Any] = _plain(
            runtime, runtime.batch.read_namespaced_job(name, namespace, _request_timeout=runtime.request_timeout)
        )
        return job
    except ApiException as error:
        if error.status == 404:
            return None
        raise


def _read_pods(runtime: Runtime, namespace: str, training: str) -> list[dict[str, Any]]:
    selector = f"{LABEL_MANAGED_BY}={MANAGED_BY},{LABEL_TRAINING}={training}"
    pods = runtime.core.list_namespaced_pod(
        namespace, label_selector=selector, _request_timeout=runtime.request_timeout
    )
    found: list[dict[str, Any]] = _plain(runtime, pods).get("items") or []
    return [p for p in found if (p.get("metadata", {}).get("labels") or {}).get(LABEL_TRAINING) == training]


def _announce(body: Mapping[str, Any], before: str | None, after: Mapping[str, Any]) -> None:
    phase = after.get("phase")
    if phase == before:
        return
    ready: Mapping[str, Any] = next((c for c in after.get("conditions") or [] if c["type"] == "Ready"), {})
    message = after.get("error") or ready.get("message") or str(phase)
    target = cast(kopf.Body, body)
    if phase == api.Phase.FAILED.value:
        kopf.warn(target, reason=Reason.FAILED, message=message)
    else:
        kopf.info(target, reason=Reason(str(phase)), message=message)


def _unfinished(status: Mapping[str, Any], **_: Any) -> bool:
    """Not Succeeded, Failed or Canceled. A finished Training is final: kopf runs no handler for it and,
    with none to run, writes nothing to it (no progress, no annotation), also when the operator starts."""
    return status.get("phase") not in FINISHED


@kopf.on.resume(*TRAININGS, when=_unfinished)
@kopf.on.create(*TRAININGS, when=_unfinished)
def reconcile(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, retry: int, reason: str | None = None,
              **_: Any) -> None:
    """Validate the Training against its model and create its Job, or adopt the Job it already has."""
    runtime = _runtime(memo)
    status = body.get("status") or {}
    if status.get("phase") in FINISHED:
        return
    try:
        training = api.Training.model_validate(dict(body))
    except pydantic.ValidationError as error:
        _fail(runtime, body, patch, Reason.INVALID_SPEC, summarize(model_problems(error), MESSAGE_LIMIT))
        return
    namespace = training.metadata.namespace or "default"
    if training.spec.cancel:
        _cancel(runtime, body, patch)
        return

    # A first attempt at a new Training creates its Job without reading it first: a Job already there
    # (made by an attempt that was cut short) answers the create with 409 and is adopted below.
    fresh = reason == kopf.Reason.CREATE and retry == 0 and not status.get("jobName")
    existing = None if fresh else _read_job(runtime, namespace, job_name(training))
    if existing is not None and _owned_by(existing, training.metadata.uid):
        _adopt(runtime, body, patch, training, existing)
        return
    if status.get("jobName"):  # it had a Job, which is gone: never a second one
        lost = lost_job(str(status["jobName"]))
        _fail(runtime, body, patch, lost.reason, lost.message, validated=False)
        return

    spec = training.spec
    pull_secrets = [ref.name for ref in spec.image_pull_secrets or [] if ref.name]
    keyring, notes = read_pull_secrets(
        runtime.core, namespace, pull_secrets, spec.service_account_name or "default", runtime.request_timeout
    )
    try:
        model = runtime.resolver.resolve(spec.model, keyring)
    except RegistryError as error:
        message = str(error) + (f" ({'; '.join(notes)})" if notes else "")
        reason = Reason(error.kind.value)
        if not error.retryable:
            _fail(runtime, body, patch, reason, message)
            return
        _wait(runtime, body, patch, retry, reason, message, Validation(None, reason, message))

    checked = check(training, model, runtime.settings)
    for warning in checked.warnings:
        kopf.warn(body, reason=Reason.DEPRECATED_INPUT, message=str(warning))
    if not checked.ok:
        _fail(runtime, body, patch, checked.reason, summarize(checked.problems, MESSAGE_LIMIT))
        return

    absent = preflight.missing(runtime.core, runtime.scheduling, namespace, spec, runtime.request_timeout)
    if absent is not None:
        _wait(runtime, body, patch, retry, *absent)

    manifest = build_job(training, model.pinned, checked.input, runtime.settings, checked.secret_list_names,
                         checked.storage_input_names)
    try:
        runtime.batch.create_namespaced_job(
            namespace, cast(client.V1Job, manifest), _request_timeout=runtime.request_timeout
        )
    except ApiException as error:
        if error.status in (400, 422):  # the API server will never take this Job: say why, once
            _fail(runtime, body, patch, Reason.JOB_REJECTED, _api_message("the Job was refused", error))
            return
        if error.status == 403:  # a quota or policy: it may allow the Job later
            _wait(runtime, body, patch, retry, Reason.JOB_REJECTED, _api_message("the Job is not allowed yet", error))
        if error.status != 409:
            raise
        existing = _read_job(runtime, namespace, manifest["metadata"]["name"])
        if existing is None:  # a conflict that left no Job behind: try again
            raise kopf.TemporaryError(
                f"creating Job {manifest['metadata']['name']} conflicted; retrying", delay=2
            ) from None
        if not _owned_by(existing, training.metadata.uid):
            _fail(
                runtime,
                body,
                patch,
                Reason.JOB_CONFLICT,
                f"a Job named {manifest['metadata']['name']} already exists and does not belong to this Training",
            )
            return
    message = f"created Job {manifest['metadata']['name']} running {model.pinned}"
    fields = _status_patch(
        runtime,
        body,
        api.Phase.PENDING,
        Reason.JOB_CREATED,
        message,
        Validation(True, Reason.INPUTS_VALID, f"the inputs match the training schema of {model.pinned}"),
        imageDigest=model.pinned,
        jobName=manifest["metadata"]["name"],
    )
    _record_job(patch, fields)
    _post_job_created(runtime, body, message)


def _post_job_created(runtime: Runtime, body: kopf.Body, message: str) -> None:
    """The JobCreated Event, held like an informational status write while Trainings wait for their first
    handling (this one among them, until kopf's patch lands): posted by `_release` in the event loop."""
    meta = body.get("metadata") or {}
    reference = {"apiVersion": body.get("apiVersion"), "kind": body.get("kind"),
                 "metadata": {key: meta.get(key) for key in ("name", "namespace", "uid")}}
    runtime.held_events.append((time.monotonic(), reference, message))


def _record_job(patch: kopf.Patch, fields: dict[str, Any]) -> None:
    """The jobName (and what goes with it), in kopf's patch: one status write with kopf's diff-base
    (storage.DiffBase keeps it in the status), as soon as the handler returns.

    Job and Pod events are ignored until the status names the Job; none that came in between is lost:
    the Training's own watch event for this write compares the status with the operator's view of the
    Job and Pods (`training_behind`), and brings it up to date when they have moved on.
    """
    patch.status.update(fields)


def _adopt(
    runtime: Runtime,
    body: kopf.Body,
    patch: kopf.Patch,
    training: api.Training,
    job: Mapping[str, Any],
) -> None:
    """After a restart or a lost write: the Job exists, so bring the status up to what it shows.

    Through `sync_status`'s conditional write, so an older view never overwrites what a Job or
    Pod event wrote meanwhile.
    """
    namespace = training.metadata.namespace or "default"
    if (body.get("status") or {}).get("jobName"):
        name = training.metadata.name or ""
        sync_status(runtime, namespace, name, _reader(runtime, namespace, name, job["metadata"]["name"]))
        return
    fields = _status_patch(
        runtime,
        body,
        api.Phase.PENDING,
        Reason.JOB_ADOPTED,
        f"adopted the existing Job {job['metadata']['name']}",
        Validation(True, Reason.INPUTS_VALID, "the Job was created from validated inputs"),
        jobName=job["metadata"]["name"],
    )
    _record_job(patch, fields)


# --- cancel and suspend ----------------------------------------------------------------------


def _observed(body: kopf.Body, patch: kopf.Patch) -> None:
    """A finished Training's cancel or suspend, edited, changes nothing, but the edit is seen: kstatus (Flux) reads
    an observedGeneration behind metadata.generation as still in progress."""
    patch.status["observedGeneration"] = body.meta.get("generation")


def _cancel(runtime: Runtime, body: kopf.Body, patch: kopf.Patch) -> None:
    status = body.get("status") or {}
    if status.get("phase") in FINISHED:
        _observed(body, patch)
        return
    name = status.get("jobName") or job_name(api.Training.model_validate(dict(body)))
    _delete_job(runtime, str(body.meta.namespace), name)
    message = "the training was canceled (spec.cancel); its Job was deleted"
    patch.status.update(_status_patch(runtime, body, api.Phase.CANCELED, Reason.CANCELED, message, None))
    kopf.info(body, reason=Reason.CANCELED, message=message)


@kopf.on.field(*TRAININGS, field="spec.cancel", new=True)
def cancel(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
    """spec.cancel: true stops the run; the driver gets SIGTERM and cancels the Cog training."""
    _cancel(_runtime(memo), body, patch)


def _not_creation(reason: str | None = None, **_: Any) -> bool:
    return reason != kopf.Reason.CREATE


@kopf.on.field(*TRAININGS, field="spec.suspend", when=_not_creation)
def suspend(body: kopf.Body, patch: kopf.Patch, old: Any, new: Any, memo: kopf.Memo, **_: Any) -> None:
    """spec.suspend is passed on to the Job (Kueue suspends and resumes Jobs the same way). On creation
    (`old` None) there is nothing to pass: `build_job` gave the Job the Training's spec.suspend."""
    runtime = _runtime(memo)
    name = (body.get("status") or {}).get("jobName")
    if (body.get("status") or {}).get("phase") in FINISHED:
        _observed(body, patch)
        return
    if old is None or not name:
        return
    try:
        runtime.batch.patch_namespaced_job(
            name, str(body.meta.namespace), {"spec": {"suspend": bool(new)}}, _request_timeout=runtime.request_timeout
        )
    except ApiException as error:
        if error.status != 404:
            raise


# --- following the Job and its Pods -----------------------------------------------------------


Children = Callable[[], tuple[list[Mapping[str, Any]], list[Mapping[str, Any]]]]


def sync_status(runtime: Runtime, namespace: str, training_name: str | None, children: Children,
                known: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
    """Recompute one Training's status from its Job and Pods and write it if it changed.

    `children()` gives the Jobs and Pods, and is called after each read of the Training: a view of
    them taken before that read could be older than a status another writer already based on a
    newer one. The write is conditional on the resourceVersion read, so two writers at once can
    never put an older view over a newer one; on a conflict everything is read again. `known` is
    the Training as its watch last showed it, used instead of a first read: when it is behind, the
    conditional write is refused and the Training is read. Returns the Training as written, if it was.
    """
    if not training_name:
        return None
    for attempt in range(5):
        try:
            training: dict[str, Any] = dict(known) if known is not None and attempt == 0 else cast(
                dict[str, Any],
                runtime.custom.get_namespaced_custom_object(
                    *TRAININGS[:2], namespace, TRAININGS[2], training_name, _request_timeout=runtime.request_timeout
                ),
            )
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        meta = training["metadata"]
        status = training.get("status") or {}
        if not status.get("jobName"):
            return None  # no Job made by this Training yet
        jobs, pods = children()
        job = next((j for j in jobs if _owned_by(j, meta.get("uid"))), None)
        owned: list[Mapping[str, Any]] = []
        if job is None:
            observation = _without_job(runtime, namespace, training)
            if observation is None:
                return None
        else:
            observation, owned = _observe(training, job, pods)
            if observation.reason in _READ_PODS_AFRESH:
                # A finished status is final: before concluding the report is missing, read the Pods
                # themselves (the view may not have caught up with the Job's Complete event).
                observation, owned = _observe(training, job, _read_pods(runtime, namespace, training_name))
        update = _advance(runtime, training, observation, owned)
        if not update:
            return None
        body = {"metadata": {"resourceVersion": meta.get("resourceVersion")}, "status": update}
        try:
            written = runtime.custom.patch_namespaced_custom_object_status(
                *TRAININGS[:2], namespace, TRAININGS[2], training_name, body, _request_timeout=runtime.request_timeout
            )
        except ApiException as error:
            if error.status in (404, 409) and known is not None and attempt == 0:
                continue  # the watch was behind: read the Training and recompute
            if error.status == 409:
                continue  # someone wrote in between: read again and recompute
            raise
        _announce(training, status.get("phase"), update)
        _restarted(runtime, training, status, update)
        return cast(dict[str, Any], written)
    return None


_READ_PODS_AFRESH = (Reason.DRIVER_RESULT_MISSING, Reason.FAILED)  # a finished Job with no Pod in view


def _observe(training: Mapping[str, Any], job: Mapping[str, Any],
             pods: Iterable[Mapping[str, Any]]) -> tuple[Observation, list[Mapping[str, Any]]]:
    """What the Job and the Pods it controls show (a Pod that only wears the labels decides nothing)."""
    uid = (job.get("metadata") or {}).get("uid")
    owned = [pod for pod in pods if _owned_by(pod, uid)]
    return observe(job, owned, (training.get("spec") or {}).get("activeDeadlineSeconds")), owned


def _advance(runtime: Runtime, training: Mapping[str, Any], observation: Observation,
             owned: list[Mapping[str, Any]]) -> dict[str, Any] | None:
    """`advance` for this Training: its status, generation, restart limit, spec.suspend and spec.cancel."""
    spec, meta = training.get("spec") or {}, training.get("metadata") or {}
    return advance(training.get("status") or {}, observation, meta.get("generation"), runtime.now(),
                   disruptions_of(owned), int(spec.get("maxRestarts", 3)), bool(spec.get("suspend")),
                   canceling=spec.get("cancel") is True or bool(meta.get("deletionTimestamp")))


def _without_job(runtime: Runtime, namespace: str, training: Mapping[str, Any]) -> Observation | None:
    """The status names a Job that is gone. Canceled, being deleted or finished: nothing to say.
    Otherwise, once a fresh read confirms it, the Job was lost (deleted by hand, or by its TTL while
    the operator was down): the training is not run again, since its output may already exist."""
    status, spec = training.get("status") or {}, training.get("spec") or {}
    if status.get("phase") in FINISHED or spec.get("cancel") or (training.get("metadata") or {}).get(
        "deletionTimestamp"
    ):
        return None
    name = str(status.get("jobName"))
    found = _read_job(runtime, namespace, name)
    if found is not None and _owned_by(found, (training.get("metadata") or {}).get("uid")):
        return None  # only the view was behind; the Job's own event follows
    return lost_job(name)


def lost_job(name: str) -> Observation:
    return Observation(
        api.Phase.FAILED,
        Reason.JOB_LOST,
        f"the training's Job {name} no longer exists (deleted, or removed by ttlSecondsAfterFinished while the "
        "operator was not running); the training is not run again: create a new Training to train again",
    )


def _restarted(runtime: Runtime, training: Mapping[str, Any], before: Mapping[str, Any],
               after: Mapping[str, Any]) -> None:
    """An Event per disruption just counted; a Training past its restarts gives its GPUs back at once."""
    target = cast(kopf.Body, training)
    new = int(after.get("restarts") or 0) - int(before.get("restarts") or 0)
    for disruption in (after.get("disruptions") or [])[-new:] if new > 0 else []:
        kopf.info(target, reason=Reason.RESTARTED, message=f"Restarted: {describe_disruption(disruption)}")
    failed = next((c for c in after.get("conditions") or [] if c["type"] == "Failed" and c["status"] == "True"), None)
    job = after.get("jobName") or before.get("jobName")
    if failed and failed["reason"] == Reason.TOO_MANY_RESTARTS and job:
        # Retried here: the status is final, so no later sync deletes the Job, which would go on making Pods.
        namespace = (training.get("metadata") or {}).get("namespace") or "default"
        _retried(lambda _: _delete_job(runtime, namespace, str(job)))


def _delete_job(runtime: Runtime, namespace: str, name: str) -> None:
    """Delete a Job and (in the background) its Pods; gone already is fine."""
    try:
        runtime.batch.delete_namespaced_job(
            name, namespace, propagation_policy="Background",
            grace_period_seconds=runtime.settings.termination_grace_seconds, _request_timeout=runtime.request_timeout,
        )
    except ApiException as error:
        if error.status != 404:
            raise


def _reader(runtime: Runtime, namespace: str, name: str, job: str) -> Children:
    """Fresh reads of a Training's Job and Pods from the API."""

    def read() -> tuple[list[Mapping[str, Any]], list[Mapping[str, Any]]]:
        found = _read_job(runtime, namespace, job)
        return ([found] if found is not None else []), list(_read_pods(runtime, namespace, name))

    return read


def _dispatch(runtime: Runtime, key: Key, finished_job: Mapping[str, Any] | None = None) -> None:
    """From the event loop: recompute the Training's status from the view in a worker thread, without
    waiting for it (the watches, and so the view, never wait for a status write). One thread per Training
    at a time: events that come while it runs make it run once more (from the Training as it wrote it)
    instead of a second writer racing it into a conflict. A deleted Job's last state is not coalesced away."""
    if finished_job is None and not runtime.syncs.enter(key):
        return
    context = contextvars.copy_context()  # kopf's, so that Events can be posted from the thread
    future = asyncio.get_running_loop().run_in_executor(
        runtime.executor, context.run, _sync_in_thread, runtime, key, finished_job)
    future.add_done_callback(functools.partial(_report, key))


def _report(key: Key, future: asyncio.Future[None]) -> None:
    if not future.cancelled() and (error := future.exception()) is not None:
        LOGGER.error("updating the status of Training %s/%s failed: %r", key[0], key[1], error)


def _sync_in_thread(runtime: Runtime, key: Key, finished_job: Mapping[str, Any] | None) -> None:
    if finished_job is not None:
        _sync_from_view(runtime, key, finished_job, None)
        return
    written: dict[str, Any] | None = None
    try:
        while True:
            written = _sync_from_view(runtime, key, None, written)
            if runtime.syncs.leave(key):
                break
    except BaseException:
        runtime.syncs.leave(key, force=True)
        raise


def _sync_from_view(runtime: Runtime, key: Key, finished_job: Mapping[str, Any] | None,
                    written: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """kopf never retries event handlers, so transient API errors are retried here (a few times, with
    backoff) rather than leaving a Training behind its Job."""

    def children() -> tuple[list[Mapping[str, Any]], list[Mapping[str, Any]]]:
        jobs, pods = runtime.view.children(key)
        return (list(jobs) or ([finished_job] if finished_job else [])), list(pods)

    return _retried(lambda attempt: sync_status(
        runtime, key[0], key[1], children,
        written if written is not None and attempt == 0 else runtime.view.training(key)))


def _retried(call: Callable[[int], T]) -> T:
    """`call(attempt)`, again after a transient API error (5xx, 429, a connection's), a few times with backoff."""
    for attempt in range(4):
        try:
            return call(attempt)
        except (ApiException, urllib3.exceptions.HTTPError, OSError) as error:
            if isinstance(error, ApiException) and error.status is not None and error.status < 500 and (
                error.status != 429
            ):
                raise
            if attempt == 3:
                raise
            time.sleep(0.5 * 2**attempt)
    raise AssertionError("unreachable")


def _finished(job: Mapping[str, Any]) -> bool:
    return any(c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
               for c in (job.get("status") or {}).get("conditions") or [])


def _deleted_finished_job(body: Mapping[str, Any], type: str | None) -> dict[str, Any] | None:  # noqa: A002
    # A finished Job deleted at once (ttlSecondsAfterFinished: 0) is observed as it last was, so a
    # status write that failed on its last change is made good here instead of reading as JobLost.
    return slim(dict(body), JOB) if type == "DELETED" and _finished(body) else None


Behind = tuple[bool, bool]
"""(a status write is called for, it may wait: `informational` while Trainings wait for their first handling)."""
_NOT_BEHIND: Behind = (False, False)


def _behind(runtime: Runtime, key: Key, training: Mapping[str, Any], finished_job: Mapping[str, Any] | None,
            no_job: bool) -> Behind:
    """Whether the view of the Job and Pods calls for a status write (no I/O: in the event loop). `no_job`:
    the answer when the view holds no Job of the Training (only a fresh read can tell then)."""
    jobs, pods = runtime.view.children(key)
    uid = (training.get("metadata") or {}).get("uid")
    job = next((j for j in jobs if _owned_by(j, uid)), None) or finished_job
    if job is None:
        return no_job, False
    observation, owned = _observe(training, job, pods)
    if observation.reason in _READ_PODS_AFRESH:
        return True, False  # sync_status reads the Pods afresh before deciding
    update = _advance(runtime, training, observation, owned)
    if update is None:
        return _NOT_BEHIND
    return True, finished_job is None and informational(training.get("status") or {}, update)


def _going(body: Mapping[str, Any], type: str | None) -> bool:  # noqa: A002  (kopf's name)
    return type == "DELETED" or bool((body.get("metadata") or {}).get("deletionTimestamp"))


def _child_behind(runtime: Runtime, key: Key, type: str | None,  # noqa: A002  (kopf's name)
                  finished_job: Mapping[str, Any] | None, going: bool = False) -> Behind:
    """Whether a Job's or Pod's event (already in the view) calls for a status write: never for a finished
    Training; at the first listing, not for a Training not seen yet (its resume reads everything afresh), nor
    for a child going away (deleted, or being deleted) whose Training the view does not hold: mostly the garbage
    collector's, after the Training's own deletion, a read each in a clean-up of thousands; otherwise when the
    view differs from the status the Training's watch last showed."""
    if runtime.view.finished(key):
        return _NOT_BEHIND
    training = runtime.view.training(key)
    if training is None:  # not seen yet: read it (sync_status), except at the first listing or as it goes
        return type is not None and not going, False
    if not (training.get("status") or {}).get("jobName"):
        return _NOT_BEHIND  # ignored until the status names the Job; the Training's event for that write checks
    return _behind(runtime, key, training, finished_job, no_job=True)


DEFER_LIMIT = 30.0
"""Seconds the longest an informational status write waits while new Trainings wait for their Jobs."""


def _follow(runtime: Runtime, key: Key, behind: Behind, finished_job: Mapping[str, Any] | None = None) -> None:
    """Write the status the view calls for, or hold an informational write while Trainings wait for their
    first handling: in a burst the Jobs are made first (each write is a request the API server serves
    before the next Job, and an event the operator handles), and a held write is made once, with what the
    view shows by then. Written when no Training waits (`_release`), or after `DEFER_LIMIT` at the latest."""
    wanted, may_wait = behind
    if not wanted:
        return
    if may_wait and runtime.view.handling():
        runtime.deferred.hold(key, asyncio.get_running_loop().time())
        return
    runtime.deferred.drop(key)
    _dispatch(runtime, key, finished_job)


def _release(runtime: Runtime, everything: bool) -> None:
    """The held writes that are due (all of them once no Training waits for its first handling)."""
    if len(runtime.deferred):
        for key in runtime.deferred.due(asyncio.get_running_loop().time(), DEFER_LIMIT, everything):
            _dispatch(runtime, key)
    held = runtime.held_events
    while held and (everything or time.monotonic() - held[0][0] >= DEFER_LIMIT):
        _, reference, message = held.popleft()
        kopf.info(cast(kopf.Body, reference), reason=Reason.JOB_CREATED, message=message)


@kopf.on.event("batch", "v1", "jobs", labels=MANAGED)
async def job_event(body: kopf.Body, type: str | None, memo: Any, **_: Any) -> None:  # noqa: A002
    """The view follows the Job; the status follows the view when they differ (async: in the event loop)."""
    runtime = _runtime(memo)
    key = runtime.view.child_seen("jobs", type, body)
    finished_job = _deleted_finished_job(body, type)
    _follow(runtime, key, _child_behind(runtime, key, type, finished_job, _going(body, type)), finished_job)


@kopf.on.event("", "v1", "pods", labels=MANAGED)
async def pod_event(body: kopf.Body, type: str | None, memo: Any, **_: Any) -> None:  # noqa: A002
    """The view follows the Pod; the status follows the view when they differ (async: in the event loop)."""
    runtime = _runtime(memo)
    key = runtime.view.child_seen("pods", type, body)
    _follow(runtime, key, _child_behind(runtime, key, type, None, _going(body, type)))


# --- a Job that cannot make its Pod ------------------------------------------------------------


def _waiting_for_pod(status: Mapping[str, Any], **_: Any) -> bool:
    """Pending with a Job but no Pod yet: the only state in which the Job's Events are read."""
    reconciling: Mapping[str, Any] = next(
        (c for c in status.get("conditions") or [] if c.get("type") == "Reconciling"), {})
    return bool(status.get("phase") == api.Phase.PENDING.value and status.get("jobName")
                and reconciling.get("reason") in (Reason.JOB_CREATED, Reason.JOB_ADOPTED, Reason.POD_REFUSED))


REFUSAL_INTERVAL = 30.0  # seconds between two reads of a waiting Job's Events


@kopf.on.startup()
async def watch_refusals(memo: kopf.Memo, **_: Any) -> None:
    """Start the checks for refused Pods: one task for the whole operator, not a kopf timer per Training
    (kopf puts a finalizer on every object a timer may run for, two PATCHes per Training, often refused);
    and the webhook deliveries (`notifier`), one task and a few threads of their own."""
    runtime = _runtime(memo)
    runtime.refusals = asyncio.create_task(_refusal_checks(runtime), name="refused Pods")
    runtime.notifier = Notifier(runtime.settings, runtime.api_client, request_timeout=runtime.request_timeout)
    runtime.notifications = asyncio.create_task(runtime.notifier.run(), name="webhook deliveries")


@kopf.on.cleanup()
async def stop_background(memo: kopf.Memo, **_: Any) -> None:
    """Stop the checks for refused Pods, the progress reads, the webhook deliveries and the status writers' threads."""
    runtime = _runtime(memo)
    for task in (runtime.refusals, runtime.progress, runtime.notifications):
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    if runtime.notifier is not None:
        runtime.notifier.stop()
    if runtime.executor is not None:
        runtime.executor.shutdown(wait=False, cancel_futures=True)


async def _refusal_checks(runtime: Runtime) -> None:
    """Every few seconds, the Trainings that wait for their Job's Pod (as the view shows them) are looked at:
    each first after `pod_refusal_check_seconds`, then every 30 s while it waits."""
    delay = runtime.settings.pod_refusal_check_seconds
    schedule = Schedule(delay, REFUSAL_INTERVAL)
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(min(delay, 5.0))
        _release(runtime, everything=not runtime.view.handling())
        waiting = [key for key, training in runtime.view.active()
                   if _waiting_for_pod(training.get("status") or {}) and not runtime.view.children(key)[1]]
        for namespace, name in schedule.due(loop.time(), waiting):
            try:
                await loop.run_in_executor(runtime.executor, pod_refused, runtime, namespace, name)
            except (ApiException, urllib3.exceptions.HTTPError, OSError) as error:
                LOGGER.warning("reading the Events of Training %s/%s's Job failed: %s", namespace, name, error)


def pod_refused(runtime: Runtime, namespace: str, name: str) -> None:
    """The API server may refuse the Job's Pod (a ResourceQuota, Pod Security, a policy engine): the Job
    controller then only posts FailedCreate Events on the Job, and no Pod event ever comes. Only while a
    Training waits for its Pod, its Job's Events are read and the refusal goes into the status."""
    training: dict[str, Any] = cast(dict[str, Any], runtime.custom.get_namespaced_custom_object(
        *TRAININGS[:2], namespace, TRAININGS[2], name, _request_timeout=runtime.request_timeout))
    status = training.get("status") or {}
    if not _waiting_for_pod(status):
        return
    events = runtime.core.list_namespaced_event(
        namespace,
        field_selector=f"involvedObject.kind=Job,involvedObject.name={status['jobName']},reason=FailedCreate",
        _request_timeout=runtime.request_timeout,
    ).items
    if not events:
        return
    newest = max(events, key=lambda e: str(e.last_timestamp or e.event_time or e.metadata.creation_timestamp or ""))
    message = f"the Job cannot create the training Pod: {newest.message or 'FailedCreate'}"
    meta = training["metadata"]
    update = status_patch(api.Phase.PENDING, Reason.POD_REFUSED, message, meta.get("generation"),
                          status.get("conditions") or [], runtime.now())
    if [(c["type"], c["reason"], c["message"]) for c in update["conditions"]] == [
            (c.get("type"), c.get("reason"), c.get("message")) for c in status.get("conditions") or []]:
        return
    body = {"metadata": {"resourceVersion": meta.get("resourceVersion")}, "status": update}
    try:  # conditional: a Pod event that wrote a newer status in between wins
        runtime.custom.patch_namespaced_custom_object_status(
            *TRAININGS[:2], namespace, TRAININGS[2], name, body, _request_timeout=runtime.request_timeout)
    except ApiException as error:
        if error.status != 409:
            raise


# --- progress from the driver's log ------------------------------------------------------------

PROGRESS_TAIL_LINES = 200  # the driver prints a record at least every 100 lines (16 KiB) of the model's log
PROGRESS_TAIL_BYTES = 64 * 1024
PROGRESS_READ_TIMEOUT = 5.0
PROGRESS_WORKERS = 2


@kopf.on.startup()
async def watch_progress(memo: kopf.Memo, **_: Any) -> None:
    """Start the progress reads: one task for the whole operator, no stream or timer per Training."""
    runtime = _runtime(memo)
    runtime.progress = asyncio.create_task(_progress_reads(runtime), name="progress")


def _running(runtime: Runtime) -> dict[Key, str]:
    """The Running Trainings (as the view shows them) and the Pod of each whose driver runs."""
    found = {}
    for key, training in runtime.view.active():
        if (training.get("status") or {}).get("phase") != api.Phase.RUNNING.value:
            continue
        jobs, pods = runtime.view.children(key)
        job = next((j for j in jobs if _owned_by(j, (training.get("metadata") or {}).get("uid"))), None)
        uid = ((job or {}).get("metadata") or {}).get("uid")
        pod = running_pod(p for p in pods if _owned_by(p, uid))
        if pod is not None:
            found[key] = pod
    return found


async def _progress_reads(runtime: Runtime) -> None:
    """Every second, the running Trainings that are due (`Pacer`: each every progress_interval_seconds, at most
    progress_reads_per_second in all) have the tail of their driver's log read, a few at a time."""
    pacer = Pacer(runtime.settings.progress_interval_seconds, runtime.settings.progress_reads_per_second)
    loop = asyncio.get_running_loop()
    # Threads of their own: a slow kubelet relaying a log never holds up the status writers' threads.
    threads = concurrent.futures.ThreadPoolExecutor(PROGRESS_WORKERS, thread_name_prefix="cogtrain-progress")
    try:
        while True:
            await asyncio.sleep(1.0)
            running = _running(runtime)
            due = pacer.due(loop.time(), running)
            reads = [loop.run_in_executor(threads, read_progress, runtime, key, running[key]) for key in due]
            for key, outcome in zip(due, await asyncio.gather(*reads, return_exceptions=True), strict=True):
                if isinstance(outcome, BaseException):
                    LOGGER.warning("reading the progress of Training %s/%s failed: %s", key[0], key[1], outcome)
                else:
                    pacer.spend(outcome[1] - 1)  # a second read of a cut tail is within the cap too
    finally:
        threads.shutdown(wait=False, cancel_futures=True)


def _driver_log(runtime: Runtime, namespace: str, pod: str, lines: int) -> tuple[str, bool]:
    """The tail of the driver container's log (bounded), and whether the byte limit cut it."""
    response: Any = runtime.core.read_namespaced_pod_log(
        pod, namespace, container=DRIVER_CONTAINER, tail_lines=lines, limit_bytes=PROGRESS_TAIL_BYTES,
        _preload_content=False, _request_timeout=PROGRESS_READ_TIMEOUT)
    try:
        data: bytes = response.read(PROGRESS_TAIL_BYTES + 1)
    finally:
        response.release_conn()
    return data.decode(errors="replace"), len(data) >= PROGRESS_TAIL_BYTES


def read_progress(runtime: Runtime, key: Key, pod: str) -> tuple[Record | None, int]:
    """The last progress record in the Pod's driver log, written into the status of the Training that owns the
    Pod when it differs from what the status shows; nothing else is written, and a record that is not valid is
    ignored. The byte limit keeps the beginning of the tail: a tail it cut with no record in it (long lines) is
    read again, as many lines as half of what fitted. With the record, how many reads of the log it took."""
    namespace, name = key
    reads = 1
    try:
        text, cut = _driver_log(runtime, namespace, pod, PROGRESS_TAIL_LINES)
        record = last_record(text)
        if record is None and cut:
            reads += 1
            record = last_record(_driver_log(runtime, namespace, pod, max(2, text.count("\n") // 2))[0])
    except ApiException as error:
        if error.status in (400, 404):  # the container is gone or not started: nothing to read
            return None, reads
        raise
    if record is None:
        return None, reads
    if record.progress is not None and record.progress.percent is not None:
        metrics.PROGRESS.set(namespace, name, record.progress.percent)
    training = runtime.view.training(key)
    status = (training or {}).get("status") or {}
    fields = record.status()
    patch = merge_patch({field: status.get(field) for field in fields}, fields)  # the record's fields, as they are
    if training is None or status.get("phase") != api.Phase.RUNNING.value or not patch:
        return record, reads
    body = {"metadata": {"resourceVersion": training["metadata"].get("resourceVersion")}, "status": patch}
    try:  # conditional: a status written meanwhile (the Training's end, say) wins; the next read tries again
        runtime.custom.patch_namespaced_custom_object_status(
            *TRAININGS[:2], namespace, TRAININGS[2], name, body, _request_timeout=runtime.request_timeout)
    except ApiException as error:
        if error.status not in (404, 409):
            raise
    return record, reads


# --- admission and metrics ----------------------------------------------------------------------


@kopf.on.validate(*TRAININGS, id=webhook.WEBHOOK_PATH, operations=["CREATE", "UPDATE"])
def admit(
    body: kopf.Body, warnings: list[str], memo: kopf.Memo,
    old: kopf.Body | None = None, operation: str | None = None, userinfo: Mapping[str, Any] | None = None, **_: Any,
) -> None:
    """The validating webhook: bad Trainings are refused at `kubectl apply`, not on a GPU node."""
    runtime = _runtime(memo)
    started = time.perf_counter()
    if operation == "UPDATE" and old is not None:
        decision = admission.review_update(old, body)
    else:
        spec = body.get("spec") or {}
        namespace = body.get("metadata", {}).get("namespace") or "default"
        # Permissions first: no Secret the creator may not read is used, even to read the model's schema.
        refused = access.check(runtime.api_client, userinfo, namespace, spec if isinstance(spec, dict) else {})
        if refused:
            decision = admission.deny_access(body, refused)
        else:
            secrets = tuple(str(s.get("name")) for s in spec.get("imagePullSecrets") or [] if isinstance(s, dict))
            resolve = runtime.lookups.for_training(namespace, secrets, spec.get("serviceAccountName") or "default")
            policy = runtime.webhook_config.failure_policy if runtime.webhook_config else "Ignore"
            decision = admission.review_create(body, resolve, policy, runtime.settings)
    metrics.ADMISSIONS.labels(operation or "", decision.decision).inc()
    metrics.ADMISSION_LATENCY.labels(operation or "").observe(time.perf_counter() - started)
    warnings.extend(decision.warnings)
    if not decision.allowed:
        raise kopf.AdmissionError(decision.message, code=422)


@kopf.on.event(*TRAININGS)
async def track(body: kopf.Body, type: str | None, uid: str | None, memo: Any, **_: Any) -> None:  # noqa: A002
    """The view follows the Training, and its status the view when the status is behind it; Trainings by
    phase, and their transitions, for the metrics endpoint (async: too small for a thread)."""
    runtime = _runtime(memo)
    key = runtime.view.training_seen(type, body)
    training = runtime.view.training(key)
    if training is not None:
        _follow(runtime, key, _training_behind(runtime, key, training))
    if not runtime.view.handling():
        _release(runtime, everything=True)
    if type == "DELETED" or (body.get("status") or {}).get("phase") in FINISHED:
        metrics.PROGRESS.forget(*key)
    if runtime.notifier is not None:
        runtime.notifier.offer(type, body)  # no I/O: due webhook events are queued for the delivery threads
    if uid is None:
        return
    if type == "DELETED":
        metrics.TRAININGS.forget(uid)
    else:
        metrics.TRAININGS.observe(uid, body)


def _training_behind(runtime: Runtime, key: Key, training: Mapping[str, Any]) -> Behind:
    """Whether the Training's status, as its watch shows it now, is behind the view of its Job and Pods:
    after the write of its jobName (events that came before it were ignored), or when an event of its Job
    or Pod was checked against an older status than the one written since."""
    status = training.get("status") or {}
    if status.get("phase") in FINISHED or not status.get("jobName"):
        return _NOT_BEHIND
    return _behind(runtime, key, training, None, no_job=False)
