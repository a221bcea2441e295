"""Webhooks from the operator running for real (kopf, the API emulator, a real registry) to a real HTTPS
receiver that verifies every signature with the independent `standardwebhooks` package."""

from __future__ import annotations

import base64
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from cogtrain import certs, metrics, notify
from cogtrain.handlers import Runtime
from cogtrain.notifier import post
from cogtrain.registry import RegistryClient
from cogtrain.resolver import SchemaResolver
from cogtrain.settings import Settings
from support.cluster_sim import Cluster, RunningOperator, wait_for
from support.k8s_server import KubeAPI
from support.registries import Registries
from support.trainings import DATA, model, succeed
from support.webhook_receiver import SIGNING_SECRET as SIGNING
from support.webhook_receiver import Receiver, https_receiver

HF_TOKEN = "hf_THE-SECRET-VALUE-never-sent"
REPORT = {"status": "succeeded", "output": {"weights": "s3://weights/ns/tok/weights.bin"},
          "metrics": {"predict_time": 12.5}}


def settings(receiver: Receiver, **extra: Any) -> Settings:
    values: dict[str, Any] = {
        "driver_image": "example.com/cogtrain:test", "default_destination": "s3://weights/",
        "webhook_allowed_cidrs": ("127.0.0.1/32",), "webhook_ca_bundle": str(receiver.ca_file),
        "webhook_secret": "webhook-signing", "webhook_retry_seconds": 0.3, "webhook_timeout_seconds": 1.0,
        "webhook_give_up_seconds": 20.0, **extra}
    return Settings(**values)


def operator_with(kube: KubeAPI, receiver: Receiver, **extra: Any) -> RunningOperator:
    runtime = Runtime(settings=settings(receiver, **extra), api_client=kube.api_client,
                      resolver=SchemaResolver(RegistryClient(timeout=2)))
    return RunningOperator(kube, runtime).start()


@pytest.fixture()
def receiver(tmp_path: Path) -> Iterator[Receiver]:
    with https_receiver(tmp_path / "receiver") as running:
        yield running


@pytest.fixture()
def cluster(kube: KubeAPI) -> Cluster:
    found = Cluster(kube, f"ns-{uuid.uuid4().hex[:8]}")
    for name, data in (("webhook-signing", {"webhook-secret": SIGNING}), ("hf", {"token": HF_TOKEN})):
        secret = client.V1Secret(metadata=client.V1ObjectMeta(name=name),
                                 data={k: base64.b64encode(v.encode()).decode() for k, v in data.items()})
        kube.core.create_namespaced_secret(found.namespace, secret)
    return found





def training_spec(registries: Registries, receiver: Receiver, **extra: Any) -> dict[str, Any]:
    return {"model": model(registries, "all-inputs"),
            "input": {"train_data": DATA, "caption_prefix": "a photo of TOK", "steps": 3},
            "secretInputs": {"hf_token": {"name": "hf", "key": "token"}},
            "webhook": receiver.url, **extra}


def failures(reason: str) -> float:
    return metrics.REGISTRY.get_sample_value("cogtrain_webhook_delivery_failures_total", {"reason": reason}) or 0.0


def delivered(event: str) -> float:
    return metrics.REGISTRY.get_sample_value(
        "cogtrain_webhook_deliveries_total", {"event": event, "outcome": "delivered"}) or 0.0


def assert_clean(receiver: Receiver) -> None:
    """Every delivery verified, and no Secret's value (the input's, the signing key's) in any of them."""
    for delivery in receiver.received():
        assert delivery.verified, delivery.headers
        raw = delivery.body.decode() + str(delivery.headers)
        assert HF_TOKEN not in raw and SIGNING not in raw and SIGNING.removeprefix("whsec_") not in raw


