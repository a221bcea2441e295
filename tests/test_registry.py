"""Reading Cog schemas from a real registry (docker-registry on loopback): success and every failure."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from cogtrain.credentials import Keyring
from cogtrain.reference import parse_reference
from cogtrain.registry import (
    MAX_CHALLENGE_CHARS,
    MAX_CONFIG_BYTES,
    MAX_INDEX_ENTRIES,
    MAX_JSON_VALUES,
    MAX_REDIRECTS,
    MAX_REGISTRIES_REMEMBERED,
    REDIRECT_FAILURE,
    TOKEN_FAILURE,
    RegistryClient,
    RegistryError,
    RegistryErrorKind,
    parse_challenge,
)
from cogtrain.resolver import ResolvedModel, SchemaResolver
from cogtrain.schema import parse_schema
from support.paths import load_schema_document
from support.registries import USERS, Registries, cog_document, cog_labels, keyring
from support.registry_server import OCI_INDEX, Canned, FaultyRegistry, canned_image, canned_index


def resolve(image: str, keyring: Keyring | None = None, **client_args: object) -> ResolvedModel:
    return SchemaResolver(RegistryClient(**client_args)).resolve(image, keyring)  # type: ignore[arg-type]


def failure(image: str, keyring: Keyring | None = None, **client_args: object) -> RegistryError:
    with pytest.raises(RegistryError) as caught:
        resolve(image, keyring, **client_args)
    return caught.value


@pytest.mark.integration
@pytest.mark.parametrize("model", ["all-inputs", "hello-train", "training-output", "edge-cases"])
def test_resolves_fixture_schemas_by_tag(registries: Registries, model: str) -> None:
    host = registries.anonymous.host
    resolved = resolve(f"{host}/acme/{model}:1.0")
    assert resolved.digest == registries.digests[model]
    assert resolved.pinned == f"{host}/acme/{model}@{registries.digests[model]}"
    expected = parse_schema(load_schema_document(model))
    assert list(resolved.schema.inputs) == list(expected.inputs)
    assert resolved.schema.inputs == expected.inputs
    assert json.loads(resolved.labels["run.cog.config"])["train"] == "train.py:train"


@pytest.mark.integration
def test_resolves_by_digest(registries: Registries) -> None:
    digest = registries.digests["all-inputs"]
    resolved = resolve(f"{registries.anonymous.host}/acme/all-inputs@{digest}")
    assert resolved.digest == digest and "steps" in resolved.schema.inputs


@pytest.mark.integration
def test_oci_manifest(registries: Registries) -> None:
    resolved = resolve(f"{registries.anonymous.host}/acme/oci:1.0")
    assert resolved.digest == registries.digests["oci"]
    assert list(resolved.schema.inputs) == ["train_data", "learning_rate", "seed"]


@pytest.mark.integration
def test_index_picks_linux_amd64_and_pins_the_index(registries: Registries) -> None:
    resolved = resolve(f"{registries.anonymous.host}/acme/multi:1.0")
    assert resolved.digest == registries.digests["multi"], "the pinned digest is the index's, as kubelets pull it"
    assert "steps" in resolved.schema.inputs, "the amd64 image's labels, not the arm64 one listed first"


@pytest.mark.integration
def test_index_without_amd64(registries: Registries) -> None:
    error = failure(f"{registries.anonymous.host}/acme/arm-only:1.0")
    assert error.kind is RegistryErrorKind.NO_PLATFORM and not error.retryable
    assert "has no linux/amd64 variant (it has: linux/arm64)" in str(error)


@pytest.mark.integration
def test_other_platform_can_be_chosen(registries: Registries) -> None:
    resolved = resolve(f"{registries.anonymous.host}/acme/arm-only:1.0", platform="linux/arm64")
    assert "steps" in resolved.schema.inputs


@pytest.mark.integration
def test_older_label_name(registries: Registries) -> None:
    assert list(resolve(f"{registries.anonymous.host}/acme/old-label:1.0").schema.inputs) == ["param"]


@pytest.mark.integration
@pytest.mark.parametrize(
    ("image", "kind", "message"),
    [
        ("acme/plain:1.0", RegistryErrorKind.NOT_COG, "is not a Cog model: its config has no run.cog.openapi_schema label"),
        ("acme/predict-only:1.0", RegistryErrorKind.NO_TRAINING, "this model's cog.yaml has no `train:`"),
        ("acme/broken:1.0", RegistryErrorKind.MALFORMED_SCHEMA, "schema: not valid JSON"),
        ("acme/nothing:1.0", RegistryErrorKind.IMAGE_NOT_FOUND, "the registry has no repository acme/nothing"),
        ("acme/all-inputs:9.9", RegistryErrorKind.TAG_NOT_FOUND, "has no tag '9.9' (its tags include: 1.0)"),
        ("acme/all-inputs@sha256:" + "0" * 64, RegistryErrorKind.IMAGE_NOT_FOUND, "has no manifest sha256:000"),
        ("acme/Upper:1.0", RegistryErrorKind.INVALID_REFERENCE, "is not a valid repository name"),
    ],
)
def test_clear_failures(registries: Registries, image: str, kind: RegistryErrorKind, message: str) -> None:
    error = failure(f"{registries.anonymous.host}/{image}")
    assert error.kind is kind
    assert message in str(error)
    assert not error.retryable
    assert "\n" not in str(error)


# --- credentials -------------------------------------------------------------------------------


@pytest.fixture(params=["htpasswd", "token"])
def private(request: pytest.FixtureRequest, registries: Registries) -> Iterator[tuple[str, str]]:
    registry = registries.htpasswd if request.param == "htpasswd" else registries.token
    yield registry.host, registries.digests[f"private-{request.param == 'token'}"]


@pytest.mark.integration
def test_right_credentials(private: tuple[str, str]) -> None:
    host, digest = private
    resolved = resolve(f"{host}/acme/private:1.0", keyring(host, "reader", USERS["reader"]))
    assert resolved.digest == digest


@pytest.mark.integration
def test_wrong_credentials_name_the_secret_and_hide_the_password(private: tuple[str, str]) -> None:
    host, _ = private
    error = failure(f"{host}/acme/private:1.0", keyring(host, "reader", "not-the-password", "team-registry"))
    assert error.kind is RegistryErrorKind.UNAUTHORIZED and not error.retryable
    assert 'with the credentials of secret "team-registry"' in str(error)
    assert "not-the-password" not in str(error) + repr(error)


@pytest.mark.integration
def test_missing_credentials(private: tuple[str, str]) -> None:
    host, _ = private
    error = failure(f"{host}/acme/private:1.0")
    assert error.kind is RegistryErrorKind.UNAUTHORIZED
    assert "anonymously" in str(error) and "add an imagePullSecret" in str(error)


@pytest.mark.integration
def test_credentials_for_another_registry_are_not_sent(private: tuple[str, str]) -> None:
    host, _ = private
    error = failure(f"{host}/acme/private:1.0", keyring("other.example.com", "reader", USERS["reader"]))
    assert "anonymously" in str(error)


@pytest.mark.integration
def test_rotated_secret_the_second_credential_works(private: tuple[str, str]) -> None:
    host, digest = private
    ring = keyring(host, "reader", "old-password", "old").merged(keyring(host, "reader", USERS["reader"], "new"))
    assert resolve(f"{host}/acme/private:1.0", ring).digest == digest


@pytest.mark.integration
def test_token_flow_asks_for_pull_scope_only(registries: Registries) -> None:
    service = registries.token.token_service
    assert service is not None
    before = len(service.requests)
    host = registries.token.host
    resolve(f"{host}/acme/private:1.0", keyring(host, "reader", USERS["reader"]))
    asked = service.requests[before:]
    assert asked and all(r["query"]["scope"] == ["repository:acme/private:pull"] for r in asked)
    assert all(r["query"]["service"] == ["test-registry"] for r in asked)


@pytest.mark.integration
def test_cold_lookup_round_trips(registries: Registries) -> None:
    """Anonymous: manifest + config. Bearer: challenge + token + manifest + config, then 3 per image."""
    client = RegistryClient()
    resolver = SchemaResolver(client)
    resolver.resolve(f"{registries.anonymous.host}/acme/hello-train:1.0")
    assert client.round_trips == 2
    token_client = RegistryClient()
    host = registries.token.host
    ring = keyring(host, "reader", USERS["reader"])
    SchemaResolver(token_client).resolve(f"{host}/acme/private:1.0", ring)
    assert token_client.round_trips == 4
    token_client._tokens.clear()
    SchemaResolver(token_client).resolve(f"{host}/acme/private:1.0", ring)
    assert token_client.round_trips == 4 + 3, "the challenge is remembered per registry"


# --- integrity --------------------------------------------------------------------------------


def _tamper(path: Path) -> None:
    """Change stored content in place, keeping it the same length and valid JSON."""
    data = path.read_bytes()
    changed = data.replace(b"train", b"tRain", 1) if b"train" in data else data.replace(
        b'"schemaVersion": 2', b'"schemaVersion":2 ', 1)
    assert changed != data and len(changed) == len(data)
    path.write_bytes(changed)


@pytest.mark.integration
def test_tampered_config_blob_is_refused(registries: Registries) -> None:
    host = registries.anonymous.host
    config_digest = _config_digest(registries, "acme/tamper-config", registries.digests["tamper-config"])
    _tamper(registries.anonymous.blob_path(config_digest))
    error = failure(f"{host}/acme/tamper-config:1.0")
    assert error.kind is RegistryErrorKind.DIGEST_MISMATCH
    assert f"expected {config_digest}" in str(error)


@pytest.mark.integration
def test_tampered_manifest_is_refused(registries: Registries) -> None:
    host = registries.anonymous.host
    digest = registries.digests["tamper-manifest"]
    _tamper(registries.anonymous.blob_path(digest))
    for image in (f"{host}/acme/tamper-manifest@{digest}", f"{host}/acme/tamper-manifest:1.0"):
        error = failure(image)
        assert error.kind is RegistryErrorKind.DIGEST_MISMATCH, image


def _config_digest(registries: Registries, repository: str, digest: str) -> str:
    response = registries.anonymous.session.get(
        f"{registries.anonymous.url}/v2/{repository}/manifests/{digest}",
        headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"})
    return str(response.json()["config"]["digest"])


# --- an unavailable registry is retryable, never a crash ----------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize("status", [500, 502, 503, 429])
def test_server_errors_are_retryable(status: int) -> None:
    server = FaultyRegistry(status)
    try:
        error = failure(f"{server.host}/acme/model:1.0")
    finally:
        server.stop()
    assert error.kind is RegistryErrorKind.UNAVAILABLE and error.retryable
    assert f"answered HTTP {status}; try again later" in str(error)


@pytest.mark.integration
def test_timeout_is_retryable_and_bounded() -> None:
    server = FaultyRegistry(0)
    started = time.monotonic()
    try:
        error = failure(f"{server.host}/acme/model:1.0", timeout=0.5)
    finally:
        server.stop()
    assert time.monotonic() - started < 3
    assert error.kind is RegistryErrorKind.UNAVAILABLE and error.retryable
    assert "did not answer within 0.5s" in str(error)


@pytest.mark.integration
def test_connection_refused_is_retryable() -> None:
    from support.cogserver import free_port

    error = failure(f"127.0.0.1:{free_port()}/acme/model:1.0")
    assert error.kind is RegistryErrorKind.UNAVAILABLE and "cannot reach the registry" in str(error)


@pytest.mark.integration
def test_token_service_down_is_retryable(registries: Registries) -> None:
    from support.cogserver import free_port

    client = RegistryClient(timeout=2)
    host = registries.token.host
    dead_realm = f'Bearer realm="http://127.0.0.1:{free_port()}/token",service="test-registry"'
    client._challenges[host] = parse_challenge(dead_realm)
    with pytest.raises(RegistryError) as caught:
        SchemaResolver(client).resolve(f"{host}/acme/private:1.0", keyring(host, "reader", USERS["reader"]))
    assert caught.value.retryable


# --- plain HTTP only where Docker allows it ------------------------------------------------------


@pytest.mark.unit
@pytest.mark.parametrize(
    ("image", "insecure", "scheme"),
    [
        ("localhost:5000/a/b", [], "http"),
        ("127.0.0.1:5000/a/b", [], "http"),
        ("127.1.2.3/a/b", [], "http"),
        ("[::1]:5000/a/b", [], "http"),
        ("registry.example.com/a/b", [], "https"),
        ("registry.kube-system.svc:5000/a/b", ["registry.kube-system.svc:5000"], "http"),
        ("registry.kube-system.svc:5000/a/b", ["registry.kube-system.svc"], "http"),
        ("registry.kube-system.svc:5000/a/b", ["other.svc:5000"], "https"),
        ("ubuntu", [], "https"),
    ],
)
def test_plain_http_for_loopback_and_listed_registries(image: str, insecure: list[str], scheme: str) -> None:
    assert RegistryClient(insecure_registries=insecure).scheme_for(parse_reference(image)) == scheme


@pytest.mark.unit
def test_parse_challenge() -> None:
    bearer = parse_challenge('Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
                             'scope="repository:library/ubuntu:pull",error="insufficient_scope"')
    assert bearer is not None and bearer.scheme == "bearer"
    assert bearer.params == {"realm": "https://auth.docker.io/token", "service": "registry.docker.io",
                             "scope": "repository:library/ubuntu:pull", "error": "insufficient_scope"}
    basic = parse_challenge('Basic realm="Registry Realm"')
    assert basic is not None and basic.scheme == "basic" and basic.params == {"realm": "Registry Realm"}
    assert parse_challenge("Negotiate abc") is None
    assert parse_challenge("") is None


# --- limits against hostile registries (docs/registry.md) -----------------------------------------------


def _serve(answers: dict[str, Canned], **options: Any) -> FaultyRegistry:
    return FaultyRegistry(404, answers=answers, **options)


@pytest.fixture
def servers() -> Iterator[Callable[..., FaultyRegistry]]:
    """Start FaultyRegistry servers for one test; all are stopped after it."""
    started: list[FaultyRegistry] = []

    def start(status: int = 404, **options: Any) -> FaultyRegistry:
        server = FaultyRegistry(status, **options)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


# 1. what an image may make the operator hold


@pytest.mark.integration
def test_schema_label_over_the_limit_is_refused(registries: Registries) -> None:
    registry = registries.anonymous
    labels = {"run.cog.openapi_schema": json.dumps(cog_document(description="x" * (2**20 + 1000)))}
    registry.push_image("acme/huge-schema", "1.0", labels)
    error = failure(f"{registry.host}/acme/huge-schema:1.0")
    assert error.kind is RegistryErrorKind.MALFORMED_SCHEMA and not error.retryable
    assert "schema JSON; at most 1 MiB is accepted" in str(error)


@pytest.mark.integration
def test_config_blob_over_the_limit_is_refused(registries: Registries) -> None:
    registry = registries.anonymous
    labels = {**cog_labels("hello-train"), "org.example.padding": "p" * (MAX_CONFIG_BYTES + 1)}
    registry.push_image("acme/huge-config", "1.0", labels)
    error = failure(f"{registry.host}/acme/huge-config:1.0")
    assert error.kind is RegistryErrorKind.BAD_RESPONSE and not error.retryable
    assert "config: larger than 4 MiB, the most accepted" in str(error)


@pytest.mark.integration
def test_config_body_is_cut_at_the_limit_whatever_the_manifest_says(servers: Callable[..., FaultyRegistry]) -> None:
    """The descriptor says 2 kB, the blob has no Content-Length and goes on: reading stops at the bound."""
    answers, _ = canned_image("acme/m", "1.0", cog_labels("hello-train"))
    blob = next(path for path in answers if "/blobs/" in path)
    answers[blob] = Canned(body=b"{" + b" " * (MAX_CONFIG_BYTES + 10), content_length=False)
    server = servers(answers=answers)
    error = failure(f"{server.host}/acme/m:1.0")
    assert error.kind is RegistryErrorKind.BAD_RESPONSE and "larger than 4 MiB" in str(error)


@pytest.mark.integration
def test_config_with_too_many_json_values_is_refused(servers: Callable[..., FaultyRegistry]) -> None:
    config = {"config": {"Labels": cog_labels("hello-train")}, "history": [{}] * (MAX_JSON_VALUES + 1)}
    answers, _ = canned_image("acme/m", "1.0", None, config=config)
    error = failure(f"{servers(answers=answers).host}/acme/m:1.0")
    assert error.kind is RegistryErrorKind.BAD_RESPONSE and not error.retryable
    assert f"config has more than {MAX_JSON_VALUES} JSON values" in str(error)


@pytest.mark.integration
def test_manifest_with_too_many_json_values_is_refused(servers: Callable[..., FaultyRegistry]) -> None:
    answers, _ = canned_image("acme/m", "1.0", cog_labels("hello-train"),
                              manifest_extra={"annotations": {"pad": "x"}, "layers": [0] * MAX_JSON_VALUES})
    error = failure(f"{servers(answers=answers).host}/acme/m:1.0")
    assert error.kind is RegistryErrorKind.BAD_RESPONSE
    assert f"manifest has more than {MAX_JSON_VALUES} JSON values" in str(error)


@pytest.mark.integration
def test_canned_image_resolves(servers: Callable[..., FaultyRegistry]) -> None:
    """The canned registry the tests here use serves a good image as a registry would."""
    answers, digest = canned_image("acme/m", "1.0", cog_labels("hello-train"))
    assert resolve(f"{servers(answers=answers).host}/acme/m:1.0").digest == digest


# 2. slow registries: one deadline per request and per lookup


@pytest.mark.integration
@pytest.mark.parametrize("headers_too", [False, True], ids=["trickled-body", "trickled-headers"])
def test_trickling_registry_is_cut_at_the_request_deadline(servers: Callable[..., FaultyRegistry],
                                                           headers_too: bool) -> None:
    """A byte every 0.2 s never trips a per-read timeout of 1 s; the request's deadline ends it."""
    server = servers(trickle=0.2, trickle_headers=headers_too, hang_seconds=8)
    started = time.monotonic()
    error = failure(f"{server.host}/acme/model:1.0", timeout=1.0)
    assert time.monotonic() - started < 1.0 + 3, "well before the registry would have finished"
    assert error.kind is RegistryErrorKind.UNAVAILABLE and error.retryable
    assert "the registry did not answer within 1s" in str(error)


