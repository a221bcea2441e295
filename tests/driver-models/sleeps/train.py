"""A test-only model whose training sleeps: the driver's tests kill or restart its server meanwhile."""

import tempfile
import time

from cog import Input, Path


def train(seconds: float = Input(description="Seconds to sleep", default=600.0)) -> Path:
    print("sleeping", flush=True)
    time.sleep(seconds)
    out = Path(tempfile.mkdtemp()) / "weights.bin"
    out.write_bytes(b"slept")
    return out
