"""A test-only model whose setup takes ten minutes: the e2e tests cancel a training while Cog loads it."""

import tempfile
import time

from cog import Input, Path

print("loading base model", flush=True)
time.sleep(600)


def train(seconds: float = Input(description="Seconds to sleep", default=600.0)) -> Path:
    time.sleep(seconds)
    out = Path(tempfile.mkdtemp()) / "weights.bin"
    out.write_bytes(b"slept")
    return out
