"""Delivering the webhook events `notify` decides on: off the handler path, bounded, at least once.

The Trainings' watch offers each Training it shows (`Notifier.offer`, in the event loop, no I/O); one
task of the operator hands the events that are due to a few threads of their own (`WORKERS`), one
Training at a time in each, its events in order. An event recorded in status.notifications (start,
output, completed) is retried with backoff until it is delivered or given up, and recorded either way,
so an operator that restarts sends what it had not, and nothing twice it knew was delivered. `logs`
events are coalesced (the latest state, at most every `LOGS_INTERVAL` seconds), tried once and not
recorded: the next one, or `completed`, carries the log tail anyway. Nothing here changes a Training's
outcome: a delivery's only writes are status.notifications and Events.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import concurrent.futures
import contextvars
import datetime
import functools
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import urlsplit

import kopf
import urllib3
import urllib3.connection
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from . import api, metrics, notify
from .contract import Reason
from .settings import Settings

LOGGER = logging.getLogger("cogtrain.notifier")
WORKERS = 4  # threads delivering; one Training at a time on each
MAX_OUTBOXES = 10_000  # Trainings with events waiting; more are offered again by their next watch event
MAX_OUTBOXES_PER_NAMESPACE = 1_000  # of those, one namespace's: one tenant cannot fill the operator's outbox
RESPONSE_BYTES = 64 * 1024  # of an answer read, at most (only its status matters)
SECRET_TTL = 30.0  # seconds a signing secret read is reused
SECRETS_MAX = 1024  # signing secrets read kept before the expired ones are dropped
TICK = 0.25  # seconds between two looks for due events

Resolve = Callable[[str, int], list[str]]
Post = Callable[[str, list[str], bytes, dict[str, str]], int | None]


def resolve(host: str, port: int) -> list[str]:
    """The addresses of `host`, as the system resolver gives them (once per attempt)."""
    return [str(info[4][0]) for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)]


class Deadline:
    """The time limit of one delivery: when it passes, the connections it watches are shut, so a receiver
    that drips its answer a byte at a time (each within the read timeout) holds a thread no longer."""

    def __init__(self, seconds: float) -> None:
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        self._passed = False
        self._timer = threading.Timer(seconds, self.expire)
        self._timer.daemon = True
        self._timer.start()

    def watch(self, sock: socket.socket) -> None:
        """Watch a connection's socket. A duplicate is kept: TLS takes the socket's descriptor over (the object
        given here is left detached), and shutting a duplicate shuts the connection itself."""
        sock = sock.dup()
        with self._lock:
            self._socks.append(sock)
            if self._passed:
                _shut(sock)

    def expire(self) -> None:
        with self._lock:  # never a socket `cancel` is closing
            self._passed = True
            for sock in self._socks:
                _shut(sock)

    def cancel(self) -> None:
        self._timer.cancel()
        with self._lock:
            for sock in self._socks:
                sock.close()
            self._socks = []


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)  # a read blocked on it returns at once
    except OSError:
        pass


class _Watched(urllib3.connection.HTTPConnection):
    def __init__(self, *args: Any, deadline: Deadline, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.deadline = deadline

    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        self.deadline.watch(sock)
        return sock


class _WatchedTLS(_Watched, urllib3.connection.HTTPSConnection):
    pass


class _Pool(urllib3.HTTPConnectionPool):
    ConnectionCls = _Watched


class _TLSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _WatchedTLS


def post(url: str, addresses: list[str], body: bytes, headers: dict[str, str], timeout: float,
         ca_file: str | None) -> int | None:
    """POST `body` to `url` at one of the checked `addresses` (never a second lookup), TLS verified for the
    URL's host, no redirect followed, at most `timeout` for connecting and as long for the answer, and
    twice `timeout` in all (`Deadline`). The answer's status, or None when none came."""
    parts = urlsplit(url)
    host = str(parts.hostname)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    limits = urllib3.Timeout(connect=timeout, read=timeout)
    deadline = Deadline(2 * timeout)
    try:
        for address in addresses[:3]:
            pool: urllib3.HTTPConnectionPool
            if parts.scheme == "https":
                context = ssl.create_default_context(cafile=ca_file)
                pool = _TLSPool(address, port, ssl_context=context, server_hostname=host, assert_hostname=host,
                                retries=False, timeout=limits, maxsize=1, deadline=deadline)
            else:
                pool = _Pool(address, port, retries=False, timeout=limits, maxsize=1, deadline=deadline)
            try:
                answer = pool.urlopen("POST", path, body=body, headers={**headers, "Host": parts.netloc},
                                      redirect=False, retries=False, preload_content=False, assert_same_host=False)
                try:
                    answer.read(RESPONSE_BYTES)
                except (urllib3.exceptions.HTTPError, OSError):
                    pass
                answer.release_conn()
                return int(answer.status)
            except urllib3.exceptions.NewConnectionError:
                continue  # not listening at this address: the next one, if any
            except (urllib3.exceptions.HTTPError, OSError) as error:
                LOGGER.debug("webhook to %s failed: %r", host, error)
                return None
            finally:
                pool.close()
        return None
    finally:
        deadline.cancel()


