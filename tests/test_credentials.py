"""Image references and registry credentials, matched the way Docker and the kubelet do."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from cogtrain.credentials import Credential, Keyring, keyring_from_file, keyring_from_secrets
from cogtrain.documents import DocumentError
from cogtrain.reference import ReferenceError, parse_reference

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("text", "registry", "repository", "tag", "digest"),
    [
        ("ubuntu", "docker.io", "library/ubuntu", "latest", None),
        ("ubuntu:22.04", "docker.io", "library/ubuntu", "22.04", None),
        ("r8.im/acme/sdxl", "r8.im", "acme/sdxl", "latest", None),
        ("acme/sdxl:1.2", "docker.io", "acme/sdxl", "1.2", None),
        ("index.docker.io/acme/sdxl", "docker.io", "acme/sdxl", "latest", None),
        ("docker.io/ubuntu", "docker.io", "library/ubuntu", "latest", None),
        ("localhost/model", "localhost", "model", "latest", None),
        ("localhost:5000/acme/model:v1", "localhost:5000", "acme/model", "v1", None),
        ("ghcr.io/org/team/model@sha256:" + "a" * 64, "ghcr.io", "org/team/model", None, "sha256:" + "a" * 64),
        ("123456789012.dkr.ecr.us-east-1.amazonaws.com/model:tag@sha256:" + "b" * 64,
         "123456789012.dkr.ecr.us-east-1.amazonaws.com", "model", "tag", "sha256:" + "b" * 64),
        ("[::1]:5000/model", "[::1]:5000", "model", "latest", None),
    ],
)
def test_parse_reference(text: str, registry: str, repository: str, tag: str | None, digest: str | None) -> None:
    reference = parse_reference(text)
    assert (reference.registry, reference.repository, reference.tag, reference.digest) == (
        registry, repository, tag, digest)


def test_api_host_and_pinned() -> None:
    hub = parse_reference("ubuntu:22.04")
    assert hub.api_host == "registry-1.docker.io"
    assert hub.pinned("sha256:" + "c" * 64) == "docker.io/library/ubuntu@sha256:" + "c" * 64
    assert str(parse_reference("r8.im/a/b:1")) == "r8.im/a/b:1"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "is empty or has spaces"),
        (" ubuntu", "is empty or has spaces"),
        ("Acme/Model", "is not a valid repository name"),
        ("acme/model:bad tag", "is not a valid tag"),
        ("acme/model:-x", "is not a valid tag"),
        ("acme/model@sha256:xyz", "is not a digest"),
        ("acme/model@md5:" + "a" * 32, "is not a digest"),
        ("bad_host.example.com:x/model", "is not a valid registry host"),
    ],
)
def test_invalid_references(text: str, message: str) -> None:
    with pytest.raises(ReferenceError) as caught:
        parse_reference(text)
    assert message in str(caught.value)


def ring(config: dict[str, Any], source: str = "test") -> Keyring:
    return Keyring.from_docker_config(config, source)


def auth(user: str, password: str) -> dict[str, str]:
    return {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}


@pytest.mark.parametrize(
    ("key", "image", "matches"),
    [
        ("registry.example.com", "registry.example.com/acme/m", True),
        ("https://registry.example.com", "registry.example.com/acme/m", True),
        ("https://registry.example.com/v2/", "registry.example.com/acme/m", True),
        ("registry.example.com:5000", "registry.example.com/acme/m", False),
        ("registry.example.com", "registry.example.com:5000/acme/m", False),
        ("registry.example.com:5000", "registry.example.com:5000/acme/m", True),
        ("*.example.com", "registry.example.com/acme/m", True),
        ("*.example.com", "a.registry.example.com/acme/m", False),
        ("*.*.example.com", "a.registry.example.com/acme/m", True),
        ("registry.example.com/acme", "registry.example.com/acme/m", True),
        ("registry.example.com/other", "registry.example.com/acme/m", False),
        ("REGISTRY.example.com", "registry.example.com/acme/m", True),
        ("https://index.docker.io/v1/", "ubuntu", True),
        ("index.docker.io", "acme/m", True),
        ("docker.io", "acme/m", True),
        ("https://index.docker.io/v1/", "quay.io/acme/m", False),
        ("quay.io", "docker.io/acme/m", False),
    ],
)
def test_kubelet_style_matching(key: str, image: str, matches: bool) -> None:
    found = ring({"auths": {key: auth("u", "p")}}).lookup(parse_reference(image))
    assert bool(found) is matches


def test_more_specific_keys_first_and_all_matches_offered() -> None:
    keyring = ring({"auths": {
        "quay.io": auth("general", "p1"),
        "quay.io/coreos": auth("coreos", "p2"),
        "*.io": auth("glob", "p3"),
    }})
    users = [c.username for c in keyring.lookup(parse_reference("quay.io/coreos/etcd"))]
    assert users == ["coreos", "general", "glob"]


def test_config_entry_forms() -> None:
    keyring = ring({"auths": {
        "a.example.com": auth("alice", "pa:ss"),
        "b.example.com": {"username": "bob", "password": "pb"},
        "c.example.com": {"identitytoken": "tok"},
        "d.example.com": {},
        "e.example.com": "garbage",
    }})
    assert [(c.username, c.password) for c in keyring.lookup(parse_reference("a.example.com/m"))] == [("alice", "pa:ss")]
    assert [(c.username, c.password) for c in keyring.lookup(parse_reference("b.example.com/m"))] == [("bob", "pb")]
    assert [(c.username, c.password) for c in keyring.lookup(parse_reference("c.example.com/m"))] == [("", "tok")]
    assert keyring.lookup(parse_reference("d.example.com/m")) == []
    assert keyring.lookup(parse_reference("e.example.com/m")) == []


def test_legacy_dockercfg_layout() -> None:
    keyring = ring({"registry.example.com": auth("old", "school")})
    assert [c.username for c in keyring.lookup(parse_reference("registry.example.com/m"))] == ["old"]


def secret(name: str, secret_type: str, key: str, config: Any) -> dict[str, Any]:
    raw = config if isinstance(config, bytes) else json.dumps(config).encode()
    return {"metadata": {"name": name}, "type": secret_type, "data": {key: base64.b64encode(raw).decode()}}


def test_keyring_from_pull_secrets() -> None:
    keyring, notes = keyring_from_secrets([
        secret("new", "kubernetes.io/dockerconfigjson", ".dockerconfigjson", {"auths": {"r.example.com": auth("n", "1")}}),
        secret("legacy", "kubernetes.io/dockercfg", ".dockercfg", {"r.example.com": auth("l", "2")}),
        secret("opaque", "Opaque", "token", {}),
        secret("broken", "kubernetes.io/dockerconfigjson", ".dockerconfigjson", b"{not json"),
        {"metadata": {"name": "empty"}, "type": "kubernetes.io/dockerconfigjson"},
    ])
    credentials = keyring.lookup(parse_reference("r.example.com/m"))
    assert [(c.username, c.source) for c in credentials] == [("n", 'secret "new"'), ("l", 'secret "legacy"')]
    assert notes == [
        'secret "opaque" is of type Opaque, not kubernetes.io/dockerconfigjson; it was not used',
        'secret "broken" has no readable .dockerconfigjson; it was not used',
        'secret "empty" has no readable .dockerconfigjson; it was not used',
    ]


def test_passwords_never_show() -> None:
    credential = Credential("user", "hunter2-secret", 'secret "x"')
    keyring = Keyring.from_docker_config({"auths": {"r.example.com": auth("user", "hunter2-secret")}}, "s")
    assert "hunter2" not in repr(credential) + repr(keyring) + str(keyring)
    assert "hunter2" not in credential.fingerprint()
    assert credential.fingerprint() != Credential("user", "other").fingerprint()


def test_keyring_from_file(tmp_path: Any) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"auths": {"r.example.com": auth("f", "p")}}))
    assert [c.source for c in keyring_from_file(str(path)).lookup(parse_reference("r.example.com/m"))] == [str(path)]
    path.write_text("{")
    with pytest.raises(DocumentError) as caught:
        keyring_from_file(str(path))
    assert "not a docker config.json" in str(caught.value)
    with pytest.raises(DocumentError):
        keyring_from_file(str(tmp_path / "missing.json"))