@pytest.mark.integration
def test_lookup_deadline_bounds_all_its_requests(servers: Callable[..., FaultyRegistry]) -> None:
    """Each answer takes 0.6 s, inside the 5 s request timeout; the lookup's 1 s covers them all."""
    answers, _ = canned_image("acme/m", "1.0", cog_labels("hello-train"))
    for answer in answers.values():
        answer.delay = 0.6
    server = servers(answers=answers)
    started = time.monotonic()
    error = failure(f"{server.host}/acme/m:1.0", timeout=5.0, lookup_timeout=1.0)
    assert time.monotonic() - started < 1.0 + 3, "well before the registry would have finished"
    assert error.kind is RegistryErrorKind.UNAVAILABLE and error.retryable
    assert "the lookup did not finish within 1s (the registry answers too slowly); try again later" in str(error)


@pytest.mark.integration
def test_many_slow_registries_at_once_all_end_in_time(servers: Callable[..., FaultyRegistry]) -> None:
    """20 concurrent lookups (more than kopf's 16 workers) at 5 slowloris registries all end by their deadline,
    those that wait for a fetch slot too."""
    slow = [servers(trickle=0.2, hang_seconds=10) for _ in range(5)]
    resolver = SchemaResolver(RegistryClient(timeout=1.0, lookup_timeout=2.0))
    images = [f"{slow[i % 5].host}/acme/m{i}:1.0" for i in range(20)]

    def lookup(image: str) -> tuple[float, RegistryError | None]:
        started = time.monotonic()
        try:
            resolver.resolve(image)
        except RegistryError as error:
            return time.monotonic() - started, error
        return time.monotonic() - started, None

    with ThreadPoolExecutor(20) as pool:
        outcomes = list(pool.map(lookup, images))
    assert all(error is not None and error.retryable for _, error in outcomes)
    assert max(took for took, _ in outcomes) < 2.0 + 1.0


