"""Notifications, the pure part: events due, payload, Standard Webhooks signatures (checked with the
independent `standardwebhooks` package), retries, and where webhooks may go."""

from __future__ import annotations

import base64
import datetime
import json
from typing import Any

import pydantic
import pytest
import standardwebhooks

from cogtrain import api, notify
from cogtrain.access import needs
from cogtrain.admission import webhook_warnings
from cogtrain.settings import Settings, settings_from

SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()
UID = "6f1c1d2e-0000-4000-8000-000000000001"


def training(status: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "cog.run/v1alpha1", "kind": "Training",
        "metadata": {"name": "tok", "namespace": "ml", "uid": UID, "creationTimestamp": "2026-11-27T10:00:00Z"},
        "spec": {"model": "registry.example.com/acme/sdxl:1.2", "input": {"steps": 3},
                 "secretInputs": {"hf_token": {"name": "hf", "key": "token"}},
                 "webhook": "https://hooks.example.com/cog", **spec},
        "status": status or {},
    }


# --- the spec ---------------------------------------------------------------------------------------


@pytest.mark.unit
@pytest.mark.parametrize(("url", "problem"), [
    ("https://hooks.example.com/x?a=1", None),
    ("http://hooks.example.com/", None),
    ("https://[2001:db8::1]:8443/x", None),
    ("ftp://hooks.example.com/", "must be an absolute https:// URL"),
    ("hooks.example.com/x", "must be an absolute https:// URL"),
    ("https://user:pw@hooks.example.com/", "must not carry credentials"),
    ("https://token@hooks.example.com/", "must not carry credentials"),
    ("https:///path", "has no host"),
    ("https://hooks.example.com/#frag", "must not have a #fragment"),
    ("https://hooks.example.com:99999/", "is not a valid URL"),
    ("https://hooks.example.com/a b", "whitespace"),
    ("https://x.example.com/" + "a" * 2048, "longer than 2048"),
    ("https://a..b.example.com/", "is not a valid host name"),  # passes urlsplit, not a resolver
    ("https://" + "x" * 64 + ".example.com/", "is not a valid host name"),
    ("https://bücher.example/", None),
])
def test_url_problems(url: str, problem: str | None) -> None:
    found = notify.url_problem(url)
    assert (found is None) if problem is None else (found is not None and problem in found)


@pytest.mark.unit
@pytest.mark.parametrize(("spec", "message"), [
    ({"webhook": "https://user:pw@hooks.example.com/"}, "spec.webhook: Value error, must not carry credentials"),
    ({"webhook": "file:///etc/passwd"}, "spec.webhook: Value error, must be an absolute https:// URL"),
    ({"webhook": "http://"}, "spec.webhook: String should have at least 8 characters"),
    ({"webhook": "https://h.example.com/", "webhookEventsFilter": ["start", "bogus"]}, "spec.webhookEventsFilter"),
    ({"webhook": "https://h.example.com/", "webhookEventsFilter": []}, "spec.webhookEventsFilter"),
    ({"webhook": "https://h.example.com/", "webhookEventsFilter": ["start", "start"]}, "names an event twice"),
    ({"webhook": "https://h.example.com/", "webhookSecretRef": {"name": "s"}}, "spec.webhookSecretRef.key"),
])
def test_spec_refuses_bad_webhooks_naming_the_field(spec: dict[str, Any], message: str) -> None:
    body = {"spec": {"model": "r.example.com/m:1", **spec}}
    with pytest.raises(pydantic.ValidationError) as error:
        api.Training.model_validate(body)
    problems = "; ".join("spec." + ".".join(map(str, e["loc"][1:])) + ": " + e["msg"] for e in error.value.errors())
    assert message in problems


@pytest.mark.unit
def test_spec_takes_a_webhook() -> None:
    spec = api.TrainingSpec.model_validate({"model": "r.example.com/m:1", "webhook": "https://h.example.com/x",
                                            "webhookEventsFilter": ["start", "completed"],
                                            "webhookSecretRef": {"name": "sig", "key": "secret"}})
    assert spec.to_k8s()["webhookEventsFilter"] == ["start", "completed"]


