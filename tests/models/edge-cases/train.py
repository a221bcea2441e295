"""A test-only model whose inputs probe the edges of Cog's input checks."""

from typing import Optional

from cog import Input, Path


def train(
    name: str = Input(description="Short name", default="abc", min_length=2, max_length=3),
    code: str = Input(description="Three digits", default="123", regex=r"^\d{3}$"),
    slug: str = Input(description="Lowercase word", default="a", regex=r"^[a-z]+(-[a-z]+)*$"),
    level: int = Input(description="Level", default=1, choices=[1, 2, 3]),
    ratio: float = Input(description="Ratio", default=1.0, ge=0.5, le=1.5),
    files: Optional[list[Path]] = Input(description="Files", default=None),
    maybe: Optional[int] = Input(description="Optional count", default=None, ge=0),
    old: str = Input(description="Old setting", default="x", deprecated=True),
) -> str:
    return f"{name}|{code}|{slug}|{level}|{ratio}|{maybe}|{old}"
