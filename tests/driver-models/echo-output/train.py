"""A test-only model whose output is a string it is given, repeated: long, non-ASCII, or naming an upload."""

from cog import Input


def train(
    text: str = Input(description="The output's text"),
    repeat: int = Input(description="How many times to repeat it", default=1),
) -> str:
    return text * repeat