@pytest.mark.integration
def test_a_successful_training_sends_start_output_completed_signed(
        kube: KubeAPI, cluster: Cluster, registries: Registries, receiver: Receiver) -> None:
    receiver.script = [500, 0, 503]  # the start event: two errors and a timeout, then delivered
    before = {event: delivered(event) for event in ("start", "output", "completed")}
    timeouts = failures("connection")
    running = operator_with(kube, receiver)
    try:
        created = cluster.create_training("tok", training_spec(registries, receiver))
        uid = created["metadata"]["uid"]
        wait_for(lambda: receiver.answered("starting"), timeout=20, what="the start event")
        succeed(cluster, "tok", REPORT)
        status = wait_for(lambda: (s := cluster.status("tok")).get("notifications", {}).get("delivered") == [
            "start", "output", "completed"] and s, timeout=20, what="all three recorded as delivered")
    finally:
        running.stop()
    assert_clean(receiver)
    answered = receiver.answered()
    ids = [d.headers["webhook-id"] for d in answered]
    assert ids == [notify.webhook_id(uid, e) for e in ("start", "output", "completed")]
    starts = [d for d in receiver.received() if d.headers["webhook-id"] == ids[0]]
    assert [d.answered for d in starts] == [500, None, 503, 200], "retried, the same webhook-id each time"
    assert starts[1].at - starts[0].at >= 0.25 and starts[3].at - starts[2].at >= starts[1].at - starts[0].at
    start, output, completed = (d.document for d in answered)
    assert start["status"] == "starting" and start["output"] is None and start["completed_at"] is None
    assert start["id"] == uid and start["input"] == {"train_data": DATA, "caption_prefix": "a photo of TOK",
                                                     "steps": 3, "hf_token": "**********"}
    assert output["status"] == completed["status"] == "succeeded"
    assert completed["output"] == REPORT["output"] and completed["metrics"] == {"predict_time": 12.5}
    assert completed["version"] == status["imageDigest"] and completed["completed_at"] == status["completionTime"]
    assert status["notifications"]["attempts"] == 6 and status["phase"] == "Succeeded"
    assert {event: delivered(event) - before[event] for event in before} == dict.fromkeys(before, 1.0)
    assert failures("connection") - timeouts == 1
    assert metrics.REGISTRY.get_sample_value("cogtrain_webhook_delivery_duration_seconds_count", {"event": "start"})


@pytest.mark.integration
def test_the_events_filter_is_respected(kube: KubeAPI, cluster: Cluster, registries: Registries,
                                        receiver: Receiver) -> None:
    running = operator_with(kube, receiver)
    try:
        cluster.create_training("tok", training_spec(registries, receiver, webhookEventsFilter=["completed"]))
        cluster.wait_phase("tok", "Pending")
        succeed(cluster, "tok", REPORT)
        wait_for(lambda: cluster.status("tok").get("notifications", {}).get("delivered") == ["completed"],
                 timeout=20, what="completed recorded")
    finally:
        running.stop()
    assert [d.status for d in receiver.received()] == ["succeeded"]
    assert_clean(receiver)


@pytest.mark.integration
@pytest.mark.parametrize(("script", "attempts", "error", "reason"), [
    ([503] * 20, 3, "HTTP 503", "http_5xx"),  # out of attempts
    ([404], 1, "HTTP 404", "http_4xx"),  # a 4xx is final
    ([302], 1, "HTTP 302", "redirect"),  # a redirect is never followed
])
def test_an_event_is_given_up_bounded_and_the_training_goes_on(
        kube: KubeAPI, cluster: Cluster, registries: Registries, receiver: Receiver,
        script: list[int], attempts: int, error: str, reason: str) -> None:
    receiver.script = list(script)
    failures_before = failures(reason)
    running = operator_with(kube, receiver, webhook_max_attempts=3)
    try:
        cluster.create_training("tok", training_spec(registries, receiver, webhookEventsFilter=["start"]))
        notes = wait_for(lambda: (n := cluster.status("tok").get("notifications") or {}).get("failed") == ["start"]
                         and n, timeout=20, what="start given up")
        event = wait_for(lambda: next((e for e in cluster.events("tok") if e["reason"] == "WebhookFailed"), None),
                         what="a WebhookFailed Event")
        succeed(cluster, "tok", REPORT)
    finally:
        running.stop()
    assert error in notes["lastError"] and error in event["message"] and event["type"] == "Warning"
    assert len(receiver.received()) == attempts == notes["attempts"]
    assert failures(reason) - failures_before == attempts, "cogtrain_webhook_delivery_failures_total{reason}"
    assert all(d.headers["webhook-id"] == receiver.received()[0].headers["webhook-id"] for d in receiver.received())
    assert_clean(receiver)