# 3. the token service: only where the rules allow, and its failures all read the same


def _challenging(servers: Callable[..., FaultyRegistry], realm: str, **options: Any) -> FaultyRegistry:
    return servers(401, headers={"WWW-Authenticate": f'Bearer realm="{realm}",service="test"'}, **options)


@pytest.mark.integration
def test_plain_http_realm_on_another_host_is_refused_without_a_request(
        servers: Callable[..., FaultyRegistry]) -> None:
    listener = servers(404, bind="127.0.0.2")
    registry = _challenging(servers, f"http://{listener.host}/token")
    error = failure(f"{registry.host}/acme/m:1.0")
    assert listener.connections == 0, "the token service on another host was contacted"
    assert error.kind is RegistryErrorKind.BAD_RESPONSE and not error.retryable
    assert "a token service must be https, or plain http on the registry's own host" in str(error)


@pytest.mark.integration
def test_token_request_redirects_are_not_followed(servers: Callable[..., FaultyRegistry]) -> None:
    listener = servers(200, bind="127.0.0.2")
    realm = servers(302, headers={"Location": f"http://{listener.host}/token"})
    registry = _challenging(servers, f"{realm.url}/token")
    error = failure(f"{registry.host}/acme/m:1.0")
    assert realm.requests == 1 and listener.connections == 0
    assert error.kind is RegistryErrorKind.UNAVAILABLE and TOKEN_FAILURE in str(error)


