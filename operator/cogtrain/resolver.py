"""Resolve a model image to its digest and training schema, with a cache and one fetch per image.

Content under a digest never changes, so a schema is cached by digest (bounded, least recently
used first out); a tag is re-checked after a short TTL with one HEAD request. Concurrent
lookups of the same image share one fetch. Cache entries are keyed by the credentials used, so
one namespace's pull secret never answers another namespace's lookup.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from .credentials import Keyring
from .reference import ImageReference, ReferenceError, parse_reference
from .registry import ImageConfig, RegistryClient, RegistryError, RegistryErrorKind
from .schema import SchemaError, SchemaErrorKind, TrainingSchema, parse_schema_text

SCHEMA_LABELS = ("run.cog.openapi_schema", "org.cogmodel.openapi_schema")
CONFIG_LABEL = "run.cog.config"

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

    @property
    def pinned(self) -> str:
        return self.reference.pinned(self.digest)


def model_from_config(image: ImageConfig) -> ResolvedModel:
    """Read the Cog schema label of an image config, or say why the image is not usable."""
    text = next((image.labels[label] for label in SCHEMA_LABELS if label in image.labels), None)
    if not isinstance(text, str):
        raise RegistryError(
            RegistryErrorKind.NOT_COG,
            f"image {image.reference} is not a Cog model: its config has no run.cog.openapi_schema label "
            "(build and push it with `cog build` / `cog push`)",
        )
    try:
        schema = parse_schema_text(text)
    except SchemaError as error:
        kind = RegistryErrorKind.NO_TRAINING if error.kind is SchemaErrorKind.NO_TRAINING else \
            RegistryErrorKind.MALFORMED_SCHEMA
        raise RegistryError(kind, f"image {image.reference}: {error}") from None
    return ResolvedModel(reference=image.reference, digest=image.digest, schema=schema, schema_text=text,
                         labels=dict(image.labels))


class LRU(Generic[K, V]):
    """A small thread-safe bounded mapping; the least recently used entry leaves first."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._data: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        with self._lock:
            if key not in self._data:
                return None
            self._data.move_to_end(key)
            return self._data[key]

    def put(self, key: K, value: V) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.max_entries:
                self._data.popitem(last=False)

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


class SchemaResolver:
    """Looks up model images: cached, coalesced, and safe to call from many threads."""

    def __init__(
        self,
        client: RegistryClient | None = None,
        *,
        tag_ttl: float = 60.0,
        max_entries: int = 512,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client or RegistryClient()
        self.tag_ttl = tag_ttl
        self.clock = clock
        self._by_digest: LRU[tuple[str, tuple[str, ...]], ResolvedModel] = LRU(max_entries)
        self._tags: LRU[tuple[str, tuple[str, ...]], tuple[str, float]] = LRU(max_entries)
        self._inflight: dict[tuple[str, tuple[str, ...]], Future[ResolvedModel]] = {}
        self._lock = threading.Lock()
        self.stats = ResolverStats()

    def resolve(self, image: str, keyring: Keyring | None = None) -> ResolvedModel:
        """The model at `image` (tag or digest), pinned, with its schema; or a RegistryError."""
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
            return future.result()
        try:
            model = self._fetch(reference, credentials, identity)
        except BaseException as error:
            future.set_exception(error)
            raise
        else:
            future.set_result(model)
            return model
        finally:
            with self._lock:
                del self._inflight[key]

    def _cached(self, reference: ImageReference, identity: tuple[str, ...]) -> ResolvedModel | None:
        if reference.digest:
            return self._by_digest.get((reference.pinned(reference.digest), identity))
        entry = self._tags.get((str(reference), identity))
        if entry is None or entry[1] <= self.clock():
            return None
        return self._by_digest.get((reference.pinned(entry[0]), identity))

    def _fetch(self, reference: ImageReference, credentials: Any, identity: tuple[str, ...]) -> ResolvedModel:
        if reference.tag and not reference.digest and self._tags.get((str(reference), identity)) is not None:
            self.stats.tag_rechecks += 1
            digest = self.client.head_digest(reference, credentials)
            known = self._by_digest.get((reference.pinned(digest), identity))
            if known is not None:
                self._tags.put((str(reference), identity), (digest, self.clock() + self.tag_ttl))
                return known
        self.stats.fetches += 1
        model = model_from_config(self.client.fetch_config(reference, credentials))
        self._by_digest.put((reference.pinned(model.digest), identity), model)
        if reference.tag and not reference.digest:
            self._tags.put((str(reference), identity), (model.digest, self.clock() + self.tag_ttl))
        return model
