"""A test-only model that reads the files it is given: its output names each file and its content's sha256."""

import hashlib

from cog import Input, Path


def _line(path: Path) -> str:
    return f"{path.name} {hashlib.sha256(path.read_bytes()).hexdigest()}"


def train(  # Cog's way: Input() as the default (B008)
    data: Path = Input(description="A file to read"),  # noqa: B008
    extra: list[Path] = Input(description="More files to read", default=[]),  # noqa: B008
    note: str = Input(description="Text, passed through", default=""),
) -> str:
    return "\n".join([_line(data), *(_line(path) for path in extra), note])