@pytest.mark.integration
def test_token_service_failures_cannot_be_told_apart(servers: Callable[..., FaultyRegistry]) -> None:
    """Whatever the realm answers (nothing, 404, 500, a redirect, no token, a hang), the message is one."""
    from support.cogserver import free_port

    realms = {
        "refused": f"http://127.0.0.1:{free_port()}/token",
        "404": f"{servers(404).url}/token",
        "500": f"{servers(500).url}/token",
        "302": f"{servers(302, headers={'Location': 'http://127.0.0.1:1/'}).url}/token",
        "no token": f"{servers(200, answers={'/token': Canned(body=b'{}')}).url}/token",
        "hangs": f"{servers(0).url}/token",
    }
    messages = {}
    for outcome, realm in realms.items():
        registry = _challenging(servers, realm)
        error = failure(f"{registry.host}/acme/m:1.0", timeout=1.0)
        assert error.kind is RegistryErrorKind.UNAVAILABLE and error.retryable, outcome
        messages[outcome] = str(error).replace(registry.host, "REGISTRY")
    assert len(set(messages.values())) == 1, messages
    assert messages["404"] == f"image REGISTRY/acme/m:1.0: {TOKEN_FAILURE}"


@pytest.mark.unit
@pytest.mark.parametrize(
    ("image", "realm", "used"),
    [
        ("registry.example.com/a/b", "https://auth.example.com/token", True),
        ("registry.example.com/a/b", "http://registry.example.com/token", False),
        ("registry.example.com/a/b", "http://auth.example.com/token", False),
        ("registry.example.com/a/b", "file:///etc/passwd", False),
        ("registry.example.com/a/b", "https://user:pw@auth.example.com/token", False),
        ("registry.example.com/a/b", "/token", False),
        ("127.0.0.1:5000/a/b", "http://127.0.0.1:5001/token", True),
        ("127.0.0.1:5000/a/b", "http://127.0.0.2:5001/token", False),
        ("127.0.0.1:5000/a/b", "https://auth.example.com/token", True),
        ("insecure.svc:5000/a/b", "http://insecure.svc/token", True),
        ("insecure.svc:5000/a/b", "http://metadata.google.internal/token", False),
    ],
)
def test_which_token_services_are_used(image: str, realm: str, used: bool) -> None:
    client = RegistryClient(insecure_registries=["insecure.svc"])
    try:
        client._check_realm(parse_reference(image), realm, "image")
    except RegistryError as error:
        assert not used and error.kind is RegistryErrorKind.BAD_RESPONSE, realm
    else:
        assert used, realm