@pytest.mark.unit
def test_the_signing_secret_is_a_secret_the_creator_must_be_able_to_read() -> None:
    found = needs({"webhookSecretRef": {"name": "sig", "key": "k"}})
    assert [(n.field, n.verb, n.name) for n in found if n.resource == "secrets"] == [
        ("spec.webhookSecretRef", "get", "sig")]


# --- events due ---------------------------------------------------------------------------------------


PENDING = {"phase": "Pending", "jobName": "tok-abcde"}
RUNNING = {"phase": "Running", "jobName": "tok-abcde", "startTime": "2026-11-27T10:00:05Z"}
SUCCEEDED = {**RUNNING, "phase": "Succeeded", "output": {"weights": "s3://b/ml/tok/weights.tar"},
             "weights": "s3://b/ml/tok/weights.tar", "completionTime": "2026-11-27T10:30:00Z"}
FAILED_EARLY = {"phase": "Failed", "error": "input.steps: 0 is less than the minimum"}


@pytest.mark.unit
@pytest.mark.parametrize(("status", "events_filter", "due"), [
    ({}, None, []),
    ({"phase": "Pending"}, None, []),  # not accepted yet: no Job
    (PENDING, None, ["start"]),
    (RUNNING, None, ["start"]),
    (SUCCEEDED, None, ["start", "output", "completed"]),
    (SUCCEEDED, ["completed"], ["completed"]),
    (SUCCEEDED, ["start", "logs"], ["start"]),
    ({**SUCCEEDED, "notifications": {"delivered": ["start"]}}, None, ["output", "completed"]),
    ({**SUCCEEDED, "notifications": {"delivered": ["start"], "failed": ["output"]}}, None, ["completed"]),
    (FAILED_EARLY, None, ["completed"]),  # failed before any Job: only the end
    ({**RUNNING, "phase": "Canceled"}, None, ["start", "completed"]),
    ({**RUNNING, "phase": "Failed", "error": "boom"}, ["output"], []),
])
def test_due_events(status: dict[str, Any], events_filter: list[str] | None, due: list[str]) -> None:
    spec = {"webhookEventsFilter": events_filter} if events_filter is not None else {}
    assert notify.due_events(training(status, **spec)) == due


@pytest.mark.unit
def test_no_webhook_no_events() -> None:
    body = training(SUCCEEDED)
    del body["spec"]["webhook"]
    assert notify.due_events(body) == [] and notify.logs_key(body) is None


@pytest.mark.unit
@pytest.mark.parametrize(("events_filter", "expected"), [
    (None, {"start", "output", "logs", "completed"}),  # Replicate: no filter, every event
    (["logs"], {"logs"}),
    (["start", "completed"], {"start", "completed"}),
])
def test_wanted(events_filter: list[str] | None, expected: set[str]) -> None:
    assert notify.wanted(events_filter) == expected


@pytest.mark.unit
def test_logs_key_follows_the_last_line_while_running() -> None:
    first = training({**RUNNING, "lastLog": {"line": "step 1/10", "time": "2026-11-27T10:00:06Z"}})
    second = training({**RUNNING, "lastLog": {"line": "step 2/10", "time": "2026-11-27T10:00:07Z"}})
    assert notify.logs_key(first) and notify.logs_key(first) != notify.logs_key(second)
    assert notify.logs_key(first) == notify.logs_key(json.loads(json.dumps(first)))
    assert notify.logs_key(training(RUNNING)) is None, "no log yet"
    assert notify.logs_key(training({**SUCCEEDED, "lastLog": {"line": "done"}})) is None, "completed carries it"
    assert notify.logs_key(training(first["status"], webhookEventsFilter=["completed"])) is None


# --- the payload ------------------------------------------------------------------------------------


