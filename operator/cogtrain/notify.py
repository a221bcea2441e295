"""Notifications, Replicate-compatible and signed the Standard Webhooks way: pure functions only.

What `notifier` (the delivery) decides with: which events a Training is owed (`due_events`), the
payload (`payload`, shaped like Replicate's training object, never with a Secret's value), the
signature headers (`sign`, `headers`), the retry schedule (`backoff`, `next_delay`), how an answer is
judged (`judge`), and whether a URL may be reached at all (`url_problem`, `check_addresses`). Name
resolution is passed in, so nothing here does I/O.
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
import hashlib
import hmac
import ipaddress
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

EVENTS: tuple[str, ...] = ("start", "output", "logs", "completed")
RECORDED = ("start", "output", "completed")  # delivered at least once, recorded in status.notifications
SECRET_MASK = "**********"  # what Cog's own Secret type prints instead of its value
URL_MAX = 2048
LOGS_INTERVAL = 5.0  # seconds: a `logs` event goes at most this often per Training, the latest state
LOGS_MAX_BYTES = 8192  # of the log tail put in a payload
ERROR_MAX = 1024

_STATUS = {"Pending": "starting", "Running": "processing", "Succeeded": "succeeded", "Failed": "failed",
           "Canceled": "canceled"}
FINISHED = frozenset({"Succeeded", "Failed", "Canceled"})
# Addresses of cloud instance metadata services: refused unless an allowed CIDR names exactly them.
METADATA = (ipaddress.ip_network("169.254.169.254/32"), ipaddress.ip_network("fd00:ec2::254/128"),
            ipaddress.ip_network("100.100.100.200/32"))

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


# --- the spec -------------------------------------------------------------------------------------


def url_problem(url: str, allow_http: bool = True) -> str | None:
    """Why `url` cannot be a webhook (absolute http(s), a host, no user:password@), or None."""
    if len(url) > URL_MAX:
        return f"is longer than {URL_MAX} characters"
    if any(ch.isspace() or ord(ch) < 0x20 for ch in url):
        return "must not contain whitespace or control characters"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as error:
        return f"is not a valid URL ({error})"
    if parts.scheme not in ("https", "http"):
        return "must be an absolute https:// URL"
    if parts.scheme == "http" and not allow_http:
        return "must be https:// (the operator does not allow plain http webhooks)"
    if "@" in parts.netloc:
        return "must not carry credentials (user:password@); authenticate the receiver with the signature"
    if not parts.hostname:
        return "has no host"
    if _literal(parts.hostname) is None:
        try:
            parts.hostname.rstrip(".").encode("idna")  # as the resolver encodes it
        except UnicodeError:
            return "is not a valid host name (an empty label, or one longer than 63 characters)"
    if port == 0:
        return "has port 0"
    if parts.fragment:
        return "must not have a #fragment"
    return None


def wanted(events_filter: Iterable[str] | None) -> frozenset[str]:
    """The events a Training asks for: as Replicate, all four when it names none."""
    return frozenset(EVENTS) if events_filter is None else frozenset(events_filter) & frozenset(EVENTS)


# --- which events are due -------------------------------------------------------------------------


def _status(body: Mapping[str, Any]) -> Mapping[str, Any]:
    return body.get("status") or {}


def _spec(body: Mapping[str, Any]) -> Mapping[str, Any]:
    return body.get("spec") or {}


def recorded(body: Mapping[str, Any]) -> frozenset[str]:
    """Events delivered or given up on, as status.notifications records them."""
    notes = _status(body).get("notifications") or {}
    return frozenset(notes.get("delivered") or []) | frozenset(notes.get("failed") or [])


def due_events(body: Mapping[str, Any]) -> list[str]:
    """The recorded events (start, output, completed) the Training's state calls for and status does
    not yet record, in the order they happen. `start`: the Training was accepted and its Job created
    (status.jobName), as Replicate sends it when a training is created; `output`: its weights are
    stored; `completed`: it finished (also when it failed before any Job)."""
    spec = _spec(body)
    if not spec.get("webhook"):
        return []
    status = _status(body)
    phase = status.get("phase")
    happened = {
        "start": bool(status.get("jobName")) or phase in ("Running", "Succeeded"),
        "output": phase == "Succeeded" and (status.get("output") is not None or bool(status.get("weights"))),
        "completed": phase in FINISHED,
    }
    asked, done = wanted(spec.get("webhookEventsFilter")), recorded(body)
    return [event for event in RECORDED if happened[event] and event in asked and event not in done]


def logs_text(status: Mapping[str, Any]) -> str | None:
    """The tail of the training's log the status shows (status.logTail, else status.lastLog.line)."""
    tail = status.get("logTail")
    if isinstance(tail, list):
        tail = "\n".join(str(line) for line in tail)
    if not tail:
        last = status.get("lastLog")
        tail = last.get("line") if isinstance(last, Mapping) else None
    if not tail:
        return None
    data = str(tail).encode()[-LOGS_MAX_BYTES:]
    return data.decode(errors="ignore")


