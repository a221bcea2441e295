"""A test-only model taking a list of Secrets: Cog marks `items`, not the property, as secret.

Cog 0.23 hands the items to train() as plain strings (a lone Secret arrives as a Secret).
"""

from typing import Optional

from cog import Input, Secret


def train(
    tokens: list[Secret] = Input(description="API tokens, one per mirror"),
    spare_tokens: Optional[list[Secret]] = Input(description="Fallback tokens", default=None),
    steps: int = Input(description="Steps", default=1, ge=1),
) -> str:
    values = [_reveal(token) for token in tokens]
    spare = [_reveal(token) for token in spare_tokens or []]
    if not all(isinstance(value, str) and value for value in values + spare):
        raise ValueError("every token must be a non-empty string")
    return f"{len(values)} tokens, {len(spare)} spare, {steps} steps"


def _reveal(token: object) -> object:
    return token.get_secret_value() if isinstance(token, Secret) else token