@pytest.mark.unit
@pytest.mark.parametrize(("phase", "expected"), [
    ("Pending", "starting"), ("Running", "processing"), ("Succeeded", "succeeded"), ("Failed", "failed"),
    ("Canceled", "canceled"), (None, "starting"),
])
def test_status_mapping(phase: str | None, expected: str) -> None:
    assert notify.replicate_status(phase) == expected


@pytest.mark.unit
def test_payload_is_replicates_training_object_without_secrets() -> None:
    status = {**SUCCEEDED, "imageDigest": "registry.example.com/acme/sdxl@sha256:" + "a" * 64,
              "metrics": {"values": {"loss": 0.25}}, "logTail": ["step 9/10", "step 10/10"],
              "conditions": [{"type": "Ready", "status": "True"}], "kopf": {"progress": {}}}
    body = training(status, destinationSecretRef={"name": "s3-writer"})
    document = notify.payload(body)
    assert document == {
        "id": UID, "name": "tok", "namespace": "ml",
        "model": "registry.example.com/acme/sdxl:1.2",
        "version": "registry.example.com/acme/sdxl@sha256:" + "a" * 64,
        "status": "succeeded",
        "input": {"steps": 3, "hf_token": "**********"},
        "output": {"weights": "s3://b/ml/tok/weights.tar"},
        "error": None, "logs": "step 9/10\nstep 10/10", "metrics": {"loss": 0.25},
        "created_at": "2026-11-27T10:00:00Z", "started_at": "2026-11-27T10:00:05Z",
        "completed_at": "2026-11-27T10:30:00Z",
    }
    text = notify.encode(document).decode()
    for absent in ("s3-writer", '"hf"', '"key"', "kopf", "conditions", "secretInputs"):
        assert absent not in text


@pytest.mark.unit
@pytest.mark.parametrize(("status", "field", "value"), [
    ({"phase": "Running", "lastLog": {"line": "epoch 3"}}, "logs", "epoch 3"),
    ({"phase": "Running", "metrics": {"predict_time": 3.5}}, "metrics", {"predict_time": 3.5}),
    ({"phase": "Running", "completionTime": "2026-11-27T10:30:00Z"}, "completed_at", None),
    ({"phase": "Failed", "error": "x" * 5000}, "error", "x" * notify.ERROR_MAX),
    ({"phase": "Succeeded", "weights": "pvc://c/w.bin"}, "output", {"weights": "pvc://c/w.bin"}),
    ({"phase": "Running", "logTail": "a" * 10000 + "END"}, "logs", ("a" * 10000 + "END")[-notify.LOGS_MAX_BYTES:]),
    ({"phase": "Pending"}, "version", "registry.example.com/acme/sdxl:1.2"),
])
def test_payload_fields(status: dict[str, Any], field: str, value: Any) -> None:
    assert notify.payload(training(status))[field] == value


# --- signing ---------------------------------------------------------------------------------------


@pytest.mark.unit
@pytest.mark.parametrize("secret", [SECRET, SECRET.removeprefix("whsec_"), SECRET.rstrip("=")])
@pytest.mark.parametrize("body", [b"{}", notify.encode({"id": UID, "input": {"text": "h\u00e9llo \u2603"}})])
def test_signatures_verify_with_standardwebhooks(secret: str, body: bytes) -> None:
    key = notify.signing_key(secret)
    now = int(datetime.datetime.now(datetime.UTC).timestamp())
    message_id = notify.webhook_id(UID, "completed")
    sent = notify.headers(key, message_id, now, body)
    assert standardwebhooks.Webhook(SECRET).verify(body, sent, json_parse=False) is None
    assert sent["webhook-signature"] == standardwebhooks.Webhook(SECRET).sign(
        message_id, datetime.datetime.fromtimestamp(now, datetime.UTC), body)
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook(SECRET).verify(body + b" ", sent, json_parse=False)
    other = "whsec_" + base64.b64encode(b"o" * 32).decode()
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook(other).verify(body, sent, json_parse=False)