@pytest.mark.integration
def test_a_destination_the_operator_does_not_allow_is_refused_and_the_training_goes_on(
        kube: KubeAPI, cluster: Cluster, registries: Registries, receiver: Receiver) -> None:
    running = operator_with(kube, receiver)
    try:
        forbidden = receiver.url.replace("127.0.0.1", "127.0.0.2")  # loopback, outside the allowed CIDRs
        cluster.create_training("tok", training_spec(registries, receiver, webhook=forbidden))
        event = wait_for(lambda: next((e for e in cluster.events("tok") if e["reason"] == "WebhookRefused"), None),
                         timeout=20, what="a WebhookRefused Event")
        final = succeed(cluster, "tok", REPORT)
        notes = wait_for(lambda: (n := cluster.status("tok").get("notifications") or {}).get("failed") == [
            "start", "output", "completed"] and n, timeout=20, what="every event refused")
    finally:
        running.stop()
    assert "127.0.0.2 is not a public address" in event["message"] and "not a public" in notes["lastError"]
    assert final["phase"] == "Succeeded" and receiver.received() == []


@pytest.mark.integration
def test_undelivered_events_are_sent_after_a_restart_and_delivered_ones_are_not(
        kube: KubeAPI, cluster: Cluster, registries: Registries, receiver: Receiver) -> None:
    first = operator_with(kube, receiver)
    try:
        cluster.create_training("tok", training_spec(registries, receiver))
        wait_for(lambda: cluster.status("tok").get("notifications", {}).get("delivered") == ["start"],
                 timeout=20, what="start recorded")
        job = cluster.job("tok")
        pod = cluster.start_pod(job)
        cluster.run_pod(pod)
        cluster.wait_phase("tok", "Running")
    finally:
        first.stop()
    cluster.finish_pod(pod, 0, REPORT)  # the training ends while no operator runs
    cluster.complete_job(job)
    second = operator_with(kube, receiver)
    try:
        wait_for(lambda: cluster.status("tok").get("notifications", {}).get("delivered") == [
            "start", "output", "completed"], timeout=20, what="output and completed after the restart")
    finally:
        second.stop()
    assert [d.headers["webhook-id"] for d in receiver.received()] == [
        notify.webhook_id(cluster.training("tok")["metadata"]["uid"], e) for e in ("start", "output", "completed")]
    assert_clean(receiver)


@pytest.mark.integration
def test_logs_are_sent_coalesced_at_most_every_few_seconds(
        kube: KubeAPI, cluster: Cluster, registries: Registries, receiver: Receiver) -> None:
    running = operator_with(kube, receiver)
    try:
        cluster.create_training("tok", training_spec(registries, receiver, webhookEventsFilter=["logs"]))
        job = cluster.job("tok")
        pod = cluster.start_pod(job)
        cluster.run_pod(pod)
        cluster.wait_phase("tok", "Running")
        for step in range(1, 6):
            cluster.kube.custom.patch_namespaced_custom_object_status(
                "cog.run", "v1alpha1", cluster.namespace, "trainings", "tok",
                {"status": {"lastLog": {"line": f"step {step}/5", "time": f"2026-11-27T10:00:0{step}Z"}}})
        first = wait_for(lambda: receiver.answered(), timeout=10, what="a logs event")[0]
        last = wait_for(lambda: (a := receiver.answered()) and a[-1].document["logs"] == "step 5/5" and a,
                        timeout=15, what="the latest log line")
    finally:
        running.stop()
    assert len(last) <= 2, "five changes within a second: coalesced"
    assert first.status == "processing" and "step" in str(first.document["logs"])
    if len(last) == 2:
        assert last[1].at - last[0].at >= notify.LOGS_INTERVAL - 0.3
    assert "notifications" not in cluster.status("tok") or "logs" not in str(cluster.status("tok")["notifications"])
    assert_clean(receiver)


# --- one delivery, without the operator -----------------------------------------------------------------


