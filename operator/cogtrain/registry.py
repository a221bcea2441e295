"""Read an image's manifest and config from any OCI / Docker v2 registry.

Only what is needed to learn a Cog model's schema: the manifest (an index or manifest list is
narrowed to one platform), then the config blob, whose labels carry the schema. Every body is
checked against its digest. Authentication follows the registry's `WWW-Authenticate`
challenge: Bearer (the token flow of Docker Hub, GHCR, GCR, Harbor, Replicate…) or Basic,
with the credentials the keyring offers, anonymously when it offers none.

A registry is not trusted to be well behaved (docs/registry.md, "Limits against hostile
registries"): every request has one deadline for all of it (connect, TLS, headers, whole body),
enforced by a watchdog that shuts the socket down, every lookup has one deadline for all its
requests, every body and every JSON document has a size and shape bound, redirects are followed
by hand and bounded, and the token service is used only where the rules allow and its failures
all read the same.
"""

from __future__ import annotations

import hashlib
import heapq
import http.client
import http.cookiejar
import itertools
import json
import logging
import re
import socket
import threading
import time
import urllib.parse
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import requests
import requests.adapters
import urllib3
import urllib3.connection

from .contract import Reason
from .credentials import Credential
from .reference import ImageReference

log = logging.getLogger(__name__)

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
_MANIFESTS = (DOCKER_MANIFEST, OCI_MANIFEST)
_INDEXES = (DOCKER_LIST, OCI_INDEX)
ACCEPT = ", ".join((OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST))

# --- limits against hostile registries (docs/registry.md lists them) ------------------------------
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
"""A manifest or index (Docker's and containerd's own limit)."""
MAX_CONFIG_BYTES = 4 * 1024 * 1024
"""An image config: room for a schema label at its limit (1 MiB, JSON-escaped) and the rest of a config."""
MAX_TOKEN_BYTES = 64 * 1024
"""A token service's answer (tokens are a few kB)."""
MAX_ERROR_BYTES = 64 * 1024
"""An error body or a tag listing."""
MAX_JSON_VALUES = 100_000
"""JSON values (objects, arrays, scalars) in one manifest, index or config, counted before parsing."""
MAX_JSON_DEPTH = 32
"""Nesting of one manifest, index or config (real ones nest 4 or 5 levels)."""
MAX_INDEX_ENTRIES = 256
"""Manifests listed in one index (real ones list a few platforms and their attestations)."""
MAX_REDIRECTS = 5
"""Redirects followed for one request (blob storage redirects once)."""
MAX_CHALLENGE_CHARS = 4096
"""A WWW-Authenticate header that is read (real ones are a few hundred characters)."""
MAX_REGISTRIES_REMEMBERED = 1024
"""Registries whose auth challenge is remembered; the least recently learned is forgotten first."""
MAX_TOKENS_REMEMBERED = 1024
"""Bearer tokens kept until they expire; expired ones, then the oldest, leave first."""
MAX_TOKEN_LIFETIME = 3600.0
"""A token is reused for at most this long, whatever `expires_in` says."""
DEFAULT_LOOKUP_TIMEOUT = 30.0
"""All the requests of one lookup (challenge, token, manifests, config, redirects) together."""

TOKEN_FAILURE = ("the registry's token service could not be used; try again later, and if this persists "
                 "check the registry's authentication setup")
"""Every failure of a token request reads the same: the token service is wherever the registry
says, so what it answered must not be told apart in a Training's status."""
REDIRECT_FAILURE = "the location the registry redirected to could not be read; try again later"
"""Every failure at a redirect target on another host reads the same, for the same reason."""

_REDIRECTS = (301, 302, 303, 307, 308)
_DIGEST = re.compile(r"sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128}")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
# Linear on any input: once a string starts it always matches (an unclosed one runs to the end),
# so no `"` starts a second scan of the rest; json.loads still refuses a malformed body afterwards.
_JSON_STRING = re.compile(rb'"(?:[^"\\]+|\\.?)*"?', re.DOTALL)
_JSON_BRACKET = re.compile(rb"[\[\]{}]")


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
class Deadline:
    """A point in time (time.monotonic) by which a lookup must be done, and the budget it was given."""

    at: float
    budget: float

    @classmethod
    def after(cls, seconds: float) -> Deadline:
        return cls(time.monotonic() + seconds, seconds)

    def remaining(self) -> float:
        return self.at - time.monotonic()


