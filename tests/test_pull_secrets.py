"""Pull secrets read from the Kubernetes API (kmock's emulator), then used against a real registry."""

from __future__ import annotations

import base64
import json
import uuid

import pytest
from kubernetes import client

from cogtrain.pull_secrets import read_pull_secrets
from cogtrain.reference import parse_reference
from cogtrain.registry import RegistryClient, RegistryError, RegistryErrorKind
from cogtrain.resolver import SchemaResolver
from support.k8s_server import KubeAPI
from support.registries import USERS, Registries

pytestmark = pytest.mark.integration


def docker_secret(namespace: str, name: str, host: str, user: str, password: str, legacy: bool = False) -> client.V1Secret:
    entry = {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}
    config = {host: entry} if legacy else {"auths": {host: entry}}
    key = ".dockercfg" if legacy else ".dockerconfigjson"
    return client.V1Secret(
        metadata=client.V1ObjectMeta(name=name, namespace=namespace),
        type="kubernetes.io/dockercfg" if legacy else "kubernetes.io/dockerconfigjson",
        data={key: base64.b64encode(json.dumps(config).encode()).decode()},
    )


@pytest.fixture()
def namespace() -> str:
    return f"ns-{uuid.uuid4().hex[:8]}"


def test_named_and_service_account_secrets(kube: KubeAPI, registries: Registries, namespace: str) -> None:
    host = registries.token.host
    core = kube.core
    core.create_namespaced_secret(namespace, docker_secret(namespace, "spec-secret", host, "reader", "wrong"))
    core.create_namespaced_secret(namespace, docker_secret(namespace, "sa-secret", host, "reader", USERS["reader"],
                                                           legacy=True))
    core.create_namespaced_service_account(namespace, client.V1ServiceAccount(
        metadata=client.V1ObjectMeta(name="trainer", namespace=namespace),
        image_pull_secrets=[client.V1LocalObjectReference(name="sa-secret"),
                            client.V1LocalObjectReference(name="spec-secret")]))

    keyring, notes = read_pull_secrets(core, namespace, ["spec-secret", "missing"], "trainer")
    assert notes == ['secret "missing" could not be read (it is missing, or the operator may not read it)'], (
        "one message whether missing or forbidden: a status must not reveal which Secrets exist")
    sources = [c.source for c in keyring.lookup(parse_reference(f"{host}/acme/private:1.0"))]
    assert sources == ['secret "spec-secret"', 'secret "sa-secret"'], "spec's secrets first, no duplicates"

    resolved = SchemaResolver(RegistryClient()).resolve(f"{host}/acme/private:1.0", keyring)
    assert resolved.digest == registries.digests["private-True"], "the second (rotated) secret works"


def test_only_wrong_secrets_are_named_in_the_error(kube: KubeAPI, registries: Registries, namespace: str) -> None:
    host = registries.htpasswd.host
    kube.core.create_namespaced_secret(namespace, docker_secret(namespace, "stale", host, "reader", "expired-pw"))
    keyring, notes = read_pull_secrets(kube.core, namespace, ["stale"], None)
    assert notes == []
    with pytest.raises(RegistryError) as caught:
        SchemaResolver(RegistryClient()).resolve(f"{host}/acme/private:1.0", keyring)
    assert caught.value.kind is RegistryErrorKind.UNAUTHORIZED
    assert 'secret "stale"' in str(caught.value) and "expired-pw" not in str(caught.value)


def test_missing_service_account_is_a_note(kube: KubeAPI, namespace: str) -> None:
    keyring, notes = read_pull_secrets(kube.core, namespace, [], "default")
    assert keyring.entries == ()
    assert notes == ['service account "default" could not be read']
