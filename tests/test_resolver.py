"""The resolver's cache and coalescing (against the real registry), its bounds against hostile images and slow
registries, and the webhook's bounded lookups (unit: a fake registry client)."""

from __future__ import annotations

import json
import threading
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor

import pytest

from cogtrain.admission import LookupTimeout
from cogtrain.credentials import Keyring
from cogtrain.reference import parse_reference
from cogtrain.registry import Deadline, ImageConfig, RegistryClient, RegistryError, RegistryErrorKind
from cogtrain.resolver import (
    LRU,
    MAX_SCHEMA_BYTES,
    MAX_SCHEMA_INPUTS,
    MAX_SCHEMA_NESTING,
    MAX_SCHEMA_VALUES,
    SchemaResolver,
    model_from_config,
)
from cogtrain.webhook import BoundedLookup
from support.paths import model_dirs, schema_file
from support.registries import USERS, FakeRegistryClient, Registries, cog_document, cog_labels, keyring


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.integration
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


@pytest.mark.integration
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


@pytest.mark.integration
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


@pytest.mark.integration
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


@pytest.mark.integration
def test_cache_is_bounded(registries: Registries) -> None:
    resolver = SchemaResolver(RegistryClient(), max_entries=2)
    host = registries.anonymous.host
    for model in ("all-inputs", "hello-train", "training-output"):
        resolver.resolve(f"{host}/acme/{model}:1.0")
    assert len(resolver._by_digest) == 2 and len(resolver._tags) == 2
    resolver.resolve(f"{host}/acme/all-inputs:1.0")
    assert resolver.stats.fetches == 4, "the least recently used entry was dropped"


@pytest.mark.integration
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


# --- a hostile image's schema label is bounded before it is parsed ---------------------------------


def _image(labels: dict[str, str]) -> ImageConfig:
    return ImageConfig(reference=parse_reference("r.example.com/acme/m:1"), digest="sha256:" + "1" * 64,
                       config={"config": {"Labels": labels}})


def _schema_failure(document: object) -> RegistryError:
    text = document if isinstance(document, str) else json.dumps(document)
    with pytest.raises(RegistryError) as caught:
        model_from_config(_image({"run.cog.openapi_schema": text}))
    return caught.value


@pytest.mark.unit
def test_every_fixture_schema_is_far_inside_the_limits() -> None:
    """The bounds leave room: Cog's real schemas (examples/, tests/models/) are a few kB."""
    for name, directory in model_dirs().items():
        text = schema_file(directory).read_text()
        model = model_from_config(_image({"run.cog.openapi_schema": text}))
        assert len(text.encode()) * 50 < MAX_SCHEMA_BYTES, name
        assert len(model.schema.inputs) * 50 < MAX_SCHEMA_INPUTS, name