@dataclass(frozen=True)
class ImageConfig:
    """What the registry says about one image: its pinned digest and its config's labels."""

    reference: ImageReference
    digest: str
    config: Mapping[str, Any] = field(repr=False)

    @property
    def labels(self) -> Mapping[str, str]:
        inner = self.config.get("config")
        labels = inner.get("Labels") if isinstance(inner, Mapping) else None
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


def clip(text: str, limit: int = 100) -> str:
    """A registry-chosen string as it may appear in a message: printable, one line, at most `limit` chars."""
    text = "".join(c if c.isprintable() else "?" for c in text[: limit + 1])
    return text if len(text) <= limit else text[: limit - 1] + "…"


def check_json_shape(body: bytes, what: str, max_values: int = MAX_JSON_VALUES, max_depth: int = MAX_JSON_DEPTH,
                     kind: RegistryErrorKind = RegistryErrorKind.BAD_RESPONSE) -> None:
    """Refuse a JSON text with more than `max_values` values or nested deeper than `max_depth`,
    counted without parsing it (strings skipped), so its parsed form never costs more than its bound.

    A value is an object, an array or a scalar; the count is an upper bound (`[]` counts 2), exact
    in what matters: N values cost at most N commas and brackets.
    """
    bare = _JSON_STRING.sub(b'""', body)
    values = bare.count(b",") + bare.count(b"[") + bare.count(b"{") + 1
    if values > max_values:
        raise RegistryError(kind, f"{what} has more than {max_values} JSON values, the most accepted")
    depth = 0
    for bracket in _JSON_BRACKET.findall(bare):
        depth += 1 if bracket in (b"[", b"{") else -1
        if depth > max_depth:
            raise RegistryError(kind, f"{what} is nested more than {max_depth} levels deep, the most accepted")


def bounded_json(body: bytes, what: str, max_values: int = MAX_JSON_VALUES, max_depth: int = MAX_JSON_DEPTH,
                 kind: RegistryErrorKind = RegistryErrorKind.BAD_RESPONSE) -> Any:
    """Parse JSON whose shape is checked first (check_json_shape)."""
    check_json_shape(body, what, max_values, max_depth, kind)
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        raise RegistryError(kind, f"{what} is not valid JSON") from None


def _digest_of(algorithm: str, body: bytes) -> str:
    return f"{algorithm}:{hashlib.new(algorithm, body).hexdigest()}"


def _verify(expected: str, body: bytes, what: str, reveal: bool = True) -> None:
    algorithm = expected.split(":", 1)[0]
    if algorithm not in ("sha256", "sha512"):
        raise RegistryError(RegistryErrorKind.BAD_RESPONSE,
                            f"{what}: unsupported digest algorithm {clip(algorithm, 20)!r}")
    if not _DIGEST.fullmatch(expected):
        raise RegistryError(RegistryErrorKind.BAD_RESPONSE, f"{what}: {clip(expected)!r} is not a digest")
    actual = _digest_of(algorithm, body)
    if actual != expected:
        got = f", got {actual}" if reveal else ""
        raise RegistryError(
            RegistryErrorKind.DIGEST_MISMATCH,
            f"{what}: content does not match its digest (expected {expected}{got}); "
            "the registry or something between may have altered it",
        )


# --- one deadline for a whole request ---------------------------------------------------------------
#
# requests' timeout is per socket operation: a server that sends a byte every few seconds never
# trips it. A request here gets a _Guard instead: the connections the request uses (a fresh one
# as soon as its TCP connection is up, before TLS; a kept-alive one when the request is sent)
# give the guard a duplicate of their socket's descriptor, and at the deadline the watchdog
# thread shuts that socket down, which ends any read or write blocked on it at once.


