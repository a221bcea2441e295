"""A test-only model with Secret inputs that repeats them in its logs and its token in the error it raises."""

from cog import Input, Path, Secret


def train(
    token: Secret = Input(description="An API token"),  # noqa: B008  (Cog's way to declare inputs)
    extra_tokens: list[Secret] | None = Input(description="More API tokens", default=None),  # noqa: B008
) -> Path:
    value = token.get_secret_value()
    extra = [item.get_secret_value() if isinstance(item, Secret) else item for item in extra_tokens or []]
    print(f"logging in with {value}, then with {', '.join(extra) or 'nothing else'}")
    raise PermissionError(f"the hub refused the token {value!r} (plain: {value})")