@pytest.mark.unit
@pytest.mark.parametrize(("value", "problem"), [
    ("whsec_not base64!", "not whsec_ followed by base64"),
    ("whsec_" + base64.b64encode(b"short").decode(), "shorter than 24 bytes"),
    ("", "shorter than 24 bytes"),
])
def test_unusable_secrets_say_why_without_the_value(value: str, problem: str) -> None:
    with pytest.raises(notify.SecretError) as error:
        notify.signing_key(value)
    assert problem in str(error.value) and (not value or value not in str(error.value))


@pytest.mark.unit
def test_webhook_ids_are_stable_per_training_and_event() -> None:
    assert notify.webhook_id(UID, "start") == notify.webhook_id(UID, "start")
    assert len({notify.webhook_id(UID, e) for e in notify.EVENTS} | {notify.webhook_id("other", "start")}) == 5


# --- retries ---------------------------------------------------------------------------------------


@pytest.mark.unit
@pytest.mark.parametrize(("attempts", "delay"), [(1, 5), (2, 10), (3, 20), (4, 40), (5, 80), (6, 120), (9, 120)])
def test_backoff(attempts: int, delay: float) -> None:
    assert notify.backoff(attempts, notify.RetryPolicy()) == delay


@pytest.mark.unit
@pytest.mark.parametrize(("attempts", "elapsed", "delay"), [
    (1, 0, 5), (7, 100, 120), (8, 100, None),  # out of attempts
    (3, 590, None),  # the next would start past 10 minutes
    (3, 570, 20),
])
def test_next_delay(attempts: int, elapsed: float, delay: float | None) -> None:
    assert notify.next_delay(attempts, elapsed, notify.RetryPolicy()) == delay


@pytest.mark.unit
def test_the_whole_schedule_is_bounded_in_time() -> None:
    policy, elapsed, attempts = notify.RetryPolicy(), 0.0, 1
    while (delay := notify.next_delay(attempts, elapsed, policy)) is not None:
        elapsed, attempts = elapsed + delay, attempts + 1
    assert attempts == policy.max_attempts and elapsed <= policy.give_up_after


@pytest.mark.unit
@pytest.mark.parametrize(("status", "verdict", "reason"), [
    (200, "delivered", "ok"), (204, "delivered", "ok"),
    (None, "retry", "connection"), (500, "retry", "http_5xx"), (503, "retry", "http_5xx"),
    (408, "retry", "http_408"), (429, "retry", "http_429"),
    (301, "give_up", "redirect"), (307, "give_up", "redirect"),
    (400, "give_up", "http_4xx"), (401, "give_up", "http_4xx"), (404, "give_up", "http_4xx"),
    (410, "give_up", "http_4xx"),
])
def test_judge(status: int | None, verdict: str, reason: str) -> None:
    assert notify.judge(status) == (verdict, reason)


# --- where webhooks may go -------------------------------------------------------------------------


DEFAULT = Settings().destinations()
CORP = notify.Destinations.of(["hooks.example.com", "*.corp.example"], ["10.20.0.0/16", "fd12::/16"], False)
PUBLIC_V4, PUBLIC_V6 = "93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946"


@pytest.mark.unit
@pytest.mark.parametrize(("rules", "url", "refused"), [
    (DEFAULT, "https://hooks.example.com/x", None),
    (DEFAULT, "http://hooks.example.com/x", "must be https://"),
    (notify.Destinations(allow_http=True), "http://hooks.example.com/x", None),
    (DEFAULT, "https://a:b@hooks.example.com/x", "credentials"),
    (CORP, "https://hooks.example.com/x", None),
    (CORP, "https://HOOKS.example.com./x", None),
    (CORP, "https://ci.corp.example/x", None),
    (CORP, "https://a.ci.corp.example/x", "not in the operator's allowed webhook hosts"),
    (CORP, "https://evil.example.com/x", "not in the operator's allowed webhook hosts"),
    (CORP, "https://10.20.1.2/x", None),
    (CORP, f"https://{PUBLIC_V4}/x", "not in the operator's allowed webhook CIDRs"),
    (CORP, "https://[fd12::1]/x", None),
])
def test_target(rules: notify.Destinations, url: str, refused: str | None) -> None:
    if refused is None:
        notify.target(url, rules)
    else:
        with pytest.raises(notify.Refused, match=refused):
            notify.target(url, rules)


