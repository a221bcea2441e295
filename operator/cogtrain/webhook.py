"""The admission webhook's plumbing: its TLS files, kopf's HTTPS server, and schema lookups bounded in time.

Certificates come either from a folder (cert-manager's Secret mounted there; kopf reloads the
files when cert-manager renews them) or from a Secret the operator fills itself (`certs`), whose
CA it then writes into the ValidatingWebhookConfiguration's caBundle. The decisions themselves are
in `admission`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kopf
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from . import certs
from .admission import FailurePolicy, LookupTimeout
from .credentials import Keyring
from .pull_secrets import read_pull_secrets
from .reference import ReferenceError, parse_reference
from .resolver import ResolvedModel, SchemaResolver

WEBHOOK_PATH = "validate-training"  # kopf serves a handler at /<its id>; the chart's path must match


@dataclass(frozen=True)
class WebhookConfig:
    port: int = 9443
    addr: str = "0.0.0.0"
    service: str = "cog-training-operator-webhook"
    namespace: str = "default"
    cert_dir: Path | None = None  # cert-manager: tls.crt and tls.key there
    secret: str | None = None  # self-signed: kept in this Secret of `namespace`
    configuration: str | None = None  # the ValidatingWebhookConfiguration to put the CA into
    failure_policy: FailurePolicy = "Ignore"
    lookup_timeout: float = 3.0  # inside the configuration's timeoutSeconds (default 5)


async def _serve_nothing(fn: Any) -> AsyncIterator[Any]:
    """The admission "server" when the webhook is off: kopf needs one once a validate handler exists."""
    await asyncio.Event().wait()
    yield  # never reached: this only makes the function an async generator


def tls_files(config: WebhookConfig, api_client: client.ApiClient, timeout: float = 30.0) -> tuple[Path, Path]:
    """The certificate and key files to serve with, made ready (and the caBundle set) for self-signed TLS."""
    if config.cert_dir is not None:
        return config.cert_dir / "tls.crt", config.cert_dir / "tls.key"
    if not config.secret:
        raise ValueError("the webhook needs --webhook-cert-dir (cert-manager) or --webhook-secret (self-signed)")
    names = certs.dns_names(config.service, config.namespace)
    bundle = certs.ensure_secret(client.CoreV1Api(api_client), config.namespace, config.secret, names, timeout)
    if config.configuration:
        certs.patch_ca_bundle(client.AdmissionregistrationV1Api(api_client), config.configuration, bundle.ca, timeout)
    return bundle.write(Path(tempfile.mkdtemp(prefix="cogtrain-webhook-")))


def server(config: WebhookConfig | None, api_client: client.ApiClient) -> Any:
    """What goes into kopf's settings.admission.server."""
    if config is None:
        return _serve_nothing
    certfile, keyfile = tls_files(config, api_client)
    return kopf.WebhookServer(
        addr=config.addr, port=config.port, certfile=str(certfile), pkeyfile=str(keyfile),
        host=f"{config.service}.{config.namespace}.svc",
    )


@dataclass
class BoundedLookup:
    """Schema lookups for admission: pull-secret keyrings cached briefly, and a hard time budget.

    A lookup that runs out of time keeps going in the background (until the resolver's own
    deadline) and fills the resolver's cache, so the next review of the same model is fast. Reviews
    asking for a lookup already in flight wait for it rather than start another, and at most
    `max_per_registry` of the pool's threads look up one registry host at a time: a slow registry
    cannot take the pool from the others' reviews (a review that finds its host's share taken waits
    for it within its budget, then is unchecked like any lookup that runs out of time).
    """

    resolver: SchemaResolver
    core: Callable[[], client.CoreV1Api]
    timeout: float = 3.0
    keyring_ttl: float = 30.0
    max_per_registry: int = 3
    _pool: concurrent.futures.ThreadPoolExecutor = field(
        default_factory=lambda: concurrent.futures.ThreadPoolExecutor(8, thread_name_prefix="admission-lookup")
    )
    _keyrings: dict[tuple[str, tuple[str, ...], str], tuple[float, Keyring]] = field(default_factory=dict)
    _inflight: dict[tuple[str, str, tuple[str, ...], str], concurrent.futures.Future[ResolvedModel]] = field(
        default_factory=dict)
    _per_host: dict[str, int] = field(default_factory=dict)
    _slots: threading.Condition = field(default_factory=threading.Condition)

    def _keyring(self, namespace: str, secrets: tuple[str, ...], account: str) -> Keyring:
        key = (namespace, secrets, account)
        cached = self._keyrings.get(key)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        keyring, _notes = read_pull_secrets(self.core(), namespace, secrets, account, self.timeout)
        if len(self._keyrings) > 1024:
            self._keyrings.clear()
        self._keyrings[key] = (time.monotonic() + self.keyring_ttl, keyring)
        return keyring

    def _start(self, image: str, namespace: str, secrets: tuple[str, ...], account: str,
               deadline: float) -> concurrent.futures.Future[ResolvedModel]:
        """The lookup of `image` for this namespace: the one in flight, or a new one once its host has a thread."""
        key = (image, namespace, secrets, account)
        try:
            host = parse_reference(image).api_host
        except ReferenceError:
            host = ""  # the resolver says why, at once
        with self._slots:
            while True:
                running = self._inflight.get(key)
                if running is not None:
                    return running
                if self._per_host.get(host, 0) < self.max_per_registry:
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    raise LookupTimeout(f"no answer within {self.timeout:g} s (earlier lookups at {host} "
                                        "have not finished)")
                self._slots.wait(left)
            self._per_host[host] = self._per_host.get(host, 0) + 1

            def lookup() -> ResolvedModel:
                return self.resolver.resolve(image, self._keyring(namespace, secrets, account))

            def done(_: concurrent.futures.Future[ResolvedModel]) -> None:
                with self._slots:
                    self._inflight.pop(key, None)
                    self._per_host[host] -= 1
                    if not self._per_host[host]:
                        del self._per_host[host]
                    self._slots.notify_all()

            future = self._pool.submit(lookup)
            self._inflight[key] = future
        future.add_done_callback(done)
        return future

    def for_training(self, namespace: str, secrets: tuple[str, ...], account: str) -> Callable[[str], ResolvedModel]:
        deadline = time.monotonic() + self.timeout

        def resolve(image: str) -> ResolvedModel:
            future = self._start(image, namespace, secrets, account, deadline)
            try:
                return future.result(timeout=max(0.0, deadline - time.monotonic()))
            except concurrent.futures.TimeoutError:
                raise LookupTimeout(f"no answer within {self.timeout:g} s") from None
            except ApiException as error:
                raise LookupTimeout(f"cannot read the pull secrets: HTTP {error.status}") from None

        return resolve