@pytest.mark.unit
def test_schema_label_over_1_mib_is_refused_naming_the_limit() -> None:
    error = _schema_failure(cog_document(description="x" * (3 * 2**20 // 2)))
    assert error.kind is RegistryErrorKind.MALFORMED_SCHEMA and not error.retryable
    assert "run.cog.openapi_schema label holds 1.5 MiB of schema JSON; at most 1 MiB is accepted" in str(error)


@pytest.mark.unit
def test_schema_with_too_many_json_values_is_refused_before_it_is_parsed() -> None:
    """~20x its size once parsed: a 600 kB label of empty lists would cost ~10 MB; it is refused unparsed."""
    text = json.dumps(cog_document(**{"x-pad": [[]] * 150_000}))
    assert len(text) < MAX_SCHEMA_BYTES
    tracemalloc.start()
    try:
        with pytest.raises(RegistryError) as caught:
            model_from_config(_image({"run.cog.openapi_schema": text}))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert caught.value.kind is RegistryErrorKind.MALFORMED_SCHEMA and not caught.value.retryable
    assert f"schema has more than {MAX_SCHEMA_VALUES} JSON values, the most accepted" in str(caught.value)
    assert peak < 3 * len(text) + 2**20, f"parsing cost {peak} bytes for a {len(text)}-byte label"


@pytest.mark.unit
def test_schema_nested_too_deeply_is_refused() -> None:
    pad: object = "deep"
    for _ in range(40):
        pad = [pad]
    error = _schema_failure(cog_document(**{"x-pad": pad}))
    assert error.kind is RegistryErrorKind.MALFORMED_SCHEMA
    assert f"schema is nested more than {MAX_SCHEMA_NESTING} levels deep" in str(error)


@pytest.mark.unit
def test_schema_with_too_many_inputs_is_refused() -> None:
    document = cog_document()
    document["components"]["schemas"]["TrainingInput"]["properties"] = {  # type: ignore[index]
        f"input_{i}": {"type": "string", "x-order": i} for i in range(MAX_SCHEMA_INPUTS + 1)}
    error = _schema_failure(document)
    assert error.kind is RegistryErrorKind.MALFORMED_SCHEMA and not error.retryable
    assert f"declares {MAX_SCHEMA_INPUTS + 1} training inputs; at most {MAX_SCHEMA_INPUTS} are accepted" in str(error)


@pytest.mark.unit
def test_cache_is_bounded_by_bytes() -> None:
    """Schemas near the size limit evict each other: the cache holds what max_bytes allows, not 512 of them."""
    big = json.dumps(cog_document(description="d" * 900_000))
    labels = {f"r.example.com/acme/m{i}": {"run.cog.openapi_schema": big, "n": str(i)} for i in range(6)}
    resolver = SchemaResolver(FakeRegistryClient(labels), max_bytes=3 * 2**20)  # type: ignore[arg-type]
    for image in labels:
        resolver.resolve(image + ":1")
    assert 0 < resolver._by_digest.bytes <= 3 * 2**20
    assert len(resolver._by_digest) == 3
    resolver.resolve("r.example.com/acme/m0:1")
    assert resolver.stats.fetches == 7, "the least recently used schema was dropped"


@pytest.mark.unit
def test_lru_by_bytes() -> None:
    lru: LRU[str, bytes] = LRU(10, max_bytes=100, weigh=len)
    lru.put("a", b"x" * 60)
    lru.put("b", b"x" * 30)
    lru.put("c", b"x" * 30)
    assert lru.get("a") is None and lru.bytes == 60 and len(lru) == 2
    lru.put("huge", b"x" * 101)
    assert lru.get("huge") is None and lru.bytes == 60, "a value heavier than the whole budget is not kept"
    lru.put("b", b"x" * 10)
    assert lru.bytes == 40


# --- slow registries: deadlines and shares ------------------------------------------------------------


@pytest.mark.unit
def test_coalesced_lookup_waits_no_longer_than_its_deadline() -> None:
    release = threading.Event()
    client = FakeRegistryClient({"r.example.com/acme/m": {}}, lookup_timeout=0.5, release=release)
    resolver = SchemaResolver(client)  # type: ignore[arg-type]
    with ThreadPoolExecutor(1) as pool:
        leader = pool.submit(resolver.resolve, "r.example.com/acme/m:1")
        while not client.fetches:
            time.sleep(0.01)
        started = time.monotonic()
        with pytest.raises(RegistryError) as caught:
            resolver.resolve("r.example.com/acme/m:1")
        waited = time.monotonic() - started
        release.set()
        with pytest.raises(RegistryError):
            leader.result()  # not a Cog image: no labels
    assert waited < 0.5 + 0.3
    assert caught.value.kind is RegistryErrorKind.UNAVAILABLE and caught.value.retryable
    assert "the lookup did not finish within 0.5s (an earlier lookup of the same image" in str(caught.value)
    assert resolver.stats.coalesced == 1


@pytest.mark.unit
def test_each_lookup_gives_the_client_one_deadline() -> None:
    client = FakeRegistryClient({"r.example.com/acme/m": {}}, lookup_timeout=7.0)
    with pytest.raises(RegistryError):
        SchemaResolver(client).resolve("r.example.com/acme/m:1")  # type: ignore[arg-type]
    (deadline,) = client.deadlines
    assert isinstance(deadline, Deadline) and deadline.budget == 7.0 and 6 < deadline.remaining() <= 7


@pytest.mark.unit
def test_a_slow_registry_holds_at_most_its_share_of_fetches() -> None:
    """Lookups beyond a registry's share (or the overall one) wait briefly, then fail retryably; others go on."""
    release = threading.Event()
    slow = {f"slow.example.com/acme/m{i}": {} for i in range(3)}
    client = FakeRegistryClient({**slow, "fast.example.com/acme/m": {}}, release=release)
    resolver = SchemaResolver(client, max_fetches=3, max_fetches_per_registry=2,  # type: ignore[arg-type]
                              slot_wait=0.3)
    with ThreadPoolExecutor(2) as pool:
        stuck = [pool.submit(resolver.resolve, f"slow.example.com/acme/m{i}:1") for i in range(2)]
        while len(client.fetches) < 2:
            time.sleep(0.01)
        started = time.monotonic()
        with pytest.raises(RegistryError) as caught:
            resolver.resolve("slow.example.com/acme/m2:1")
        refused_after = time.monotonic() - started
        client.release = None  # the other registry answers at once
        with pytest.raises(RegistryError) as other:
            resolver.resolve("fast.example.com/acme/m:1")
        release.set()
        for future in stuck:
            with pytest.raises(RegistryError):
                future.result()
    assert caught.value.kind is RegistryErrorKind.UNAVAILABLE and caught.value.retryable
    assert "not looked up now: 2 lookups at slow.example.com are still waiting for it" in str(caught.value)
    assert refused_after < 0.3 + 0.3
    assert other.value.kind is RegistryErrorKind.NOT_COG, "another registry's lookup was not held up"
    assert resolver.stats.refused_busy == 1 and "slow.example.com/acme/m2:1" not in client.fetches


# --- the webhook's lookups: one slow registry cannot take the pool ----------------------------------


class _StuckResolver:
    """Resolves images of fast.example.com at once; those of any other host hang until released."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.started: list[str] = []

    def resolve(self, image: str, keyring: Keyring | None = None) -> str:
        self.started.append(image)
        if not image.startswith("fast.example.com/"):
            self.release.wait(10)
        return f"model of {image}"


@pytest.mark.unit
def test_webhook_lookups_of_a_slow_registry_leave_the_pool_to_others() -> None:
    resolver = _StuckResolver()
    lookups = BoundedLookup(resolver, core=lambda: None, timeout=0.5)  # type: ignore[arg-type]
    lookups._keyrings[("ns", (), "default")] = (time.monotonic() + 600, Keyring())
    try:
        with ThreadPoolExecutor(12) as reviews:
            slow = [reviews.submit(lookups.for_training("ns", (), "default"), f"slow.example.com/acme/m{i}:1")
                    for i in range(12)]
            for review in slow:
                with pytest.raises(LookupTimeout):
                    review.result()
        started = time.monotonic()
        assert lookups.for_training("ns", (), "default")("fast.example.com/acme/m:1") == \
            "model of fast.example.com/acme/m:1"
        assert time.monotonic() - started < 0.4
        assert len([image for image in resolver.started if image.startswith("slow.")]) == lookups.max_per_registry
    finally:
        resolver.release.set()
        lookups._pool.shutdown(wait=True)


@pytest.mark.unit
def test_webhook_reviews_of_one_image_share_one_lookup() -> None:
    resolver = _StuckResolver()
    lookups = BoundedLookup(resolver, core=lambda: None, timeout=0.3)  # type: ignore[arg-type]
    lookups._keyrings[("ns", (), "default")] = (time.monotonic() + 600, Keyring())
    try:
        with ThreadPoolExecutor(10) as reviews:
            results = [reviews.submit(lookups.for_training("ns", (), "default"), "slow.example.com/acme/m:1")
                       for _ in range(10)]
            for review in results:
                with pytest.raises(LookupTimeout):
                    review.result()
        assert resolver.started == ["slow.example.com/acme/m:1"]
    finally:
        resolver.release.set()
        lookups._pool.shutdown(wait=True)
