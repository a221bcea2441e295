"""Prometheus metrics of the operator: Trainings by phase, their latencies and failures, admission
decisions, and schema lookups.

Everything lives in one registry (`REGISTRY`) served by `serve`; nothing is global in
prometheus_client's default registry, so tests and several operators in one process don't clash.
Phase transitions are counted only when the operator saw the phase before (a restart must not
count old Trainings twice).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from .api import Phase
from .contract import Reason
from .resolver import ResolverStats

REGISTRY = CollectorRegistry(auto_describe=True)
PHASES = tuple(phase.value for phase in Phase)
FINISHED = (Phase.SUCCEEDED.value, Phase.FAILED.value, Phase.CANCELED.value)
_LATENCY_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 43200, 86400, float("inf"))

TIME_TO_START = Histogram(
    "cogtrain_training_time_to_start_seconds",
    "Seconds from a Training's creation until its training started running.",
    buckets=_LATENCY_BUCKETS, registry=REGISTRY,
)
TIME_TO_COMPLETION = Histogram(
    "cogtrain_training_time_to_completion_seconds",
    "Seconds from a Training's creation until it finished, by final phase.",
    ["phase"], buckets=_LATENCY_BUCKETS, registry=REGISTRY,
)
FAILURES = Counter(
    "cogtrain_training_failures", "Trainings that failed, by reason (the Failed condition's reason).",
    ["reason"], registry=REGISTRY,
)
ADMISSIONS = Counter(
    "cogtrain_admission_reviews",
    "Admission reviews answered, by operation and decision (allowed, denied, unchecked: allowed without a schema).",
    ["operation", "decision"], registry=REGISTRY,
)
ADMISSION_LATENCY = Histogram(
    "cogtrain_admission_duration_seconds", "Time to answer one admission review.",
    ["operation"], buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)

WEBHOOK_DELIVERIES = Counter(
    "cogtrain_webhook_deliveries",
    "Webhook delivery attempts, by event (start, output, logs, completed) and outcome (delivered, retry, give_up).",
    ["event", "outcome"], registry=REGISTRY,
)
WEBHOOK_FAILURES = Counter(
    "cogtrain_webhook_delivery_failures",
    "Failed webhook delivery attempts, by reason (connection, http_5xx, http_408, http_429, http_4xx, redirect, "
    "refused, secret, error).",
    ["reason"], registry=REGISTRY,
)
WEBHOOK_LATENCY = Histogram(
    "cogtrain_webhook_delivery_duration_seconds", "Time of one webhook delivery attempt, by event.",
    ["event"], buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30), registry=REGISTRY,
)


def _parse_time(value: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")) if value else None
    except ValueError:
        return None


def _failure_reason(status: Mapping[str, Any]) -> str:
    """The Failed condition's reason; anything that is not one of ours is `Unknown`, so whoever can
    write a status cannot grow the metric's label set."""
    for condition in status.get("conditions") or []:
        if condition.get("type") == "Failed" and condition.get("status") == "True":
            reason = condition.get("reason")
            return str(reason) if reason in Reason._value2member_map_ else "Unknown"
    return "Unknown"


class TrainingTracker(Collector):
    """The last phase seen of every Training; counts transitions and exports the phase gauge."""

    def __init__(self) -> None:
        self._phases: dict[str, str] = {}
        self._lock = threading.Lock()

    def observe(self, uid: str, body: Mapping[str, Any]) -> None:
        status = body.get("status") or {}
        phase = str(status.get("phase") or "Pending")
        with self._lock:
            before = self._phases.get(uid)
            self._phases[uid] = phase
        if before is None or before == phase:
            return
        created = _parse_time((body.get("metadata") or {}).get("creationTimestamp"))
        started = _parse_time(status.get("startTime"))
        completed = _parse_time(status.get("completionTime"))
        if phase == "Running" and created and started:
            TIME_TO_START.observe(max(0.0, (started - created).total_seconds()))
        if phase in FINISHED and before not in FINISHED:
            if created and completed:
                TIME_TO_COMPLETION.labels(phase).observe(max(0.0, (completed - created).total_seconds()))
            if phase == "Failed":
                FAILURES.labels(_failure_reason(status)).inc()

    def forget(self, uid: str) -> None:
        with self._lock:
            self._phases.pop(uid, None)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self._lock:
            counts = dict.fromkeys(PHASES, 0)
            for phase in self._phases.values():
                counts[phase] = counts.get(phase, 0) + 1
        family = GaugeMetricFamily("cogtrain_trainings", "Trainings the operator sees, by phase.", labels=["phase"])
        for phase, count in counts.items():
            family.add_metric([phase], count)
        yield family


class ResolverCollector(Collector):
    """Schema lookups of the registry resolver, read from its own counters at scrape time."""

    def __init__(self, stats: Callable[[], ResolverStats]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[CounterMetricFamily]:
        stats = self._stats()
        for name, value, help_text in (
            ("cogtrain_registry_lookups", stats.lookups, "Schema lookups asked of the resolver."),
            ("cogtrain_registry_cache_hits", stats.cache_hits, "Schema lookups answered from the cache."),
            ("cogtrain_registry_fetches", stats.fetches, "Schema lookups that fetched from a registry."),
            ("cogtrain_registry_coalesced", stats.coalesced, "Schema lookups that waited on an identical one."),
        ):
            yield CounterMetricFamily(name, help_text, value=value)


class ProgressGauge(Collector):
    """The progress of running Trainings, by namespace and name: a series only while a Training runs and has
    shown progress, at most MAX_SERIES of them (past that, new ones are not exported)."""

    MAX_SERIES = 2000

    def __init__(self) -> None:
        self._percent: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()

    def set(self, namespace: str, name: str, percent: float) -> None:
        with self._lock:
            if (namespace, name) in self._percent or len(self._percent) < self.MAX_SERIES:
                self._percent[namespace, name] = percent

    def forget(self, namespace: str, name: str) -> None:
        with self._lock:
            self._percent.pop((namespace, name), None)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("cogtrain_training_progress_percent",
                                   "Progress of running Trainings (0 to 100), from their logs.",
                                   labels=["namespace", "name"])
        with self._lock:
            for (namespace, name), percent in sorted(self._percent.items()):
                family.add_metric([namespace, name], percent)
        yield family


TRAININGS = TrainingTracker()
REGISTRY.register(TRAININGS)
PROGRESS = ProgressGauge()
REGISTRY.register(PROGRESS)
_resolver_collector: ResolverCollector | None = None


def watch_resolver(stats: Callable[[], ResolverStats]) -> None:
    """Export the counters of the resolver in use (the last one given, after a restart in tests)."""
    global _resolver_collector
    if _resolver_collector is not None:
        REGISTRY.unregister(_resolver_collector)
    _resolver_collector = ResolverCollector(stats)
    REGISTRY.register(_resolver_collector)


def serve(port: int, addr: str = "0.0.0.0") -> Any:
    """Serve /metrics on `port` in a daemon thread; returns the server (its .server_address, .shutdown())."""
    server, _thread = start_http_server(port, addr=addr, registry=REGISTRY)
    return server
