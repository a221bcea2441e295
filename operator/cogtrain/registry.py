"""Read an image's manifest and config from any OCI / Docker v2 registry.

Only what is needed to learn a Cog model's schema: the manifest (an index or manifest list is
narrowed to one platform), then the config blob, whose labels carry the schema. Every body is
checked against its digest. Authentication follows the registry's `WWW-Authenticate`
challenge: Bearer (the token flow of Docker Hub, GHCR, GCR, Harbor, Replicate…) or Basic,
with the credentials the keyring offers, anonymously when it offers none.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import threading
import time
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import requests

from .contract import Reason
from .credentials import Credential
from .reference import ImageReference

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
_MANIFESTS = (DOCKER_MANIFEST, OCI_MANIFEST)
_INDEXES = (DOCKER_LIST, OCI_INDEX)
ACCEPT = ", ".join((OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST))

MAX_MANIFEST_BYTES = 4 * 1024 * 1024
MAX_CONFIG_BYTES = 32 * 1024 * 1024


class RegistryErrorKind(StrEnum):
    """Why an image could not be used; the value is the contract's reason written to status conditions."""

    INVALID_REFERENCE = Reason.INVALID_IMAGE_REFERENCE.value
    IMAGE_NOT_FOUND = Reason.IMAGE_NOT_FOUND.value
    TAG_NOT_FOUND = Reason.TAG_NOT_FOUND.value
    UNAUTHORIZED = Reason.UNAUTHORIZED.value
    UNAVAILABLE = Reason.REGISTRY_UNAVAILABLE.value
    BAD_RESPONSE = Reason.REGISTRY_BAD_RESPONSE.value
    DIGEST_MISMATCH = Reason.DIGEST_MISMATCH.value
    NO_PLATFORM = Reason.NO_MATCHING_PLATFORM.value
    NOT_COG = Reason.NOT_A_COG_IMAGE.value
    NO_TRAINING = Reason.NO_TRAINING_INTERFACE.value
    MALFORMED_SCHEMA = Reason.MALFORMED_SCHEMA.value


