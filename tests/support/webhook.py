"""Talking to the admission webhook as the API server does, and the Training objects it reviews."""

from __future__ import annotations

import json
import uuid
from typing import Any

import urllib3

from cogtrain.webhook import WEBHOOK_PATH
from support.trainings import DATA

NAMESPACE = "cogtrain-system"
SERVICE = "cogtrain-webhook"


def training(model: str, inputs: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "cog.run/v1alpha1", "kind": "Training",
            "metadata": {"name": "tok", "namespace": "ml", "uid": str(uuid.uuid4())},
            "spec": {"model": model, "input": inputs if inputs is not None else {"train_data": DATA, "seed": 3},
                     "destination": "s3://weights/", **spec}}


class Webhook:
    def __init__(self, port: int, ca: bytes, hostname: str = f"{SERVICE}.{NAMESPACE}.svc") -> None:
        self.ca = ca
        self.metrics_port: int | None = None
        self.pool = urllib3.HTTPSConnectionPool(
            "127.0.0.1", port, cert_reqs="CERT_REQUIRED", ca_cert_data=ca.decode(),
            server_hostname=hostname, assert_hostname=hostname, retries=False,
        )

    def review(self, operation: str, obj: dict[str, Any] | None, old: dict[str, Any] | None = None) -> dict[str, Any]:
        uid = str(uuid.uuid4())
        request = {
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {
                "uid": uid, "kind": {"group": "cog.run", "version": "v1alpha1", "kind": "Training"},
                "resource": {"group": "cog.run", "version": "v1alpha1", "resource": "trainings"},
                "requestKind": {"group": "cog.run", "version": "v1alpha1", "kind": "Training"},
                "requestResource": {"group": "cog.run", "version": "v1alpha1", "resource": "trainings"},
                "name": "tok", "namespace": "ml", "operation": operation,
                "userInfo": {"username": "alice", "groups": ["system:authenticated"]},
                "object": obj, "oldObject": old, "dryRun": False,
            },
        }
        answer = self.pool.request("POST", f"/{WEBHOOK_PATH}", body=json.dumps(request).encode(),
                                   headers={"Content-Type": "application/json"}, timeout=15)
        assert answer.status == 200, answer.data
        review = json.loads(answer.data)
        assert review["kind"] == "AdmissionReview" and review["response"]["uid"] == uid
        return review["response"]
