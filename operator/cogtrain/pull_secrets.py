"""Read a Pod's image pull secrets from the API, as the kubelet would use them (for schema lookups)."""

from __future__ import annotations

from collections.abc import Iterable

from kubernetes.client import CoreV1Api
from kubernetes.client.exceptions import ApiException

from .credentials import Keyring, keyring_from_secrets


def read_pull_secrets(
    core: CoreV1Api, namespace: str, names: Iterable[str], service_account: str | None = "default",
    timeout: float = 30.0,
) -> tuple[Keyring, list[str]]:
    """The keyring of a Pod's pull secrets: those named, then its service account's, as the kubelet merges them.

    A Secret or service account that is missing or unreadable is noted, not fatal (the kubelet
    pulls without it too), with one message for both; other API errors propagate so the caller
    retries.
    """
    wanted = list(dict.fromkeys(names))
    notes: list[str] = []
    if service_account:
        try:
            account = core.read_namespaced_service_account(service_account, namespace, _request_timeout=timeout)
            wanted += [ref.name for ref in account.image_pull_secrets or [] if ref.name and ref.name not in wanted]
        except ApiException as error:
            if error.status not in (403, 404):
                raise
            notes.append(f'service account "{service_account}" could not be read')
    secrets = []
    for name in wanted:
        try:
            secret = core.read_namespaced_secret(name, namespace, _request_timeout=timeout)
            secrets.append(secret.to_dict(serialize=True))
        except ApiException as error:
            if error.status not in (403, 404):
                raise
            # One message for both: a status must not tell its reader whether a Secret exists.
            notes.append(f'secret "{name}" could not be read (it is missing, or the operator may not read it)')
    keyring, secret_notes = keyring_from_secrets(secrets)
    return keyring, notes + secret_notes
