"""The operator's own view of its Trainings, Jobs and Pods: only the fields the status is computed from.

kopf's `@kopf.index` keeps whole bodies and holds every handler back until every indexed object is
indexed (a gate whose cost grows with the square of the objects at start-up). This view is filled by
small event handlers instead and keeps, per Training (namespace, name):

- its Jobs and Pods (those labelled for it), slimmed to what `status.observe`, `status.disruptions_of`
  and the ownership check read, while the Training is not finished;
- the Training itself, slimmed to what a status write needs, while it is not finished;
- only its key once it is finished (Succeeded, Failed, Canceled): a finished status is final, so the
  Jobs and Pods of a finished Training are never looked at again.

Pure: no I/O. Updated from the event loop and read from handler threads, under one lock.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from .jobs import KUEUE_QUEUE_LABEL, LABEL_TRAINING
from .status import disruptions_of

Key = tuple[str, str]
Kind = Literal["jobs", "pods"]
Shape = Mapping[str, Any]
WHOLE = True  # in a shape: keep the value as it is

FINISHED = frozenset({"Succeeded", "Failed", "Canceled"})
UNHANDLED_LIMIT = 120.0
"""Seconds a Training waiting for its first handling counts as a burst of creations under way (`View.handling`):
one never handled (its handler fails each time, or deleted while the watch was down) holds nothing back for good."""

_CONDITION: Shape = {"type": WHOLE, "status": WHOLE, "reason": WHOLE, "message": WHOLE, "lastTransitionTime": WHOLE}
_OWNER: Shape = {"apiVersion": WHOLE, "kind": WHOLE, "name": WHOLE, "uid": WHOLE, "controller": WHOLE}
_META: Shape = {"name": WHOLE, "namespace": WHOLE, "uid": WHOLE, "creationTimestamp": WHOLE,
                "deletionTimestamp": WHOLE, "ownerReferences": [_OWNER],
                "labels": {LABEL_TRAINING: WHOLE, KUEUE_QUEUE_LABEL: WHOLE}}

JOB: Shape = {
    "apiVersion": WHOLE, "kind": WHOLE, "metadata": _META,
    "spec": {"suspend": WHOLE},
    "status": {"conditions": [_CONDITION], "startTime": WHOLE, "completionTime": WHOLE},
}
_CONTAINER: Shape = {"name": WHOLE, "resources": {"limits": {"memory": WHOLE}}}
_CONTAINER_STATUS: Shape = {"name": WHOLE, "state": WHOLE, "lastState": WHOLE}
POD: Shape = {
    "apiVersion": WHOLE, "kind": WHOLE, "metadata": _META,
    "spec": {"nodeName": WHOLE, "initContainers": [_CONTAINER], "containers": [_CONTAINER]},
    "status": {"phase": WHOLE, "reason": WHOLE, "message": WHOLE, "startTime": WHOLE, "conditions": [_CONDITION],
               "initContainerStatuses": [_CONTAINER_STATUS], "containerStatuses": [_CONTAINER_STATUS]},
}
TRAINING: Shape = {
    "apiVersion": WHOLE, "kind": WHOLE,
    "metadata": {"name": WHOLE, "namespace": WHOLE, "uid": WHOLE, "generation": WHOLE, "resourceVersion": WHOLE,
                 "deletionTimestamp": WHOLE},
    "spec": {"activeDeadlineSeconds": WHOLE, "maxRestarts": WHOLE, "suspend": WHOLE, "cancel": WHOLE},
    "status": WHOLE,
}


def slim(value: Any, shape: Any) -> Any:
    """`value` with only the keys `shape` names (a list shape applies to each item); absent keys stay absent."""
    if shape is WHOLE:
        return value
    if isinstance(shape, list):
        return [slim(item, shape[0]) for item in value] if isinstance(value, list) else value
    if not isinstance(value, Mapping):
        return value
    return {key: slim(value[key], sub) for key, sub in shape.items() if key in value}


def _without_kopf(training: dict[str, Any]) -> dict[str, Any]:
    """A slim Training without status.kopf: kopf's diff-base is there (storage.py), the spec with its inputs (up to
    1 MiB) and annotations as JSON, and kopf's progress; no status write or check reads them."""
    status = training.get("status")
    if isinstance(status, Mapping) and "kopf" in status:
        return {**training, "status": {key: value for key, value in status.items() if key != "kopf"}}
    return training