@pytest.mark.unit
@pytest.mark.parametrize(("rules", "addresses", "refused"), [
    (DEFAULT, [PUBLIC_V4], None),
    (DEFAULT, [PUBLIC_V6], None),
    (DEFAULT, [PUBLIC_V4, PUBLIC_V6], None),
    (DEFAULT, ["127.0.0.1"], "not a public address"),
    (DEFAULT, ["::1"], "not a public address"),
    (DEFAULT, ["10.0.0.5"], "not a public address"),
    (DEFAULT, ["172.16.3.4"], "not a public address"),
    (DEFAULT, ["192.168.1.1"], "not a public address"),
    (DEFAULT, ["100.64.0.1"], "not a public address"),  # carrier-grade NAT
    (DEFAULT, ["169.254.10.10"], "not a public address"),
    (DEFAULT, ["fe80::1%eth0"], "not a public address"),
    (DEFAULT, ["fc00::1"], "not a public address"),
    (DEFAULT, ["0.0.0.0"], "not a public address"),
    (DEFAULT, ["224.0.0.1"], "not a public address"),
    (DEFAULT, ["::ffff:127.0.0.1"], "not a public address"),  # IPv4-mapped loopback
    (DEFAULT, ["::ffff:10.0.0.1"], "not a public address"),
    (DEFAULT, ["169.254.169.254"], "metadata"),
    (DEFAULT, ["::127.0.0.1"], "not a public address"),  # IPv4-compatible
    (DEFAULT, ["::ffff:0:7f00:1"], "not a public address"),  # IPv4-translated (SIIT)
    (DEFAULT, ["64:ff9b::a00:1"], "not a public address"),  # NAT64 of 10.0.0.1
    (DEFAULT, ["64:ff9b:1::7f00:1"], "not a public address"),  # local-use NAT64
    (DEFAULT, ["2002:7f00:1::1"], "not a public address"),  # 6to4 of 127.0.0.1
    (DEFAULT, ["64:ff9b::a9fe:a9fe"], "metadata"),
    (DEFAULT, ["64:ff9b::808:808"], None),  # NAT64 of a public address
    (DEFAULT, ["fd00:ec2::254"], "metadata"),
    (DEFAULT, [PUBLIC_V4, "10.0.0.1"], "not a public address"),  # one bad address refuses the host
    (DEFAULT, [], "does not resolve"),
    (CORP, ["10.20.3.4"], None),
    (CORP, ["fd12::7"], None),
    (CORP, ["10.21.0.1"], "not a public address"),
    (notify.Destinations.of(["*"], ["127.0.0.0/8"], False), ["127.0.0.1"], None),
    (notify.Destinations.of(["*"], ["::1/128"], False), ["::1"], None),
    (notify.Destinations.of(["*"], ["169.254.0.0/16"], False), ["169.254.169.254"], "metadata"),
    (notify.Destinations.of(["*"], ["169.254.169.254/32"], False), ["169.254.169.254"], None),
])
def test_check_addresses(rules: notify.Destinations, addresses: list[str], refused: str | None) -> None:
    if refused is None:
        assert notify.check_addresses("h", addresses, rules)
    else:
        with pytest.raises(notify.Refused, match=refused):
            notify.check_addresses("h", addresses, rules)


