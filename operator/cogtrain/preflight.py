"""What a Training's Pod will need that the API can tell is missing before its Job exists.

The Job controller cannot create a Pod whose ServiceAccount is missing, and the API server refuses
one whose PriorityClass is missing; either way the Job just sits there without a word in the
Training's status. Checked first, the Training stays Pending and says why (retried, so creating
the missing object lets it proceed).
"""

from __future__ import annotations

from kubernetes.client import CoreV1Api, SchedulingV1Api
from kubernetes.client.exceptions import ApiException

from .api import TrainingSpec
from .contract import Reason


def _exists(read: object, *args: str, timeout: float) -> bool:
    """Whether the object exists; a read the operator may not make (403) is not held against it."""
    try:
        read(*args, _request_timeout=timeout)  # type: ignore[operator]
    except ApiException as error:
        if error.status == 404:
            return False
        if error.status == 403:
            return True
        raise
    return True


def missing(
    core: CoreV1Api, scheduling: SchedulingV1Api, namespace: str, spec: TrainingSpec, timeout: float = 30.0
) -> tuple[Reason, str] | None:
    """The first thing the Training's Pod needs that does not exist, with a sentence naming it."""
    account = spec.service_account_name
    if account and not _exists(core.read_namespaced_service_account, account, namespace, timeout=timeout):
        return Reason.SERVICE_ACCOUNT_MISSING, (
            f"spec.serviceAccountName: the ServiceAccount {account} does not exist in namespace {namespace}; "
            "create it (the training waits for it) or name another"
        )
    priority = spec.priority_class_name
    if priority and not _exists(scheduling.read_priority_class, priority, timeout=timeout):
        return Reason.PRIORITY_CLASS_MISSING, (
            f"spec.priorityClassName: the PriorityClass {priority} does not exist; "
            "ask a cluster admin to create it (the training waits for it) or name another"
        )
    return None
