"""Resolve a model image to its digest and training schema, with a cache and one fetch per image.

Content under a digest never changes, so a schema is cached by digest (bounded, least recently
used first out); a tag is re-checked after a short TTL with one HEAD request. Concurrent
lookups of the same image share one fetch. Cache entries are keyed by the credentials used, so
one namespace's pull secret never answers another namespace's lookup.

Nothing here trusts the image: its schema label is bounded before it is parsed, the cache by the
memory its entries hold, every lookup by a deadline (those that join another's fetch too), and
the fetches running at once by a share per registry host (docs/registry.md, "Limits against
hostile registries").
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator, Mapping
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from .credentials import Keyring
from .reference import ImageReference, ReferenceError, parse_reference
from .registry import Deadline, ImageConfig, RegistryClient, RegistryError, RegistryErrorKind, check_json_shape
from .schema import SchemaError, SchemaErrorKind, TrainingSchema, parse_schema_text

SCHEMA_LABELS = ("run.cog.openapi_schema", "org.cogmodel.openapi_schema")
CONFIG_LABEL = "run.cog.config"

# --- limits against hostile images (docs/registry.md, "Limits against hostile registries") -------------
MAX_SCHEMA_BYTES = 1024 * 1024
"""Schema JSON in the label (UTF-8). Cog's schemas are a few kB; parsed, JSON costs up to ~20x its size."""
MAX_SCHEMA_VALUES = 50_000
"""JSON values (objects, arrays, scalars) in the schema, counted before it is parsed (Cog's: a few hundred)."""
MAX_SCHEMA_NESTING = 32
"""Nesting of the schema JSON (Cog's nest 9 levels)."""
MAX_SCHEMA_INPUTS = 1000
"""Training inputs one schema may declare (Cog models have a few dozen at most)."""
DEFAULT_CACHE_BYTES = 32 * 1024 * 1024
"""What the cached schemas may cost together, estimated by model_footprint."""
BYTES_PER_JSON_VALUE = 150
"""The estimated memory of one parsed JSON value (measured: 45 to 160 bytes)."""

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


@dataclass(frozen=True)
class ResolvedModel:
    """A model image pinned to its digest, with its training schema."""

    reference: ImageReference
    digest: str
    schema: TrainingSchema = field(repr=False)
    schema_text: str = field(repr=False)
    labels: Mapping[str, str] = field(repr=False, default_factory=dict)
    footprint: int = field(repr=False, compare=False, default=0)  # estimated bytes it holds, for the cache

    @property
    def pinned(self) -> str:
        return self.reference.pinned(self.digest)


def _malformed(image: ImageConfig, message: str) -> RegistryError:
    return RegistryError(RegistryErrorKind.MALFORMED_SCHEMA, f"image {image.reference}: {message}")


def model_from_config(image: ImageConfig) -> ResolvedModel:
    """Read the Cog schema label of an image config, or say why the image is not usable.

    The label is bounded before it is parsed (MAX_SCHEMA_BYTES, MAX_SCHEMA_VALUES,
    MAX_SCHEMA_NESTING) and the schema after (MAX_SCHEMA_INPUTS): a label over a bound is a
    MalformedSchema naming it, never retried.
    """
    label = next((label for label in SCHEMA_LABELS if label in image.labels), None)
    text = image.labels[label] if label is not None else None
    if label is None or not isinstance(text, str):
        raise RegistryError(
            RegistryErrorKind.NOT_COG,
            f"image {image.reference} is not a Cog model: its config has no run.cog.openapi_schema label "
            "(build and push it with `cog build` / `cog push`)",
        )
    encoded = text.encode("utf-8", "surrogatepass")
    if len(encoded) > MAX_SCHEMA_BYTES:
        raise _malformed(image, f"its {label} label holds {len(encoded) / 2**20:.1f} MiB of schema JSON; at most "
                                f"{MAX_SCHEMA_BYTES // 2**20} MiB is accepted (Cog's schemas are a few kB)")
    check_json_shape(encoded, f"image {image.reference}: schema", MAX_SCHEMA_VALUES, MAX_SCHEMA_NESTING,
                     RegistryErrorKind.MALFORMED_SCHEMA)
    try:
        schema = parse_schema_text(text)
    except SchemaError as error:
        kind = RegistryErrorKind.NO_TRAINING if error.kind is SchemaErrorKind.NO_TRAINING else \
            RegistryErrorKind.MALFORMED_SCHEMA
        raise RegistryError(kind, f"image {image.reference}: {error}") from None
    if len(schema.inputs) > MAX_SCHEMA_INPUTS:
        raise _malformed(image, f"schema: declares {len(schema.inputs)} training inputs; at most "
                                f"{MAX_SCHEMA_INPUTS} are accepted")
    labels = {str(key): value for key, value in image.labels.items() if isinstance(value, str)}
    return ResolvedModel(reference=image.reference, digest=image.digest, schema=schema, schema_text=text,
                         labels=labels, footprint=model_footprint(text, labels))