# 4. indexes: entries without a usable platform never match; a malformed index is a clear error


@pytest.mark.integration
def test_index_entries_without_a_usable_platform_do_not_match(servers: Callable[..., FaultyRegistry]) -> None:
    answers, digest = canned_image("acme/m", "amd64", cog_labels("hello-train"))
    entries: list[Any] = [
        "not an object",
        {"digest": "sha256:" + "1" * 64},
        {"platform": None, "digest": "sha256:" + "2" * 64},
        {"platform": "linux/amd64", "digest": "sha256:" + "3" * 64},
        {"platform": {"architecture": "amd64"}, "digest": "sha256:" + "4" * 64},
        {"platform": {"os": "linux"}, "digest": "sha256:" + "5" * 64},
        {"platform": {"os": ["linux"], "architecture": {"amd": 64}}, "digest": "sha256:" + "6" * 64},
        {"platform": {"os": "linux", "architecture": "amd64"}, "digest": digest},
    ]
    answers.update(canned_index("acme/m", "1.0", {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}))
    assert "param" in resolve(f"{servers(answers=answers).host}/acme/m:1.0").schema.inputs
    answers.update(canned_index("acme/m", "2.0", {"mediaType": OCI_INDEX, "manifests": entries[:-1]}))
    error = failure(f"{servers(answers=answers).host}/acme/m:2.0")
    assert error.kind is RegistryErrorKind.NO_PLATFORM and not error.retryable
    assert "has no linux/amd64 variant (it has: ?/?, ?/amd64, linux/?)" in str(error)