def logs_key(body: Mapping[str, Any]) -> str | None:
    """A fingerprint of the log the status shows, when the Training asks for `logs` and it runs."""
    spec, status = _spec(body), _status(body)
    if not spec.get("webhook") or "logs" not in wanted(spec.get("webhookEventsFilter")):
        return None
    if status.get("phase") != "Running":
        return None
    last = status.get("lastLog")
    text = logs_text(status)
    if text is None:
        return None
    seen = json.dumps([text, last if isinstance(last, Mapping) else None], sort_keys=True, default=str)
    return "logs-" + hashlib.sha256(seen.encode()).hexdigest()[:16]


# --- the payload ----------------------------------------------------------------------------------


def replicate_status(phase: str | None) -> str:
    """Our phase as Replicate's training status."""
    return _STATUS.get(str(phase), "starting")


def redacted_input(spec: Mapping[str, Any]) -> dict[str, Any]:
    """spec.input with every Secret input shown as Cog shows a Secret: never its value. Values in
    spec.input are never a Secret's (the validator refuses a Secret input there); a name that is a
    Secret input wins over a plain value of the same name."""
    plain = dict(spec.get("input") or {})
    for name in spec.get("secretInputs") or {}:
        plain[str(name)] = SECRET_MASK
    return plain


def _metrics(status: Mapping[str, Any]) -> dict[str, Any]:
    found = status.get("metrics")
    if isinstance(found, Mapping) and isinstance(found.get("values"), Mapping):
        found = found["values"]
    return dict(found) if isinstance(found, Mapping) else {}


def training_id(body: Mapping[str, Any]) -> str:
    """The payload's id: the Training's uid (a name is reused when a Training is deleted and re-created)."""
    return str((body.get("metadata") or {}).get("uid") or "")


def payload(body: Mapping[str, Any]) -> dict[str, Any]:
    """The Training as Replicate's training object. Only the spec's model, inputs (Secret inputs masked)
    and the status go in: no Secret reference, destination credentials or operator bookkeeping."""
    meta, spec, status = body.get("metadata") or {}, _spec(body), _status(body)
    error = status.get("error")
    return {
        "id": training_id(body),
        "name": meta.get("name"),
        "namespace": meta.get("namespace"),
        "model": spec.get("model"),
        "version": status.get("imageDigest") or spec.get("model"),
        "status": replicate_status(status.get("phase")),
        "input": redacted_input(spec),
        "output": _output(status),
        "error": str(error)[:ERROR_MAX] if error else None,
        "logs": logs_text(status),
        "metrics": _metrics(status),
        "created_at": meta.get("creationTimestamp"),
        "started_at": status.get("startTime"),
        "completed_at": status.get("completionTime") if status.get("phase") in FINISHED else None,
    }


def _output(status: Mapping[str, Any]) -> Any:
    """status.output (the train() output, files as stored URIs); the weights URI when there is no other."""
    if status.get("output") is not None:
        return status.get("output")
    return {"weights": status["weights"]} if status.get("weights") else None


def encode(document: Mapping[str, Any]) -> bytes:
    """The body as sent and signed: compact JSON, UTF-8."""
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False, default=str).encode()


# --- signing (Standard Webhooks) ------------------------------------------------------------------


class SecretError(ValueError):
    """A signing secret that cannot be used; the message never holds the value."""


SECRET_MIN_BYTES = 24  # Standard Webhooks: a secret SHOULD be 24 to 64 random bytes


def signing_key(value: str | bytes) -> bytes:
    """The key of a Standard Webhooks secret `whsec_<base64>` (the prefix is optional)."""
    text = value.decode(errors="replace") if isinstance(value, bytes) else value
    text = text.strip()
    text = text.removeprefix("whsec_")
    try:
        key = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise SecretError("the signing secret is not whsec_ followed by base64") from None
    if len(key) < SECRET_MIN_BYTES:
        raise SecretError(f"the signing secret is shorter than {SECRET_MIN_BYTES} bytes")
    return key


def webhook_id(uid: str, event: str) -> str:
    """The `webhook-id` of one event of one Training: the same across retries and operator restarts,
    so a receiver can drop duplicates."""
    return "msg_" + hashlib.sha256(f"{uid}\0{event}".encode()).hexdigest()[:32]