class _Guard:
    """The deadline of one request and the sockets it uses."""

    def __init__(self, at: float) -> None:
        self.at = at
        self.expired = False
        self.done = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()

    def watch(self, sock: Any) -> None:
        try:
            duplicate = socket.fromfd(sock.fileno(), sock.family, sock.type)
        except (OSError, ValueError, AttributeError):
            return
        with self._lock:
            if not self.done:
                self._sockets.append(duplicate)
                if self.expired:
                    _shut(duplicate)
                return
        duplicate.close()

    def expire(self) -> None:
        with self._lock:
            if self.done:
                return
            self.expired = True
            for sock in self._sockets:
                _shut(sock)

    def finish(self) -> None:
        with self._lock:
            self.done = True
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            sock.close()


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class _Watchdog:
    """One daemon thread that expires guards at their deadlines."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, _Guard]] = []
        self._order = itertools.count()
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None

    def add(self, guard: _Guard) -> None:
        with self._wake:
            heapq.heappush(self._heap, (guard.at, next(self._order), guard))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="registry-deadlines", daemon=True)
                self._thread.start()
            self._wake.notify()

    def _run(self) -> None:
        while True:
            with self._wake:
                while True:
                    while self._heap and self._heap[0][2].done:
                        heapq.heappop(self._heap)
                    if not self._heap:
                        self._wake.wait()
                        continue
                    delay = self._heap[0][0] - time.monotonic()
                    if delay <= 0:
                        guard = heapq.heappop(self._heap)[2]
                        break
                    self._wake.wait(delay)
            guard.expire()


_WATCHDOG = _Watchdog()
_current = threading.local()


def _watch(connection: Any, sock: Any) -> None:
    """Give the request running on this thread (if it is one of ours) the socket of `connection`."""
    guard: _Guard | None = getattr(_current, "guard", None)
    if guard is None or sock is None or getattr(connection, "_cogtrain_guard", None) is guard:
        return
    connection._cogtrain_guard = guard
    guard.watch(sock)


class _GuardedHTTPConnection(urllib3.connection.HTTPConnection):
    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        _watch(self, sock)  # before TLS: a trickled handshake is cut short too
        return sock

    def request(self, *args: Any, **kwargs: Any) -> None:
        _watch(self, self.sock)  # a kept-alive connection, reused by this request
        super().request(*args, **kwargs)


class _GuardedHTTPSConnection(urllib3.connection.HTTPSConnection):
    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        _watch(self, sock)
        return sock

    def request(self, *args: Any, **kwargs: Any) -> None:
        _watch(self, self.sock)
        super().request(*args, **kwargs)


class _GuardedHTTPPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _GuardedHTTPConnection


class _GuardedHTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _GuardedHTTPSConnection


_GUARDED_POOLS = {"http": _GuardedHTTPPool, "https": _GuardedHTTPSPool}


class _GuardedAdapter(requests.adapters.HTTPAdapter):
    """requests' adapter with connections that report their sockets to the current request's guard."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _GUARDED_POOLS

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if isinstance(manager, urllib3.ProxyManager):  # SOCKS proxies keep their own pools
            manager.pool_classes_by_scheme = _GUARDED_POOLS
        return manager


_TRANSPORT_ERRORS = (requests.RequestException, urllib3.exceptions.HTTPError, http.client.HTTPException,
                     OSError, ValueError)


class _Reply:
    """A response being received under its request's guard; read or close it exactly once."""

    def __init__(self, client: RegistryClient, response: requests.Response, guard: _Guard, what: str,
                 deadline: Deadline, generic: str | None) -> None:
        self.client = client
        self.response = response
        self.guard = guard
        self.what = what
        self.deadline = deadline
        self.generic = generic  # the one message for every failure of this request, when set
        self.status_code = response.status_code
        self.headers = response.headers
        self.url = response.url

    def close(self) -> None:
        self.guard.finish()
        self.response.close()

    def error(self, kind: RegistryErrorKind, message: str) -> RegistryError:
        """`message`, or the generic failure of this request when it has one."""
        if self.generic is not None:
            log.info("%s: %s", self.what, message)
            return RegistryError(RegistryErrorKind.UNAVAILABLE, f"{self.what}: {self.generic}")
        return RegistryError(kind, message)

    def read(self, limit: int, what: str) -> bytes:
        """The whole body, up to `limit` bytes, before the request's deadline."""
        too_large = f"{what}: larger than {_size(limit)}, the most accepted"
        chunks = []
        size = 0
        try:
            length = self.headers.get("Content-Length", "")
            if length.isdigit() and int(length) > limit:
                raise self.error(RegistryErrorKind.BAD_RESPONSE, too_large)
            for chunk in self.response.iter_content(64 * 1024):
                size += len(chunk)
                if size > limit:
                    raise self.error(RegistryErrorKind.BAD_RESPONSE, too_large)
                chunks.append(chunk)
            if self.guard.expired:  # a body without Content-Length simply stops when the socket is shut
                raise self.client._late(what, self.guard, self.deadline, self.generic)
        except _TRANSPORT_ERRORS as error:
            if self.guard.expired:
                raise self.client._late(what, self.guard, self.deadline, self.generic) from None
            raise self.error(RegistryErrorKind.UNAVAILABLE,
                             f"{what}: transfer failed ({_reason(error)})") from None
        finally:
            self.close()
        return b"".join(chunks)