@pytest.mark.unit
def test_settings_from_the_environment() -> None:
    settings = settings_from({"COGTRAIN_WEBHOOK_ALLOWED_HOSTS": "hooks.example.com, *.corp.example",
                              "COGTRAIN_WEBHOOK_ALLOWED_CIDRS": "10.0.0.0/8,fd12::/16",
                              "COGTRAIN_WEBHOOK_ALLOW_HTTP": "true", "COGTRAIN_WEBHOOK_SECRET": "sig",
                              "COGTRAIN_WEBHOOK_SECRET_KEY": "s", "COGTRAIN_WEBHOOK_CA_BUNDLE": "/etc/ca.pem"})
    assert settings.webhook_allowed_hosts == ("hooks.example.com", "*.corp.example")
    assert settings.destinations().allow_http and len(settings.destinations().cidrs) == 2
    assert (settings.webhook_secret, settings.webhook_secret_key, settings.webhook_ca_bundle) == (
        "sig", "s", "/etc/ca.pem")
    with pytest.raises(pydantic.ValidationError, match="10.0.0.0/33"):
        settings_from({"COGTRAIN_WEBHOOK_ALLOWED_CIDRS": "10.0.0.0/33"})


@pytest.mark.unit
def test_admission_warns_about_a_webhook_the_operator_will_not_send() -> None:
    spec = api.TrainingSpec.model_validate({"model": "r.example.com/m:1", "webhook": "http://hooks.example.com/"})
    [warning] = webhook_warnings(spec, Settings())
    assert "must be https://" in warning and "the training runs" in warning
    assert webhook_warnings(spec, Settings(webhook_allow_http=True)) == []


# --- the outbox (notifier.offer: no I/O) --------------------------------------------------------------


def outbox_of(notifier: Any) -> dict[str, Any]:
    return dict(notifier._boxes)


@pytest.mark.unit
def test_offer_queues_due_events_and_forgets_what_status_records() -> None:
    from cogtrain.notifier import Notifier

    notifier = Notifier(Settings(), api_client=None)  # type: ignore[arg-type]  (offer does no I/O)
    try:
        plain = training(SUCCEEDED)
        del plain["spec"]["webhook"]
        notifier.offer(None, plain)
        assert outbox_of(notifier) == {}, "no webhook: nothing kept"
        notifier.offer(None, training(PENDING))
        box = outbox_of(notifier)[UID]
        assert box.events == ["start"] and box.snapshots["start"]["status"]["phase"] == "Pending"
        notifier.offer(None, training(SUCCEEDED))
        assert box.events == ["start", "output", "completed"]
        assert box.snapshots["start"]["status"]["phase"] == "Pending", "an event describes the Training as it was"
        box.done = {"start": "delivered"}  # delivered, its record not yet seen on the watch
        box.events = box.events[1:]
        notifier.offer(None, training(SUCCEEDED))
        assert box.events == ["output", "completed"], "not sent twice while its record is on its way"
        recorded = {**SUCCEEDED, "notifications": {"delivered": ["start", "output"], "failed": ["completed"]}}
        notifier.offer(None, training(recorded))
        assert outbox_of(notifier) == {}, "finished and all recorded: forgotten"
        notifier.offer(None, training(RUNNING))
        notifier.offer("DELETED", training(RUNNING))
        assert outbox_of(notifier) == {}
    finally:
        notifier.stop()


@pytest.mark.unit
def test_the_outbox_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    from cogtrain import notifier as module

    monkeypatch.setattr(module, "MAX_OUTBOXES", 2)
    notifier = module.Notifier(Settings(), api_client=None)  # type: ignore[arg-type]
    try:
        for index in range(3):
            body = training(PENDING)
            body["metadata"]["uid"] = f"uid-{index}"
            notifier.offer(None, body)
        assert sorted(outbox_of(notifier)) == ["uid-0", "uid-1"], "the third waits for its next watch event"
    finally:
        notifier.stop()


