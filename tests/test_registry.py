"""Reading Cog schemas from a real registry (docker-registry on loopback): success and every failure."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cogtrain.credentials import Keyring
from cogtrain.reference import parse_reference
from cogtrain.registry import RegistryClient, RegistryError, RegistryErrorKind, parse_challenge
from cogtrain.resolver import ResolvedModel, SchemaResolver
from cogtrain.schema import parse_schema
from support.paths import load_schema_document
from support.registries import USERS, Registries, keyring
from support.registry_server import FaultyRegistry


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