@dataclass
class Outbox:
    """One Training's events waiting to be delivered, and what became of those sent."""

    key: tuple[str, str]
    body: dict[str, Any]  # the Training as its watch last showed it
    context: contextvars.Context  # kopf's, to post Events from a delivery thread
    events: list[str] = field(default_factory=list)  # recorded events due, in order
    snapshots: dict[str, dict[str, Any]] = field(default_factory=dict)  # each due event's Training, as first seen
    done: dict[str, str] = field(default_factory=dict)  # event -> "delivered"/"failed", not yet in status
    attempts: int = 0  # failed attempts of the head event
    first_attempt: float | None = None
    next_at: float = 0.0
    total_attempts: int = 0
    last_error: str | None = None
    logs: str | None = None  # fingerprint of the log state to send
    logs_sent: str | None = None
    logs_at: float = float("-inf")
    busy: bool = False
    refused: bool = False


def _slim(body: Mapping[str, Any]) -> dict[str, Any]:
    meta = body.get("metadata") or {}
    return {"apiVersion": body.get("apiVersion", api.API_VERSION), "kind": body.get("kind", api.KIND),
            "metadata": {k: meta.get(k) for k in ("name", "namespace", "uid", "creationTimestamp")},
            "spec": {k: v for k, v in (body.get("spec") or {}).items()
                     if k in ("model", "input", "secretInputs", "webhook", "webhookEventsFilter", "webhookSecretRef")},
            "status": dict(body.get("status") or {})}


