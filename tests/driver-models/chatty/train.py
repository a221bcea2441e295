"""A test-only model that logs a lot and returns several files."""

import tempfile

from cog import Input, Path


def train(lines: int = Input(description="Log lines to print", default=2000)) -> list[Path]:
    for i in range(lines):
        print(f"step {i} loss {1 / (i + 1):.4f}")
    folder = Path(tempfile.mkdtemp())
    (folder / "weights.bin").write_bytes(b"\x00\x01" * 1000)
    (folder / "config.json").write_text('{"rank": 8}')
    return [folder / "weights.bin", folder / "config.json"]
