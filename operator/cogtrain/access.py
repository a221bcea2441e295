"""Who may make a Training use what: creating a Training is creating a Pod.

A Training's Pod reads the Secrets its spec names (`secretInputs`, `destinationSecretRef`,
`inputSecretRef`, `imagePullSecrets`) and the claims its pvc:// inputs name, and runs under its
`serviceAccountName`; a model that echoes its input can publish a Secret or a file it was given.
So the admission webhook asks the API server, with a SubjectAccessReview for the requesting user,
whether that user may create Pods in the namespace, get each Secret the spec names and get each
PersistentVolumeClaim its inputs read; a Training whose creator could not do so directly is denied.
"""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from .contract import parse_storage_ref, storage_refs

MAX_CHECKS = 64  # SubjectAccessReviews per admission review, at most (each is one API call)


@dataclass(frozen=True)
class Need:
    """One permission the Training's creator must hold, and the spec field that asks for it."""

    field: str
    verb: str
    resource: str
    name: str | None = None


def needs(spec: Mapping[str, Any]) -> list[Need]:
    """The permissions a Training's spec asks of its creator (pure; duplicates of a Secret checked once)."""
    found = [Need("spec", "create", "pods")]
    seen: set[str] = set()

    def secret(field: str, name: Any) -> None:
        if isinstance(name, str) and name and name not in seen:
            seen.add(name)
            found.append(Need(field, "get", "secrets", name))

    for input_name, ref in sorted((spec.get("secretInputs") or {}).items()):
        secret(f"spec.secretInputs.{input_name}", (ref or {}).get("name") if isinstance(ref, Mapping) else None)
    destination = spec.get("destinationSecretRef")
    secret("spec.destinationSecretRef", destination.get("name") if isinstance(destination, Mapping) else None)
    for index, ref in enumerate(spec.get("imagePullSecrets") or []):
        secret(f"spec.imagePullSecrets[{index}]", ref.get("name") if isinstance(ref, Mapping) else None)
    signing = spec.get("webhookSecretRef")
    secret("spec.webhookSecretRef", signing.get("name") if isinstance(signing, Mapping) else None)
    reader = spec.get("inputSecretRef")
    secret("spec.inputSecretRef", reader.get("name") if isinstance(reader, Mapping) else None)
    claims: set[str] = set()
    values = spec.get("input")
    # Before the schema is read, so any input's pvc:// value counts (a string input's too): the
    # creator of a Training that may read a claim must be allowed to read it.
    for input_name, value in sorted(values.items() if isinstance(values, Mapping) else []):
        for ref in storage_refs(value):
            try:
                parsed = parse_storage_ref(ref)
            except ValueError:
                continue  # the validator names what is wrong with it
            if parsed.scheme == "pvc" and parsed.root not in claims:
                claims.add(parsed.root)
                found.append(Need(f"spec.input.{input_name}", "get", "persistentvolumeclaims", parsed.root))
    return found


def _strings(value: Any) -> list[str]:
    """A list of strings as the API server sends it (anything else is no value)."""
    return [str(v) for v in value] if isinstance(value, list) else []


def refusals(
    authorization: client.AuthorizationV1Api, userinfo: Mapping[str, Any], namespace: str, wanted: list[Need],
    deadline: float = 3.0,
) -> list[str]:
    """One problem per permission the user lacks; raises TimeoutError or ApiException when the API
    cannot answer all of them within `deadline` seconds (the reviews run at once, under one deadline,
    well inside the webhook's own timeout)."""
    if len(wanted) > MAX_CHECKS:
        return [f"spec: names {len(wanted) - 1} Secrets and claims; at most {MAX_CHECKS - 1} can be checked"]
    user = str(userinfo.get("username") or "")
    uid = str(userinfo.get("uid") or "") or None
    groups = _strings(userinfo.get("groups"))
    given = userinfo.get("extra")
    extra = {str(k): _strings(v) for k, v in given.items()} if isinstance(given, Mapping) else None

    def allowed(need: Need) -> bool:
        review = client.V1SubjectAccessReview(
            spec=client.V1SubjectAccessReviewSpec(
                user=user,
                uid=uid,
                groups=groups,
                extra=extra,
                resource_attributes=client.V1ResourceAttributes(
                    namespace=namespace, verb=need.verb, resource=need.resource, name=need.name
                ),
            )
        )
        answer = authorization.create_subject_access_review(review, _request_timeout=deadline)
        return bool(answer.status is not None and answer.status.allowed)

    pool = ThreadPoolExecutor(max_workers=min(8, len(wanted)), thread_name_prefix="access-review")
    try:
        futures = [pool.submit(allowed, need) for need in wanted]
        done, pending = wait(futures, timeout=deadline)
        if pending:
            raise TimeoutError(f"{len(pending)} of {len(futures)} access reviews unanswered after {deadline:g} s")
        answers = [future.result() for future in futures]
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    problems = []
    for need, ok in zip(wanted, answers, strict=True):
        if ok:
            continue
        if need.resource == "pods":
            problems.append(
                f"spec: {user} may not create Pods in namespace {namespace}, and a Training runs as a Pod; "
                "ask for the right to create Pods there"
            )
        elif need.resource == "persistentvolumeclaims":
            problems.append(
                f"{need.field}: {user} may not get the PersistentVolumeClaim {need.name} in namespace {namespace}; "
                "a Training can read files only from claims its creator may get"
            )
        else:
            problems.append(
                f"{need.field}: {user} may not read the Secret {need.name} in namespace {namespace}; "
                "a Training can use only Secrets its creator may read"
            )
    return problems


def check(
    api_client: client.ApiClient, userinfo: Mapping[str, Any] | None, namespace: str, spec: Mapping[str, Any],
) -> list[str]:
    """The access problems of a Training about to be created; none when no user is known (not a review)."""
    if not userinfo:
        return []
    try:
        return refusals(client.AuthorizationV1Api(api_client), userinfo, namespace, needs(spec))
    except Exception as error:  # noqa: BLE001  (fail closed: no answer is no permission)
        status = f"HTTP {error.status}" if isinstance(error, ApiException) else type(error).__name__
        return [f"spec: cannot check the creator's permissions now ({status}); try again"]