@pytest.mark.integration
@pytest.mark.parametrize(
    ("manifests", "message"),
    [
        (5, "the image index is malformed: its `manifests` is not a list"),
        ({"linux/amd64": "sha256:" + "1" * 64}, "the image index is malformed: its `manifests` is not a list"),
        ([{"platform": {"os": "linux", "architecture": "amd64"}, "digest": "sha256:../../etc"}],
         "the image index is malformed: its linux/amd64 entry has no valid digest"),
        ([{"platform": {"os": "linux", "architecture": "arm64"}, "digest": "sha256:" + "1" * 64}] * 300
         + [{"platform": {"os": "linux", "architecture": "amd64"}, "digest": "sha256:" + "2" * 64}],
         f"the image index lists 301 manifests; at most {MAX_INDEX_ENTRIES} are read"),
    ],
    ids=["number", "object", "bad-digest", "too-many"],
)
def test_malformed_index_is_a_clear_error(servers: Callable[..., FaultyRegistry], manifests: Any,
                                          message: str) -> None:
    answers = canned_index("acme/m", "1.0", {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests})
    error = failure(f"{servers(answers=answers).host}/acme/m:1.0")
    assert error.kind is RegistryErrorKind.BAD_RESPONSE and not error.retryable
    assert message in str(error)


