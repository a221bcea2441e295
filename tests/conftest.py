"""Shared paths and fixtures."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from cogserver import CogServer, prepare_model, start_cog_server
from cogtrain.schema import TrainingSchema, parse_schema
from k8s_server import KubeAPI, start_kube_api
from registry_server import OCI_MANIFEST, Registry, start_registry
from s3_server import S3Server, start_s3

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
FIXTURE_MODELS = SHARED / "fixtures" / "cog-models"
TEST_MODELS = Path(__file__).resolve().parent / "models"
EXAMPLES = ROOT / "examples"


def model_dirs() -> dict[str, Path]:
    """Every model with a Cog-generated schema: the shared fixtures and the test-only models."""
    dirs = {path.name: path for path in sorted(FIXTURE_MODELS.iterdir()) if path.is_dir()}
    dirs.update({path.name: path for path in sorted(TEST_MODELS.iterdir()) if path.is_dir()})
    return dirs


def schema_file(model_dir: Path) -> Path:
    inner = model_dir / ".cog" / "openapi_schema.json"
    return inner if inner.exists() else model_dir / "openapi_schema.json"


def load_schema_document(name: str) -> dict[str, Any]:
    return json.loads(schema_file(model_dirs()[name]).read_text())


@pytest.fixture(scope="session")
def schemas() -> dict[str, TrainingSchema]:
    return {name: parse_schema(load_schema_document(name)) for name in model_dirs()}


@pytest.fixture(scope="session")
def cog_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, CogServer]]:
    """Cog's own train-mode server, one per model, started on first use."""
    started: dict[str, CogServer] = {}

    class Servers(dict):
        def __missing__(self, name: str) -> CogServer:
            model = prepare_model(model_dirs()[name], tmp_path_factory.mktemp("cog") / name)
            server = start_cog_server(model)
            started[name] = server
            self[name] = server
            return server

    yield Servers()
    for server in started.values():
        server.stop()


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


USERS = {"admin": "admin-pass", "reader": "reader-pass"}


@dataclass
class Registries:
    anonymous: Registry
    htpasswd: Registry
    token: Registry
    digests: dict[str, str]


@pytest.fixture(scope="session")
def registries(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registries]:
    """Three real registries (anonymous, htpasswd, token auth) holding the test images."""
    base = tmp_path_factory.mktemp("registries")
    started = []
    try:
        anonymous = start_registry(base / "anonymous")
        started.append(anonymous)
        htpasswd = start_registry(base / "htpasswd", auth="htpasswd", users=USERS)
        started.append(htpasswd)
        token = start_registry(base / "token", auth="token", users=USERS)
        started.append(token)
        digests = {}
        for model in ("all-inputs", "hello-train", "training-output", "edge-cases"):
            digests[model] = anonymous.push_image(f"acme/{model}", "1.0", cog_labels(model))
        digests["oci"] = anonymous.push_image("acme/oci", "1.0", cog_labels("training-output"), media_type=OCI_MANIFEST)
        digests["plain"] = anonymous.push_image("acme/plain", "1.0", None)
        digests["predict-only"] = anonymous.push_image("acme/predict-only", "1.0", predict_only_labels())
        old = {"org.cogmodel.openapi_schema": cog_labels("hello-train")["run.cog.openapi_schema"]}
        digests["old-label"] = anonymous.push_image("acme/old-label", "1.0", old)
        digests["broken"] = anonymous.push_image("acme/broken", "1.0", {"run.cog.openapi_schema": "{not json"})
        digests["multi"] = anonymous.push_index(
            "acme/multi", "1.0", {"linux/arm64": {"run.cog.openapi_schema": "{}"}, "linux/amd64": cog_labels("all-inputs")})
        digests["arm-only"] = anonymous.push_index("acme/arm-only", "1.0", {"linux/arm64": cog_labels("all-inputs")})
        digests["tamper-config"] = anonymous.push_image("acme/tamper-config", "1.0", cog_labels("hello-train"))
        digests["tamper-manifest"] = anonymous.push_image("acme/tamper-manifest", "1.0", cog_labels("hello-train"))
        for registry in (htpasswd, token):
            digests[f"private-{registry is token}"] = registry.push_image("acme/private", "1.0", cog_labels("all-inputs"))
        yield Registries(anonymous, htpasswd, token, digests)
    finally:
        for registry in started:
            registry.stop()


@pytest.fixture(scope="session")
def s3() -> Iterator[S3Server]:
    """A real S3-compatible endpoint (moto server) with a `trainings` bucket and IAM enforced."""
    server = start_s3()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeAPI]:
    """A Kubernetes API (kmock-based emulator) on loopback, serving built-ins and the Training CRD."""
    from cogtrain.crd import training_crd

    api = start_kube_api(tmp_path_factory.mktemp("kube"), [training_crd()])
    yield api
    api.stop()