def _size(limit: int) -> str:
    return f"{limit // 2**20} MiB" if limit >= 2**20 else f"{limit // 1024} KiB"


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urllib.parse.urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = -1
    return parts.scheme.lower(), (parts.hostname or "").lower(), port or (443 if parts.scheme == "https" else 80)


class RegistryClient:
    """A small, thread-safe registry client; one per process is enough.

    It remembers each registry's auth challenge and the tokens it was given (per credential),
    so a cold lookup costs only token + manifest + config round trips. `timeout` bounds each
    request as a whole (connect to last byte), `lookup_timeout` all the requests of one lookup.
    """

    def __init__(
        self,
        insecure_registries: Iterable[str] = (),
        timeout: float = 10.0,
        platform: str = "linux/amd64",
        session: requests.Session | None = None,
        lookup_timeout: float = DEFAULT_LOOKUP_TIMEOUT,
    ) -> None:
        self.insecure = {entry.strip().lower() for entry in insecure_registries if entry.strip()}
        self.timeout = timeout
        self.lookup_timeout = lookup_timeout
        self.os, _, self.architecture = platform.partition("/")
        self.session = session or requests.Session()
        adapter = _GuardedAdapter()
        self.session.mount("https://", adapter)
        self.session.mount("http://", adapter)
        self.session.cookies.set_policy(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))  # none kept
        self._challenges: OrderedDict[str, _Challenge | None] = OrderedDict()
        self._tokens: OrderedDict[tuple[str, str, str], tuple[str, float]] = OrderedDict()
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

    def _late(self, what: str, guard: _Guard, deadline: Deadline, generic: str | None = None) -> RegistryError:
        if generic is not None:
            return RegistryError(RegistryErrorKind.UNAVAILABLE, f"{what}: {generic}")
        if guard.at >= deadline.at:
            return RegistryError(
                RegistryErrorKind.UNAVAILABLE,
                f"{what}: the lookup did not finish within {deadline.budget:g}s (the registry answers too "
                "slowly); try again later",
            )
        return RegistryError(RegistryErrorKind.UNAVAILABLE,
                             f"{what}: the registry did not answer within {self.timeout:g}s")

    def _send(self, method: str, url: str, what: str, deadline: Deadline, *, generic: str | None = None,
              **kwargs: Any) -> _Reply:
        """One request, never redirected, under one deadline: its own timeout or the lookup's, the sooner."""
        self.round_trips = next(self._round_trips) + 1
        now = time.monotonic()
        guard = _Guard(min(now + self.timeout, deadline.at))
        remaining = guard.at - now
        if remaining <= 0:
            guard.finish()
            raise self._late(what, guard, deadline, generic)
        _WATCHDOG.add(guard)
        _current.guard = guard
        try:
            response = self.session.request(method, url, timeout=(remaining, remaining), stream=True,
                                            allow_redirects=False, **kwargs)
        except _TRANSPORT_ERRORS as error:
            guard.finish()
            if generic is not None:
                log.info("%s: %s (%s)", what, generic, _reason(error))
                raise RegistryError(RegistryErrorKind.UNAVAILABLE, f"{what}: {generic}") from None
            if guard.expired or isinstance(error, requests.Timeout):
                raise self._late(what, guard, deadline) from None
            if isinstance(error, requests.ConnectionError):
                raise RegistryError(
                    RegistryErrorKind.UNAVAILABLE, f"{what}: cannot reach the registry ({_reason(error)})"
                ) from None
            raise RegistryError(RegistryErrorKind.UNAVAILABLE, f"{what}: {_reason(error)}") from None
        finally:
            _current.guard = None
        reply = _Reply(self, response, guard, what, deadline, generic)
        if reply.status_code >= 500 or reply.status_code == 429:
            reply.close()
            raise reply.error(RegistryErrorKind.UNAVAILABLE,
                              f"{what}: the registry answered HTTP {reply.status_code}; try again later")
        return reply

    def _check_realm(self, reference: ImageReference, realm: str, what: str) -> None:
        """The token service must be https; plain http only on the registry's own host when the
        registry itself is reached over plain http (loopback or listed insecure)."""
        parts = urllib.parse.urlsplit(realm)
        try:
            host = (parts.hostname or "").lower()
        except ValueError:
            host = ""
        plain_registry = self.scheme_for(reference) == "http"
        allowed = bool(host) and not (parts.username or parts.password) and (
            parts.scheme == "https" or (parts.scheme == "http" and plain_registry
                                        and host == reference.hostname.lower().strip("[]")))
        if not allowed:
            rule = ("https, or plain http on the registry's own host" if plain_registry else "https")
            raise RegistryError(
                RegistryErrorKind.BAD_RESPONSE,
                f"{what}: the registry's Bearer challenge names the token service {clip(realm)!r}, which is not "
                f"used: a token service must be {rule}",
            )

    def _token(self, reference: ImageReference, challenge: _Challenge, credential: Credential | None,
               what: str, deadline: Deadline) -> str | None:
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
        self._check_realm(reference, realm, what)
        query = {"scope": scope}
        if "service" in challenge.params:
            query["service"] = challenge.params["service"]
        auth = (credential.username, credential.password) if credential else None
        reply = self._send("GET", realm, what, deadline, generic=TOKEN_FAILURE, params=query, auth=auth)
        if reply.status_code in (401, 403):
            reply.close()
            return None
        if reply.status_code != 200:
            reply.close()
            raise reply.error(RegistryErrorKind.UNAVAILABLE, f"the token service answered HTTP {reply.status_code}")
        body = reply.read(MAX_TOKEN_BYTES, f"{what} (token)")
        try:
            data = bounded_json(body, "token", max_values=1000)
            token = data.get("token") or data.get("access_token")
            lifetime = float(data.get("expires_in") or 60)
        except (RegistryError, ValueError, AttributeError, TypeError, OverflowError):
            token, lifetime = None, 0.0
        if not isinstance(token, str) or not token or not token.isascii() or not token.isprintable():
            raise reply.error(RegistryErrorKind.UNAVAILABLE, "the token service gave no usable token")
        lifetime = min(max(lifetime - 10, 1.0), MAX_TOKEN_LIFETIME) if lifetime == lifetime else 1.0
        with self._lock:
            self._tokens[key] = (token, now + lifetime)
            self._tokens.move_to_end(key)
            if len(self._tokens) > MAX_TOKENS_REMEMBERED:
                for stale in [k for k, (_, until) in self._tokens.items() if until <= now]:
                    del self._tokens[stale]
                while len(self._tokens) > MAX_TOKENS_REMEMBERED:
                    self._tokens.popitem(last=False)
        return token

    def _learn(self, host: str, challenge: _Challenge) -> None:
        with self._lock:
            self._challenges[host] = challenge
            self._challenges.move_to_end(host)
            while len(self._challenges) > MAX_REGISTRIES_REMEMBERED:
                self._challenges.popitem(last=False)

    def _authorized_get(self, reference: ImageReference, path: str, credentials: list[Credential],
                        what: str, deadline: Deadline, method: str = "GET",
                        headers: Mapping[str, str] | None = None,
                        ) -> tuple[_Reply, dict[str, str], tuple[str, str] | None]:
        """Send a request, answering the registry's auth challenge with each credential in turn.

        Returns the reply and the headers and Basic auth it was sent with (for a same-host redirect)."""
        url = f"{self.scheme_for(reference)}://{reference.api_host}{path}"
        candidates: list[Credential | None] = list(credentials) or [None]
        host = reference.api_host
        for credential in candidates:
            for _ in range(2):  # once with what we know of the challenge, once after learning it
                with self._lock:
                    challenge = self._challenges.get(host)
                request_headers = dict(headers or {})
                if challenge is not None and challenge.scheme == "bearer":
                    token = self._token(reference, challenge, credential, what, deadline)
                    if token is None:
                        break  # this credential is refused; try the next
                    request_headers["Authorization"] = f"Bearer {token}"
                auth = (credential.username, credential.password) if (
                    credential and challenge is not None and challenge.scheme == "basic") else None
                reply = self._send(method, url, what, deadline, headers=request_headers, auth=auth)
                if reply.status_code not in (401, 403):
                    return reply, request_headers, auth
                header = reply.headers.get("WWW-Authenticate", "")
                reply.close()
                if len(header) > MAX_CHALLENGE_CHARS:
                    raise RegistryError(
                        RegistryErrorKind.BAD_RESPONSE,
                        f"{what}: the registry's WWW-Authenticate header is longer than {MAX_CHALLENGE_CHARS} "
                        "characters, the most read",
                    )
                learned = parse_challenge(header)
                if learned is None or learned == challenge or (learned.scheme == "basic" and credential is None):
                    break
                self._learn(host, learned)
        raise RegistryError(RegistryErrorKind.UNAUTHORIZED, _unauthorized_message(reference, credentials))

    def _get(self, reference: ImageReference, path: str, credentials: list[Credential], what: str,
             deadline: Deadline, method: str = "GET", headers: Mapping[str, str] | None = None,
             off_origin: bool = True) -> _Reply:
        """`_authorized_get`, then its redirects: at most MAX_REDIRECTS, never from https to http, and
        credentials only to the registry's own origin; failures on another host all read the same.
        `off_origin=False` (manifests: registries redirect only blobs to storage) follows none elsewhere."""
        reply, sent_headers, auth = self._authorized_get(reference, path, credentials, what, deadline,
                                                         method=method, headers=headers)
        origin = _origin(reply.url)
        plain_registry = self.scheme_for(reference) == "http"
        hops = 0
        while reply.status_code in _REDIRECTS:
            location = reply.headers.get("Location", "")
            current = reply.url
            generic = reply.generic
            reply.close()
            hops += 1
            if hops > MAX_REDIRECTS:
                raise RegistryError(RegistryErrorKind.BAD_RESPONSE,
                                    f"{what}: more than {MAX_REDIRECTS} redirects, the most followed")
            target = urllib.parse.urljoin(current, location)
            scheme = urllib.parse.urlsplit(target).scheme.lower()
            if not location or scheme not in (("https", "http") if plain_registry else ("https",)):
                raise RegistryError(
                    RegistryErrorKind.BAD_RESPONSE,
                    f"{what}: the registry redirected to {clip(target)!r}, which is not followed "
                    f"(only {'http(s)' if plain_registry else 'https'} URLs are)",
                )
            same = _origin(target) == origin
            if not same and not off_origin:
                raise RegistryError(RegistryErrorKind.UNAVAILABLE, f"{what}: {REDIRECT_FAILURE}")
            hop_headers = dict(sent_headers) if same else {k: v for k, v in sent_headers.items()
                                                           if k.lower() != "authorization"}
            reply = self._send(method, target, what, deadline, generic=generic if same else REDIRECT_FAILURE,
                               headers=hop_headers, auth=auth if same else None)
        return reply

    # --- manifests and config ----------------------------------------------------------------

    def _manifest(self, reference: ImageReference, ref: str, credentials: list[Credential], what: str,
                  deadline: Deadline, method: str = "GET") -> tuple[bytes, str, str]:
        path = f"/v2/{reference.repository}/manifests/{ref}"
        reply = self._get(reference, path, credentials, what, deadline, method=method, headers={"Accept": ACCEPT},
                          off_origin=False)
        if reply.status_code == 404 and reply.generic is None:
            raise self._not_found(reference, ref, credentials, reply.read(MAX_ERROR_BYTES, what), deadline)
        if reply.status_code != 200:
            reply.close()
            raise reply.error(RegistryErrorKind.BAD_RESPONSE,
                              f"{what}: the registry answered HTTP {reply.status_code}")
        header_digest = reply.headers.get("Docker-Content-Digest", "")
        media_type = reply.headers.get("Content-Type", "").split(";")[0].strip()
        if method == "HEAD":
            reply.close()
            if not header_digest:
                raise RegistryError(RegistryErrorKind.BAD_RESPONSE, f"{what}: no Docker-Content-Digest header")
            if not _DIGEST.fullmatch(header_digest):
                raise RegistryError(RegistryErrorKind.BAD_RESPONSE,
                                    f"{what}: the Docker-Content-Digest header {clip(header_digest)!r} is not a digest")
            return b"", media_type, header_digest
        body = reply.read(MAX_MANIFEST_BYTES, what)
        reveal = reply.generic is None
        if ref.startswith(("sha256:", "sha512:")):
            _verify(ref, body, what, reveal)
            digest = ref
        else:
            digest = _digest_of("sha256", body)
            if header_digest:
                _verify(header_digest, body, what, reveal)
                digest = header_digest
        return body, media_type, digest

    def head_digest(self, reference: ImageReference, credentials: list[Credential],
                    deadline: Deadline | None = None) -> str:
        """The digest a tag points at now, with one HEAD request (for re-checking a cached tag)."""
        ref = reference.digest or reference.tag or "latest"
        deadline = deadline or Deadline.after(self.lookup_timeout)
        return self._manifest(reference, ref, credentials, f"image {reference}", deadline, method="HEAD")[2]

    def fetch_config(self, reference: ImageReference, credentials: list[Credential],
                     deadline: Deadline | None = None) -> ImageConfig:
        """The image's digest (the index's, for multi-platform images) and its config."""
        what = f"image {reference}"
        deadline = deadline or Deadline.after(self.lookup_timeout)
        ref = reference.digest or reference.tag or "latest"
        body, media_type, digest = self._manifest(reference, ref, credentials, what, deadline)
        manifest = _json(body, f"{what}: manifest")
        declared = manifest.get("mediaType")
        media_type = declared if isinstance(declared, str) and declared else media_type
        if media_type in _INDEXES or ("manifests" in manifest and "config" not in manifest):
            child = self._pick_platform(manifest, what)
            child_what = f"{what} ({self.os}/{self.architecture})"
            child_body, _, _ = self._manifest(reference, child, credentials, child_what, deadline)
            manifest = _json(child_body, f"{what}: platform manifest")
        elif media_type not in _MANIFESTS and "config" not in manifest:
            raise RegistryError(RegistryErrorKind.BAD_RESPONSE,
                                f"{what}: unsupported manifest type {clip(media_type)!r}")
        descriptor = manifest.get("config")
        if not isinstance(descriptor, Mapping) or not isinstance(descriptor.get("digest"), str):
            raise RegistryError(RegistryErrorKind.BAD_RESPONSE, f"{what}: the manifest has no config descriptor")
        config_digest = descriptor["digest"]
        if not _DIGEST.fullmatch(config_digest):
            raise RegistryError(RegistryErrorKind.BAD_RESPONSE,
                                f"{what}: the manifest's config digest {clip(config_digest)!r} is not a digest")
        declared_size = descriptor.get("size")
        if isinstance(declared_size, int) and declared_size > MAX_CONFIG_BYTES:
            raise RegistryError(RegistryErrorKind.BAD_RESPONSE,
                                f"{what}: config: larger than {_size(MAX_CONFIG_BYTES)}, the most accepted")
        path = f"/v2/{reference.repository}/blobs/{config_digest}"
        reply = self._get(reference, path, credentials, f"{what}: config", deadline)
        if reply.status_code != 200:
            reply.close()
            raise reply.error(RegistryErrorKind.BAD_RESPONSE,
                              f"{what}: config blob {config_digest} answered HTTP {reply.status_code}")
        config_body = reply.read(MAX_CONFIG_BYTES, f"{what}: config")
        try:
            _verify(config_digest, config_body, f"{what}: config blob", reveal=reply.generic is None)
        except RegistryError:
            if reply.generic is None:
                raise
            # Read from another host: what it answered must not show (an internal URL probed).
            raise RegistryError(RegistryErrorKind.UNAVAILABLE, f"{what}: config: {REDIRECT_FAILURE}") from None
        return ImageConfig(reference=reference, digest=digest, config=_json(config_body, f"{what}: config"))

    def _not_found(self, reference: ImageReference, ref: str, credentials: list[Credential],
                   body: bytes, deadline: Deadline) -> RegistryError:
        """Tell a missing repository from a missing tag: registries say MANIFEST_UNKNOWN for both."""
        codes = _error_codes(body)
        tags: list[str] | None = None
        if "NAME_UNKNOWN" not in codes:
            path = f"/v2/{reference.repository}/tags/list?n=20"
            try:
                reply = self._get(reference, path, credentials, f"image {reference}: tags", deadline)
                status = reply.status_code
                listing = reply.read(MAX_ERROR_BYTES, f"image {reference}: tags")
                if status == 200:
                    found = _json(listing, "tags").get("tags")
                    tags = [t for t in found if isinstance(t, str) and _TAG.fullmatch(t)] \
                        if isinstance(found, list) else []
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
        """The digest of the first entry for this platform; entries without a usable platform never match."""
        entries = index.get("manifests")
        if not isinstance(entries, list):
            raise RegistryError(RegistryErrorKind.BAD_RESPONSE,
                                f"{what}: the image index is malformed: its `manifests` is not a list")
        if len(entries) > MAX_INDEX_ENTRIES:
            raise RegistryError(RegistryErrorKind.BAD_RESPONSE,
                                f"{what}: the image index lists {len(entries)} manifests; at most "
                                f"{MAX_INDEX_ENTRIES} are read")
        found: list[str] = []
        for entry in entries:
            platform = entry.get("platform") if isinstance(entry, Mapping) else None
            platform = platform if isinstance(platform, Mapping) else {}
            os_name, architecture = platform.get("os"), platform.get("architecture")
            os_name = os_name if isinstance(os_name, str) else "?"
            architecture = architecture if isinstance(architecture, str) else "?"
            name = f"{clip(os_name, 30)}/{clip(architecture, 30)}"
            if name not in found:
                found.append(name)
            if os_name == self.os and architecture == self.architecture:
                digest = entry.get("digest")
                if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
                    raise RegistryError(RegistryErrorKind.BAD_RESPONSE,
                                        f"{what}: the image index is malformed: its {self.os}/{self.architecture} "
                                        "entry has no valid digest")
                return digest
        shown = ", ".join(found[:20]) + (f" and {len(found) - 20} more" if len(found) > 20 else "")
        raise RegistryError(
            RegistryErrorKind.NO_PLATFORM,
            f"{what} has no {self.os}/{self.architecture} variant (it has: {shown or 'none'})",
        )


def _json(body: bytes, what: str) -> Mapping[str, Any]:
    data = bounded_json(body, what)
    if not isinstance(data, Mapping):
        raise RegistryError(RegistryErrorKind.BAD_RESPONSE, f"{what} is not a JSON object")
    return data


def _reason(error: BaseException) -> str:
    text = str(error)
    for marker in ("Failed to establish a new connection: ", "Caused by "):
        if marker in text:
            text = text.split(marker, 1)[1]
    return clip(text.strip("()'\" "), 200)


def _error_codes(body: bytes) -> set[str]:
    try:
        errors = bounded_json(body, "errors", max_values=10_000).get("errors", [])
        return {clip(str(e.get("code")), 40) for e in errors[:20]}
    except (RegistryError, ValueError, AttributeError, TypeError, KeyError):
        return set()


def _unauthorized_message(reference: ImageReference, credentials: list[Credential]) -> str:
    if credentials:
        tried = ", ".join(dict.fromkeys(c.source for c in credentials))
        return (f"not authorized to pull {reference.name} with the credentials of {tried}; "
                "check that they are valid for this registry and grant pull access")
    return (f"not authorized to pull {reference.name} anonymously, or it does not exist; "
            f"add an imagePullSecret with credentials for {reference.registry}")