# other things a registry controls


@pytest.mark.integration
def test_blob_redirects_are_bounded(servers: Callable[..., FaultyRegistry]) -> None:
    answers, _ = canned_image("acme/m", "1.0", cog_labels("hello-train"))
    blob = next(path for path in answers if "/blobs/" in path)
    answers[blob] = Canned(302, {"Location": "/hop/1"})
    for hop in range(1, 10):
        answers[f"/hop/{hop}"] = Canned(302, {"Location": f"/hop/{hop + 1}"})
    server = servers(answers=answers)
    error = failure(f"{server.host}/acme/m:1.0")
    assert error.kind is RegistryErrorKind.BAD_RESPONSE and not error.retryable
    assert f"more than {MAX_REDIRECTS} redirects, the most followed" in str(error)
    assert server.requests == 1 + 1 + MAX_REDIRECTS


@pytest.mark.integration
def test_blob_redirect_to_another_host_gets_no_credentials_and_tells_nothing(
        servers: Callable[..., FaultyRegistry]) -> None:
    storage = servers(404, bind="127.0.0.2")
    answers, _ = canned_image("acme/m", "1.0", cog_labels("hello-train"))
    blob = next(path for path in answers if "/blobs/" in path)
    answers[blob] = Canned(307, {"Location": f"{storage.url}/bucket/config?sig=abc"})
    registry = servers(answers=answers)
    error = failure(f"{registry.host}/acme/m:1.0", keyring(registry.host, "reader", "secret-password"))
    assert storage.requests == 1 and "Authorization" not in storage.seen[0][1]
    assert error.kind is RegistryErrorKind.UNAVAILABLE
    assert str(error) == f"image {registry.host}/acme/m:1.0: config: {REDIRECT_FAILURE}"


@pytest.mark.integration
def test_blob_redirect_to_storage_is_followed(servers: Callable[..., FaultyRegistry]) -> None:
    answers, digest = canned_image("acme/m", "1.0", cog_labels("hello-train"))
    blob = next(path for path in answers if "/blobs/" in path)
    storage = servers(answers={"/bucket/config": answers[blob]}, bind="127.0.0.2")
    answers[blob] = Canned(307, {"Location": f"{storage.url}/bucket/config?sig=abc"})
    assert resolve(f"{servers(answers=answers).host}/acme/m:1.0").digest == digest


@pytest.mark.integration
def test_oversized_challenge_is_refused(servers: Callable[..., FaultyRegistry]) -> None:
    listener = servers(404)
    header = f'Bearer realm="{listener.url}/token",pad="{"p" * MAX_CHALLENGE_CHARS}"'
    registry = servers(401, headers={"WWW-Authenticate": header})
    error = failure(f"{registry.host}/acme/m:1.0")
    assert error.kind is RegistryErrorKind.BAD_RESPONSE and listener.requests == 0
    assert f"WWW-Authenticate header is longer than {MAX_CHALLENGE_CHARS} characters" in str(error)


@pytest.mark.integration
def test_too_many_or_too_long_headers_are_a_clean_failure(servers: Callable[..., FaultyRegistry]) -> None:
    """http.client bounds them (100 headers, 64 KiB a line): a RegistryError, never a crash."""
    many = servers(200, headers={f"X-H{i}": "v" for i in range(150)})
    long = servers(200, headers={"X-Long": "v" * 70_000})
    for server in (many, long):
        error = failure(f"{server.host}/acme/m:1.0")
        assert error.kind is RegistryErrorKind.UNAVAILABLE and len(str(error)) < 400