def sign(key: bytes, message_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value: `v1,` and the base64 HMAC-SHA256 of `{id}.{timestamp}.{body}`."""
    digest = hmac.new(key, f"{message_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def headers(key: bytes, message_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """Every header of one delivery."""
    return {
        "Content-Type": "application/json",
        "User-Agent": "cog-training-operator",
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(key, message_id, timestamp, body),
    }


# --- retries ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff, bounded in attempts and in time since the first attempt."""

    base: float = 5.0
    cap: float = 120.0
    max_attempts: int = 8
    give_up_after: float = 600.0


def backoff(attempts: int, policy: RetryPolicy) -> float:
    """Seconds to wait after `attempts` failed attempts: base, 2·base, 4·base, ... up to `cap`."""
    return float(min(policy.cap, policy.base * 2 ** max(0, attempts - 1)))


def next_delay(attempts: int, elapsed: float, policy: RetryPolicy) -> float | None:
    """After `attempts` failed attempts, `elapsed` seconds after the first: the wait before the next
    one, or None to give up (out of attempts, or the next would start past `give_up_after`)."""
    if attempts >= policy.max_attempts:
        return None
    delay = backoff(attempts, policy)
    return None if elapsed + delay > policy.give_up_after else delay


Verdict = Literal["delivered", "retry", "give_up"]


def judge(status: int | None) -> tuple[Verdict, str]:
    """A delivery's answer (None: no answer, e.g. a timeout or a refused connection) as a verdict and a
    reason label: 2xx delivered; 408, 429, 5xx and no answer retried; a redirect (never followed) and
    any other 4xx given up."""
    if status is None:
        return "retry", "connection"
    if 200 <= status < 300:
        return "delivered", "ok"
    if status in (408, 429) or status >= 500:
        return "retry", "http_5xx" if status >= 500 else f"http_{status}"
    if 300 <= status < 400:
        return "give_up", "redirect"
    return "give_up", "http_4xx"


# --- where webhooks may go ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Destinations:
    """The operator's allow-list: host patterns (`*` globs whole labels: `*.example.com`; `*` alone is any
    name) and CIDRs. An address outside the CIDRs must be public (globally routable)."""

    hosts: tuple[str, ...] = ("*",)
    cidrs: tuple[IPNetwork, ...] = ()
    allow_http: bool = False

    @classmethod
    def of(cls, hosts: Iterable[str], cidrs: Iterable[str], allow_http: bool) -> Destinations:
        return cls(tuple(h.lower().rstrip(".") for h in hosts),
                   tuple(ipaddress.ip_network(c, strict=False) for c in cidrs), allow_http)


class Refused(ValueError):
    """A webhook URL the operator will not reach."""


def _host_allowed(host: str, patterns: Sequence[str]) -> bool:
    host = host.lower().rstrip(".")
    for pattern in patterns:
        if pattern == "*":
            return True
        labels, hosts = pattern.split("."), host.split(".")
        if len(labels) == len(hosts) and all(fnmatch.fnmatchcase(h, p) for p, h in zip(labels, hosts, strict=True)):
            return True
    return False


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


# IPv6 prefixes whose last 32 bits are the IPv4 address reached (IPv4-compatible, IPv4-translated, NAT64's
# well-known and local-use prefixes): judged as that IPv4 address.
EMBEDDING = (ipaddress.ip_network("::/96"), ipaddress.ip_network("::ffff:0:0:0/96"),
             ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))


def _plain(address: IPAddress) -> IPAddress:
    """An IPv6 address that carries an IPv4 one (mapped, 6to4, NAT64, ...) as the IPv4 address it reaches."""
    if not isinstance(address, ipaddress.IPv6Address):
        return address
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if any(address in net for net in EMBEDDING):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address


def _address_problem(address: IPAddress, rules: Destinations) -> str | None:
    given, address = address, _plain(address)
    inside = [net for net in rules.cidrs for a in {given, address} if a.version == net.version and a in net]
    if any(address in net for net in METADATA if net.version == address.version):
        if not any(net.num_addresses == 1 for net in inside):
            return f"{address} is a cloud metadata address"
        return None
    if inside:
        return None
    if not address.is_global or address.is_multicast:
        return f"{address} is not a public address (loopback, private, link-local or reserved)"
    return None


def target(url: str, rules: Destinations) -> tuple[str, str, int]:
    """(scheme, host, port) of a webhook URL the rules allow by its form and host name, else `Refused`."""
    problem = url_problem(url, rules.allow_http)
    if problem:
        raise Refused(f"spec.webhook {problem}")
    parts = urlsplit(url)
    host = str(parts.hostname)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    literal = _literal(host)
    if literal is None and not _host_allowed(host, rules.hosts):
        raise Refused(f"spec.webhook: the host {host} is not in the operator's allowed webhook hosts")
    if literal is not None and "*" not in rules.hosts and not any(
            _plain(literal) in net for net in rules.cidrs if net.version == _plain(literal).version):
        raise Refused(f"spec.webhook: the address {host} is not in the operator's allowed webhook CIDRs")
    return parts.scheme, host, port


def check_addresses(host: str, addresses: Sequence[str], rules: Destinations) -> list[str]:
    """The resolved addresses of `host`, all allowed, to connect to (no second lookup); else `Refused`."""
    if not addresses:
        raise Refused(f"spec.webhook: the host {host} does not resolve")
    checked = []
    for text in addresses:
        address = ipaddress.ip_address(text.split("%", 1)[0])
        problem = _address_problem(address, rules)
        if problem:
            raise Refused(f"spec.webhook: {host} resolves to {problem}; the operator does not send webhooks there")
        checked.append(str(address))
    return list(dict.fromkeys(checked))