@pytest.mark.integration
def test_post_connects_to_the_checked_address_verifies_tls_for_the_name_and_follows_no_redirect(
        receiver: Receiver) -> None:
    port = receiver.url.split(":")[2].split("/")[0]
    by_name = f"https://localhost:{port}/hook?x=1"
    body = notify.encode({"id": "t"})
    headers = notify.headers(notify.signing_key(SIGNING), "msg_1", 1_700_000_000, body)
    assert post(by_name, ["127.0.0.1"], body, headers, 2.0, str(receiver.ca_file)) == 200
    [first] = receiver.received()
    assert first.headers["host"] == f"localhost:{port}", "the name, though the connection went to the address"
    receiver.script = [302]
    assert post(by_name, ["127.0.0.1"], body, headers, 2.0, str(receiver.ca_file)) == 302
    assert len(receiver.received()) == 2, "the redirect was not followed"
    assert post(by_name, ["127.0.0.1"], body, headers, 2.0, None) is None, "not trusted by the system's CAs"
    wrong_name = f"https://example.com:{port}/hook"
    assert post(wrong_name, ["127.0.0.1"], body, headers, 2.0, str(receiver.ca_file)) is None, \
        "the certificate is checked for the URL's host, not the address"
    assert len(receiver.received()) == 2
    receiver.script, receiver.hold = [0], 10.0
    started = time.monotonic()
    assert post(by_name, ["127.0.0.1"], body, headers, 1.0, str(receiver.ca_file)) is None
    assert time.monotonic() - started < 5, "a receiver that does not answer is given up after the timeout"


@contextmanager
def dripping_receiver(header: bytes, tls: ssl.SSLContext | None) -> Iterator[int]:
    """A receiver that answers one byte at a time, each well within a read timeout (slowloris)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    stop = threading.Event()

    def serve() -> None:
        connection, _ = server.accept()
        if tls is not None:
            connection = tls.wrap_socket(connection, server_side=True)
        with connection:
            connection.recv(65536)
            for byte in header + b"x" * 100_000:
                if stop.wait(0.1):
                    return
                try:
                    connection.sendall(bytes([byte]))
                except OSError:
                    return

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield int(server.getsockname()[1])
    finally:
        stop.set()
        server.close()
        thread.join(5)


@pytest.mark.integration
@pytest.mark.parametrize("scheme", ["http", "https"])
@pytest.mark.parametrize("header", [b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 1000,
                                    b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n"])
def test_post_is_bounded_in_total_time_against_a_receiver_that_drips_its_answer(
        header: bytes, scheme: str, tmp_path: Path) -> None:
    body = notify.encode({"id": "t"})
    headers = notify.headers(notify.signing_key(SIGNING), "msg_1", 1_700_000_000, body)
    tls, ca_file = None, None
    if scheme == "https":
        bundle = certs.generate(["127.0.0.1", "localhost"])
        cert, key = bundle.write(tmp_path)
        (tmp_path / "ca.pem").write_bytes(bundle.ca)
        tls, ca_file = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), str(tmp_path / "ca.pem")
        tls.load_cert_chain(cert, key)
    with dripping_receiver(header, tls) as port:
        started = time.monotonic()
        post(f"{scheme}://localhost:{port}/hook", ["127.0.0.1"], body, headers, 0.5, ca_file)
        assert time.monotonic() - started < 4, "one delivery holds a thread no longer than its timeout"


@pytest.mark.integration
def test_a_record_never_lands_on_a_training_re_created_under_the_same_name(kube: KubeAPI, cluster: Cluster) -> None:
    from cogtrain.notifier import Notifier

    spec = {"model": "example.com/m@sha256:" + "0" * 64, "webhook": "https://example.com/hook"}
    status = {"phase": "Running", "jobName": "tok-abcde"}

    def create() -> dict[str, Any]:
        cluster.create_training("tok", spec)
        return dict(kube.custom.patch_namespaced_custom_object_status(
            "cog.run", "v1alpha1", cluster.namespace, "trainings", "tok", {"status": status}))

    notifier = Notifier(Settings(), kube.api_client)
    try:
        old = create()
        notifier.offer(None, old)
        box = notifier._boxes[old["metadata"]["uid"]]
        kube.custom.delete_namespaced_custom_object("cog.run", "v1alpha1", cluster.namespace, "trainings", "tok")
        new = create()  # deleted mid-delivery and created again under its name
        assert new["metadata"]["uid"] != old["metadata"]["uid"]
        box.done = {"start": "delivered"}
        notifier._record(box)
        assert "notifications" not in cluster.status("tok"), "the old Training's record is not the new one's"
        box.body = {**box.body, "metadata": {**box.body["metadata"], "uid": new["metadata"]["uid"]}}
        notifier._record(box)
        assert cluster.status("tok")["notifications"]["delivered"] == ["start"]
    finally:
        notifier.stop()