def training_key(body: Mapping[str, Any]) -> Key:
    meta = body.get("metadata") or {}
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


def child_key(body: Mapping[str, Any]) -> Key:
    """The Training a Job or Pod is labelled for."""
    meta = body.get("metadata") or {}
    return str(meta.get("namespace") or ""), str((meta.get("labels") or {}).get(LABEL_TRAINING) or "")


class View:
    """Slim Jobs, Pods and Trainings by Training, as the watches last showed them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._children: dict[str, dict[Key, dict[str, dict[str, Any]]]] = {"jobs": {}, "pods": {}}
        self._active: dict[Key, dict[str, Any]] = {}
        self._finished: set[Key] = set()
        # seen with no status phase yet (no handler has run for them), each since when: oldest first
        self._unhandled: dict[Key, float] = {}

    def training_seen(self, event_type: str | None, body: Mapping[str, Any], now: float | None = None) -> Key:
        """A Training's watch event. A finished or deleted Training's Jobs and Pods are dropped."""
        key = training_key(body)
        phase = (body.get("status") or {}).get("phase")
        with self._lock:
            if event_type == "DELETED" or phase or (body.get("metadata") or {}).get("deletionTimestamp"):
                self._unhandled.pop(key, None)
            else:
                self._unhandled.setdefault(key, time.monotonic() if now is None else now)
            if event_type == "DELETED" or phase in FINISHED:
                self._active.pop(key, None)
                for children in self._children.values():
                    children.pop(key, None)
                if event_type == "DELETED":
                    self._finished.discard(key)
                else:
                    self._finished.add(key)
            else:
                self._finished.discard(key)
                self._active[key] = _without_kopf(slim(dict(body), TRAINING))
        return key

    def child_seen(self, kind: Kind, event_type: str | None, body: Mapping[str, Any]) -> Key:
        """A Job's or Pod's watch event (kept only while its Training may still change). A disrupted Pod is kept
        after its deletion while its Training is active: it is gone as soon as it stops, maybe before a status
        thread counted the restart (then only the Training's end, or deletion, drops it)."""
        key = child_key(body)
        uid = str((body.get("metadata") or {}).get("uid") or "")
        with self._lock:
            by_training = self._children[kind]
            kept = kind == "pods" and key in self._active and bool(disruptions_of([body]))
            if (event_type == "DELETED" and not kept) or key in self._finished:
                found = by_training.get(key)
                if found is not None and uid in found:
                    rest = {k: v for k, v in found.items() if k != uid}  # copied: readers hold the old one
                    if rest:
                        by_training[key] = rest
                    else:
                        del by_training[key]
            else:
                by_training[key] = {**by_training.get(key, {}), uid: slim(dict(body), JOB if kind == "jobs" else POD)}
        return key

    def children(self, key: Key) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The Jobs and the Pods of the Training `key`."""
        with self._lock:
            return (list(self._children["jobs"].get(key, {}).values()),
                    list(self._children["pods"].get(key, {}).values()))

    def handling(self, now: float | None = None) -> bool:
        """Whether a Training waits for its first handling, since less than UNHANDLED_LIMIT (a burst of creations
        under way): the newest one is the last seen (O(1), asked on every event)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            return bool(self._unhandled) and now - next(reversed(self._unhandled.values())) < UNHANDLED_LIMIT

    def finished(self, key: Key) -> bool:
        with self._lock:
            return key in self._finished

    def known(self, key: Key) -> bool:
        """Whether the Training's own watch has shown it (and not its deletion)."""
        with self._lock:
            return key in self._finished or key in self._active

    def training(self, key: Key) -> dict[str, Any] | None:
        """The slim Training as its watch last showed it, while it is not finished."""
        with self._lock:
            return self._active.get(key)

    def active(self) -> list[tuple[Key, dict[str, Any]]]:
        """Every Training not finished, slim, with its key."""
        with self._lock:
            return list(self._active.items())

    def sizes(self) -> dict[str, int]:
        with self._lock:
            return {"active": len(self._active), "finished": len(self._finished), "unhandled": len(self._unhandled),
                    **{kind: sum(map(len, found.values())) for kind, found in self._children.items()}}


class Coalescer:
    """One worker per key at a time; a request while it works makes it go once more, however many came."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: set[Key] = set()
        self._again: set[Key] = set()

    def enter(self, key: Key) -> bool:
        """True: the caller works on `key` (and calls `leave`); False: the one working on it goes once more."""
        with self._lock:
            if key in self._running:
                self._again.add(key)
                return False
            self._running.add(key)
            return True

    def leave(self, key: Key, force: bool = False) -> bool:
        """True: done with `key`; False: asked for again meanwhile, so work once more (then leave again)."""
        with self._lock:
            if key in self._again and not force:
                self._again.discard(key)
                return False
            self._again.discard(key)
            self._running.discard(key)
            return True


class Deferred:
    """Trainings whose status write waits (for the event loop only: no lock), each since when it first did."""

    def __init__(self) -> None:
        self._since: dict[Key, float] = {}

    def hold(self, key: Key, now: float) -> None:
        self._since.setdefault(key, now)

    def drop(self, key: Key) -> None:
        self._since.pop(key, None)

    def due(self, now: float, limit: float, everything: bool = False) -> list[Key]:
        """The keys to write now (and no longer held): all of them, or those held `limit` seconds or more."""
        found = [key for key, since in self._since.items() if everything or now - since >= limit]
        for key in found:
            del self._since[key]
        return found

    def __len__(self) -> int:
        return len(self._since)


class Schedule:
    """When to look at a waiting Training: `delay` after it is first seen waiting, then every `interval`
    while it still waits; one that stops waiting starts afresh if it waits again."""

    def __init__(self, delay: float, interval: float) -> None:
        self.delay, self.interval = delay, interval
        self._next: dict[Key, float] = {}

    def due(self, now: float, waiting: Iterable[Key]) -> list[Key]:
        waiting = set(waiting)
        self._next = {key: at for key, at in self._next.items() if key in waiting}
        found = []
        for key in sorted(waiting):
            if now >= self._next.setdefault(key, now + self.delay):
                found.append(key)
                self._next[key] = now + self.interval
        return found


class Pacer:
    """Which running Trainings to read now: each `first` seconds after it is first seen, then every `interval`,
    and at most `rate` reads a second in all (a one-second burst; the reads `spend` reports count too). Past
    `rate * interval` Trainings the interval stretches, the most overdue first."""

    def __init__(self, interval: float, rate: float, first: float = 5.0) -> None:
        self.interval, self.rate, self.first = interval, rate, min(first, interval)
        self._next: dict[Key, float] = {}
        self._tokens = 0.0
        self._last: float | None = None

    def due(self, now: float, keys: Iterable[Key]) -> list[Key]:
        keys = set(keys)
        self._next = {key: at for key, at in self._next.items() if key in keys}
        for key in keys:
            self._next.setdefault(key, now + self.first)
        elapsed = 1.0 if self._last is None else now - self._last
        self._tokens = min(max(self.rate, 1.0), self._tokens + elapsed * self.rate)
        self._last = now
        ready = sorted((at, key) for key, at in self._next.items() if at <= now)[: max(0, int(self._tokens))]
        self._tokens -= len(ready)
        for _, key in ready:
            self._next[key] = now + self.interval
        return [key for _, key in ready]

    def spend(self, reads: int) -> None:
        """Reads made besides those `due` gave (a second read of one Training): fewer are due next."""
        self._tokens -= reads
