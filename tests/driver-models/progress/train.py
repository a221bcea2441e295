"""A test-only model that draws a tqdm-style bar, records a metric, may print its token, and may fail."""

import sys
import tempfile
import time

from cog import Input, Path, Secret, current_scope


def train(
    steps: int = Input(description="Steps of the bar", default=5),
    seconds: float = Input(description="Seconds per step", default=0.5),
    fail: bool = Input(description="Raise after the last step", default=False),
    token: Secret = Input(description="A token it prints", default=None),  # noqa: B008  (Cog's way)
) -> Path:
    if token is not None:
        print(f"logging in with {token.get_secret_value()}", flush=True)
    for step in range(1, steps + 1):
        time.sleep(seconds)
        # What tqdm draws on stderr: the bar redrawn after a carriage return (tqdm is not installed here).
        bar = "#" * (10 * step // steps)
        sys.stderr.write(f"\r{100 * step // steps:3d}%|{bar:<10}| {step}/{steps} [00:0{step}<00:01,  2.00it/s]")
        sys.stderr.flush()
        current_scope().record_metric("loss", round(1 / step, 4))
        current_scope().record_metric("phase", "warmup" if step < 2 else "main")
    sys.stderr.write("\n")
    print("cogtrain.progress {\"progress\":{\"percent\":99,\"observedTime\":\"2020-01-01T00:00:00Z\"}}", flush=True)
    print(f"trained {steps} steps", flush=True)
    if fail:
        raise RuntimeError(f"diverged after {steps} steps")
    weights = Path(tempfile.mkdtemp()) / "weights.bin"
    weights.write_bytes(b"w" * 16)
    return weights
