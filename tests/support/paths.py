"""Where things are: the checkout, the example models, and the Cog models the tests use."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

TESTS = Path(__file__).resolve().parent.parent
ROOT = TESTS.parent
EXAMPLES = ROOT / "examples"
TEST_MODELS = TESTS / "models"  # test-only Cog models, each with its Cog-generated `.cog/openapi_schema.json`
DRIVER_MODELS = TESTS / "driver-models"  # models that fail, chatter or stall, for the driver's tests

# The seed's models. hello-train and training-output are the examples themselves (the same cog.yaml,
# train.py and Cog-generated schema); all-inputs, which no example needs, is a test model.
SEED_MODELS = {
    "all-inputs": TEST_MODELS / "all-inputs",
    "hello-train": EXAMPLES / "hello-train",
    "training-output": EXAMPLES / "training-output",
}


def model_dirs() -> dict[str, Path]:
    """Every model with a Cog-generated schema: the seed's models and the test-only models."""
    dirs = dict(SEED_MODELS)
    dirs.update({path.name: path for path in sorted(TEST_MODELS.iterdir()) if path.is_dir()})
    return dirs


def schema_file(model_dir: Path) -> Path:
    inner = model_dir / ".cog" / "openapi_schema.json"
    return inner if inner.exists() else model_dir / "openapi_schema.json"


def load_schema_document(name: str) -> dict[str, Any]:
    return json.loads(schema_file(model_dirs()[name]).read_text())