@pytest.mark.integration
def test_cookies_are_not_kept(servers: Callable[..., FaultyRegistry]) -> None:
    answers, _ = canned_image("acme/m", "1.0", cog_labels("hello-train"))
    for answer in answers.values():
        answer.headers["Set-Cookie"] = "session=" + "c" * 4000
    client = RegistryClient()
    SchemaResolver(client).resolve(f"{servers(answers=answers).host}/acme/m:1.0")
    assert len(client.session.cookies) == 0


@pytest.mark.integration
def test_tag_listing_shown_in_a_message_is_bounded(servers: Callable[..., FaultyRegistry]) -> None:
    tags = ["1.0", "x" * 10_000, "bad\ntag", *(f"v{i}" for i in range(100))]
    answers = {"/v2/acme/m/tags/list": Canned(body=json.dumps({"name": "acme/m", "tags": tags}).encode())}
    error = failure(f"{servers(answers=answers).host}/acme/m:9.9")
    assert error.kind is RegistryErrorKind.TAG_NOT_FOUND
    assert "(its tags include: 1.0, v0, v1" in str(error) and len(str(error)) < 400


@pytest.mark.unit
def test_remembered_challenges_and_tokens_are_bounded() -> None:
    client = RegistryClient()
    for i in range(MAX_REGISTRIES_REMEMBERED + 10):
        client._learn(f"r{i}.example.com", _challenge_for(i))
    assert len(client._challenges) == MAX_REGISTRIES_REMEMBERED and "r0.example.com" not in client._challenges


def _challenge_for(i: int) -> Any:
    challenge = parse_challenge(f'Bearer realm="https://auth{i}.example.com/token"')
    assert challenge is not None
    return challenge


@pytest.mark.unit
def test_an_unclosed_string_is_scanned_in_linear_time() -> None:
    """A body of `"` and escaped quotes made the old string pattern quadratic (hours at 4 MiB, GIL held)."""
    import time

    from cogtrain.registry import check_json_shape

    started = time.monotonic()
    with pytest.raises(RegistryError):
        check_json_shape(b'"' + b'\\"' * (1024 * 1024), "manifest")
        raise RegistryError(RegistryErrorKind.BAD_RESPONSE, "shape passed; json.loads refuses it afterwards")
    assert time.monotonic() - started < 2


@pytest.mark.integration
def test_a_manifest_redirected_to_another_host_is_not_followed(servers: Callable[..., FaultyRegistry]) -> None:
    """Registries redirect only blobs: a manifest sent elsewhere could make the operator read an internal URL."""
    internal = servers(answers={"/secret": Canned(200, {"Content-Type": "application/x-internal-token-abc"}, b"{}")},
                       bind="127.0.0.2")
    answers, _ = canned_image("acme/m", "1.0", cog_labels("hello-train"))
    manifest = next(path for path in answers if "/manifests/" in path)
    answers[manifest] = Canned(302, {"Location": f"{internal.url}/secret"})
    error = failure(f"{servers(answers=answers).host}/acme/m:1.0")
    assert internal.requests == 0
    assert error.kind is RegistryErrorKind.UNAVAILABLE and REDIRECT_FAILURE in str(error)
    assert "x-internal" not in str(error)


@pytest.mark.integration
def test_a_config_from_another_host_that_is_wrong_tells_nothing(servers: Callable[..., FaultyRegistry]) -> None:
    """An internal 200 and an internal 404 read the same (no "is it up" oracle)."""
    messages = set()
    for answer in (Canned(200, {}, b'{"internal": true}'), Canned(404, {}, b"")):
        storage = servers(answers={"/bucket/config": answer}, bind="127.0.0.2")
        answers, _ = canned_image("acme/m", "1.0", cog_labels("hello-train"))
        blob = next(path for path in answers if "/blobs/" in path)
        answers[blob] = Canned(307, {"Location": f"{storage.url}/bucket/config"})
        error = failure(f"{servers(answers=answers).host}/acme/m:1.0")
        messages.add((error.kind, str(error).split(": ", 1)[1]))
    assert len(messages) == 1 and next(iter(messages))[0] is RegistryErrorKind.UNAVAILABLE
