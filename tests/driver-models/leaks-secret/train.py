"""A test-only model with Secret inputs that repeats its token in its logs and in the error it raises."""

from cog import Input, Path, Secret


def train(
    token: Secret = Input(description="An API token"),  # noqa: B008  (Cog's way to declare inputs)
    extra_tokens: list[Secret] = Input(description="More API tokens", default=None),  # noqa: B008
) -> Path:
    print(f"logging in with {token.get_secret_value()}")
    raise PermissionError(f"the hub refused the token {token.get_secret_value()!r} (as JSON: {token.get_secret_value()})")