def model_footprint(schema_text: str, labels: Mapping[str, str]) -> int:
    """Estimated bytes a cached model holds: its labels' text and the parsed schema."""
    text = sum(len(key) + len(value) for key, value in labels.items() if value is not schema_text)
    values = schema_text.count(",") + schema_text.count("{") + schema_text.count("[") + 1
    return text + len(schema_text) + BYTES_PER_JSON_VALUE * values


class LRU(Generic[K, V]):
    """A small thread-safe bounded mapping; the least recently used entry leaves first.

    Bounded by entries and, with `weigh`, by the estimated bytes of its values: a value heavier
    than `max_bytes` on its own is not kept.
    """

    def __init__(self, max_entries: int, max_bytes: int | None = None,
                 weigh: Callable[[V], int] | None = None) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.weigh = weigh
        self.bytes = 0
        self._data: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        with self._lock:
            if key not in self._data:
                return None
            self._data.move_to_end(key)
            return self._data[key][0]

    def put(self, key: K, value: V) -> None:
        cost = self.weigh(value) if self.weigh else 0
        with self._lock:
            old = self._data.pop(key, None)
            if old is not None:
                self.bytes -= old[1]
            if self.max_bytes is not None and cost > self.max_bytes:
                return
            self._data[key] = (value, cost)
            self.bytes += cost
            while len(self._data) > self.max_entries or (self.max_bytes is not None and self.bytes > self.max_bytes):
                self.bytes -= self._data.popitem(last=False)[1][1]

    def __len__(self) -> int:
        return len(self._data)


@dataclass
class ResolverStats:
    """Counters for metrics and benchmarks."""

    lookups: int = 0
    cache_hits: int = 0
    fetches: int = 0
    tag_rechecks: int = 0
    coalesced: int = 0
    refused_busy: int = 0  # lookups refused because too many were already waiting on registries