@pytest.mark.unit
def test_one_namespace_cannot_fill_the_outbox(monkeypatch: pytest.MonkeyPatch) -> None:
    from cogtrain import notifier as module

    monkeypatch.setattr(module, "MAX_OUTBOXES_PER_NAMESPACE", 2)
    notifier = module.Notifier(Settings(), api_client=None)  # type: ignore[arg-type]

    def offer(namespace: str, index: int, event: str | None = None) -> None:
        body = training(PENDING)
        body["metadata"].update(uid=f"{namespace}-{index}", namespace=namespace)
        notifier.offer(event, body)

    try:
        for index in range(5):
            offer("greedy", index)
        offer("other", 0)
        assert sorted(outbox_of(notifier)) == ["greedy-0", "greedy-1", "other-0"], "the other tenant still gets in"
        offer("greedy", 0, "DELETED")
        offer("greedy", 3)
        assert sorted(outbox_of(notifier)) == ["greedy-1", "greedy-3", "other-0"], "a freed place is given again"
    finally:
        notifier.stop()


@pytest.mark.unit
def test_the_delivery_threads_are_shared_fairly_between_namespaces() -> None:
    from cogtrain import notifier as module

    notifier = module.Notifier(Settings(), api_client=None)  # type: ignore[arg-type]
    try:
        for index in range(10):  # a tenant with many webhooks (slow or failing ones) offered first
            body = training(PENDING)
            body["metadata"].update(uid=f"a-{index}", namespace="tenant-a")
            notifier.offer(None, body)
        body = training(PENDING)
        body["metadata"].update(uid="b-0", namespace="tenant-b")
        notifier.offer(None, body)
        first = [uid for uid, _ in notifier._ready()]
        assert len(first) == module.WORKERS and "b-0" in first, "another tenant's event does not wait behind them"
        outbox_of(notifier)["b-0"].busy, notifier._busy = False, notifier._busy - 1  # b's delivery ends
        body = training(PENDING)
        body["metadata"].update(uid="c-0", namespace="tenant-c")
        notifier.offer(None, body)
        outbox_of(notifier)["a-0"].busy, notifier._busy = False, notifier._busy - 1  # one of a's ends too
        assert sorted(uid for uid, _ in notifier._ready()) == ["b-0", "c-0"], "the freed threads go to the others first"
    finally:
        notifier.stop()


@pytest.mark.unit
def test_an_attempt_that_fails_unexpectedly_backs_off_like_any_failed_attempt() -> None:
    from cogtrain import notifier as module

    def broken(host: str, port: int) -> list[str]:
        raise UnicodeError("label empty or too long")

    now = [100.0]
    notifier = module.Notifier(Settings(webhook_secret="sig"), api_client=None,  # type: ignore[arg-type]
                               resolver=broken, now=lambda: now[0])
    notifier._secrets[("ml", "sig", "webhook-secret")] = (float("inf"), notify.signing_key(SECRET))
    notifier._record = lambda box: None  # type: ignore[method-assign]
    try:
        notifier.offer(None, training(PENDING))
        [(uid, box)] = notifier._ready()
        notifier._deliver(uid, box)
        box.busy, notifier._busy = False, 0
        assert box.attempts == 1 and box.next_at > now[0], "retried later, not at every tick"
        assert box.last_error is not None and "UnicodeError" in box.last_error
        assert notifier._ready() == []
    finally:
        notifier.stop()


@pytest.mark.unit
def test_the_signing_secrets_read_are_not_kept_forever(monkeypatch: pytest.MonkeyPatch) -> None:
    from cogtrain import notifier as module

    monkeypatch.setattr(module, "SECRETS_MAX", 3)
    now = [0.0]
    notifier = module.Notifier(Settings(), api_client=None, now=lambda: now[0])  # type: ignore[arg-type]
    monkeypatch.setattr(module.client, "CoreV1Api", lambda api_client: type(
        "Core", (), {"read_namespaced_secret": lambda self, *a, **k: (_ for _ in ()).throw(
            module.ApiException(status=404))})())
    try:
        for index in range(10):  # each Training naming a Secret of its own
            body = training(PENDING, webhookSecretRef={"name": f"sig-{index}", "key": "k"})
            assert "cannot be read" in str(notifier._signing_key(body))
            now[0] += module.SECRET_TTL + 1
        assert len(notifier._secrets) <= 3
    finally:
        notifier.stop()
