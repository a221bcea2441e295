"""Benchmark: 1000 AdmissionReviews against the operator's validating webhook with a warm schema cache.

The operator runs for real (kopf, its HTTPS webhook server with a self-signed certificate kept in
a Secret) against the test API server, with the model image in a real registry (docker-registry on
loopback). Reviews go over one verified TLS connection, one at a time, like an API server's. Printed:
p50/p99 latency of CREATE reviews (schema from the cache, inputs validated), and in the same run
the baseline of UPDATE reviews that change nothing (kopf, TLS and HTTP only, no schema lookup).

Run: .venv/bin/python bench/admission.py [--reviews 1000]
"""

from __future__ import annotations

import argparse
import base64
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import urllib3  # noqa: E402
from kubernetes import client  # noqa: E402

from cogtrain.crd import training_crd  # noqa: E402
from cogtrain.handlers import Runtime  # noqa: E402
from cogtrain.local import free_port  # noqa: E402
from cogtrain.registry import RegistryClient  # noqa: E402
from cogtrain.resolver import SchemaResolver  # noqa: E402
from cogtrain.settings import Settings  # noqa: E402
from cogtrain.webhook import WEBHOOK_PATH, WebhookConfig  # noqa: E402
from support.cluster_sim import RunningOperator  # noqa: E402
from support.k8s_server import start_kube_api  # noqa: E402
from support.registries import cog_labels  # noqa: E402
from support.registry_server import start_registry  # noqa: E402

SERVICE, NAMESPACE = "cogtrain-webhook", "cogtrain-system"


def review(operation: str, obj: dict[str, Any], old: dict[str, Any] | None) -> bytes:
    return json.dumps({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": str(uuid.uuid4()), "kind": {"group": "cog.run", "version": "v1alpha1", "kind": "Training"},
            "resource": {"group": "cog.run", "version": "v1alpha1", "resource": "trainings"},
            "name": obj["metadata"]["name"], "namespace": "ml", "operation": operation,
            "userInfo": {"username": "bench"}, "object": obj, "oldObject": old, "dryRun": False,
        },
    }).encode()


def measure(pool: urllib3.HTTPSConnectionPool, bodies: list[bytes], expect_allowed: bool) -> list[float]:
    times = []
    for body in bodies:
        started = time.perf_counter()
        answer = pool.request("POST", f"/{WEBHOOK_PATH}", body=body, headers={"Content-Type": "application/json"})
        times.append(time.perf_counter() - started)
        assert json.loads(answer.data)["response"]["allowed"] is expect_allowed, answer.data
    return times


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reviews", type=int, default=1000)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cogtrain-bench-"))
    registry = start_registry(work / "registry")
    kube = start_kube_api(work, [training_crd()])
    try:
        registry.push_image("acme/all-inputs", "1.0", cog_labels("all-inputs"))
        image = f"{registry.host}/acme/all-inputs:1.0"
        config = WebhookConfig(port=free_port(), addr="127.0.0.1", service=SERVICE, namespace=NAMESPACE,
                               secret="webhook-tls")
        runtime = Runtime(settings=Settings(default_destination="s3://w/"), api_client=kube.api_client,
                          resolver=SchemaResolver(RegistryClient(timeout=5)), webhook_config=config)
        operator = RunningOperator(kube, runtime).start()
        try:
            secret = client.CoreV1Api(kube.api_client).read_namespaced_secret("webhook-tls", NAMESPACE)
            pool = urllib3.HTTPSConnectionPool(
                "127.0.0.1", config.port, maxsize=1, cert_reqs="CERT_REQUIRED",
                ca_cert_data=base64.b64decode(secret.data["ca.crt"]).decode(),
                server_hostname=f"{SERVICE}.{NAMESPACE}.svc", assert_hostname=f"{SERVICE}.{NAMESPACE}.svc")

            def training(i: int) -> dict[str, Any]:
                return {"apiVersion": "cog.run/v1alpha1", "kind": "Training",
                        "metadata": {"name": f"t{i}", "namespace": "ml", "uid": str(uuid.uuid4())},
                        "spec": {"model": image, "input": {"train_data": "https://example.com/d.zip", "steps": 500,
                                                           "caption_prefix": "a photo of TOK", "tags": ["x", "y"]}}}

            for _ in range(100):  # the server starts once kopf has scanned the resources
                try:
                    measure(pool, [review("CREATE", training(0), None)], True)  # also warms the schema cache
                    break
                except urllib3.exceptions.HTTPError:
                    time.sleep(0.1)
            else:
                raise RuntimeError("the webhook never answered")
            lookups_before = runtime.resolver.stats.fetches
            creates = [review("CREATE", training(i), None) for i in range(args.reviews)]
            updates = [review("UPDATE", training(i), training(i)) for i in range(args.reviews)]
            measure(pool, creates[:50], True)  # warm-up of the connection and code paths
            create_times = measure(pool, creates, True)
            update_times = measure(pool, updates, True)
            assert runtime.resolver.stats.fetches == lookups_before, "every CREATE was answered from the cache"
        finally:
            operator.stop()
    finally:
        kube.stop()
        registry.stop()
    print(f"{args.reviews} AdmissionReviews over one verified TLS connection, warm schema cache:")
    print(f"  CREATE (schema from cache, inputs validated): p50 {pct(create_times, 0.5):6.2f} ms   "
          f"p99 {pct(create_times, 0.99):6.2f} ms   mean {statistics.mean(create_times) * 1000:6.2f} ms")
    print(f"  UPDATE, nothing changed (baseline):           p50 {pct(update_times, 0.5):6.2f} ms   "
          f"p99 {pct(update_times, 0.99):6.2f} ms")
    print(f"  CREATE / baseline: {pct(create_times, 0.5) / pct(update_times, 0.5):.2f}x p50, "
          f"{pct(create_times, 0.99) / pct(update_times, 0.99):.2f}x p99   (target: CREATE p99 under 50 ms)")


if __name__ == "__main__":
    main()
