"""The resolver's cache and coalescing, against the real registry."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from cogtrain.credentials import Keyring
from cogtrain.registry import RegistryClient, RegistryError, RegistryErrorKind
from cogtrain.resolver import SchemaResolver
from support.registries import USERS, Registries, cog_labels, keyring

pytestmark = pytest.mark.integration


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_cached_lookup_makes_no_request(registries: Registries) -> None:
    client = RegistryClient()
    resolver = SchemaResolver(client)
    image = f"{registries.anonymous.host}/acme/all-inputs:1.0"
    first = resolver.resolve(image)
    trips = client.round_trips
    assert resolver.resolve(image) is first
    assert resolver.resolve(first.pinned).schema is first.schema, "the digest form hits the same entry"
    assert client.round_trips == trips
    assert resolver.stats.cache_hits == 2 and resolver.stats.fetches == 1


def test_tag_is_rechecked_after_ttl_with_one_head(registries: Registries) -> None:
    clock = Clock()
    client = RegistryClient()
    resolver = SchemaResolver(client, tag_ttl=60, clock=clock)
    registry = registries.anonymous
    registry.push_image("acme/moving", "latest", cog_labels("hello-train"))
    image = f"{registry.host}/acme/moving:latest"
    first = resolver.resolve(image)
    clock.now += 59
    assert resolver.resolve(image) is first
    trips = client.round_trips
    clock.now += 2
    assert resolver.resolve(image) is first
    assert client.round_trips == trips + 1, "an unchanged tag costs one HEAD"
    assert resolver.stats.tag_rechecks == 1

    new_digest = registry.push_image("acme/moving", "latest", cog_labels("all-inputs"))
    clock.now += 61
    moved = resolver.resolve(image)
    assert moved.digest == new_digest != first.digest
    assert "steps" in moved.schema.inputs
    assert resolver.resolve(first.pinned) is first, "the old digest stays cached: content never changes"


def test_concurrent_lookups_make_one_fetch(registries: Registries) -> None:
    client = RegistryClient()
    resolver = SchemaResolver(client)
    image = f"{registries.anonymous.host}/acme/training-output:1.0"
    barrier = threading.Barrier(100)

    def lookup(_: int) -> str:
        barrier.wait()
        return resolver.resolve(image).digest

    with ThreadPoolExecutor(100) as pool:
        digests = set(pool.map(lookup, range(100)))
    assert digests == {registries.digests["training-output"]}
    assert resolver.stats.fetches == 1
    assert client.round_trips == 2


def test_concurrent_failures_are_shared_and_not_cached(registries: Registries) -> None:
    client = RegistryClient()
    resolver = SchemaResolver(client)
    registry = registries.anonymous
    image = f"{registry.host}/acme/late:1.0"
    barrier = threading.Barrier(20)

    def lookup(_: int) -> RegistryErrorKind | None:
        barrier.wait()
        try:
            resolver.resolve(image)
        except RegistryError as error:
            return error.kind
        return None

    with ThreadPoolExecutor(20) as pool:
        kinds = set(pool.map(lookup, range(20)))
    assert kinds == {RegistryErrorKind.IMAGE_NOT_FOUND}
    assert resolver.stats.fetches < 20
    registry.push_image("acme/late", "1.0", cog_labels("hello-train"))
    assert list(resolver.resolve(image).schema.inputs) == ["param"], "a failure is not cached"


def test_cache_is_bounded(registries: Registries) -> None:
    resolver = SchemaResolver(RegistryClient(), max_entries=2)
    host = registries.anonymous.host
    for model in ("all-inputs", "hello-train", "training-output"):
        resolver.resolve(f"{host}/acme/{model}:1.0")
    assert len(resolver._by_digest) == 2 and len(resolver._tags) == 2
    resolver.resolve(f"{host}/acme/all-inputs:1.0")
    assert resolver.stats.fetches == 4, "the least recently used entry was dropped"


@pytest.mark.parametrize("auth", ["htpasswd", "token"])
def test_cache_never_answers_for_other_credentials(registries: Registries, auth: str) -> None:
    registry = registries.htpasswd if auth == "htpasswd" else registries.token
    resolver = SchemaResolver(RegistryClient())
    image = f"{registry.host}/acme/private:1.0"
    resolver.resolve(image, keyring(registry.host, "reader", USERS["reader"]))
    with pytest.raises(RegistryError) as caught:
        resolver.resolve(image, Keyring())
    assert caught.value.kind is RegistryErrorKind.UNAUTHORIZED
    with pytest.raises(RegistryError):
        resolver.resolve(image, keyring(registry.host, "reader", "wrong"))