class RegistryError(Exception):
    """A failure to learn an image's schema; `retryable` says whether trying later may help."""

    def __init__(self, kind: RegistryErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message

    @property
    def retryable(self) -> bool:
        return self.kind is RegistryErrorKind.UNAVAILABLE


INSECURE_ENV = "COGTRAIN_INSECURE_REGISTRIES"


def insecure_registries_from_env(environ: Mapping[str, str]) -> list[str]:
    """HOST[:PORT] entries of COGTRAIN_INSECURE_REGISTRIES (comma-separated) to reach over plain HTTP."""
    return [entry.strip() for entry in environ.get(INSECURE_ENV, "").split(",") if entry.strip()]


@dataclass(frozen=True)
class ImageConfig:
    """What the registry says about one image: its pinned digest and its config's labels."""

    reference: ImageReference
    digest: str
    config: Mapping[str, Any] = field(repr=False)

    @property
    def labels(self) -> Mapping[str, str]:
        labels = (self.config.get("config") or {}).get("Labels") or {}
        return labels if isinstance(labels, Mapping) else {}


@dataclass(frozen=True)
class _Challenge:
    scheme: str  # "bearer" or "basic"
    params: Mapping[str, str]


def parse_challenge(header: str) -> _Challenge | None:
    """Parse `Bearer realm="…",service="…",scope="…"` (or Basic) from WWW-Authenticate."""
    scheme, _, rest = header.strip().partition(" ")
    params: dict[str, str] = {}
    i = 0
    while i < len(rest):
        while i < len(rest) and rest[i] in " ,":
            i += 1
        eq = rest.find("=", i)
        if eq < 0:
            break
        key = rest[i:eq].strip().lower()
        i = eq + 1
        if i < len(rest) and rest[i] == '"':
            end = i + 1
            value = []
            while end < len(rest) and rest[end] != '"':
                if rest[end] == "\\" and end + 1 < len(rest):
                    end += 1
                value.append(rest[end])
                end += 1
            params[key] = "".join(value)
            i = end + 1
        else:
            end = rest.find(",", i)
            end = len(rest) if end < 0 else end
            params[key] = rest[i:end].strip()
            i = end
    if scheme.lower() not in ("bearer", "basic"):
        return None
    return _Challenge(scheme.lower(), params)


def _digest_of(algorithm: str, body: bytes) -> str:
    return f"{algorithm}:{hashlib.new(algorithm, body).hexdigest()}"


def _verify(expected: str, body: bytes, what: str) -> None:
    algorithm = expected.split(":", 1)[0]
    if algorithm not in ("sha256", "sha512"):
        raise RegistryError(RegistryErrorKind.BAD_RESPONSE, f"{what}: unsupported digest algorithm {algorithm!r}")
    actual = _digest_of(algorithm, body)
    if actual != expected:
        raise RegistryError(
            RegistryErrorKind.DIGEST_MISMATCH,
            f"{what}: content does not match its digest (expected {expected}, got {actual}); "
            "the registry or something between may have altered it",
        )


class RegistryClient:
    """A small, thread-safe registry client; one per process is enough.

    It remembers each registry's auth challenge and the tokens it was given (per credential),
    so a cold lookup costs only token + manifest + config round trips.
    """

    def __init__(
        self,
        insecure_registries: Iterable[str] = (),
        timeout: float = 10.0,
        platform: str = "linux/amd64",
        session: requests.Session | None = None,
    ) -> None:
        self.insecure = {entry.strip().lower() for entry in insecure_registries if entry.strip()}
        self.timeout = timeout
        self.os, _, self.architecture = platform.partition("/")
        self.session = session or requests.Session()
        self._challenges: dict[str, _Challenge | None] = {}
        self._tokens: dict[tuple[str, str, str], tuple[str, float]] = {}
        self._lock = threading.Lock()
        self._round_trips = itertools.count()
        self.round_trips = 0

    # --- HTTP ------------------------------------------------------------------------------

    def scheme_for(self, reference: ImageReference) -> str:
        """Plain HTTP for loopback registries and those listed as insecure, as Docker does."""
        host = reference.registry.lower()
        if reference.is_loopback or host in self.insecure or reference.hostname.lower() in self.insecure:
            return "http"
        return "https"

    def _send(self, method: str, url: str, what: str, **kwargs: Any) -> requests.Response:
        self.round_trips = next(self._round_trips) + 1
        try:
            response = self.session.request(method, url, timeout=self.timeout, stream=True, **kwargs)
        except requests.Timeout:
            raise RegistryError(
                RegistryErrorKind.UNAVAILABLE, f"{what}: the registry did not answer within {self.timeout:g}s"
            ) from None
        except requests.ConnectionError as error:
            raise RegistryError(
                RegistryErrorKind.UNAVAILABLE, f"{what}: cannot reach the registry ({_reason(error)})"
            ) from None
        except requests.RequestException as error:
            raise RegistryError(RegistryErrorKind.UNAVAILABLE, f"{what}: {_reason(error)}") from None
        if response.status_code >= 500 or response.status_code == 429:
            response.close()
            raise RegistryError(
                RegistryErrorKind.UNAVAILABLE,
                f"{what}: the registry answered HTTP {response.status_code}; try again later",
            )
        return response

    def _read(self, response: requests.Response, limit: int, what: str) -> bytes:
        chunks = []
        size = 0
        try:
            for chunk in response.iter_content(64 * 1024):
                size += len(chunk)
                if size > limit:
                    raise RegistryError(RegistryErrorKind.BAD_RESPONSE, f"{what}: larger than {limit // 2**20} MiB")
                chunks.append(chunk)
        except requests.RequestException as error:
            raise RegistryError(RegistryErrorKind.UNAVAILABLE, f"{what}: transfer failed ({_reason(error)})") from None
        finally:
            response.close()
        return b"".join(chunks)

    def _token(self, reference: ImageReference, challenge: _Challenge, credential: Credential | None,
               what: str) -> str | None:
        """A Bearer token for pulling the repository, or None when the credential is refused."""
        scope = f"repository:{reference.repository}:pull"
        key = (reference.api_host, scope, credential.fingerprint() if credential else "")
        now = time.monotonic()
        with self._lock:
            cached = self._tokens.get(key)
        if cached and cached[1] > now:
            return cached[0]
        realm = challenge.params.get("realm")
        if not realm:
            raise RegistryError(RegistryErrorKind.BAD_RESPONSE, f"{what}: the registry's Bearer challenge has no realm")
        query = {"scope": scope}
        if "service" in challenge.params:
            query["service"] = challenge.params["service"]
        auth = (credential.username, credential.password) if credential else None
        response = self._send("GET", realm, f"{what} (token from {urllib.parse.urlsplit(realm).netloc})",
                              params=query, auth=auth)
        if response.status_code in (401, 403):
            response.close()
            return None
        body = self._read(response, MAX_MANIFEST_BYTES, f"{what} (token)")
        if response.status_code != 200:
            raise RegistryError(RegistryErrorKind.BAD_RESPONSE,
                                f"{what}: the token service answered HTTP {response.status_code}")
        try:
            data = json.loads(body)
            token = data.get("token") or data.get("access_token")
            lifetime = float(data.get("expires_in") or 60)
        except (ValueError, AttributeError, TypeError):
            token, lifetime = None, 0.0
        if not isinstance(token, str) or not token:
            raise RegistryError(RegistryErrorKind.BAD_RESPONSE, f"{what}: the token service gave no token")
        with self._lock:
            self._tokens[key] = (token, now + max(lifetime - 10, 1))
        return token

    def _authorized_get(self, reference: ImageReference, path: str, credentials: list[Credential],
                        what: str, method: str = "GET", headers: Mapping[str, str] | None = None,
                        ) -> requests.Response:
        """Send a request, answering the registry's auth challenge with each credential in turn."""
        url = f"{self.scheme_for(reference)}://{reference.api_host}{path}"
        candidates: list[Credential | None] = list(credentials) or [None]
        host = reference.api_host
        for credential in candidates:
            for _ in range(2):  # once with what we know of the challenge, once after learning it
                with self._lock:
                    challenge = self._challenges.get(host)
                request_headers = dict(headers or {})
                if challenge is not None and challenge.scheme == "bearer":
                    token = self._token(reference, challenge, credential, what)
                    if token is None:
                        break  # this credential is refused; try the next
                    request_headers["Authorization"] = f"Bearer {token}"
                auth = (credential.username, credential.password) if (
                    credential and challenge is not None and challenge.scheme == "basic") else None
                response = self._send(method, url, what, headers=request_headers, auth=auth)
                if response.status_code not in (401, 403):
                    return response
                learned = parse_challenge(response.headers.get("WWW-Authenticate", ""))
                response.close()
                if learned is None or learned == challenge or (learned.scheme == "basic" and credential is None):
                    break
                with self._lock:
                    self._challenges[host] = learned
        raise RegistryError(RegistryErrorKind.UNAUTHORIZED, _unauthorized_message(reference, credentials))

    # --- manifests and config ----------------------------------------------------------------

    def _manifest(self, reference: ImageReference, ref: str, credentials: list[Credential], what: str,
                  method: str = "GET") -> tuple[bytes, str, str]:
        path = f"/v2/{reference.repository}/manifests/{ref}"
        response = self._authorized_get(reference, path, credentials, what, method=method,
                                        headers={"Accept": ACCEPT})
        if response.status_code == 404:
            raise self._not_found(reference, ref, credentials, self._read(response, 64 * 1024, what))
        if response.status_code != 200:
            response.close()
            raise RegistryError(RegistryErrorKind.BAD_RESPONSE,
                                f"{what}: the registry answered HTTP {response.status_code}")
        header_digest = response.headers.get("Docker-Content-Digest", "")
        media_type = response.headers.get("Content-Type", "").split(";")[0].strip()
        if method == "HEAD":
            response.close()
            if not header_digest:
                raise RegistryError(RegistryErrorKind.BAD_RESPONSE, f"{what}: no Docker-Content-Digest header")
            return b"", media_type, header_digest
        body = self._read(response, MAX_MANIFEST_BYTES, what)
        if ref.startswith(("sha256:", "sha512:")):
            _verify(ref, body, what)
            digest = ref
        else:
            digest = _digest_of("sha256", body)
            if header_digest:
                _verify(header_digest, body, what)
                digest = header_digest
        return body, media_type, digest

    def head_digest(self, reference: ImageReference, credentials: list[Credential]) -> str:
        """The digest a tag points at now, with one HEAD request (for re-checking a cached tag)."""
        ref = reference.digest or reference.tag or "latest"
        return self._manifest(reference, ref, credentials, f"image {reference}", method="HEAD")[2]

    def fetch_config(self, reference: ImageReference, credentials: list[Credential]) -> ImageConfig:
        """The image's digest (the index's, for multi-platform images) and its config."""
        what = f"image {reference}"
        ref = reference.digest or reference.tag or "latest"
        body, media_type, digest = self._manifest(reference, ref, credentials, what)
        manifest = _json(body, f"{what}: manifest")
        media_type = manifest.get("mediaType") or media_type
        if media_type in _INDEXES or ("manifests" in manifest and "config" not in manifest):
            child = self._pick_platform(manifest, what)
            child_body, _, _ = self._manifest(reference, child, credentials, f"{what} ({self.os}/{self.architecture})")
            manifest = _json(child_body, f"{what}: platform manifest")
        elif media_type not in _MANIFESTS and "config" not in manifest:
            raise RegistryError(RegistryErrorKind.BAD_RESPONSE, f"{what}: unsupported manifest type {media_type!r}")
        descriptor = manifest.get("config")
        if not isinstance(descriptor, Mapping) or not isinstance(descriptor.get("digest"), str):
            raise RegistryError(RegistryErrorKind.BAD_RESPONSE, f"{what}: the manifest has no config descriptor")
        config_digest = descriptor["digest"]
        path = f"/v2/{reference.repository}/blobs/{config_digest}"
        response = self._authorized_get(reference, path, credentials, f"{what}: config")
        if response.status_code != 200:
            response.close()
            raise RegistryError(RegistryErrorKind.BAD_RESPONSE,
                                f"{what}: config blob {config_digest} answered HTTP {response.status_code}")
        config_body = self._read(response, MAX_CONFIG_BYTES, f"{what}: config")
        _verify(config_digest, config_body, f"{what}: config blob")
        return ImageConfig(reference=reference, digest=digest, config=_json(config_body, f"{what}: config"))

    def _not_found(self, reference: ImageReference, ref: str, credentials: list[Credential],
                   body: bytes) -> RegistryError:
        """Tell a missing repository from a missing tag: registries say MANIFEST_UNKNOWN for both."""
        codes = _error_codes(body)
        tags: list[str] | None = None
        if "NAME_UNKNOWN" not in codes:
            path = f"/v2/{reference.repository}/tags/list?n=20"
            try:
                response = self._authorized_get(reference, path, credentials, f"image {reference}: tags")
                listing = self._read(response, MAX_MANIFEST_BYTES, f"image {reference}: tags")
                if response.status_code == 200:
                    found = _json(listing, "tags").get("tags")
                    tags = [t for t in found if isinstance(t, str)] if isinstance(found, list) else []
                else:
                    codes |= _error_codes(listing) or {"NAME_UNKNOWN"}
            except RegistryError:
                pass
        if "NAME_UNKNOWN" in codes:
            return RegistryError(RegistryErrorKind.IMAGE_NOT_FOUND,
                                 f"image {reference} not found: the registry has no repository {reference.repository}")
        if ref.startswith(("sha256:", "sha512:")):
            return RegistryError(RegistryErrorKind.IMAGE_NOT_FOUND,
                                 f"image {reference} not found: {reference.name} has no manifest {ref}")
        known = f" (its tags include: {', '.join(tags[:20])})" if tags else ""
        return RegistryError(RegistryErrorKind.TAG_NOT_FOUND,
                             f"image {reference} not found: {reference.name} has no tag {ref!r}{known}")

    def _pick_platform(self, index: Mapping[str, Any], what: str) -> str:
        found = []
        for entry in index.get("manifests") or []:
            platform = entry.get("platform") or {} if isinstance(entry, Mapping) else {}
            found.append(f"{platform.get('os', '?')}/{platform.get('architecture', '?')}")
            if platform.get("os") == self.os and platform.get("architecture") == self.architecture:
                digest = entry.get("digest")
                if isinstance(digest, str):
                    return digest
        raise RegistryError(
            RegistryErrorKind.NO_PLATFORM,
            f"{what} has no {self.os}/{self.architecture} variant (it has: {', '.join(found) or 'none'})",
        )


def _json(body: bytes, what: str) -> Mapping[str, Any]:
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise RegistryError(RegistryErrorKind.BAD_RESPONSE, f"{what} is not valid JSON") from None
    if not isinstance(data, Mapping):
        raise RegistryError(RegistryErrorKind.BAD_RESPONSE, f"{what} is not a JSON object")
    return data


def _reason(error: Exception) -> str:
    text = str(error)
    for marker in ("Failed to establish a new connection: ", "Caused by "):
        if marker in text:
            text = text.split(marker, 1)[1]
    return text.strip("()'\" ")[:200]


def _error_codes(body: bytes) -> set[str]:
    try:
        return {str(e.get("code")) for e in json.loads(body).get("errors", [])}
    except (ValueError, AttributeError, TypeError):
        return set()


def _unauthorized_message(reference: ImageReference, credentials: list[Credential]) -> str:
    if credentials:
        tried = ", ".join(dict.fromkeys(c.source for c in credentials))
        return (f"not authorized to pull {reference.name} with the credentials of {tried}; "
                "check that they are valid for this registry and grant pull access")
    return (f"not authorized to pull {reference.name} anonymously, or it does not exist; "
            f"add an imagePullSecret with credentials for {reference.registry}")
