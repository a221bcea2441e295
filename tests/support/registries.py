"""The test registries as the `registries` fixture gives them, the labels of the images pushed to them,
and the credentials to read their private images."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from dataclasses import dataclass

import yaml

from cogtrain.credentials import Keyring, keyring_from_secrets
from cogtrain.reference import ImageReference
from cogtrain.registry import ImageConfig
from support.paths import load_schema_document, model_dirs, schema_file
from support.registry_server import Registry

USERS = {"admin": "admin-pass", "reader": "reader-pass"}


@dataclass
class Registries:
    anonymous: Registry
    htpasswd: Registry
    token: Registry
    digests: dict[str, str]


def cog_labels(model: str) -> dict[str, str]:
    """The labels `cog build` puts on an image of a fixture model."""
    config = yaml.safe_load((model_dirs()[model] / "cog.yaml").read_text())
    return {
        "run.cog.openapi_schema": schema_file(model_dirs()[model]).read_text(),
        "run.cog.config": json.dumps(config),
        "run.cog.version": "0.23.1",
    }


def predict_only_labels() -> dict[str, str]:
    """A Cog image built without `train:`: its schema has only the prediction interface."""
    document = load_schema_document("hello-train")
    schemas = document["components"]["schemas"]
    schemas["Input"] = schemas.pop("TrainingInput")
    schemas["Output"] = schemas.pop("TrainingOutput")
    for name in ("TrainingRequest", "TrainingResponse"):
        schemas.pop(name, None)
    document["paths"] = {"/predictions": {}, "/health-check": {}, "/shutdown": {}}
    return {"run.cog.openapi_schema": json.dumps(document), "run.cog.config": json.dumps({"predict": "p.py:P"})}


def keyring(host: str, user: str, password: str, secret: str = "regcred") -> Keyring:
    """The keyring of one `kubernetes.io/dockerconfigjson` Secret holding `user`'s credentials for `host`."""
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    data = base64.b64encode(json.dumps({"auths": {host: {"auth": auth}}}).encode()).decode()
    ring, notes = keyring_from_secrets([{"metadata": {"name": secret}, "type": "kubernetes.io/dockerconfigjson",
                                         "data": {".dockerconfigjson": data}}])
    assert notes == []
    return ring


def cog_document(model: str = "hello-train", **extra: object) -> dict[str, object]:
    """A fixture model's schema document, with extra top-level fields (padding, for the limits' tests)."""
    document = load_schema_document(model)
    document.update(extra)
    return document


class FakeRegistryClient:
    """A registry client without a registry, for unit tests of the resolver: each image's config labels
    from `labels`; with `release`, every fetch first waits for it (at most `block_for` seconds), as a
    fetch stuck on a registry would."""

    def __init__(self, labels: dict[str, dict[str, str]], lookup_timeout: float = 30.0,
                 release: threading.Event | None = None, block_for: float = 5.0) -> None:
        self.labels = labels
        self.lookup_timeout = lookup_timeout
        self.release = release
        self.block_for = block_for
        self.fetches: list[str] = []
        self.deadlines: list[object] = []

    def fetch_config(self, reference: ImageReference, credentials: object, deadline: object = None) -> ImageConfig:
        self.fetches.append(str(reference))
        self.deadlines.append(deadline)
        if self.release is not None:
            self.release.wait(self.block_for)
        labels = self.labels[reference.name]
        return ImageConfig(reference=reference, digest=self._digest(reference), config={"config": {"Labels": labels}})

    def head_digest(self, reference: ImageReference, credentials: object, deadline: object = None) -> str:
        return self._digest(reference)

    def _digest(self, reference: ImageReference) -> str:
        return "sha256:" + hashlib.sha256(json.dumps(self.labels[reference.name], sort_keys=True).encode()).hexdigest()
