"""A test-only model whose setup fails: loading its base checkpoint raises when Cog loads the module."""

from cog import Input, Path


def _load_base_model() -> bytes:
    print("loading base model from /weights/base.safetensors")
    raise FileNotFoundError("/weights/base.safetensors: no such file")


BASE = _load_base_model()


def train(steps: int = Input(default=1)) -> Path:
    return Path("never")