class SchemaResolver:
    """Looks up model images: cached, coalesced, and safe to call from many threads.

    A lookup has one deadline (the client's `lookup_timeout`) for all its requests; a lookup that
    joins another one's fetch waits for it no longer than its own deadline. At most
    `max_fetches` fetches run at once, `max_fetches_per_registry` per registry host, so slow
    registries never hold more than that many of the caller's threads; a lookup that finds no
    free slot within `slot_wait` seconds fails, retryable.
    """

    def __init__(
        self,
        client: RegistryClient | None = None,
        *,
        tag_ttl: float = 60.0,
        max_entries: int = 512,
        max_bytes: int = DEFAULT_CACHE_BYTES,
        max_fetches: int = 8,
        max_fetches_per_registry: int = 4,
        slot_wait: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client or RegistryClient()
        self.tag_ttl = tag_ttl
        self.clock = clock
        self.max_fetches = max_fetches
        self.max_fetches_per_registry = max_fetches_per_registry
        self.slot_wait = slot_wait
        self._by_digest: LRU[tuple[str, tuple[str, ...]], ResolvedModel] = LRU(
            max_entries, max_bytes, lambda model: model.footprint)
        self._tags: LRU[tuple[str, tuple[str, ...]], tuple[str, float]] = LRU(max_entries)
        self._inflight: dict[tuple[str, tuple[str, ...]], Future[ResolvedModel]] = {}
        self._lock = threading.Lock()
        self._slots = threading.Condition()
        self._fetching: dict[str, int] = {}
        self.stats = ResolverStats()

    def resolve(self, image: str, keyring: Keyring | None = None) -> ResolvedModel:
        """The model at `image` (tag or digest), pinned, with its schema; or a RegistryError."""
        deadline = Deadline.after(self.client.lookup_timeout)
        try:
            reference = parse_reference(image)
        except ReferenceError as error:
            raise RegistryError(RegistryErrorKind.INVALID_REFERENCE, str(error)) from None
        credentials = (keyring or Keyring()).lookup(reference)
        identity = tuple(c.fingerprint() for c in credentials)
        key = (str(reference), identity)
        self.stats.lookups += 1
        cached = self._cached(reference, identity)
        if cached is not None:
            self.stats.cache_hits += 1
            return cached
        with self._lock:
            cached = self._cached(reference, identity)
            if cached is not None:
                self.stats.cache_hits += 1
                return cached
            future = self._inflight.get(key)
            leader = future is None
            if future is None:
                future = Future()
                self._inflight[key] = future
        if not leader:
            self.stats.coalesced += 1
            try:
                return future.result(timeout=max(0.0, deadline.remaining()))
            except TimeoutError:
                raise RegistryError(
                    RegistryErrorKind.UNAVAILABLE,
                    f"image {reference}: the lookup did not finish within {deadline.budget:g}s (an earlier lookup "
                    "of the same image is still waiting for the registry); try again later",
                ) from None
        try:
            with self._slot(reference, deadline):
                model = self._fetch(reference, credentials, identity, deadline)
        except BaseException as error:
            future.set_exception(error)
            raise
        else:
            future.set_result(model)
            return model
        finally:
            with self._lock:
                del self._inflight[key]

    @contextmanager
    def _slot(self, reference: ImageReference, deadline: Deadline) -> Iterator[None]:
        """Hold one of the fetch slots (overall and for the registry host) while fetching."""
        host = reference.api_host
        give_up = time.monotonic() + min(self.slot_wait, max(0.0, deadline.remaining()))
        with self._slots:
            while True:
                running = sum(self._fetching.values())
                here = self._fetching.get(host, 0)
                if running < self.max_fetches and here < self.max_fetches_per_registry:
                    break
                left = give_up - time.monotonic()
                if left <= 0:
                    self.stats.refused_busy += 1
                    busy = (f"{here} lookups at {host} are still waiting for it"
                            if here >= self.max_fetches_per_registry
                            else f"{running} registry lookups are still in progress")
                    raise RegistryError(RegistryErrorKind.UNAVAILABLE,
                                        f"image {reference}: not looked up now: {busy}; try again later")
                self._slots.wait(left)
            self._fetching[host] = here + 1
        try:
            yield
        finally:
            with self._slots:
                self._fetching[host] -= 1
                if not self._fetching[host]:
                    del self._fetching[host]
                self._slots.notify_all()

    def _cached(self, reference: ImageReference, identity: tuple[str, ...]) -> ResolvedModel | None:
        if reference.digest:
            return self._by_digest.get((reference.pinned(reference.digest), identity))
        entry = self._tags.get((str(reference), identity))
        if entry is None or entry[1] <= self.clock():
            return None
        return self._by_digest.get((reference.pinned(entry[0]), identity))

    def _fetch(self, reference: ImageReference, credentials: Any, identity: tuple[str, ...],
               deadline: Deadline) -> ResolvedModel:
        if reference.tag and not reference.digest and self._tags.get((str(reference), identity)) is not None:
            self.stats.tag_rechecks += 1
            digest = self.client.head_digest(reference, credentials, deadline)
            known = self._by_digest.get((reference.pinned(digest), identity))
            if known is not None:
                self._tags.put((str(reference), identity), (digest, self.clock() + self.tag_ttl))
                return known
        self.stats.fetches += 1
        model = model_from_config(self.client.fetch_config(reference, credentials, deadline))
        self._by_digest.put((reference.pinned(model.digest), identity), model)
        if reference.tag and not reference.digest:
            self._tags.put((str(reference), identity), (model.digest, self.clock() + self.tag_ttl))
        return model
