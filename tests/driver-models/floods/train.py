"""A test-only model that floods its log and returns its weights inline (a data: URL), for the driver's memory tests.

Cog re-sends the whole accumulated log in every webhook, and a `Path` inside a `TrainingOutput`
comes back as a base64 data: URL in the output webhook.
"""

import tempfile

from cog import BaseModel, Input, Path


class TrainingOutput(BaseModel):
    weights: Path


def train(
    megabytes: int = Input(description="Megabytes of logs to print", default=20),
    width: int = Input(description="Characters per log line, newline included", default=1000),
    weights_megabytes: int = Input(description="Size of the weights file in megabytes", default=1),
) -> TrainingOutput:
    for i in range(megabytes * 1_000_000 // width):
        head = f"line {i} "
        print(head + "x" * (width - len(head) - 1))
    out = Path(tempfile.mkdtemp()) / "weights.bin"
    with out.open("wb") as handle:
        for i in range(weights_megabytes):
            handle.write(i.to_bytes(4, "big") * 250_000)
    return TrainingOutput(weights=out)
