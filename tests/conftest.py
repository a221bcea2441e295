"""Shared paths and fixtures."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cogserver import CogServer, prepare_model, start_cog_server
from cogtrain.schema import TrainingSchema, parse_schema

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