class Notifier:
    """The operator's deliveries: fed by `offer`, run by `run` (a task) on `WORKERS` threads."""

    def __init__(self, settings: Settings, api_client: client.ApiClient, *, request_timeout: float = 30.0,
                 now: Callable[[], float] = time.monotonic, resolver: Resolve = resolve,
                 clock: Callable[[], datetime.datetime] = lambda: datetime.datetime.now(datetime.UTC)) -> None:
        self.settings = settings
        self.api_client = api_client
        self.request_timeout = request_timeout
        self.now, self.clock, self.resolve = now, clock, resolver
        self.rules = settings.destinations()
        self.policy = settings.retry_policy()
        self.executor = concurrent.futures.ThreadPoolExecutor(WORKERS, thread_name_prefix="cogtrain-notify")
        self._lock = threading.Lock()
        self._boxes: dict[str, Outbox] = {}
        self._per_namespace: collections.Counter[str] = collections.Counter()
        self._secrets: dict[tuple[str, str, str], tuple[float, bytes | str]] = {}
        self._busy = 0
        self._served: dict[str, int] = {}  # namespace -> the turn it was last given a thread
        self._turn = 0

    # --- fed from the Trainings' watch (event loop) ---

    def offer(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        """The Training as its watch shows it now: queue the events it is owed (no I/O)."""
        uid = str((body.get("metadata") or {}).get("uid") or "")
        if not uid:
            return
        with self._lock:
            box = self._boxes.get(uid)
            if event_type == "DELETED":
                self._drop(uid)
                return
            if box is None and not (body.get("spec") or {}).get("webhook"):
                return
            due, logs = notify.due_events(body), notify.logs_key(body)
            if box is None:
                if not due and logs is None:
                    return
                meta = body.get("metadata") or {}
                namespace = str(meta.get("namespace"))
                if len(self._boxes) >= MAX_OUTBOXES or self._per_namespace[namespace] >= MAX_OUTBOXES_PER_NAMESPACE:
                    LOGGER.warning("too many Trainings with webhook events waiting%s; %s waits for its next event",
                                   "" if len(self._boxes) >= MAX_OUTBOXES else f" in {namespace}", uid)
                    return
                box = self._boxes[uid] = Outbox((namespace, str(meta.get("name"))), _slim(body),
                                                contextvars.copy_context())
                self._per_namespace[namespace] += 1
            box.body = _slim(body)
            seen = notify.recorded(body)
            box.done = {event: what for event, what in box.done.items() if event not in seen}
            box.events = [event for event in due if event not in box.done] if not box.refused else []
            for event in box.events:  # an event describes the Training as it was when it happened
                box.snapshots.setdefault(event, box.body)
            if logs is not None:
                box.logs = logs
            self._forget_if_idle(uid, box)

    def _forget_if_idle(self, uid: str, box: Outbox) -> None:
        finished = (box.body.get("status") or {}).get("phase") in notify.FINISHED
        # kept while it runs only to remember which log state was sent (a Training asking for `logs`)
        if not box.busy and not box.events and not box.done and (finished or box.refused or box.logs is None):
            self._drop(uid)

    def _drop(self, uid: str) -> None:
        box = self._boxes.pop(uid, None)
        if box is not None:
            self._per_namespace[box.key[0]] -= 1
            if self._per_namespace[box.key[0]] <= 0:
                del self._per_namespace[box.key[0]]

    # --- the task ---

    async def run(self) -> None:
        """Hand due events to the delivery threads, for as long as the operator runs."""
        loop = asyncio.get_running_loop()
        while True:
            for uid, box in self._ready():
                future = loop.run_in_executor(self.executor, box.context.run, self._deliver, uid, box)
                future.add_done_callback(functools.partial(self._report, uid))
            await asyncio.sleep(TICK)

    def _ready(self) -> list[tuple[str, Outbox]]:
        """Outboxes with something due, as many as there are idle threads, shared between namespaces: each
        goes to the namespace with the fewest deliveries in flight, then to the one served longest ago, so
        one tenant's slow or failing receivers cannot hold every thread while another's events wait."""
        now = self.now()
        found: list[tuple[str, Outbox]] = []
        with self._lock:
            if self._busy >= WORKERS:
                return found
            waiting: dict[str, list[tuple[str, Outbox]]] = {}
            running: dict[str, int] = {}
            for uid, box in self._boxes.items():
                namespace = box.key[0]
                if box.busy:
                    running[namespace] = running.get(namespace, 0) + 1
                    continue
                logs_due = (box.logs is not None and box.logs != box.logs_sent
                            and now >= box.logs_at + notify.LOGS_INTERVAL and not box.refused)
                if (box.events and now >= box.next_at) or logs_due:
                    waiting.setdefault(namespace, []).append((uid, box))
            while self._busy < WORKERS and waiting:
                namespace = min(waiting, key=lambda ns: (running.get(ns, 0), self._served.get(ns, 0)))
                uid, box = waiting[namespace].pop(0)
                if not waiting[namespace]:
                    del waiting[namespace]
                running[namespace] = running.get(namespace, 0) + 1
                self._turn += 1
                self._served[namespace] = self._turn
                box.busy = True
                self._busy += 1
                found.append((uid, box))
        return found

    def _report(self, uid: str, future: asyncio.Future[None]) -> None:
        with self._lock:
            box = self._boxes.get(uid)
            self._busy -= 1
            if box is not None:
                box.busy = False
                self._forget_if_idle(uid, box)
        if not future.cancelled() and (error := future.exception()) is not None:
            LOGGER.error("a webhook delivery for Training %s failed: %r", uid, error)

    def stop(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)

    # --- one delivery (a thread) ---

    def _deliver(self, uid: str, box: Outbox) -> None:
        with self._lock:
            event = box.events[0] if box.events and self.now() >= box.next_at else None
            logs = box.logs if event is None else None
            body = dict(box.snapshots.get(event, box.body) if event else box.body)
        if event is None and logs is None:
            return
        name = event or "logs"
        started = time.perf_counter()
        try:
            verdict, reason, detail = self._attempt(uid, name, body)
        except notify.Refused as refused:
            metrics.WEBHOOK_DELIVERIES.labels(name, "give_up").inc()
            metrics.WEBHOOK_FAILURES.labels("refused").inc()
            self._refuse(uid, box, str(refused))
            return
        except Exception as error:  # unforeseen (a name the resolver cannot encode, ...): a failed attempt, backed off
            LOGGER.warning("a webhook attempt for Training %s/%s failed: %r", *box.key, error)
            verdict, reason, detail = "retry", "error", f"{name}: the attempt failed ({type(error).__name__})"
        metrics.WEBHOOK_LATENCY.labels(name).observe(time.perf_counter() - started)
        metrics.WEBHOOK_DELIVERIES.labels(name, verdict).inc()
        if verdict != "delivered":
            metrics.WEBHOOK_FAILURES.labels(reason).inc()
        if event is None:
            with self._lock:
                box.logs_sent, box.logs_at = logs, self.now()
            return
        self._settle(uid, box, event, verdict, detail)

    def _attempt(self, uid: str, event: str, body: Mapping[str, Any]) -> tuple[notify.Verdict, str, str]:
        """One POST of `event`: (verdict, reason label, what went wrong). `notify.Refused` when the URL may
        never be reached."""
        spec = body.get("spec") or {}
        url = str(spec.get("webhook"))
        scheme, host, port = notify.target(url, self.rules)
        key = self._signing_key(body)
        if isinstance(key, str):
            return "retry", "secret", key
        try:
            addresses = self.resolve(host, port)
        except OSError as error:
            return "retry", "connection", f"resolving {host} failed: {error}"
        checked = notify.check_addresses(host, addresses, self.rules)
        document = notify.payload(body)
        data = notify.encode(document)
        message_id = notify.webhook_id(uid, event if event != "logs" else str(notify.logs_key(body)))
        sent = notify.headers(key, message_id, int(self.clock().timestamp()), data)
        status = post(url, checked, data, sent, self.settings.webhook_timeout_seconds, self.settings.webhook_ca_bundle)
        verdict, reason = notify.judge(status)
        detail = "no answer (connection failed or timed out)" if status is None else f"HTTP {status}"
        return verdict, reason, f"{event}: {detail} from {scheme}://{host}"

    def _signing_key(self, body: Mapping[str, Any]) -> bytes | str:
        """The signing key, or why there is none (a message naming the Secret, never its value)."""
        spec, meta = body.get("spec") or {}, body.get("metadata") or {}
        ref = spec.get("webhookSecretRef") or {}
        name, item = ref.get("name") or self.settings.webhook_secret, ref.get("key") or self.settings.webhook_secret_key
        if not name:
            return "no signing secret: set spec.webhookSecretRef, or the operator's default webhook Secret"
        cache = (str(meta.get("namespace")), str(name), str(item))
        now = self.now()
        with self._lock:
            cached = self._secrets.get(cache)
        if cached is not None and cached[0] > now:
            return cached[1]
        found: bytes | str
        try:
            secret = client.CoreV1Api(self.api_client).read_namespaced_secret(
                name, cache[0], _request_timeout=self.request_timeout)
            raw = (secret.data or {}).get(item)
            if raw is None:
                found = f"the webhook signing Secret {name} cannot be read or has no key {item}"
            else:
                found = notify.signing_key(base64.b64decode(raw))
        except ApiException:
            found = f"the webhook signing Secret {name} cannot be read or has no key {item}"
        except notify.SecretError as error:
            found = f"the webhook signing Secret {name}, key {item}: {error}"
        with self._lock:
            if len(self._secrets) >= SECRETS_MAX:  # Secrets named once (one per Training) are not kept forever
                self._secrets = {k: v for k, v in self._secrets.items() if v[0] > now}
            self._secrets[cache] = (now + SECRET_TTL, found)
        return found

    def _settle(self, uid: str, box: Outbox, event: str, verdict: notify.Verdict, detail: str) -> None:
        """After an attempt at a recorded event: next attempt, or delivered/given up, recorded in status."""
        now = self.now()
        with self._lock:
            box.total_attempts += 1
            if box.first_attempt is None:
                box.first_attempt = now
            delay = None
            if verdict == "retry":
                box.attempts += 1
                delay = notify.next_delay(box.attempts, now - box.first_attempt, self.policy)
            if verdict != "delivered":
                box.last_error = detail
            if delay is not None:
                box.next_at = now + delay
            else:
                if box.events and box.events[0] == event:
                    box.events.pop(0)
                box.done[event] = "delivered" if verdict == "delivered" else "failed"
                box.snapshots.pop(event, None)
                box.attempts, box.first_attempt, box.next_at = 0, None, 0.0
        if verdict != "delivered":
            LOGGER.info("webhook of Training %s/%s: %s%s", *box.key, detail, "" if delay is not None else "; given up")
        if delay is None and verdict != "delivered":
            self._event(box, Reason.WEBHOOK_FAILED, f"gave up the webhook's {detail}")
        self._record(box)

    def _refuse(self, uid: str, box: Outbox, message: str) -> None:
        with self._lock:
            box.refused = True
            box.last_error = message
            for event in box.events:
                box.done[event] = "failed"
            box.events, box.snapshots = [], {}
        LOGGER.info("webhook of Training %s/%s refused: %s", *box.key, message)
        self._event(box, Reason.WEBHOOK_REFUSED, message)
        self._record(box)

    def _event(self, box: Outbox, reason: Reason, message: str) -> None:
        try:
            kopf.warn(cast(kopf.Body, box.body), reason=reason, message=message)
        except Exception as error:  # an Event is a courtesy: never fail a delivery for it
            LOGGER.debug("posting an Event failed: %r", error)

    def _record(self, box: Outbox) -> None:
        """status.notifications: what was delivered or given up (merged with what status shows)."""
        with self._lock:
            notes = dict((box.body.get("status") or {}).get("notifications") or {})
            delivered = list(dict.fromkeys([*(notes.get("delivered") or []),
                                            *(e for e, what in box.done.items() if what == "delivered")]))
            failed = list(dict.fromkeys([*(notes.get("failed") or []),
                                         *(e for e, what in box.done.items() if what == "failed")]))
            record = {
                "delivered": delivered[-8:], "failed": failed[-8:],
                "attempts": int(notes.get("attempts") or 0) + box.total_attempts,
                "lastAttemptTime": self.clock().strftime("%Y-%m-%dT%H:%M:%SZ"),
            }
            if box.last_error:
                record["lastError"] = box.last_error[:1024]
            box.total_attempts = 0
            namespace, name = box.key
            uid = (box.body.get("metadata") or {}).get("uid")
        # guarded by the uid: a Training deleted mid-delivery and created again under its name is not this one
        patch: list[dict[str, Any]] = [{"op": "test", "path": "/metadata/uid", "value": uid},
                                       {"op": "add", "path": "/status/notifications", "value": record}]
        for attempt in range(3):
            try:
                client.CustomObjectsApi(self.api_client).patch_namespaced_custom_object_status(
                    api.GROUP, api.VERSION, namespace, api.PLURAL, name, patch,
                    _content_type="application/json-patch+json", _request_timeout=self.request_timeout)
                with self._lock:
                    status = box.body.setdefault("status", {})
                    status["notifications"] = record
                return
            except ApiException as error:
                if error.status in (404, 422):  # gone, or another Training under its name (the uid test failed)
                    LOGGER.info("not recording the webhook of Training %s/%s: %s", namespace, name, error.reason)
                    return
                LOGGER.warning("recording the webhook of Training %s/%s failed: %s", namespace, name, error.reason)
            except (urllib3.exceptions.HTTPError, OSError) as error:
                LOGGER.warning("recording the webhook of Training %s/%s failed: %r", namespace, name, error)
            time.sleep(0.5 * 2**attempt)
